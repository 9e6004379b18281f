//! Side channels: a socket pair per connection for one-way messages (unmaps, forgets) that
//! the broker does not poll, so sending one wakes nobody.
//!
//! Ordering: the side channel is read before every message of the main connection, and
//! before any answer that must see earlier unmaps (`State::drain_before`, counters), so a
//! one-way message is handled before anything sent after it on either socket (and before
//! anything that causally follows it from another connection). Otherwise it waits at most
//! [`PERIOD_NS`]; nothing can observe that except a deferred revocation finishing later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::RecvFlags;
use std::os::fd::AsFd;
use tracing::debug;

use super::{apply, Effect, Inner, PendingReply, Shared};
use crate::sim::fdpass;
use crate::sim::state::ConnId;
use crate::sim::wire::{Reply, Request, Status, MAX_ONEWAY};
use crate::DomId;

/// How often every side channel is read, in nanoseconds.
pub(super) const PERIOD_NS: i64 = 20_000_000;

/// Opens (or replaces) `conn`'s side channel; the reply carries the client's end.
pub(super) fn open(inner: &mut Inner, conn: ConnId, seq: u32) -> PendingReply {
    let op = Request::SideOpen.op();
    match fdpass::pair() {
        Ok((ours, theirs)) => {
            inner.side.insert(conn, ours);
            (Reply::Done { op }.emit(seq), vec![Arc::new(theirs)])
        }
        Err(e) => {
            debug!(conn, error = %e, "no side channel");
            let status = Status::Resource;
            (Reply::Error { op, status }.emit(seq), Vec::new())
        }
    }
}

/// The most side messages one read handles. The queue is bounded by the client's socket
/// send buffer (a few hundred small datagrams by default), so this only matters for a
/// client that keeps sending while we read; the rest waits for the next read.
const MAX_READ: usize = 64 * 1024;

/// Handles every message queued on `conn`'s side channel. Anything but a well-formed
/// one-way request closes the connection.
pub(super) fn read(shared: &Shared, inner: &mut Inner, conn: ConnId, released: &mut Vec<DomId>) {
    let mut buf = [0u8; MAX_ONEWAY];
    for _ in 0..MAX_READ {
        let Some(fd) = inner.side.get(&conn) else {
            return;
        };
        let got = match fdpass::recv(fd.as_fd(), &mut buf, 1, RecvFlags::DONTWAIT) {
            Ok(got) => got,
            Err(Errno::AGAIN) => return,
            Err(Errno::INTR) => continue,
            Err(_) => return close_bad(shared, inner, conn, released),
        };
        if got.len == 0 {
            // The client closed its end: the main connection's close follows.
            inner.side.remove(&conn);
            return;
        }
        let req = buf
            .get(..got.len)
            .filter(|_| !got.truncated && !got.fds_truncated && got.fds.is_empty())
            .and_then(|b| Request::parse(b).ok())
            .filter(|(_, r)| !r.wants_reply());
        let Some((_, req)) = req else {
            return close_bad(shared, inner, conn, released);
        };
        let (result, effects) = inner.state.handle(conn, req);
        if let Err(status) = result {
            debug!(conn, %status, "one-way request failed");
        }
        released.extend(apply(shared, inner, effects).unwrap_or_default());
    }
    debug!(
        conn,
        "still more side messages; the rest waits for the next read"
    );
}

fn close_bad(shared: &Shared, inner: &mut Inner, conn: ConnId, released: &mut Vec<DomId>) {
    debug!(conn, "bad side channel message; closing the connection");
    released.extend(apply(shared, inner, vec![Effect::CloseConn(conn)]).unwrap_or_default());
}

/// Reads every side channel if the last time was at least [`PERIOD_NS`] ago.
pub(super) fn read_all_if_due(shared: &Shared, inner: &mut Inner) -> Vec<DomId> {
    let now = Instant::now();
    let period = Duration::from_nanos(PERIOD_NS.unsigned_abs());
    let mut released = Vec::new();
    if now.duration_since(inner.side_read) < period {
        return released;
    }
    inner.side_read = now;
    let conns: Vec<ConnId> = inner.side.keys().copied().collect();
    for c in conns {
        read(shared, inner, c, &mut released);
    }
    released
}
