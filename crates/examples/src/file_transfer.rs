//! A file transfer: a file split into chunks, each stored and acknowledged one by one, the
//! upload interrupted and resumed, the file verified end to end with SHA-256.
//!
//! The sender first stores a manifest (size, chunk size, every chunk's SHA-256 and the whole
//! file's) and a progress key (`0`) in one txn. Chunk `i` is stored in a txn guarded by
//! `progress == i` that writes the chunk and sets progress to `i + 1`: the answer is the
//! chunk's acknowledgment, and a chunk can never be stored twice or out of order. The first
//! sender is interrupted in the middle of a chunk (its request abandoned, its outcome unknown).
//! A second sender resumes: it checks the manifest is the one of its file, verifies every
//! stored chunk against its checksum, and goes on from the progress key. A retried chunk
//! whose first attempt was applied finds progress past it and moves on. Finally a receiver
//! downloads every chunk, verifies each checksum and the whole file's. Checks:
//! - the upload completed (progress equals the chunk count) and every chunk was stored once;
//! - every chunk the receiver read matches its checksum in the manifest;
//! - the received file's SHA-256 equals the manifest's and the original file's.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use sha2::{Digest, Sha256};

use crate::{connect, within, Common, Report};

/// The transfer's flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    /// Bytes in the file.
    #[arg(long, default_value_t = 1 << 20)]
    pub size: usize,
    /// Bytes per chunk.
    #[arg(long, default_value_t = 64 << 10)]
    pub chunk_size: usize,
    /// Chunks the first sender stores before it is interrupted.
    #[arg(long, default_value_t = 5)]
    pub interrupt_after: usize,
    /// Milliseconds a sender waits between chunks (a slow link).
    #[arg(long, default_value_t = 0)]
    pub pace_ms: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The file's description: `size chunk_size file_sha256` then one chunk checksum a line.
struct Manifest {
    size: usize,
    chunk_size: usize,
    file: String,
    chunks: Vec<String>,
}

impl Manifest {
    fn of(data: &[u8], chunk_size: usize) -> Manifest {
        Manifest {
            size: data.len(),
            chunk_size,
            file: sha256(data),
            chunks: data.chunks(chunk_size).map(sha256).collect(),
        }
    }

    fn encode(&self) -> String {
        let mut text = format!("{} {} {}\n", self.size, self.chunk_size, self.file);
        for c in &self.chunks {
            text.push_str(c);
            text.push('\n');
        }
        text
    }

    fn decode(text: &str) -> Option<Manifest> {
        let mut lines = text.lines();
        let mut head = lines.next()?.split(' ');
        Some(Manifest {
            size: head.next()?.parse().ok()?,
            chunk_size: head.next()?.parse().ok()?,
            file: head.next()?.to_string(),
            chunks: lines.map(str::to_string).collect(),
        })
    }
}

struct Keys {
    manifest: String,
    progress: String,
    prefix: String,
}

impl Keys {
    fn chunk(&self, i: usize) -> String {
        format!("{}chunk/{i:06}", self.prefix)
    }
}

