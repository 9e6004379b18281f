//! USB/IP: the wire codec (URB PDUs and management ops) and the sans-I/O server session
//! the frontend runs towards vhci_hcd or a remote USB/IP client.

pub mod client;
pub mod decode;
pub mod device;
pub mod op;
pub mod pdu;
pub mod server;
pub mod session;
pub mod shell;
mod tx;
pub mod wire;

#[doc(hidden)]
pub mod fuzzing;

pub use client::{ClientConn, ClientError, ClientEvent};
pub use decode::{CmdDecoder, DecodeError, Limits, ReplyShape, RetDecoder};
pub use device::{ExportedDevice, InterfaceClass, Speed};
pub use op::{OpError, OpRequest, OpStatus};
pub use pdu::{
    CmdSubmit, CmdUnlink, Command, Direction, IsoPacket, Reply, RetSubmit, RetUnlink, TransferFlags,
};
pub use server::{ConnError, ConnEvent, NotAwaiting, ServerConn};
pub use session::{CompleteError, Completion, Event, Session, SessionConfig, SessionError};
pub use shell::{read_some, write_some, DirectRead, FeedError, PumpError, ReadStatus, Wire};

#[cfg(test)]
mod client_tests;
#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod session_tests;
