//! The rules file (TOML): which host device goes to which domain, optionally on which
//! controller and port. Errors name `file:line`.
//!
//! ```toml
//! [[rule]]
//! device = "46f4:0001"      # vid:pid (hex), optionally with serial = "..."
//! domain = "guest1"          # name or domid
//!
//! [[rule]]
//! busid = "1-1.4"            # or a host port
//! domain = 3
//! controller = 0             # optional
//! port = 2                   # optional, needs controller
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use xenstore_cfg::DomId;

use crate::hostdev::HostDevice;

/// Where `xl-usb daemon` looks by default.
pub const DEFAULT_RULES: &str = "/etc/pvusb/rules.toml";

/// Which devices a rule takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// By vendor:product, optionally one serial number.
    Id {
        /// idVendor.
        vid: u16,
        /// idProduct.
        pid: u16,
        /// iSerialNumber string, if the rule names one.
        serial: Option<String>,
    },
    /// Whatever is plugged into this host port.
    Busid(String),
}

/// A domain named by the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainRef {
    /// By id.
    Id(DomId),
    /// By `/local/domain/<id>/name`.
    Name(String),
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Devices it takes.
    pub matcher: Match,
    /// Domain they go to.
    pub domain: DomainRef,
    /// Controller devid, if fixed.
    pub controller: Option<u32>,
    /// Port, if fixed.
    pub port: Option<u8>,
    /// Line of the rule in its file (1-based).
    pub line: usize,
}

impl Rule {
    /// Whether `dev` is one of this rule's devices.
    pub fn matches(&self, dev: &HostDevice) -> bool {
        match &self.matcher {
            Match::Id { vid, pid, serial } => {
                dev.vid == *vid
                    && dev.pid == *pid
                    && serial
                        .as_ref()
                        .is_none_or(|s| dev.serial.as_ref() == Some(s))
            }
            Match::Busid(b) => dev.busid == *b,
        }
    }
}

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("{}: {source}", .path.display())]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Bad TOML or a bad value.
    #[error("{}:{line}: {msg}", .path.display())]
    Invalid {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        msg: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    device: Option<Spanned<String>>,
    serial: Option<String>,
    busid: Option<Spanned<String>>,
    domain: Option<Spanned<toml::Value>>,
    controller: Option<Spanned<i64>>,
    port: Option<Spanned<i64>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()
        .get(..end)
        .map_or(1, |b| b.iter().filter(|&&c| c == b'\n').count() + 1)
}

fn vid_pid(s: &str) -> Option<(u16, u16)> {
    let (v, p) = s.split_once(':')?;
    let hex = |x: &str| {
        (x.len() == 4)
            .then(|| u16::from_str_radix(x, 16).ok())
            .flatten()
    };
    Some((hex(v)?, hex(p)?))
}

/// Parses rules text; `path` only names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Rule>, RulesError> {
    let err = |offset: usize, msg: String| RulesError::Invalid {
        path: path.to_path_buf(),
        line: line_of(text, offset),
        msg,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        err(offset, e.message().trim().to_owned())
    })?;
    let mut out = Vec::new();
    for r in raw.rule {
        let start = r.span().start;
        let r = r.into_inner();
        let matcher = match (&r.device, &r.busid) {
            (Some(d), None) => {
                let (vid, pid) = vid_pid(d.get_ref()).ok_or_else(|| {
                    err(
                        d.span().start,
                        format!(
                            "device = {:?}: expected vid:pid in hex, e.g. \"46f4:0001\"",
                            d.get_ref()
                        ),
                    )
                })?;
                Match::Id {
                    vid,
                    pid,
                    serial: r.serial.clone(),
                }
            }
            (None, Some(b)) => {
                if r.serial.is_some() {
                    return Err(err(start, "serial = needs device = (vid:pid)".into()));
                }
                pvusb_backend::host::check_busid(b.get_ref()).map_err(|_| {
                    err(
                        b.span().start,
                        format!(
                            "busid = {:?}: not a USB bus id (e.g. \"3-1.5\")",
                            b.get_ref()
                        ),
                    )
                })?;
                Match::Busid(b.get_ref().clone())
            }
            (Some(_), Some(b)) => {
                return Err(err(
                    b.span().start,
                    "give either device = or busid =, not both".into(),
                ))
            }
            (None, None) => return Err(err(start, "rule needs device = or busid =".into())),
        };
        let domain = match &r.domain {
            None => return Err(err(start, "rule needs domain = (name or id)".into())),
            Some(d) => match d.get_ref() {
                toml::Value::String(s) if !s.is_empty() => DomainRef::Name(s.clone()),
                toml::Value::Integer(i) => DomainRef::Id(
                    DomId::try_from(*i)
                        .ok()
                        .filter(|&id| id < 0x7ff0)
                        .ok_or_else(|| err(d.span().start, format!("domain = {i}: not a domid")))?,
                ),
                other => {
                    return Err(err(
                        d.span().start,
                        format!("domain = {other}: expected a name or a domid"),
                    ))
                }
            },
        };
        let controller = match &r.controller {
            Some(c) => Some(u32::try_from(*c.get_ref()).map_err(|_| {
                err(
                    c.span().start,
                    format!("controller = {}: not a devid", c.get_ref()),
                )
            })?),
            None => None,
        };
        let port = match &r.port {
            Some(p) => {
                let n = u8::try_from(*p.get_ref())
                    .ok()
                    .filter(|n| (1..=xenstore_cfg::vusb::MAX_PORTS).contains(n))
                    .ok_or_else(|| {
                        err(
                            p.span().start,
                            format!("port = {}: must be 1..=31", p.get_ref()),
                        )
                    })?;
                if controller.is_none() {
                    return Err(err(p.span().start, "port = needs controller =".into()));
                }
                Some(n)
            }
            None => None,
        };
        out.push(Rule {
            matcher,
            domain,
            controller,
            port,
            line: line_of(text, start),
        });
    }
    Ok(out)
}

/// Reads and parses a rules file.
pub fn load(path: &Path) -> Result<Vec<Rule>, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

#[cfg(test)]
mod tests;
