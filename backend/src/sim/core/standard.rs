//! Standard requests on a simulated device: the ones the host kernel answers or acts on
//! itself (descriptors, configuration, interface, halt, reset), the rest going to the model.

use super::{complete, Core};
use crate::host::desc::{dt, ConfigDescriptor};
use crate::host::{errno, CtrlError};
use crate::sim::model::{Io, Poll, Setup};

impl Core {
    /// A control request: the standard ones usbfs's device answers are done here, the
    /// rest go to the model.
    pub(super) fn control(&mut self, setup: Setup, io: &mut Io<'_>) -> Poll {
        use pvusb_ring::wire::setup::request::{
            CLEAR_FEATURE, GET_CONFIGURATION, GET_DESCRIPTOR, GET_INTERFACE, GET_STATUS,
            SET_ADDRESS, SET_CONFIGURATION, SET_FEATURE, SET_INTERFACE,
        };
        if setup.request_type & 0x60 != 0 {
            return self.model.control(setup, io);
        }
        let [value_lo, value_hi] = setup.value.to_le_bytes();
        let recipient = setup.request_type & 0x1f;
        match (setup.request_type & 0x80 != 0, setup.request) {
            (true, GET_DESCRIPTOR) if recipient == 0 => {
                let d = &self.ident.descriptors;
                let bytes = match value_hi {
                    dt::DEVICE => Some(d.device_raw.to_vec()),
                    dt::CONFIG => d.configs.get(usize::from(value_lo)).map(|c| c.raw.clone()),
                    dt::STRING => self.ident.string_descriptor(value_lo),
                    _ => None,
                };
                match bytes {
                    Some(b) => {
                        io.push(&b);
                        Poll::Ok
                    }
                    None => Poll::Stall,
                }
            }
            (true, GET_STATUS) => {
                let halted = recipient == 2
                    && self
                        .eps
                        .get(&(low_byte(setup.index)))
                        .is_some_and(|e| e.halted);
                io.push(&[u8::from(halted), 0]);
                Poll::Ok
            }
            (true, GET_CONFIGURATION) => {
                io.push(&[self.config]);
                Poll::Ok
            }
            (true, GET_INTERFACE) => {
                io.push(&[self.alt_of(low_byte(setup.index))]);
                Poll::Ok
            }
            (false, SET_ADDRESS | SET_FEATURE) => Poll::Ok,
            (false, SET_CONFIGURATION) => match self.set_configuration(value_lo) {
                Ok(()) => Poll::Ok,
                Err(_) => Poll::Stall,
            },
            (false, SET_INTERFACE) => match self.set_interface(low_byte(setup.index), value_lo) {
                Ok(()) => Poll::Ok,
                Err(_) => Poll::Stall,
            },
            (false, CLEAR_FEATURE) if recipient == 2 && setup.value == 0 => {
                match self.clear_halt(low_byte(setup.index)) {
                    Ok(()) => Poll::Ok,
                    Err(_) => Poll::Stall,
                }
            }
            (false, CLEAR_FEATURE) => Poll::Ok,
            _ => self.model.control(setup, io),
        }
    }

    /// Completes every queued URB on non-control endpoints matching `filter` with `status`.
    fn flush(&mut self, status: i32, filter: impl Fn(u8) -> bool) {
        for (&key, ep) in self.eps.iter_mut() {
            if key != 0 && filter(key) {
                while let Some(q) = ep.queue.pop_front() {
                    self.done.push_back(complete(q.urb, status, 0));
                }
                ep.halted = false;
                ep.cont_refused = false;
            }
        }
    }

    /// SET_CONFIGURATION: in-flight URBs on data endpoints end with -ESHUTDOWN.
    pub fn set_configuration(&mut self, value: u8) -> Result<(), CtrlError> {
        if self.gone {
            return Err(CtrlError::Gone);
        }
        if value != 0 && self.ident.descriptors.config(value).is_none() {
            return Err(CtrlError::Invalid);
        }
        self.flush(-errno::ESHUTDOWN, |_| true);
        self.config = value;
        self.alts.clear();
        self.model.reset();
        Ok(())
    }

    /// The configuration the device is in, for a request that needs one.
    fn current_config(&self) -> Result<&ConfigDescriptor, CtrlError> {
        if self.gone {
            return Err(CtrlError::Gone);
        }
        self.ident
            .descriptors
            .config(self.config)
            .ok_or(CtrlError::Invalid)
    }

    /// SET_INTERFACE: the interface's in-flight URBs end with -ESHUTDOWN.
    pub fn set_interface(&mut self, iface: u8, alt: u8) -> Result<(), CtrlError> {
        let cfg = self.current_config()?;
        if cfg.alt(iface, alt).is_none() {
            return Err(CtrlError::Invalid);
        }
        let eps: Vec<u8> = cfg
            .alts
            .iter()
            .filter(|a| a.number == iface)
            .flat_map(|a| a.endpoints.iter().map(|e| e.address))
            .collect();
        self.flush(-errno::ESHUTDOWN, |k| eps.contains(&k));
        self.alts.insert(iface, alt);
        self.model.set_interface(iface, alt);
        Ok(())
    }

    /// CLEAR_HALT: the endpoint runs again; the model hears of it.
    pub fn clear_halt(&mut self, ep: u8) -> Result<(), CtrlError> {
        let cfg = self.current_config()?;
        if ep & 0x7f != 0 && cfg.find_endpoint(|i| self.alt_of(i), ep).is_none() {
            return Err(CtrlError::Invalid);
        }
        if let Some(e) = self.eps.get_mut(&ep) {
            e.halted = false;
        }
        self.model.clear_halt(ep);
        Ok(())
    }

    /// Port reset: in-flight URBs end with -ESHUTDOWN, alt settings and halts reset, the
    /// configuration is kept (as usbfs restores it).
    pub fn reset(&mut self) -> Result<(), CtrlError> {
        if self.gone {
            return Err(CtrlError::Gone);
        }
        self.flush(-errno::ESHUTDOWN, |_| true);
        self.alts.clear();
        self.model.reset();
        Ok(())
    }
}

/// wIndex's low byte (interface or endpoint number), without a truncating cast.
fn low_byte(v: u16) -> u8 {
    v.to_le_bytes()[0]
}
