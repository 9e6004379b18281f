//! A frontend at ring level, as Linux's xen-hcd is: it grants the two ring pages and a few
//! data pages, binds an event channel, goes Connected, then puts usbif requests on the ring
//! and reads the responses itself (no USB/IP, no state machine, nothing it does on its own
//! when the backend goes away). The hostile guest ([`crate::hostile`]) misbehaves through
//! it; the takeover test keeps it Connected across a backend `kill -9`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pvusb_ring::shm::Shm;
use pvusb_ring::sring::{ConnFrontRing, UrbFrontRing};
use pvusb_ring::wire::{ConnEvent, ConnRequest, RawUrbRequest, Speed, UrbResponse, MAX_PORTNR};
use pvusb_xen::sim::SimPlatform;
use pvusb_xen::{Access, DomId, EventChannel, EventChannels, GrantAllocator, GrantedPages};
use xenstore_cfg::vusb::VusbId;
use xenstore_cfg::xenbus::{self, RingInfo, XenbusState};
use xenstore_cfg::Xs;

/// A connected ring-level frontend.
#[allow(missing_debug_implementations)]
pub struct RingGuest {
    /// The guest's half of the urb ring.
    pub urb: UrbFrontRing,
    conn: ConnFrontRing,
    evtchn: Box<dyn EventChannel>,
    data: Arc<GrantedPages>,
    // After the rings: the pages outlive the `Shm` views over them.
    _rings: [Arc<GrantedPages>; 2],
    /// Its xenstore connection.
    pub xs: Xs,
    _plat: SimPlatform,
    /// The controller it is frontend of.
    pub id: VusbId,
    /// Every response read, in order.
    pub responses: Vec<UrbResponse>,
    /// Every hotplug event read, in order: (port, speed).
    pub events: Vec<(u8, Speed)>,
}

impl RingGuest {
    /// Connects as frontend of `id` on the platform in `dir`, with `data_pages` pages
    /// granted writable for transfers.
    pub fn connect(dir: &std::path::Path, id: VusbId, data_pages: usize) -> RingGuest {
        let t = Duration::from_secs(20);
        let plat = SimPlatform::connect(dir, DomId(id.fe)).expect("broker as the guest");
        let mut xs = Xs::connect(xenstore_cfg::daemon::domain_socket(dir, id.fe))
            .expect("xenstored as the guest");
        let be_dir = id.backend_dir();
        let st = xenbus::wait_state(&mut xs, &be_dir, t, |s| s == XenbusState::InitWait);
        assert!(st.is_ok(), "backend never reached InitWait: {st:?}");
        let grant = |n| {
            Arc::new(
                plat.alloc(DomId(id.be), n, Access::Writable)
                    .expect("granting pages"),
            )
        };
        let (urb_page, conn_page, data) = (grant(1), grant(1), grant(data_pages.max(1)));
        let urb = UrbFrontRing::init(urb_page.shm()).expect("urb ring");
        let mut conn = ConnFrontRing::init(conn_page.shm()).expect("conn ring");
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
        assert!(st.is_ok(), "backend never connected the guest: {st:?}");
        RingGuest {
            urb,
            conn,
            evtchn,
            data,
            _rings: [urb_page, conn_page],
            xs,
            _plat: plat,
            id,
            responses: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Puts a request on the ring and kicks the backend if it asked.
    pub fn push(&mut self, raw: &RawUrbRequest) {
        if self.urb.push_request(raw).is_ok() && self.urb.push_requests_and_check_notify() {
            let _ = self.evtchn.notify();
        }
    }

    /// Kicks the backend whatever the ring's event index says.
    pub fn kick(&mut self) {
        let _ = self.evtchn.notify();
    }

    /// Grant reference of data page `page`.
    pub fn data_gref(&self, page: usize) -> u32 {
        self.data.grefs()[page].0
    }

    /// The data pages as the guest sees them.
    pub fn data(&self) -> Shm {
        self.data.shm()
    }

    /// Reads every response and hotplug event published so far into
    /// [`RingGuest::responses`] and [`RingGuest::events`] (each event's slot is given back).
    pub fn collect(&mut self) {
        while let Ok(Some(raw)) = self.urb.pop_response() {
            if let Ok(r) = UrbResponse::parse(&raw) {
                self.responses.push(r);
            }
        }
        let mut gave = false;
        while let Ok(Some(raw)) = self.conn.pop_response() {
            if let Ok(ev) = ConnEvent::parse(&raw, MAX_PORTNR) {
                self.events.push((ev.port.get(), ev.speed));
            }
            gave |= self
                .conn
                .push_request(&ConnRequest { id: raw.id.get() }.to_raw())
                .is_ok();
        }
        if gave && self.conn.push_requests_and_check_notify() {
            let _ = self.evtchn.notify();
        }
    }

    /// Waits up to `t` for the response to `id` (the last one, if it came twice).
    pub fn wait_for(&mut self, id: u16, t: Duration) -> Option<UrbResponse> {
        let deadline = Instant::now() + t;
        loop {
            self.collect();
            if let Some(r) = self.responses.iter().rev().find(|r| r.id == id) {
                return Some(*r);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
