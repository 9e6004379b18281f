//! `usb-assignable-list`: host USB devices with their ids, names (usb.ids when present,
//! else the device's own strings), speed, and where each is assigned.

use std::fmt::Write as _;

use serde::Serialize;

use crate::ctrl::{self, Assignment};
use crate::hostdev::{self, HostDevice};
use crate::usbids::UsbIds;
use crate::Ctx;

/// One row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The device.
    #[serde(flatten)]
    pub device: HostDevice,
    /// "vvvv:pppp".
    pub id: String,
    /// Vendor name (usb.ids, else the device's manufacturer string).
    pub vendor_name: Option<String>,
    /// Product name (usb.ids, else the device's product string).
    pub product_name: Option<String>,
    /// Where it is assigned, if anywhere.
    pub assigned: Option<Assignment>,
    /// Hubs cannot be assigned.
    pub assignable: bool,
}

/// Builds the rows.
pub fn rows(devices: Vec<HostDevice>, assigned: &[Assignment], ids: &UsbIds) -> Vec<Row> {
    devices
        .into_iter()
        .map(|d| Row {
            id: format!("{:04x}:{:04x}", d.vid, d.pid),
            vendor_name: ids
                .vendor(d.vid)
                .map(str::to_owned)
                .or_else(|| d.manufacturer.clone()),
            product_name: ids
                .product(d.vid, d.pid)
                .map(str::to_owned)
                .or_else(|| d.product.clone()),
            assigned: assigned.iter().find(|a| a.busid == d.busid).cloned(),
            assignable: !d.is_hub(),
            device: d,
        })
        .collect()
}

/// The text table.
pub fn render(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:>3} {:>6}  {:<9}  {:>6}  {:<40}  assigned",
        "busid", "bus", "device", "id", "speed", "name"
    );
    for r in rows {
        let name = match (&r.vendor_name, &r.product_name) {
            (Some(v), Some(p)) => format!("{v} {p}"),
            (Some(v), None) => v.clone(),
            (None, Some(p)) => p.clone(),
            (None, None) => "-".into(),
        };
        let assigned = match (&r.assigned, r.assignable) {
            (Some(a), _) => a.label(),
            (None, false) => "(hub: not assignable)".into(),
            (None, true) => "-".into(),
        };
        let _ = writeln!(
            s,
            "{:<10} {:>3} {:>6}  {:<9}  {:>6}  {:<40}  {assigned}",
            r.device.busid, r.device.bus, r.device.device, r.id, r.device.speed, name
        );
    }
    s
}

/// Runs the command.
pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let devices = hostdev::list(&ctx.platform.roots);
    let mut xs = ctx.xs()?;
    let assigned = ctrl::assigned(&mut xs)?;
    let vids: Vec<u16> = devices.iter().map(|d| d.vid).collect();
    let ids = UsbIds::load(ctx.usb_ids.as_deref(), &vids);
    let rows = rows(devices, &assigned, &ids);
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render(&rows));
    }
    Ok(())
}
