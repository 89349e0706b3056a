//! A flash sale: more shoppers than items; a reservation lives as long as its shopper's
//! session (a lease kept alive), and checkout is fenced by the reservation.
//!
//! The stock is `stock` numbered items. A shopper opens a session (a lease, kept alive), and
//! reserves a free item by creating `hold/<item>` under its lease, in a txn that succeeds only
//! if neither `hold/<item>` nor `sold/<item>` exists. It then thinks a while and checks out
//! with a txn guarded by its hold (`create_revision(hold/<item>)` equal to the revision it
//! created it at) that writes `sold/<item>` and deletes the hold. If the shopper's session
//! dies (it stalls past the lease's TTL, or its member is cut off), the hold is deleted with
//! the lease, the item is free again, and the late checkout is refused. Some shoppers walk
//! away and close their session: their item goes back on sale at once. Checks:
//! - never oversold: every `sold/<item>` was written once (version 1), and no more items are
//!   sold than the stock;
//! - every shopper told "bought" owns the item it was told, and no two shoppers were told
//!   they bought the same item;
//! - once every session has ended, no hold is left.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use crate::{connect, keep_alive, run_clients, sessions_ended_by, within, Common, Report};

/// The shop's flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    /// Items for sale.
    #[arg(long, default_value_t = 5)]
    pub stock: usize,
    /// Shoppers.
    #[arg(long, default_value_t = 12)]
    pub shoppers: usize,
    /// TTL of a shopper's session, in seconds.
    #[arg(long, default_value_t = 2)]
    pub ttl: i64,
    /// Shortest think time between reserving and checking out, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub min_think_ms: u64,
    /// Longest think time between reserving and checking out, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    pub think_ms: u64,
    /// Percent of reservations a shopper walks away from.
    #[arg(long, default_value_t = 20)]
    pub walk_away_percent: u64,
    /// Seconds the sale lasts.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// How a shopper's visit ended.
#[derive(Debug, Default)]
struct Visit {
    /// The item it was told it bought.
    bought: Option<usize>,
    /// Reservations lost before checkout (the session died).
    lost: usize,
    /// Reservations walked away from.
    walked_away: usize,
    /// Checkouts with no answer (then resolved by reading back).
    unknown: usize,
}

fn hold(prefix: &str, item: usize) -> String {
    format!("{prefix}hold/{item:03}")
}

fn sold(prefix: &str, item: usize) -> String {
    format!("{prefix}sold/{item:03}")
}

/// The items neither held nor sold, and whether every item is sold.
async fn free_items(
    client: &mut Client,
    prefix: &str,
    stock: usize,
    timeout: Duration,
) -> Option<(Vec<usize>, bool)> {
    let r = within(
        timeout,
        client.get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        ),
    )
    .await?;
    let mut taken = vec![false; stock];
    let mut sold_count = 0;
    for kv in r.kvs() {
        let key = kv.key_str().unwrap_or("");
        let item = key
            .strip_prefix(&format!("{prefix}hold/"))
            .or_else(|| {
                let s = key.strip_prefix(&format!("{prefix}sold/"));
                sold_count += usize::from(s.is_some());
                s
            })
            .and_then(|i| i.parse::<usize>().ok());
        if let Some(i) = item.filter(|&i| i < stock) {
            taken[i] = true;
        }
    }
    let free = (0..stock).filter(|&i| !taken[i]).collect();
    Some((free, sold_count >= stock))
}

/// One shopper: sessions and reservations until it buys, the stock is gone or the sale ends.
async fn shopper(index: usize, config: Config, prefix: String, until: Instant) -> Visit {
    let mut visit = Visit::default();
    let mut rng = seeded::Rng::new(config.common.seed ^ ((index as u64 + 1) * 0x5eed_5117));
    let timeout = config.common.timeout();
    let me = format!("shopper-{index}");
    let Ok(mut client) = connect(config.common.endpoint(index)).await else {
        return visit;
    };
    // Shoppers arrive over the first second.
    tokio::time::sleep(rng.millis(0, 1000)).await;
    'sessions: while Instant::now() < until {
        let Some(lease) = within(timeout, client.lease_grant(config.ttl, None)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let id = lease.id();
        let keeper = keep_alive(&client, id, config.ttl);
        while Instant::now() < until {
            let Some((free, sold_out)) =
                free_items(&mut client, &prefix, config.stock, timeout).await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if sold_out {
                keeper.abort();
                break 'sessions;
            }
            if free.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let item = free[rng.below(free.len() as u64) as usize];
            let reserve = Txn::new()
                .when(vec![
                    Compare::create_revision(hold(&prefix, item), CompareOp::Equal, 0),
                    Compare::create_revision(sold(&prefix, item), CompareOp::Equal, 0),
                ])
                .and_then(vec![TxnOp::put(
                    hold(&prefix, item),
                    me.as_str(),
                    Some(PutOptions::new().with_lease(id)),
                )]);
            let Some(reserved) = within(timeout, client.txn(reserve)).await else {
                // Unknown: if it was applied, the hold goes with the session.
                keeper.abort();
                let _ = within(timeout, client.lease_revoke(id)).await;
                continue 'sessions;
            };
            if !reserved.succeeded() {
                continue;
            }
            let held_at = reserved.header().map_or(0, |h| h.revision());
            let think = rng.millis(
                config.min_think_ms,
                config.think_ms.max(config.min_think_ms + 1),
            );
            tokio::time::sleep(think).await;
            if rng.chance(config.walk_away_percent) {
                visit.walked_away += 1;
                keeper.abort();
                let _ = within(timeout, client.lease_revoke(id)).await;
                break 'sessions;
            }
            let checkout = Txn::new()
                .when(vec![Compare::create_revision(
                    hold(&prefix, item),
                    CompareOp::Equal,
                    held_at,
                )])
                .and_then(vec![
                    TxnOp::put(sold(&prefix, item), me.as_str(), None),
                    TxnOp::delete(hold(&prefix, item), None),
                ]);
            let outcome = match within(timeout, client.txn(checkout)).await {
                Some(r) => Some(r.succeeded()),
                None => {
                    visit.unknown += 1;
                    // Read back whether the checkout was applied.
                    let deadline = Instant::now() + Duration::from_secs(15);
                    let mut known = None;
                    while known.is_none() && Instant::now() < deadline {
                        let read = within(timeout, client.get(sold(&prefix, item), None)).await;
                        known = read.map(|r| {
                            r.kvs()
                                .first()
                                .is_some_and(|kv| kv.value() == me.as_bytes())
                        });
                    }
                    known
                }
            };
            match outcome {
                Some(true) => {
                    visit.bought = Some(item);
                    keeper.abort();
                    let _ = within(timeout, client.lease_revoke(id)).await;
                    break 'sessions;
                }
                _ => {
                    // The hold is gone: the session died under the shopper. A new one.
                    visit.lost += 1;
                    keeper.abort();
                    let _ = within(timeout, client.lease_revoke(id)).await;
                    continue 'sessions;
                }
            }
        }
        keeper.abort();
        let _ = within(timeout, client.lease_revoke(id)).await;
    }
    visit
}

