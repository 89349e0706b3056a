//! etcdctl against Concord and against a real etcd, command by command: the same commands
//! must print the same output (or the same error), once the JSON fields that name the server
//! are zeroed.

use testkit::{etcdctl, Cluster, Etcd};

use crate::{binary, ELECTION_DEADLINE};

/// Zeroes the numbers after `"cluster_id":`, `"member_id":` and `"raft_term":` in etcdctl's
/// JSON output.
fn normalise(output: &str) -> String {
    let mut text = output.to_string();
    for field in ["\"cluster_id\":", "\"member_id\":", "\"raft_term\":"] {
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(at) = rest.find(field) {
            let after = at + field.len();
            out.push_str(&rest[..after]);
            out.push('0');
            rest = rest[after..].trim_start_matches(|c: char| c.is_ascii_digit());
        }
        out.push_str(rest);
        text = out;
    }
    text
}

/// What a command printed: its standard output if it succeeded, else its `Error:` lines.
fn printed(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let output = etcdctl(endpoints, args, stdin).expect("run etcdctl");
    if output.status.success() {
        Ok(normalise(&String::from_utf8_lossy(&output.stdout)))
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr
            .lines()
            .filter(|l| l.starts_with("Error:"))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

// Proves etcdctl prints the same for Concord as for etcd across get (prefix, from-key,
// limit, sort, revision, keys-only, values only, JSON), put (prev-kv, ignore-value,
// ignore-lease, unknown lease, missing key), del (prev-kv, from-key, prefix), txn from
// standard input (both branches), compact and the compacted and future revision errors, and
// that `endpoint hashkv` agrees across Concord's members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_prints_what_etcd_prints() {
    let etcd = Etcd::start().expect("start the reference etcd");
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let reference = etcd.client_url();
    let concord = cluster.endpoints();
    let txn_success = "value(\"e/a\") = \"x\"\nversion(\"e/a\") > \"1\"\n\nput e/t yes\nget e/t\n\nput e/t no\n\n";
    let txn_failure = "mod(\"e/a\") < \"2\"\n\nput e/t yes\n\nget e/a\ndel e/none\n\n";
    let commands: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["put", "e/a", "1"], None),
        (vec!["put", "e/b", "2"], None),
        (vec!["put", "e/c", "3"], None),
        (vec!["put", "e/d", "4"], None),
        (vec!["put", "e/a", "1b", "--prev-kv"], None),
        (vec!["get", "e/a"], None),
        (vec!["get", "e/", "--prefix"], None),
        (vec!["get", "e/b", "--from-key"], None),
        (vec!["get", "e/b", "e/d"], None),
        (vec!["get", "e/", "--prefix", "--limit=2"], None),
        (
            vec![
                "get",
                "e/",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
            ],
            None,
        ),
        (
            vec!["get", "e/", "--prefix", "--sort-by=VALUE", "--order=ASCEND"],
            None,
        ),
        (
            vec![
                "get",
                "e/",
                "--prefix",
                "--sort-by=CREATE",
                "--order=DESCEND",
                "--limit=3",
            ],
            None,
        ),
        (vec!["get", "e/a", "--rev=2"], None),
        (vec!["get", "e/", "--prefix", "--keys-only"], None),
        (vec!["get", "e/", "--prefix", "--print-value-only"], None),
        (vec!["get", "e/", "--prefix", "-w", "json"], None),
        (
            vec!["get", "e/", "--prefix", "--consistency=s", "-w", "json"],
            None,
        ),
        (vec!["get", "e/none"], None),
        (vec!["put", "e/b", "--ignore-value"], None),
        (vec!["get", "e/b", "-w", "json"], None),
        (vec!["put", "e/c", "33", "--ignore-lease"], None),
        (vec!["put", "e/zz", "--ignore-value"], None),
        (vec!["put", "e/a", "v", "--lease=1234"], None),
        (vec!["put", "e/a", "-w", "json", "x"], None),
        (vec!["del", "e/c", "--prev-kv"], None),
        (vec!["del", "e/none"], None),
        (vec!["txn"], Some(txn_success)),
        (vec!["txn"], Some(txn_failure)),
        (vec!["txn", "-w", "json"], Some(txn_failure)),
        (vec!["compact", "5"], None),
        (vec!["get", "e/a", "--rev=3"], None),
        (vec!["get", "e/a", "--rev=5"], None),
        (vec!["get", "e/a", "--rev=1000"], None),
        (vec!["compact", "4"], None),
        (vec!["del", "e/b", "--from-key", "--prev-kv"], None),
        (vec!["get", "e/", "--prefix"], None),
        (vec!["del", "e/", "--prefix"], None),
        (vec!["put", "", "v"], None),
    ];
    let mut transcript = String::new();
    for (args, stdin) in &commands {
        let expected = printed(&reference, args, *stdin);
        let got = printed(&concord, args, *stdin);
        assert_eq!(
            got, expected,
            "etcdctl {args:?} differs (Concord left, etcd right); earlier:\n{transcript}"
        );
        transcript.push_str(&format!("$ etcdctl {args:?}\n{expected:?}\n"));
    }

    // HashKV: each store hashes its own encoding, so compare Concord's members with each
    // other, at the same revision.
    let revision = printed(&concord, &["get", "e/", "-w", "json"], None).unwrap();
    let revision = revision
        .split("\"revision\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .expect("a revision")
        .to_string();
    let mut hashes = Vec::new();
    for i in 0..3 {
        let line = printed(
            &cluster.client_url(i),
            &["endpoint", "hashkv", &format!("--rev={revision}")],
            None,
        )
        .unwrap();
        let fields: Vec<&str> = line.trim().split(", ").collect();
        assert_eq!(fields.len(), 2, "{line}");
        assert_eq!(fields[0], cluster.client_url(i));
        hashes.push(fields[1].to_string());
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
}
