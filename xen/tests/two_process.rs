//! Two processes exchanging data through granted pages and event channels on the simulated
//! platform, and `kill -9` of either side cleaned up by the broker. The child is this test
//! binary re-run with `PVUSB_XEN_TEST_ROLE` set.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::{idle, readable, say, wait_for_sigkill, wait_until, Sim};
use pvusb_xen::sim::{Counters, SimPlatform};
use pvusb_xen::{
    Access, DomId, EndAccessError, EventChannels, EvtchnPort, GrantAllocator, GrantMapper,
    GrantRef, PAGE_SIZE,
};

const ROLE: &str = "PVUSB_XEN_TEST_ROLE";
const DIR: &str = "PVUSB_XEN_TEST_DIR";
const ARGS: &str = "PVUSB_XEN_TEST_ARGS";
const WAIT: Duration = Duration::from_secs(10);

fn spawn(role: &str, sim: &Sim, args: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(DIR, sim.dir.path())
        .env(ARGS, args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// The next `@@ ...` line the child printed (libtest prints its own lines too).
fn expect_line(out: &mut BufReader<ChildStdout>) -> Vec<String> {
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
        // libtest's "test child_entry ... " has no newline yet: look anywhere in the line.
        if let Some((_, rest)) = line.trim().split_once("@@ ") {
            return rest.split(' ').map(str::to_string).collect();
        }
    }
}

fn kill9(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Entry point of the child process; does nothing when run as a normal test.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var(DIR).unwrap());
    let args: Vec<u32> = std::env::var(ARGS)
        .unwrap()
        .split_whitespace()
        .map(|a| a.parse().unwrap())
        .collect();
    match role.as_str() {
        "frontend" => frontend(&dir),
        "backend" => backend(&dir, GrantRef(args[0]), EvtchnPort(args[1])),
        other => panic!("unknown role {other}"),
    }
}

/// dom1: grants two pages and an unbound port to dom0, then answers one ping.
fn frontend(dir: &std::path::Path) {
    let hyp = SimPlatform::connect(dir, DomId(1)).unwrap();
    let pages = hyp.alloc(DomId(0), 2, Access::Writable).unwrap();
    let ch = hyp.alloc_unbound(DomId(0)).unwrap();
    pages.write_at(0, b"ping from dom1").unwrap();
    let g = pages.grefs();
    say(&format!("{} {} {}", g[0].0, g[1].0, ch.port().0));
    assert!(readable(ch.as_fd(), WAIT));
    assert!(ch.take_pending().unwrap());
    let mut buf = [0u8; 14];
    pages.read_at(PAGE_SIZE, &mut buf).unwrap();
    assert_eq!(&buf, b"pong from dom0");
    pages.write_at(100, b"ack").unwrap();
    ch.unmask().unwrap();
    ch.notify().unwrap();
    say("done");
    wait_for_sigkill();
}

/// dom2: maps dom1's grant writable, binds its port, writes and notifies.
fn backend(dir: &std::path::Path, gref: GrantRef, port: EvtchnPort) {
    let hyp = SimPlatform::connect(dir, DomId(2)).unwrap();
    let map = hyp.map(DomId(1), &[gref], Access::Writable).unwrap();
    let ch = hyp.bind_interdomain(DomId(1), port).unwrap();
    map.write_at(0, b"backend was here").unwrap();
    ch.notify().unwrap();
    say("mapped");
    wait_for_sigkill();
}

#[test]
fn frontend_process_exchanges_data_then_dies() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    sim.broker.create_domain(DomId(1)).unwrap();
    let (child, mut out) = spawn("frontend", &sim, "");
    let line = expect_line(&mut out);
    let n: Vec<u32> = line.iter().map(|s| s.parse().unwrap()).collect();
    let map = dom0
        .map(
            DomId(1),
            &[GrantRef(n[0]), GrantRef(n[1])],
            Access::Writable,
        )
        .unwrap();
    let be = dom0.bind_interdomain(DomId(1), EvtchnPort(n[2])).unwrap();
    let mut buf = [0u8; 14];
    map.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"ping from dom1");
    map.write_at(PAGE_SIZE, b"pong from dom0").unwrap();
    be.notify().unwrap();
    assert!(readable(be.as_fd(), WAIT));
    assert!(be.take_pending().unwrap());
    let mut ack = [0u8; 3];
    map.read_at(100, &mut ack).unwrap();
    assert_eq!(&ack, b"ack");
    assert_eq!(expect_line(&mut out), ["done"]);

    kill9(child);
    wait_until(|| sim.released() == vec![DomId(1)], "dom1's release");
    let c = sim.broker.counters();
    assert_eq!(
        (c.grants, c.mappings, c.channels, c.domains),
        (2, 1, 1, 1),
        "{c:?}"
    );
    // The dead frontend's pages stay mapped (and usable) until the backend unmaps.
    map.write_at(0, b"x").unwrap();
    drop(map);
    drop(be);
    assert_eq!(sim.broker.counters(), idle(1));
}

#[test]
fn backend_process_dies_while_mapping() {
    let sim = Sim::new();
    let dom1 = sim.domain(1);
    sim.broker.create_domain(DomId(2)).unwrap();
    let pages = dom1.alloc(DomId(2), 1, Access::Writable).unwrap();
    let ch = dom1.alloc_unbound(DomId(2)).unwrap();
    let args = format!("{} {}", pages.grefs()[0].0, ch.port().0);
    let (child, mut out) = spawn("backend", &sim, &args);
    assert_eq!(expect_line(&mut out), ["mapped"]);
    assert!(readable(ch.as_fd(), WAIT));
    assert!(ch.take_pending().unwrap());
    let mut buf = [0u8; 16];
    pages.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"backend was here");
    let pages = match pages.end_access() {
        Err(EndAccessError::StillMapped { pages }) => pages,
        other => panic!("the live backend maps the page: {other:?}"),
    };

    kill9(child);
    wait_until(|| sim.released() == vec![DomId(2)], "dom2's release");
    // The mapper's death counts as its unmap.
    pages.end_access().unwrap();
    drop(ch);
    assert_eq!(
        sim.broker.counters(),
        Counters {
            domains: 2,
            ..idle(1)
        }
    );
    drop(dom1);
    wait_until(
        || sim.released() == vec![DomId(2), DomId(1)],
        "dom1's release",
    );
    sim.wait_counters(idle(0));
}
