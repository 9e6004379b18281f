//! The ring-level frontend playing guest domain N: grants through the broker, rings with
//! `pvusb_ring`'s front halves, and helpers for the transfers the tests make.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::time::Instant;

use pvusb_ring::shm::{Access as ShmAccess, Shm};
use pvusb_ring::sring::{ConnFrontRing, UrbFrontRing};
use pvusb_ring::wire::{
    ConnEvent, ConnRequest, Ep, Isoc, Pipe, Seg, Segments, Setup, Submit, Transfer, UrbRequest,
    UrbResponse, XferType,
};
use pvusb_xen::sim::SimPlatform;
use pvusb_xen::{Access, DomId, EventChannel, EventChannels, GrantAllocator, GrantedPages};
use xenstore_cfg::vusb::VusbId;
use xenstore_cfg::xenbus::{self, RingInfo, XenbusState};
use xenstore_cfg::{Xs, XsOps};

use super::{Harness, T};

/// A guest data buffer: granted pages plus the request segments describing them.
pub struct Buf {
    pub pages: GrantedPages,
    pub len: usize,
}

impl Buf {
    pub fn segs(&self) -> Segments {
        let mut segs = Segments::new();
        let mut left = self.len;
        for (i, g) in self.pages.grefs().iter().enumerate() {
            if left == 0 {
                break;
            }
            let n = left.min(4096);
            segs.push(Seg::new(i, g.0, 0, n as u16).unwrap()).unwrap();
            left -= n;
        }
        segs
    }
    pub fn read(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.pages.read_at(0, &mut v).unwrap();
        v
    }
}

/// A minimal ring-level frontend for guest domain `fe`.
pub struct Guest {
    pub urb: UrbFrontRing,
    pub conn: ConnFrontRing,
    pub evtchn: Box<dyn EventChannel>,
    pub ring_pages: Vec<GrantedPages>,
    pub xs: Xs,
    pub plat: SimPlatform,
    pub id: VusbId,
    pub responses: HashMap<u16, UrbResponse>,
    pub events: Vec<ConnEvent>,
    /// Buffers kept until their request is answered.
    pub bufs: HashMap<u16, Buf>,
    pub next_id: u16,
    pub num_ports: u8,
}

impl Guest {
    /// Connects as frontend of controller `id`: waits for InitWait, grants and publishes the
    /// rings, primes the conn ring, goes Connected and waits for the backend to follow.
    pub fn connect(h: &mut Harness, id: VusbId, aca: bool) -> Guest {
        Self::connect_with(h, id, aca, false)
    }

    /// [`Guest::connect`], offering `feature-persistent` too when `persistent`: the guest
    /// then must keep its data pages granted (reuse the `Buf`s) while connected.
    pub fn connect_with(h: &mut Harness, id: VusbId, aca: bool, persistent: bool) -> Guest {
        let plat = SimPlatform::connect(h.path(), DomId(id.fe)).unwrap();
        let sock = xenstore_cfg::daemon::domain_socket(h.path(), id.fe);
        let mut xs = Xs::connect(sock).unwrap();
        let be_dir = id.backend_dir();
        let st = xenbus::wait_state(&mut xs, &be_dir, T, |s| s == XenbusState::InitWait);
        assert!(
            st.is_ok(),
            "backend never reached InitWait: {st:?}; log:\n{}",
            h.log()
        );
        let num_ports: u8 = xs
            .read_string(&format!("{be_dir}/num-ports"))
            .unwrap()
            .parse()
            .unwrap();
        let mut g = Self::attach_rings(plat, xs, id, num_ports);
        if aca {
            g.xs.write(&format!("{}/feature-aca", id.frontend_dir()), b"1")
                .unwrap();
        }
        if persistent {
            g.xs.write(&format!("{}/feature-persistent", id.frontend_dir()), b"1")
                .unwrap();
        }
        g.publish();
        let st = xenbus::wait_state(&mut g.xs, &be_dir, T, |s| s == XenbusState::Connected);
        assert!(
            st.is_ok(),
            "backend never connected: {st:?}; log:\n{}",
            h.log()
        );
        g
    }

