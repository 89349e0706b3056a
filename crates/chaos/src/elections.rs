//! The election workload: one election, several campaigners, observers, and a fenced
//! resource.
//!
//! Campaigners (each round with a fresh lease they keep alive) campaign on one name through
//! etcd's Election service, each through its own member. The winner writes a shared resource
//! a few times through a fence (a txn guarded by `create_revision(leader key) == rev`, the
//! revision the Campaign answer carried), proclaims a new value now and then, and ends its
//! term by resigning or, now and then, by letting its lease lapse while it goes on writing
//! as if it still led. Observers (one per member) follow the election with `Observe`,
//! reconnecting to the next member whenever their stream breaks.
//!
//! After the run the whole story of the election's keys and of the resource is read back
//! with a watch from the first revision, and the checks judge the answers against it:
//! - owner: a campaigner told it leads with key `k` created at revision `r` had `k`, created
//!   at `r`, become the oldest live key of the election no later than the revision of a
//!   linearizable read it made right after the answer (the answer's own header is the one
//!   of the key's creation, as in etcd, so it says nothing about when the wait ended);
//! - one leader per term: no creation revision is handed out twice, and the leader keys of
//!   the answers, ordered by creation revision, never overlap: each was deleted no later
//!   than the revision the next leader read right after it was told it leads;
//! - observers: each sees leaders in creation-revision order, never going back (a leader's
//!   proclaimed values in revision order), and only keys that did lead, with the values
//!   they had;
//! - fence: every write the resource accepted carries the creation revision of the key that
//!   led at the write's revision (acknowledged or not: the resource's history is read back),
//!   and every acknowledged fenced write is in that history;
//! - live: after the heal, a new campaigner wins.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, LeaderKey, ProclaimOptions, ResignOptions, Txn, TxnOp,
    WatchOptions,
};

use crate::nemesis::Rng;
use crate::workload::{connect, connect_until, run_clients, Connect};

/// The prefix of every key of the workload.
const PREFIX: &str = "elect/";
/// The election's name: its candidates' keys are `elect/job/<lease>`.
const NAME: &str = "elect/job";
/// The fenced resource.
const RESOURCE: &str = "elect/resource";
/// Written after the run: the end of the history read back.
const END: &str = "elect/~end";

/// How the election workload runs.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// Campaigners per member.
    pub campaigners_per_member: usize,
    /// TTL of each campaigner's lease, in seconds.
    pub ttl: i64,
    /// How long a campaigner waits to be elected before giving up on this round.
    pub wait: Duration,
    /// How long a client waits for any other answer.
    pub op_timeout: Duration,
    /// Percent of terms that end with the lease let go rather than a resignation.
    pub lapse_percent: u64,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        Self {
            campaigners_per_member: 2,
            ttl: 2,
            wait: Duration::from_secs(6),
            op_timeout: Duration::from_secs(2),
            lapse_percent: 25,
        }
    }
}

/// How a term ended, as its campaigner saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TermEnd {
    /// Resign answered.
    Resigned,
    /// Resign not answered (the key goes with the lease, revoked or expired).
    ResignUnknown,
    /// The campaigner stopped renewing its lease and wrote until the fence refused it.
    Lapsed,
}

/// One term: a Campaign answer and what its leader did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Term {
    /// The campaigner.
    pub client: usize,
    /// The leader key the answer named.
    pub key: String,
    /// Its creation revision, as the answer said.
    pub rev: i64,
    /// The answer's header revision (the revision of the key's creation, as in etcd).
    pub revision: i64,
    /// The header revision of a linearizable read made right after the answer, if it was
    /// answered: the election had happened by then.
    pub confirmed: Option<i64>,
    /// When Campaign was sent, since the run started.
    pub invoked: Duration,
    /// When it was answered.
    pub elected: Duration,
    /// How the term ended.
    pub end: TermEnd,
    /// Fenced writes refused (the leader key was gone).
    pub fenced_off: usize,
}

/// A fenced write the cluster acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FencedWrite {
    /// The campaigner.
    pub client: usize,
    /// The leader key's creation revision it wrote under.
    pub rev: i64,
    /// The txn's header revision.
    pub revision: i64,
    /// The value written.
    pub value: String,
}

/// What an observer was told: a leader and its value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Observation {
    /// The leader key.
    pub key: String,
    /// Its creation revision.
    pub create_revision: i64,
    /// The revision of the value.
    pub mod_revision: i64,
    /// The value.
    pub value: String,
}

