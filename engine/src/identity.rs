//! Which cluster and node a log belongs to (`walship.identity`), as PostgreSQL's system
//! identifier and Kafka's `meta.properties` cluster id record theirs.
//!
//! Guarantees:
//! - a log opened with [`Options::identity`](crate::Options) records it when it is
//!   created (before its meta file, so a log never exists without it), and every later
//!   open with an identity compares it first: a copy of cluster "prod"'s log opened as
//!   cluster "other", or node n2's log opened as n3, is refused naming both, before
//!   recovery changes a byte;
//! - a log created without an identity adopts the first one it is opened with (and says
//!   so in the log), so embedders can start recording one at any time;
//! - the file is read as a regular file, bounded, and checked with a CRC.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{decode_identity, encode_identity, IDENTITY_LEN};
use crate::layout::{read_state_file, IDENTITY_FILE};
use crate::storage::Storage;

/// The cluster and node a log belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogIdentity {
    /// The cluster (its CA's name).
    pub cluster_id: String,
    /// The node whose log it is.
    pub node_id: String,
}

impl LogIdentity {
    /// Node `node_id` of cluster `cluster_id`.
    pub fn new(cluster_id: impl Into<String>, node_id: impl Into<String>) -> LogIdentity {
        LogIdentity {
            cluster_id: cluster_id.into(),
            node_id: node_id.into(),
        }
    }
}

impl fmt::Display for LogIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} of cluster {}", self.node_id, self.cluster_id)
    }
}

/// The identity recorded in `dir`, if any.
pub(crate) fn load(fs: &dyn Storage, dir: &Path) -> Result<Option<LogIdentity>> {
    let path = dir.join(IDENTITY_FILE);
    let Some(b) = read_state_file(fs, &path, IDENTITY_LEN as u64, "read the log's identity")?
    else {
        return Ok(None);
    };
    let (cluster_id, node_id) =
        decode_identity(&b).map_err(|e| Error::corruption(&path, 0, e.to_string()))?;
    Ok(Some(LogIdentity {
        cluster_id,
        node_id,
    }))
}

/// Records `id` in `dir`, atomically and durably.
pub(crate) fn store(fs: &dyn Storage, dir: &Path, id: &LogIdentity) -> Result<()> {
    let bytes =
        encode_identity(&id.cluster_id, &id.node_id).map_err(|reason| Error::InvalidOptions {
            name: "identity",
            reason,
        })?;
    crate::fsutil::atomic_write_in(fs, dir, IDENTITY_FILE, &bytes)
}

/// Compares what `dir` records with what the log is opened as, recording `wanted` where
/// nothing is recorded yet; returns the identity in force.
pub(crate) fn check(
    fs: &dyn Storage,
    dir: &Path,
    wanted: Option<&LogIdentity>,
) -> Result<Option<LogIdentity>> {
    let recorded = load(fs, dir)?;
    match (recorded, wanted) {
        (Some(r), Some(w)) if r != *w => Err(Error::IdentityMismatch {
            path: dir.join(IDENTITY_FILE),
            recorded: r.to_string(),
            expected: w.to_string(),
        }),
        (Some(r), _) => Ok(Some(r)),
        (None, Some(w)) => {
            store(fs, dir, w)?;
            Ok(Some(w.clone()))
        }
        (None, None) => Ok(None),
    }
}
