//! A hostile guest at ring level: it connects to a controller like a frontend (grants the
//! two ring pages, binds an event channel, goes Connected), then fills its ring with
//! garbage, bad grant references and finally a producer index far past the ring
//! (DESIGN.md contract 8: the backend must answer or disconnect it, and only it).

use std::time::Duration;

use pvusb_ring::wire::RawUrbRequest;
use xenstore_cfg::vusb::VusbId;
use xenstore_cfg::xenbus::{self, XenbusState};
use xenstore_cfg::XsOps;

use crate::ring_guest::RingGuest;
use crate::rng::Rng;

/// A connected ring-level guest that misbehaves on request.
#[allow(missing_debug_implementations)]
pub struct HostileGuest {
    g: RingGuest,
}

impl HostileGuest {
    /// Connects as frontend of `id` on the platform in `dir`.
    pub fn connect(dir: &std::path::Path, id: VusbId) -> HostileGuest {
        HostileGuest {
            g: RingGuest::connect(dir, id, 1),
        }
    }

    /// Pushes `n` random requests (random ids, pipes, flags, lengths, segment counts and
    /// grant references that mostly do not exist), draining responses as they come.
    pub fn garbage(&mut self, rng: &mut Rng, n: usize) {
        for _ in 0..n {
            let mut raw = RawUrbRequest::default();
            raw.id.set(rng.next_u64() as u16);
            raw.nr_buffer_segs.set(rng.below(20) as u16);
            raw.pipe.set(rng.next_u64() as u32);
            raw.transfer_flags.set(rng.next_u64() as u16);
            raw.buffer_length.set(rng.next_u64() as u16);
            raw.u = rng.next_u64().to_le_bytes();
            for s in raw.seg.iter_mut() {
                s.gref.set(rng.next_u64() as u32);
                s.offset.set(rng.below(5000) as u16);
                s.length.set(rng.below(5000) as u16);
            }
            // Leave room: drain whatever the backend answered so the ring has space.
            while let Ok(Some(_)) = self.g.urb.pop_response() {}
            if self.g.urb.is_full() {
                std::thread::sleep(Duration::from_millis(2));
                while let Ok(Some(_)) = self.g.urb.pop_response() {}
            }
            self.g.push(&raw);
        }
    }

    /// Moves `req_prod` far past what the ring can hold and kicks the backend.
    pub fn overflow_index(&mut self) {
        let prod = self.g.urb.req_prod_pvt();
        self.g.urb.sring().req_prod().store(
            prod.wrapping_add(1000),
            std::sync::atomic::Ordering::Release,
        );
        self.g.kick();
    }

    /// The backend's state for this controller.
    pub fn backend_state(&mut self) -> Option<XenbusState> {
        let dir = self.g.id.backend_dir();
        xenbus::read_state(&mut self.g.xs, &dir).ok()
    }

    /// Reads a xenstore key as this guest (used to check it is still readable).
    pub fn read(&mut self, path: &str) -> Option<Vec<u8>> {
        self.g.xs.read(path).ok()
    }
}