/// A change to a key of the workload, read back after the run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyEvent {
    /// The revision of the change.
    pub revision: i64,
    /// The key.
    pub key: String,
    /// A put (else a delete).
    pub put: bool,
    /// The key's creation revision (0 for a delete).
    pub create_revision: i64,
    /// The value put (empty for a delete).
    pub value: String,
}

/// What an election run recorded.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ElectionHistory {
    /// Every Campaign answer, with what its leader did.
    pub terms: Vec<Term>,
    /// Each observer's observations, in the order it received them (across reconnections).
    pub observers: Vec<Vec<Observation>>,
    /// Fenced writes the cluster acknowledged.
    pub fenced: Vec<FencedWrite>,
    /// Every change to the election's keys and to the resource, in revision order.
    pub events: Vec<KeyEvent>,
    /// Campaign rounds given up (not elected within the wait, or errors).
    pub abandoned: usize,
    /// Whether a campaigner won after the heal.
    pub live: bool,
}

/// One incarnation of a key: created at `create`, deleted at `delete` (if it was).
#[derive(Clone, Debug)]
struct Life {
    key: String,
    create: i64,
    delete: Option<i64>,
    /// `(mod revision, value)` of every put.
    values: Vec<(i64, String)>,
}

impl Life {
    fn alive_at(&self, revision: i64) -> bool {
        self.create <= revision && self.delete.is_none_or(|d| d > revision)
    }
}

/// The election's keys through time, from the events.
struct Story {
    lives: Vec<Life>,
}

impl Story {
    fn new(events: &[KeyEvent]) -> Story {
        let candidate = format!("{NAME}/");
        let mut lives: Vec<Life> = Vec::new();
        let mut current: BTreeMap<&str, usize> = BTreeMap::new();
        for e in events.iter().filter(|e| e.key.starts_with(&candidate)) {
            match (e.put, current.get(e.key.as_str())) {
                (true, Some(&i)) => lives[i].values.push((e.revision, e.value.clone())),
                (true, None) => {
                    current.insert(&e.key, lives.len());
                    lives.push(Life {
                        key: e.key.clone(),
                        create: e.create_revision,
                        delete: None,
                        values: vec![(e.revision, e.value.clone())],
                    });
                }
                (false, Some(&i)) => {
                    lives[i].delete = Some(e.revision);
                    current.remove(e.key.as_str());
                }
                (false, None) => {}
            }
        }
        Story { lives }
    }

    /// The incarnation of `key` created at `create`.
    fn life(&self, key: &str, create: i64) -> Option<&Life> {
        self.lives
            .iter()
            .find(|l| l.key == key && l.create == create)
    }

    /// The leader at `revision`: the live key with the smallest creation revision.
    fn leader_at(&self, revision: i64) -> Option<&Life> {
        self.lives
            .iter()
            .filter(|l| l.alive_at(revision))
            .min_by_key(|l| l.create)
    }

    /// Every revision at which a key was created or deleted: where the leader can change.
    fn changes(&self) -> BTreeSet<i64> {
        self.lives
            .iter()
            .flat_map(|l| std::iter::once(l.create).chain(l.delete))
            .collect()
    }

    /// Every `(key, creation revision)` that led at some revision.
    fn leaders(&self) -> BTreeSet<(String, i64)> {
        self.changes()
            .into_iter()
            .filter_map(|r| self.leader_at(r))
            .map(|l| (l.key.clone(), l.create))
            .collect()
    }

    /// The first revision at which `key` created at `create` led, if it ever did.
    fn elected_at(&self, key: &str, create: i64) -> Option<i64> {
        self.changes().into_iter().find(|&r| {
            self.leader_at(r)
                .is_some_and(|l| l.key == key && l.create == create)
        })
    }
}

