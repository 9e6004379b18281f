//! The workspace's daemon binaries. A test package cannot depend on another package's
//! binaries: `cargo test --workspace` builds them anyway; for `cargo test -p pvusb-tests`
//! (or `cargo bench`) they are built with `cargo build` when missing or older than a source
//! file of the crates they come from (`PVUSB_TESTS_NO_BUILD=1` never builds).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;

/// The binaries the simulated platform runs, with their packages.
const BINS: [(&str, &str); 4] = [
    ("pvusb-xenstored", "xenstore-cfg"),
    ("pvusb-simhyp", "pvusb-xen"),
    ("pvusb-backend", "pvusb-backend"),
    ("pvusb-frontend", "pvusb-frontend"),
];

/// `target/<profile>/`: the directory above this test executable's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Newest modification time of the `.rs` and `Cargo.toml` files under `dir`.
fn newest_source(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            if p.ends_with("target") || p.ends_with("fuzz") {
                continue;
            }
            newest_source(&p)
        } else if p.extension().is_some_and(|x| x == "rs") || p.ends_with("Cargo.toml") {
            e.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

/// Whether every binary exists and is newer than the sources it is built from.
fn up_to_date() -> bool {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = ["ring", "xenstore-cfg", "xen", "backend", "frontend"]
        .iter()
        .filter_map(|d| newest_source(&root.join(d)))
        .max();
    BINS.iter().all(|(bin, _)| {
        let built = std::fs::metadata(profile_dir().join(bin)).and_then(|m| m.modified());
        matches!((built, newest), (Ok(b), Some(n)) if b >= n)
    })
}

fn build_all() {
    if std::env::var_os("PVUSB_TESTS_NO_BUILD").is_some() || up_to_date() {
        return;
    }
    let Some(cargo) = std::env::var_os("CARGO") else {
        return;
    };
    let dir = profile_dir();
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("--quiet");
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    for (bin, pkg) in BINS {
        cmd.args(["-p", pkg, "--bin", bin]);
    }
    let status = cmd.status().expect("running cargo build for the daemons");
    // A failed rebuild (a crate mid-edit in a shared checkout) falls back to the binaries
    // already built, if any; `path` fails clearly when there are none.
    if !status.success() {
        eprintln!("warning: cargo build of the daemons failed; using the existing binaries");
    }
}

/// Path of daemon binary `name`, built if needed.
pub fn path(name: &str) -> PathBuf {
    static BUILT: Once = Once::new();
    BUILT.call_once(build_all);
    let p = profile_dir().join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace --bins`",
        p.display()
    );
    p
}