    fn attach_rings(plat: SimPlatform, xs: Xs, id: VusbId, num_ports: u8) -> Guest {
        let urb_page = plat.alloc(DomId(id.be), 1, Access::Writable).unwrap();
        let conn_page = plat.alloc(DomId(id.be), 1, Access::Writable).unwrap();
        let shm = |p: &GrantedPages| {
            // SAFETY: the page stays allocated as long as the Guest (ring_pages is dropped
            // after the rings); only Shm's volatile copies and atomics touch it.
            unsafe {
                Shm::from_raw_parts(
                    NonNull::new(p.as_ptr()).unwrap(),
                    4096,
                    ShmAccess::ReadWrite,
                )
            }
        };
        let urb = UrbFrontRing::init(shm(&urb_page)).unwrap();
        let mut conn = ConnFrontRing::init(shm(&conn_page)).unwrap();
        let mut i = 0u16;
        while !conn.is_full() {
            conn.push_request(&ConnRequest { id: i }.to_raw()).unwrap();
            i += 1;
        }
        conn.push_requests();
        let evtchn = plat.alloc_unbound(DomId(id.be)).unwrap();
        Guest {
            urb,
            conn,
            evtchn,
            ring_pages: vec![urb_page, conn_page],
            xs,
            plat,
            id,
            responses: HashMap::new(),
            events: Vec::new(),
            bufs: HashMap::new(),
            next_id: 0,
            num_ports,
        }
    }

    fn publish(&mut self) {
        let info = RingInfo {
            urb_ring_ref: self.ring_pages[0].grefs()[0].0,
            conn_ring_ref: self.ring_pages[1].grefs()[0].0,
            event_channel: self.evtchn.port().0,
        };
        xenbus::publish_rings(
            &mut self.xs,
            &self.id.frontend_dir(),
            &info,
            Some(XenbusState::Connected),
        )
        .unwrap();
    }

    pub fn set_state(&mut self, s: XenbusState) {
        xenbus::switch_state(&mut self.xs, &self.id.frontend_dir(), s).unwrap();
    }

    pub fn fresh_id(&mut self) -> u16 {
        loop {
            let id = self.next_id % 16;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.bufs.contains_key(&id) {
                return id;
            }
        }
    }

    /// Pushes a raw request and kicks the backend.
    pub fn push_raw(&mut self, raw: &pvusb_ring::wire::RawUrbRequest) {
        self.urb.push_request(raw).unwrap();
        self.push_queued();
    }

    pub fn push(&mut self, req: &UrbRequest) {
        self.push_raw(&req.to_raw());
    }

    /// Collects whatever the backend published.
    pub fn poll(&mut self) {
        let _ = self.evtchn.take_pending();
        let _ = self.evtchn.unmask();
        while let Some(raw) = self.urb.pop_response().unwrap() {
            let r = UrbResponse::parse(&raw).unwrap();
            assert!(
                self.responses.insert(r.id, r).is_none(),
                "two responses for id {} without a request in between",
                r.id
            );
        }
        while let Some(raw) = self.conn.pop_response().unwrap() {
            let ev = ConnEvent::parse(&raw, self.num_ports).unwrap();
            self.conn
                .push_request(&ConnRequest { id: ev.id }.to_raw())
                .unwrap();
            self.events.push(ev);
        }
        if self.conn.push_requests_and_check_notify() {
            let _ = self.evtchn.notify();
        }
    }

