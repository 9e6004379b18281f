//! Tests for `no_stop_on_short` (compiled only under `#[cfg(test)]`, see sim/mod.rs).
//!
//! A bulk IN URB ends short under SHORT_NOT_OK with a BULK_CONTINUATION URB queued behind it
//! and more data in the device. A bus that stops at the short packet (EHCI-like, the
//! default) cancels the continuation before it runs; an xHCI-like bus runs it first, so it
//! takes the device's next data.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::core::{Core, TraceSink};
use super::model::identity;
use super::model::loopback::Loopback;
use super::tests::{open, reap_n};
use super::*;
use crate::host::{
    errno, Completion, HostDevice, HostUrb, SubmitError, UrbBuf, UrbFlags, XferKind,
};

const CONT: UrbFlags = UrbFlags::BULK_CONTINUATION;
const SNOK: UrbFlags = UrbFlags::SHORT_NOT_OK;

fn loopback(no_stop_on_short: bool) -> DeviceSpec {
    let mut spec = DeviceSpec::new(ModelSpec::Loopback { capacity: 1 << 20 });
    spec.no_stop_on_short = no_stop_on_short;
    spec
}

fn bulk(tag: u64, ep: u8, flags: UrbFlags, buf: UrbBuf) -> HostUrb {
    HostUrb::new(tag, XferKind::Bulk, ep, flags, buf)
}

/// `len` bytes counting up from `from`.
fn pattern(from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|i| (i % 251) as u8).collect()
}

fn data(c: &Completion) -> Vec<u8> {
    let n = c.actual_length as usize;
    c.buf.as_slice().unwrap()[..n].to_vec()
}

fn by_tag(done: &[Completion], tag: u64) -> &Completion {
    done.iter().find(|c| c.tag == tag).unwrap()
}

fn take(done: &mut Vec<Completion>, tag: u64) -> Completion {
    let i = done.iter().position(|c| c.tag == tag).unwrap();
    done.swap_remove(i)
}

/// Through `SimDevice`: A (SHORT_NOT_OK, 512) and continuation B wait on an empty loopback;
/// one 150-byte record arrives and a one-shot short-read fault cuts A to 100 bytes, so the
/// device still has 50 bytes when A ends short.
fn short_then_continuation(
    no_stop_on_short: bool,
) -> (tempfile::TempDir, SimDevice, [Completion; 3]) {
    let mut spec = loopback(no_stop_on_short);
    spec.faults.short_read = Some(ShortRead {
        max_bytes: 100,
        endpoint: Some(0x81),
        count: Some(1),
    });
    let (tmp, mut dev, _) = open(spec);
    assert_eq!(dev.bulk_continuation(), !no_stop_on_short);
    dev.submit(bulk(1, 0x81, SNOK, UrbBuf::zeroed(512)))
        .unwrap();
    dev.submit(bulk(2, 0x81, CONT, UrbBuf::zeroed(512)))
        .unwrap();
    dev.submit(bulk(
        10,
        0x01,
        UrbFlags::empty(),
        UrbBuf::from_vec(pattern(0, 150)),
    ))
    .unwrap();
    let mut done = reap_n(&mut dev, 3);
    let [a, b, out] = [1, 2, 10].map(|t| take(&mut done, t));
    assert_eq!((out.status, out.actual_length), (0, 150));
    assert_eq!((a.status, a.actual_length), (-errno::EREMOTEIO, 100));
    assert_eq!(data(&a), pattern(0, 100));
    (tmp, dev, [a, b, out])
}

/// A fresh IN transfer's completion after the chain, with a 7-byte marker record queued
/// behind whatever the device still has.
fn fresh_read(dev: &mut SimDevice) -> Completion {
    dev.submit(bulk(20, 0x81, UrbFlags::empty(), UrbBuf::zeroed(512)))
        .unwrap();
    dev.submit(bulk(
        21,
        0x01,
        UrbFlags::empty(),
        UrbBuf::from_vec(vec![0xee; 7]),
    ))
    .unwrap();
    let mut done = reap_n(dev, 2);
    take(&mut done, 20)
}

#[test]
fn no_stop_on_short_bus_runs_the_continuation_behind_a_short_read() {
    let (_tmp, mut dev, [_, b, _]) = short_then_continuation(true);
    // B was not cancelled in time: it took the device's next 50 bytes and completed.
    assert_eq!((b.status, b.actual_length), (0, 50));
    assert_eq!(data(&b), pattern(100, 50));
    // Nothing was queued behind B when usbfs cancelled A's chain: continuations are refused
    // until a new transfer, as after any failed chain.
    let r = dev
        .submit(bulk(3, 0x81, CONT, UrbBuf::zeroed(512)))
        .unwrap_err();
    assert_eq!(r.error, SubmitError::ContinuationRefused);
    // The 50 bytes are gone from the device: a fresh read gets the next record.
    let c = fresh_read(&mut dev);
    assert_eq!((c.status, data(&c)), (0, vec![0xee; 7]));
    assert_eq!(dev.in_flight(), 0);
}

