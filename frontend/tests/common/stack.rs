//! A whole stack for tests: dom1 with one controller served by the real backend process,
//! a simulated device on port 1, the frontend with `--usbip-listen`.

use pvusb_backend::sim::{plug, DeviceSpec, ModelSpec};
use xenstore_cfg::vusb::{set_port, VusbId};

use super::client::Client;
use super::{free_port, spawn_backend, spawn_frontend, wait_for, wait_listening, Proc, Sim};

pub struct Stack {
    pub sim: Sim,
    pub id: VusbId,
    pub backend: Proc,
    pub frontend: Proc,
    pub port: u16,
    pub busid: String,
}

/// dom1 with one controller (4 ports) served by a backend in `be`; `model` plugged into
/// port 1.
pub fn stack(be: u16, model: ModelSpec) -> Stack {
    stack_with(be, DeviceSpec::new(model))
}

/// As [`stack`], with a full device spec (faults, speed).
pub fn stack_with(be: u16, spec: DeviceSpec) -> Stack {
    let sim = Sim::new();
    sim.create_domain(1);
    if be != 0 {
        sim.create_domain(be);
    }
    let busid = plug(sim.path(), &spec).unwrap();
    let id = sim.add_controller(1, be, 0, 4);
    set_port(&mut sim.xs(), &id, 1, Some(&busid)).unwrap();
    let backend = spawn_backend(&sim, be, "backend");
    let busid2 = busid.clone();
    let port = free_port();
    let frontend = spawn_frontend(&sim, 1, port, &[]);
    wait_listening(port);
    Stack {
        sim,
        id,
        backend,
        frontend,
        port,
        busid: busid2,
    }
}

impl Stack {
    pub fn logs(&self) -> String {
        format!(
            "--- frontend ---\n{}\n--- backend ---\n{}",
            super::frontend_log(&self.sim),
            super::backend_log(&self.sim, "backend") + &super::backend_log(&self.sim, "backend2")
        )
    }

    /// Waits until the device on port 1 is listed, and imports it.
    pub fn import(&self) -> Client {
        wait_for(20, "the device to be exported", || {
            Client::devlist(self.port)
                .iter()
                .any(|d| d.busid == "1-1")
                .then_some(())
        });
        Client::import(self.port, "1-1")
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
            .0
    }
}
