//! Encryption at rest on a real cluster (`--encryption-key-file`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::Cluster;

use crate::snapshot::SNAPSHOT_INSTALLED_LOG;
use crate::{assert_acked_present, binary, read_prefix, Writers, ELECTION_DEADLINE};

/// Writes a key file holding `key` (64 hex digits), private to its owner.
fn write_key_file(path: &Path, key: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("{key}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A directory holding a key file whose key is `byte` (two hex digits) repeated: the
/// directory (removed when dropped), the file, the file as a flag value.
fn new_key_file(byte: &str) -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("at-rest.key");
    write_key_file(&file, &byte.repeat(32));
    let flag = file.display().to_string();
    (dir, file, flag)
}

/// Restarts member `i` and checks that it exits with an error whose log says `why`.
fn assert_refuses_to_start(cluster: &mut Cluster, i: usize, why: &str) {
    cluster.restart(i).unwrap();
    let status = cluster.wait_exit(i, Duration::from_secs(30)).unwrap();
    assert!(!status.success(), "member {i} started; expected: {why}");
    let log = cluster.current_log(i);
    assert!(log.contains(why), "member {i} did not say {why:?}: {log}");
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

// Proves, on a 3-member cluster with encryption at rest: writes go on through a kill -9 of
// the leader, the killed member comes back and catches up through a snapshot (sent to it,
// spooled and installed), and nothing acknowledged is lost on any member; afterwards no key
// or value written appears in any file of any data directory; and a member started with
// another key refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_cluster_keeps_no_plaintext_on_disk_and_survives_kill_9() {
    let (_keys, key_file, key_flag) = new_key_file("5a");
    let mut cluster = Cluster::start(
        binary(),
        3,
        &[
            "--encryption-key-file",
            &key_flag,
            "--snapshot-count",
            "300",
        ],
    )
    .unwrap();
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let writers = Writers::start(&cluster, &[0, 1, 2], 4, "sealed-secret");
    writers
        .wait_acked(200, Duration::from_secs(30))
        .await
        .unwrap();
    cluster.kill(leader);
    let before = writers.acked();
    // Enough writes while it is down that the others compact their logs past it.
    writers
        .wait_acked(before + 1500, Duration::from_secs(90))
        .await
        .expect("writes go on after the leader is killed");
    cluster.restart(leader).unwrap();
    testkit::eventually(
        Duration::from_secs(60),
        "the restarted member installs a snapshot",
        || {
            let installed = cluster.current_log(leader).contains(SNAPSHOT_INSTALLED_LOG);
            async move {
                if installed {
                    Ok(())
                } else {
                    anyhow::bail!("no snapshot installed yet")
                }
            }
        },
    )
    .await
    .unwrap();
    let acked = writers.finish().await;
    for i in 0..3 {
        let found = read_prefix(&cluster, i, "sealed-secret/").await.unwrap();
        assert_acked_present(&acked, &found, &format!("on member {i}"));
    }

    cluster.stop_all();
    let mut checked = 0;
    for i in 0..3 {
        for file in files_under(&cluster.data_dir(i)) {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(13).any(|w| w == b"sealed-secret"),
                "{} holds a key or value in the clear",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} files in the data directories");

    write_key_file(&key_file, &"a5".repeat(32));
    assert_refuses_to_start(&mut cluster, 0, "which the key file does not hold");
}

// Proves backups of an encrypted member are encrypted too: `etcdctl snapshot save` keeps the
// file (its checksum is where etcdctl looks for it), no key or value appears in it, `concord
// snapshot status` needs the key file and then reads it, and `concord snapshot restore` with
// the key file makes an encrypted data directory holding every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_members_save_encrypted_backups_that_restore_with_the_key() {
    use proto::etcdserverpb::PutRequest;
    use std::process::Command;

    let (_keys, key_file, key_flag) = new_key_file("3c");
    let mut cluster = Cluster::start(binary(), 1, &["--encryption-key-file", &key_flag]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let mut kv = cluster.kv(0);
    for i in 0..500 {
        let put = PutRequest {
            key: format!("sealed-backup/{i:04}").into_bytes(),
            value: format!("sealed-backup-value-{i}").into_bytes(),
            ..Default::default()
        };
        kv.put(put).await.unwrap();
    }
    let saved = cluster.dir().join("saved.db");
    let out = cluster
        .etcdctl(0, &["snapshot", "save", saved.to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "snapshot save: {out:?}");
    let bytes = std::fs::read(&saved).unwrap();
    assert!(!bytes.windows(13).any(|w| w == b"sealed-backup"));

    let status = |with_key: bool| {
        let mut command = Command::new(binary());
        command
            .args(["snapshot", "status", "-w", "json"])
            .arg(&saved);
        if with_key {
            command.args(["--encryption-key-file", &key_flag]);
        }
        command.output().unwrap()
    };
    let refused = status(false);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("encrypted backup"), "{stderr}");
    let read = status(true);
    assert!(read.status.success(), "{read:?}");
    let json = String::from_utf8_lossy(&read.stdout);
    assert!(json.contains("\"revision\":501"), "{json}");

    let restored = cluster.dir().join("restored");
    let out = Command::new(binary())
        .args(["snapshot", "restore"])
        .arg(&saved)
        .args([
            "--name",
            "solo",
            "--initial-cluster",
            "solo=http://localhost:2380",
        ])
        .arg("--data-dir")
        .arg(&restored)
        .args(["--encryption-key-file", &key_flag])
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {out:?}");
    let state = restored.join("member").join("state.redb");
    assert!(encryption::is_sealed(&state).unwrap());
    for file in files_under(&restored) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(13).any(|w| w == b"sealed-backup"),
            "{} holds a key or value in the clear",
            file.display()
        );
    }
    let kv = storage_disk::RedbKvStore::open_with(
        &state,
        Some(std::sync::Arc::new(
            encryption::KeyRing::load(&key_file).unwrap(),
        )),
    )
    .unwrap();
    let mut found = 0;
    use storage::{KvSnapshot as _, KvStore as _};
    let view = kv.snapshot().unwrap();
    for table in storage::Table::ALL {
        view.scan(table, b"", None, &mut |_, value| {
            found += usize::from(value.windows(20).any(|w| w == b"sealed-backup-value-"));
            true
        })
        .unwrap();
    }
    assert_eq!(found, 500, "restored values");
}

