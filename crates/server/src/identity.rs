//! The identity file: which cluster and member a data directory belongs to. A member refuses
//! to start on another cluster's data rather than mix two histories.
//!
//! Format (text, one `key=value` per line after a version line; unknown keys are ignored so
//! a later version can add fields that an older binary skips):
//!
//! ```text
//! concord-identity v1
//! cluster_id=<16 hex digits>
//! member_id=<16 hex digits>
//! name=<--name>
//! token=<--initial-cluster-token>
//! ```
//!
//! It is written once, on the first start, atomically (temporary file, fsync, rename, fsync
//! of the directory), before any store is created: a directory with stores has an identity.
//!
//! A member of a new cluster derives its ids from its flags, and a later start whose flags
//! give other ids is refused. Version 1 files were written when Concord derived ids its own
//! way (version 2 derives them as etcd does): their ids are kept, checked by `--name` and
//! `--initial-cluster-token` instead. A member that joined a running cluster (`--initial-cluster-state
//! existing`) was given its ids by the cluster: they cannot be derived from flags, so a start
//! with `existing` takes the file's ids, and only checks that `--name` is the one recorded.

use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};

use crate::ClusterState;

/// The identity file's name inside `<data-dir>/member/`.
pub const FILE_NAME: &str = "identity";
const FORMAT_PREFIX: &str = "concord-identity v";
/// The format version new files are written in.
pub const FORMAT_VERSION: u32 = 2;
/// The last version whose ids were not derived as etcd derives them.
const FORMAT_OWN_IDS: u32 = 1;

/// Which cluster and member a data directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Cluster id.
    pub cluster_id: u64,
    /// Member id.
    pub member_id: u64,
    /// The member's `--name` when the directory was claimed.
    pub name: String,
    /// The `--initial-cluster-token` when the directory was claimed.
    pub token: String,
    /// The format version the file was written in ([`FORMAT_VERSION`] for a new one).
    pub version: u32,
}

impl Identity {
    /// The file's text. `name` and `token` have no control characters (the config refuses
    /// them), so each stays on its line.
    fn encode(&self) -> String {
        format!(
            "{FORMAT_PREFIX}{FORMAT_VERSION}\ncluster_id={:016x}\nmember_id={:016x}\nname={}\ntoken={}\n",
            self.cluster_id, self.member_id, self.name, self.token
        )
    }

    /// Parses the file's text; what is wrong with it.
    fn decode(text: &str) -> Result<Identity, String> {
        let mut lines = text.lines();
        let version = lines
            .next()
            .and_then(|line| line.strip_prefix(FORMAT_PREFIX))
            .ok_or("not a concord identity file")?;
        let version = match version.parse::<u32>() {
            Ok(known @ 1..=FORMAT_VERSION) => known,
            Ok(newer) if newer > FORMAT_VERSION => {
                return Err(format!(
                "format version {newer} is newer than this concord understands ({FORMAT_VERSION})"
            ))
            }
            _ => return Err(format!("unknown format version {version:?}")),
        };
        let (mut cluster_id, mut member_id) = (None, None);
        let (mut name, mut token) = (String::new(), String::new());
        for line in lines {
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {line:?} is not key=value"));
            };
            let hex = |value: &str| {
                u64::from_str_radix(value, 16).map_err(|_| format!("{key} {value:?} is not hex"))
            };
            match key {
                "cluster_id" => cluster_id = Some(hex(value)?),
                "member_id" => member_id = Some(hex(value)?),
                "name" => name = value.to_string(),
                "token" => token = value.to_string(),
                _ => {}
            }
        }
        Ok(Identity {
            cluster_id: cluster_id.ok_or("no cluster_id")?,
            member_id: member_id.ok_or("no member_id")?,
            name,
            token,
            version,
        })
    }
}

