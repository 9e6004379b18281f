//! Fuzz drivers (also run by proptest): a guest's arbitrary URB stream against the storage
//! model, through the same `Core` the simulated device uses. Must never panic.

use std::fs::File;
use std::time::Instant;

use super::core::Core;
use super::model::identity;
use super::model::scsi::Lun;
use super::model::storage::Storage;
use super::spec::{DeviceSpec, Faults, ModelSpec};
use crate::host::{HostUrb, UrbBuf, UrbFlags, XferKind};

/// Interprets `input` as a sequence of URBs and control operations on a 16-block disk.
/// Returns the number of completions reaped (all of them: nothing may stay in flight).
pub fn drive_storage(input: &[u8]) -> usize {
    let Ok(fd) = rustix::fs::memfd_create("pvusb-fuzz-disk", rustix::fs::MemfdFlags::CLOEXEC)
    else {
        return 0;
    };
    let file = File::from(fd);
    if file.set_len(16 * 512).is_err() {
        return 0;
    }
    let spec = DeviceSpec::new(ModelSpec::Storage {
        size_bytes: 16 * 512,
    });
    let ident = identity(&spec, "FUZZ");
    let model = Storage::with_lun(Lun::new(file, 16, "FUZZ"), ident.speed);
    let now = Instant::now();
    let mut core = Core::new(Box::new(model), ident, Faults::default(), now);
    let mut reaped = 0;
    let mut tag = 0u64;
    let mut rest = input;
    while let [op, arg, tail @ ..] = rest {
        tag += 1;
        let take = usize::from(*arg % 64).min(tail.len());
        let (data, tail) = tail.split_at(take);
        rest = tail;
        let urb = match op % 7 {
            0 => HostUrb::new(
                tag,
                XferKind::Bulk,
                0x02,
                UrbFlags::empty(),
                UrbBuf::from_vec(data.to_vec()),
            ),
            1 => HostUrb::new(
                tag,
                XferKind::Bulk,
                0x81,
                UrbFlags::empty(),
                UrbBuf::zeroed(usize::from(*arg) * 8),
            ),
            2 => {
                // A well-formed CBW around arbitrary command bytes, to reach the data phases.
                let mut cbw = vec![0x55, 0x53, 0x42, 0x43, 0, 0, 0, 0];
                cbw.extend_from_slice(&(u32::from(*arg) * 64).to_le_bytes());
                cbw.extend_from_slice(&[*op & 0x80, 0, (take as u8 % 16) + 1]);
                cbw.extend_from_slice(data);
                cbw.resize(31, 0);
                HostUrb::new(
                    tag,
                    XferKind::Bulk,
                    0x02,
                    UrbFlags::empty(),
                    UrbBuf::from_vec(cbw),
                )
            }
            3 => {
                let _ = core.clear_halt(if arg & 1 == 0 { 0x81 } else { 0x02 });
                continue;
            }
            4 => {
                let mut setup = data.to_vec();
                setup.resize(8 + usize::from(*arg), 0);
                HostUrb::new(
                    tag,
                    XferKind::Control,
                    0,
                    UrbFlags::empty(),
                    UrbBuf::from_vec(setup),
                )
            }
            5 => HostUrb::new(
                tag,
                XferKind::Control,
                0,
                UrbFlags::empty(),
                UrbBuf::from_vec(vec![0x21, 0xff, 0, 0, 0, 0, 0, 0]),
            ),
            _ => {
                let _ = core.discard(tag.saturating_sub(1 + u64::from(*arg % 4)));
                continue;
            }
        };
        let _ = core.submit(urb, now);
        core.process(now);
        while core.reap().is_some() {
            reaped += 1;
        }
    }
    reaped + core.drain().len()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_cases(256)))]
        #[test]
        fn storage_survives_arbitrary_urb_streams(input in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::drive_storage(&input);
        }
    }

    #[test]
    fn a_valid_inquiry_stream_completes() {
        // CBW (INQUIRY, 36 bytes IN), data IN, CSW IN.
        let mut input = vec![2, 6, 0x12, 0, 0, 0, 36, 0];
        input[0] = 2 | 0x80;
        input.extend_from_slice(&[1, 8, 1, 2]);
        assert!(super::drive_storage(&input) >= 2);
    }
}
