//! The frontend's half of a ring (ring.h `FRONT_RING_*`): produce requests, consume responses.

use core::marker::PhantomData;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::header::{publish_and_check_notify, request_event, RingSetupError, SharedRing};
use super::{entry_size, ConsumeError, ProduceError};
use crate::shm::Shm;
use crate::sync::Ordering;

/// ring.h's `__name##_front_ring`: the private producer/consumer indices of the side that
/// issues requests. Requests are staged with [`FrontRing::push_request`] and published with
/// [`FrontRing::push_requests_and_check_notify`]; responses come out as private copies.
#[derive(Debug)]
pub struct FrontRing<Req, Rsp> {
    sring: SharedRing,
    req_prod_pvt: u32,
    rsp_cons: u32,
    /// The `req_prod` we last published: ring.h re-reads it from the page, but the peer can
    /// write the page, and our notification decision should not depend on it.
    published: u32,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<Req, Rsp> FrontRing<Req, Rsp>
where
    Req: IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes,
{
    /// ring.h's `XEN_FRONT_RING_INIT`: `SHARED_RING_INIT` on the page, then attach at 0.
    pub fn init(shm: Shm) -> Result<Self, RingSetupError> {
        let sring = SharedRing::new(shm, entry_size::<Req, Rsp>())?;
        sring.init()?;
        Ok(Self::with_sring(sring, 0))
    }

    /// ring.h's `FRONT_RING_ATTACH`: take over a live ring at index `idx` without touching it.
    pub fn attach(shm: Shm, idx: u32) -> Result<Self, RingSetupError> {
        let sring = SharedRing::new(shm, entry_size::<Req, Rsp>())?;
        Ok(Self::with_sring(sring, idx))
    }

    fn with_sring(sring: SharedRing, idx: u32) -> Self {
        FrontRing {
            sring,
            req_prod_pvt: idx,
            rsp_cons: idx,
            published: idx,
            _entries: PhantomData,
        }
    }

    /// The shared ring.
    pub fn sring(&self) -> &SharedRing {
        &self.sring
    }

    /// `RING_SIZE`.
    pub fn size(&self) -> u32 {
        self.sring.size()
    }

    /// Next request index to fill.
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// Next response index to consume.
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// `RING_FREE_REQUESTS`: request slots not holding an unanswered request.
    pub fn free_requests(&self) -> u32 {
        self.size()
            .wrapping_sub(self.req_prod_pvt.wrapping_sub(self.rsp_cons))
    }

    /// `RING_FULL`.
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Writes `req` into the next slot (not yet visible to the backend).
    pub fn push_request(&mut self, req: &Req) -> Result<(), ProduceError> {
        if self.is_full() {
            return Err(ProduceError::Full { size: self.size() });
        }
        let off = self.sring.slot_offset(self.req_prod_pvt);
        self.sring.shm().copy_in(off, req)?;
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_REQUESTS`: publish staged requests without the notification check.
    pub fn push_requests(&mut self) {
        // wmb: the backend sees the requests before the index.
        self.sring
            .req_prod()
            .store(self.req_prod_pvt, Ordering::Release);
        self.published = self.req_prod_pvt;
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publish staged requests; true if the backend
    /// asked to be notified (send an event).
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let old = core::mem::replace(&mut self.published, self.req_prod_pvt);
        let (prod, event) = (self.sring.req_prod(), self.sring.req_event());
        publish_and_check_notify(prod, event, old, self.req_prod_pvt)
    }

    /// Responses published and not yet consumed, after ring.h's overflow check.
    pub fn unconsumed_responses(&self) -> Result<u32, ConsumeError> {
        // rmb: read the index before the entries it covers.
        let rsp_prod = self.sring.rsp_prod().load(Ordering::Acquire);
        let ready = rsp_prod.wrapping_sub(self.rsp_cons);
        let outstanding = self.req_prod_pvt.wrapping_sub(self.rsp_cons);
        if ready > outstanding {
            return Err(ConsumeError::ResponseProdOverflow {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                req_prod_pvt: self.req_prod_pvt,
            });
        }
        Ok(ready)
    }

    /// Copies out the next response (`RING_COPY_RESPONSE`), if one is published.
    pub fn pop_response(&mut self) -> Result<Option<Rsp>, ConsumeError> {
        if self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let off = self.sring.slot_offset(self.rsp_cons);
        let rsp = self.sring.shm().copy_out::<Rsp>(off)?;
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: true if responses are waiting; otherwise asks for
    /// an event on the next one and re-checks, so sleeping after `false` loses no wake-up.
    pub fn final_check_for_responses(&mut self) -> Result<bool, ConsumeError> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        request_event(self.sring.rsp_event(), self.rsp_cons);
        Ok(self.unconsumed_responses()? > 0)
    }
}