/// Whether an answer naming `life` that never led is stale rather than wrong: the key was
/// gone by the read after the answer (or at some point, if that read was not answered).
fn stale(life: &Life, confirmed: Option<i64>) -> bool {
    match (life.delete, confirmed) {
        (Some(deleted), Some(confirmed)) => deleted <= confirmed,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn describe(life: Option<&Life>) -> String {
    match life {
        Some(l) => format!("{} (created at {})", l.key, l.create),
        None => "nobody".to_string(),
    }
}

/// The leader key's creation revision a resource value was written under
/// (`<rev>/<client>/<n>`).
fn tag(value: &str) -> Option<i64> {
    value.split('/').next()?.parse().ok()
}

impl ElectionHistory {
    /// Everything wrong; empty for a pass.
    #[must_use]
    pub fn anomalies(&self) -> Vec<String> {
        let story = Story::new(&self.events);
        let mut problems = Vec::new();
        // Owner: the answer's key led, and did so by the time of the read after the answer.
        for t in &self.terms {
            let Some(life) = story.life(&t.key, t.rev) else {
                problems.push(format!(
                    "client {} was told it leads with {} created at {}, but no such key was created there",
                    t.client, t.key, t.rev
                ));
                continue;
            };
            match (story.elected_at(&t.key, t.rev), t.confirmed) {
                // A stale answer: see `stale_answers`.
                (None, confirmed) if stale(life, confirmed) => {}
                (None, _) => problems.push(format!(
                    "client {} was told it leads with {} (created at {}, deleted at {}), which never was the oldest key",
                    t.client,
                    t.key,
                    t.rev,
                    life.delete.map_or("never".to_string(), |d| d.to_string())
                )),
                (Some(elected), Some(confirmed)) if elected > confirmed => {
                    problems.push(format!(
                        "client {} was told it leads with {} (created at {}) before revision {}, but the leader there was {}; it led only from revision {elected}",
                        t.client,
                        t.key,
                        t.rev,
                        confirmed,
                        describe(story.leader_at(confirmed))
                    ));
                }
                _ => {}
            }
        }
        // One leader per term: unique creation revisions, and no overlap between terms.
        // (An empty term, of a stale answer, overlaps nothing.)
        let stale_terms = self.stale_answers();
        let mut terms: Vec<&Term> = self
            .terms
            .iter()
            .filter(|t| !stale_terms.iter().any(|s| std::ptr::eq(*s, *t)))
            .collect();
        terms.sort_by_key(|t| (t.rev, t.revision));
        for pair in terms.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.rev == b.rev {
                problems.push(format!(
                    "leadership with creation revision {} handed out twice: to client {} ({}) and client {} ({})",
                    a.rev, a.client, a.key, b.client, b.key
                ));
                continue;
            }
            let Some(confirmed) = b.confirmed else {
                continue;
            };
            let deleted = story.life(&a.key, a.rev).and_then(|l| l.delete);
            if deleted.is_none_or(|d| d > confirmed) {
                problems.push(format!(
                    "two leaders: client {} led with {} (created at {}, deleted at {}) when client {} had been told it leads with {} (created at {}) before revision {confirmed}",
                    a.client,
                    a.key,
                    a.rev,
                    deleted.map_or("never".to_string(), |d| d.to_string()),
                    b.client,
                    b.key,
                    b.rev
                ));
            }
        }
        // Observers: in creation-revision order, only real leaders with their real values.
        let leaders = story.leaders();
        for (i, seen) in self.observers.iter().enumerate() {
            for pair in seen.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                let back = b.create_revision < a.create_revision
                    || (b.create_revision == a.create_revision
                        && (b.key != a.key || b.mod_revision < a.mod_revision));
                if back {
                    problems.push(format!(
                        "observer {i} went back: {} (created at {}, value of revision {}) after {} (created at {}, value of revision {})",
                        b.key, b.create_revision, b.mod_revision, a.key, a.create_revision, a.mod_revision
                    ));
                }
            }
            for o in seen {
                if !leaders.contains(&(o.key.clone(), o.create_revision)) {
                    problems.push(format!(
                        "observer {i} was shown {} (created at {}) as leader, which never led",
                        o.key, o.create_revision
                    ));
                    continue;
                }
                let value = story
                    .life(&o.key, o.create_revision)
                    .and_then(|l| l.values.iter().find(|(r, _)| *r == o.mod_revision));
                if value.is_none_or(|(_, v)| *v != o.value) {
                    problems.push(format!(
                        "observer {i} was shown {} with value {:?} of revision {}, which the key never had",
                        o.key, o.value, o.mod_revision
                    ));
                }
            }
        }
        // Fence: every accepted resource write was made under the leader of its revision.
        let resource: Vec<&KeyEvent> = self
            .events
            .iter()
            .filter(|e| e.key == RESOURCE && e.put)
            .collect();
        for e in &resource {
            let leader = story.leader_at(e.revision);
            if tag(&e.value).is_none() || leader.map(|l| l.create) != tag(&e.value) {
                problems.push(format!(
                    "the resource accepted {:?} at revision {}, when the leader was {}",
                    e.value,
                    e.revision,
                    describe(leader)
                ));
            }
        }
        for w in &self.fenced {
            if !resource
                .iter()
                .any(|e| e.revision == w.revision && e.value == w.value)
            {
                problems.push(format!(
                    "client {}'s fenced write {:?} was acknowledged at revision {} but is not in the resource's history",
                    w.client, w.value, w.revision
                ));
            }
        }
        if !self.live {
            problems.push("no campaigner could win after the heal".to_string());
        }
        problems
    }

    /// Campaign answers that name a key which never led and was already deleted: etcd's
    /// recipe (which the service follows) answers once every older key is gone, without
    /// checking that the campaigner's own key is still there, so a campaigner whose lease
    /// expired while it waited (its member paused or cut off) is told it leads with a deleted
    /// key. Such a term is empty; the fence check proves nothing was accepted under it.
    #[must_use]
    pub fn stale_answers(&self) -> Vec<&Term> {
        let story = Story::new(&self.events);
        self.terms
            .iter()
            .filter(|t| {
                story.elected_at(&t.key, t.rev).is_none()
                    && story
                        .life(&t.key, t.rev)
                        .is_some_and(|l| stale(l, t.confirmed))
            })
            .collect()
    }

    /// A readable account.
    #[must_use]
    pub fn timeline(&self) -> String {
        let mut out = String::new();
        for t in self.stale_answers() {
            let _ = writeln!(
                out,
                "stale answer: client {} was told it leads with {} (created at {}), deleted before it was ever the oldest key",
                t.client, t.key, t.rev
            );
        }
        for t in &self.terms {
            let _ = writeln!(
                out,
                "client {} leads with {} created at {} (answer at revision {}, read after it at {:?}): invoked {:?}, elected {:?}, ended {:?}, fenced off {}",
                t.client, t.key, t.rev, t.revision, t.confirmed, t.invoked, t.elected, t.end, t.fenced_off
            );
        }
        for e in &self.events {
            let _ = writeln!(
                out,
                "revision {}: {} {} (created at {}) {:?}",
                e.revision,
                if e.put { "put" } else { "delete" },
                e.key,
                e.create_revision,
                e.value
            );
        }
        for (i, seen) in self.observers.iter().enumerate() {
            let _ = writeln!(out, "observer {i}:");
            for o in seen {
                let _ = writeln!(
                    out,
                    "  {} created at {} value {:?} of revision {}",
                    o.key, o.create_revision, o.value, o.mod_revision
                );
            }
        }
        let _ = writeln!(
            out,
            "fenced writes acknowledged: {}, abandoned rounds: {}, live: {}",
            self.fenced.len(),
            self.abandoned,
            self.live
        );
        out
    }
}

