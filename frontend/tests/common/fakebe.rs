//! A ring-level backend written for the tests: it does the xenbus handshake as dom0 (or a
//! driver domain), maps the rings, announces one high-speed device on port 1, emulates
//! SET_ADDRESS and serves a bulk loopback (OUT 0x02 → IN 0x81, 512-byte packets). IN
//! requests wait for data, so unlinks find them in flight. Hostile modes send what a
//! broken backend would.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pvusb_ring::sring::{ConnBackRing, UrbBackRing};
use pvusb_ring::wire::{
    ConnEvent, Limits, Port, RawUrbResponse, Speed, Status, Submit, Transfer, UrbRequest,
    UrbResponse,
};
use pvusb_xen::sim::SimPlatform;
use pvusb_xen::{Access, DomId, EventChannels, EvtchnPort, GrantMapper, GrantRef};
use xenstore_cfg::vusb::VusbId;
use xenstore_cfg::xenbus::{read_rings, switch_state, wait_state, XenbusState};
use xenstore_cfg::Xs;

pub const DEVICE: [u8; 18] = [
    18, 1, 0x00, 0x02, 0xff, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 1,
];
pub const CONFIG: [u8; 32] = [
    9, 2, 32, 0, 1, 1, 0, 0x80, 50, //
    9, 4, 0, 0, 2, 0xff, 0, 0, 0, //
    7, 5, 0x81, 2, 0x00, 0x02, 0, //
    7, 5, 0x02, 2, 0x00, 0x02, 0, //
];

/// How the fake misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A correct backend.
    Good,
    /// Answers the first bulk request with an id nobody sent.
    UnknownId,
    /// Publishes an impossible `rsp_prod` at the first bulk request.
    RspProdOverflow,
}

/// What the fake saw.
#[derive(Debug, Default)]
pub struct Stats {
    pub submits: usize,
    pub unlinks: usize,
    pub bulk_out: Vec<u8>,
    pub max_segs: usize,
    pub held_now: usize,
}

pub struct FakeBackend {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub stats: Arc<Mutex<Stats>>,
}

impl FakeBackend {
    pub fn start(dir: PathBuf, id: VusbId, mode: Mode) -> FakeBackend {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let (s, st) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || serve(dir, id, mode, &s, &st));
        FakeBackend {
            stop,
            thread: Some(thread),
            stats,
        }
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Held {
    id: u16,
    req: Submit,
}

struct Dev<'a> {
    plat: &'a SimPlatform,
    fe: DomId,
    addr: u8,
    fifo: VecDeque<u8>,
    held: Vec<Held>,
}

impl Dev<'_> {
    fn read_segs(&self, s: &Submit) -> Vec<u8> {
        let mut out = Vec::new();
        for seg in s.data_segs() {
            let m = self
                .plat
                .map(self.fe, &[GrantRef(seg.gref)], Access::ReadOnly)
                .unwrap();
            let mut b = vec![0u8; usize::from(seg.length)];
            m.read_at(usize::from(seg.offset), &mut b).unwrap();
            out.extend_from_slice(&b);
        }
        out.truncate(s.buffer_length as usize);
        out
    }

    fn write_segs(&self, s: &Submit, data: &[u8]) {
        let mut at = 0;
        for seg in s.data_segs() {
            if at >= data.len() {
                break;
            }
            let n = usize::from(seg.length).min(data.len() - at);
            let m = self
                .plat
                .map(self.fe, &[GrantRef(seg.gref)], Access::Writable)
                .unwrap();
            m.write_at(usize::from(seg.offset), &data[at..at + n])
                .unwrap();
            at += n;
        }
    }

    /// `Some(response)` now, or `None` if the request is held.
    fn submit(&mut self, id: u16, s: Submit) -> Option<UrbResponse> {
        let devnum = s.pipe.devnum();
        match s.xfer {
            Transfer::Ctrl { setup } => {
                let (rt, req) = (setup[0], setup[1]);
                let value = u16::from_le_bytes([setup[2], setup[3]]);
                let len = usize::from(u16::from_le_bytes([setup[6], setup[7]]));
                if devnum == 0 && !(rt == 0x80 && req == 6) && !(rt == 0 && req == 5) {
                    return Some(UrbResponse::new(id, Status::Inval, 0));
                }
                if devnum != 0 && devnum != self.addr {
                    return Some(UrbResponse::new(id, Status::NoDev, 0));
                }
                let reply = |d: &[u8]| {
                    let d = &d[..d.len().min(len)];
                    self.write_segs(&s, d);
                    Some(UrbResponse::new(id, Status::Ok, d.len() as u32))
                };
                match (rt, req, value >> 8) {
                    (0x80, 6, 1) => reply(&DEVICE),
                    (0x80, 6, 2) => reply(&CONFIG),
                    (0x80, 8, _) => reply(&[1]),
                    (0x00, 5, _) => {
                        self.addr = value as u8;
                        Some(UrbResponse::new(id, Status::Ok, 0))
                    }
                    (0x00, 9, _) => Some(UrbResponse::new(id, Status::Ok, 0)),
                    _ => Some(UrbResponse::new(id, Status::Stall, 0)),
                }
            }
            Transfer::Bulk if devnum == self.addr && s.pipe.ep_num() == 2 && !s.pipe.is_in() => {
                let data = self.read_segs(&s);
                self.fifo.extend(&data);
                Some(UrbResponse::new(id, Status::Ok, data.len() as u32))
            }
            Transfer::Bulk if devnum == self.addr && s.pipe.ep_num() == 1 && s.pipe.is_in() => {
                self.held.push(Held { id, req: s });
                None
            }
            _ => Some(UrbResponse::new(id, Status::Stall, 0)),
        }
    }

    /// Answers held IN requests, in order, while data is there.
    fn serve_held(&mut self, out: &mut Vec<UrbResponse>) {
        while !self.fifo.is_empty() && !self.held.is_empty() {
            let h = self.held.remove(0);
            let n = (h.req.buffer_length as usize).min(self.fifo.len());
            let data: Vec<u8> = self.fifo.drain(..n).collect();
            self.write_segs(&h.req, &data);
            out.push(UrbResponse::new(h.id, Status::Ok, n as u32));
        }
    }
}