/// Puts `count` keys `<prefix>/<n>` through member 0.
async fn put_keys(cluster: &Cluster, prefix: &str, count: usize) {
    use proto::etcdserverpb::PutRequest;
    let mut kv = cluster.kv(0);
    for i in 0..count {
        let put = PutRequest {
            key: format!("{prefix}/{i:04}").into_bytes(),
            value: format!("value {i}").into_bytes(),
            ..Default::default()
        };
        kv.put(put).await.unwrap();
    }
}

// Proves key rotation: after the key file gains a new first key, a member restarts, reads
// what the old key sealed and writes on under the new key; the old key alone then no longer
// opens the data (the new writes need the new key), and the start fails naming a key id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_seals_new_writes_and_old_data_stays_readable() {
    let (old, new) = ("11".repeat(32), "22".repeat(32));
    let (_keys, key_file, key_flag) = new_key_file("11");
    let mut cluster = Cluster::start(binary(), 1, &["--encryption-key-file", &key_flag]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    put_keys(&cluster, "before", 100).await;
    cluster.stop(0);

    write_key_file(&key_file, &format!("{new}\n{old}"));
    cluster.restart(0).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    assert_eq!(
        read_prefix(&cluster, 0, "before/").await.unwrap().len(),
        100
    );
    put_keys(&cluster, "after", 100).await;
    cluster.stop(0);

    write_key_file(&key_file, &old);
    // The old key alone does not open what the new one sealed.
    assert_refuses_to_start(&mut cluster, 0, "which the key file does not hold");

    write_key_file(&key_file, &format!("{new}\n{old}"));
    cluster.restart(0).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    assert_eq!(read_prefix(&cluster, 0, "after/").await.unwrap().len(), 100);
}

// Proves a member whose encrypted files were altered on disk stops rather than serve: with
// one byte changed in every sealed block of its state file, or in a frame of its log, it
// refuses to start and says the file fails authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_encrypted_files_stop_the_member() {
    use std::os::unix::fs::FileExt as _;
    let (_keys, _key_file, key_flag) = new_key_file("77");
    let mut cluster = Cluster::start(binary(), 1, &["--encryption-key-file", &key_flag]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    put_keys(&cluster, "altered", 200).await;
    cluster.stop(0);
    let member = cluster.data_dir(0).join("member");

    // The state file: past its header and block 0's two slots, a byte in each block.
    let state = member.join("state.redb");
    let original = std::fs::read(&state).unwrap();
    const HEADER: usize = 64;
    const SLOT: usize = 56 + 4096;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap();
    let mut at = HEADER + 2 * SLOT + 100;
    while at < original.len() {
        file.write_all_at(&[original[at] ^ 0x01], at as u64)
            .unwrap();
        at += SLOT;
    }
    assert_refuses_to_start(&mut cluster, 0, "fails authentication");
    std::fs::write(&state, &original).unwrap();

    // The log: one byte inside the first frame of the first log file.
    let mut logs: Vec<PathBuf> = files_under(&member.join("log"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "raftlog"))
        .collect();
    logs.sort();
    let first = &logs[0];
    let bytes = std::fs::read(first).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(first).unwrap();
    file.write_all_at(&[bytes[64 + 48 + 3] ^ 0x01], 64 + 48 + 3)
        .unwrap();
    assert_refuses_to_start(&mut cluster, 0, "fails authentication");
}
