//! etcd-compatible flags and their validation into a [`Config`].
//!
//! Flags keep etcd's names, meanings and defaults. Validation checks everything that can be
//! checked without touching the disk or the network, so a bad command line is refused at
//! once with one line. No host name is resolved here: advertised and peer URLs may name hosts
//! that do not resolve yet (a Kubernetes StatefulSet's peers appear in DNS one by one), and
//! listen URLs must be IP addresses or `localhost`, as etcd requires.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sha1::{Digest as _, Sha1};

/// etcd's ceiling on the election timeout (`maxElectionMs`).
const ELECTION_TIMEOUT_MS_MAX: u64 = 50_000;

/// The largest `--max-request-bytes` accepted. A request becomes one log entry, and an entry
/// must fit in one peer message (with room for the envelope), or it could be committed by
/// nobody: the leader could never send it.
pub const MAX_REQUEST_BYTES_CEILING: usize = api::peer::PEER_MESSAGE_BYTES_MAX / 2;

/// `concord serve` flags. Names, meanings and defaults are etcd's; every flag can also be set
/// with a `CONCORD_` environment variable, as etcd reads `ETCD_*` (`--initial-cluster` =
/// `CONCORD_INITIAL_CLUSTER`). A flag given on the command line wins over the environment.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Human-readable name for this member.
    #[arg(long, env = "CONCORD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory [default: <name>.etcd].
    #[arg(long, env = "CONCORD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic, comma separated.
    #[arg(
        long,
        env = "CONCORD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,
    /// This member's client URLs, advertised to the rest of the cluster, comma separated.
    #[arg(
        long,
        env = "CONCORD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic, comma separated.
    #[arg(
        long,
        env = "CONCORD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,
    /// This member's peer URLs, advertised to the rest of the cluster, comma separated.
    #[arg(
        long,
        env = "CONCORD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping: name=peer-url pairs, comma separated.
    /// A name given twice is one member with several peer URLs.
    #[arg(
        long,
        env = "CONCORD_INITIAL_CLUSTER",
        default_value = "default=http://localhost:2380"
    )]
    pub initial_cluster: String,
    /// Initial cluster state: "new" or "existing".
    #[arg(long, env = "CONCORD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token; clusters started from the same --initial-cluster with
    /// different tokens get different ids and never mix.
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
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "CONCORD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "CONCORD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "CONCORD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Raise alarms when backend size exceeds the given quota. 0 means use the default
    /// quota (2 GiB); a negative value disables the quota.
    #[arg(
        long,
        env = "CONCORD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,
    /// Log level: debug, info, warn, error, panic or fatal (RUST_LOG, if set, wins).
    #[arg(long, env = "CONCORD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Period of the progress notifications sent to watchers that asked for them, as a
    /// duration (`10m`, `1m30s`, `500ms`; at least 100ms).
    #[arg(
        long,
        env = "CONCORD_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m0s"
    )]
    pub watch_progress_notify_interval: String,
    /// Check at startup that this member's data equals its peers' (HashKV at the same
    /// revision) before serving; refuse to start if it differs.
    #[arg(
        long,
        env = "CONCORD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub experimental_initial_corrupt_check: bool,
    /// How often the leader compares its data with every member's (HashKV at the same
    /// revision) and raises the CORRUPT alarm on a difference, as a duration; 0 turns the
    /// check off. etcd leaves it off by default; Concord checks every 5 minutes.
    #[arg(
        long,
        env = "CONCORD_EXPERIMENTAL_CORRUPT_CHECK_TIME",
        default_value = "5m0s"
    )]
    pub experimental_corrupt_check_time: String,
    /// Refuse membership changes that would leave too few started or connected voters
    /// for a quorum (etcd's default); `false` skips those checks.
    #[arg(
        long,
        env = "CONCORD_STRICT_RECONFIG_CHECK",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub strict_reconfig_check: bool,
    /// Most learners the cluster may have at once; checked by the leader when a learner is
    /// added.
    #[arg(long, env = "CONCORD_MAX_LEARNERS", default_value_t = 1)]
    pub max_learners: usize,
    /// Where the Raft log goes [default: <data-dir>/member/log]: another disk keeps its
    /// fsyncs apart from the state machine's writes.
    #[arg(long, env = "CONCORD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Encrypts the Raft log, the state machine file and snapshots on disk with the keys in
    /// this file (one key a line, 64 hex digits; the first seals new writes, the others only
    /// open older data). Given when the data directory is created; every later start needs
    /// it. `concord encryption-key` prints a new key.
    #[arg(long, env = "CONCORD_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Most concurrent HTTP/2 streams (requests and watch streams) per client connection.
    #[arg(long, env = "CONCORD_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,
    /// Path to the client server TLS certificate file (PEM, the chain after it); served on
    /// https:// client URLs and re-read when it changes.
    #[arg(long, env = "CONCORD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file (PEM).
    #[arg(long, env = "CONCORD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA bundle (PEM), for client certificates.
    #[arg(long, env = "CONCORD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require clients on https:// URLs to present a certificate from --trusted-ca-file.
    #[arg(long, env = "CONCORD_CLIENT_CERT_AUTH", default_value_t = false, num_args = 0..=1,
        default_missing_value = "true", action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Client TLS with a generated self-signed certificate (kept in
    /// <data-dir>/fixtures/client), when no --cert-file is given.
    #[arg(long, env = "CONCORD_AUTO_TLS", default_value_t = false, num_args = 0..=1,
        default_missing_value = "true", action = clap::ArgAction::Set)]
    pub auto_tls: bool,
    /// Path to the peer TLS certificate file (PEM): served on https:// peer URLs and
    /// presented when dialling other members.
    #[arg(long, env = "CONCORD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer TLS key file (PEM).
    #[arg(long, env = "CONCORD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer TLS trusted CA bundle (PEM): the other members' certificates must
    /// chain to it.
    #[arg(long, env = "CONCORD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require members dialling this one to present a certificate from
    /// --peer-trusted-ca-file.
    #[arg(long, env = "CONCORD_PEER_CLIENT_CERT_AUTH", default_value_t = false, num_args = 0..=1,
        default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// Peer TLS with a generated self-signed certificate (kept in <data-dir>/fixtures/peer),
    /// when no --peer-cert-file is given; members then do not verify each other.
    #[arg(long, env = "CONCORD_PEER_AUTO_TLS", default_value_t = false, num_args = 0..=1,
        default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_auto_tls: bool,
    /// The only common name a member's client certificate may carry.
    #[arg(long, env = "CONCORD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// A host name (or IP address) a member's client certificate must be valid for.
    #[arg(long, env = "CONCORD_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,
    /// TLS 1.2 cipher suites offered, comma separated IANA names (TLS 1.3's are fixed);
    /// empty: rustls's defaults.
    #[arg(long, env = "CONCORD_CIPHER_SUITES", default_value = "")]
    pub cipher_suites: String,
    /// Lowest TLS version spoken: TLS1.2 (default) or TLS1.3.
    #[arg(long, env = "CONCORD_TLS_MIN_VERSION", default_value = "")]
    pub tls_min_version: String,
    /// Highest TLS version spoken: TLS1.2 or TLS1.3 (default).
    #[arg(long, env = "CONCORD_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,
}

