use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

/// Every flag reads its `CONCORD_` variable, so parsing must not overlap a test that sets one.
static ENV: Mutex<()> = Mutex::new(());

fn parse_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let _guard = ENV
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (key, value) in env {
        std::env::set_var(key, value);
    }
    let mut argv = vec!["concord"];
    argv.extend_from_slice(args);
    let parsed = Cli::try_parse_from(argv);
    for (key, _) in env {
        std::env::remove_var(key);
    }
    parsed.unwrap().serve.validate()
}

/// A plain (http) listener on `addr`.
fn plain(addr: &str) -> crate::config::Listen {
    crate::config::Listen {
        addr: addr.parse().unwrap(),
        tls: false,
    }
}

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    parse_with_env(args, &[])
}

const THREE: &str = "a=http://127.0.0.1:2380,b=http://127.0.0.1:2390,c=http://127.0.0.1:2400";

fn member_of_three(name: &str, peer: &str) -> Config {
    parse(&[
        "--name",
        name,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        THREE,
    ])
    .unwrap()
}

// Proves etcd's defaults make a valid single-member configuration, with etcd's values.
#[test]
fn defaults_are_valid() {
    let config = parse(&[]).unwrap();
    assert_eq!(config.name, "default");
    assert_eq!(config.data_dir, std::path::PathBuf::from("default.etcd"));
    assert_eq!(config.members.len(), 1);
    assert_eq!(config.members[0].peer_urls, vec!["http://localhost:2380"]);
    assert_eq!(config.client_addrs, vec![plain("127.0.0.1:2379")]);
    assert_eq!(config.peer_addrs, vec![plain("127.0.0.1:2380")]);
    assert_eq!(config.advertise_client_urls, vec!["http://localhost:2379"]);
    assert_eq!(config.cluster_state, ClusterState::New);
    assert_eq!(config.token, "etcd-cluster");
    assert_eq!(config.heartbeat, Duration::from_millis(100));
    assert_eq!(config.election_timeout, Duration::from_millis(1000));
    assert_eq!(config.snapshot_count, 100_000);
    assert_eq!(config.max_request_bytes, 1_572_864);
    assert_eq!(config.max_txn_ops, 128);
    assert_eq!(config.log_level, "info");
    assert_eq!(config.quota_backend_bytes, Some(2 * 1024 * 1024 * 1024));
    // etcd's quota rules: a positive value is the quota, a negative one disables it.
    let quota = |value: &str| {
        parse(&["--quota-backend-bytes", value])
            .unwrap()
            .quota_backend_bytes
    };
    assert_eq!(quota("1048576"), Some(1_048_576));
    assert_eq!(quota("-1"), None);
    assert_eq!(quota("0"), Some(2 * 1024 * 1024 * 1024));
    let named = parse(&[
        "--name",
        "x",
        "--initial-cluster",
        "x=http://localhost:2380",
    ])
    .unwrap();
    assert_eq!(named.data_dir, std::path::PathBuf::from("x.etcd"));
}

// Proves etcd's corruption-check flags are read as etcd writes them: the startup check as a
// bare flag or with a value, the period as a duration, 0 turning the periodic check off.
#[test]
fn corruption_check_flags_are_accepted() {
    let defaults = parse(&[]).unwrap();
    assert!(!defaults.initial_corrupt_check);
    assert_eq!(
        defaults.corrupt_check_interval,
        Some(Duration::from_secs(300))
    );
    assert!(
        parse(&["--experimental-initial-corrupt-check"])
            .unwrap()
            .initial_corrupt_check
    );
    assert!(
        parse(&["--experimental-initial-corrupt-check=true"])
            .unwrap()
            .initial_corrupt_check
    );
    assert!(
        !parse(&["--experimental-initial-corrupt-check=false"])
            .unwrap()
            .initial_corrupt_check
    );
    let interval = |value: &str| {
        parse(&["--experimental-corrupt-check-time", value])
            .map(|config| config.corrupt_check_interval)
    };
    assert_eq!(interval("1m30s"), Ok(Some(Duration::from_secs(90))));
    assert_eq!(interval("0"), Ok(None));
    assert_eq!(interval("0s"), Ok(None));
    assert!(interval("soon").is_err());
}