/// What one campaigner recorded.
#[derive(Default)]
struct Part {
    terms: Vec<Term>,
    fenced: Vec<FencedWrite>,
    abandoned: usize,
}

/// Keeps lease `id` alive through `client` until aborted.
fn keep_alive(client: &Client, id: i64) -> tokio::task::JoinHandle<()> {
    let mut client = client.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let renew = async {
                let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                stream.message().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), renew).await;
        }
    })
}

/// A write of the resource guarded by the leader key: `Some(true)` accepted (its revision
/// in `part`), `Some(false)` refused, `None` unknown.
async fn fenced_write(
    client: &mut Client,
    leader: &LeaderKey,
    index: usize,
    n: &mut u64,
    timeout: Duration,
    part: &mut Part,
) -> Option<bool> {
    *n += 1;
    let value = format!("{}/{index}/{n}", leader.rev());
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            leader.key(),
            CompareOp::Equal,
            leader.rev(),
        )])
        .and_then(vec![TxnOp::put(RESOURCE, value.as_str(), None)]);
    match tokio::time::timeout(timeout, client.txn(txn)).await {
        Ok(Ok(r)) if r.succeeded() => {
            part.fenced.push(FencedWrite {
                client: index,
                rev: leader.rev(),
                revision: r.header().map_or(0, |h| h.revision()),
                value,
            });
            Some(true)
        }
        Ok(Ok(_)) => Some(false),
        _ => None,
    }
}