/// One address to listen on, and whether it speaks TLS (an `https` URL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    /// The address to bind.
    pub addr: SocketAddr,
    /// Whether connections start with a TLS handshake.
    pub tls: bool,
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
    /// Its peer URLs, canonical (`http://host:port`), in the order given.
    pub peer_urls: Vec<String>,
    /// Its id, derived from its peer URLs and the cluster token ([`member_id`]).
    pub id: u64,
}

/// A validated member configuration: what [`crate::run`] needs, nothing left to parse.
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
    /// Client listen addresses (`localhost` is 127.0.0.1).
    pub client_addrs: Vec<Listen>,
    /// Advertised client URLs, canonical.
    pub advertise_client_urls: Vec<String>,
    /// Peer listen addresses.
    pub peer_addrs: Vec<Listen>,
    /// This member's advertised peer URLs, canonical.
    pub advertise_peer_urls: Vec<String>,
    /// The initial members (this one included), in `--initial-cluster` order.
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
    /// Largest client request, in bytes.
    pub max_request_bytes: usize,
    /// Most operations in one txn.
    pub max_txn_ops: usize,
    /// The backend quota in bytes, `None` when disabled.
    pub quota_backend_bytes: Option<u64>,
    /// The `tracing` level of `--log-level`: `debug`, `info`, `warn` or `error`.
    pub log_level: &'static str,
    /// Period of watch progress notifications.
    pub watch_progress_notify_interval: Duration,
    /// Whether to compare data with the peers before serving.
    pub initial_corrupt_check: bool,
    /// Period of the leader's corruption check; `None` when off.
    pub corrupt_check_interval: Option<Duration>,
    /// The checks this member makes, as leader, before a membership change.
    pub reconfig: api::cluster::ReconfigRules,
    /// The Raft log's directory.
    pub wal_dir: PathBuf,
    /// The key file that seals the data on disk, if encrypted.
    pub encryption_key_file: Option<PathBuf>,
    /// Most concurrent streams per client connection.
    pub max_concurrent_streams: u32,
    /// TLS on the client port's https listeners.
    pub client_tls: Option<TlsPlan>,
    /// TLS on the peer port's https listeners and for dialling https peers.
    pub peer_tls: Option<TlsPlan>,
    /// What the flags asked for that is ignored, to log at startup (etcd's warnings).
    pub warnings: Vec<String>,
}

