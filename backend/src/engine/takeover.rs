//! Taking rings over from a backend process that died: failing what it had in flight
//! (from its journal, or by ring position without one), and, in tests, dying.

use pvusb_ring::urb::UrbResult;
use pvusb_ring::wire::{Status, UrbRequest};

use super::guest_side::local;
use super::journal::{Journal, Recovered};
use super::{Engine, Fatal, Link};

impl Link {
    /// Keeps `journal` up to date with every request taken and answered from now on.
    pub fn set_journal(&mut self, journal: Journal) {
        self.journal = Some(journal);
    }

    /// The rings were taken over from a backend process that died, whose journal says
    /// which requests it had taken and not had answered (`rec.ids`; the ring was attached
    /// past them with [`pvusb_ring::sring::BackRing::attach_taken`]). Each is answered with
    /// an error (-EIO, a cancelled request's code) without running again, and the client
    /// retries what it needs; what the dead process never took is served as usual. Marks
    /// the link as taken over, with the devices the guest was told of (see
    /// [`Engine::connect`]). Returns how many requests were failed.
    pub fn fail_taken(&mut self, rec: &Recovered) -> u32 {
        self.adopted = true;
        self.told = Some(rec.ports);
        for &id in &rec.ids {
            // A journal holding an id twice answers it once; the other is lost either way.
            let _ = local(self, id, UrbResult::status(Status::IoError));
        }
        u32::try_from(rec.ids.len()).unwrap_or(u32::MAX)
    }

    /// The rings were taken over from a backend process that died without a journal
    /// ([`Link::fail_taken`] is exact), attached at their
    /// published `rsp_prod`: the requests between that and `req_prod` were in flight in it,
    /// or never seen. Nobody knows which of them reached the device, so each is answered
    /// with an error (-EIO, a cancelled request's code) without running again, and the
    /// client retries what it needs: contract 1 and DESIGN.md's backend restart, for a
    /// frontend that keeps its rings across the restart (Linux's xen-hcd, and pvusb-frontend
    /// on Xen, where nothing tells a guest that a dom0 process died). Marks the link as
    /// taken over (see [`Engine::connect`]). Returns how many.
    ///
    /// Exact only if the dead process answered in ring order: if it answered a request
    /// ahead of an earlier one it never answered, the window starts past the earlier one,
    /// which is never answered, and covers the later one, which is answered twice (the ring
    /// does not say which; the frontend's response index is private).
    pub fn fail_left_over(&mut self) -> u32 {
        self.adopted = true;
        self.left_over = self.urb.unconsumed_requests().unwrap_or(0);
        self.left_over
    }
}

impl Engine {
    /// The process dies (a test's `kill -9`): the link goes without a word to the guest,
    /// and what the devices had in flight is dropped, as the kernel does when usbfs is
    /// closed.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn die(&mut self) {
        self.link = None;
        for dev in self.ports.iter_mut().filter_map(|s| s.device.as_mut()) {
            drop(dev.drain());
        }
    }
}

/// Answers a request a dead backend process left on the ring without running it (an
/// unlink is answered as usual: its victim is not on this process's host).
pub(super) fn left_over(
    link: &mut Link,
    raw: &pvusb_ring::wire::RawUrbRequest,
) -> Result<(), Fatal> {
    match UrbRequest::parse(raw, &link.limits) {
        Ok(UrbRequest::Unlink(u)) => Ok(link.backend.handle_unlink(u.id, u.victim)?),
        Ok(UrbRequest::Submit(sub)) => local(link, sub.id, UrbResult::status(Status::IoError)),
        Err(bad) => local(link, raw.id.get(), UrbResult::status(bad.status())),
    }
}
