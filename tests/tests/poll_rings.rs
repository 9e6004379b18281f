//! Busy polling reads the rings and leaves their event indices unarmed while it polls (no
//! notifications); before sleeping each daemon re-arms and re-checks. Both halves are
//! checked here: every URB is answered with its data across idle gaps drawn around the
//! poll window's end, promptly (a missed re-arm leaves a request or response unnoticed
//! until the daemon's idle timeout, 250 ms to 1 s, wakes it: many slow answers), and
//! daemons left idle past the window sleep (a ring the poller kept seeing as busy would
//! keep them spinning).

use std::time::{Duration, Instant};

use pvusb_backend::sim::{DeviceSpec, ModelSpec};
use pvusb_tests::cpu::cpu_time;
use pvusb_tests::platform::Platform;
use pvusb_tests::rng::Rng;
use pvusb_tests::usbip::{bulk_in, bulk_out, control, Answer, UsbipClient};

const T: Duration = Duration::from_secs(5);
/// An answer this late was found by a timeout, not by a notification or the poller.
const SLOW: Duration = Duration::from_millis(150);
/// Slow answers tolerated (a loaded machine can stall any process that long now and then).
const SLOW_OK: usize = 10;
const POLL_US: u64 = 100;

fn done(a: Answer) -> pvusb_frontend::usbip::RetSubmit {
    match a {
        Answer::Done(r) => r,
        other => panic!("expected a completion, got {other:?}"),
    }
}

/// Spins for `d` (a sleep would overshoot the microsecond gaps we want by far).
fn pause(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// One polling stack at a time: two of them (four spinning daemons) on a two-CPU machine
/// would stall each other's answers for reasons that have nothing to do with wake-ups.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn polling_stack() -> (std::sync::MutexGuard<'static, ()>, Platform, UsbipClient) {
    let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = Platform::new(&[1]);
    let busid = p.plug(DeviceSpec::new(ModelSpec::Loopback { capacity: 1 << 20 }));
    let id = p.add_controller(1, 0, 4);
    p.assign(&id, 1, Some(&busid));
    p.start_backend_with(&format!("feature-persistent = true\npoll-us = {POLL_US}\n"));
    let poll = POLL_US.to_string();
    let (attach, sock) = p.start_frontend_vhci_with(1, &["--poll-us", &poll]);
    let mut c = UsbipClient::attached(sock, attach.devid, "1-1");
    let set = done(
        c.transfer(control([0, 9, 1, 0, 0, 0, 0, 0], vec![]), T)
            .unwrap(),
    );
    assert_eq!(set.status, 0, "SET_CONFIGURATION\n{}", p.logs());
    (serial, p, c)
}

#[test]
fn ring_polling_answers_every_urb_across_the_window_edge() {
    let (_serial, p, mut c) = polling_stack();
    let mut rng = Rng::new(0x9011);
    let mut slow = 0;
    for round in 0..600u32 {
        // Gaps before each pair: none (taken while polling), around the window's end
        // (the re-arm race), or well past it (taken after sleeping).
        let gap = match rng.below(8) {
            0..=2 => Duration::ZERO,
            3..=6 => Duration::from_micros(POLL_US / 2 + rng.below(2 * POLL_US)),
            _ => Duration::from_micros(500 + rng.below(1500)),
        };
        pause(gap);
        // Bulk (EP 1) and interrupt (EP 2) in flight together: two requests on the ring,
        // answered in either order.
        let len = 1 + rng.below(if round % 4 == 0 { 20_000 } else { 64 }) as usize;
        let a: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let b: Vec<u8> = (0..64).map(|_| rng.next_u64() as u8).collect();
        let t = Instant::now();
        let sa = c.submit(bulk_out(1, a.clone()));
        let sb = c.submit(bulk_out(2, b.clone()));
        for (seq, n) in [(sa, len), (sb, 64)] {
            let out =
                done(c.wait_for(seq, T).unwrap_or_else(|e| {
                    panic!("round {round}: OUT unanswered ({e:?})\n{}", p.logs())
                }));
            assert_eq!(
                (out.status, out.actual_length as usize),
                (0, n),
                "round {round}"
            );
        }
        slow += usize::from(t.elapsed() > SLOW);
        pause(Duration::from_micros(rng.below(2 * POLL_US)));
        let t = Instant::now();
        let sa = c.submit(bulk_in(1, len as u32));
        let sb = c.submit(bulk_in(2, 64));
        for (seq, want) in [(sa, &a), (sb, &b)] {
            let back =
                done(c.wait_for(seq, T).unwrap_or_else(|e| {
                    panic!("round {round}: IN unanswered ({e:?})\n{}", p.logs())
                }));
            assert_eq!(back.status, 0, "round {round}\n{}", p.logs());
            assert!(back.data == *want, "round {round}: echoed data differs");
        }
        slow += usize::from(t.elapsed() > SLOW);
        assert!(
            slow <= SLOW_OK,
            "round {round}: {slow} answers slower than {SLOW:?} (a lost wake-up?)\n{}",
            p.logs()
        );
    }
    c.ledger.assert_settled();
}

#[test]
fn busy_polling_daemons_sleep_when_idle_and_wake_for_the_next_urb() {
    let (_serial, p, mut c) = polling_stack();
    // Returns whether the pair took longer than `SLOW`.
    let echo = |c: &mut UsbipClient, byte: u8| {
        let t = Instant::now();
        let out = done(c.transfer(bulk_out(1, vec![byte; 64]), T).unwrap());
        assert_eq!(out.status, 0);
        let back = done(c.transfer(bulk_in(1, 64), T).unwrap());
        assert_eq!((back.status, back.data), (0, vec![byte; 64]));
        t.elapsed() > SLOW
    };
    let mut slow = 0;
    for i in 0..200u8 {
        slow += usize::from(echo(&mut c, i));
        assert!(
            slow <= SLOW_OK,
            "{slow} slow echoes (a lost wake-up?)\n{}",
            p.logs()
        );
    }
    let pids = [
        p.backend
            .as_ref()
            .and_then(|d| d.pid())
            .expect("backend pid"),
        p.frontends
            .get(&1)
            .and_then(|(d, _)| d.pid())
            .expect("frontend pid"),
    ]
    .map(|pid| pid.to_string());
    // Far past the window: both must be asleep.
    std::thread::sleep(Duration::from_millis(100));
    let before = pids.each_ref().map(|pid| cpu_time(pid));
    std::thread::sleep(Duration::from_secs(1));
    for (pid, t0) in pids.iter().zip(before) {
        let used = cpu_time(pid).saturating_sub(t0);
        assert!(
            used < Duration::from_millis(100),
            "pid {pid} used {used:?} of CPU in 1 s idle: still polling\n{}",
            p.logs()
        );
    }
    // And woken from that sleep by the next request (both directions re-armed).
    assert!(!echo(&mut c, 0xa5), "slow to wake up\n{}", p.logs());
    c.ledger.assert_settled();
}
