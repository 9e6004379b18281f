//! Node operations shared by a plain connection and a transaction, and the transaction handle.

use super::{Xs, XsError};
use crate::wire::{Perms, Reply, Request, XsErrno};

/// Node operations; implemented by [`Xs`] (outside any transaction) and [`Transaction`].
/// Paths may be absolute or relative to the connection's domain home.
pub trait XsOps {
    /// Sends one request and waits for its reply.
    fn call(&mut self, req: &Request) -> Result<Reply, XsError>;

    /// Reads a node's value.
    fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        match self.call(&Request::Read { path: path.into() })? {
            Reply::Read(v) => Ok(v),
            other => Err(XsError::Unexpected(Box::new(other))),
        }
    }

    /// Reads a node's value as text (invalid UTF-8 is replaced).
    fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        self.read(path)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Reads a node, `None` if it does not exist.
    fn try_read(&mut self, path: &str) -> Result<Option<Vec<u8>>, XsError> {
        match self.read(path) {
            Ok(v) => Ok(Some(v)),
            Err(XsError::Xs(XsErrno::ENOENT)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a node, creating it and any missing parents.
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        let req = Request::Write {
            path: path.into(),
            value: value.to_vec(),
        };
        expect_ok(self.call(&req)?)
    }

    /// Creates a node (and parents) with an empty value; no error if it exists.
    fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        expect_ok(self.call(&Request::Mkdir { path: path.into() })?)
    }

    /// Removes a node and its subtree; no error if it is already gone but its parent exists.
    fn rm(&mut self, path: &str) -> Result<(), XsError> {
        expect_ok(self.call(&Request::Rm { path: path.into() })?)
    }

    /// Lists a node's children, falling back to `XS_DIRECTORY_PART` when the list does
    /// not fit in one reply (`E2BIG`), as libxenstore does.
    fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        match self.call(&Request::Directory { path: path.into() }) {
            Ok(Reply::Directory(children)) => Ok(children),
            Ok(other) => Err(XsError::Unexpected(Box::new(other))),
            Err(XsError::Xs(XsErrno::E2BIG)) => directory_parts(self, path),
            Err(e) => Err(e),
        }
    }

    /// A node's permissions, owner first.
    fn get_perms(&mut self, path: &str) -> Result<Perms, XsError> {
        match self.call(&Request::GetPerms { path: path.into() })? {
            Reply::Perms(p) => Ok(p),
            other => Err(XsError::Unexpected(Box::new(other))),
        }
    }

    /// Replaces a node's permissions.
    fn set_perms(&mut self, path: &str, perms: &Perms) -> Result<(), XsError> {
        let req = Request::SetPerms {
            path: path.into(),
            perms: perms.clone(),
        };
        expect_ok(self.call(&req)?)
    }
}

fn expect_ok(reply: Reply) -> Result<(), XsError> {
    match reply {
        Reply::Ok => Ok(()),
        other => Err(XsError::Unexpected(Box::new(other))),
    }
}

/// Reads a long child list part by part; restarts if the node changes in between.
fn directory_parts<O: XsOps + ?Sized>(ops: &mut O, path: &str) -> Result<Vec<String>, XsError> {
    'restart: for _ in 0..super::TRANSACTION_RETRIES {
        let mut children = Vec::new();
        let mut offset: u32 = 0;
        let mut first_gen = None;
        loop {
            let req = Request::DirectoryPart {
                path: path.into(),
                offset,
            };
            let Reply::DirectoryPart {
                generation,
                children: part,
                complete,
            } = ops.call(&req)?
            else {
                return Err(XsError::Xs(XsErrno::EIO));
            };
            if *first_gen.get_or_insert(generation) != generation {
                continue 'restart;
            }
            if part.is_empty() && !complete {
                // A server that makes no progress would loop us forever.
                return Err(XsError::Xs(XsErrno::EIO));
            }
            for c in part {
                let len = u32::try_from(c.len() + 1).map_err(|_| XsError::Xs(XsErrno::E2BIG))?;
                offset = offset.saturating_add(len);
                children.push(c);
            }
            if complete {
                return Ok(children);
            }
        }
    }
    Err(XsError::Xs(XsErrno::EAGAIN))
}

/// An open transaction. Operations through it see its own writes and nothing written by
/// others since it started; [`Transaction::commit`] fails with `EAGAIN` on conflict.
/// Dropping it uncommitted aborts it.
#[derive(Debug)]
pub struct Transaction<'a> {
    xs: &'a mut Xs,
    id: u32,
    ended: bool,
}

impl<'a> Transaction<'a> {
    pub(super) fn new(xs: &'a mut Xs, id: u32) -> Self {
        Self {
            xs,
            id,
            ended: false,
        }
    }

    /// The transaction id xenstored assigned.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn end(&mut self, commit: bool) -> Result<(), XsError> {
        self.ended = true;
        expect_ok(
            self.xs
                .request(self.id, &Request::TransactionEnd { commit })?,
        )
    }

    /// Commits; `Err(XsError::Xs(EAGAIN))` means another writer got in first: retry.
    pub fn commit(mut self) -> Result<(), XsError> {
        self.end(true)
    }

    /// Aborts, discarding every change.
    pub fn abort(mut self) -> Result<(), XsError> {
        self.end(false)
    }
}

impl XsOps for Transaction<'_> {
    fn call(&mut self, req: &Request) -> Result<Reply, XsError> {
        self.xs.request(self.id, req)
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.ended {
            // Best effort: a broken connection has no transaction left to abort.
            let _ = self.end(false);
        }
    }
}
