//! Per-endpoint error containment ("auto contingent allegiance", seed 004), both halves' state.
//!
//! The guest pipelines URBs; when one fails, the ones queued behind it were written
//! assuming it succeeded (seed 004's wrong-LBA write). Linux stalls an endpoint's queue
//! until the failed URB's completion handler has run; a split driver cannot nest the guest's
//! handler inside the host's, so containment is done in two halves:
//!
//! - **backend** ([`BackendAca`]): when a bulk or interrupt URB fails on the host, the
//!   endpoint becomes *contained*. URBs in flight behind the failed one are cancelled, and
//!   every later request for the endpoint is answered at once with [`CONTAINED`] without
//!   reaching the device, until a request carries [`ACA_CLEAR`]; that one reopens the
//!   endpoint and is submitted. The backend learns of the failure only when it reaps the
//!   URB, so on bulk endpoints a usbfs shell closes that window with
//!   `USBDEVFS_URB_BULK_CONTINUATION` (see `backend::Action::Submit`): the kernel cancels
//!   the followers from the failed URB's completion handler, before the device runs them.
//!   usbfs has no such chain for interrupt endpoints; there a follower already queued may
//!   still run before the failure is reaped (they rarely have more than one URB queued).
//! - **frontend** ([`FrontendAca`]): once the client has *seen* a failure on an endpoint
//!   (the failed transfer was given back), the first transfer it submits after that is
//!   held until every earlier transfer of the endpoint has completed, then sent with
//!   [`ACA_CLEAR`]. Everything the client queued before it saw the failure goes out without
//!   the mark and is contained; everything after the mark was submitted after the failure
//!   was seen. Waiting for the endpoint to go idle matters: an earlier transfer still out
//!   may fail too, and a mark sent before the client saw that would clear it. So each
//!   failure the client sees starts an epoch, and only a transfer submitted in the current
//!   epoch may carry the mark; a [`CONTAINED`] answer is collateral of a failure already
//!   counted and starts none, which is what lets a driver that resubmits as each URB
//!   completes (usbnet's rx queue) make progress. That is DESIGN.md contract 3.
//!
//! Setting the mark when the backend is not contained is harmless (it is a plain request
//! then), so the frontend marks after *any* error answer on the endpoint, including a
//! cancelled request it unlinked itself: it cannot tell those apart on the wire.
//!
//! The extension is negotiated: both sides write [`FEATURE_ACA`] = `"1"` in their own
//! xenstore directory (the backend before InitWait, the frontend before Connected, as
//! blkif does with `feature-persistent`) and it is on only when both did. A stock peer never
//! sees [`ACA_CLEAR`] nor [`CONTAINED`] answers caused by containment.

use crate::wire::{Status, XferType};

/// Xenstore key (in each side's own device directory) that offers error containment.
pub const FEATURE_ACA: &str = "feature-aca";

/// usbif `transfer_flags` bit that clears a contained endpoint ("ACA clear mark").
///
/// usbif.h defines only bit 0 (`USBIF_SHORT_NOT_OK`) and xen-hcd sends nothing else. The
/// top bit is far from the low bits Linux's own `URB_*` flags use (ISO_ASAP 0x2,
/// ZERO_PACKET 0x40, NO_INTERRUPT 0x80), so a later usbif extension copying those will
/// not collide with it. A backend that did not negotiate it refuses it as an unknown flag.
pub const ACA_CLEAR: u16 = 0x8000;

/// Status of a request that was contained: cancelled behind a failed URB, or answered
/// without reaching the device while its endpoint was contained.
///
/// Seed 004 asks whether this should be -ECONNRESET (as if unlinked) or -EAGAIN. Neither
/// exists in usbif: xen-hcd turns every code outside usbif.h's seven into -ESHUTDOWN, so
/// -ESHUTDOWN is what a guest would see for either. It is also the right meaning: Linux
/// uses it for "the endpoint or controller was disabled, the URB was not performed", and
/// drivers do not blindly resubmit on it (they would on -EAGAIN, out of order), while
/// -ECONNRESET would claim the client unlinked it. The URB that actually failed keeps its
/// own status (-EPROTO, -EPIPE, ...), so the client can tell the cause from the collateral;
/// on a contained-capable endpoint the backend reports a host's own -ESHUTDOWN as -ENODEV,
/// so that this code means collateral only (or a controller shutdown, which ends all).
pub const CONTAINED: Status = Status::Shutdown;

/// Whether containment applies to a transfer type: bulk and interrupt only. Control
/// endpoints recover by themselves at the next SETUP (a stall there is routine), and an
/// isochronous error is per packet, not a broken stream.
pub const fn applies_to(xfer: XferType) -> bool {
    matches!(xfer, XferType::Bulk | XferType::Int)
}

/// What the backend does with a request for an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Submit it; the endpoint was open.
    Pass,
    /// Submit it; it carried the clear mark and reopened a contained endpoint.
    Reopened,
    /// Answer it with [`CONTAINED`] without submitting it.
    Contain,
}

/// Backend half: is the endpoint contained?
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendAca {
    /// Requests pass.
    #[default]
    Open,
    /// A URB failed; requests are answered with [`CONTAINED`] until one carries the mark.
    Contained,
}

impl BackendAca {
    /// Decides a request's fate; `clear` is its [`ACA_CLEAR`] bit.
    pub fn admit(&mut self, clear: bool) -> Admission {
        match (*self, clear) {
            (BackendAca::Open, _) => Admission::Pass,
            (BackendAca::Contained, true) => {
                *self = BackendAca::Open;
                Admission::Reopened
            }
            (BackendAca::Contained, false) => Admission::Contain,
        }
    }

