//! The workspace's daemon binaries. A test package cannot depend on another package's
//! binaries, so they are built once per test process with `cargo build` (a no-op when up
//! to date; `PVUSB_TESTS_NO_BUILD=1` skips it) in the same profile and target directory.

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

fn build_all() {
    if std::env::var_os("PVUSB_TESTS_NO_BUILD").is_some() {
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
    assert!(status.success(), "cargo build of the daemons failed");
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