// Proves the membership-change and placement flags are read as etcd reads them: strict
// checks on by default (a bare flag too), off with `=false`, one learner unless
// `--max-learners` says otherwise, no learners at all refused; the Raft log under the data
// directory unless `--wal-dir` puts it elsewhere; `--max-concurrent-streams`.
#[test]
fn reconfig_flags_are_accepted() {
    let defaults = parse(&[]).unwrap();
    assert_eq!(defaults.reconfig, api::cluster::ReconfigRules::default());
    assert!(defaults.reconfig.strict);
    assert_eq!(defaults.reconfig.max_learners, 1);
    assert!(parse(&["--strict-reconfig-check"]).unwrap().reconfig.strict);
    let lax = parse(&["--strict-reconfig-check=false", "--max-learners=3"]).unwrap();
    assert!(!lax.reconfig.strict);
    assert_eq!(lax.reconfig.max_learners, 3);
    assert_eq!(
        defaults.wal_dir,
        defaults.data_dir.join("member").join("log")
    );
    assert_eq!(defaults.max_concurrent_streams, 1024);
    let placed = parse(&["--wal-dir=/fast/wal", "--max-concurrent-streams=64"]).unwrap();
    assert_eq!(placed.wal_dir, std::path::PathBuf::from("/fast/wal"));
    assert_eq!(placed.max_concurrent_streams, 64);
    assert!(matches!(
        parse(&["--max-learners=0"]),
        Err(ConfigError::Invalid {
            flag: "--max-learners",
            ..
        })
    ));
}

// Proves the flags etcd users write are read as etcd reads them: lists, several listeners,
// IPv6, a name given twice (one member, two URLs), localhost equal to 127.0.0.1 when the
// advertised URLs are compared.
#[test]
fn etcd_style_flags_are_accepted() {
    let config = parse(&[
        "--name",
        "infra0",
        "--listen-client-urls",
        "http://127.0.0.1:2379, http://[::1]:2379/",
        "--advertise-client-urls",
        "http://10.0.1.10:2379,http://infra0.example.com:2379",
        "--listen-peer-urls",
        "http://0.0.0.0:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380,http://10.0.1.10:2380",
        "--initial-cluster",
        "infra0=http://localhost:2380,infra0=http://10.0.1.10:2380,infra1=http://infra1.example.com:2380",
        "--initial-cluster-state",
        "existing",
        "--log-level",
        "fatal",
    ])
    .unwrap();
    assert_eq!(
        config.client_addrs,
        vec![plain("127.0.0.1:2379"), plain("[::1]:2379")]
    );
    assert_eq!(config.peer_addrs, vec![plain("0.0.0.0:2380")]);
    assert_eq!(config.members.len(), 2);
    assert_eq!(config.members[0].peer_urls.len(), 2);
    assert_eq!(config.cluster_state, ClusterState::Existing);
    assert_eq!(config.log_level, "error");
    // As etcd: advertised client URLs are only told to clients, port 0 included.
    let told = parse(&["--advertise-client-urls", "http://0.0.0.0:0"]).unwrap();
    assert_eq!(told.advertise_client_urls, ["http://0.0.0.0:0"]);
}

// Proves every flag can come from its CONCORD_ environment variable, and that a flag on the
// command line wins over the environment.
#[test]
fn environment_variables_are_read() {
    let env = [
        ("CONCORD_NAME", "e1"),
        ("CONCORD_DATA_DIR", "/tmp/e1-data"),
        ("CONCORD_LISTEN_CLIENT_URLS", "http://127.0.0.1:12379"),
        ("CONCORD_ADVERTISE_CLIENT_URLS", "http://127.0.0.1:12379"),
        ("CONCORD_LISTEN_PEER_URLS", "http://127.0.0.1:12380"),
        (
            "CONCORD_INITIAL_ADVERTISE_PEER_URLS",
            "http://127.0.0.1:12380",
        ),
        (
            "CONCORD_INITIAL_CLUSTER",
            "e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380",
        ),
        ("CONCORD_INITIAL_CLUSTER_STATE", "existing"),
        ("CONCORD_INITIAL_CLUSTER_TOKEN", "env-token"),
        ("CONCORD_HEARTBEAT_INTERVAL", "50"),
        ("CONCORD_ELECTION_TIMEOUT", "500"),
        ("CONCORD_SNAPSHOT_COUNT", "42"),
        ("CONCORD_MAX_REQUEST_BYTES", "1000"),
        ("CONCORD_MAX_TXN_OPS", "7"),
        ("CONCORD_LOG_LEVEL", "debug"),
    ];
    let config = parse_with_env(&[], &env).unwrap();
    assert_eq!(config.name, "e1");
    assert_eq!(config.data_dir, std::path::PathBuf::from("/tmp/e1-data"));
    assert_eq!(config.client_addrs, vec![plain("127.0.0.1:12379")]);
    assert_eq!(config.peer_addrs, vec![plain("127.0.0.1:12380")]);
    assert_eq!(config.members.len(), 2);
    assert_eq!(config.cluster_state, ClusterState::Existing);
    assert_eq!(config.token, "env-token");
    assert_eq!(config.heartbeat, Duration::from_millis(50));
    assert_eq!(config.election_timeout, Duration::from_millis(500));
    assert_eq!(config.snapshot_count, 42);
    assert_eq!(config.max_request_bytes, 1000);
    assert_eq!(config.max_txn_ops, 7);
    assert_eq!(config.log_level, "debug");

    let flag_wins = parse_with_env(&["--snapshot-count", "9"], &env).unwrap();
    assert_eq!(flag_wins.snapshot_count, 9);
    // And nothing leaks into the next parse.
    assert_eq!(parse(&[]).unwrap().name, "default");
}

