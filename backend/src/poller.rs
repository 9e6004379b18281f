//! A level-triggered epoll set with u64 tokens: the daemon's one wait point.
//!
//! Level-triggered on purpose: a source we did not fully drain (an event channel we
//! re-check after unmasking, a device with more completions) wakes us again instead of
//! being lost.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

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
}

impl Token {
    fn encode(self) -> u64 {
        match self {
            Token::Xenstore => 1,
            Token::Signal => 2,
            Token::Hotplug => 3,
            Token::Evtchn(s) => (4 << 56) | (u64::from(s) << 8),
            Token::Device(s, p) => (5 << 56) | (u64::from(s) << 8) | u64::from(p),
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
            _ => return None,
        })
    }
}

/// The epoll set.
#[derive(Debug)]
pub struct Poller {
    fd: OwnedFd,
}

impl Poller {
    /// A new, empty set.
    pub fn new() -> std::io::Result<Self> {
        Ok(Poller {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
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
    fn tokens_round_trip() {
        for t in [
            Token::Xenstore,
            Token::Signal,
            Token::Hotplug,
            Token::Evtchn(7),
            Token::Evtchn(u32::MAX),
            Token::Device(3, 31),
            Token::Device(u32::MAX, 1),
        ] {
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(0), None);
    }
}
