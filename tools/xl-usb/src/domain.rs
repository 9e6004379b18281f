//! Domains by id or name, as xl resolves them (`/local/domain/<id>/name`).

use xenstore_cfg::{DomId, Xs, XsError, XsOps};

/// Why a domain argument names no domain.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// No domain with that id or name.
    #[error("unknown domain {0:?}")]
    Unknown(String),
    /// Two domains share the name.
    #[error("domain name {0:?} is ambiguous (domains {1:?})")]
    Ambiguous(String, Vec<DomId>),
    /// xenstore failed.
    #[error("listing domains: {0}")]
    Xs(#[from] XsError),
}

/// A running domain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Domain {
    /// Domain id.
    pub domid: DomId,
    /// `/local/domain/<id>/name`, if set.
    pub name: Option<String>,
}

/// Every domain under `/local/domain`, by id.
pub fn list(xs: &mut Xs) -> Result<Vec<Domain>, XsError> {
    let mut out: Vec<Domain> = Vec::new();
    for child in xs.directory("/local/domain")? {
        let Ok(domid) = child.parse::<DomId>() else {
            continue;
        };
        let name = xs
            .try_read(&format!("/local/domain/{domid}/name"))?
            .map(|v| String::from_utf8_lossy(&v).trim().to_owned())
            .filter(|n| !n.is_empty());
        out.push(Domain { domid, name });
    }
    out.sort_by_key(|d| d.domid);
    Ok(out)
}

/// Resolves a domain given as a number or a name, as xl's `find_domain` does: a string
/// of digits is an id (it must exist), anything else a name.
pub fn resolve(xs: &mut Xs, arg: &str) -> Result<Domain, DomainError> {
    let doms = list(xs)?;
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
        let id = arg.parse::<DomId>().ok();
        return doms
            .into_iter()
            .find(|d| Some(d.domid) == id)
            .ok_or_else(|| DomainError::Unknown(arg.to_owned()));
    }
    let hits: Vec<Domain> = doms
        .into_iter()
        .filter(|d| d.name.as_deref() == Some(arg))
        .collect();
    match hits.as_slice() {
        [] => Err(DomainError::Unknown(arg.to_owned())),
        [one] => Ok(one.clone()),
        many => Err(DomainError::Ambiguous(
            arg.to_owned(),
            many.iter().map(|d| d.domid).collect(),
        )),
    }
}

impl Domain {
    /// "guest1 (1)" or "dom1".
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", self.domid),
            None => format!("dom{}", self.domid),
        }
    }
}