/// One round: a lease, a campaign, a term of fenced writes, its end. Whether it was elected.
async fn round(
    client: &mut Client,
    index: usize,
    n: &mut u64,
    config: &ElectionConfig,
    rng: &mut Rng,
    clock: Instant,
    part: &mut Part,
) -> bool {
    let t = config.op_timeout;
    let Ok(Ok(lease)) = tokio::time::timeout(t, client.lease_grant(config.ttl, None)).await else {
        return false;
    };
    let id = lease.id();
    let keeper = keep_alive(client, id);
    let invoked = clock.elapsed();
    let campaign = client.campaign(NAME, format!("client-{index}"), id);
    let elected = match tokio::time::timeout(config.wait, campaign).await {
        Ok(Ok(r)) => r
            .leader()
            .cloned()
            .map(|leader| (leader, r.header().map_or(0, |h| h.revision()))),
        _ => None,
    };
    let Some((leader, revision)) = elected else {
        keeper.abort();
        let _ = tokio::time::timeout(t, client.lease_revoke(id)).await;
        return false;
    };
    // A linearizable read: whatever made this campaigner the leader had happened by its
    // revision.
    let confirmed = match tokio::time::timeout(t, client.get(RESOURCE, None)).await {
        Ok(Ok(r)) => r.header().map(|h| h.revision()),
        _ => None,
    };
    let mut term = Term {
        client: index,
        key: String::from_utf8_lossy(leader.key()).into_owned(),
        rev: leader.rev(),
        revision,
        confirmed,
        invoked,
        elected: clock.elapsed(),
        end: TermEnd::Resigned,
        fenced_off: 0,
    };
    for _ in 0..1 + rng.below(3) {
        tokio::time::sleep(rng.millis(20, 200)).await;
        if fenced_write(client, &leader, index, n, t, part).await == Some(false) {
            term.fenced_off += 1;
        }
        if rng.chance(30) {
            let proclaim = ProclaimOptions::new().with_leader(leader.clone());
            let value = format!("client-{index}-{n}");
            let _ = tokio::time::timeout(t, client.proclaim(value, Some(proclaim))).await;
        }
    }
    if rng.chance(config.lapse_percent) {
        // Let the lease lapse and go on writing as if still leading: the fence must refuse
        // once the key is gone, and nothing accepted may come after another leader's
        // election.
        keeper.abort();
        term.end = TermEnd::Lapsed;
        let deadline = Instant::now() + Duration::from_secs(config.ttl as u64 + 4);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if fenced_write(client, &leader, index, n, t, part).await == Some(false) {
                term.fenced_off += 1;
                break;
            }
        }
    } else {
        let resign = ResignOptions::new().with_leader(leader.clone());
        if !matches!(
            tokio::time::timeout(t, client.resign(Some(resign))).await,
            Ok(Ok(_))
        ) {
            term.end = TermEnd::ResignUnknown;
        }
        keeper.abort();
    }
    let _ = tokio::time::timeout(t, client.lease_revoke(id)).await;
    part.terms.push(term);
    true
}

async fn campaigner(
    index: usize,
    endpoint: String,
    config: ElectionConfig,
    seed: u64,
    clock: Instant,
    until: Instant,
) -> Part {
    let mut rng = Rng::new(seed ^ 0x0065_6c65_6374 ^ (index as u64).wrapping_mul(0x9e37_79b9));
    let mut part = Part::default();
    let mut n = 0;
    while let Some(mut client) = connect_until(&endpoint, config.op_timeout, until).await {
        while Instant::now() < until {
            if round(
                &mut client,
                index,
                &mut n,
                &config,
                &mut rng,
                clock,
                &mut part,
            )
            .await
            {
                tokio::time::sleep(rng.millis(0, 300)).await;
            } else {
                part.abandoned += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                break;
            }
        }
    }
    part
}

