//! `usb-list <dom>`: xl's table ("Devid  Type         BE  state usb-ver ports" and
//! "  Port N: Bus xxx Device xxx"), with bus and device in decimal (xl prints them in hex
//! by mistake), and a "  Frontend error:" line for a controller whose frontend reported
//! why it did not connect; `--json` gives the same data.

use std::fmt::Write as _;

use serde::Serialize;

use crate::ctrl::{self, Controller};
use crate::platform::Platform;
use crate::{domain, hostdev, Ctx};

/// One port in the JSON output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortEntry {
    /// Port number.
    pub port: u8,
    /// Bus id, if a device is there.
    pub busid: Option<String>,
    /// Its bus number, if present in sysfs.
    pub bus: Option<u16>,
    /// Its device number, if present in sysfs.
    pub device: Option<u16>,
}

/// One controller in the JSON output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ControllerEntry {
    /// What xenstore says.
    #[serde(flatten)]
    pub controller: Controller,
    /// Frontend state, spelled out.
    pub state_name: &'static str,
    /// Each port.
    pub port_list: Vec<PortEntry>,
}

/// The listing of one domain.
pub fn entries(platform: &Platform, ctrls: Vec<Controller>) -> Vec<ControllerEntry> {
    ctrls
        .into_iter()
        .map(|c| {
            let port_list = (1..=c.num_ports)
                .map(|p| {
                    let busid = c.port(p).map(str::to_owned);
                    let dev = busid
                        .as_deref()
                        .and_then(|b| hostdev::read(&platform.roots, b).ok());
                    PortEntry {
                        port: p,
                        busid,
                        bus: dev.as_ref().map(|d| d.bus),
                        device: dev.as_ref().map(|d| d.device),
                    }
                })
                .collect();
            ControllerEntry {
                state_name: ctrl::state_name(c.state),
                controller: c,
                port_list,
            }
        })
        .collect()
}

/// xl's text table.
pub fn render(entries: &[ControllerEntry]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<6} {:<12} {:<3} {:<5} {:<7} {:<5}",
        "Devid", "Type", "BE", "state", "usb-ver", "ports"
    );
    for e in entries {
        let c = &e.controller;
        let _ = writeln!(
            s,
            "{:<6} {:<12} {:<3} {:<5} {:<7} {:<5}",
            c.devid, c.ctrl_type, c.backend, c.state, c.usb_ver, c.num_ports
        );
        if let Some(err) = &c.frontend_error {
            let _ = writeln!(s, "  Frontend error: {err}");
        }
        for p in &e.port_list {
            match (&p.busid, p.bus, p.device) {
                (Some(_), Some(b), Some(d)) => {
                    let _ = writeln!(s, "  Port {}: Bus {b:03} Device {d:03}", p.port);
                }
                (Some(busid), _, _) => {
                    let _ = writeln!(s, "  Port {}: {busid} (not in this domain's sysfs)", p.port);
                }
                _ => {
                    let _ = writeln!(s, "  Port {}:", p.port);
                }
            }
        }
    }
    s
}

/// Runs the command.
pub fn run(ctx: &Ctx, dom: &str) -> anyhow::Result<()> {
    let mut xs = ctx.xs()?;
    let d = domain::resolve(&mut xs, dom)?;
    let list = entries(&ctx.platform, ctrl::list(&mut xs, d.domid)?);
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", render(&list));
    }
    Ok(())
}
