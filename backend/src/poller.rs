//! A level-triggered epoll set with u64 tokens: the daemon's one wait point.
//!
//! Optional busy polling (`poll-us`, QEMU's `poll-max-ns` idea): for that long after the
//! last event the set is checked without sleeping (yielding the CPU between checks), so the
//! next request of a transfer in progress is taken without a wake-up from idle, which costs
//! tens of microseconds on a virtual CPU. An idle daemon sleeps as before. While polling,
//! the rings themselves are looked at too ([`Poller::wait_polling`]), as QEMU's aio poll
//! handlers read a virtqueue's index: a request is seen when its index is published, not
//! when its notification has gone through the kernel. A polling daemon's rings also leave
//! their request event index unarmed (the frontend then sends no notification at all);
//! `rings` re-arms them, with ring.h's final check, before the set sleeps.
//!
//! Level-triggered on purpose: a source we did not fully drain (an event channel we
//! re-check after unmasking, a device with more completions) wakes us again instead of
//! being lost.

use std::cell::Cell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::epoll;

use crate::host::Readiness;

/// What a token stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// The xenstore connection.
    Xenstore,
    /// The signal pipe.
    Signal,
    /// Host hotplug events.
    Hotplug,
    /// A controller's event channel (by controller serial).
    Evtchn(u32),
    /// A controller's device on a port.
    Device(u32, u8),
    /// A controller's ring has requests no event announced (busy polling; never in the
    /// epoll set).
    Ring(u32),
}

impl Token {
    fn encode(self) -> u64 {
        match self {
            Token::Xenstore => 1,
            Token::Signal => 2,
            Token::Hotplug => 3,
            Token::Evtchn(s) => (4 << 56) | (u64::from(s) << 8),
            Token::Device(s, p) => (5 << 56) | (u64::from(s) << 8) | u64::from(p),
            Token::Ring(s) => (6 << 56) | (u64::from(s) << 8),
        }
    }

    fn decode(v: u64) -> Option<Self> {
        let serial = u32::try_from((v >> 8) & 0xffff_ffff).ok()?;
        let port = u8::try_from(v & 0xff).ok()?;
        Some(match v >> 56 {
            0 => match v {
                1 => Token::Xenstore,
                2 => Token::Signal,
                3 => Token::Hotplug,
                _ => return None,
            },
            4 => Token::Evtchn(serial),
            5 => Token::Device(serial, port),
            6 => Token::Ring(serial),
            _ => return None,
        })
    }
}

/// The epoll set.
#[derive(Debug)]
pub struct Poller {
    fd: OwnedFd,
    /// How long to keep checking without sleeping after an event (zero: never).
    busy_poll: Duration,
    last_event: Cell<Instant>,
}

impl Poller {
    /// A new, empty set that sleeps as soon as nothing is ready.
    pub fn new() -> std::io::Result<Self> {
        Self::with_busy_poll(Duration::ZERO)
    }

    /// A new, empty set that keeps checking for `busy_poll` after each event before it
    /// sleeps.
    pub fn with_busy_poll(busy_poll: Duration) -> std::io::Result<Self> {
        Ok(Poller {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            busy_poll,
            last_event: Cell::new(Instant::now()),
        })
    }

    /// Watches `fd` for `readiness`.
    pub fn add(
        &self,
        fd: BorrowedFd<'_>,
        readiness: Readiness,
        token: Token,
    ) -> std::io::Result<()> {
        let flags = match readiness {
            Readiness::Readable => epoll::EventFlags::IN,
            Readiness::Writable => epoll::EventFlags::OUT,
        };
        epoll::add(
            &self.fd,
            fd,
            epoll::EventData::new_u64(token.encode()),
            flags,
        )?;
        Ok(())
    }

    /// Stops watching `fd` (no error if it was not watched).
    pub fn delete(&self, fd: BorrowedFd<'_>) {
        let _ = epoll::delete(&self.fd, fd);
    }

    /// Waits for events (forever if `timeout` is `None`), returning their tokens.
    pub fn wait(&self, timeout: Option<Duration>) -> std::io::Result<Vec<Token>> {
        self.wait_polling(timeout, |_, _| {})
    }

