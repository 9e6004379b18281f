//! The engine (rings, pool, state machine) against a hostile backend, in one process over
//! the simulated broker: random response bytes, ids, lengths and ring indexes. Whatever
//! the backend does, `service` returns `Ok` or a typed error (never panics), and every
//! transfer taken is answered exactly once — by the backend or by `disconnect`.

#![allow(missing_debug_implementations)]

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use pvusb_frontend::engine::{Engine, Kind, Output, Payload};
use pvusb_frontend::xenbus::BackendOffer;
use pvusb_ring::sring::{ConnBackRing, UrbBackRing};
use pvusb_ring::urb::split::Shape;
use pvusb_ring::wire::{Ep, Pipe, RawConnResponse, RawUrbResponse, XferType};
use pvusb_xen::sim::{Broker, SimPlatform};
use pvusb_xen::{Access, DomId, EventChannels, EvtchnPort, GrantMapper, GrantRef};
use zerocopy::FromBytes;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
        .min(256)
}

#[derive(Clone, Debug)]
enum Op {
    /// The client submits a bulk transfer.
    Submit { len: u32, is_in: bool },
    /// The client unlinks its `n`th transfer.
    Unlink(usize),
    /// The backend answers the oldest request it took, with these fields.
    Answer {
        status: i32,
        actual: i32,
        id_xor: u16,
    },
    /// The backend writes raw bytes as the next response.
    Raw([u8; 16]),
    /// The backend moves rsp_prod by this much without writing anything.
    Bump(u32),
    /// The backend announces a conn event with raw port/speed bytes.
    Conn { port: u8, speed: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..200_000, any::<bool>()).prop_map(|(len, is_in)| Op::Submit { len, is_in }),
        1 => (0usize..8).prop_map(Op::Unlink),
        6 => (prop_oneof![Just(0), Just(-32), Just(-71), any::<i32>()],
              prop_oneof![Just(0), Just(512), Just(65536), any::<i32>()],
              prop_oneof![8 => Just(0u16), 1 => any::<u16>()])
            .prop_map(|(status, actual, id_xor)| Op::Answer { status, actual, id_xor }),
        1 => any::<[u8; 16]>().prop_map(Op::Raw),
        1 => prop_oneof![Just(1u32), Just(17), any::<u32>()].prop_map(Op::Bump),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(port, speed)| Op::Conn { port, speed }),
    ]
}

struct Backend {
    urb: UrbBackRing,
    conn: ConnBackRing,
    _maps: Vec<Arc<pvusb_xen::GrantMapping>>,
    taken: Vec<u16>,
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path()).unwrap();
    broker.create_domain(DomId(1)).unwrap();
    let fe_plat = SimPlatform::connect(dir.path(), DomId(1)).unwrap();
    let be_plat = SimPlatform::connect(dir.path(), DomId(0)).unwrap();
    let offer = BackendOffer {
        num_ports: 4,
        usb_ver: 2,
        aca: false,
        split_chain: true,
    };
    let (mut engine, info) = Engine::new(&fe_plat, DomId(0), &offer).unwrap();
    let map = |gref: u32| {
        Arc::new(
            be_plat
                .map(DomId(1), &[GrantRef(gref)], Access::Writable)
                .unwrap(),
        )
    };
    let (um, cm) = (map(info.urb_ring_ref), map(info.conn_ring_ref));
    let ch = be_plat
        .bind_interdomain(DomId(1), EvtchnPort(info.event_channel))
        .unwrap();
    let mut be = Backend {
        urb: UrbBackRing::new(um.shm()).unwrap(),
        conn: ConnBackRing::new(cm.shm()).unwrap(),
        _maps: vec![um, cm],
        taken: Vec::new(),
    };
    // Port 1 has a high-speed device.
    let req = be.conn.pop_request().unwrap().unwrap();
    let ev = RawConnResponse {
        id: req.id,
        portnum: 1,
        speed: 3,
    };
    be.conn.push_response(&ev).unwrap();
    be.conn.push_responses();
    ch.notify().unwrap();

    let mut out = Vec::new();
    let mut broken = engine.service(&mut out).is_err();
    prop_assert!(
        matches!(out.as_slice(), [Output::Attached { .. }]),
        "port 1 attached: {:?}",
        out
    );
    out.clear();
    let mut submitted: Vec<u64> = Vec::new();
    let mut answers: HashMap<u64, usize> = HashMap::new();
    let mut next = 1u64;
    let mut unlink_handle = 1u64 << 40;
    for op in ops {
        if broken {
            break;
        }
        match op {
            Op::Submit { len, is_in } => {
                let h = next;
                next += 1;
                let pipe = Pipe::new(1, 1, Ep::new(1, is_in), XferType::Bulk);
                let shape = Shape {
                    len,
                    page_offset: 0,
                    max_packet: 512,
                    extra_segs: 0,
                };
                let payload = Payload {
                    dir_in: is_in,
                    buf: vec![0x5a; len as usize],
                    kind: Kind::Bulk,
                };
                if engine.submit(h, pipe, shape, false, payload).is_ok() {
                    submitted.push(h);
                }
            }
            Op::Unlink(n) => {
                if let Some(&victim) = submitted.get(n) {
                    unlink_handle += 1;
                    let _ = engine.unlink(unlink_handle, victim);
                }
            }
            Op::Answer {
                status,
                actual,
                id_xor,
            } => {
                while let Ok(Some(r)) = be.urb.pop_request() {
                    be.taken.push(r.id.get());
                }
                if !be.taken.is_empty() {
                    let id = be.taken.remove(0) ^ id_xor;
                    let raw = RawUrbResponse {
                        id: id.into(),
                        status: status.into(),
                        actual_length: actual.into(),
                        ..RawUrbResponse::default()
                    };
                    let _ = be.urb.push_response(&raw);
                    be.urb.push_responses();
                }
            }
            Op::Raw(bytes) => {
                while let Ok(Some(r)) = be.urb.pop_request() {
                    be.taken.push(r.id.get());
                }
                if !be.taken.is_empty() {
                    be.taken.remove(0);
                    let raw = RawUrbResponse::read_from_bytes(&bytes).unwrap();
                    let _ = be.urb.push_response(&raw);
                    be.urb.push_responses();
                }
            }
            Op::Bump(k) => {
                let p = be.urb.sring().rsp_prod();
                p.store(
                    p.load(std::sync::atomic::Ordering::SeqCst).wrapping_add(k),
                    std::sync::atomic::Ordering::SeqCst,
                );
            }
            Op::Conn { port, speed } => {
                if let Ok(Some(req)) = be.conn.pop_request() {
                    let ev = RawConnResponse {
                        id: req.id,
                        portnum: port,
                        speed,
                    };
                    let _ = be.conn.push_response(&ev);
                    be.conn.push_responses();
                }
            }
        }
        let _ = ch.notify();
        let r = engine.service(&mut out);
        let _ = engine.flush(&mut out);
        broken = r.is_err();
    }
    engine.disconnect(&mut out);
    for o in out {
        if let Output::Complete { handle, .. } | Output::UnlinkReset { victim: handle } = o {
            *answers.entry(handle).or_default() += 1;
        }
    }
    for h in &submitted {
        prop_assert_eq!(
            answers.get(h).copied(),
            Some(1),
            "transfer {} answered once",
            h
        );
    }
    prop_assert_eq!(answers.len(), submitted.len());
    drop(broker);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    #[test]
    fn engine_survives_any_backend(ops in proptest::collection::vec(op(), 1..48)) {
        run(ops)?;
    }
}
