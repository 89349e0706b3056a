//! etcd-compatible flags and their validation into a [`Config`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// `concord serve` flags. Names, meanings and defaults are etcd's; every flag can also be set
/// with a `CONCORD_` environment variable (`--initial-cluster` = `CONCORD_INITIAL_CLUSTER`).
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Human-readable name for this member.
    #[arg(long, env = "CONCORD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: "<name>.etcd").
    #[arg(long, env = "CONCORD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic.
    #[arg(
        long,
        env = "CONCORD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,
    /// Client URLs advertised to the rest of the cluster.
    #[arg(
        long,
        env = "CONCORD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "CONCORD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,
    /// This member's peer URLs, advertised to the rest of the cluster.
    #[arg(
        long,
        env = "CONCORD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration: name=peer-url pairs, comma separated.
    #[arg(
        long,
        env = "CONCORD_INITIAL_CLUSTER",
        default_value = "default=http://localhost:2380"
    )]
    pub initial_cluster: String,
    /// Initial cluster state: "new" or "existing".
    #[arg(long, env = "CONCORD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token; keeps clusters started from the same configuration apart.
    #[arg(
        long,
        env = "CONCORD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "CONCORD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to time out.
    #[arg(long, env = "CONCORD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Applied entries between two compactions of the Raft log.
    #[arg(long, env = "CONCORD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Largest client request accepted, in bytes.
    #[arg(long, env = "CONCORD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Most operations in one txn.
    #[arg(long, env = "CONCORD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Log level: debug, info, warn or error.
    #[arg(long, env = "CONCORD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Whether this member starts a new cluster or joins an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `--initial-cluster`.
    New,
    /// Join a running cluster.
    Existing,
}

/// One member of `--initial-cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    /// Its name.
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
    /// Its id, derived from its peer URLs and the cluster token.
    pub id: u64,
}

/// A validated member configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// This member's name.
    pub name: String,
    /// This member's id.
    pub member_id: u64,
    /// The cluster id.
    pub cluster_id: u64,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Client listen addresses.
    pub client_addrs: Vec<SocketAddr>,
    /// Advertised client URLs.
    pub advertise_client_urls: Vec<String>,
    /// Peer listen addresses.
    pub peer_addrs: Vec<SocketAddr>,
    /// The initial members (this one included).
    pub members: Vec<InitialMember>,
    /// New or existing cluster.
    pub cluster_state: ClusterState,
    /// The cluster token.
    pub token: String,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout.
    pub election_timeout: Duration,
    /// Applied entries between log compactions.
    pub snapshot_count: u64,
    /// Largest request.
    pub max_request_bytes: usize,
    /// Most txn operations.
    pub max_txn_ops: usize,
}

/// Why a configuration is refused. Messages are one line, lowercase.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A flag's value is malformed.
    #[error("invalid {flag} {value:?}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The flags contradict each other.
    #[error("{0}")]
    Inconsistent(String),
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Checks that `url` is `http://host:port` and resolves it.
fn parse_url(flag: &'static str, url: &str) -> Result<SocketAddr, ConfigError> {
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        return Err(invalid(flag, url, "TLS (https) is not supported yet"));
    } else {
        return Err(invalid(flag, url, "URL scheme must be http"));
    };
    let host_port = rest.trim_end_matches('/');
    if host_port.contains('/') {
        return Err(invalid(flag, url, "URL must not have a path"));
    }
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| invalid(flag, url, "URL must have a port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(flag, url, "port is not a number from 0 to 65535"))?;
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| invalid(flag, url, format!("cannot resolve host: {e}")))?
        .next()
        .ok_or_else(|| invalid(flag, url, "host resolves to no address"))
}

/// A stable 64-bit digest (FNV-1a, then the SplitMix64 finaliser to spread the bits). Ids
/// must be the same on every member and every start, so no randomness may enter.
fn digest(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0xff)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut z = hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

/// A member's id: a digest of its sorted peer URLs and the cluster token, as etcd derives it
/// (etcd uses SHA-1; only stability and spread matter here).
#[must_use]
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let joined = urls.join(",");
    digest(&[joined.as_bytes(), token.as_bytes()])
}