/// The progress key's value, read until answered (or `None` after a while).
async fn progress(client: &mut Client, keys: &Keys, timeout: Duration) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(r) = within(timeout, client.get(keys.progress.as_str(), None)).await {
            return r.kvs().first()?.value_str().ok()?.parse().ok();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// What the senders did.
#[derive(Default)]
struct Upload {
    acknowledged: usize,
    retried: usize,
    resumed_at: usize,
    verified_on_resume: usize,
}

/// Stores chunks from the progress key on, until `stop_after` chunks were acknowledged (then
/// starts one more and abandons it in flight) or the file is complete.
async fn send(
    client: &mut Client,
    keys: &Keys,
    data: &[u8],
    config: &Config,
    stop_after: Option<usize>,
    upload: &mut Upload,
) -> anyhow::Result<()> {
    let timeout = config.common.timeout();
    let count = data.len().div_ceil(config.chunk_size);
    let mut next = progress(client, keys, timeout)
        .await
        .ok_or_else(|| anyhow::anyhow!("cannot read the progress"))?;
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while next < count {
        anyhow::ensure!(Instant::now() < deadline, "the upload does not progress");
        let chunk =
            &data[next * config.chunk_size..((next + 1) * config.chunk_size).min(data.len())];
        let txn = Txn::new()
            .when(vec![Compare::value(
                keys.progress.as_str(),
                CompareOp::Equal,
                next.to_string(),
            )])
            .and_then(vec![
                TxnOp::put(keys.chunk(next), chunk.to_vec(), None),
                TxnOp::put(keys.progress.as_str(), (next + 1).to_string(), None),
            ]);
        if stop_after == Some(sent) {
            // Interrupted mid-request: whether this chunk was stored is unknown.
            let mut interrupted = client.clone();
            let in_flight = tokio::spawn(async move { interrupted.txn(txn).await });
            tokio::time::sleep(Duration::from_millis(2)).await;
            in_flight.abort();
            return Ok(());
        }
        match within(timeout, client.txn(txn)).await {
            Some(r) if r.succeeded() => {
                upload.acknowledged += 1;
                sent += 1;
                next += 1;
            }
            _ => {
                // Refused (an earlier attempt was applied) or unknown: the progress key
                // says where to go on.
                upload.retried += 1;
                next = progress(client, keys, timeout)
                    .await
                    .ok_or_else(|| anyhow::anyhow!("cannot read the progress"))?;
            }
        }
        if config.pace_ms > 0 {
            tokio::time::sleep(Duration::from_millis(config.pace_ms)).await;
        }
    }
    Ok(())
}

/// A chunk's stored bytes and version, read until answered.
async fn read_chunk(
    client: &mut Client,
    keys: &Keys,
    i: usize,
    timeout: Duration,
) -> anyhow::Result<Option<(Vec<u8>, i64)>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = within(timeout, client.get(keys.chunk(i), None)).await {
            return Ok(r
                .kvs()
                .first()
                .map(|kv| (kv.value().to_vec(), kv.version())));
        }
        anyhow::ensure!(Instant::now() < deadline, "cannot read chunk {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the transfer and checks it.
///
/// # Errors
/// If the cluster cannot be reached for long enough to finish.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    anyhow::ensure!(
        config.chunk_size > 0 && config.size > 0,
        "an empty transfer"
    );
    let prefix = config.common.prefix("file-transfer");
    let keys = Keys {
        manifest: format!("{prefix}manifest"),
        progress: format!("{prefix}progress"),
        prefix: prefix.clone(),
    };
    let timeout = config.common.timeout();
    let mut rng = seeded::Rng::new(config.common.seed);
    let data: Vec<u8> = (0..config.size).map(|_| rng.below(256) as u8).collect();
    let manifest = Manifest::of(&data, config.chunk_size);
    let mut upload = Upload::default();

    // The first sender: the manifest and progress together, then chunks until interrupted.
    let mut first = connect(config.common.endpoint(0)).await?;
    let begin = Txn::new()
        .when(vec![Compare::create_revision(
            keys.manifest.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![
            TxnOp::put(keys.manifest.as_str(), manifest.encode(), None),
            TxnOp::put(keys.progress.as_str(), "0", None),
        ]);
    first.txn(begin).await?;
    send(
        &mut first,
        &keys,
        &data,
        config,
        Some(config.interrupt_after),
        &mut upload,
    )
    .await?;
    drop(first);

    // The second sender resumes through another member: the manifest must be this file's,
    // and every chunk stored so far must match its checksum.
    let mut second = connect(config.common.endpoint(1)).await?;
    let stored = loop {
        if let Some(r) = within(timeout, second.get(keys.manifest.as_str(), None)).await {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stored = stored
        .kvs()
        .first()
        .and_then(|kv| Manifest::decode(kv.value_str().ok()?))
        .ok_or_else(|| anyhow::anyhow!("no manifest to resume from"))?;
    anyhow::ensure!(
        stored.file == manifest.file,
        "the stored manifest is another file's"
    );
    let resume_at = progress(&mut second, &keys, timeout)
        .await
        .ok_or_else(|| anyhow::anyhow!("cannot read the progress"))?;
    upload.resumed_at = resume_at;
    for i in 0..resume_at {
        let chunk = read_chunk(&mut second, &keys, i, timeout).await?;
        anyhow::ensure!(
            chunk.is_some_and(|(bytes, _)| sha256(&bytes) == stored.chunks[i]),
            "stored chunk {i} does not match its checksum: cannot resume"
        );
        upload.verified_on_resume += 1;
    }
    send(&mut second, &keys, &data, config, None, &mut upload).await?;

    // The receiver, through a third member.
    let mut receiver = connect(config.common.endpoint(2)).await?;
    let done = progress(&mut receiver, &keys, timeout).await;
    let mut received = Vec::with_capacity(manifest.size);
    let mut bad_chunks = Vec::new();
    let mut rewritten = Vec::new();
    for (i, checksum) in stored.chunks.iter().enumerate() {
        match read_chunk(&mut receiver, &keys, i, timeout).await? {
            Some((bytes, version)) => {
                if sha256(&bytes) != *checksum {
                    bad_chunks.push(i);
                }
                if version != 1 {
                    rewritten.push(i);
                }
                received.extend_from_slice(&bytes);
            }
            None => bad_chunks.push(i),
        }
    }
    let mut report = Report::default();
    report.note(format!(
        "{} bytes in {} chunks of {}: the first sender was interrupted after {} acknowledged chunks, the second resumed at chunk {} after verifying {} stored chunks; {} acknowledged in all, {} retried",
        manifest.size,
        manifest.chunks.len(),
        manifest.chunk_size,
        config.interrupt_after,
        upload.resumed_at,
        upload.verified_on_resume,
        upload.acknowledged,
        upload.retried
    ));
    report.check(
        format!(
            "the upload completed (progress {done:?} of {} chunks)",
            manifest.chunks.len()
        ),
        done == Some(manifest.chunks.len()),
    );
    report.check(
        format!(
            "every chunk was stored once ({} stored more than once)",
            rewritten.len()
        ),
        rewritten.is_empty(),
    );
    report.check(
        format!(
            "every received chunk matches its checksum ({} missing or corrupt{})",
            bad_chunks.len(),
            bad_chunks
                .first()
                .map_or(String::new(), |i| format!(", first chunk {i}"))
        ),
        bad_chunks.is_empty(),
    );
    let received_sha = sha256(&received);
    report.check(
        format!(
            "the received file's SHA-256 {received_sha} equals the manifest's and the original's ({})",
            manifest.file
        ),
        received_sha == stored.file && received_sha == manifest.file,
    );
    Ok(report)
}