    /// [`Poller::wait`], and while busy polling each pass first calls `rings(false, out)`,
    /// which adds a [`Token::Ring`] for every ring with work (read from shared memory, no
    /// system call): that work is taken without waiting for a notification. Before the set
    /// sleeps it calls `rings(true, out)`, which must re-arm every ring's event index
    /// (`RING_FINAL_CHECK_FOR_REQUESTS`) and add the [`Token::Evtchn`] of each ring that
    /// has work after all: then the set does not sleep. Rings left unarmed while polling
    /// thus never cost a lost wake-up. `rings` is never called when busy polling is off.
    pub fn wait_polling(
        &self,
        timeout: Option<Duration>,
        mut rings: impl FnMut(bool, &mut Vec<Token>),
    ) -> std::io::Result<Vec<Token>> {
        let until = self.last_event.get() + self.busy_poll;
        let mut ready = Vec::new();
        while ready.is_empty() && Instant::now() < until {
            rings(false, &mut ready);
            if ready.is_empty() {
                ready = self.wait_once(Some(Duration::ZERO))?;
            }
            if ready.is_empty() {
                std::thread::yield_now();
            }
        }
        if ready.is_empty() && !self.busy_poll.is_zero() {
            rings(true, &mut ready);
        }
        if ready.is_empty() {
            ready = self.wait_once(timeout)?;
        }
        if !ready.is_empty() {
            self.last_event.set(Instant::now());
        }
        Ok(ready)
    }

    fn wait_once(&self, timeout: Option<Duration>) -> std::io::Result<Vec<Token>> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
        let ts = timeout.map(|d| rustix::time::Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        match epoll::wait(
            &self.fd,
            rustix::buffer::spare_capacity(&mut events),
            ts.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
        Ok(events
            .iter()
            .filter_map(|e| Token::decode(e.data.u64()))
            .collect())
    }
}

impl AsFd for Poller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_poll_sees_an_event_and_an_idle_set_still_times_out() {
        let p = Poller::with_busy_poll(Duration::from_millis(20)).unwrap();
        let (a, b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        p.add(a.as_fd(), Readiness::Readable, Token::Hotplug)
            .unwrap();
        // Nothing ready: the busy window (from creation) passes, then the timeout.
        let t = Instant::now();
        assert!(p.wait(Some(Duration::from_millis(30))).unwrap().is_empty());
        assert!(t.elapsed() >= Duration::from_millis(30));
        rustix::io::write(&b, b"x").unwrap();
        assert_eq!(p.wait(None).unwrap(), vec![Token::Hotplug]);
    }

    #[test]
    fn busy_poll_asks_the_rings_and_only_while_polling() {
        let p = Poller::with_busy_poll(Duration::from_millis(200)).unwrap();
        let mut asked = 0;
        let t = p
            .wait_polling(None, |arm, out| {
                assert!(!arm, "re-armed while still polling");
                asked += 1;
                if asked == 3 {
                    out.push(Token::Ring(9));
                }
            })
            .unwrap();
        assert_eq!((t, asked), (vec![Token::Ring(9)], 3));
        // The window runs out: the rings are re-armed, and work found then means no sleep.
        let p = Poller::with_busy_poll(Duration::from_millis(2)).unwrap();
        let mut armed = 0;
        let t = p
            .wait_polling(None, |arm, out| {
                if arm {
                    armed += 1;
                    out.push(Token::Evtchn(4));
                }
            })
            .unwrap();
        assert_eq!((t, armed), (vec![Token::Evtchn(4)], 1));
        // Busy polling off: the rings are never asked, the set just times out.
        let p = Poller::new().unwrap();
        let t = p
            .wait_polling(Some(Duration::from_millis(5)), |_, _| panic!("asked"))
            .unwrap();
        assert!(t.is_empty());
    }

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token::Xenstore,
            Token::Signal,
            Token::Hotplug,
            Token::Evtchn(7),
            Token::Evtchn(u32::MAX),
            Token::Ring(3),
            Token::Device(3, 31),
            Token::Device(u32::MAX, 1),
        ] {
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(0), None);
    }
}
