//! Test support (feature `test-utils`): heap-backed ring pages and a driver-side mock guest,
//! so other crates' tests can run a front and a back ring in one process.

use crate::shm::Shm;
use crate::sring::{
    ConnBackRing, ConnFrontRing, ConsumeError, ProduceError, RingSetupError, UrbBackRing,
    UrbFrontRing,
};
use crate::wire::{
    BadConnResponse, BadResponse, ConnEvent, ConnRequest, Limits, UrbRequest, UrbResponse,
    RING_PAGE_SIZE,
};

/// A fresh URB ring page initialised by a front ring, and a back ring on the same page.
pub fn urb_ring_pair() -> Result<(UrbFrontRing, UrbBackRing), RingSetupError> {
    let page = Shm::heap(RING_PAGE_SIZE);
    Ok((UrbFrontRing::init(page.clone())?, UrbBackRing::new(page)?))
}

/// A fresh conn ring page initialised by a front ring, and a back ring on the same page.
pub fn conn_ring_pair() -> Result<(ConnFrontRing, ConnBackRing), RingSetupError> {
    let page = Shm::heap(RING_PAGE_SIZE);
    Ok((ConnFrontRing::init(page.clone())?, ConnBackRing::new(page)?))
}

/// What went wrong talking to the backend under test.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MockError {
    #[error(transparent)]
    Setup(#[from] RingSetupError),
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error(transparent)]
    BadResponse(#[from] BadResponse),
    #[error(transparent)]
    BadConn(#[from] BadConnResponse),
}

/// A guest's frontend driver reduced to its ring traffic: it fills the URB ring with
/// requests and the conn ring with slots the way Linux xen-hcd does, and reads back what
/// the backend under test answers. Pair it with [`MockGuest::new`]'s back rings.
#[derive(Debug)]
pub struct MockGuest {
    /// The URB ring's front half.
    pub urb: UrbFrontRing,
    /// The conn ring's front half.
    pub conn: ConnFrontRing,
    num_ports: u8,
}

impl MockGuest {
    /// A guest with fresh rings; returns the back halves for the backend under test.
    /// Like xen-hcd at connect, every conn ring slot is posted (ids 0..512).
    pub fn new(num_ports: u8) -> Result<(Self, UrbBackRing, ConnBackRing), MockError> {
        let (urb, urb_back) = urb_ring_pair()?;
        let (conn, conn_back) = conn_ring_pair()?;
        let mut guest = MockGuest {
            urb,
            conn,
            num_ports,
        };
        let mut id = 0u16;
        while !guest.conn.is_full() {
            guest.conn.push_request(&ConnRequest { id }.to_raw())?;
            id = id.wrapping_add(1);
        }
        guest.conn.push_requests();
        Ok((guest, urb_back, conn_back))
    }

    /// Queues and publishes one request; true if the backend must be notified.
    pub fn submit(&mut self, req: &UrbRequest) -> Result<bool, MockError> {
        self.urb.push_request(&req.to_raw())?;
        Ok(self.urb.push_requests_and_check_notify())
    }

    /// Queues and publishes raw request bytes as they are (for malformed-input tests).
    pub fn submit_raw(&mut self, raw: &crate::wire::RawUrbRequest) -> Result<bool, MockError> {
        self.urb.push_request(raw)?;
        Ok(self.urb.push_requests_and_check_notify())
    }

    /// Every URB response published so far, in ring order.
    pub fn responses(&mut self) -> Result<Vec<UrbResponse>, MockError> {
        let mut out = Vec::new();
        while let Some(raw) = self.urb.pop_response()? {
            out.push(UrbResponse::parse(&raw)?);
        }
        Ok(out)
    }

    /// Every hotplug event published so far; each consumed slot is re-posted (as xen-hcd).
    pub fn conn_events(&mut self) -> Result<Vec<ConnEvent>, MockError> {
        let mut out = Vec::new();
        while let Some(raw) = self.conn.pop_response()? {
            let ev = ConnEvent::parse(&raw, self.num_ports)?;
            self.conn
                .push_request(&ConnRequest { id: ev.id }.to_raw())?;
            out.push(ev);
        }
        self.conn.push_requests();
        Ok(out)
    }
}

/// The fuzz target's body (also run by a proptest): treat `page` as a URB ring page written
/// by a hostile frontend, consume it with a back ring, parse every request copied out and
/// answer it. Panics only if the crate breaks an invariant: parse panicking, `emit` of an
/// accepted request not parsing back to itself, or more requests consumed than the ring
/// allows. The back ring attaches at index `start` (to reach u32 wrap-around). Returns how
/// many requests were consumed.
pub fn fuzz_back_ring(page: &[u8], start: u32, limits: &Limits) -> usize {
    let shm = Shm::heap(RING_PAGE_SIZE);
    let n = page.len().min(RING_PAGE_SIZE);
    shm.write(0, page.get(..n).unwrap_or(&[]))
        .unwrap_or_else(|e| panic!("heap page write failed: {e}"));
    let mut back = UrbBackRing::attach(shm, start).unwrap_or_else(|e| panic!("ring setup: {e}"));
    let mut consumed = 0;
    // A well-behaved frontend can have at most one ring's worth outstanding; answer each
    // request so the ring keeps moving, and stop on the first overflow report.
    while let Ok(Some(raw)) = back.pop_request() {
        consumed += 1;
        assert!(consumed <= back.size() as usize, "consumed past the ring");
        let rsp = match UrbRequest::parse(&raw, limits) {
            Ok(req) => {
                let again = UrbRequest::parse(&req.to_raw(), limits);
                assert_eq!(again, Ok(req), "emit/parse roundtrip broke");
                UrbResponse::new(req.id(), crate::wire::Status::Ok, 0)
            }
            Err(bad) => UrbResponse::new(raw.id.get(), bad.status(), 0),
        };
        back.push_response(&rsp.to_raw())
            .unwrap_or_else(|e| panic!("answering a consumed request failed: {e}"));
    }
    back.push_responses_and_check_notify();
    consumed
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::wire::{Ep, Pipe, Port, Speed, Status, Unlink, XferType};

    #[test]
    fn mock_guest_talks_to_back_rings() {
        let (mut guest, mut urb, mut conn) = MockGuest::new(8).unwrap();
        assert_eq!(
            conn.unconsumed_requests(),
            Ok(512),
            "every conn slot posted"
        );

        let slot = conn.pop_request().unwrap().unwrap();
        let ev = ConnEvent {
            id: slot.id.get(),
            port: Port::new(2).unwrap(),
            speed: Speed::High,
        };
        conn.push_response(&ev.to_raw()).unwrap();
        assert!(conn.push_responses_and_check_notify());
        assert_eq!(guest.conn_events().unwrap(), vec![ev]);
        assert_eq!(
            conn.unconsumed_requests(),
            Ok(512),
            "511 left + the re-posted slot"
        );

        let pipe = Pipe::new(1, 2, Ep::new(1, true), XferType::Bulk);
        let req = UrbRequest::Unlink(Unlink {
            id: 1,
            pipe,
            victim: 0,
        });
        assert!(guest.submit(&req).unwrap(), "first request notifies");
        let raw = urb.pop_request().unwrap().unwrap();
        assert_eq!(UrbRequest::parse(&raw, &Limits::stock(8)), Ok(req));
        let rsp = UrbResponse::new(1, Status::Ok, 0);
        urb.push_response(&rsp.to_raw()).unwrap();
        urb.push_responses_and_check_notify();
        assert_eq!(guest.responses().unwrap(), vec![rsp]);
    }

    #[test]
    fn fuzz_body_consumes_a_valid_ring() {
        let (mut guest, urb, _) = MockGuest::new(8).unwrap();
        let pipe = Pipe::new(3, 2, Ep::new(1, true), XferType::Bulk);
        for id in 0..16 {
            guest
                .submit(&UrbRequest::Unlink(Unlink {
                    id,
                    pipe,
                    victim: 99,
                }))
                .unwrap();
        }
        let mut page = vec![0u8; crate::wire::RING_PAGE_SIZE];
        urb.sring().shm().read(0, &mut page).unwrap();
        assert_eq!(fuzz_back_ring(&page, 0, &Limits::stock(8)), 16);
    }
}
