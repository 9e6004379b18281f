//! SOCK_SEQPACKET datagrams with file descriptors attached (SCM_RIGHTS).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// The most fds one datagram carries (below the kernel's SCM_MAX_FD of 253).
pub const MAX_FDS: usize = 253;

/// A received datagram.
#[derive(Debug)]
pub struct Received {
    /// Bytes copied into the caller's buffer (0 means the peer closed).
    pub len: usize,
    /// The datagram did not fit the buffer.
    pub truncated: bool,
    /// The attached fds did not fit (they were closed by the kernel).
    pub fds_truncated: bool,
    /// Attached fds, in order.
    pub fds: Vec<OwnedFd>,
}

/// Sends one datagram with `fds` attached. Never blocks and never raises SIGPIPE: a peer
/// that does not read its replies gets its connection closed by the caller.
pub fn send(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> Result<(), Errno> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::NOBUFS);
    }
    let sent = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut anc,
        flags | SendFlags::NOSIGNAL,
    )?;
    if sent != bytes.len() {
        return Err(Errno::MSGSIZE);
    }
    Ok(())
}

/// Receives one datagram into `buf`, accepting up to `max_fds` attached fds (more are closed
/// by the kernel and reported as `fds_truncated`).
pub fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    flags: RecvFlags,
) -> Result<Received, Errno> {
    let n = max_fds.min(MAX_FDS);
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(n))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut anc,
        flags | RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    Ok(Received {
        len: msg.bytes.min(buf.len()),
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        fds_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
        fds,
    })
}

/// A seqpacket socket address for `path`.
pub fn addr(path: &Path) -> Result<SocketAddrUnix, Errno> {
    SocketAddrUnix::new(path)
}

/// A new unix seqpacket socket.
pub fn socket(nonblocking: bool) -> Result<OwnedFd, Errno> {
    let mut flags = SocketFlags::CLOEXEC;
    if nonblocking {
        flags |= SocketFlags::NONBLOCK;
    }
    rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, flags, None)
}

/// A connected pair of unix seqpacket sockets (both blocking, close-on-exec).
pub fn pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
}

/// Connects to a broker socket (blocking).
pub fn connect(path: &Path) -> Result<OwnedFd, Errno> {
    let fd = socket(false)?;
    rustix::net::connect(&fd, &addr(path)?)?;
    Ok(fd)
}

/// Borrows a list of owned fds.
pub fn borrow_all<T: AsFd>(fds: &[T]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}
