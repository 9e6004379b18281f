//! Typed xenstore requests: a checked parse of a request body and an infallible emit.

use super::perms::Perms;
use super::{split_fields, DomId, XsErrno, XsType};

/// One client request, as xenstored understands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `XS_CONTROL`: debug commands, fields as sent.
    Control {
        /// Command and arguments.
        args: Vec<Vec<u8>>,
    },
    /// `XS_DIRECTORY`: list children.
    Directory {
        /// Node path (absolute, relative, or `@special` where allowed).
        path: String,
    },
    /// `XS_READ`.
    Read {
        /// Node path.
        path: String,
    },
    /// `XS_GET_PERMS`.
    GetPerms {
        /// Node path.
        path: String,
    },
    /// `XS_WATCH`.
    Watch {
        /// Watched path.
        path: String,
        /// Opaque token echoed in events.
        token: String,
    },
    /// `XS_UNWATCH`.
    Unwatch {
        /// Watched path, as registered.
        path: String,
        /// Token, as registered.
        token: String,
    },
    /// `XS_TRANSACTION_START`.
    TransactionStart,
    /// `XS_TRANSACTION_END`: `T` commits, `F` aborts.
    TransactionEnd {
        /// Commit (`true`) or abort.
        commit: bool,
    },
    /// `XS_INTRODUCE "<domid>\0<mfn>\0<port>\0"` (control domain only).
    Introduce {
        /// Domain being introduced.
        domid: DomId,
        /// Its store ring frame (unused by the simulated platform).
        mfn: u64,
        /// Its store event channel (unused by the simulated platform).
        port: u32,
    },
    /// `XS_RELEASE` (control domain only).
    Release {
        /// Domain being released.
        domid: DomId,
    },
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath {
        /// Domain asked about.
        domid: DomId,
    },
    /// `XS_WRITE "<path>\0<value>"` (value not NUL-terminated).
    Write {
        /// Node path.
        path: String,
        /// New value.
        value: Vec<u8>,
    },
    /// `XS_MKDIR`.
    Mkdir {
        /// Node path.
        path: String,
    },
    /// `XS_RM`.
    Rm {
        /// Node path.
        path: String,
    },
    /// `XS_SET_PERMS "<path>\0<perm>\0..."`.
    SetPerms {
        /// Node path.
        path: String,
        /// New permissions, owner first.
        perms: Perms,
    },
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced {
        /// Domain asked about.
        domid: DomId,
    },
    /// `XS_RESUME` (control domain only).
    Resume {
        /// Domain resumed.
        domid: DomId,
    },
    /// `XS_SET_TARGET` (control domain only): `domid` gets `target`'s privileges.
    SetTarget {
        /// The (device model) domain.
        domid: DomId,
        /// The domain it serves.
        target: DomId,
    },
    /// `XS_RESET_WATCHES`: drop all watches and transactions of the connection.
    ResetWatches,
    /// `XS_DIRECTORY_PART "<path>\0<offset>\0"`.
    DirectoryPart {
        /// Node path.
        path: String,
        /// Byte offset into the NUL-separated child list.
        offset: u32,
    },
}

/// Why a request body is malformed; xenstored answers all of these with `XS_ERROR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// A single-argument request whose argument is not exactly one NUL-terminated string.
    #[error("expected exactly one NUL-terminated argument")]
    NotOneArg,
    /// Wrong number of NUL-separated fields.
    #[error("expected {expected} fields, got {got}")]
    FieldCount {
        /// Fields required.
        expected: usize,
        /// Fields present.
        got: usize,
    },
    /// A path or token that is not UTF-8 (so cannot be a valid node name).
    #[error("field is not UTF-8")]
    NotUtf8,
    /// A domain id, frame number, port or offset that is not a decimal number in range.
    #[error("bad number {0:?}")]
    BadNumber(String),
    /// A malformed permission entry.
    #[error(transparent)]
    BadPerm(#[from] super::perms::BadPerm),
    /// TRANSACTION_END body other than `T` or `F`.
    #[error("transaction end body must be T or F")]
    BadTransactionEnd,
    /// A reply-only type (`XS_ERROR`, `XS_WATCH_EVENT`) sent as a request.
    #[error("{0:?} is not a request")]
    NotARequest(XsType),
}