/// The cluster's id: a digest of the sorted member ids and the token.
#[must_use]
pub fn cluster_id(member_ids: &[u64], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    digest(&[&bytes, token.as_bytes()])
}

fn parse_initial_cluster(value: &str, token: &str) -> Result<Vec<InitialMember>, ConfigError> {
    let flag = "--initial-cluster";
    let mut members: Vec<InitialMember> = Vec::new();
    for pair in split_list(value) {
        let (name, url) = pair
            .split_once('=')
            .ok_or_else(|| invalid(flag, value, format!("{pair:?} is not name=url")))?;
        if name.is_empty() {
            return Err(invalid(flag, value, format!("{pair:?} has an empty name")));
        }
        parse_url(flag, url)?;
        match members.iter_mut().find(|m| m.name == name) {
            Some(member) => member.peer_urls.push(url.to_string()),
            None => members.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
                id: 0,
            }),
        }
    }
    if members.is_empty() {
        return Err(invalid(flag, value, "no members"));
    }
    for member in &mut members {
        member.id = member_id(&member.peer_urls, token);
    }
    let mut urls: Vec<&String> = members.iter().flat_map(|m| &m.peer_urls).collect();
    urls.sort();
    if let Some(pair) = urls.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(invalid(
            flag,
            value,
            format!("peer URL {} appears twice", pair[0]),
        ));
    }
    Ok(members)
}

impl ServeArgs {
    /// Validates the flags.
    ///
    /// # Errors
    /// The first problem found, as one line.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let token = self.initial_cluster_token.clone();
        let members = parse_initial_cluster(&self.initial_cluster, &token)?;
        let advertised_peers = split_list(&self.initial_advertise_peer_urls);
        for url in &advertised_peers {
            parse_url("--initial-advertise-peer-urls", url)?;
        }
        let Some(me) = members.iter().find(|m| m.name == self.name) else {
            return Err(ConfigError::Inconsistent(format!(
                "--initial-cluster {} has no member named {:?} (--name)",
                self.initial_cluster, self.name
            )));
        };
        let mut mine = me.peer_urls.clone();
        mine.sort();
        let mut advertised = advertised_peers.clone();
        advertised.sort();
        if mine != advertised {
            return Err(ConfigError::Inconsistent(format!(
                "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
                self.name,
                me.peer_urls.join(","),
                self.initial_advertise_peer_urls
            )));
        }
        let cluster_state = match self.initial_cluster_state.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return Err(invalid(
                    "--initial-cluster-state",
                    other,
                    "must be \"new\" or \"existing\"",
                ))
            }
        };
        if self.heartbeat_interval == 0 {
            return Err(invalid(
                "--heartbeat-interval",
                &self.heartbeat_interval.to_string(),
                "must be positive",
            ));
        }
        // etcd's rule: the election timeout must be at least five heartbeats.
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ConfigError::Inconsistent(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            )));
        }
        if self.snapshot_count == 0 {
            return Err(invalid("--snapshot-count", "0", "must be positive"));
        }
        if self.max_txn_ops == 0 {
            return Err(invalid("--max-txn-ops", "0", "must be positive"));
        }
        let addrs = |flag: &'static str, value: &str| -> Result<Vec<SocketAddr>, ConfigError> {
            let urls = split_list(value);
            if urls.is_empty() {
                return Err(invalid(flag, value, "no URLs"));
            }
            urls.iter().map(|url| parse_url(flag, url)).collect()
        };
        let advertise_client_urls = split_list(&self.advertise_client_urls);
        for url in &advertise_client_urls {
            parse_url("--advertise-client-urls", url)?;
        }
        let member_ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        Ok(Config {
            name: self.name.clone(),
            member_id: me.id,
            cluster_id: cluster_id(&member_ids, &token),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name))),
            client_addrs: addrs("--listen-client-urls", &self.listen_client_urls)?,
            advertise_client_urls,
            peer_addrs: addrs("--listen-peer-urls", &self.listen_peer_urls)?,
            members,
            cluster_state,
            token,
            heartbeat: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            snapshot_count: self.snapshot_count,
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
        })
    }
}
