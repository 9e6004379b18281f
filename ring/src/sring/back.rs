//! The backend's half of a ring (ring.h `BACK_RING_*`): consume requests, produce responses.

use core::marker::PhantomData;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::header::{publish_and_check_notify, request_event, RingSetupError, SharedRing};
use super::{entry_size, ConsumeError, ProduceError};
use crate::shm::Shm;
use crate::sync::Ordering;

/// ring.h's `__name##_back_ring`: the private indices of the side that serves requests.
/// The order for each request is: overflow check, copy out (`RING_COPY_REQUEST`), then the
/// caller parses the private copy.
#[derive(Debug)]
pub struct BackRing<Req, Rsp> {
    sring: SharedRing,
    rsp_prod_pvt: u32,
    req_cons: u32,
    /// The `rsp_prod` we last published (see `FrontRing::published`).
    published: u32,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<Req, Rsp> BackRing<Req, Rsp>
where
    Req: FromBytes + IntoBytes,
    Rsp: IntoBytes + Immutable,
{
    /// ring.h's `BACK_RING_INIT`: attach at 0. The frontend initialised the page.
    pub fn new(shm: Shm) -> Result<Self, RingSetupError> {
        Self::attach(shm, 0)
    }

    /// ring.h's `BACK_RING_ATTACH`: take over a live ring at index `idx`.
    pub fn attach(shm: Shm, idx: u32) -> Result<Self, RingSetupError> {
        let sring = SharedRing::new(shm, entry_size::<Req, Rsp>())?;
        Ok(BackRing {
            sring,
            rsp_prod_pvt: idx,
            req_cons: idx,
            published: idx,
            _entries: PhantomData,
        })
    }

    /// [`BackRing::attach`] for a ring whose requests up to `req_cons` were taken (by a
    /// process that died) and are answered from `rsp_prod` on: at most a ring's worth.
    pub fn attach_taken(shm: Shm, rsp_prod: u32, req_cons: u32) -> Result<Self, RingSetupError> {
        let mut ring = Self::attach(shm, rsp_prod)?;
        if req_cons.wrapping_sub(rsp_prod) > ring.size() {
            return Err(RingSetupError::TakenBeyondRing {
                taken: req_cons.wrapping_sub(rsp_prod),
                size: ring.size(),
            });
        }
        ring.req_cons = req_cons;
        Ok(ring)
    }

    /// The shared ring.
    pub fn sring(&self) -> &SharedRing {
        &self.sring
    }

    /// `RING_SIZE`.
    pub fn size(&self) -> u32 {
        self.sring.size()
    }

    /// Next request index to consume.
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// Next response index to fill.
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// Consumed requests not yet answered (at most `size`).
    pub fn unanswered(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// `RING_HAS_UNCONSUMED_REQUESTS` (ring.h's min of published and answerable), after
    /// `RING_REQUEST_PROD_OVERFLOW` and a check that `req_prod` did not move backwards.
    pub fn unconsumed_requests(&self) -> Result<u32, ConsumeError> {
        // rmb: read the index before the entries it covers.
        let req_prod = self.sring.req_prod().load(Ordering::Acquire);
        let size = self.size();
        let window = req_prod.wrapping_sub(self.rsp_prod_pvt);
        let published = req_prod.wrapping_sub(self.req_cons);
        if window > size || published > window {
            return Err(ConsumeError::RequestProdOverflow {
                req_prod,
                req_cons: self.req_cons,
                rsp_prod_pvt: self.rsp_prod_pvt,
                size,
            });
        }
        let answerable = size.wrapping_sub(self.unanswered());
        Ok(published.min(answerable))
    }

    /// Copies out the next request (`RING_COPY_REQUEST`), if one is published. Parse the
    /// returned copy; the slot itself may change under us.
    pub fn pop_request(&mut self) -> Result<Option<Req>, ConsumeError> {
        if self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let off = self.sring.slot_offset(self.req_cons);
        let req = self.sring.shm().copy_out::<Req>(off)?;
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Writes a response into the next slot (not yet visible to the frontend). Each
    /// consumed request may be answered once; responses reuse the slots of consumed
    /// requests, which is why an extra response is refused.
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), ProduceError> {
        if self.unanswered() == 0 {
            return Err(ProduceError::NoRequestToAnswer);
        }
        let off = self.sring.slot_offset(self.rsp_prod_pvt);
        self.sring.shm().copy_in(off, rsp)?;
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_RESPONSES`: publish staged responses without the notification check.
    pub fn push_responses(&mut self) {
        // wmb: the frontend sees the responses before the index.
        self.sring
            .rsp_prod()
            .store(self.rsp_prod_pvt, Ordering::Release);
        self.published = self.rsp_prod_pvt;
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publish staged responses; true if the
    /// frontend asked to be notified (send an event).
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let old = core::mem::replace(&mut self.published, self.rsp_prod_pvt);
        let (prod, event) = (self.sring.rsp_prod(), self.sring.rsp_event());
        publish_and_check_notify(prod, event, old, self.rsp_prod_pvt)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: true if requests are waiting; otherwise asks for an
    /// event on the next one and re-checks, so sleeping after `false` loses no wake-up.
    pub fn final_check_for_requests(&mut self) -> Result<bool, ConsumeError> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        request_event(self.sring.req_event(), self.req_cons);
        Ok(self.unconsumed_requests()? > 0)
    }
}