impl BadRequest {
    /// The errno xenstored answers with.
    pub fn errno(&self) -> XsErrno {
        match self {
            Self::NotARequest(_) => XsErrno::ENOSYS,
            _ => XsErrno::EINVAL,
        }
    }
}

fn text(field: &[u8]) -> Result<String, BadRequest> {
    String::from_utf8(field.to_vec()).map_err(|_| BadRequest::NotUtf8)
}

fn number<T: std::str::FromStr>(field: &[u8]) -> Result<T, BadRequest> {
    let bad = || BadRequest::BadNumber(String::from_utf8_lossy(field).into_owned());
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(field)
        .map_err(|_| bad())?
        .parse()
        .map_err(|_| bad())
}

/// xenstored's `onearg`: the body is exactly one NUL-terminated string.
fn one_arg(payload: &[u8]) -> Result<&[u8], BadRequest> {
    match payload.split_last() {
        Some((0, body)) if !body.contains(&0) => Ok(body),
        _ => Err(BadRequest::NotOneArg),
    }
}

fn fields_exact(payload: &[u8], n: usize) -> Result<Vec<&[u8]>, BadRequest> {
    let fields = split_fields(payload);
    if fields.len() != n {
        return Err(BadRequest::FieldCount {
            expected: n,
            got: fields.len(),
        });
    }
    Ok(fields)
}

impl Request {
    /// Parses the body of a request of type `ty`.
    pub fn parse(ty: XsType, payload: &[u8]) -> Result<Self, BadRequest> {
        let path = |p: &[u8]| one_arg(p).and_then(text);
        let domid = |p: &[u8]| one_arg(p).and_then(number::<DomId>);
        Ok(match ty {
            XsType::Control => Self::Control {
                args: split_fields(payload)
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect(),
            },
            XsType::Directory => Self::Directory {
                path: path(payload)?,
            },
            XsType::Read => Self::Read {
                path: path(payload)?,
            },
            XsType::GetPerms => Self::GetPerms {
                path: path(payload)?,
            },
            XsType::Mkdir => Self::Mkdir {
                path: path(payload)?,
            },
            XsType::Rm => Self::Rm {
                path: path(payload)?,
            },
            XsType::Watch | XsType::Unwatch => {
                let f = fields_exact(payload, 2)?;
                let (p, t) = match f.as_slice() {
                    [p, t] => (text(p)?, text(t)?),
                    _ => return Err(BadRequest::NotOneArg),
                };
                if ty == XsType::Watch {
                    Self::Watch { path: p, token: t }
                } else {
                    Self::Unwatch { path: p, token: t }
                }
            }
            XsType::TransactionStart => Self::TransactionStart,
            XsType::TransactionEnd => match one_arg(payload)? {
                b"T" => Self::TransactionEnd { commit: true },
                b"F" => Self::TransactionEnd { commit: false },
                _ => return Err(BadRequest::BadTransactionEnd),
            },
            XsType::Introduce => {
                let f = split_fields(payload);
                match f.as_slice() {
                    [d, m, p, ..] => Self::Introduce {
                        domid: number(d)?,
                        mfn: number(m)?,
                        port: number(p)?,
                    },
                    _ => {
                        return Err(BadRequest::FieldCount {
                            expected: 3,
                            got: f.len(),
                        })
                    }
                }
            }
            XsType::Release => Self::Release {
                domid: domid(payload)?,
            },
            XsType::GetDomainPath => Self::GetDomainPath {
                domid: domid(payload)?,
            },
            XsType::IsDomainIntroduced => Self::IsDomainIntroduced {
                domid: domid(payload)?,
            },
            XsType::Resume => Self::Resume {
                domid: domid(payload)?,
            },
            XsType::Write => {
                let nul = payload
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(BadRequest::NotOneArg)?;
                let (p, rest) = payload.split_at(nul);
                Self::Write {
                    path: text(p)?,
                    value: rest.get(1..).unwrap_or_default().to_vec(),
                }
            }
            XsType::SetPerms => {
                let f = split_fields(payload);
                match f.split_first() {
                    Some((p, perms)) if !perms.is_empty() => Self::SetPerms {
                        path: text(p)?,
                        perms: Perms::parse_fields(perms)?,
                    },
                    _ => {
                        return Err(BadRequest::FieldCount {
                            expected: 2,
                            got: f.len(),
                        })
                    }
                }
            }
            XsType::SetTarget => match fields_exact(payload, 2)?.as_slice() {
                [d, t] => Self::SetTarget {
                    domid: number(d)?,
                    target: number(t)?,
                },
                _ => return Err(BadRequest::NotOneArg),
            },
            XsType::ResetWatches => Self::ResetWatches,
            XsType::DirectoryPart => match fields_exact(payload, 2)?.as_slice() {
                [p, o] => Self::DirectoryPart {
                    path: text(p)?,
                    offset: number(o)?,
                },
                _ => return Err(BadRequest::NotOneArg),
            },
            XsType::WatchEvent | XsType::Error => return Err(BadRequest::NotARequest(ty)),
        })
    }

