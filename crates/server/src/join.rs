//! Joining a running cluster (`--initial-cluster-state existing` on an empty data
//! directory): the member asks the peers named in `--initial-cluster` for the cluster id and
//! the members, and finds itself among them by its advertised peer URLs, as etcd's joining
//! member does. An operator must have added it first (`etcdctl member add`), which chose its
//! id.

use std::time::Duration;

use anyhow::bail;
use node::Member;

use crate::config::same_peer_urls;
use crate::Config;

/// How long the joining member keeps asking its peers.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one peer may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between rounds over the peers.
const RETRY: Duration = Duration::from_millis(200);

/// What a running cluster told the joining member.
#[derive(Clone, Debug)]
pub(crate) struct Joined {
    pub cluster_id: u64,
    /// The joining member's id, chosen when it was added.
    pub member_id: u64,
    /// Every member, this one included.
    pub members: Vec<Member>,
}

/// Asks the other members of `--initial-cluster` for the cluster, until one answers or
/// [`JOIN_TIMEOUT`] passes.
///
/// # Errors
/// No peer to ask, none answered, or the cluster has no member with this member's peer URLs
/// (it was not added) or that member has already started (its data was lost).
pub(crate) async fn ask_cluster(config: &Config, dialer: &tls::Dialer) -> anyhow::Result<Joined> {
    let peers: Vec<&String> = config
        .members
        .iter()
        .filter(|m| m.name != config.name)
        .flat_map(|m| &m.peer_urls)
        .collect();
    let listed = peers
        .iter()
        .map(|u| u.as_str())
        .collect::<Vec<_>>()
        .join(",");
    if peers.is_empty() {
        bail!(
            "--initial-cluster-state existing: --initial-cluster names no other member to ask for the cluster (list the running members' peer URLs)"
        );
    }
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut last_error = String::new();
    let (cluster_id, members) = 'ask: loop {
        for url in &peers {
            match ask(dialer, url).await {
                Ok(answer) => break 'ask answer,
                Err(e) => {
                    tracing::debug!(url = %url, error = %e, "peer did not answer the join");
                    last_error = format!("{url}: {e}");
                }
            }
        }
        if tokio::time::Instant::now() + RETRY >= deadline {
            bail!(
                "cannot join the cluster: no member answered at {listed} within {JOIN_TIMEOUT:?} (last: {last_error})"
            );
        }
        tokio::time::sleep(RETRY).await;
    };
    let advertised = config.advertise_peer_urls.join(",");
    let Some(me) = members
        .iter()
        .find(|m| same_peer_urls(&m.peer_urls, &config.advertise_peer_urls))
    else {
        let known: Vec<String> = members.iter().map(|m| m.peer_urls.join(",")).collect();
        bail!(
            "cannot join the cluster at {listed}: no member has the peer URLs {advertised} (add it first: etcdctl member add {} --peer-urls={advertised}); its members' peer URLs are {}",
            config.name,
            known.join(" ")
        );
    };
    if !me.name.is_empty() {
        bail!(
            "member {:x} ({}, peer URLs {advertised}) has already been bootstrapped, but data dir {} is empty; a member that lost its data must be removed and added again",
            me.id,
            me.name,
            config.data_dir.display()
        );
    }
    tracing::info!(
        member_id = format!("{:x}", me.id),
        cluster_id = format!("{cluster_id:x}"),
        "joining the cluster"
    );
    Ok(Joined {
        cluster_id,
        member_id: me.id,
        members,
    })
}

/// One peer's answer: the cluster id and the members.
async fn ask(dialer: &tls::Dialer, url: &str) -> anyhow::Result<(u64, Vec<Member>)> {
    let (cluster_id, members) = api::peer::ask_members(dialer, url, ASK_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    if members.is_empty() {
        bail!("the member knows no members yet");
    }
    Ok((cluster_id, members))
}
