//! `xl-usb daemon`: rules applied when devices are plugged and domains appear, and undone
//! when they go away; rules-file errors reported as file:line.

mod common;

use std::process::{Command, Stdio};

use common::{stderr, wait_for, Sim};
use xenstore_cfg::XsOps;

fn port(sim: &Sim, domid: u16, devid: u32, port: u8) -> String {
    let mut xs = sim.xs();
    let be = xs
        .try_read(&format!(
            "/local/domain/{domid}/device/vusb/{devid}/backend"
        ))
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap());
    match be {
        Some(be) => xs
            .try_read(&format!("{be}/port/{port}"))
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
            .unwrap_or_default(),
        None => String::new(),
    }
}

#[test]
fn attaches_on_plug_and_on_domain_start_detaches_on_unplug_and_on_domain_end() {
    let mut sim = Sim::start();
    sim.start_fake_backend();
    let rules = sim.path().join("rules.toml");
    std::fs::write(
        &rules,
        r#"
# sticks by id and serial
[[rule]]
device = "1209:0002"
serial = "RULE1"
domain = "guest1"

[[rule]]
device = "1209:0002"
serial = "RULE3"
domain = "guest3"
controller = 0
port = 2
"#,
    )
    .unwrap();
    let daemon = Command::new(assert_cmd::cargo::cargo_bin("xl-usb"))
        .arg("--sim")
        .arg(sim.path())
        .args(["--timeout", "5", "daemon", "--rules"])
        .arg(&rules)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Plugged while the domain runs: attached at once.
    let a = sim.plug_stick("RULE1");
    wait_for("RULE1 on guest1", || port(&sim, 1, 0, 1) == a);
    // A device no rule names stays where it is.
    let other = sim.plug_stick("NORULE");
    // Plugged before its domain exists: attached when the domain appears.
    let c = sim.plug_stick("RULE3");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut xs = sim.xs();
    xs.write("/local/domain/3/name", b"guest3").unwrap();
    xs.introduce(3, 0, 0).unwrap();
    wait_for("RULE3 on guest3 controller 0 port 2", || {
        port(&sim, 3, 0, 2) == c
    });

    // Unplugged: the port is emptied.
    pvusb_backend::sim::unplug(sim.path(), &a).unwrap();
    wait_for("guest1 port 1 emptied", || port(&sim, 1, 0, 1).is_empty());
    // Replugged: back on a port.
    let a2 = sim.plug_stick("RULE1");
    wait_for("RULE1 back on guest1", || port(&sim, 1, 0, 1) == a2);

    // The domain goes away: its device is detached and the controller removed.
    xs.release(3).unwrap();
    wait_for("guest3's controller removed", || {
        xs.try_read("/local/domain/0/backend/vusb/3/0/state")
            .unwrap()
            .is_none()
    });
    let assigned = common::stdout(&sim.xl(&["--json", "usb-assignable-list"]).output().unwrap());
    let v: serde_json::Value = serde_json::from_str(&assigned).unwrap();
    let row = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["busid"] == other.as_str())
        .unwrap();
    assert!(row["assigned"].is_null(), "{row}");

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(daemon.id()).unwrap()).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = daemon.wait_with_output().unwrap();
    let text = common::stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("rule(s) from"), "{text}");
    assert!(
        text.contains("(rule at line 3) attached to guest1 (1) controller 0 port 1"),
        "{text}"
    );
    assert!(
        text.contains("unplugged: detached from dom1 controller 0 port 1"),
        "{text}"
    );
    assert!(text.contains("dom3 gone: removed controller 0"), "{text}");
}

#[test]
fn rules_errors_name_file_and_line() {
    let sim = Sim::start();
    let rules = sim.path().join("bad.toml");
    std::fs::write(
        &rules,
        "[[rule]]\ndevice = \"1209:2\"\ndomain = \"guest1\"\n",
    )
    .unwrap();
    let o = sim
        .xl(&["daemon", "--check", "--rules", rules.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "xl-usb: {}:2: device = \"1209:2\": expected vid:pid in hex, e.g. \"46f4:0001\"\n",
            rules.display()
        )
    );
    std::fs::write(
        &rules,
        "[[rule]]\nbusid = \"1-1\"\ndomain = \"guest1\"\n\n[[rule]]\nbusid = 7\n",
    )
    .unwrap();
    let o = sim
        .xl(&["daemon", "--check", "--rules", rules.to_str().unwrap()])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!("xl-usb: {}:6: ", rules.display())),
        "{err}"
    );
    std::fs::write(&rules, "[[rule]]\nbusid = \"1-1\"\ndomain = \"guest1\"\n").unwrap();
    sim.xl(&["daemon", "--check", "--rules", rules.to_str().unwrap()])
        .assert()
        .success()
        .stdout(format!("{}: 1 rule(s) OK\n", rules.display()));
    let o = sim
        .xl(&["daemon", "--check", "--rules", "/nonexistent/rules.toml"])
        .output()
        .unwrap();
    assert_eq!(
        stderr(&o),
        "xl-usb: /nonexistent/rules.toml: No such file or directory (os error 2)\n"
    );
}
