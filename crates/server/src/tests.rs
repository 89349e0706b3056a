use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    let mut argv = vec!["concord"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).unwrap().serve.validate()
}

fn three(name: &str, peer: &str) -> Vec<String> {
    vec![
        "--name".into(),
        name.into(),
        "--initial-advertise-peer-urls".into(),
        peer.into(),
        "--initial-cluster".into(),
        "a=http://127.0.0.1:2380,b=http://127.0.0.1:2390,c=http://127.0.0.1:2400".into(),
    ]
}

// Proves etcd's defaults make a valid single-member configuration.
#[test]
fn defaults_are_valid() {
    let config = parse(&[]).unwrap();
    assert_eq!(config.name, "default");
    assert_eq!(config.data_dir, std::path::PathBuf::from("default.etcd"));
    assert_eq!(config.members.len(), 1);
    assert_eq!(config.client_addrs, vec!["127.0.0.1:2379".parse().unwrap()]);
    assert_eq!(config.max_request_bytes, 1_572_864);
}

// Proves ids are the same on every member and every start, differ between members, and
// change with the cluster token.
#[test]
fn ids_are_stable_and_distinct() {
    let args = three("a", "http://127.0.0.1:2380");
    let a = parse(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let args = three("b", "http://127.0.0.1:2390");
    let b = parse(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert_eq!(a.cluster_id, b.cluster_id);
    assert_ne!(a.member_id, b.member_id);
    assert_eq!(a.members, b.members);
    let mut args = three("a", "http://127.0.0.1:2380");
    args.extend(["--initial-cluster-token".into(), "other".into()]);
    let other = parse(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert_ne!(other.cluster_id, a.cluster_id);
}

// Proves every bad flag combination is refused with a message naming the problem.
#[test]
fn bad_flags_are_refused() {
    let cases: &[(&[&str], &str)] = &[
        (&["--initial-cluster", "default"], "is not name=url"),
        (
            &["--initial-cluster", "default=http://localhost:99999"],
            "port",
        ),
        (
            &["--initial-cluster", "default=https://localhost:2380"],
            "https",
        ),
        (
            &["--initial-cluster-state", "maybe"],
            "must be \"new\" or \"existing\"",
        ),
        (&["--election-timeout", "400"], "at least as 5 times"),
        (
            &["--listen-client-urls", "localhost:2379"],
            "scheme must be http",
        ),
        (
            &["--initial-advertise-peer-urls", "http://127.0.0.1:9999"],
            "missing from --initial-advertise-peer-urls",
        ),
        (
            &[
                "--initial-cluster",
                "default=http://localhost:2380,x=http://localhost:2380",
            ],
            "appears twice",
        ),
    ];
    for (args, expected) in cases {
        let error = parse(args).unwrap_err().to_string();
        assert!(error.contains(expected), "{args:?}: {error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }
}