// Proves ids are the same on every member and every start, differ between members, change
// with the cluster token, ignore URL order and spelling (trailing slash), and are etcd's
// for the same flags.
#[test]
fn ids_are_stable_and_distinct() {
    let a = member_of_three("a", "http://127.0.0.1:2380");
    let b = member_of_three("b", "http://127.0.0.1:2390/");
    assert_eq!(a.cluster_id, b.cluster_id);
    assert_ne!(a.member_id, b.member_id);
    assert_eq!(a.members, b.members);
    let other = parse(&[
        "--name",
        "a",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        THREE,
        "--initial-cluster-token",
        "other",
    ])
    .unwrap();
    assert_ne!(other.cluster_id, a.cluster_id);
    assert_ne!(other.member_id, a.member_id);

    let urls = |list: &[&str]| list.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    assert_eq!(
        member_id(&urls(&["http://b:1", "http://a:1"]), "t"),
        member_id(&urls(&["http://a:1", "http://b:1"]), "t"),
    );
    assert_eq!(cluster_id(&[3, 1, 2]), cluster_id(&[1, 2, 3]));
    // An added member's id depends on the time it was added, so an id never comes back.
    let peers = urls(&["http://a:1"]);
    let at = |nanos| added_member_id(&peers, "t", Duration::from_nanos(nanos));
    assert_ne!(at(1), at(2));
    assert_eq!(at(1), at(1));
    assert_ne!(at(1), member_id(&peers, "t"));
    // etcd's ids for the same flags: a default single member, and a three-member cluster
    // as etcd's own tests start it.
    let default = parse(&[]).unwrap();
    assert_eq!(
        (default.member_id, default.cluster_id),
        (0x8e9e_05c5_2164_694d, 0xcdf8_1819_4e3a_8c32)
    );
}

// Proves peer URLs given to MemberAdd are checked and spelt as the flags' are, and that
// URL lists compare as sets with localhost as 127.0.0.1 (how a joining member finds itself).
#[test]
fn peer_urls_are_canonical() {
    assert_eq!(
        canonical_peer_url("http://127.0.0.1:2380/").as_deref(),
        Some("http://127.0.0.1:2380")
    );
    assert_eq!(
        canonical_peer_url("HTTPS://h:1/").as_deref(),
        Some("https://h:1")
    );
    for bad in [
        "foo",
        "http://127.0.0.1:5/x",
        "http://h",
        "http://h:0",
        "ftp://h:1",
    ] {
        assert_eq!(canonical_peer_url(bad), None, "{bad}");
    }
    let urls = |list: &[&str]| list.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    assert!(config::same_peer_urls(
        &urls(&["http://localhost:1", "http://b:2"]),
        &urls(&["http://b:2", "http://127.0.0.1:1"])
    ));
    assert!(!config::same_peer_urls(
        &urls(&["http://b:2"]),
        &urls(&["http://b:2", "http://c:3"])
    ));
}