fn serve(dir: PathBuf, id: VusbId, mode: Mode, stop: &AtomicBool, stats: &Mutex<Stats>) {
    let mut xs = Xs::connect(dir.join("socket")).unwrap();
    let (be_dir, fe_dir) = (id.backend_dir(), id.frontend_dir());
    switch_state(&mut xs, &be_dir, XenbusState::InitWait).unwrap();
    wait_state(&mut xs, &fe_dir, Duration::from_secs(20), |s| {
        s == XenbusState::Connected
    })
    .unwrap();
    let rings = read_rings(&mut xs, &fe_dir).unwrap();
    let plat = SimPlatform::connect(&dir, DomId(id.be)).unwrap();
    let fe = DomId(id.fe);
    let urb_map = Arc::new(
        plat.map(fe, &[GrantRef(rings.urb_ring_ref)], Access::Writable)
            .unwrap(),
    );
    let conn_map = Arc::new(
        plat.map(fe, &[GrantRef(rings.conn_ring_ref)], Access::Writable)
            .unwrap(),
    );
    let mut urb = UrbBackRing::new(urb_map.shm()).unwrap();
    let mut conn = ConnBackRing::new(conn_map.shm()).unwrap();
    let ch = plat
        .bind_interdomain(fe, EvtchnPort(rings.event_channel))
        .unwrap();
    switch_state(&mut xs, &be_dir, XenbusState::Connected).unwrap();

    let req = conn.pop_request().unwrap().unwrap();
    let ev = ConnEvent {
        id: req.id.get(),
        port: Port::new(1).unwrap(),
        speed: Speed::High,
    };
    conn.push_response(&ev.to_raw()).unwrap();
    if conn.push_responses_and_check_notify() {
        ch.notify().unwrap();
    }

    let mut dev = Dev {
        plat: &plat,
        fe,
        addr: 0,
        fifo: VecDeque::new(),
        held: Vec::new(),
    };
    let limits = Limits::stock(4);
    let mut broke = false;
    while !stop.load(Ordering::SeqCst) {
        let fd = ch.as_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        let fired = ch.take_pending().unwrap();
        let mut out = Vec::new();
        // ring.h's consumer loop: drain, then re-arm req_event and re-check, so the
        // frontend's next push notifies us.
        let mut reqs = Vec::new();
        loop {
            while let Ok(Some(raw)) = urb.pop_request() {
                reqs.push(raw);
            }
            if !urb.final_check_for_requests().unwrap_or(false) {
                break;
            }
        }
        for raw in reqs {
            match UrbRequest::parse(&raw, &limits) {
                Err(_) => out.push(UrbResponse::new(raw.id.get(), Status::Inval, 0)),
                Ok(UrbRequest::Unlink(u)) => {
                    stats.lock().unwrap().unlinks += 1;
                    if let Some(i) = dev.held.iter().position(|h| h.id == u.victim) {
                        let h = dev.held.remove(i);
                        out.push(UrbResponse::new(h.id, Status::IoError, 0));
                    }
                    out.push(UrbResponse::new(u.id, Status::Ok, 0));
                }
                Ok(UrbRequest::Submit(s)) => {
                    {
                        let mut st = stats.lock().unwrap();
                        st.submits += 1;
                        st.max_segs = st.max_segs.max(s.segs.len());
                    }
                    let bulk = s.pipe.is_bulk();
                    if bulk && !broke && mode != Mode::Good {
                        broke = true;
                        match mode {
                            Mode::UnknownId => {
                                out.push(UrbResponse::new(s.id ^ 0x40, Status::Ok, 0));
                            }
                            Mode::RspProdOverflow => {
                                let rsp_prod = urb.sring().rsp_prod();
                                rsp_prod.store(
                                    rsp_prod.load(Ordering::SeqCst).wrapping_add(1000),
                                    Ordering::SeqCst,
                                );
                                ch.notify().unwrap();
                            }
                            Mode::Good => {}
                        }
                        continue;
                    }
                    if bulk && !s.pipe.is_in() {
                        let data = dev.read_segs(&s);
                        stats.lock().unwrap().bulk_out.extend_from_slice(&data);
                    }
                    if let Some(r) = dev.submit(s.id, s) {
                        out.push(r);
                    }
                }
            }
        }
        dev.serve_held(&mut out);
        stats.lock().unwrap().held_now = dev.held.len();
        let mut pushed = false;
        for r in &out {
            let raw: RawUrbResponse = r.to_raw();
            urb.push_response(&raw).unwrap();
            pushed = true;
        }
        if pushed && urb.push_responses_and_check_notify() {
            ch.notify().unwrap();
        }
        if fired {
            ch.unmask().unwrap();
        }
    }
}
