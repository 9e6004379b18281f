//! A simulated event channel port: an eventfd per end plus a shared page with each end's
//! mask and pending bits, the counterpart of the `evtchn_mask`/`evtchn_pending` bitmaps Xen
//! keeps in `shared_info`.
//!
//! Sending sets the receiver's pending bit and writes its eventfd only on the edge from idle
//! (neither pending nor masked), as Xen raises an upcall only for an unmasked port that was
//! not already pending. Taking a delivered event masks the port and clears pending; unmasking
//! re-raises the event if one arrived while masked — /dev/xen/evtchn's behaviour, without the
//! two `epoll_ctl` calls per event an epoll-based mask costs. The pollable fd is the eventfd
//! itself, so a daemon's poller watches it directly.
//!
//! The page is shared with the peer, which may write anything into it. That can only cost
//! this end a spurious wake-up or its own peer's events (a peer that sets our mask bit stops
//! its own notifications from waking us): taking an event trusts this end's own `masked`
//! flag, never the page. A new binder resets its word and the allocator's pending bit, so
//! a backend killed in the middle of a notify cannot leave the frontend deaf.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use pvusb_ring::shm::AtomicWord;
use rustix::io::Errno;

use super::Conn;
use crate::mem::Region;
use crate::sim::wire::Request;
use crate::{Access, EventChannel, EvtchnError, EvtchnPort, PAGE_SIZE};

/// An event arrived and has not been taken.
const PENDING: u32 = 1;
/// The receiving end took an event and has not unmasked yet.
const MASKED: u32 = 2;

/// Which end of the channel this process holds; it picks the state words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Allocated the port (`EVTCHNOP_alloc_unbound`): word 0 is ours.
    Allocator,
    /// Bound to it (`EVTCHNOP_bind_interdomain`): word 1 is ours.
    Binder,
}

/// Unbinds the port at the broker when dropped.
#[derive(Debug)]
pub(super) struct PortGuard {
    pub(super) conn: Arc<Conn>,
    pub(super) port: EvtchnPort,
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        if let Err(e) = self
            .conn
            .call_done(&Request::EvtchnUnbind { port: self.port })
        {
            tracing::debug!(port = self.port.0, error = %e, "unbind failed");
        }
    }
}

/// One end of a simulated channel: the port and its [`Bits`].
pub(super) struct SimChannel {
    bits: Bits,
    guard: PortGuard,
}

/// The mask/pending handshake of one end: `rx` is this end's eventfd, `tx` the peer's.
struct Bits {
    rx: OwnedFd,
    tx: OwnedFd,
    /// This end's state word (the peer sets PENDING in it).
    mine: AtomicWord,
    /// The peer's state word (we set PENDING in it).
    theirs: AtomicWord,
    /// Authoritative: the page may be scribbled on by the peer.
    masked: AtomicBool,
}

impl std::fmt::Debug for SimChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimChannel")
            .field("port", &self.guard.port)
            .field("mine", &self.bits.mine.load(Ordering::Relaxed))
            .field("theirs", &self.bits.theirs.load(Ordering::Relaxed))
            .field("masked", &self.bits.masked)
            .finish()
    }
}

fn bad_reply(why: &'static str) -> EvtchnError {
    EvtchnError::from(crate::error::BrokerError::BadReply(why))
}

impl SimChannel {
    /// Wraps the three fds the broker passed (`rx`, `tx`, the channel page) for `end`.
    pub(super) fn new(
        fds: Vec<OwnedFd>,
        end: End,
        guard: PortGuard,
    ) -> Result<SimChannel, EvtchnError> {
        let mut fds = fds.into_iter();
        let (Some(rx), Some(tx), Some(page), None) =
            (fds.next(), fds.next(), fds.next(), fds.next())
        else {
            return Err(bad_reply("a port needs two eventfds and its channel page"));
        };
        Ok(SimChannel {
            bits: Bits::new(rx, tx, &page, end)?,
            guard,
        })
    }
}

impl Bits {
    fn new(rx: OwnedFd, tx: OwnedFd, page: &OwnedFd, end: End) -> Result<Bits, EvtchnError> {
        let shm = Region::map_shared(page.as_fd(), 0, PAGE_SIZE, Access::Writable)
            .map_err(|errno| EvtchnError::Os {
                op: "mmap channel page",
                errno,
            })?
            .into_shm();
        let word =
            |off| AtomicWord::new(&shm, off).map_err(|_| bad_reply("channel page too small"));
        let (mine, theirs) = match end {
            End::Allocator => (word(0)?, word(4)?),
            End::Binder => (word(4)?, word(0)?),
        };
        if end == End::Binder {
            // A binder takes over a port a previous binder may have left in any state. That
            // one may also have died between setting the allocator's pending bit and writing
            // its eventfd: a bit left set would swallow every later notification (senders
            // write only on the edge from idle). The allocator loses nothing: events of a
            // dead backend are moot, and the new one has sent none yet.
            mine.store(0, Ordering::SeqCst);
            theirs.fetch_and(!PENDING, Ordering::SeqCst);
        }
        Ok(Bits {
            rx,
            tx,
            mine,
            theirs,
            masked: AtomicBool::new(false),
        })
    }

