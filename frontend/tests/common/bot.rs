//! USB mass storage Bulk-Only Transport over the test client: CBW, data, CSW.

use pvusb_frontend::bridge::desc;
use pvusb_frontend::usbip::CmdSubmit;
use pvusb_ring::wire::XferType;

use super::client::{bulk_in, bulk_out, get_descriptor, Client};

/// A storage device's bulk endpoints, found from its configuration descriptor.
pub struct Bot {
    pub ep_in: u8,
    pub ep_out: u8,
    tag: u32,
}

impl Bot {
    /// Reads the configuration, sets it, and finds the bulk endpoints.
    pub fn open(c: &mut Client) -> Bot {
        let head = c.control_in(get_descriptor(2, 9));
        let total = u16::from_le_bytes([head.data[2], head.data[3]]);
        let cfg = c.control_in(get_descriptor(2, total)).data;
        let value = cfg[5];
        let set = c.transfer(CmdSubmit {
            ep: 0,
            setup: [0, 9, value, 0, 0, 0, 0, 0],
            ..CmdSubmit::default()
        });
        assert_eq!(set.status, 0, "SET_CONFIGURATION");
        let eps = desc::endpoints(&cfg, |_| 0);
        let find = |is_in| {
            (1..16)
                .find(|&n| eps.get(n, is_in).is_some_and(|e| e.xfer == XferType::Bulk))
                .expect("bulk endpoint")
        };
        Bot {
            ep_in: find(true),
            ep_out: find(false),
            tag: 1,
        }
    }

    fn cbw(&mut self, len: u32, dir_in: bool, cb: &[u8]) -> Vec<u8> {
        let mut w = Vec::with_capacity(31);
        w.extend_from_slice(b"USBC");
        w.extend_from_slice(&self.tag.to_le_bytes());
        w.extend_from_slice(&len.to_le_bytes());
        w.push(if dir_in { 0x80 } else { 0 });
        w.push(0);
        w.push(cb.len() as u8);
        let mut block = [0u8; 16];
        block[..cb.len()].copy_from_slice(cb);
        w.extend_from_slice(&block);
        self.tag += 1;
        w
    }

    fn csw(&mut self, c: &mut Client) -> u8 {
        let r = c.transfer(bulk_in(self.ep_in, 13));
        assert_eq!((r.status, r.data.len()), (0, 13), "CSW");
        assert_eq!(&r.data[..4], b"USBS");
        r.data[12]
    }

    /// A command with an IN data stage; returns the data and the CSW status.
    pub fn read(&mut self, c: &mut Client, cb: &[u8], len: u32) -> (Vec<u8>, u8) {
        let w = self.cbw(len, true, cb);
        assert_eq!(c.transfer(bulk_out(self.ep_out, w)).status, 0, "CBW");
        let data = c.transfer(bulk_in(self.ep_in, len));
        assert_eq!(data.status, 0, "data stage");
        (data.data, self.csw(c))
    }

    /// A command with an OUT data stage; returns the CSW status.
    pub fn write(&mut self, c: &mut Client, cb: &[u8], data: Vec<u8>) -> u8 {
        let w = self.cbw(data.len() as u32, false, cb);
        assert_eq!(c.transfer(bulk_out(self.ep_out, w)).status, 0, "CBW");
        let r = c.transfer(bulk_out(self.ep_out, data));
        assert_eq!(r.status, 0, "data stage");
        self.csw(c)
    }
}

pub fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

pub fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut cb = read10(lba, blocks);
    cb[0] = 0x2a;
    cb
}
