//! Typed xenstore replies and watch events: parse (client side) and emit (server side).

use super::perms::Perms;
use super::{split_fields, XsErrno, XsType};

/// A server-to-client message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `OK\0`: WRITE, MKDIR, RM, SET_PERMS, WATCH, UNWATCH, TRANSACTION_END, INTRODUCE,
    /// RELEASE, RESUME, SET_TARGET, RESET_WATCHES.
    Ok,
    /// READ: the raw value.
    Read(Vec<u8>),
    /// DIRECTORY: child names.
    Directory(Vec<String>),
    /// GET_PERMS.
    Perms(Perms),
    /// TRANSACTION_START: the new transaction id.
    TransactionStarted(u32),
    /// GET_DOMAIN_PATH.
    DomainPath(String),
    /// IS_DOMAIN_INTRODUCED: `T` or `F`.
    IsIntroduced(bool),
    /// DIRECTORY_PART: the node's generation and the children from the requested offset.
    DirectoryPart {
        /// Generation count of the node; equal across parts means the list is consistent.
        generation: u64,
        /// Child names in this part.
        children: Vec<String>,
        /// The list ended in this part (sent as a trailing empty name).
        complete: bool,
    },
    /// CONTROL: free-form output.
    Control(Vec<u8>),
    /// `XS_ERROR`.
    Error(XsErrno),
    /// `XS_WATCH_EVENT`.
    WatchEvent {
        /// The path that changed (relative if the watch was registered relative).
        path: String,
        /// The watch's token.
        token: String,
    },
}

/// Why a reply body does not match the request it answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReply {
    /// The reply's type is neither the request's, `XS_ERROR` nor `XS_WATCH_EVENT`.
    #[error("reply type {got} does not answer {asked:?}")]
    WrongType {
        /// Request type.
        asked: XsType,
        /// Reply type number.
        got: u32,
    },
    /// An error name outside the `xsd_errors` table.
    #[error("unknown error name {0:?}")]
    UnknownError(String),
    /// The body is not shaped as this reply type requires.
    #[error("malformed {0:?} reply")]
    Malformed(XsType),
}

fn texts(fields: Vec<&[u8]>, ty: XsType) -> Result<Vec<String>, BadReply> {
    fields
        .into_iter()
        .map(|f| String::from_utf8(f.to_vec()).map_err(|_| BadReply::Malformed(ty)))
        .collect()
}

fn one_text(payload: &[u8], ty: XsType) -> Result<String, BadReply> {
    let body = payload.strip_suffix(b"\0").unwrap_or(payload);
    String::from_utf8(body.to_vec()).map_err(|_| BadReply::Malformed(ty))
}

impl Reply {
    /// Parses a message of wire type `got` answering a request of type `asked`.
    pub fn parse(asked: XsType, got: u32, payload: &[u8]) -> Result<Self, BadReply> {
        if got == XsType::Error.raw() {
            let name = payload.strip_suffix(b"\0").unwrap_or(payload);
            return XsErrno::from_name(name)
                .map(Reply::Error)
                .ok_or_else(|| BadReply::UnknownError(String::from_utf8_lossy(name).into()));
        }
        if got == XsType::WatchEvent.raw() {
            return Self::parse_event(payload);
        }
        if got != asked.raw() {
            return Err(BadReply::WrongType { asked, got });
        }
        let bad = || BadReply::Malformed(asked);
        Ok(match asked {
            XsType::Read => Self::Read(payload.to_vec()),
            XsType::Directory => Self::Directory(texts(split_fields(payload), asked)?),
            XsType::GetPerms => {
                Self::Perms(Perms::parse_fields(&split_fields(payload)).map_err(|_| bad())?)
            }
            XsType::TransactionStart => {
                Self::TransactionStarted(one_text(payload, asked)?.parse().map_err(|_| bad())?)
            }
            XsType::GetDomainPath => Self::DomainPath(one_text(payload, asked)?),
            XsType::IsDomainIntroduced => match payload {
                b"T\0" | b"T" => Self::IsIntroduced(true),
                b"F\0" | b"F" => Self::IsIntroduced(false),
                _ => return Err(bad()),
            },
            XsType::DirectoryPart => {
                let mut fields = payload.split(|&b| b == 0);
                let generation = fields
                    .next()
                    .and_then(|g| std::str::from_utf8(g).ok())
                    .and_then(|g| g.parse().ok())
                    .ok_or_else(bad)?;
                let rest = payload
                    .iter()
                    .position(|&b| b == 0)
                    .and_then(|n| payload.get(n + 1..))
                    .unwrap_or_default();
                // The list is complete when it ends in an empty name: "...\0\0" or just "\0".
                let complete = rest == b"\0" || rest.ends_with(b"\0\0");
                let mut names = split_fields(rest);
                if complete {
                    names.pop();
                }
                Self::DirectoryPart {
                    generation,
                    children: texts(names, asked)?,
                    complete,
                }
            }
            XsType::Control => Self::Control(payload.to_vec()),
            XsType::WatchEvent | XsType::Error => return Err(bad()),
            _ => match payload {
                b"OK\0" | b"OK" => Self::Ok,
                _ => return Err(bad()),
            },
        })
    }

    /// Parses an `XS_WATCH_EVENT` body `path\0token\0`.
    pub fn parse_event(payload: &[u8]) -> Result<Self, BadReply> {
        match texts(split_fields(payload), XsType::WatchEvent)?.as_slice() {
            [path, token] => Ok(Self::WatchEvent {
                path: path.clone(),
                token: token.clone(),
            }),
            _ => Err(BadReply::Malformed(XsType::WatchEvent)),
        }
    }

    /// The wire type of this reply to a request of type `asked`.
    pub fn wire_type(&self, asked: XsType) -> XsType {
        match self {
            Self::Error(_) => XsType::Error,
            Self::WatchEvent { .. } => XsType::WatchEvent,
            _ => asked,
        }
    }

    /// Appends the body to `out`, as xenstored sends it.
    pub fn emit(&self, out: &mut Vec<u8>) {
        fn z(out: &mut Vec<u8>, s: &[u8]) {
            out.extend_from_slice(s);
            out.push(0);
        }
        match self {
            Self::Ok => z(out, b"OK"),
            Self::Read(v) | Self::Control(v) => out.extend_from_slice(v),
            Self::Directory(children) => children.iter().for_each(|c| z(out, c.as_bytes())),
            Self::Perms(p) => p.emit(out),
            Self::TransactionStarted(id) => z(out, id.to_string().as_bytes()),
            Self::DomainPath(p) => z(out, p.as_bytes()),
            Self::IsIntroduced(b) => z(out, if *b { b"T" } else { b"F" }),
            Self::DirectoryPart {
                generation,
                children,
                complete,
            } => {
                z(out, generation.to_string().as_bytes());
                children.iter().for_each(|c| z(out, c.as_bytes()));
                if *complete {
                    out.push(0);
                }
            }
            Self::Error(e) => z(out, e.name().as_bytes()),
            Self::WatchEvent { path, token } => {
                z(out, path.as_bytes());
                z(out, token.as_bytes());
            }
        }
    }
}
