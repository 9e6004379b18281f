//! Interop: the PyPI `usbip` 0.7.0 client (a USB/IP implementation we did not write)
//! imports a device from a tiny TCP server built from this crate's [`ServerConn`], backed
//! by an in-test echo device: OP_REQ_DEVLIST, OP_REQ_IMPORT, GET_DESCRIPTOR, a stall, and
//! bulk OUT then IN with the data checked on both sides.
//!
//! The client runs in a venv this test creates under Cargo's target tmpdir (pip reaches
//! PyPI once; later runs reuse it). If that fails the test fails, unless PVUSB_NO_PYPI=1.

mod common;

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pvusb_frontend::usbip::{
    CmdSubmit, Completion, ConnEvent, Direction, Event, ExportedDevice, InterfaceClass, Limits,
    OpStatus, ServerConn, Speed,
};

const VID: u16 = 0x1209;
const PID: u16 = 0x0001;
const EPIPE: i32 = -32;

const DEVICE_DESCRIPTOR: [u8; 18] = [
    18, 1, 0x00, 0x02, 0xFF, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 1,
];

/// Configuration 1: one vendor interface with bulk OUT 0x01 and bulk IN 0x81.
const CONFIG_DESCRIPTOR: [u8; 32] = [
    9, 2, 32, 0, 1, 1, 0, 0x80, 50, // configuration
    9, 4, 0, 0, 2, 0xFF, 0, 0, 0, // interface
    7, 5, 0x01, 2, 0x00, 0x02, 0, // ep 1 OUT bulk 512
    7, 5, 0x81, 2, 0x00, 0x02, 0, // ep 1 IN bulk 512
];

fn exported() -> ExportedDevice {
    ExportedDevice {
        path: "/sys/devices/pvusb/usb1/1-1".into(),
        busid: "1-1".into(),
        busnum: 1,
        devnum: 2,
        speed: Speed::High,
        id_vendor: VID,
        id_product: PID,
        bcd_device: 0x0100,
        device_class: 0xFF,
        configuration_value: 1,
        num_configurations: 1,
        interfaces: vec![InterfaceClass {
            class: 0xFF,
            sub_class: 0,
            protocol: 0,
        }],
        ..ExportedDevice::default()
    }
}

/// What the server saw, for the test to check after the client is done.
#[derive(Debug, Default)]
struct Seen {
    devlists: usize,
    imports: Vec<String>,
    submits: usize,
    bulk_out: Vec<u8>,
    set_configuration: Option<u16>,
}

/// A loopback device: bulk OUT bytes come back on bulk IN.
#[derive(Default)]
struct EchoDevice {
    fifo: VecDeque<u8>,
}

impl EchoDevice {
    fn handle(&mut self, s: &CmdSubmit, seen: &mut Seen) -> Completion {
        let ok = |data: Vec<u8>, len: u32| Completion {
            actual_length: len,
            data,
            ..Completion::default()
        };
        let stall = Completion {
            status: EPIPE,
            ..Completion::default()
        };
        match (s.ep, s.dir) {
            (0, _) => {
                let [rt, req, v0, v1, _, _, l0, l1] = s.setup;
                let (value, len) = (
                    u16::from_le_bytes([v0, v1]),
                    usize::from(u16::from_le_bytes([l0, l1])),
                );
                match (rt, req, value >> 8) {
                    (0x80, 6, 1) => reply(&DEVICE_DESCRIPTOR, len),
                    (0x80, 6, 2) => reply(&CONFIG_DESCRIPTOR, len),
                    (0x00, 9, _) => {
                        seen.set_configuration = Some(value);
                        ok(vec![], 0)
                    }
                    _ => stall,
                }
            }
            (1, Direction::Out) => {
                self.fifo.extend(&s.data);
                seen.bulk_out.extend_from_slice(&s.data);
                ok(vec![], s.length)
            }
            (1, Direction::In) => {
                let n = self.fifo.len().min(s.length as usize);
                let data: Vec<u8> = self.fifo.drain(..n).collect();
                ok(data, n as u32)
            }
            _ => stall,
        }
    }
}

fn reply(desc: &[u8], len: usize) -> Completion {
    let data = desc[..desc.len().min(len)].to_vec();
    Completion {
        actual_length: data.len() as u32,
        data,
        ..Completion::default()
    }
}