#[test]
fn stop_on_short_bus_cancels_the_continuation_and_keeps_the_data() {
    let (_tmp, mut dev, [_, b, _]) = short_then_continuation(false);
    assert_eq!((b.status, b.actual_length), (-errno::ECONNRESET, 0));
    let r = dev
        .submit(bulk(3, 0x81, CONT, UrbBuf::zeroed(512)))
        .unwrap_err();
    assert_eq!(r.error, SubmitError::ContinuationRefused);
    // The 50 bytes A left are still in the device, ahead of the marker.
    let c = fresh_read(&mut dev);
    assert_eq!((c.status, data(&c)), (0, pattern(100, 50)));
    assert_eq!(dev.in_flight(), 0);
}

/// A `Write` the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Through `Core` with one clock: two records (100 and 50 bytes) are in the loopback before
/// A runs, so A ends short at the record boundary (without faults). C, a second continuation
/// behind B, is what the cancel still reaches on either bus. B and C are submitted
/// `b_delay` after the rest: with a delay they are not queued yet when A ends.
fn core_chain(
    no_stop_on_short: bool,
    faults: Faults,
    b_delay: Duration,
) -> (Vec<(u64, i32, u32)>, Vec<Completion>, String) {
    let spec = loopback(no_stop_on_short);
    let now = Instant::now();
    let mut core = Core::new(
        Box::new(Loopback::new(1 << 20)),
        identity(&spec, "CONT"),
        faults,
        now,
    );
    core.no_stop_on_short = spec.no_stop_on_short;
    let trace = Shared::default();
    core.trace = Some(TraceSink(Box::new(trace.clone())));
    let urbs = [
        (
            bulk(
                10,
                0x01,
                UrbFlags::empty(),
                UrbBuf::from_vec(pattern(0, 100)),
            ),
            now,
        ),
        (
            bulk(
                11,
                0x01,
                UrbFlags::empty(),
                UrbBuf::from_vec(pattern(100, 50)),
            ),
            now,
        ),
        (bulk(1, 0x81, SNOK, UrbBuf::zeroed(512)), now),
        (bulk(2, 0x81, CONT, UrbBuf::zeroed(512)), now + b_delay),
        (bulk(3, 0x81, CONT, UrbBuf::zeroed(512)), now + b_delay),
    ];
    for (urb, at) in urbs {
        core.submit(urb, at).unwrap();
    }
    assert!(core.process(now));
    let mut done = Vec::new();
    while let Some(c) = core.reap() {
        done.push(c);
    }
    assert_eq!(core.in_flight(), 0);
    let text = String::from_utf8(trace.0.lock().unwrap().clone()).unwrap();
    let st = done
        .iter()
        .map(|c| (c.tag, c.status, c.actual_length))
        .collect();
    (st, done, text)
}

const OUTS_OK: [(u64, i32, u32); 2] = [(10, 0, 100), (11, 0, 50)];

#[test]
fn core_runs_the_ready_continuation_before_cancelling_on_no_stop_on_short() {
    let (st, done, trace) = core_chain(true, Faults::default(), Duration::ZERO);
    let expected = [
        (1, -errno::EREMOTEIO, 100),
        (2, 0, 50),
        (3, -errno::ECONNRESET, 0),
    ];
    assert_eq!(st, [&OUTS_OK[..], &expected].concat());
    assert_eq!(data(by_tag(&done, 2)), pattern(100, 50));
    let lines: Vec<&str> = trace.lines().collect();
    assert_eq!(lines.len(), 4, "{trace}");
    assert!(lines[2].starts_with("ep=81 kind=Bulk len=512 actual=100 status=-121 cont=0"));
    assert!(lines[3].starts_with("ep=81 kind=Bulk len=512 actual=50 status=0 cont=1 head=6465"));

    assert_only_the_short_read_ran(false, Duration::ZERO);
}

/// A ends short at the record boundary and both continuations behind it are cancelled
/// without running.
fn assert_only_the_short_read_ran(no_stop_on_short: bool, b_delay: Duration) {
    let (st, _, trace) = core_chain(no_stop_on_short, Faults::default(), b_delay);
    let expected = [
        (1, -errno::EREMOTEIO, 100),
        (2, -errno::ECONNRESET, 0),
        (3, -errno::ECONNRESET, 0),
    ];
    assert_eq!(st, [&OUTS_OK[..], &expected].concat());
    assert_eq!(trace.lines().count(), 3, "{trace}");
}

/// B submitted after A ran: the controller had nothing queued to move on to.
#[test]
fn core_cancels_a_continuation_submitted_after_the_short_read_on_no_stop_on_short() {
    assert_only_the_short_read_ran(true, Duration::from_millis(1));
}

#[test]
fn core_failures_halt_the_queue_even_on_no_stop_on_short() {
    // An error or a stall halts the endpoint on every controller: nothing behind runs.
    let fail = Faults {
        fail_nth: Some(FailNth {
            n: 1,
            errno: errno::EPROTO,
            endpoint: Some(0x81),
        }),
        ..Faults::default()
    };
    let stall = Faults {
        stall: vec![0x81],
        ..Faults::default()
    };
    for (faults, status) in [(fail, -errno::EPROTO), (stall, -errno::EPIPE)] {
        let (st, _, _) = core_chain(true, faults, Duration::ZERO);
        let expected = [
            (1, status, 0),
            (2, -errno::ECONNRESET, 0),
            (3, -errno::ECONNRESET, 0),
        ];
        assert_eq!(st, [&OUTS_OK[..], &expected].concat());
    }
}