    fn mine(&self) -> &AtomicU32 {
        &self.mine
    }

    /// Makes `fd` (an eventfd) readable; a saturated counter is readable already.
    fn kick(fd: &OwnedFd) -> Result<(), EvtchnError> {
        match rustix::io::write(fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(errno) => Err(EvtchnError::Os {
                op: "eventfd write",
                errno,
            }),
        }
    }

    fn notify(&self) -> Result<(), EvtchnError> {
        // SeqCst pairs with the receiver's swap/fetch_and: either it sees our PENDING when
        // it unmasks, or we see it unmasked and write the eventfd.
        let old = self.theirs.fetch_or(PENDING, Ordering::SeqCst);
        if old & (PENDING | MASKED) == 0 {
            Self::kick(&self.tx)?;
        }
        Ok(())
    }

    fn take_pending(&self) -> Result<bool, EvtchnError> {
        if self.masked.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut buf = [0u8; 8];
        match rustix::io::read(&self.rx, &mut buf) {
            Ok(_) => {
                self.masked.store(true, Ordering::Release);
                // Events sent from here on are coalesced until unmask re-raises them.
                self.mine().swap(MASKED, Ordering::SeqCst);
                Ok(true)
            }
            Err(Errno::AGAIN) => Ok(false),
            Err(errno) => Err(EvtchnError::Os {
                op: "eventfd read",
                errno,
            }),
        }
    }

    fn unmask(&self) -> Result<(), EvtchnError> {
        if self.masked.swap(false, Ordering::AcqRel) {
            let old = self.mine().fetch_and(!MASKED, Ordering::SeqCst);
            if old & PENDING != 0 {
                // Sent while masked: the sender left the eventfd alone, raise it ourselves.
                Self::kick(&self.rx)?;
            }
        }
        Ok(())
    }
}

impl AsFd for SimChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.bits.rx.as_fd()
    }
}

impl EventChannel for SimChannel {
    fn port(&self) -> EvtchnPort {
        self.guard.port
    }

    fn notify(&self) -> Result<(), EvtchnError> {
        self.bits.notify()
    }

    fn take_pending(&self) -> Result<bool, EvtchnError> {
        self.bits.take_pending()
    }

    fn unmask(&self) -> Result<(), EvtchnError> {
        self.bits.unmask()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{eventfd, EventfdFlags};
    use rustix::fs::{memfd_create, MemfdFlags};

    fn efd() -> OwnedFd {
        eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap()
    }

    fn page() -> OwnedFd {
        let fd = memfd_create("test-evtchn", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, PAGE_SIZE as u64).unwrap();
        fd
    }

    fn dup(fd: &OwnedFd) -> OwnedFd {
        rustix::io::fcntl_dupfd_cloexec(fd, 0).unwrap()
    }

    /// The allocator's and the binder's ends over the same eventfds and page.
    fn pair(page: &OwnedFd, a_rx: &OwnedFd, b_rx: &OwnedFd) -> (Bits, Bits) {
        let a = Bits::new(dup(a_rx), dup(b_rx), page, End::Allocator).unwrap();
        let b = Bits::new(dup(b_rx), dup(a_rx), page, End::Binder).unwrap();
        (a, b)
    }

    #[test]
    fn a_binder_that_died_mid_notify_does_not_silence_the_next_one() {
        let (page, a_rx, b_rx) = (page(), efd(), efd());
        let (fe, be) = pair(&page, &a_rx, &b_rx);
        // The backend dies between setting the frontend's pending bit and the eventfd write.
        be.theirs.fetch_or(PENDING, Ordering::SeqCst);
        drop(be);
        assert!(!fe.take_pending().unwrap());
        let be = Bits::new(dup(&b_rx), dup(&a_rx), &page, End::Binder).unwrap();
        be.notify().unwrap();
        assert!(
            fe.take_pending().unwrap(),
            "the restarted backend's event arrives"
        );
    }

    #[test]
    fn a_peer_scribbling_on_our_word_cannot_make_us_take_events_while_masked() {
        let (page, a_rx, b_rx) = (page(), efd(), efd());
        let (fe, be) = pair(&page, &a_rx, &b_rx);
        fe.notify().unwrap();
        assert!(be.take_pending().unwrap());
        // A hostile frontend clears our mask bit and notifies: the eventfd fires, but the
        // port stays masked until we unmask it ourselves.
        fe.theirs.store(0, Ordering::SeqCst);
        fe.notify().unwrap();
        assert!(!be.take_pending().unwrap());
        be.unmask().unwrap();
        assert!(be.take_pending().unwrap());
        be.unmask().unwrap();
        // And garbage in every bit costs at most a spurious delivery.
        fe.theirs.store(u32::MAX, Ordering::SeqCst);
        be.unmask().unwrap();
        fe.notify().unwrap();
        let _ = be.take_pending().unwrap();
        be.unmask().unwrap();
    }
}
