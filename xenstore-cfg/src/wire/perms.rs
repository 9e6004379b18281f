//! Node permissions as xenstore writes them: `n0`, `r5`, `w3`, `b1`; the first entry names the owner.

use std::fmt;
use std::str::FromStr;

use super::DomId;

/// The access one permission entry grants (`XS_PERM_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PermKind {
    /// `n`: no access.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl PermKind {
    /// The wire letter.
    pub fn letter(self) -> char {
        match self {
            Self::None => 'n',
            Self::Read => 'r',
            Self::Write => 'w',
            Self::Both => 'b',
        }
    }
    /// Whether this grants read access.
    pub fn can_read(self) -> bool {
        matches!(self, Self::Read | Self::Both)
    }
    /// Whether this grants write access.
    pub fn can_write(self) -> bool {
        matches!(self, Self::Write | Self::Both)
    }
}

/// One permission entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The access granted.
    pub kind: PermKind,
    /// The domain it is granted to (for the first entry: the owner).
    pub domid: DomId,
}

impl Perm {
    /// Builds an entry.
    pub const fn new(kind: PermKind, domid: DomId) -> Self {
        Self { kind, domid }
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind.letter(), self.domid)
    }
}

/// Why a permission string is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed permission {0:?}")]
pub struct BadPerm(pub String);

impl FromStr for Perm {
    type Err = BadPerm;
    fn from_str(s: &str) -> Result<Self, BadPerm> {
        let bad = || BadPerm(s.to_owned());
        let mut chars = s.chars();
        let kind = match chars.next() {
            Some('n') => PermKind::None,
            Some('r') => PermKind::Read,
            Some('w') => PermKind::Write,
            Some('b') => PermKind::Both,
            _ => return Err(bad()),
        };
        let digits = chars.as_str();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let domid = digits.parse::<DomId>().map_err(|_| bad())?;
        Ok(Self { kind, domid })
    }
}

/// A node's permission list: the owner entry (whose kind is the default for every domain
/// not listed) followed by per-domain entries. Never empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// Owner `owner`, everyone else `default`.
    pub fn owner(owner: DomId, default: PermKind) -> Self {
        Self(vec![Perm::new(default, owner)])
    }

    /// Builds a list; `None` if empty.
    pub fn from_vec(perms: Vec<Perm>) -> Option<Self> {
        (!perms.is_empty()).then_some(Self(perms))
    }

    /// Adds a per-domain entry.
    pub fn with(mut self, kind: PermKind, domid: DomId) -> Self {
        self.0.push(Perm::new(kind, domid));
        self
    }

    /// The entries, owner first.
    pub fn as_slice(&self) -> &[Perm] {
        &self.0
    }

    /// The owning domain.
    pub fn owner_id(&self) -> DomId {
        self.0.first().map_or(0, |p| p.domid)
    }

    /// Replaces the owner, keeping its default access.
    pub fn set_owner(&mut self, domid: DomId) {
        if let Some(first) = self.0.first_mut() {
            first.domid = domid;
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a permission list has an owner.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The access `domid` gets, ignoring owner and privilege (xenstored's `perm_for_conn`
    /// after its owner check): the first matching entry after the owner, else the default.
    pub fn kind_for(&self, domid: DomId) -> PermKind {
        self.0
            .iter()
            .skip(1)
            .find(|p| p.domid == domid)
            .or_else(|| self.0.first())
            .map_or(PermKind::None, |p| p.kind)
    }

    /// Parses NUL-separated fields as sent in SET_PERMS / GET_PERMS bodies.
    pub fn parse_fields(fields: &[&[u8]]) -> Result<Self, BadPerm> {
        let perms = fields
            .iter()
            .map(|f| {
                std::str::from_utf8(f)
                    .map_err(|_| BadPerm(String::from_utf8_lossy(f).into_owned()))?
                    .parse()
            })
            .collect::<Result<Vec<Perm>, _>>()?;
        Self::from_vec(perms).ok_or_else(|| BadPerm(String::new()))
    }

    /// Appends `perm\0` for each entry.
    pub fn emit(&self, out: &mut Vec<u8>) {
        for p in &self.0 {
            out.extend_from_slice(p.to_string().as_bytes());
            out.push(0);
        }
    }
}

impl fmt::Display for Perms {
    /// `n0,r1`, as `xenstore-ls -p` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
