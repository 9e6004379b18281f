//! A USB/IP server that exports one simulated device directly, without Xen in between:
//! the baseline the benchmarks compare the whole stack with, and the peer the guest
//! client's tests run against. Built from the frontend's USB/IP session and the backend's
//! simulated devices. Serves one connection at a time.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pvusb_backend::host::{
    resolve, Completion as HostCompletion, HostDevice, HostSpeed, HostUrb, UrbBuf, UrbFlags,
    UsbRoots, XferKind,
};
use pvusb_backend::sim::SimDevice;
use pvusb_frontend::usbip::{
    CmdSubmit, Completion, ConnEvent, Direction, Event, ExportedDevice, InterfaceClass, Limits,
    OpStatus, ServerConn, Speed, TransferFlags,
};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// A running server; stops when dropped.
#[derive(Debug)]
pub struct DirectServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DirectServer {
    /// Exports `busid` of the simulated platform in `simdir` on 127.0.0.1 (any port).
    pub fn start(simdir: &Path, busid: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, busid, flag) = (simdir.to_path_buf(), busid.to_owned(), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("usbip-direct".into())
            .spawn(move || accept_loop(&listener, &dir, &busid, &flag))?;
        Ok(DirectServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DirectServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(l: &TcpListener, dir: &Path, busid: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((s, _)) => {
                if let Err(e) = serve(s, dir, busid, stop) {
                    tracing::debug!(error = %e, "usbip-direct connection ended");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                tracing::warn!(error = %e, "usbip-direct accept");
                return;
            }
        }
    }
}

fn usbip_speed(s: HostSpeed) -> Speed {
    match s {
        HostSpeed::Low => Speed::Low,
        HostSpeed::Full => Speed::Full,
        HostSpeed::High => Speed::High,
        HostSpeed::Wireless => Speed::Wireless,
        HostSpeed::Super => Speed::Super,
        HostSpeed::SuperPlus => Speed::SuperPlus,
    }
}

/// Describes an opened device for OP_REP_DEVLIST / OP_REP_IMPORT.
fn exported(busid: &str, busnum: u16, devnum: u16, dev: &dyn HostDevice) -> ExportedDevice {
    let d = dev.descriptors();
    let active = dev.active_config();
    let interfaces = d
        .configs
        .iter()
        .find(|c| c.value == active)
        .map(|c| {
            c.alts
                .iter()
                .filter(|a| a.alt == 0)
                .map(|a| InterfaceClass {
                    class: a.class,
                    sub_class: a.subclass,
                    protocol: a.protocol,
                })
                .collect()
        })
        .unwrap_or_default();
    ExportedDevice {
        path: format!("/sys/devices/pvusb-direct/{busid}"),
        busid: busid.to_owned(),
        busnum: u32::from(busnum),
        devnum: u32::from(devnum),
        speed: usbip_speed(dev.speed()),
        id_vendor: d.device.id_vendor,
        id_product: d.device.id_product,
        bcd_device: d.device.bcd_device,
        device_class: d.device.class,
        device_sub_class: d.device.subclass,
        device_protocol: d.device.protocol,
        configuration_value: active,
        num_configurations: d.device.num_configurations,
        interfaces,
    }
}

struct Conn {
    dir: PathBuf,
    busid: String,
    conn: ServerConn,
    dev: Option<(SimDevice, ExportedDevice)>,
    unlinking: HashSet<u32>,
}

fn ctrl_result(r: Result<(), pvusb_backend::host::CtrlError>) -> i32 {
    r.map_or_else(|e| e.to_errno(), |()| 0)
}

impl Conn {
    fn open(&mut self) -> Option<ExportedDevice> {
        if let Some((_, e)) = &self.dev {
            return Some(e.clone());
        }
        let roots = UsbRoots::sim(&self.dir);
        let r = resolve(&roots, &self.busid).ok()?;
        let dev = SimDevice::open(&roots, &r).ok()?;
        let e = exported(&self.busid, r.busnum, r.devnum, &dev);
        self.dev = Some((dev, e.clone()));
        Some(e)
    }

    fn complete(&mut self, seqnum: u32, c: Completion) {
        if let Some(s) = self.conn.session() {
            if let Err(e) = s.complete(seqnum, c) {
                tracing::debug!(seqnum, error = %e, "completion not applied");
            }
        }
    }

    fn submit(&mut self, cmd: CmdSubmit) {
        let seq = cmd.seqnum;
        let Some((dev, _)) = &mut self.dev else {
            return self.complete(
                seq,
                Completion {
                    status: -19,
                    ..Completion::default()
                },
            );
        };
        let in_dir = cmd.dir == Direction::In;
        let len = usize::try_from(cmd.length).unwrap_or(0);
        let mut flags = UrbFlags::empty();
        if cmd.flags.contains(TransferFlags::SHORT_NOT_OK) {
            flags |= UrbFlags::SHORT_NOT_OK;
        }
        if cmd.flags.contains(TransferFlags::ZERO_PACKET) {
            flags |= UrbFlags::ZERO_PACKET;
        }
        let urb = if cmd.ep == 0 {
            let s = cmd.setup;
            let value = u16::from_le_bytes([s[2], s[3]]);
            let index = u16::from_le_bytes([s[4], s[5]]);
            // The requests the host stack performs itself (as the USB/IP stub does).
            let special = match (s[0], s[1]) {
                (0x00, 9) => Some(ctrl_result(dev.set_configuration(value.to_le_bytes()[0]))),
                (0x01, 11) => Some(ctrl_result(
                    dev.set_interface(index.to_le_bytes()[0], value.to_le_bytes()[0]),
                )),
                (0x02, 1) if value == 0 => {
                    Some(ctrl_result(dev.clear_halt(index.to_le_bytes()[0])))
                }
                _ => None,
            };
            if let Some(status) = special {
                return self.complete(
                    seq,
                    Completion {
                        status,
                        ..Completion::default()
                    },
                );
            }
            let mut buf = s.to_vec();
            if in_dir {
                buf.resize(8 + len, 0);
            } else {
                buf.extend_from_slice(&cmd.data);
            }
            HostUrb::new(
                u64::from(seq),
                XferKind::Control,
                0,
                flags,
                UrbBuf::from_vec(buf),
            )
        } else {
            let addr = cmd.ep | if in_dir { 0x80 } else { 0 };
            let active = dev.active_config();
            let kind = dev
                .descriptors()
                .configs
                .iter()
                .find(|c| c.value == active)
                .and_then(|c| c.find_endpoint(|_| 0, addr).map(|(_, e)| e.kind()))
                .unwrap_or(XferKind::Bulk);
            let buf = if in_dir { vec![0; len] } else { cmd.data };
            HostUrb::new(u64::from(seq), kind, addr, flags, UrbBuf::from_vec(buf))
        };
        if let Err(r) = dev.submit(urb) {
            let status = r.error.to_errno();
            self.complete(
                seq,
                Completion {
                    status,
                    ..Completion::default()
                },
            );
        }
    }

    fn reaped(&mut self, c: HostCompletion, control: bool) {
        let Ok(seq) = u32::try_from(c.tag) else {
            return;
        };
        if self.unlinking.remove(&seq) && (c.status == -104 || c.status == -2) {
            if let Some(s) = self.conn.session() {
                let _ = s.unlinked(seq);
            }
            return;
        }
        let actual = usize::try_from(c.actual_length).unwrap_or(0);
        let skip = if control { 8 } else { 0 };
        let data = c
            .buf
            .into_vec()
            .ok()
            .and_then(|v| v.get(skip..skip + actual).map(<[u8]>::to_vec))
            .unwrap_or_default();
        self.complete(
            seq,
            Completion {
                status: c.status,
                actual_length: c.actual_length,
                data,
                ..Completion::default()
            },
        );
    }
}

fn serve(mut s: TcpStream, dir: &Path, busid: &str, stop: &AtomicBool) -> std::io::Result<()> {
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    let mut c = Conn {
        dir: dir.to_path_buf(),
        busid: busid.to_owned(),
        conn: ServerConn::new(Limits::default(), 4096),
        dev: None,
        unlinking: HashSet::new(),
    };
    let mut controls: HashSet<u32> = HashSet::new();
    let mut buf = vec![0u8; 256 * 1024];
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        {
            let want_out = !c.conn.pending_tx().is_empty();
            let sock_flags = if want_out {
                PollFlags::IN | PollFlags::OUT
            } else {
                PollFlags::IN
            };
            let dev_fd = c.dev.as_ref().map(|(d, _)| d.poll_fd());
            let mut fds = vec![PollFd::new(&s, sock_flags)];
            if let Some(fd) = &dev_fd {
                fds.push(PollFd::new(fd, PollFlags::IN));
            }
            let _ = poll(&mut fds, Some(&tick));
        }
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = c.conn.feed(buf.get(..n).unwrap_or_default()) {
                    break Err(std::io::Error::new(ErrorKind::InvalidData, e.to_string()));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => break Err(e),
        }
        while let Some(ev) = c.conn.poll_event() {
            match ev {
                ConnEvent::DevlistRequested => {
                    let list: Vec<ExportedDevice> = c.open().into_iter().collect();
                    let _ = c.conn.reply_devlist(&list);
                }
                ConnEvent::ImportRequested { busid } => {
                    let dev = (busid == c.busid).then(|| c.open()).flatten();
                    match dev {
                        Some(e) => {
                            if let Ok(Err(err)) = c.conn.accept_import(&e) {
                                return Err(std::io::Error::new(
                                    ErrorKind::InvalidData,
                                    err.to_string(),
                                ));
                            }
                        }
                        None => {
                            let _ = c.conn.refuse_import(OpStatus::NoDev);
                        }
                    }
                }
                ConnEvent::Urb(Event::Submit(cmd)) => {
                    if cmd.ep == 0 {
                        controls.insert(cmd.seqnum);
                    }
                    c.submit(cmd);
                }
                ConnEvent::Urb(Event::Unlink { victim, .. }) => {
                    c.unlinking.insert(victim);
                    if let Some((d, _)) = &mut c.dev {
                        let _ = d.discard(u64::from(victim));
                    }
                }
            }
        }
        let mut reaped = Vec::new();
        if let Some((d, _)) = &mut c.dev {
            while let Some(done) = d.reap() {
                reaped.push(done);
            }
        }
        for done in reaped {
            let control = u32::try_from(done.tag).is_ok_and(|t| controls.remove(&t));
            c.reaped(done, control);
        }
        while !c.conn.pending_tx().is_empty() {
            match s.write(c.conn.pending_tx()) {
                Ok(n) => c.conn.consume_tx(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if c.conn.should_close() {
            break Ok(());
        }
    };
    if let Some((mut d, _)) = c.dev.take() {
        let _ = d.drain();
    }
    result
}