/// Serves one connection with blocking I/O; the protocol decisions are all ServerConn's.
fn serve(mut sock: TcpStream, seen: &Mutex<Seen>) {
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut conn = ServerConn::new(Limits::default(), 64);
    let mut dev = EchoDevice::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("server read: {e}"),
        };
        conn.feed(&buf[..n])
            .expect("the PyPI client sent valid USB/IP");
        while let Some(ev) = conn.poll_event() {
            let mut seen = seen.lock().unwrap();
            match ev {
                ConnEvent::DevlistRequested => {
                    seen.devlists += 1;
                    conn.reply_devlist(&[exported()]).unwrap();
                }
                ConnEvent::ImportRequested { busid } => {
                    seen.imports.push(busid.clone());
                    if busid == "1-1" {
                        conn.accept_import(&exported()).unwrap().unwrap();
                    } else {
                        conn.refuse_import(OpStatus::NoDev).unwrap();
                    }
                }
                ConnEvent::Urb(Event::Submit(s)) => {
                    seen.submits += 1;
                    let c = dev.handle(&s, &mut seen);
                    conn.session().unwrap().complete(s.seqnum, c).unwrap();
                }
                ConnEvent::Urb(Event::Unlink { victim, .. }) => {
                    panic!("PyPI usbip 0.7.0 has no unlink, got one for {victim}")
                }
            }
        }
        while !conn.pending_tx().is_empty() {
            let n = sock.write(conn.pending_tx()).unwrap();
            conn.consume_tx(n);
        }
        if conn.should_close() {
            return;
        }
    }
}

const CLIENT: &str = r#"
import sys
import usbip
from usbip.host import list_devices
from usbip.transport import USBIP

port = int(sys.argv[1])
devs = list_devices(USBIP("127.0.0.1", port))
assert len(devs) == 1, devs
d = devs[0]
assert d["busid"] == "1-1" and d["idVendor"] == 0x1209 and d["idProduct"] == 0x0001, d
assert d["busnum"] == 1 and d["devnum"] == 2 and d["speed"] == 3, d
assert d["interfaces"] == [(0xFF, 0, 0)], d

try:
    usbip.attach("127.0.0.1", "9-9", port=port)
    raise AssertionError("import of an unknown busid succeeded")
except usbip.NotFound:
    pass

h = usbip.attach("127.0.0.1", "1-1", port=port, vid=0x1209, pid=0x0001)
dd = h.device_descriptor
assert (dd.idVendor, dd.idProduct, dd.bMaxPacketSize0, dd.bcdUSB) == (0x1209, 0x0001, 64, 0x0200), dd
cfg = h.control(0x80, 0x06, 0x0200, 0, 255)
assert len(cfg) == 32 and cfg[1] == 2 and cfg[27] == 0x81, cfg
try:
    h.control(0x80, 0x06, 0x0300, 0, 255)
    raise AssertionError("string descriptor did not stall")
except usbip.Stall:
    pass

payload = bytes(range(256)) * 8 + b"pvusb"
assert h.bulk_out(0x01, payload) == len(payload)
back = h.bulk_in(0x81, 4096)
assert back == payload, (len(back), back[:16])
assert h.bulk_in(0x81, 64) == b""
h.close()
print("PYPI-USBIP-OK")
"#;

#[test]
fn pypi_usbip_client_imports_and_transfers() {
    let Some(python) = common::pypi::python() else {
        return;
    };

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let server_seen = seen.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let seen = server_seen.clone();
            std::thread::spawn(move || serve(sock.unwrap(), &seen));
        }
    });

    common::pypi::run_client(&python, CLIENT, port, "PYPI-USBIP-OK", String::new);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.devlists, 1);
    assert_eq!(seen.imports, ["9-9", "1-1"]);
    assert_eq!(seen.set_configuration, Some(1));
    let mut expect: Vec<u8> = (0..=255u8).cycle().take(256 * 8).collect();
    expect.extend_from_slice(b"pvusb");
    assert_eq!(seen.bulk_out, expect);
    // GET_DESCRIPTOR(device), SET_CONFIGURATION, GET_DESCRIPTOR(config), the stalled
    // string descriptor, bulk OUT, two bulk INs.
    assert_eq!(seen.submits, 7);
}