/// One side's TLS settings, and for auto-TLS the hosts its certificate is made for (made
/// at startup, in the data directory, if not there yet).
#[derive(Clone, Debug)]
pub struct TlsPlan {
    /// The settings; for auto-TLS the certificate and key paths are where they are kept.
    pub settings: tls::TlsSettings,
    /// For auto-TLS: the hosts the self-signed certificate names.
    pub auto_hosts: Option<Vec<String>>,
}

/// Why a configuration is refused. Every message is one lowercase line; where etcd has a
/// well-known message for the same mistake, it is etcd's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A flag's value is malformed.
    #[error("invalid {flag} {value:?}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// Its value, or the part of it that is wrong.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// `--name` is not in `--initial-cluster`.
    #[error("no member named {name:?} (--name) in --initial-cluster {initial_cluster:?}")]
    NameNotInCluster {
        /// `--name`.
        name: String,
        /// `--initial-cluster`.
        initial_cluster: String,
    },
    /// `--initial-cluster` lists peer URLs for this member that it does not advertise
    /// (etcd's message).
    #[error("--initial-cluster has {missing} but missing from --initial-advertise-peer-urls={advertised}")]
    AdvertiseMissingClusterUrl {
        /// The `name=url` pairs missing from the advertised URLs.
        missing: String,
        /// `--initial-advertise-peer-urls`, sorted.
        advertised: String,
    },
    /// This member advertises peer URLs that `--initial-cluster` does not list for it
    /// (etcd's message).
    #[error("--initial-advertise-peer-urls has {missing} but missing from --initial-cluster={name}={advertised}")]
    ClusterMissingAdvertisedUrl {
        /// The advertised URLs missing from `--initial-cluster`.
        missing: String,
        /// `--name`.
        name: String,
        /// `--initial-advertise-peer-urls`.
        advertised: String,
    },
    /// The election timeout is shorter than five heartbeats (etcd's message).
    #[error("--election-timeout[{election_ms}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat_ms}ms]")]
    ElectionTimeoutTooShort {
        /// `--election-timeout`.
        election_ms: u64,
        /// `--heartbeat-interval`.
        heartbeat_ms: u64,
    },
    /// The election timeout is longer than etcd allows (etcd's message).
    #[error("--election-timeout[{election_ms}ms] is too long, and should be set less than {ELECTION_TIMEOUT_MS_MAX}ms")]
    ElectionTimeoutTooLong {
        /// `--election-timeout`.
        election_ms: u64,
    },
    /// TLS settings that cannot work together, or a URL that needs TLS settings not given.
    #[error("{0}")]
    Tls(String),
    /// Two listeners would bind the same address.
    #[error("{addr} is listened on twice (--listen-client-urls and --listen-peer-urls)")]
    ListenTwice {
        /// The address.
        addr: SocketAddr,
    },
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Splits a comma-separated list, ignoring blanks around and between items.
fn split_list(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// An `http://host:port` or `https://host:port` URL. `host` has no brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HttpUrl {
    /// `https`: TLS.
    tls: bool,
    host: String,
    port: u16,
}

impl HttpUrl {
    /// The canonical spelling: lowercase scheme, no trailing slash, IPv6 hosts in brackets,
    /// the port in decimal without leading zeros. Ids are derived from it, so
    /// `http://a:2380/` and `http://a:2380` name the same member.
    fn canonical(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// The address to bind: an IP address, or `localhost` as 127.0.0.1.
    fn bind_addr(&self) -> Option<SocketAddr> {
        let ip = if self.host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.host.parse().ok()?
        };
        Some(SocketAddr::new(ip, self.port))
    }

    /// The canonical spelling with `localhost` as 127.0.0.1, to compare URLs that name the
    /// same address differently (etcd compares them resolved).
    fn comparable(&self) -> String {
        match self.bind_addr() {
            Some(addr) if self.host.eq_ignore_ascii_case("localhost") => HttpUrl {
                tls: self.tls,
                host: addr.ip().to_string(),
                port: self.port,
            }
            .canonical(),
            _ => self.canonical(),
        }
    }
}