    fn wait_fd(&self) {
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        let fd = self.evtchn.as_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut fds, Some(&ts));
    }

    /// Waits for the response to `id`; its buffer's grants must be revocable then.
    pub fn wait(&mut self, id: u16) -> (UrbResponse, Option<Buf>) {
        let deadline = Instant::now() + T;
        loop {
            self.poll();
            if let Some(r) = self.responses.remove(&id) {
                let buf = self.bufs.remove(&id);
                return (r, buf);
            }
            assert!(Instant::now() < deadline, "no response to request {id}");
            if self.urb.final_check_for_responses().unwrap_or(true) {
                continue;
            }
            self.wait_fd();
        }
    }

    /// Waits for the next hotplug event.
    pub fn wait_event(&mut self) -> ConnEvent {
        let deadline = Instant::now() + T;
        loop {
            self.poll();
            if !self.events.is_empty() {
                return self.events.remove(0);
            }
            assert!(Instant::now() < deadline, "no conn event");
            if self.conn.final_check_for_responses().unwrap_or(true) {
                continue;
            }
            self.wait_fd();
        }
    }

    pub fn alloc(&self, len: usize, out: bool) -> Buf {
        let pages = len.div_ceil(4096).max(1);
        let access = if out {
            Access::ReadOnly
        } else {
            Access::Writable
        };
        let p = self.plat.alloc(DomId(self.id.be), pages, access).unwrap();
        Buf { pages: p, len }
    }

    /// Submits a transfer; returns its id.
    pub fn submit(&mut self, pipe: Pipe, xfer: Transfer, buf: Option<Buf>, flags: u16) -> u16 {
        let id = self.queue(pipe, xfer, buf, flags);
        self.push_queued();
        id
    }

    /// Puts a transfer on the ring without publishing it (several requests then reach the
    /// backend at once on [`Guest::push_queued`]); returns its id.
    pub fn queue(&mut self, pipe: Pipe, xfer: Transfer, buf: Option<Buf>, flags: u16) -> u16 {
        let id = self.fresh_id();
        let (segs, len) = match &buf {
            Some(b) => (b.segs(), b.len as u32),
            None => (Segments::new(), 0),
        };
        let req = UrbRequest::Submit(Submit {
            id,
            pipe,
            xfer,
            segs,
            buffer_length: len,
            short_not_ok: flags & 1 != 0,
            ext_flags: flags & !1,
        });
        if let Some(b) = buf {
            self.bufs.insert(id, b);
        }
        self.urb.push_request(&req.to_raw()).unwrap();
        id
    }

    /// Publishes queued requests and kicks the backend if it asked for it.
    pub fn push_queued(&mut self) {
        if self.urb.push_requests_and_check_notify() {
            self.evtchn.notify().unwrap();
        }
    }

    /// A control transfer; returns the response and the IN data.
    pub fn control(
        &mut self,
        port: u8,
        dev: u8,
        setup: Setup,
        out: &[u8],
    ) -> (UrbResponse, Vec<u8>) {
        let buf = self.buffer(usize::from(setup.length()), setup.is_in(), out);
        let pipe = Pipe::new(port, dev, Ep::new(0, setup.is_in()), XferType::Ctrl);
        let id = self.submit(pipe, Transfer::Ctrl { setup: setup.0 }, buf, 0);
        self.finish(id, setup.is_in())
    }

    /// A bulk (or interrupt) transfer on `ep`.
    pub fn transfer(
        &mut self,
        port: u8,
        dev: u8,
        ep: u8,
        ty: XferType,
        data: &[u8],
        in_len: usize,
    ) -> (UrbResponse, Vec<u8>) {
        let id = self.start(port, dev, ep, ty, data, in_len, 0);
        self.finish(id, ep & 0x80 != 0)
    }

    /// A buffer of `len` bytes (none for 0) for a transfer; an OUT one holds `out`.
    fn buffer(&self, len: usize, is_in: bool, out: &[u8]) -> Option<Buf> {
        (len > 0).then(|| {
            let b = self.alloc(len, !is_in);
            if !is_in {
                b.pages.write_at(0, out).unwrap();
            }
            b
        })
    }

    /// Waits for request `id`: its response and, for an IN transfer, the bytes it filled.
    fn finish(&mut self, id: u16, is_in: bool) -> (UrbResponse, Vec<u8>) {
        let (r, b) = self.wait(id);
        let data = match b {
            Some(b) if is_in => b.read(r.actual_length as usize),
            _ => Vec::new(),
        };
        (r, data)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        port: u8,
        dev: u8,
        ep: u8,
        ty: XferType,
        data: &[u8],
        in_len: usize,
        flags: u16,
    ) -> u16 {
        let is_in = ep & 0x80 != 0;
        let len = if is_in { in_len } else { data.len() };
        let buf = self.buffer(len, is_in, data);
        let pipe = Pipe::new(port, dev, Ep::from_address(ep), ty);
        let xfer = match ty {
            XferType::Int => Transfer::Int { interval: 8 },
            _ => Transfer::Bulk,
        };
        self.submit(pipe, xfer, buf, flags)
    }

    /// Enumerates the device on `port` the way a guest's USB core does: device descriptor at
    /// address 0, SET_ADDRESS, descriptor again, SET_CONFIGURATION 1.
    pub fn enumerate(&mut self, port: u8, addr: u8) -> Vec<u8> {
        let (r, d) = self.control(port, 0, Setup::new(0x80, 6, 0x100, 0, 8), &[]);
        assert_eq!(r.status, 0, "GET_DESCRIPTOR(8) at address 0");
        assert_eq!(d.len(), 8);
        let (r, _) = self.control(port, 0, Setup::new(0x00, 5, u16::from(addr), 0, 0), &[]);
        assert_eq!(r.status, 0, "SET_ADDRESS");
        let (r, desc) = self.control(port, addr, Setup::new(0x80, 6, 0x100, 0, 18), &[]);
        assert_eq!(r.status, 0, "GET_DESCRIPTOR(18)");
        assert_eq!(desc.len(), 18);
        let (r, _) = self.control(port, addr, Setup::new(0x00, 9, 1, 0, 0), &[]);
        assert_eq!(r.status, 0, "SET_CONFIGURATION");
        desc
    }

    pub fn iso_xfer(&self) -> Isoc {
        Isoc {
            interval: 1,
            start_frame: 0,
            number_of_packets: 0,
            nr_frame_desc_segs: 0,
        }
    }
}

