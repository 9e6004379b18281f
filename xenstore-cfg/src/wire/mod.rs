//! The xenstore wire protocol of xs_wire.h, without I/O: header, message view, typed bodies.
//!
//! A message is a 16-byte `xsd_sockmsg` header (native-endian `type`, `req_id`, `tx_id`,
//! `len`) followed by `len <= XENSTORE_PAYLOAD_MAX` payload bytes. [`XsMsg::new_checked`]
//! bounds both once, so no accessor can panic afterwards.

mod errno;
mod perms;
mod reply;
mod request;

pub use errno::XsErrno;
pub use perms::{Perm, PermKind, Perms};
pub use reply::{BadReply, Reply};
pub use request::{BadRequest, Request};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of `struct xsd_sockmsg`.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`: the largest payload either side may send.
pub const PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`.
pub const ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`.
pub const REL_PATH_MAX: usize = 2048;

/// A domain id (`domid_t`).
pub type DomId = u16;

/// `struct xsd_sockmsg`, byte for byte (xs_wire.h). Any bit pattern is a valid value.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RawHeader {
    /// `XS_*` message type.
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 for none.
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

macro_rules! xs_types {
    ($( $(#[$m:meta])* $name:ident = $val:expr, )*) => {
        /// `enum xsd_sockmsg_type` (xs_wire.h, Xen 4.17).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum XsType { $( $(#[$m])* $name, )* }
        impl XsType {
            /// Every type Xen 4.17 defines, in numeric order.
            pub const ALL: &'static [XsType] = &[$(XsType::$name,)*];
            /// The wire number.
            pub fn raw(self) -> u32 { match self { $(XsType::$name => $val,)* } }
            /// The type for a wire number, `None` for unknown or removed numbers.
            pub fn from_raw(raw: u32) -> Option<Self> {
                match raw { $($val => Some(XsType::$name),)* _ => None }
            }
        }
    };
}

xs_types! {
    /// `XS_CONTROL` (also `XS_DEBUG`).
    Control = 0,
    /// `XS_DIRECTORY`.
    Directory = 1,
    /// `XS_READ`.
    Read = 2,
    /// `XS_GET_PERMS`.
    GetPerms = 3,
    /// `XS_WATCH`.
    Watch = 4,
    /// `XS_UNWATCH`.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`.
    Introduce = 8,
    /// `XS_RELEASE`.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `XS_WRITE`.
    Write = 11,
    /// `XS_MKDIR`.
    Mkdir = 12,
    /// `XS_RM`.
    Rm = 13,
    /// `XS_SET_PERMS`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT` (server to client only).
    WatchEvent = 15,
    /// `XS_ERROR` (reply only).
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    Resume = 18,
    /// `XS_SET_TARGET`.
    SetTarget = 19,
    /// `XS_RESET_WATCHES` (20, `XS_RESTRICT`, was removed).
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`.
    DirectoryPart = 22,
}

/// Why a byte stream does not hold a well-formed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a header plus its payload (not an error on a stream: read more).
    #[error("truncated message: have {have} bytes, need {need}")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes the header announces.
        need: usize,
    },
    /// `len` exceeds `XENSTORE_PAYLOAD_MAX`: xenstored drops such a connection.
    #[error("payload length {0} exceeds XENSTORE_PAYLOAD_MAX")]
    TooLong(u32),
}

/// A checked view of one message at the start of a buffer.
#[derive(Clone, Copy, Debug)]
pub struct XsMsg<T: AsRef<[u8]>> {
    buf: T,
    header: RawHeader,
}

impl<T: AsRef<[u8]>> XsMsg<T> {
    /// Checks that `buf` starts with a header and the whole payload it announces.
    pub fn new_checked(buf: T) -> Result<Self, FrameError> {
        let bytes = buf.as_ref();
        let header = match RawHeader::read_from_prefix(bytes) {
            Ok((h, _)) => h,
            Err(_) => {
                return Err(FrameError::Truncated {
                    have: bytes.len(),
                    need: HEADER_LEN,
                })
            }
        };
        let len = usize::try_from(header.len).unwrap_or(usize::MAX);
        if len > PAYLOAD_MAX {
            return Err(FrameError::TooLong(header.len));
        }
        let need = HEADER_LEN + len;
        if bytes.len() < need {
            return Err(FrameError::Truncated {
                have: bytes.len(),
                need,
            });
        }
        Ok(Self { buf, header })
    }

    /// The header as received.
    pub fn header(&self) -> RawHeader {
        self.header
    }

    /// The message type, `None` if unknown to Xen 4.17.
    pub fn msg_type(&self) -> Option<XsType> {
        XsType::from_raw(self.header.ty)
    }

    /// The request id.
    pub fn req_id(&self) -> u32 {
        self.header.req_id
    }

    /// The transaction id.
    pub fn tx_id(&self) -> u32 {
        self.header.tx_id
    }

    /// Header plus payload length: where the next message starts.
    pub fn total_len(&self) -> usize {
        // `len` was bounded by PAYLOAD_MAX in new_checked.
        HEADER_LEN + self.header.len as usize
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        self.buf
            .as_ref()
            .get(HEADER_LEN..self.total_len())
            .unwrap_or_default()
    }
}

/// Appends one message (header + payload) to `out`.
///
/// Returns `Err(len)` without writing if the payload exceeds [`PAYLOAD_MAX`].
pub fn emit_msg(
    out: &mut Vec<u8>,
    ty: u32,
    req_id: u32,
    tx_id: u32,
    payload: &[u8],
) -> Result<(), usize> {
    if payload.len() > PAYLOAD_MAX {
        return Err(payload.len());
    }
    let header = RawHeader {
        ty,
        req_id,
        tx_id,
        // Bounded by PAYLOAD_MAX just above.
        len: payload.len() as u32,
    };
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Splits a NUL-separated payload into its fields, as xenstored's `get_strings` does:
/// a final field without a terminating NUL is still a field.
pub fn split_fields(payload: &[u8]) -> Vec<&[u8]> {
    let mut fields: Vec<&[u8]> = payload.split(|&b| b == 0).collect();
    if payload.last() == Some(&0) || payload.is_empty() {
        fields.pop();
    }
    fields
}

#[cfg(test)]
pub(crate) mod tests;
