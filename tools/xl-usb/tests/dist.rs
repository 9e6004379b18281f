//! dist/install.sh and the systemd units: installed into a scratch prefix, paths rewritten,
//! and (where systemd-analyze exists) verified.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn install_script_installs_binaries_units_and_examples() {
    common::ensure_platform_binaries();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let o = Command::new("sh")
        .arg(root.join("dist/install.sh"))
        .arg("--no-build")
        .env("BIN_DIR", common::bin_dir())
        // A DESTDIR keeps the script from touching systemd; "/" keeps paths absolute.
        .env("DESTDIR", "/")
        .env("PREFIX", t.join("usr"))
        .env("UNITDIR", t.join("units"))
        .env("CONFDIR", t.join("etc"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for b in ["pvusb-backend", "pvusb-frontend", "xl-usb"] {
        assert!(t.join("usr/sbin").join(b).is_file(), "{b}");
    }
    let sbin = t.join("usr/sbin");
    for u in [
        "pvusb-backend.service",
        "pvusb-frontend.service",
        "xl-usb-rules.service",
    ] {
        let text = std::fs::read_to_string(t.join("units").join(u)).unwrap();
        assert!(
            text.contains(&format!("ExecStart={}/", sbin.display())),
            "{u}:\n{text}"
        );
        assert!(!text.contains("/usr/local/sbin"), "{u}");
        for h in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "RestrictAddressFamilies=",
            "DeviceAllow=/dev/xen/",
        ] {
            assert!(text.contains(h), "{u} lacks {h}");
        }
    }
    let fe = std::fs::read_to_string(t.join("units/pvusb-frontend.service")).unwrap();
    assert!(fe.contains("ExecStartPre=/sbin/modprobe vhci-hcd"));
    let be = std::fs::read_to_string(t.join("units/pvusb-backend.service")).unwrap();
    assert!(be.contains("DeviceAllow=char-usb_device rw"));
    assert!(be.contains(&format!(
        "--config {}/backend.toml",
        t.join("etc").display()
    )));
    // The example rules parse.
    let o = Command::new(sbin.join("xl-usb"))
        .args(["daemon", "--check", "--rules"])
        .arg(t.join("etc/rules.toml.example"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t.join("etc/backend.toml").is_file());

    if Path::new("/usr/bin/systemd-analyze").exists() {
        for u in [
            "pvusb-backend.service",
            "pvusb-frontend.service",
            "xl-usb-rules.service",
        ] {
            let o = Command::new("/usr/bin/systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(t.join("units").join(u))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            // Only complaints about this machine are acceptable (no Xen here).
            let real: Vec<&str> = err
                .lines()
                .filter(|l| !l.contains("/sbin/modprobe"))
                .collect();
            assert!(real.is_empty(), "{u}: {err}");
        }
    }
}
