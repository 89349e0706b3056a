//! A game: items appear in a world that several servers share; each server's players rush
//! for every item, exactly one gets it, and every server learns who.
//!
//! A game master puts `item/<n>` for each new item. Every server follows the world with a
//! watch (resuming from the next revision on another member when its stream breaks); when it
//! learns of a new item, one of its players tries to pick it up: a txn that creates
//! `owner/<n>` only if it does not exist (`create_revision == 0`). The winner is whoever the
//! key names; every server learns it from the same watch. Checks:
//! - exactly one server was told its player got each item (a pickup whose answer was lost is
//!   settled by reading the owner back);
//! - the owner was written once (version 1) and never changed;
//! - every server learned every item's owner through its watch, and they all agree with the
//!   stored owner and with the winner.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::mpsc;

use crate::{connect, within, Common, Report};

/// The game's flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    /// Game servers (each with its own client and watch).
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Players per server.
    #[arg(long, default_value_t = 4)]
    pub players: usize,
    /// Items that appear.
    #[arg(long, default_value_t = 20)]
    pub items: usize,
    /// Milliseconds between two items.
    #[arg(long, default_value_t = 300)]
    pub every_ms: u64,
}

/// What one server saw.
#[derive(Debug, Default)]
struct ServerLog {
    /// Items its player got, by the pickup's answer (or by reading back a lost answer).
    won: Vec<usize>,
    /// Owners learned through the watch, per item, in the order the puts arrived.
    learned: BTreeMap<usize, Vec<String>>,
    /// Pickups whose answer was lost.
    unknown: usize,
    /// Watch streams that broke and were resumed.
    resumed: usize,
}

fn item_key(prefix: &str, n: usize) -> String {
    format!("{prefix}item/{n:04}")
}

fn owner_key(prefix: &str, n: usize) -> String {
    format!("{prefix}owner/{n:04}")
}

/// `(kind, item)` of a key of the world.
fn parse(prefix: &str, key: &str) -> Option<(&'static str, usize)> {
    let rest = key.strip_prefix(prefix)?;
    if let Some(n) = rest.strip_prefix("item/") {
        return Some(("item", n.parse().ok()?));
    }
    Some(("owner", rest.strip_prefix("owner/")?.parse().ok()?))
}

