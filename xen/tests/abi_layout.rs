//! The /dev/xen ioctl structs and numbers, checked against the kernel's uapi headers by a C
//! program compiled with the system gcc. A missing gcc or header fails the test.

use std::collections::BTreeMap;
use std::process::Command;

use pvusb_xen::xen::abi::layout_facts;

const HEADERS: [&str; 3] = [
    "/usr/include/xen/gntdev.h",
    "/usr/include/xen/gntalloc.h",
    "/usr/include/xen/evtchn.h",
];

#[test]
fn rust_layouts_match_the_uapi_headers() {
    for h in HEADERS {
        assert!(
            std::path::Path::new(h).exists(),
            "{h} is missing: install linux-libc-dev (ci/test.sh does)"
        );
    }
    let facts = layout_facts();
    let mut src = String::from(
        "#include <stddef.h>\n#include <stdint.h>\n#include <stdio.h>\n#include <sys/ioctl.h>\n\
         #include <linux/types.h>\n\
         /* The uapi headers use the Xen typedefs without defining them. */\n\
         typedef uint16_t domid_t;\ntypedef uint32_t grant_ref_t;\n\
         #include <xen/evtchn.h>\n#include <xen/gntdev.h>\n#include <xen/gntalloc.h>\n\
         int main(void) {\n",
    );
    for (name, _) in &facts {
        // Each name is also the C expression that computes it.
        src.push_str(&format!(
            "    printf(\"%s=%llu\\n\", \"{name}\", (unsigned long long)({name}));\n"
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
    let c_values: BTreeMap<String, u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    let mut mismatches = Vec::new();
    for (name, rust) in &facts {
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
    assert!(facts.len() >= 30, "every struct and ioctl is covered");
}
