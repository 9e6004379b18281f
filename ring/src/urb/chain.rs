//! Split chains: the pieces of one large bulk IN transfer in flight together (an extension).
//!
//! A client transfer longer than one request is cut into pieces ([`super::split`]). Stock
//! usbif has no way to say "a short read here ends the transfer", so an IN transfer's
//! pieces went one at a time: a piece sent early would swallow the device's next answer
//! after a short one (seed 001). With this extension the frontend keeps several in flight
//! (a quarter of the ring, see `frontend`) and the backend keeps seed 001 the way libusb
//! does over usbfs:
//!
//! - every piece but the last carries [`SPLIT_MORE`]: it runs with `SHORT_NOT_OK` on every
//!   host URB, so a short read ends it with -EREMOTEIO, which the backend answers as a
//!   success of the bytes read;
//! - every piece but the first carries [`SPLIT_CONT`]: it is chained to the request before
//!   it (`BULK_CONTINUATION`), so usbfs cancels it from a short piece's completion handler,
//!   before the device runs it, or refuses it if it comes later; its answer reports it
//!   cancelled, and the frontend ignores it;
//! - a request without [`SPLIT_CONT`] after one that a short read can end (a
//!   [`SPLIT_MORE`] piece, or a request the backend itself cut into several host URBs
//!   because of its `max-bulk-urb`) starts a new host chain: usbfs's cancel stops there, so
//!   the next transfer runs whatever the chain before it met, even one the frontend
//!   abandoned half sent.
//!
//! Because that last rule unchains the next transfer, a failure of a chain would not stop
//! it in the kernel; so the frontend sends nothing else for the endpoint until a chained
//! transfer has completed (containment, contract 3, is then decided as for any other
//! transfer). After a request the backend cut itself, a follower the frontend already sent
//! is stopped only when the failure is reaped, as on interrupt endpoints (usbfs cannot
//! cancel on a failure but not on a short read); only a `max-bulk-urb` below the
//! request's length, or a kernel without `USBDEVFS_CAP_NO_PACKET_SIZE_LIM`, cuts requests.
//!
//! ## Hosts that do not stop at a short packet
//!
//! All of the above relies on usbfs cancelling the piece chained behind one that ends
//! short before the device runs it. That holds only where the host controller stops an
//! endpoint's queue at a short packet. usbfs says so with `USBDEVFS_CAP_BULK_CONTINUATION`
//! and withholds it on buses marked `no_stop_on_short` (xHCI, so most hosts): there the
//! controller moves straight on to the next queued URB, which may take the device's next
//! data before the cancel reaches it (seed 001 again).
//!
//! So on such a port (`Backend::handle_device_attached_with`) the backend *holds* a request
//! that continues a chain ([`Link::Chained`]): it is taken (its id is live and counts
//! against the ring) but not submitted while the request before it on its endpoint is still
//! out. Once that one is given back the held one goes to the host, chained as before. If
//! its predecessor ended short or failed, usbfs has disabled the endpoint's continuations
//! by then (nothing unchained went in between, as everything behind a held request on its
//! endpoint waits too) and refuses it, which is answered as the cancel a stopping host
//! would have made; if the predecessor completed in full, it runs. An endpoint's requests
//! still reach the host in ring order (contract 2). A chain costs a round trip per piece on
//! those ports, which is what a stock frontend pays everywhere by sending an IN transfer's
//! pieces one at a time. A held request that is unlinked, contained, or whose device or
//! controller goes away is answered at once, as the host's cancel would have been. The
//! shell does the same for a request it cuts into several host URBs itself.
//!
//! Negotiated like [`super::aca`]: both sides write [`FEATURE_SPLIT_CHAIN`] = `"1"`; a
//! backend that did not negotiate it refuses the two flags as unknown.

/// Xenstore key (in each side's own device directory) that offers split chains.
pub const FEATURE_SPLIT_CHAIN: &str = "feature-split-chain";

/// usbif `transfer_flags` bit: more pieces of this bulk IN transfer follow on the ring; a
/// short read ends the transfer.
///
/// Next to [`super::aca::ACA_CLEAR`] (0x8000), far from the low bits Linux's `URB_*` flags
/// use.
pub const SPLIT_MORE: u16 = 0x4000;

/// usbif `transfer_flags` bit: this bulk IN request continues the transfer of the request
/// before it on its endpoint.
pub const SPLIT_CONT: u16 = 0x2000;

/// How a request's first host URB relates to the one before it on its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// It continues a split chain: chained, whatever containment says.
    Chained,
    /// The request before it could end short and cancel what is chained behind it: not
    /// chained, whatever containment says.
    Fresh,
    /// As containment decides.
    Free,
}

/// One endpoint's last request submitted to the host, as far as chains go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpChain {
    /// A short read can end it (or the chain it belongs to) and cancel what is chained
    /// behind it.
    cuts: bool,
}

impl EpChain {
    /// Links the next request submitted to the host. `cont`: it carries [`SPLIT_CONT`];
    /// `cuts`: a short read can end it (it carries [`SPLIT_MORE`], or the shell cuts it into
    /// several host URBs).
    pub fn link(&mut self, cont: bool, cuts: bool) -> Link {
        let link = if cont {
            Link::Chained
        } else if self.cuts {
            Link::Fresh
        } else {
            Link::Free
        };
        // A chain's last piece can be cancelled by a short read of an earlier one, and so
        // could what is chained behind it: it passes the mark on.
        self.cuts = cuts || (cont && self.cuts);
        link
    }

    /// The device went away: a new one starts unchained.
    pub fn reset(&mut self) {
        *self = EpChain::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_linked_and_the_request_after_it_starts_fresh() {
        let mut ep = EpChain::default();
        assert_eq!(ep.link(false, false), Link::Free);
        // Three pieces: first, middle, last.
        assert_eq!(ep.link(false, true), Link::Free);
        assert_eq!(ep.link(true, true), Link::Chained);
        assert_eq!(ep.link(true, false), Link::Chained);
        // The next transfer: a short piece of the chain must not cancel it.
        assert_eq!(ep.link(false, false), Link::Fresh);
        assert_eq!(ep.link(false, false), Link::Free);
    }

    #[test]
    fn an_abandoned_chain_or_a_host_split_request_unchains_the_next_one() {
        let mut ep = EpChain::default();
        // Two pieces of a chain went out, the rest never will (it ended short).
        ep.link(false, true);
        ep.link(true, true);
        assert_eq!(ep.link(false, false), Link::Fresh);
        // A request the shell cuts into host URBs.
        assert_eq!(ep.link(false, true), Link::Free);
        assert_eq!(ep.link(false, false), Link::Fresh);
        ep.link(false, true);
        ep.reset();
        assert_eq!(ep.link(false, false), Link::Free);
    }
}