/// Parses `http://host:port` or `https://host:port` (a trailing `/` is allowed); the
/// reason it is not one.
fn parse_http_url(url: &str) -> Result<HttpUrl, String> {
    let (tls, rest) = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
        _ => return Err("URL scheme must be http or https".into()),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err("URL must not have a path, query or fragment".into());
    }
    if rest.contains('@') {
        return Err("URL must not have user information".into());
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("unclosed [ in an IPv6 address")?;
        let port = after
            .strip_prefix(':')
            .ok_or("URL must have a port (host:port)")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        (host, port)
    } else {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or("URL must have a port (host:port)")?;
        if host.contains(':') {
            return Err("an IPv6 address must be in brackets, as in http://[::1]:2380".into());
        }
        (host, port)
    };
    if host.is_empty() {
        return Err("URL must have a host".into());
    }
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':');
    if !host.chars().all(valid_char) {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("URL must have a port (host:port) from 0 to 65535".into());
    }
    let port = port
        .parse()
        .map_err(|_| "port is not a number from 0 to 65535".to_string())?;
    Ok(HttpUrl {
        tls,
        host: host.to_string(),
        port,
    })
}

/// Parses a URL that other members or clients will dial: port 0 is meaningless there.
fn parse_dialable(url: &str) -> Result<HttpUrl, String> {
    let parsed = parse_http_url(url)?;
    if parsed.port == 0 {
        return Err("port 0 cannot be dialled".into());
    }
    Ok(parsed)
}

fn parse_advertised(flag: &'static str, url: &str) -> Result<HttpUrl, ConfigError> {
    parse_dialable(url).map_err(|reason| invalid(flag, url, reason))
}

/// Parses a non-empty list of advertised URLs.
fn parse_advertised_list(flag: &'static str, value: &str) -> Result<Vec<HttpUrl>, ConfigError> {
    let urls = split_list(value);
    if urls.is_empty() {
        return Err(invalid(flag, value, "at least one URL is needed"));
    }
    urls.iter().map(|url| parse_advertised(flag, url)).collect()
}

/// Parses `--advertise-client-urls`: as etcd, any URL is accepted, port 0 included (they
/// are only told to clients, which may know better, as a proxy in front does).
fn parse_client_urls(value: &str) -> Result<Vec<HttpUrl>, ConfigError> {
    let flag = "--advertise-client-urls";
    let urls = split_list(value);
    if urls.is_empty() {
        return Err(invalid(flag, value, "at least one URL is needed"));
    }
    urls.iter()
        .map(|url| parse_http_url(url).map_err(|reason| invalid(flag, url, reason)))
        .collect()
}

/// Parses a non-empty list of URLs to listen on into addresses to bind.
fn parse_listen_list(flag: &'static str, value: &str) -> Result<Vec<Listen>, ConfigError> {
    let urls = split_list(value);
    if urls.is_empty() {
        return Err(invalid(flag, value, "at least one URL is needed"));
    }
    let mut addrs: Vec<Listen> = Vec::with_capacity(urls.len());
    for url in urls {
        let parsed = parse_http_url(url).map_err(|reason| invalid(flag, url, reason))?;
        // etcd's rule and words: a listener binds an address, not a name.
        let addr = parsed.bind_addr().ok_or_else(|| {
            invalid(
                flag,
                url,
                "expected IP in URL for binding (or localhost, which is 127.0.0.1)",
            )
        })?;
        if addr.port() != 0 && addrs.iter().any(|l| l.addr == addr) {
            return Err(invalid(flag, url, format!("{addr} is listed twice")));
        }
        addrs.push(Listen {
            addr,
            tls: parsed.tls,
        });
    }
    Ok(addrs)
}

/// The first eight bytes of a SHA-1 digest of `bytes`, big-endian, never 0 (Raft's "no
/// node").
fn digest_id(bytes: &[u8]) -> u64 {
    let digest = Sha1::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
}

/// A member's id, derived as etcd derives it, so that the same flags give the same ids as
/// etcd's (scripts and tests compare them): the first 8 bytes, big-endian, of SHA-1 over the
/// member's peer URLs sorted (canonical, `http://host:port`) and concatenated, then the
/// cluster token. 0 (which Raft reserves) becomes 1. Every member computes the same ids
/// from the same `--initial-cluster` and token, on every start, without talking to the
/// others.
#[must_use]
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    digest_id(&member_bytes(peer_urls, token))
}