// Proves every bad flag and flag combination is refused with one line naming the problem,
// in etcd's words where etcd has them.
#[test]
fn bad_flags_are_refused() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--initial-cluster", "default"],
            r#"invalid --initial-cluster "default": "default" is not name=url"#,
        ),
        (
            &["--initial-cluster", "=http://localhost:2380"],
            "the member name is empty",
        ),
        (
            &["--initial-cluster", "default=http://localhost:99999"],
            "port is not a number from 0 to 65535",
        ),
        (
            &["--initial-cluster", "default=http://localhost"],
            "URL must have a port",
        ),
        (
            &[
                "--initial-cluster",
                "default=https://localhost:2380",
                "--initial-advertise-peer-urls",
                "https://localhost:2380",
            ],
            "--initial-cluster has the https peer URL https://localhost:2380, but no peer TLS is set to dial it",
        ),
        (
            &["--listen-client-urls", "https://127.0.0.1:2379"],
            "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme",
        ),
        (
            &["--listen-peer-urls", "https://127.0.0.1:2380"],
            "cannot listen on TLS for https://127.0.0.1:2380: KeyFile and CertFile are not presented",
        ),
        (
            &["--cert-file", "/s.crt"],
            "--cert-file and --key-file must be given together",
        ),
        (
            &["--peer-key-file", "/s.key"],
            "--peer-cert-file and --peer-key-file must be given together",
        ),
        (
            &["--cert-file", "/s.crt", "--key-file", "/s.key", "--client-cert-auth"],
            "--client-cert-auth needs --trusted-ca-file",
        ),
        (
            &["--auto-tls", "--tls-min-version", "TLS1.0"],
            "--tls-min-version=TLS1.0 is not supported: Concord speaks TLS1.2 and TLS1.3 only",
        ),
        (
            &["--auto-tls", "--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"],
            "--tls-min-version is higher than --tls-max-version",
        ),
        (
            &["--initial-cluster", "default=ftp://localhost:2380"],
            "URL scheme must be http or https",
        ),
        (
            &["--initial-cluster", "default=http://localhost:2380/path"],
            "must not have a path",
        ),
        (
            &["--initial-cluster", "default=http://bad host:2380"],
            "is not a host name or IP address",
        ),
        (
            &["--initial-cluster", "default=http://::1:2380"],
            "must be in brackets",
        ),
        (&["--initial-cluster", ""], "no members"),
        (
            &[
                "--initial-cluster",
                "default=http://localhost:2380,x=http://localhost:2380/",
            ],
            "peer URL http://localhost:2380 appears twice",
        ),
        (
            &["--initial-cluster", "other=http://localhost:2380"],
            r#"no member named "default" (--name) in --initial-cluster "other=http://localhost:2380""#,
        ),
        (
            &["--initial-advertise-peer-urls", "http://127.0.0.1:9999"],
            "--initial-cluster has default=http://localhost:2380 but missing from --initial-advertise-peer-urls=http://127.0.0.1:9999",
        ),
        (
            &[
                "--initial-advertise-peer-urls",
                "http://localhost:2380,http://127.0.0.1:9999",
            ],
            "--initial-advertise-peer-urls has http://127.0.0.1:9999 but missing from --initial-cluster=default=",
        ),
        (&["--initial-advertise-peer-urls", ""], "at least one URL is needed"),
        (
            &["--initial-cluster-state", "maybe"],
            r#"invalid --initial-cluster-state "maybe": must be "new" or "existing""#,
        ),
        (
            &["--election-timeout", "400"],
            "--election-timeout[400ms] should be at least as 5 times as --heartbeat-interval[100ms]",
        ),
        (
            &["--election-timeout", "60000"],
            "--election-timeout[60000ms] is too long, and should be set less than 50000ms",
        ),
        (&["--heartbeat-interval", "0"], "must be positive"),
        (&["--snapshot-count", "0"], "must be positive"),
        (&["--max-txn-ops", "0"], "must be positive"),
        (&["--max-request-bytes", "0"], "must be positive"),
        (
            &["--max-request-bytes", "1000000000"],
            "a request must fit in one peer message",
        ),
        (
            &["--log-level", "verbose"],
            "must be debug, info, warn, error, panic or fatal",
        ),
        (
            &["--listen-client-urls", "localhost:2379"],
            "URL scheme must be http or https",
        ),
        (
            &["--listen-client-urls", "http://example.com:2379"],
            "expected IP in URL for binding",
        ),
        (&["--listen-client-urls", " , "], "at least one URL is needed"),
        (
            &[
                "--listen-client-urls",
                "http://127.0.0.1:2379,http://localhost:2379",
            ],
            "127.0.0.1:2379 is listed twice",
        ),
        (
            &["--listen-peer-urls", "http://localhost:2379"],
            "127.0.0.1:2379 is listened on twice",
        ),
        (
            &["--initial-advertise-peer-urls", "http://127.0.0.1:0"],
            "port 0 cannot be dialled",
        ),
        (&["--name", ""], "must not be empty"),
        (
            &["--initial-cluster-token", "a\nb"],
            "must not contain control characters",
        ),
    ];
    for (args, expected) in cases {
        let error = parse(args).unwrap_err().to_string();
        assert!(error.contains(expected), "{args:?}: {error}");
        assert!(!error.contains('\n'), "one line: {error:?}");
        // etcd's own words start with "TLS".
        assert!(
            error.starts_with(|c: char| !c.is_uppercase()) || error.starts_with("TLS "),
            "lowercase: {error}"
        );
    }
}

