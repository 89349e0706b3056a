//! The identity file: which cluster and member a data directory belongs to. A member refuses
//! to start on another cluster's data rather than mix two histories.

use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};

use crate::ClusterState;

const FILE_NAME: &str = "identity";
const FORMAT_LINE: &str = "concord-identity v1";

/// The ids a data directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Cluster id.
    pub cluster_id: u64,
    /// Member id.
    pub member_id: u64,
}

impl Identity {
    fn encode(self) -> String {
        format!(
            "{FORMAT_LINE}\ncluster_id={:016x}\nmember_id={:016x}\n",
            self.cluster_id, self.member_id
        )
    }

    fn decode(text: &str) -> Option<Identity> {
        let mut lines = text.lines();
        if lines.next()? != FORMAT_LINE {
            return None;
        }
        let field = |line: Option<&str>, name: &str| {
            u64::from_str_radix(line?.strip_prefix(name)?.strip_prefix('=')?, 16).ok()
        };
        Some(Identity {
            cluster_id: field(lines.next(), "cluster_id")?,
            member_id: field(lines.next(), "member_id")?,
        })
    }
}

/// Checks that `member_dir` belongs to `expected`, or claims an empty one for it.
///
/// # Errors
/// Another cluster's or member's directory, `existing` with no data, an unreadable or
/// unwritable directory.
pub fn check_or_create(
    member_dir: &Path,
    expected: Identity,
    state: ClusterState,
) -> anyhow::Result<()> {
    let path = member_dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found = Identity::decode(&text).with_context(|| {
                format!("data dir identity file {} is not readable", path.display())
            })?;
            if found.cluster_id != expected.cluster_id {
                bail!(
                    "data dir {} belongs to cluster {:x}, not {:x} (--initial-cluster or --initial-cluster-token changed?)",
                    member_dir.parent().unwrap_or(member_dir).display(),
                    found.cluster_id,
                    expected.cluster_id
                );
            }
            if found.member_id != expected.member_id {
                bail!(
                    "data dir {} belongs to member {:x}, not {:x} (--name or peer URLs changed?)",
                    member_dir.parent().unwrap_or(member_dir).display(),
                    found.member_id,
                    expected.member_id
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if state == ClusterState::Existing {
                bail!(
                    "--initial-cluster-state existing needs this member's data in {}, which is empty (joining a running cluster needs membership changes, which are not supported yet)",
                    member_dir.parent().unwrap_or(member_dir).display()
                );
            }
            let has_data =
                member_dir.join("log").exists() || member_dir.join("state.redb").exists();
            if has_data {
                bail!(
                    "data dir {} has data but no identity file; refusing to guess whose it is",
                    member_dir.display()
                );
            }
            write_atomically(member_dir, &path, &expected.encode())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes `text` to `path` so that a crash leaves either no file or the whole file.
fn write_atomically(dir: &Path, path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the identity check: a directory is claimed once, accepted for the same ids, and
    // refused for another cluster or member; `existing` refuses an empty directory.
    #[test]
    fn identity_is_claimed_then_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let member = dir.path().join("member");
        let me = Identity {
            cluster_id: 1,
            member_id: 2,
        };
        let existing = check_or_create(&member, me, ClusterState::Existing).unwrap_err();
        assert!(existing.to_string().contains("existing"), "{existing}");
        check_or_create(&member, me, ClusterState::New).unwrap();
        check_or_create(&member, me, ClusterState::New).unwrap();
        let other = Identity {
            cluster_id: 3,
            member_id: 2,
        };
        let refused = check_or_create(&member, other, ClusterState::New).unwrap_err();
        assert!(
            refused.to_string().contains("belongs to cluster 1, not 3"),
            "{refused}"
        );
        assert_eq!(Identity::decode(&me.encode()), Some(me));
        assert_eq!(Identity::decode("garbage"), None);
    }
}