/// Reads the identity in `member_dir`, if there is one.
///
/// # Errors
/// The file cannot be read or is damaged.
pub fn read(member_dir: &Path) -> anyhow::Result<Option<Identity>> {
    let path = member_dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => Identity::decode(&text).map(Some).map_err(|reason| {
            anyhow::anyhow!("identity file {} is damaged: {reason}", path.display())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Whether a data directory already belongs to this member, as [`check`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// It has this member's identity, as the file records it.
    Ours(Identity),
    /// It is empty or missing: [`claim`] writes the identity (with `existing`, the one the
    /// running cluster gives).
    Unclaimed,
}

/// Checks, without writing anything, that `data_dir` belongs to `expected` or is empty.
/// With `existing`, a directory that has an identity belongs to the member it names
/// whatever its ids (see the module doc) if `--name` matches.
///
/// # Errors
/// Another cluster's or member's directory, a directory with data but no identity, an
/// unreadable or damaged identity file.
pub fn check(data_dir: &Path, expected: &Identity, state: ClusterState) -> anyhow::Result<Claim> {
    let member_dir = data_dir.join("member");
    let Some(found) = read(&member_dir)? else {
        let has_data = member_dir.join("log").exists() || member_dir.join("state.redb").exists();
        if has_data {
            bail!(
                "data dir {} has data but no {FILE_NAME} file; refusing to guess which cluster it belongs to",
                data_dir.display()
            );
        }
        return Ok(Claim::Unclaimed);
    };
    let same_ids = found.cluster_id == expected.cluster_id && found.member_id == expected.member_id;
    if !same_ids && found.version <= FORMAT_OWN_IDS && found.token != expected.token {
        bail!(
            "data dir {} belongs to a cluster with token {:?}, not {:?}",
            data_dir.display(),
            found.token,
            expected.token
        );
    }
    if !same_ids && (state == ClusterState::Existing || found.version <= FORMAT_OWN_IDS) {
        if !found.name.is_empty() && found.name != expected.name {
            bail!(
                "data dir {} belongs to member {:x} ({:?}), not {:?} (wrong --data-dir or --name?)",
                data_dir.display(),
                found.member_id,
                found.name,
                expected.name
            );
        }
        return Ok(Claim::Ours(found));
    }
    if found.cluster_id != expected.cluster_id {
        bail!(
            "data dir {} belongs to cluster {:x}, not {:x} (--initial-cluster/--initial-cluster-token changed?)",
            data_dir.display(),
            found.cluster_id,
            expected.cluster_id
        );
    }
    if found.member_id != expected.member_id {
        bail!(
            "data dir {} belongs to member {:x} ({:?}), not {:x} ({:?}) (wrong --data-dir, or this member's peer URLs changed?)",
            data_dir.display(),
            found.member_id,
            found.name,
            expected.member_id,
            expected.name
        );
    }
    Ok(Claim::Ours(found))
}

/// Makes `data_dir` this member's: writes the identity if [`check`] found the directory
/// unclaimed, then checks that the directory is writable, so a read-only disk is reported
/// as such rather than by a store deep in its startup.
///
/// # Errors
/// The directory cannot be created or written.
pub fn claim(data_dir: &Path, expected: &Identity, found: &Claim) -> anyhow::Result<()> {
    let member_dir = data_dir.join("member");
    match found {
        Claim::Ours(_) => probe_writable(data_dir, &member_dir),
        Claim::Unclaimed => {
            std::fs::create_dir_all(&member_dir)
                .with_context(|| format!("cannot create data dir {}", member_dir.display()))?;
            write_atomically(&member_dir, FILE_NAME, &expected.encode())
                .with_context(|| format!("cannot write in data dir {}", data_dir.display()))
        }
    }
}

/// [`check`], then [`claim`].
#[cfg(test)]
fn check_or_create(
    data_dir: &Path,
    expected: &Identity,
    state: ClusterState,
) -> anyhow::Result<()> {
    let found = check(data_dir, expected, state)?;
    claim(data_dir, expected, &found)
}

/// Creates and removes a file in `member_dir`.
fn probe_writable(data_dir: &Path, member_dir: &Path) -> anyhow::Result<()> {
    let probe = member_dir.join(".write-probe");
    std::fs::File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .with_context(|| format!("data dir {} is not writable", data_dir.display()))
}

/// Writes `text` to `dir/name` so that a crash leaves either no file or the whole file.
fn write_atomically(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, &path)?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(cluster_id: u64, member_id: u64) -> Identity {
        Identity {
            cluster_id,
            member_id,
            name: "a".into(),
            token: "etcd-cluster".into(),
            version: FORMAT_VERSION,
        }
    }

    // Proves the file round-trips, older files without name and token still read, and
    // damaged or newer files are refused with a reason.
    #[test]
    fn identity_file_round_trips() {
        let me = identity(0xdead_beef, 7);
        assert_eq!(Identity::decode(&me.encode()), Ok(me.clone()));
        let old = "concord-identity v1\ncluster_id=00000000deadbeef\nmember_id=0000000000000007\n";
        let decoded = Identity::decode(old).unwrap();
        assert_eq!((decoded.cluster_id, decoded.member_id), (0xdead_beef, 7));
        let with_unknown = format!("{}future=1\n", me.encode());
        assert_eq!(Identity::decode(&with_unknown), Ok(me));
        for (text, reason) in [
            ("garbage", "not a concord identity file"),
            ("concord-identity v3\n", "newer"),
            ("concord-identity v1\nmember_id=1\n", "no cluster_id"),
            ("concord-identity v1\ncluster_id=xyz\n", "not hex"),
        ] {
            let error = Identity::decode(text).unwrap_err();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }

    // Proves the identity check: a directory is claimed once (atomically: no temporary file
    // is left), accepted for the same ids, and refused for another cluster or member;
    // `existing` finds an empty directory unclaimed (the member joins), and takes the ids of
    // a claimed one whatever the flags say, unless the name differs; data without an
    // identity is refused.
    #[test]
    fn identity_is_claimed_then_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let me = identity(1, 2);
        let found = check(&data, &me, ClusterState::Existing).unwrap();
        assert_eq!(found, Claim::Unclaimed);
        assert!(!data.exists(), "a check created the data dir");

        check_or_create(&data, &me, ClusterState::New).unwrap();
        assert_eq!(read(&data.join("member")).unwrap(), Some(me.clone()));
        assert!(!data.join("member").join("identity.tmp").exists());
        check_or_create(&data, &me, ClusterState::New).unwrap();
        check_or_create(&data, &me, ClusterState::Existing).unwrap();
        let joined = identity(7, 8);
        assert_eq!(
            check(&data, &joined, ClusterState::Existing).unwrap(),
            Claim::Ours(me.clone())
        );
        let renamed = Identity {
            name: "b".into(),
            ..joined
        };
        let refused = check(&data, &renamed, ClusterState::Existing).unwrap_err();
        assert!(
            refused.to_string().contains("wrong --data-dir or --name"),
            "{refused}"
        );

        let other_cluster = identity(3, 2);
        let refused = check_or_create(&data, &other_cluster, ClusterState::New).unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!(
                "data dir {} belongs to cluster 1, not 3 (--initial-cluster/--initial-cluster-token changed?)",
                data.display()
            )
        );
        let other_member = identity(1, 5);
        let refused = check_or_create(&data, &other_member, ClusterState::New).unwrap_err();
        assert!(
            refused.to_string().contains("belongs to member 2"),
            "{refused}"
        );

        let orphan = dir.path().join("orphan");
        std::fs::create_dir_all(orphan.join("member").join("log")).unwrap();
        let refused = check_or_create(&orphan, &me, ClusterState::New).unwrap_err();
        assert!(
            refused.to_string().contains("no identity file"),
            "{refused}"
        );
    }

    // Proves a directory claimed by a version 1 file (ids derived Concord's own way, before
    // they were derived as etcd derives them) keeps its ids when the flags give other ids,
    // if the name and token match, and is refused for another token.
    #[test]
    fn version_one_directories_keep_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("member")).unwrap();
        let old = "concord-identity v1\ncluster_id=0000000000000011\nmember_id=0000000000000022\n\
                   name=a\ntoken=etcd-cluster\n";
        std::fs::write(data.join("member").join(FILE_NAME), old).unwrap();
        let derived = identity(1, 2);
        let Claim::Ours(found) = check(&data, &derived, ClusterState::New).unwrap() else {
            panic!("a claimed directory")
        };
        assert_eq!(
            (found.cluster_id, found.member_id, found.version),
            (0x11, 0x22, 1)
        );
        let other_token = Identity {
            token: "other".into(),
            ..derived
        };
        let refused = check(&data, &other_token, ClusterState::New).unwrap_err();
        assert!(refused.to_string().contains("token"), "{refused}");
    }

    // Proves a damaged identity file stops the start with a line naming the file.
    #[test]
    fn damaged_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("member")).unwrap();
        std::fs::write(dir.path().join("member").join(FILE_NAME), "junk").unwrap();
        let refused = check_or_create(dir.path(), &identity(1, 2), ClusterState::New).unwrap_err();
        let refused = format!("{refused:#}");
        assert!(
            refused.contains("identity") && refused.contains("damaged"),
            "{refused}"
        );
    }

    // Proves an unwritable data dir is reported as such (skipped as root, who can write
    // anywhere).
    #[test]
    fn unwritable_data_dir_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        if std::fs::File::create(locked.join("probe")).is_ok() {
            return; // root
        }
        let refused = check_or_create(&locked, &identity(1, 2), ClusterState::New).unwrap_err();
        let refused = format!("{refused:#}");
        assert!(refused.contains("cannot create data dir"), "{refused}");
        assert!(!refused.contains('\n'), "{refused}");
    }
}