// Proves the node runs etcd's timing: one tick per heartbeat, the election timeout in
// ticks, etcd's request timeout, and catch-up entries below the snapshot count.
#[test]
fn node_config_follows_etcd() {
    let config = parse(&[
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "520",
        "--snapshot-count",
        "1000",
    ])
    .unwrap();
    let me = Identity {
        cluster_id: config.cluster_id,
        member_id: config.member_id,
        name: config.name.clone(),
        token: config.token.clone(),
        version: identity::FORMAT_VERSION,
    };
    let bootstrap = vec![Member {
        id: config.member_id,
        name: config.name.clone(),
        peer_urls: config.members[0].peer_urls.clone(),
        client_urls: Vec::new(),
        is_learner: false,
    }];
    let node = node_config(&config, &me, bootstrap.clone(), None);
    assert_eq!(node.tick_interval, Duration::from_millis(50));
    assert_eq!(node.election_ticks, 10);
    assert_eq!(node.heartbeat_ticks, 1);
    assert_eq!(node.snapshot_count, 1000);
    assert_eq!(node.snapshot_catchup_entries, 500);
    assert_eq!(node.request_timeout, Duration::from_millis(5000 + 1040));
    assert_eq!(node.node_id, NodeId(config.member_id));
    assert_eq!(node.initial_members, bootstrap);
    assert_eq!(
        node.snapshot_dir,
        config.data_dir.join("member").join("snap")
    );
    assert_ne!(seed(), seed(), "two draws from the OS should differ");
}

// Proves etcd's TLS flags become each side's settings: files as given, auto-TLS's in the
// data directory for the listen and advertised hosts, https listeners marked, and the
// warnings etcd gives for settings an http listener ignores.
#[test]
fn tls_flags_become_each_sides_settings() {
    let config = parse(&[
        "--data-dir",
        "/d",
        "--listen-client-urls",
        "https://127.0.0.1:2379,http://127.0.0.1:22379",
        "--advertise-client-urls",
        "https://10.0.0.1:2379",
        "--cert-file",
        "/s.crt",
        "--key-file",
        "/s.key",
        "--trusted-ca-file",
        "/ca.pem",
        "--client-cert-auth",
        "--listen-peer-urls",
        "https://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "https://node-a:2380",
        "--initial-cluster",
        "default=https://node-a:2380",
        "--peer-auto-tls",
        "--peer-cert-allowed-cn",
        "member",
        "--cipher-suites",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ])
    .unwrap();
    assert_eq!(
        config
            .client_addrs
            .iter()
            .map(|l| l.tls)
            .collect::<Vec<_>>(),
        [true, false]
    );
    assert!(config.peer_addrs[0].tls);
    let client = config.client_tls.unwrap();
    assert_eq!(client.settings.cert_file, std::path::Path::new("/s.crt"));
    assert!(client.settings.client_cert_auth);
    assert_eq!(client.settings.cipher_suites.len(), 1);
    assert!(client.auto_hosts.is_none());
    let peer = config.peer_tls.unwrap();
    assert!(peer.settings.self_signed);
    assert_eq!(
        peer.settings.cert_file,
        std::path::Path::new("/d/fixtures/peer/cert.pem")
    );
    assert_eq!(peer.settings.allowed_cn.as_deref(), Some("member"));
    assert_eq!(
        peer.auto_hosts.unwrap(),
        ["127.0.0.1", "localhost", "node-a"]
    );
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(
        config.warnings[0].starts_with("the scheme of client url http://127.0.0.1:22379 is HTTP")
    );
    // The scheme is part of a member's id, as in etcd.
    assert_ne!(
        member_id(&["https://node-a:2380".into()], "etcd-cluster"),
        member_id(&["http://node-a:2380".into()], "etcd-cluster")
    );
}
