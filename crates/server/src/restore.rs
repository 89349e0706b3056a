//! `concord snapshot restore`: the data directory of a member of a new cluster, made from a
//! backup (`etcdctl snapshot save`), with etcd's `snapshot restore` flags.
//!
//! The member's state machine is the backup's (data, revisions, leases); its membership is
//! the new cluster's, from `--initial-cluster`; its log is empty, so that `concord serve`
//! with the same flags bootstraps the new cluster on top of the restored data.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use storage_disk::RedbKvStore;

use crate::identity::{self, Claim, Identity};
use crate::{ClusterState, ServeArgs};

/// Flags of `concord snapshot restore`, as etcd's.
#[derive(Args, Clone, Debug)]
pub struct RestoreArgs {
    /// The backup file (from `etcdctl snapshot save`).
    pub file: PathBuf,
    /// Human-readable name of the member this directory is for.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory to create (default `<name>.etcd`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The new cluster's members, `name=peer-url,...`.
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// The new cluster's token.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Restore a backup without its checksum (as from a copied data file).
    #[arg(long)]
    pub skip_hash_check: bool,
    /// Encrypt the new data directory at rest with the keys of this file (as `concord serve
    /// --encryption-key-file`, which every start of the member then needs): the way to
    /// encrypt the data of an existing cluster.
    #[arg(long)]
    pub encryption_key_file: Option<PathBuf>,
}

/// What [`restore`] made.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The new cluster's id.
    pub cluster_id: u64,
    /// This member's id in it.
    pub member_id: u64,
    /// What the backup held.
    pub status: node::BackupStatus,
}

/// Writes the data directory `args` describe from the backup.
///
/// # Errors
/// Flags that `concord serve` would refuse, a data directory that exists, a backup whose
/// checksum does not match or that does not decode, or a disk that fails.
pub fn restore(args: &RestoreArgs) -> anyhow::Result<Restored> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", args.name)));
    // The same validation as `serve`, so that the directory is the one serve expects.
    let serve = ServeArgs::parse_serve(&[
        "--name",
        &args.name,
        "--data-dir",
        &data_dir.display().to_string(),
        "--initial-cluster",
        &args.initial_cluster,
        "--initial-cluster-token",
        &args.initial_cluster_token,
        "--initial-advertise-peer-urls",
        &args.initial_advertise_peer_urls,
        "--initial-cluster-state",
        "new",
    ])?;
    let config = serve.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    if data_dir.exists() {
        bail!("data-dir {} exists", data_dir.display());
    }
    if !args.file.is_file() {
        bail!("snapshot file {} does not exist", args.file.display());
    }
    let expected = Identity {
        cluster_id: config.cluster_id,
        member_id: config.member_id,
        name: config.name.clone(),
        token: config.token.clone(),
        version: identity::FORMAT_VERSION,
    };
    let keys = crate::load_encryption_keys(args.encryption_key_file.as_deref())?;
    let made = restore_into(&args.file, &data_dir, &expected, args.skip_hash_check, keys);
    if made.is_err() {
        // Nothing half-made stays behind for `serve` to start from.
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    let status = made?;
    Ok(Restored {
        data_dir,
        cluster_id: config.cluster_id,
        member_id: config.member_id,
        status,
    })
}

fn restore_into(
    file: &Path,
    data_dir: &Path,
    expected: &Identity,
    skip_hash_check: bool,
    keys: Option<std::sync::Arc<encryption::KeyRing>>,
) -> anyhow::Result<node::BackupStatus> {
    let found = identity::check(data_dir, expected, ClusterState::New)?;
    debug_assert_eq!(found, Claim::Unclaimed);
    identity::claim(data_dir, expected, &found)?;
    let state = data_dir.join("member").join("state.redb");
    let kv = RedbKvStore::open_with(&state, keys.clone())
        .with_context(|| format!("cannot create the state machine {}", state.display()))?;
    node::restore_backup(file, kv, skip_hash_check, keys.as_ref())
        .map_err(|e| anyhow::anyhow!("cannot restore {}: {e}", file.display()))
}