/// Follows the election until `until`, starting on member `first` and moving to the next
/// member whenever the stream breaks.
async fn observer(
    first: usize,
    endpoints: Vec<String>,
    timeout: Duration,
    until: Instant,
) -> Vec<Observation> {
    let mut seen = Vec::new();
    let mut member = first;
    let how = Connect::default();
    while Instant::now() < until {
        let observed = async {
            let mut client = connect(&endpoints[member], timeout, how)
                .await
                .ok_or_else(|| anyhow::anyhow!("no connection"))?;
            let mut stream = tokio::time::timeout(timeout, client.observe(NAME)).await??;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                let Ok(message) = tokio::time::timeout(left, stream.message()).await else {
                    return anyhow::Ok(());
                };
                let Some(response) = message? else {
                    anyhow::bail!("the stream ended");
                };
                if let Some(kv) = response.kv() {
                    seen.push(Observation {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        create_revision: kv.create_revision(),
                        mod_revision: kv.mod_revision(),
                        value: String::from_utf8_lossy(kv.value()).into_owned(),
                    });
                }
            }
        };
        if observed.await.is_err() {
            member = (member + 1) % endpoints.len();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    seen
}

/// Every change under the workload's prefix from the first revision, read with a watch until
/// the end marker written after the run.
async fn read_events(client: &mut Client) -> anyhow::Result<Vec<KeyEvent>> {
    client.put(END, "", None).await?;
    let options = WatchOptions::new().with_prefix().with_start_revision(1);
    let mut stream = client.watch(PREFIX, Some(options)).await?;
    let mut events = Vec::new();
    loop {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .map_err(|_| anyhow::anyhow!("the history's watch stalled"))??
            .ok_or_else(|| anyhow::anyhow!("the history's watch ended"))?;
        anyhow::ensure!(
            !response.canceled(),
            "the history's watch was canceled: {}",
            response.cancel_reason()
        );
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if key == END {
                return Ok(events);
            }
            events.push(KeyEvent {
                revision: kv.mod_revision(),
                put: event.event_type() == EventType::Put,
                create_revision: kv.create_revision(),
                value: String::from_utf8_lossy(kv.value()).into_owned(),
                key,
            });
        }
    }
}