/// The id of a member added at runtime (MemberAdd) at `since_epoch` (the time since the Unix
/// epoch): as [`member_id`], with the time appended in decimal, as etcd appends it (etcd
/// writes seconds; nanoseconds here, so that a member removed and added again with the same
/// peer URLs within a second still gets a new id: removed ids are never used again).
#[must_use]
pub fn added_member_id(peer_urls: &[String], token: &str, since_epoch: Duration) -> u64 {
    let mut bytes = member_bytes(peer_urls, token);
    bytes.extend_from_slice(since_epoch.as_nanos().to_string().as_bytes());
    digest_id(&bytes)
}

fn member_bytes(peer_urls: &[String], token: &str) -> Vec<u8> {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut bytes: Vec<u8> = urls.concat().into_bytes();
    bytes.extend_from_slice(token.as_bytes());
    bytes
}

/// The canonical spelling of a peer URL a member can be reached at (`http://host:port`),
/// or `None` if it is not one.
#[must_use]
pub fn canonical_peer_url(url: &str) -> Option<String> {
    parse_dialable(url).ok().map(|url| url.canonical())
}

/// Whether two lists of peer URLs name the same addresses (`localhost` is 127.0.0.1, as in
/// the check of `--initial-advertise-peer-urls`).
#[must_use]
pub(crate) fn same_peer_urls(a: &[String], b: &[String]) -> bool {
    let comparable = |urls: &[String]| -> BTreeSet<String> {
        urls.iter()
            .map(|u| parse_http_url(u).map_or_else(|_| u.clone(), |u| u.comparable()))
            .collect()
    };
    comparable(a) == comparable(b)
}

/// The cluster's id, as etcd derives it: the first 8 bytes, big-endian, of SHA-1 over the
/// initial member ids sorted, each as 8 big-endian bytes (they already carry the token);
/// 0 becomes 1.
#[must_use]
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    digest_id(&bytes)
}

/// Parses `--initial-cluster` as etcd does: `name=url` pairs; a name given twice is one
/// member with two peer URLs. A URL may belong to one member only.
fn parse_initial_cluster(value: &str, token: &str) -> Result<Vec<InitialMember>, ConfigError> {
    let flag = "--initial-cluster";
    let mut members: Vec<InitialMember> = Vec::new();
    let mut seen = BTreeSet::new();
    for pair in split_list(value) {
        let (name, url) = pair
            .split_once('=')
            .ok_or_else(|| invalid(flag, value, format!("{pair:?} is not name=url")))?;
        let (name, url) = (name.trim(), url.trim());
        if name.is_empty() {
            return Err(invalid(flag, pair, "the member name is empty"));
        }
        // Errors name the whole pair, so the member is clear.
        let url = parse_dialable(url)
            .map_err(|reason| invalid(flag, pair, reason))?
            .canonical();
        if !seen.insert(url.clone()) {
            return Err(invalid(
                flag,
                value,
                format!("peer URL {url} appears twice"),
            ));
        }
        match members.iter_mut().find(|m| m.name == name) {
            Some(member) => member.peer_urls.push(url),
            None => members.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url],
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
    let mut ids = BTreeSet::new();
    if let Some(twin) = members.iter().find(|m| !ids.insert(m.id)) {
        // Two distinct URL sets colliding in 64 bits: astronomically unlikely, but the ids
        // would alias, so refuse rather than run a cluster that cannot tell them apart.
        return Err(invalid(
            flag,
            value,
            format!("member {} has the same id as another member", twin.name),
        ));
    }
    Ok(members)
}

/// The `tracing` level for etcd's `--log-level` (etcd's `panic` and `fatal` log errors only).
/// The shortest progress-notification period accepted.
const WATCH_PROGRESS_NOTIFY_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// Parses a duration as etcd's flags take one (Go's `time.ParseDuration`): a sequence of
/// decimal numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), or a bare `0`.
fn parse_duration(flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        invalid(
            flag,
            value,
            "must be a duration such as 10m, 1m30s or 500ms",
        )
    };
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = value;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

fn parse_log_level(value: &str) -> Result<&'static str, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "debug" => Ok("debug"),
        "info" => Ok("info"),
        "warn" => Ok("warn"),
        "error" | "dpanic" | "panic" | "fatal" => Ok("error"),
        _ => Err(invalid(
            "--log-level",
            value,
            "must be debug, info, warn, error, panic or fatal",
        )),
    }
}

/// Refuses control characters, which would break the identity file's lines and log lines.
fn check_printable(flag: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.chars().any(char::is_control) {
        return Err(invalid(flag, value, "must not contain control characters"));
    }
    Ok(())
}