/// A SCSI command block wrapper (USB mass storage BOT).
pub fn cbw(tag: u32, data_len: u32, is_in: bool, cdb: &[u8]) -> Vec<u8> {
    let mut v = b"USBC".to_vec();
    v.extend_from_slice(&tag.to_le_bytes());
    v.extend_from_slice(&data_len.to_le_bytes());
    v.push(if is_in { 0x80 } else { 0 });
    v.push(0);
    v.push(cdb.len() as u8);
    let mut c = cdb.to_vec();
    c.resize(16, 0);
    v.extend_from_slice(&c);
    v
}

/// An isochronous IN transfer of `packets` packets of `pkt_len` bytes back to back. Returns
/// the response, the data and the descriptors' (actual_length, status) as the backend wrote
/// them back.
pub fn iso_in(
    g: &mut Guest,
    port: u8,
    dev: u8,
    ep: u8,
    packets: u16,
    pkt_len: u32,
) -> (UrbResponse, Vec<u8>, Vec<(u32, i32)>) {
    let layout: Vec<(u32, u32)> = (0..u32::from(packets))
        .map(|i| (i * pkt_len, pkt_len))
        .collect();
    let len = usize::from(packets) * pkt_len as usize;
    let done = iso(g, port, dev, ep, &layout, len, &[]);
    (done.resp, done.data, done.descs)
}

/// What the guest gets back from one iso request.
pub struct IsoDone {
    pub resp: UrbResponse,
    /// The whole data buffer after the transfer (IN: what the backend wrote).
    pub data: Vec<u8>,
    /// Each frame descriptor's (actual_length, status) as the backend left it.
    pub descs: Vec<(u32, i32)>,
}