/// Runs the sale and checks it.
///
/// # Errors
/// If the final state cannot be read.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let prefix = config.common.prefix("shop");
    let until = Instant::now() + Duration::from_secs(config.seconds);
    let visits = run_clients(config.shoppers, |i| {
        shopper(i, config.clone(), prefix.clone(), until)
    })
    .await?;
    let mut admin = connect(config.common.endpoint(0)).await?;
    let deadline = sessions_ended_by(config.ttl);
    let (holds, sold_kvs) = loop {
        let read = within(
            config.common.timeout(),
            admin.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await;
        if let Some(r) = read {
            let holds: Vec<String> = r
                .kvs()
                .iter()
                .filter_map(|kv| kv.key_str().ok())
                .filter(|k| k.starts_with(&format!("{prefix}hold/")))
                .map(str::to_string)
                .collect();
            let sold_kvs: Vec<(String, String, i64)> = r
                .kvs()
                .iter()
                .filter(|kv| {
                    kv.key_str()
                        .is_ok_and(|k| k.starts_with(&format!("{prefix}sold/")))
                })
                .map(|kv| {
                    (
                        kv.key_str().unwrap_or("").to_string(),
                        kv.value_str().unwrap_or("").to_string(),
                        kv.version(),
                    )
                })
                .collect();
            if holds.is_empty() || Instant::now() >= deadline {
                break (holds, sold_kvs);
            }
        } else if Instant::now() >= deadline {
            anyhow::bail!("cannot read the shop's state");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut report = Report::default();
    let told: Vec<(usize, usize)> = visits
        .iter()
        .enumerate()
        .filter_map(|(shopper, v)| v.bought.map(|item| (shopper, item)))
        .collect();
    report.note(format!(
        "{} shoppers, {} items: {} bought, {} reservations lost to a dead session, {} walked away, {} checkouts answered late",
        config.shoppers,
        config.stock,
        told.len(),
        visits.iter().map(|v| v.lost).sum::<usize>(),
        visits.iter().map(|v| v.walked_away).sum::<usize>(),
        visits.iter().map(|v| v.unknown).sum::<usize>(),
    ));
    report.check(
        format!(
            "no more items sold than the stock ({} sold of {})",
            sold_kvs.len(),
            config.stock
        ),
        sold_kvs.len() <= config.stock,
    );
    let resold: Vec<&(String, String, i64)> = sold_kvs.iter().filter(|(_, _, v)| *v != 1).collect();
    report.check(
        format!(
            "every item was sold once ({} sold more than once)",
            resold.len()
        ),
        resold.is_empty(),
    );
    let mut buyers: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (shopper, item) in &told {
        buyers.entry(*item).or_default().push(*shopper);
    }
    let shared: Vec<(&usize, &Vec<usize>)> = buyers.iter().filter(|(_, s)| s.len() > 1).collect();
    report.check(
        format!(
            "no two shoppers were told they bought the same item{}",
            shared.first().map_or(String::new(), |(i, s)| format!(
                " (item {i}: shoppers {s:?})"
            ))
        ),
        shared.is_empty(),
    );
    let wrong: Vec<&(usize, usize)> = told
        .iter()
        .filter(|(shopper, item)| {
            !sold_kvs
                .iter()
                .any(|(k, v, _)| *k == sold(&prefix, *item) && *v == format!("shopper-{shopper}"))
        })
        .collect();
    report.check(
        format!(
            "every shopper told it bought an item owns it ({} do not)",
            wrong.len()
        ),
        wrong.is_empty(),
    );
    report.check(
        format!(
            "once every session ended, no reservation is left ({} left)",
            holds.len()
        ),
        holds.is_empty(),
    );
    report.check(
        format!("items were sold ({})", sold_kvs.len()),
        !sold_kvs.is_empty(),
    );
    Ok(report)
}
