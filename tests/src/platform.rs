//! One simulated Xen host per test: `pvusb-xenstored` and `pvusb-simhyp` as processes in a
//! temp directory, guest domains, libxl-style controllers, simulated devices, and the
//! backend and frontends as processes.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pvusb_backend::sim::{DeviceSpec, ModelSpec};
use pvusb_xen::sim::{Counters, SimPlatform};
use pvusb_xen::DomId;
use xenstore_cfg::vusb::{self, ControllerConfig, CtrlType, UsbVer, VusbId};
use xenstore_cfg::xenbus::{self, XenbusState};
use xenstore_cfg::Xs;

use crate::proc::Daemon;
use crate::{bins, wait};

/// How long a daemon gets to come up.
pub const READY: Duration = Duration::from_secs(20);

/// A simulated host. Dropping it kills every process it started.
#[derive(Debug)]
pub struct Platform {
    // Declared first: processes die before the directory goes.
    /// The backend (dom0), if started.
    pub backend: Option<Daemon>,
    /// Frontends by guest domid, with their USB/IP address.
    pub frontends: BTreeMap<u16, (Daemon, SocketAddr)>,
    simhyp: Daemon,
    xenstored: Daemon,
    dir: tempfile::TempDir,
    backend_starts: u32,
}

/// Whether something listens on TCP `addr` (read from /proc/net/tcp, so without opening a
/// connection the server would have to handle).
fn is_listening(addr: SocketAddr) -> bool {
    let want = format!(":{:04X}", addr.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1).is_some_and(|a| a.ends_with(&want)) && f.get(3) == Some(&"0A")
        })
}

