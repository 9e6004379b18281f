//! Tests for `bridge` (compiled only under `#[cfg(test)]`, see `mod tests` in bridge/mod.rs).

use super::*;
use crate::usbip::TransferFlags;

const DEVICE: [u8; 18] = [
    18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1,
];
const CONFIG: [u8; 32] = [
    9, 2, 32, 0, 1, 1, 0, 0x80, 50, //
    9, 4, 0, 0, 2, 8, 6, 0x50, 0, //
    7, 5, 0x81, 2, 0x00, 0x02, 0, //
    7, 5, 0x02, 2, 0x00, 0x02, 0, //
];

fn port(n: u8) -> Port {
    Port::new(n).unwrap()
}

/// Drives enumeration against a well-behaved device and returns the transfers seen.
fn enumerate(b: &mut Bridge) -> Vec<Internal> {
    let mut seen = Vec::new();
    while let Some(i) = b.next_internal() {
        seen.push(i);
        assert_eq!(b.next_internal(), None, "one step at a time");
        let data: Vec<u8> = match (i.setup[1], i.setup[3]) {
            (GET_DESCRIPTOR, 1) => DEVICE.to_vec(),
            (GET_DESCRIPTOR, 2) => CONFIG[..usize::from(i.len())].to_vec(),
            (GET_CONFIGURATION, _) => vec![1],
            _ => vec![],
        };
        b.internal_done(0, &data).unwrap();
    }
    seen
}

#[test]
fn enumeration_addresses_then_reads_descriptors() {
    let mut b = Bridge::new(port(3), Speed::High);
    let seen = enumerate(&mut b);
    assert!(b.is_ready());
    let steps: Vec<(u8, u8, u16)> = seen
        .iter()
        .map(|i| (i.devnum, i.setup[1], i.len()))
        .collect();
    assert_eq!(
        steps,
        [
            (0, GET_DESCRIPTOR, 18),
            (0, SET_ADDRESS, 0),
            (3, GET_DESCRIPTOR, 9),
            (3, GET_DESCRIPTOR, 32),
            (3, GET_CONFIGURATION, 1)
        ]
    );
    assert_eq!(seen[1].setup[2], 3, "SET_ADDRESS to the port's address");
    assert_eq!(
        seen[0].pipe(port(3)),
        Pipe::new(3, 0, Ep::new(0, true), XferType::Ctrl)
    );
    let d = b.exported(1, "1-3".into());
    assert_eq!(
        (d.id_vendor, d.devnum, d.configuration_value),
        (0x1209, 3, 1)
    );
    assert_eq!(d.interfaces.len(), 1);
    assert_eq!(b.endpoints().len(), 2);
}

#[test]
fn failed_step_is_an_error() {
    let mut b = Bridge::new(port(1), Speed::Full);
    b.next_internal().unwrap();
    assert!(matches!(
        b.internal_done(-19, &[]),
        Err(EnumError::Transfer { status: -19, .. })
    ));
    assert_eq!(b.internal_done(0, &[]), Err(EnumError::Unexpected));
    let mut b = Bridge::new(port(1), Speed::Full);
    b.next_internal().unwrap();
    assert!(matches!(
        b.internal_done(0, &DEVICE[..8]),
        Err(EnumError::Descriptor { .. })
    ));
}

fn cmd(ep: u8, dir: Direction, length: u32) -> CmdSubmit {
    CmdSubmit {
        seqnum: 1,
        ep,
        dir,
        length,
        ..CmdSubmit::default()
    }
}

#[test]
fn submits_map_to_learnt_pipes() {
    let mut b = Bridge::new(port(2), Speed::High);
    enumerate(&mut b);
    let Mapped::Transfer(t) = b.map_submit(&cmd(1, Direction::In, 100_000)) else {
        panic!()
    };
    assert_eq!(t.pipe, Pipe::new(2, 2, Ep::new(1, true), XferType::Bulk));
    assert_eq!((t.shape.len, t.shape.max_packet), (100_000, 512));
    let mut c = cmd(1, Direction::In, 10);
    c.flags = TransferFlags::SHORT_NOT_OK;
    assert!(matches!(
        b.map_submit(&c),
        Mapped::Transfer(Transfer {
            short_not_ok: true,
            ..
        })
    ));
    assert!(matches!(
        b.map_submit(&cmd(5, Direction::In, 1)),
        Mapped::Local(Completion { status: EPIPE, .. })
    ));
    let mut set_addr = cmd(0, Direction::Out, 0);
    set_addr.setup = setup(0, SET_ADDRESS, 9, 0, 0);
    assert!(matches!(
        b.map_submit(&set_addr),
        Mapped::Local(Completion { status: 0, .. })
    ));
    let mut get = cmd(0, Direction::In, 18);
    get.setup = setup(0x80, GET_DESCRIPTOR, 0x100, 0, 18);
    let Mapped::Transfer(t) = b.map_submit(&get) else {
        panic!()
    };
    assert_eq!(t.pipe, Pipe::new(2, 2, Ep::new(0, true), XferType::Ctrl));
}

#[test]
fn set_configuration_zero_forgets_endpoints() {
    let mut b = Bridge::new(port(2), Speed::High);
    enumerate(&mut b);
    b.observe_control(&setup(0, SET_CONFIGURATION, 0, 0, 0), 0);
    assert!(b.endpoints().is_empty());
    b.observe_control(&setup(0, SET_CONFIGURATION, 1, 0, 0), -32);
    assert!(b.endpoints().is_empty(), "a failed request changes nothing");
    b.observe_control(&setup(0, SET_CONFIGURATION, 1, 0, 0), 0);
    assert_eq!(b.endpoints().len(), 2);
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(cases()))]
    /// The fuzz target's body: any device answers and client commands, no panic.
    #[test]
    fn bridge_is_total(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        super::fuzzing::exercise(&data);
    }

    /// A well-formed device followed by arbitrary commands.
    #[test]
    fn bridge_is_total_after_real_enumeration(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let mut data = vec![3u8];
        for answer in [&DEVICE[..], &[][..], &CONFIG[..9], &CONFIG[..], &[1][..]] {
            data.push(0);
            data.extend_from_slice(answer);
            data.push(0xa5);
        }
        data.extend_from_slice(&tail);
        super::fuzzing::exercise(&data);
    }
}
