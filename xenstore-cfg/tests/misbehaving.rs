//! Misbehaving clients on real sockets never block or starve a well-behaved one.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use xenstore_cfg::wire::{emit_msg, XsType};
use xenstore_cfg::XsOps;

#[test]
fn half_messages_floods_and_garbage_do_not_disturb_others() {
    let sim = common::Sim::start();
    let mut good = sim.dom0();
    good.write("/big", &[b'v'; 4000]).unwrap();

    // 1. Half a header, then silence.
    let mut half = UnixStream::connect(sim.socket()).unwrap();
    half.write_all(&[11, 0, 0]).unwrap();
    // 2. Thousands of pipelined reads of a 4 KB value, never reading a reply.
    let mut flood = UnixStream::connect(sim.socket()).unwrap();
    flood.set_nonblocking(true).unwrap();
    let mut burst = Vec::new();
    for i in 0..20_000u32 {
        emit_msg(&mut burst, XsType::Read.raw(), i, 0, b"/big\0").unwrap();
    }
    let mut sent = 0;
    let start = Instant::now();
    while sent < burst.len() && start.elapsed() < Duration::from_secs(1) {
        match flood.write(&burst[sent..]) {
            Ok(n) => sent += n,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    // 3. A message longer than XENSTORE_PAYLOAD_MAX: that connection is closed.
    let mut bad = UnixStream::connect(sim.socket()).unwrap();
    let mut hdr = Vec::new();
    emit_msg(&mut hdr, XsType::Write.raw(), 1, 0, b"").unwrap();
    hdr[12..16].copy_from_slice(&5000u32.to_ne_bytes());
    bad.write_all(&hdr).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        bad.read(&mut buf).unwrap(),
        0,
        "oversized message closes the connection"
    );

    // The well-behaved client is served promptly throughout.
    let start = Instant::now();
    for i in 0..200 {
        good.write("/ok", i.to_string().as_bytes()).unwrap();
        assert_eq!(good.read_string("/ok").unwrap(), i.to_string());
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "starved: {:?}",
        start.elapsed()
    );
    // The flooder was throttled, not served without bound: it can still drain its replies.
    flood.set_nonblocking(false).unwrap();
    flood
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = vec![0u8; 64 * 1024];
    assert!(flood.read(&mut got).unwrap() > 0);
    drop(half);
}