/// Follows the world from `start` with a watch, sending `(kind, item, value)` of every put
/// to `tx`, resuming after the last revision seen on the next member whenever the stream
/// breaks, until `tx` is closed or `until`.
async fn follow(
    config: Config,
    server: usize,
    prefix: String,
    start: i64,
    tx: mpsc::UnboundedSender<(&'static str, usize, String)>,
    until: Instant,
) -> usize {
    let mut next = start;
    let mut member = server;
    let mut resumed = 0;
    while Instant::now() < until && !tx.is_closed() {
        let followed = async {
            let mut client = connect(config.common.endpoint(member)).await?;
            let options = WatchOptions::new().with_prefix().with_start_revision(next);
            let mut stream = client.watch(prefix.as_str(), Some(options)).await?;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                let Ok(message) = tokio::time::timeout(left, stream.message()).await else {
                    return anyhow::Ok(());
                };
                let response = message?.ok_or_else(|| anyhow::anyhow!("the watch ended"))?;
                anyhow::ensure!(!response.canceled(), "the watch was canceled");
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    next = kv.mod_revision() + 1;
                    if event.event_type() != EventType::Put {
                        continue;
                    }
                    if let Some((kind, n)) = parse(&prefix, kv.key_str().unwrap_or("")) {
                        let value = kv.value_str().unwrap_or("").to_string();
                        if tx.send((kind, n, value)).is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        };
        if followed.await.is_ok() {
            return resumed;
        }
        resumed += 1;
        member += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    resumed
}

/// One server: learns items and owners from its watch, and sends a player after every new
/// item. Stops once it knows every item's owner, or at `until`.
async fn server(
    index: usize,
    config: Config,
    prefix: String,
    start: i64,
    until: Instant,
) -> ServerLog {
    let mut log = ServerLog::default();
    let mut rng = seeded::Rng::new(config.common.seed ^ ((index as u64 + 1) * 0x6761_6d65));
    let timeout = config.common.timeout();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = tokio::spawn(follow(
        config.clone(),
        index,
        prefix.clone(),
        start,
        tx,
        until,
    ));
    let Ok(mut client) = connect(config.common.endpoint(index)).await else {
        return log;
    };
    while log.learned.len() < config.items {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(Some((kind, n, value))) = tokio::time::timeout(left, rx.recv()).await else {
            break;
        };
        if kind == "owner" {
            log.learned.entry(n).or_default().push(value);
            continue;
        }
        let player = format!("player-{}@server-{index}", rng.below(config.players as u64));
        if pick_up(&mut client, &prefix, n, &player, timeout, &mut log).await {
            log.won.push(n);
        }
    }
    drop(rx);
    log.resumed = watcher.await.unwrap_or(0);
    log
}

/// `player` tries to pick item `n` up: whether it got it.
async fn pick_up(
    client: &mut Client,
    prefix: &str,
    n: usize,
    player: &str,
    timeout: Duration,
    log: &mut ServerLog,
) -> bool {
    let owner = owner_key(prefix, n);
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            owner.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(owner.as_str(), player, None)]);
    if let Some(r) = within(timeout, client.txn(txn)).await {
        return r.succeeded();
    }
    // The answer was lost: the stored owner says whether it was applied.
    log.unknown += 1;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(r) = within(timeout, client.get(owner.as_str(), None)).await {
            return r
                .kvs()
                .first()
                .is_some_and(|kv| kv.value() == player.as_bytes());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Runs the game and checks it.
///
/// # Errors
/// If the world cannot be created or read back.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let prefix = config.common.prefix("game");
    let mut master = connect(config.common.endpoint(0)).await?;
    let created = master.put(format!("{prefix}world"), "open", None).await?;
    let start = created.header().map_or(1, |h| h.revision());
    // Items keep appearing for a while; servers stop once they know every owner.
    let spawn_time = Duration::from_millis(config.every_ms * config.items as u64);
    let until = Instant::now() + spawn_time + Duration::from_secs(30);
    let servers: Vec<_> = (0..config.servers)
        .map(|i| tokio::spawn(server(i, config.clone(), prefix.clone(), start, until)))
        .collect();
    let mut spawn_failures = 0;
    for n in 0..config.items {
        tokio::time::sleep(Duration::from_millis(config.every_ms)).await;
        // Retried until it is known to be there: the servers wait for every item.
        loop {
            if within(
                config.common.timeout(),
                master.put(item_key(&prefix, n), "a sword", None),
            )
            .await
            .is_some()
            {
                break;
            }
            spawn_failures += 1;
            if Instant::now() >= until {
                anyhow::bail!("cannot put item {n}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut logs = Vec::new();
    for s in servers {
        logs.push(s.await?);
    }
    let owners = loop {
        let read = within(
            config.common.timeout(),
            master.get(
                format!("{prefix}owner/"),
                Some(GetOptions::new().with_prefix()),
            ),
        )
        .await;
        if let Some(r) = read {
            break r;
        }
        anyhow::ensure!(Instant::now() < until, "cannot read the owners");
    };
    let stored: BTreeMap<usize, (String, i64)> = owners
        .kvs()
        .iter()
        .filter_map(|kv| {
            let (_, n) = parse(&prefix, kv.key_str().ok()?)?;
            Some((n, (kv.value_str().ok()?.to_string(), kv.version())))
        })
        .collect();
    let mut report = Report::default();
    report.note(format!(
        "{} items, {} servers of {} players: pickups answered late {}, item puts retried {spawn_failures}, watches resumed {}",
        config.items,
        config.servers,
        config.players,
        logs.iter().map(|l| l.unknown).sum::<usize>(),
        logs.iter().map(|l| l.resumed).sum::<usize>(),
    ));
    let mut winners_per_item = vec![Vec::new(); config.items];
    for (server, log) in logs.iter().enumerate() {
        for &n in &log.won {
            if n < config.items {
                winners_per_item[n].push(server);
            }
        }
    }
    let not_one: Vec<(usize, &Vec<usize>)> = winners_per_item
        .iter()
        .enumerate()
        .filter(|(_, w)| w.len() != 1)
        .collect();
    report.check(
        format!(
            "exactly one server was told its player got each item{}",
            not_one.first().map_or(String::new(), |(n, w)| format!(
                " (item {n}: servers {w:?})"
            ))
        ),
        not_one.is_empty(),
    );
    let rewritten: Vec<usize> = stored
        .iter()
        .filter(|(_, (_, version))| *version != 1)
        .map(|(n, _)| *n)
        .collect();
    report.check(
        format!(
            "every item has one owner, written once ({} of {} stored, {} rewritten)",
            stored.len(),
            config.items,
            rewritten.len()
        ),
        stored.len() == config.items && rewritten.is_empty(),
    );
    let mut disagreements = Vec::new();
    for (server, log) in logs.iter().enumerate() {
        for n in 0..config.items {
            let learned = log.learned.get(&n);
            let stored_owner = stored.get(&n).map(|(o, _)| o);
            let agrees =
                matches!((learned, stored_owner), (Some(l), Some(o)) if l.len() == 1 && &l[0] == o);
            if !agrees {
                disagreements.push(format!(
                    "server {server} learned {learned:?} for item {n}, stored {stored_owner:?}"
                ));
            }
        }
        for &n in &log.won {
            let stored_owner = stored.get(&n).map(|(o, _)| o.as_str()).unwrap_or("");
            if !stored_owner.ends_with(&format!("@server-{server}")) {
                disagreements.push(format!(
                    "server {server} was told it got item {n}, owned by {stored_owner:?}"
                ));
            }
        }
    }
    report.check(
        format!(
            "every server learned every owner through its watch, and all agree with the stored owner and the winner{}",
            disagreements
                .first()
                .map_or(String::new(), |d| format!(" (first of {}: {d})", disagreements.len()))
        ),
        disagreements.is_empty(),
    );
    Ok(report)
}
