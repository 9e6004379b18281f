//! Interop through the whole stack: the PyPI `usbip` 0.7.0 client lists and imports a
//! simulated mass-storage device served by the real backend through the frontend's
//! `--usbip-listen`, reads its descriptors, and runs SCSI INQUIRY, WRITE(10) and READ(10)
//! over Bulk-Only Transport, checking the data it reads back.

#![allow(missing_debug_implementations)]

mod common;

use common::client::Client;
use common::stack::stack;
use common::wait_for;
use pvusb_backend::sim::ModelSpec;

const SCRIPT: &str = r#"
import struct, sys
import usbip
from usbip.host import list_devices
from usbip.transport import USBIP

port = int(sys.argv[1])
devs = list_devices(USBIP("127.0.0.1", port))
assert len(devs) == 1, devs
d = devs[0]
assert d["busid"] == "1-1" and d["interfaces"][0][0] == 8, d

h = usbip.attach("127.0.0.1", "1-1", port=port)
dd = h.device_descriptor
assert dd.bMaxPacketSize0 in (8, 16, 32, 64) and dd.idVendor != 0, dd
cfg = bytes(h.control(0x80, 0x06, 0x0200, 0, 255))
assert cfg[1] == 2 and len(cfg) == cfg[2] | (cfg[3] << 8), cfg
ep_in = ep_out = None
i = 0
while i + 2 <= len(cfg):
    n, t = cfg[i], cfg[i + 1]
    if t == 5 and cfg[i + 3] & 3 == 2:
        if cfg[i + 2] & 0x80:
            ep_in = cfg[i + 2]
        else:
            ep_out = cfg[i + 2]
    i += n
assert ep_in and ep_out is not None, cfg

tag = [0]
def cbw(length, flags, cb):
    tag[0] += 1
    return b"USBC" + struct.pack("<IIBBB", tag[0], length, flags, 0, len(cb)) + cb.ljust(16, b"\0")
def csw():
    s = bytes(h.bulk_in(ep_in, 13))
    assert len(s) == 13 and s[:4] == b"USBS" and s[12] == 0, s
def cmd_in(cb, n):
    h.bulk_out(ep_out, cbw(n, 0x80, cb))
    data = bytes(h.bulk_in(ep_in, n))
    csw()
    return data
def cmd_out(cb, data):
    h.bulk_out(ep_out, cbw(len(data), 0, cb))
    assert h.bulk_out(ep_out, data) == len(data)
    csw()

inq = cmd_in(bytes([0x12, 0, 0, 0, 36, 0]), 36)
assert len(inq) == 36 and inq[0] & 0x1f == 0, inq
payload = bytes((i * 7 + 3) % 256 for i in range(8 * 512))
cmd_out(bytes([0x2a, 0, 0, 0, 0, 40, 0, 0, 8, 0]), payload)
back = cmd_in(bytes([0x28, 0, 0, 0, 0, 40, 0, 0, 8, 0]), len(payload))
assert back == payload, (len(back), back[:16])
h.close()
print("PYPI-STACK-OK")
"#;

#[test]
fn pypi_usbip_client_uses_storage_through_the_stack() {
    let Some(python) = common::pypi::python() else {
        return;
    };
    let s = stack(
        0,
        ModelSpec::Storage {
            size_bytes: 1 << 20,
        },
    );
    wait_for(20, "the device to be exported", || {
        Client::devlist(s.port)
            .iter()
            .any(|d| d.busid == "1-1")
            .then_some(())
    });
    common::pypi::run_client(&python, SCRIPT, s.port, "PYPI-STACK-OK", || s.logs());
}