    /// The message type this request is sent as.
    pub fn msg_type(&self) -> XsType {
        match self {
            Self::Control { .. } => XsType::Control,
            Self::Directory { .. } => XsType::Directory,
            Self::Read { .. } => XsType::Read,
            Self::GetPerms { .. } => XsType::GetPerms,
            Self::Watch { .. } => XsType::Watch,
            Self::Unwatch { .. } => XsType::Unwatch,
            Self::TransactionStart => XsType::TransactionStart,
            Self::TransactionEnd { .. } => XsType::TransactionEnd,
            Self::Introduce { .. } => XsType::Introduce,
            Self::Release { .. } => XsType::Release,
            Self::GetDomainPath { .. } => XsType::GetDomainPath,
            Self::Write { .. } => XsType::Write,
            Self::Mkdir { .. } => XsType::Mkdir,
            Self::Rm { .. } => XsType::Rm,
            Self::SetPerms { .. } => XsType::SetPerms,
            Self::IsDomainIntroduced { .. } => XsType::IsDomainIntroduced,
            Self::Resume { .. } => XsType::Resume,
            Self::SetTarget { .. } => XsType::SetTarget,
            Self::ResetWatches => XsType::ResetWatches,
            Self::DirectoryPart { .. } => XsType::DirectoryPart,
        }
    }

    /// Appends the request body (not the header) to `out`, as libxenstore sends it.
    pub fn emit(&self, out: &mut Vec<u8>) {
        fn z(out: &mut Vec<u8>, s: &[u8]) {
            out.extend_from_slice(s);
            out.push(0);
        }
        match self {
            Self::Control { args } => args.iter().for_each(|a| z(out, a)),
            Self::Directory { path }
            | Self::Read { path }
            | Self::GetPerms { path }
            | Self::Mkdir { path }
            | Self::Rm { path } => z(out, path.as_bytes()),
            Self::Watch { path, token } | Self::Unwatch { path, token } => {
                z(out, path.as_bytes());
                z(out, token.as_bytes());
            }
            Self::TransactionStart | Self::ResetWatches => z(out, b""),
            Self::TransactionEnd { commit } => z(out, if *commit { b"T" } else { b"F" }),
            Self::Introduce { domid, mfn, port } => {
                z(out, domid.to_string().as_bytes());
                z(out, mfn.to_string().as_bytes());
                z(out, port.to_string().as_bytes());
            }
            Self::Release { domid }
            | Self::GetDomainPath { domid }
            | Self::IsDomainIntroduced { domid }
            | Self::Resume { domid } => z(out, domid.to_string().as_bytes()),
            Self::Write { path, value } => {
                z(out, path.as_bytes());
                out.extend_from_slice(value);
            }
            Self::SetPerms { path, perms } => {
                z(out, path.as_bytes());
                perms.emit(out);
            }
            Self::SetTarget { domid, target } => {
                z(out, domid.to_string().as_bytes());
                z(out, target.to_string().as_bytes());
            }
            Self::DirectoryPart { path, offset } => {
                z(out, path.as_bytes());
                z(out, offset.to_string().as_bytes());
            }
        }
    }
}
