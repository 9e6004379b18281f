//! Vendor and product names from the `usb.ids` database (hwdata / usbutils), when present.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where Debian and Fedora keep the database.
pub const USB_IDS_PATHS: [&str; 2] = ["/usr/share/hwdata/usb.ids", "/usr/share/misc/usb.ids"];

/// Names found for the ids asked about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsbIds {
    vendors: HashMap<u16, String>,
    products: HashMap<(u16, u16), String>,
}

fn hex4(s: &str) -> Option<(u16, &str)> {
    let id = s.get(..4)?;
    let rest = s.get(4..)?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    Some((u16::from_str_radix(id, 16).ok()?, rest.trim()))
}

impl UsbIds {
    /// Parses `usb.ids` text, keeping only the vendors in `wanted` (and their products).
    /// Lines it does not understand are skipped; the vendor list ends at the first class
    /// ("C ...") or other section.
    pub fn parse(text: &str, wanted: &[u16]) -> Self {
        let mut ids = UsbIds::default();
        let mut vendor: Option<u16> = None;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some(p) = line.strip_prefix('\t') {
                if p.starts_with('\t') {
                    continue;
                }
                if let (Some(v), Some((pid, name))) = (vendor, hex4(p)) {
                    ids.products.insert((v, pid), name.to_owned());
                }
                continue;
            }
            match hex4(line) {
                Some((vid, name)) => {
                    vendor = wanted.contains(&vid).then_some(vid);
                    if vendor.is_some() {
                        ids.vendors.insert(vid, name.to_owned());
                    }
                }
                // "C 00  (Defined at Interface level)" and later sections.
                None => break,
            }
        }
        ids
    }

    /// Loads the first database found (or `path`), for the vendors in `wanted`.
    pub fn load(path: Option<&Path>, wanted: &[u16]) -> Self {
        let candidates: Vec<PathBuf> = match path {
            Some(p) => vec![p.to_path_buf()],
            None => USB_IDS_PATHS.iter().map(PathBuf::from).collect(),
        };
        candidates
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .map(|bytes| Self::parse(&String::from_utf8_lossy(&bytes), wanted))
            .unwrap_or_default()
    }

    /// Vendor name.
    pub fn vendor(&self, vid: u16) -> Option<&str> {
        self.vendors.get(&vid).map(String::as_str)
    }

    /// Product name.
    pub fn product(&self, vid: u16, pid: u16) -> Option<&str> {
        self.products.get(&(vid, pid)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# usb.ids\n#\tcomment\n0627  Adomax Technology Co., Ltd\n\t0001  QEMU Tablet\n46f4  QEMU\n\t0001  QEMU USB HARDDRIVE\n\t\t00  interface line\n1d6b  Linux Foundation\n\t0002  2.0 root hub\nC 00  (Defined at Interface level)\n\t01  Audio\n";

    #[test]
    fn finds_wanted_vendors_and_products() {
        let ids = UsbIds::parse(SAMPLE, &[0x46f4, 0x0627]);
        assert_eq!(ids.vendor(0x46f4), Some("QEMU"));
        assert_eq!(ids.product(0x46f4, 1), Some("QEMU USB HARDDRIVE"));
        assert_eq!(ids.product(0x0627, 1), Some("QEMU Tablet"));
        assert_eq!(ids.vendor(0x1d6b), None);
        assert_eq!(UsbIds::parse("garbage\n\tx", &[1]), UsbIds::default());
    }
}
