//! The URB trace: one line per URB a simulated device executed, the device side of the
//! end-to-end tests' URB ledger.

use crate::host::{HostUrb, UrbFlags, XferKind};

/// The URB trace file in a device's state directory (`DeviceSpec::trace`). One line per URB
/// the device executed, in execution order: `ep=<addr hex> kind=<k> len=<n> actual=<n>
/// status=<i> cont=<0|1> head=<hex of the first 16 data bytes: OUT as sent, IN as returned>`.
pub const TRACE_FILE: &str = "urb-trace";

/// Where trace lines go (a file opened by the device); a newtype so `Core` stays `Debug`.
pub struct TraceSink(pub Box<dyn std::io::Write + Send>);

impl std::fmt::Debug for TraceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceSink")
    }
}

impl TraceSink {
    /// Appends the line of `urb`, which ran with `status`, moving `actual` of its
    /// `requested` data bytes.
    pub(super) fn record(&mut self, urb: &HostUrb, requested: usize, actual: usize, status: i32) {
        let (addr, kind) = (urb.endpoint, urb.kind);
        let mut head = [0u8; 16];
        let off = if kind == XferKind::Control { 8 } else { 0 };
        let n = if urb.is_in() { actual } else { requested }.min(16);
        let head = head.get_mut(..n).unwrap_or_default();
        urb.buf.read_at(off, head);
        let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
        let cont = u8::from(urb.flags.contains(UrbFlags::BULK_CONTINUATION));
        // One write per line: a killed backend leaves only whole lines.
        let _ = self.0.write_all(
            format!(
                "ep={addr:02x} kind={kind:?} len={requested} actual={actual} \
                 status={status} cont={cont} head={hex}\n"
            )
            .as_bytes(),
        );
    }
}