/// This member's advertised peer URLs must be exactly its `--initial-cluster` entry
/// (etcd's `advertiseMatchesCluster`, with `localhost` equal to 127.0.0.1 instead of a DNS
/// lookup).
fn check_advertised_peers(
    name: &str,
    me: &InitialMember,
    advertised: &[HttpUrl],
) -> Result<(), ConfigError> {
    let comparable = |url: &str| {
        parse_http_url(url)
            .map(|u| u.comparable())
            .unwrap_or_else(|_| url.to_string())
    };
    let in_cluster: BTreeSet<String> = me.peer_urls.iter().map(|u| comparable(u)).collect();
    let advertised_set: BTreeSet<String> = advertised.iter().map(HttpUrl::comparable).collect();
    let mut advertised_sorted: Vec<String> = advertised.iter().map(HttpUrl::canonical).collect();
    advertised_sorted.sort();
    let missing: Vec<String> = me
        .peer_urls
        .iter()
        .filter(|u| !advertised_set.contains(&comparable(u)))
        .map(|u| format!("{name}={u}"))
        .collect();
    if !missing.is_empty() {
        return Err(ConfigError::AdvertiseMissingClusterUrl {
            missing: missing.join(","),
            advertised: advertised_sorted.join(","),
        });
    }
    let extra: Vec<String> = advertised
        .iter()
        .filter(|u| !in_cluster.contains(&u.comparable()))
        .map(HttpUrl::canonical)
        .collect();
    if !extra.is_empty() {
        return Err(ConfigError::ClusterMissingAdvertisedUrl {
            missing: extra.join(","),
            name: name.to_string(),
            advertised: advertised_sorted.join(","),
        });
    }
    Ok(())
}

/// The hosts named by a list of URLs (for auto-TLS certificates), unparseable ones skipped.
fn url_hosts(value: &str) -> impl Iterator<Item = String> + '_ {
    split_list(value)
        .into_iter()
        .filter_map(|url| parse_http_url(url).ok())
        .map(|url| url.host)
}

/// A path flag, with an empty value (`--cert-file=`) taken as unset, as etcd takes it.
fn path_flag(value: &Option<PathBuf>) -> Option<PathBuf> {
    value.clone().filter(|p| !p.as_os_str().is_empty())
}