impl Platform {
    /// Starts xenstored and the broker and creates guest domains `guests`.
    pub fn new(guests: &[u16]) -> Platform {
        // PVUSB_E2E_KEEP=1 keeps the directory (logs, traces, disk images) for debugging.
        let keep = std::env::var_os("PVUSB_E2E_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("pvusb-e2e.")
            .disable_cleanup(keep)
            .tempdir()
            .expect("tempdir");
        if keep {
            eprintln!("platform directory kept: {}", dir.path().display());
        }
        let d = dir.path().display().to_string();
        let xenstored = Daemon::spawn(
            dir.path(),
            "xenstored",
            &bins::path("pvusb-xenstored"),
            &["--dir".into(), d.clone()],
        );
        let socket = xenstore_cfg::daemon::control_socket(dir.path());
        wait::until(READY, "pvusb-xenstored to listen", String::new, || {
            Xs::connect(&socket).ok()
        });
        let simhyp = Daemon::spawn(
            dir.path(),
            "simhyp",
            &bins::path("pvusb-simhyp"),
            &["--dir".into(), d],
        );
        let p = Platform {
            backend: None,
            frontends: BTreeMap::new(),
            simhyp,
            xenstored,
            dir,
            backend_starts: 0,
        };
        wait::until(
            READY,
            "pvusb-simhyp to listen",
            || p.logs(),
            || SimPlatform::connect(p.path(), DomId::DOM0).ok(),
        );
        for &g in guests {
            p.create_domain(g);
        }
        p
    }

    /// The simulation directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A dom0 xenstore connection.
    pub fn xs(&self) -> Xs {
        Xs::connect(xenstore_cfg::daemon::control_socket(self.path())).expect("xenstored")
    }

    /// A dom0 connection to the broker.
    pub fn hyp(&self) -> SimPlatform {
        SimPlatform::connect(self.path(), DomId::DOM0).expect("broker")
    }

    /// Creates domain `domid` at the broker and introduces it to xenstored, as xl does.
    pub fn create_domain(&self, domid: u16) {
        self.hyp()
            .create_domain(DomId(domid))
            .expect("creating a domain");
        self.xs().introduce(domid, 0, 0).expect("introducing");
    }

    /// Destroys domain `domid` at the broker (its grants, channels and xenstore go).
    pub fn destroy_domain(&self, domid: u16) {
        self.hyp()
            .destroy_domain(DomId(domid))
            .expect("destroying a domain");
    }

    /// Sets guest `domid`'s gntalloc limit (in pages), as its admin would write
    /// `/sys/module/xen_gntalloc/parameters/limit`; Linux's default is 1024.
    pub fn set_gntalloc_limit(&self, domid: u16, pages: usize) {
        let path = pvusb_xen::sim::gntalloc_limit_path(self.path(), DomId(domid));
        std::fs::write(path, pages.to_string()).expect("writing the gntalloc limit");
    }

    /// The broker's live grants, mappings, channels.
    pub fn counters(&self) -> Counters {
        self.hyp().counters().expect("broker counters")
    }

    /// Writes controller `devid` of guest `fe` (served by dom0) as libxl does.
    pub fn add_controller(&self, fe: u16, devid: u32, ports: u8) -> VusbId {
        self.add_controller_ver(fe, devid, ports, UsbVer::Usb20)
    }

    /// As [`Self::add_controller`] with a USB version.
    pub fn add_controller_ver(&self, fe: u16, devid: u32, ports: u8, usb_ver: UsbVer) -> VusbId {
        let id = VusbId { fe, be: 0, devid };
        let cfg = ControllerConfig {
            id,
            usb_ver,
            num_ports: ports,
            ctrl_type: CtrlType::Pv,
        };
        vusb::add_controller(&mut self.xs(), &cfg).expect("adding a controller");
        id
    }

    /// Plugs a traced simulated device; returns its bus id.
    pub fn plug(&self, mut spec: DeviceSpec) -> String {
        spec.trace = true;
        pvusb_backend::sim::plug(self.path(), &spec).expect("plugging a simulated device")
    }

    /// Plugs a device as `spec` says (untraced unless `spec.trace`: benchmarks).
    pub fn plug_as_is(&self, spec: &DeviceSpec) -> String {
        pvusb_backend::sim::plug(self.path(), spec).expect("plugging a simulated device")
    }

    /// Plugs a traced storage device of `bytes` and its serial.
    pub fn plug_disk(&self, bytes: u64) -> String {
        self.plug(DeviceSpec::new(ModelSpec::Storage { size_bytes: bytes }))
    }

    /// Assigns (or clears) port `port` of controller `id`.
    pub fn assign(&self, id: &VusbId, port: u8, busid: Option<&str>) {
        vusb::set_port(&mut self.xs(), id, port, busid).expect("setting a port");
    }

    /// The backend's xenbus state for controller `id`.
    pub fn backend_state(&self, id: &VusbId) -> Option<XenbusState> {
        xenbus::read_state(&mut self.xs(), &id.backend_dir()).ok()
    }

    /// The broker's process id (its CPU time is the simulated hypervisor's).
    pub fn simhyp_pid(&self) -> Option<u32> {
        self.simhyp.pid()
    }

    /// The arguments every daemon of domain `domid` on this platform takes.
    fn daemon_args(&self, domid: u16) -> Vec<String> {
        vec![
            "--platform".into(),
            "sim".into(),
            "--sim-dir".into(),
            self.path().display().to_string(),
            "--domid".into(),
            domid.to_string(),
        ]
    }

    /// Starts (or restarts) `pvusb-backend` in dom0.
    pub fn start_backend(&mut self) {
        self.start_backend_with("");
    }

    /// Starts (or restarts) `pvusb-backend` in dom0 with `config` (TOML, see
    /// `pvusb-backend --help`) as its configuration file.
    pub fn start_backend_with(&mut self, config: &str) {
        self.start_backend_env(config, &[]);
    }

    /// [`Platform::start_backend_with`] with `env` added to the backend's environment.
    pub fn start_backend_env(&mut self, config: &str, env: &[(&str, &str)]) {
        self.backend_starts += 1;
        let name = format!("backend{}", self.backend_starts);
        let mut args = self.daemon_args(0);
        if !config.is_empty() {
            let file = self.path().join(format!("{name}.toml"));
            std::fs::write(&file, config).expect("writing the backend configuration");
            args.extend(["--config".into(), file.display().to_string()]);
        }
        self.backend = Some(Daemon::spawn_env(
            self.path(),
            &name,
            &bins::path("pvusb-backend"),
            &args,
            env,
        ));
    }

    /// Starts `pvusb-frontend` in guest `domid` with a USB/IP listener; returns its address.
    pub fn start_frontend(&mut self, domid: u16) -> SocketAddr {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let mut args = self.daemon_args(domid);
        args.extend(["--usbip-listen".into(), addr.to_string()]);
        let d = Daemon::spawn(
            self.path(),
            &format!("frontend-{domid}"),
            &bins::path("pvusb-frontend"),
            &args,
        );
        self.frontends.insert(domid, (d, addr));
        wait::until(
            READY,
            "the frontend's USB/IP listener",
            || self.logs(),
            || is_listening(addr).then_some(()),
        );
        addr
    }

    /// Starts `pvusb-frontend` in guest `domid` attaching devices to a vhci_hcd look-alike
    /// (see [`crate::vhci`]) and returns the first device's socket as vhci_hcd would hold
    /// it: the production path (AF_UNIX socketpair) rather than `--usbip-listen`'s TCP.
    pub fn start_frontend_vhci(&mut self, domid: u16) -> (crate::vhci::Attach, UnixStream) {
        self.start_frontend_vhci_with(domid, &[])
    }

    /// [`Platform::start_frontend_vhci`] with `extra` arguments for the frontend.
    pub fn start_frontend_vhci_with(
        &mut self,
        domid: u16,
        extra: &[&str],
    ) -> (crate::vhci::Attach, UnixStream) {
        let vhci = crate::vhci::mimic(&self.path().join(format!("guest{domid}")));
        let mut args = self.daemon_args(domid);
        args.extend(["--vhci".into(), vhci.display().to_string()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let d = Daemon::spawn(
            self.path(),
            &format!("frontend-{domid}"),
            &bins::path("pvusb-frontend"),
            &args,
        );
        let pid = d.pid().expect("frontend pid");
        // Not reachable over TCP: the address is only a placeholder.
        let none = SocketAddr::from(([127, 0, 0, 1], 0));
        self.frontends.insert(domid, (d, none));
        crate::vhci::take_attached(&vhci, pid, || self.logs())
    }

    /// The device trace file of simulated device `busid` (its serial's state directory).
    pub fn trace_path(&self, busid: &str) -> PathBuf {
        let serial = format!("SIM{}", busid.replace(['-', '.'], ""));
        pvusb_backend::sim::bus::state_dir(self.path(), &serial)
            .join(pvusb_backend::sim::core::TRACE_FILE)
    }

    /// Whether the simulated device node of `busid` is claimed (flocked) by a backend.
    pub fn is_claimed(&self, busid: &str) -> bool {
        let roots = pvusb_backend::host::UsbRoots::sim(self.path());
        let Ok(dev) = pvusb_backend::host::resolve(&roots, busid) else {
            return false;
        };
        let Ok(f) = std::fs::File::open(&dev.node) else {
            return false;
        };
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
    }

    /// The tails of every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut all: Vec<&Daemon> = vec![&self.xenstored, &self.simhyp];
        all.extend(self.backend.iter());
        all.extend(self.frontends.values().map(|(d, _)| d));
        for d in all {
            out += &format!("--- {} (last lines) ---\n{}\n", d.name, d.log_tail(25));
        }
        // Logs of earlier backend runs.
        for n in 1..self.backend_starts {
            let p = self.path().join(format!("backend{n}.log"));
            let t = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            out += &format!(
                "--- backend{n} ---\n{}\n",
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
        out
    }
}