/// Runs the election workload until `until`; then campaigns once more after the heal and
/// reads the election's history back.
///
/// # Errors
/// If a client task fails or the history cannot be read back.
pub async fn run_elections(
    endpoints: Vec<String>,
    config: ElectionConfig,
    seed: u64,
    clock: Instant,
    until: Instant,
) -> anyhow::Result<ElectionHistory> {
    let observers: Vec<_> = (0..endpoints.len())
        .map(|i| tokio::spawn(observer(i, endpoints.clone(), config.op_timeout, until)))
        .collect();
    let parts = run_clients(&endpoints, config.campaigners_per_member, |i, endpoint| {
        campaigner(i, endpoint, config.clone(), seed, clock, until)
    })
    .await?;
    let mut history = ElectionHistory::default();
    for observer in observers {
        history.observers.push(observer.await?);
    }
    for part in parts {
        history.terms.extend(part.terms);
        history.fenced.extend(part.fenced);
        history.abandoned += part.abandoned;
    }
    history.terms.sort_by_key(|t| t.rev);
    // After the heal: someone can win (once the leases left behind have expired).
    let how = Connect {
        request_timeout: false,
        require_leader: false,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut member = 0;
    let mut last = Part::default();
    let mut rng = Rng::new(seed);
    let patient = ElectionConfig {
        wait: Duration::from_secs(10),
        lapse_percent: 0,
        ..config.clone()
    };
    let mut n = 0;
    while !history.live && Instant::now() < deadline {
        if let Some(mut client) = connect(&endpoints[member], config.op_timeout, how).await {
            history.live = round(
                &mut client,
                endpoints.len() * config.campaigners_per_member,
                &mut n,
                &patient,
                &mut rng,
                clock,
                &mut last,
            )
            .await;
        }
        member = (member + 1) % endpoints.len();
    }
    history.terms.extend(last.terms);
    history.fenced.extend(last.fenced);
    let read_how = Connect {
        request_timeout: true,
        require_leader: false,
    };
    let mut admin = connect(&endpoints[0], Duration::from_secs(5), read_how)
        .await
        .ok_or_else(|| anyhow::anyhow!("cannot connect to {}", endpoints[0]))?;
    history.events = read_events(&mut admin).await?;
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: i64, key: &str, create_revision: i64, value: &str) -> KeyEvent {
        KeyEvent {
            revision,
            key: key.to_string(),
            put: true,
            create_revision,
            value: value.to_string(),
        }
    }

    fn delete(revision: i64, key: &str) -> KeyEvent {
        KeyEvent {
            revision,
            key: key.to_string(),
            put: false,
            create_revision: 0,
            value: String::new(),
        }
    }

    fn term(client: usize, key: &str, rev: i64, confirmed: i64) -> Term {
        Term {
            client,
            key: key.to_string(),
            rev,
            revision: rev,
            confirmed: Some(confirmed),
            invoked: Duration::ZERO,
            elected: Duration::ZERO,
            end: TermEnd::Resigned,
            fenced_off: 0,
        }
    }

    fn observation(key: &str, create_revision: i64, mod_revision: i64, value: &str) -> Observation {
        Observation {
            key: key.to_string(),
            create_revision,
            mod_revision,
            value: value.to_string(),
        }
    }

    const A: &str = "elect/job/a";
    const B: &str = "elect/job/b";

    /// A waits for nobody (created at 2, elected there), B queues at 3, A writes at 4 and
    /// resigns at 5, B is elected at 5, writes at 6, proclaims at 7.
    fn good() -> ElectionHistory {
        ElectionHistory {
            terms: vec![term(0, A, 2, 2), term(1, B, 3, 5)],
            observers: vec![vec![
                observation(A, 2, 2, "client-0"),
                observation(B, 3, 3, "client-1"),
                observation(B, 3, 7, "client-1-2"),
            ]],
            fenced: vec![FencedWrite {
                client: 1,
                rev: 3,
                revision: 6,
                value: "3/1/1".to_string(),
            }],
            events: vec![
                put(2, A, 2, "client-0"),
                put(3, B, 3, "client-1"),
                put(4, RESOURCE, 4, "2/0/1"),
                delete(5, A),
                put(6, RESOURCE, 4, "3/1/1"),
                put(7, B, 3, "client-1-2"),
            ],
            abandoned: 0,
            live: true,
        }
    }

    // Proves the checks: a consistent history passes, and each forged breach is reported:
    // an answer naming a key that was not the oldest, a creation revision handed out twice,
    // overlapping terms, an observer going back, an observer shown a key that never led or
    // a value it never had, a resource write accepted under a deposed leader, an acknowledged
    // fenced write missing from the history, and no winner after the heal.
    #[test]
    fn election_checks_catch_each_broken_guarantee() {
        assert_eq!(good().anomalies(), Vec::<String>::new());
        // A campaigner whose key expired while it waited is told it leads: an empty term,
        // not a second leader, as long as nothing is accepted under it.
        let mut with_stale = good();
        with_stale.terms.push(term(2, "elect/job/c", 8, 9));
        with_stale.events.push(put(8, "elect/job/c", 8, "client-2"));
        with_stale.events.push(delete(9, "elect/job/c"));
        assert_eq!(with_stale.anomalies(), Vec::<String>::new());
        assert_eq!(with_stale.stale_answers().len(), 1);
        let mut not_oldest = good();
        not_oldest.terms[1].confirmed = Some(4);
        let mut never_oldest = good();
        never_oldest.terms.push(term(2, "elect/job/c", 8, 9));
        never_oldest
            .events
            .push(put(8, "elect/job/c", 8, "client-2"));
        let mut twice = good();
        twice.terms.push(term(2, B, 3, 5));
        let mut overlap = good();
        // A is deleted only at 8, after B was told it leads by 5 (and B's answer is wrong).
        overlap.events[3] = delete(8, A);
        overlap.events.sort_by_key(|e| e.revision);
        let mut back = good();
        back.observers[0].push(observation(A, 2, 2, "client-0"));
        let mut never_led = good();
        never_led.observers[0].insert(1, observation("elect/job/c", 3, 3, "client-9"));
        let mut wrong_value = good();
        wrong_value.observers[0][2].value = "forged".to_string();
        let mut stale_write = good();
        stale_write.events.push(put(8, RESOURCE, 4, "2/0/2"));
        let mut missing = good();
        missing.fenced[0].revision = 9;
        let mut dead = good();
        dead.live = false;
        for (bad, says) in [
            (not_oldest, "but the leader there was"),
            (never_oldest, "which never was the oldest key"),
            (twice, "handed out twice"),
            (overlap, "two leaders"),
            (back, "went back"),
            (never_led, "which never led"),
            (wrong_value, "which the key never had"),
            (stale_write, "the resource accepted"),
            (missing, "not in the resource's history"),
            (dead, "after the heal"),
        ] {
            let found = bad.anomalies();
            assert!(
                found.iter().any(|p| p.contains(says)),
                "{says:?} not reported: {found:?}"
            );
        }
    }
}
