//! The /dev/xen ioctl structs and numbers, checked against the kernel's uapi headers (and the
//! grant-copy constants against Xen's public `grant_table.h`) by C programs compiled with the
//! system gcc. A missing gcc or header fails the test.

use std::collections::BTreeMap;
use std::process::Command;

use pvusb_xen::xen::abi::{grant_table_facts, layout_facts};

const HEADERS: [&str; 4] = [
    "/usr/include/xen/gntdev.h",
    "/usr/include/xen/gntalloc.h",
    "/usr/include/xen/evtchn.h",
    "/usr/include/xen/grant_table.h",
];

/// Compiles and runs a program that includes `prelude` and prints each name's value (each
/// name is also the C expression computing it); returns name → value.
fn c_values(prelude: &str, names: &[&str]) -> BTreeMap<String, i64> {
    for h in HEADERS {
        assert!(
            std::path::Path::new(h).exists(),
            "{h} is missing: install linux-libc-dev and libxen-dev (ci/test.sh does)"
        );
    }
    let mut src = format!(
        "#include <stddef.h>\n#include <stdint.h>\n#include <stdio.h>\n#include <sys/ioctl.h>\n\
         {prelude}\nint main(void) {{\n"
    );
    for name in names {
        src.push_str(&format!(
            "    printf(\"%s=%lld\\n\", \"{name}\", (long long)({name}));\n"
        ));
    }
    src.push_str("    return 0;\n}\n");
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("layout.c");
    let exe = dir.path().join("layout");
    std::fs::write(&c, src).unwrap();
    let out = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&c)
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc ({e}): install gcc (ci/test.sh does)"));
    assert!(
        out.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn compare(facts: &[(&str, i64)], c_values: &BTreeMap<String, i64>) {
    let mut mismatches = Vec::new();
    for (name, rust) in facts {
        let c = c_values[*name];
        if c != *rust {
            mismatches.push(format!("{name}: C {c:#x}, Rust {rust:#x}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "layout mismatches:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn rust_layouts_match_the_uapi_headers() {
    let facts: Vec<(&str, i64)> = layout_facts()
        .into_iter()
        .map(|(n, v)| (n, i64::try_from(v).unwrap()))
        .collect();
    let names: Vec<&str> = facts.iter().map(|(n, _)| *n).collect();
    let values = c_values(
        "#include <linux/types.h>\n\
         /* The uapi headers use the Xen typedefs without defining them. */\n\
         typedef uint16_t domid_t;\ntypedef uint32_t grant_ref_t;\n\
         #include <xen/evtchn.h>\n#include <xen/gntdev.h>\n#include <xen/gntalloc.h>\n",
        &names,
    );
    compare(&facts, &values);
    assert!(facts.len() >= 40, "every struct and ioctl is covered");
    assert!(
        names.contains(&"IOCTL_GNTDEV_GRANT_COPY"),
        "grant copy is covered"
    );
}

#[test]
fn grant_copy_constants_match_xens_grant_table_header() {
    let facts = grant_table_facts();
    let names: Vec<&str> = facts.iter().map(|(n, _)| *n).collect();
    let values = c_values("#include <xen/grant_table.h>\n", &names);
    compare(&facts, &values);
    assert!(facts.len() >= 8);
}
