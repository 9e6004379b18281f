//! A hostile guest at ring level: it connects to a controller like a frontend (grants the
//! two ring pages, binds an event channel, goes Connected), then fills its ring with
//! garbage, bad grant references and finally a producer index far past the ring
//! (DESIGN.md contract 8: the backend must answer or disconnect it, and only it).

use std::ptr::NonNull;
use std::time::Duration;

use pvusb_ring::shm::{Access as ShmAccess, Shm};
use pvusb_ring::sring::{ConnFrontRing, UrbFrontRing};
use pvusb_ring::wire::{ConnRequest, RawUrbRequest};
use pvusb_xen::sim::SimPlatform;
use pvusb_xen::{Access, DomId, EventChannel, EventChannels, GrantAllocator, GrantedPages};
use xenstore_cfg::vusb::VusbId;
use xenstore_cfg::xenbus::{self, RingInfo, XenbusState};
use xenstore_cfg::{Xs, XsOps};

use crate::rng::Rng;

/// A connected ring-level guest that misbehaves on request.
#[allow(missing_debug_implementations)]
pub struct HostileGuest {
    urb: UrbFrontRing,
    _conn: ConnFrontRing,
    evtchn: Box<dyn EventChannel>,
    // After the rings: the pages outlive the `Shm` views over them.
    _pages: Vec<GrantedPages>,
    /// Its xenstore connection.
    pub xs: Xs,
    _plat: SimPlatform,
    /// The controller it is frontend of.
    pub id: VusbId,
}

impl HostileGuest {
    /// Connects as frontend of `id` on the platform in `dir`.
    pub fn connect(dir: &std::path::Path, id: VusbId) -> HostileGuest {
        let t = Duration::from_secs(20);
        let plat = SimPlatform::connect(dir, DomId(id.fe)).expect("broker as the guest");
        let mut xs = Xs::connect(xenstore_cfg::daemon::domain_socket(dir, id.fe))
            .expect("xenstored as the guest");
        let be_dir = id.backend_dir();
        let st = xenbus::wait_state(&mut xs, &be_dir, t, |s| s == XenbusState::InitWait);
        assert!(st.is_ok(), "backend never reached InitWait: {st:?}");
        let urb_page = plat
            .alloc(DomId(id.be), 1, Access::Writable)
            .expect("ring page");
        let conn_page = plat
            .alloc(DomId(id.be), 1, Access::Writable)
            .expect("ring page");
        let shm = |p: &GrantedPages| {
            // SAFETY: the page is mapped for as long as `_pages` lives, which the struct
            // drops after both rings; only Shm's volatile copies and atomics touch it.
            unsafe {
                Shm::from_raw_parts(
                    NonNull::new(p.as_ptr()).expect("mapped page"),
                    4096,
                    ShmAccess::ReadWrite,
                )
            }
        };
        let urb = UrbFrontRing::init(shm(&urb_page)).expect("urb ring");
        let mut conn = ConnFrontRing::init(shm(&conn_page)).expect("conn ring");
        let mut i = 0u16;
        while !conn.is_full() {
            conn.push_request(&ConnRequest { id: i }.to_raw())
                .expect("conn request");
            i += 1;
        }
        conn.push_requests();
        let evtchn = plat.alloc_unbound(DomId(id.be)).expect("event channel");
        let info = RingInfo {
            urb_ring_ref: urb_page.grefs()[0].0,
            conn_ring_ref: conn_page.grefs()[0].0,
            event_channel: evtchn.port().0,
        };
        xenbus::publish_rings(
            &mut xs,
            &id.frontend_dir(),
            &info,
            Some(XenbusState::Connected),
        )
        .expect("publishing rings");
        let st = xenbus::wait_state(&mut xs, &be_dir, t, |s| s == XenbusState::Connected);
        assert!(
            st.is_ok(),
            "backend never connected the hostile guest: {st:?}"
        );
        HostileGuest {
            urb,
            _conn: conn,
            evtchn,
            _pages: vec![urb_page, conn_page],
            xs,
            _plat: plat,
            id,
        }
    }

    fn push(&mut self, raw: &RawUrbRequest) {
        if self.urb.push_request(raw).is_ok() && self.urb.push_requests_and_check_notify() {
            let _ = self.evtchn.notify();
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
            while let Ok(Some(_)) = self.urb.pop_response() {}
            if self.urb.is_full() {
                std::thread::sleep(Duration::from_millis(2));
                while let Ok(Some(_)) = self.urb.pop_response() {}
            }
            self.push(&raw);
        }
    }

    /// Moves `req_prod` far past what the ring can hold and kicks the backend.
    pub fn overflow_index(&mut self) {
        let prod = self.urb.req_prod_pvt();
        self.urb.sring().req_prod().store(
            prod.wrapping_add(1000),
            std::sync::atomic::Ordering::Release,
        );
        let _ = self.evtchn.notify();
    }

    /// The backend's state for this controller.
    pub fn backend_state(&mut self) -> Option<XenbusState> {
        xenbus::read_state(&mut self.xs, &self.id.backend_dir()).ok()
    }

    /// Reads a xenstore key as this guest (used to check it is still readable).
    pub fn read(&mut self, path: &str) -> Option<Vec<u8>> {
        self.xs.read(path).ok()
    }
}