    /// A URB of this endpoint failed on the host.
    pub fn fail(&mut self) {
        *self = BackendAca::Contained;
    }

    /// The device went away: a new one starts open.
    pub fn reset(&mut self) {
        *self = BackendAca::Open;
    }

    /// Whether requests are being answered with [`CONTAINED`].
    pub fn is_contained(self) -> bool {
        self == BackendAca::Contained
    }
}

/// Frontend half: has the client seen a failure the backend may still be containing?
///
/// Failures are counted in epochs: each transfer remembers the epoch it was submitted in,
/// and only a transfer submitted after the latest failure was seen may carry the mark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendAca {
    /// An error was given back and no marked request has been sent since.
    suspect: bool,
    /// Failures given back to the client so far.
    epoch: u32,
    /// Transfers that have put at least one request on the ring and not completed.
    active: u32,
}

/// The worst answer a transfer got from the ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seen {
    /// Only successes (short ones included).
    #[default]
    Clean,
    /// Some answer was [`CONTAINED`].
    Contained,
    /// Some answer carried another error: possibly a device failure.
    Failed,
}

impl Seen {
    /// Classifies one answer's status.
    pub fn of(status: Status) -> Self {
        match status {
            Status::Ok => Seen::Clean,
            s if s == CONTAINED => Seen::Contained,
            _ => Seen::Failed,
        }
    }
}

/// What the frontend may do with the next transfer of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Send it as it is.
    Send,
    /// Send its first request with [`ACA_CLEAR`].
    SendMarked,
    /// Keep it back until the endpoint's earlier transfers have completed.
    Hold,
}

impl FrontendAca {
    /// The epoch a transfer submitted now belongs to.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// May the endpoint's oldest unsent transfer, submitted in `epoch`, go to the ring?
    pub fn release(&self, epoch: u32) -> Release {
        if !self.suspect || epoch != self.epoch {
            // No failure outstanding, or the transfer predates the latest one: it goes out
            // unmarked and the backend contains it if it must.
            Release::Send
        } else if self.active == 0 {
            Release::SendMarked
        } else {
            Release::Hold
        }
    }

    /// A transfer put its first request on the ring (`marked`: with [`ACA_CLEAR`]).
    pub fn sent(&mut self, marked: bool) {
        self.active = self.active.saturating_add(1);
        if marked {
            self.suspect = false;
        }
    }

    /// A transfer completed. `sent`: it had put a request on the ring; `seen`: the worst
    /// answer the ring gave it.
    pub fn completed(&mut self, sent: bool, seen: Seen) {
        if sent {
            self.active = self.active.saturating_sub(1);
        }
        match seen {
            Seen::Clean => {}
            // Collateral of a failure already counted: the backend may be containing the
            // endpoint, but the client has learnt nothing new about the device. Not starting
            // an epoch here is what lets a driver that keeps resubmitting make progress.
            Seen::Contained => self.suspect = true,
            Seen::Failed => {
                self.suspect = true;
                self.epoch = self.epoch.wrapping_add(1);
            }
        }
    }

    /// The device went away: a new one starts clean.
    pub fn reset(&mut self) {
        *self = FrontendAca::default();
    }

    /// Whether a marked request is owed.
    pub fn is_suspect(&self) -> bool {
        self.suspect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_contains_until_marked() {
        let mut ep = BackendAca::default();
        assert_eq!(ep.admit(false), Admission::Pass);
        ep.fail();
        assert_eq!(ep.admit(false), Admission::Contain);
        assert_eq!(ep.admit(false), Admission::Contain);
        assert_eq!(ep.admit(true), Admission::Reopened);
        assert_eq!(ep.admit(false), Admission::Pass);
        // A mark on an open endpoint is an ordinary request.
        assert_eq!(ep.admit(true), Admission::Pass);
    }

    #[test]
    fn frontend_marks_first_transfer_after_failure_once_idle() {
        let mut ep = FrontendAca::default();
        let before = ep.epoch();
        ep.sent(false); // W1
        ep.sent(false); // W2
        ep.completed(true, Seen::Failed); // W1 failed and was given back
        let after = ep.epoch();
        // Submitted before the failure was seen: sent unmarked (the backend contains it).
        assert_eq!(ep.release(before), Release::Send);
        // Submitted after: held while W2 is still out.
        assert_eq!(ep.release(after), Release::Hold);
        ep.completed(true, Seen::Contained); // W2 contained: collateral, same epoch
        assert_eq!(ep.release(after), Release::SendMarked);
        ep.sent(true);
        assert_eq!(ep.release(after), Release::Send);
        assert!(!ep.is_suspect());
    }

    #[test]
    fn frontend_new_failure_starts_new_epoch() {
        let mut ep = FrontendAca::default();
        ep.sent(false); // X1
        ep.sent(false); // X2
        ep.completed(true, Seen::Failed);
        let between = ep.epoch(); // submitted after X1's failure, before X2's
                                  // X2 fails on its own: `between` did not see that, so it must not clear containment.
        ep.completed(true, Seen::Failed);
        assert_eq!(ep.release(between), Release::Send);
        assert_eq!(ep.release(ep.epoch()), Release::SendMarked);
    }

    #[test]
    fn containment_only_for_bulk_and_interrupt() {
        assert!(applies_to(XferType::Bulk));
        assert!(applies_to(XferType::Int));
        assert!(!applies_to(XferType::Ctrl));
        assert!(!applies_to(XferType::Isoc));
    }
}