/// One iso request on `ep` of device `dev` on `port`, with packets at `(offset, length)` in a buffer of `buf_len`
/// bytes; OUT sends `out` (the whole buffer, gaps included). Descriptors start with
/// actual_length 0xdeadbeef and status 1 so untouched ones show.
pub fn iso(
    g: &mut Guest,
    port: u8,
    dev: u8,
    ep: u8,
    packets: &[(u32, u32)],
    buf_len: usize,
    out: &[u8],
) -> IsoDone {
    let is_in = ep & 0x80 != 0;
    let data = (buf_len > 0).then(|| {
        let b = g.alloc(buf_len, !is_in);
        if !is_in {
            b.pages.write_at(0, out).unwrap();
        }
        b
    });
    let desc = g.alloc(packets.len() * 16, false);
    for (i, &(offset, length)) in packets.iter().enumerate() {
        let mut d = [0u8; 16];
        d[0..4].copy_from_slice(&offset.to_le_bytes());
        d[4..8].copy_from_slice(&length.to_le_bytes());
        d[8..12].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        d[12..16].copy_from_slice(&1i32.to_le_bytes());
        desc.pages.write_at(i * 16, &d).unwrap();
    }
    let mut segs = data.as_ref().map(Buf::segs).unwrap_or_default();
    let mut left = packets.len() * 16;
    for gref in desc.pages.grefs() {
        let n = left.min(4096);
        segs.push(Seg::new(segs.len(), gref.0, 0, n as u16).unwrap())
            .unwrap();
        left -= n;
    }
    let id = g.fresh_id();
    let req = UrbRequest::Submit(Submit {
        id,
        pipe: Pipe::new(port, dev, Ep::from_address(ep), XferType::Isoc),
        xfer: Transfer::Isoc(Isoc {
            interval: 1,
            start_frame: 0,
            number_of_packets: packets.len() as u16,
            nr_frame_desc_segs: desc.pages.grefs().len() as u16,
        }),
        segs,
        buffer_length: buf_len as u32,
        short_not_ok: false,
        ext_flags: 0,
    });
    if let Some(b) = data {
        g.bufs.insert(id, b);
    }
    g.push(&req);
    let (resp, b) = g.wait(id);
    let data = b.map(|b| b.read(buf_len)).unwrap_or_default();
    let descs = (0..packets.len())
        .map(|i| {
            let mut d = [0u8; 16];
            desc.pages.read_at(i * 16, &mut d).unwrap();
            (
                u32::from_le_bytes(d[8..12].try_into().unwrap()),
                i32::from_le_bytes(d[12..16].try_into().unwrap()),
            )
        })
        .collect();
    // A persistent-grants guest leaves its pages granted (the backend keeps them mapped);
    // a stock one gets every grant back before the response.
    let persistent =
        g.xs.read(&format!("{}/feature-persistent", g.id.frontend_dir()))
            .is_ok();
    if !persistent {
        desc.pages
            .end_access()
            .map_err(|_| ())
            .expect("descriptor grants released");
    }
    IsoDone { resp, data, descs }
}

impl Guest {
    /// Closes (as xen-hcd does after the backend closed), then reconnects with new rings
    /// from Initialising, as a reloaded frontend driver would.
    pub fn reconnect(mut self, h: &mut Harness) -> Guest {
        self.set_state(XenbusState::Closed);
        let be_dir = self.id.backend_dir();
        let st = xenbus::wait_state(&mut self.xs, &be_dir, T, |s| s == XenbusState::Closed);
        assert!(
            st.is_ok(),
            "backend never closed: {st:?}; log:\n{}",
            h.log()
        );
        self.set_state(XenbusState::Initialising);
        let st = xenbus::wait_state(&mut self.xs, &be_dir, T, |s| s == XenbusState::InitWait);
        assert!(
            st.is_ok(),
            "backend never went back to InitWait: {st:?}; log:\n{}",
            h.log()
        );
        let Guest {
            plat,
            xs,
            id,
            num_ports,
            ..
        } = self;
        let mut g = Guest::attach_rings(plat, xs, id, num_ports);
        g.publish();
        let st = xenbus::wait_state(&mut g.xs, &be_dir, T, |s| s == XenbusState::Connected);
        assert!(
            st.is_ok(),
            "backend never reconnected: {st:?}; log:\n{}",
            h.log()
        );
        g
    }

    /// Waits for the backend to reach `want`.
    pub fn wait_backend(&mut self, h: &Harness, want: XenbusState) {
        let be_dir = self.id.backend_dir();
        let st = xenbus::wait_state(&mut self.xs, &be_dir, T, |s| s == want);
        assert!(
            st.is_ok(),
            "backend state {st:?}, wanted {want:?}; log:\n{}",
            h.log()
        );
    }
}