impl ServeArgs {
    /// One side's TLS, as etcd reads its flags: a certificate and key, else auto-TLS's
    /// self-signed one, else none. `listens` and `advertised` are that side's URL lists.
    fn tls_plan(
        &self,
        side: tls::Side,
        data_dir: &std::path::Path,
        urls: [&str; 2],
        warnings: &mut Vec<String>,
    ) -> Result<Option<TlsPlan>, ConfigError> {
        let non_empty = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let (cert, key, ca, client_cert_auth, auto, allowed) = match side {
            tls::Side::Client => (
                path_flag(&self.cert_file),
                path_flag(&self.key_file),
                path_flag(&self.trusted_ca_file),
                self.client_cert_auth,
                self.auto_tls,
                (None, None),
            ),
            tls::Side::Peer => (
                path_flag(&self.peer_cert_file),
                path_flag(&self.peer_key_file),
                path_flag(&self.peer_trusted_ca_file),
                self.peer_client_cert_auth,
                self.peer_auto_tls,
                (
                    non_empty(&self.peer_cert_allowed_cn),
                    non_empty(&self.peer_cert_allowed_hostname),
                ),
            ),
        };
        let (cert_flag, key_flag) = (side.flag("cert-file"), side.flag("key-file"));
        let mut settings = match (cert, key) {
            (Some(cert), Some(key)) => {
                if auto {
                    warnings.push(format!(
                        "{} is ignored: {cert_flag} and {key_flag} are given",
                        side.flag("auto-tls")
                    ));
                }
                tls::TlsSettings::new(side, cert, key)
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::Tls(format!(
                    "{cert_flag} and {key_flag} must be given together"
                )))
            }
            (None, None) if auto => {
                let dir = data_dir.join("fixtures").join(match side {
                    tls::Side::Client => "client",
                    tls::Side::Peer => "peer",
                });
                let mut settings =
                    tls::TlsSettings::new(side, dir.join("cert.pem"), dir.join("key.pem"));
                settings.self_signed = true;
                settings
            }
            (None, None) => {
                if client_cert_auth || ca.is_some() {
                    warnings.push(format!(
                        "{} and {} are ignored: no {cert_flag} and {key_flag} (or {}) are given",
                        side.flag("client-cert-auth"),
                        side.flag("trusted-ca-file"),
                        side.flag("auto-tls")
                    ));
                }
                return Ok(None);
            }
        };
        settings.trusted_ca_file = ca;
        settings.client_cert_auth = client_cert_auth;
        if settings.self_signed && client_cert_auth && settings.trusted_ca_file.is_none() {
            // etcd's auto-TLS drops client-certificate auth: nothing could pass it.
            warnings.push(format!(
                "{} is ignored with {}: self-signed certificates cannot be verified",
                side.flag("client-cert-auth"),
                side.flag("auto-tls")
            ));
            settings.client_cert_auth = false;
        }
        (settings.allowed_cn, settings.allowed_hostname) = allowed;
        if let Some(min) = tls::parse_tls_version("--tls-min-version", &self.tls_min_version)
            .map_err(ConfigError::Tls)?
        {
            settings.min_version = min;
        }
        if let Some(max) = tls::parse_tls_version("--tls-max-version", &self.tls_max_version)
            .map_err(ConfigError::Tls)?
        {
            settings.max_version = max;
        }
        settings.cipher_suites =
            tls::parse_cipher_suites(&self.cipher_suites).map_err(ConfigError::Tls)?;
        settings
            .check()
            .map_err(|e| ConfigError::Tls(e.to_string()))?;
        let auto_hosts = settings.self_signed.then(|| {
            let mut hosts: Vec<String> = urls.iter().flat_map(|list| url_hosts(list)).collect();
            hosts.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
            hosts.sort();
            hosts.dedup();
            hosts
        });
        Ok(Some(TlsPlan {
            settings,
            auto_hosts,
        }))
    }

    /// Validates the flags into a [`Config`]. Reads no file and resolves no name.
    ///
    /// # Errors
    /// The first problem found, as one line.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        if self.name.is_empty() {
            return Err(invalid("--name", "", "must not be empty"));
        }
        check_printable("--name", &self.name)?;
        check_printable("--initial-cluster-token", &self.initial_cluster_token)?;
        let token = self.initial_cluster_token.clone();
        let members = parse_initial_cluster(&self.initial_cluster, &token)?;
        let advertised_peers = parse_advertised_list(
            "--initial-advertise-peer-urls",
            &self.initial_advertise_peer_urls,
        )?;
        let me = members
            .iter()
            .find(|m| m.name == self.name)
            .ok_or_else(|| ConfigError::NameNotInCluster {
                name: self.name.clone(),
                initial_cluster: self.initial_cluster.clone(),
            })?;
        check_advertised_peers(&self.name, me, &advertised_peers)?;
        let member_id = me.id;
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
            return Err(invalid("--heartbeat-interval", "0", "must be positive"));
        }
        // etcd's rule (embed.Config.Validate): `5 * TickMs > ElectionMs` is refused.
        if self.election_timeout < self.heartbeat_interval.saturating_mul(5) {
            return Err(ConfigError::ElectionTimeoutTooShort {
                election_ms: self.election_timeout,
                heartbeat_ms: self.heartbeat_interval,
            });
        }
        if self.election_timeout > ELECTION_TIMEOUT_MS_MAX {
            return Err(ConfigError::ElectionTimeoutTooLong {
                election_ms: self.election_timeout,
            });
        }
        if self.snapshot_count == 0 {
            return Err(invalid("--snapshot-count", "0", "must be positive"));
        }
        if self.max_request_bytes == 0 {
            return Err(invalid("--max-request-bytes", "0", "must be positive"));
        }
        if self.max_request_bytes > MAX_REQUEST_BYTES_CEILING {
            return Err(invalid(
                "--max-request-bytes",
                &self.max_request_bytes.to_string(),
                format!(
                    "must be at most {MAX_REQUEST_BYTES_CEILING} (a request must fit in one peer message)"
                ),
            ));
        }
        if self.max_txn_ops == 0 {
            return Err(invalid("--max-txn-ops", "0", "must be positive"));
        }
        let log_level = parse_log_level(&self.log_level)?;
        let watch_progress_notify_interval = parse_duration(
            "--watch-progress-notify-interval",
            &self.watch_progress_notify_interval,
        )?;
        if watch_progress_notify_interval < WATCH_PROGRESS_NOTIFY_INTERVAL_MIN {
            return Err(invalid(
                "--watch-progress-notify-interval",
                &self.watch_progress_notify_interval,
                "must be at least 100ms",
            ));
        }
        let corrupt_check_interval = Some(parse_duration(
            "--experimental-corrupt-check-time",
            &self.experimental_corrupt_check_time,
        )?)
        .filter(|interval| !interval.is_zero());
        let data_dir = match &self.data_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(invalid("--data-dir", "", "must not be empty"))
            }
            Some(dir) => dir.clone(),
            None => PathBuf::from(format!("{}.etcd", self.name)),
        };
        let client_addrs = parse_listen_list("--listen-client-urls", &self.listen_client_urls)?;
        let peer_addrs = parse_listen_list("--listen-peer-urls", &self.listen_peer_urls)?;
        if let Some(listen) = client_addrs
            .iter()
            .find(|c| c.addr.port() != 0 && peer_addrs.iter().any(|p| p.addr == c.addr))
        {
            return Err(ConfigError::ListenTwice { addr: listen.addr });
        }
        let advertise_client_urls = parse_client_urls(&self.advertise_client_urls)?
            .iter()
            .map(HttpUrl::canonical)
            .collect();
        if self.max_learners == 0 {
            return Err(ConfigError::Invalid {
                flag: "--max-learners",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let mut warnings = Vec::new();
        let client_tls = self.tls_plan(
            tls::Side::Client,
            &data_dir,
            [&self.listen_client_urls, &self.advertise_client_urls],
            &mut warnings,
        )?;
        let peer_tls = self.tls_plan(
            tls::Side::Peer,
            &data_dir,
            [&self.listen_peer_urls, &self.initial_advertise_peer_urls],
            &mut warnings,
        )?;
        // etcd's words for an https listener without TLS settings, and its warnings for
        // TLS settings that an http listener ignores.
        for (listen, url) in client_addrs
            .iter()
            .zip(split_list(&self.listen_client_urls))
        {
            if listen.tls && client_tls.is_none() {
                return Err(ConfigError::Tls(format!("TLS key/cert (--cert-file, --key-file) must be provided for client url {url} with HTTPS scheme")));
            }
            if !listen.tls && client_tls.is_some() {
                warnings.push(format!("the scheme of client url {url} is HTTP while key/cert files are presented; the key/cert files are ignored for it"));
            }
        }
        for (listen, url) in peer_addrs.iter().zip(split_list(&self.listen_peer_urls)) {
            if listen.tls && peer_tls.is_none() {
                return Err(ConfigError::Tls(format!("cannot listen on TLS for {url}: KeyFile and CertFile are not presented (--peer-cert-file, --peer-key-file or --peer-auto-tls)")));
            }
            if !listen.tls && peer_tls.is_some() {
                warnings.push(format!("the scheme of peer url {url} is HTTP while peer key/cert files are presented; the key/cert files are ignored for it"));
            }
        }
        if peer_tls.is_none() {
            if let Some(url) = members
                .iter()
                .flat_map(|m| &m.peer_urls)
                .find(|url| url.starts_with("https://"))
            {
                return Err(ConfigError::Tls(format!("--initial-cluster has the https peer URL {url}, but no peer TLS is set to dial it (--peer-cert-file, --peer-key-file and --peer-trusted-ca-file, or --peer-auto-tls)")));
            }
        }
        let member_ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        Ok(Config {
            name: self.name.clone(),
            member_id,
            cluster_id: cluster_id(&member_ids),
            client_addrs,
            advertise_client_urls,
            peer_addrs,
            advertise_peer_urls: advertised_peers.iter().map(HttpUrl::canonical).collect(),
            members,
            cluster_state,
            token,
            heartbeat: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            snapshot_count: self.snapshot_count,
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            quota_backend_bytes: match self.quota_backend_bytes {
                0 => Some(api::DEFAULT_QUOTA_BACKEND_BYTES),
                quota => u64::try_from(quota).ok(),
            },
            log_level,
            watch_progress_notify_interval,
            initial_corrupt_check: self.experimental_initial_corrupt_check,
            corrupt_check_interval,
            reconfig: api::cluster::ReconfigRules {
                strict: self.strict_reconfig_check,
                max_learners: self.max_learners,
            },
            wal_dir: self
                .wal_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("member").join("log")),
            encryption_key_file: self.encryption_key_file.clone(),
            max_concurrent_streams: self.max_concurrent_streams.max(1),
            client_tls,
            peer_tls,
            warnings,
            data_dir,
        })
    }
}

impl ServeArgs {
    /// Parses `args` (flags only) as `concord serve` would.
    pub(crate) fn parse_serve(args: &[&str]) -> anyhow::Result<ServeArgs> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let argv = std::iter::once("concord").chain(args.iter().copied());
        Ok(<Cli as clap::Parser>::try_parse_from(argv)?.serve)
    }
}
