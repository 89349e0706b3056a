//! etcd's flags that `concord serve` has no setting of its own for. Scripts, manifests and
//! etcd's own tests start members with them, so each is decided here, in one table:
//!
//! - given its etcd default, it changes nothing and passes silently;
//! - harmless otherwise (tuning, logging, features Concord does differently): accepted, with
//!   a warning saying what Concord does instead;
//! - otherwise (it asks for something Concord does not do, such as revocation lists): refused with a
//!   clear reason, so nobody believes they got what they asked for;
//! - a few are spelt differently in Concord: rewritten to Concord's flag.
//!
//! Flags take a value as `--flag=value` or `--flag value`; a boolean flag also alone.

use std::ffi::OsString;

/// What Concord does with one of etcd's flags.
#[derive(Clone, Copy)]
enum Treatment {
    /// Accepted; a value other than etcd's default is warned about with this reason.
    Ignored(&'static str),
    /// Refused unless it has etcd's default value, with this reason.
    Refused(&'static str),
    /// The same setting under Concord's name.
    Renamed(&'static str),
}

/// One flag: its name, whether it is boolean (its value may be left out), etcd's default
/// value (as written on a command line), and what Concord does with it.
struct EtcdFlag {
    name: &'static str,
    boolean: bool,
    default: &'static str,
    treatment: Treatment,
}

const fn flag(name: &'static str, default: &'static str, treatment: Treatment) -> EtcdFlag {
    EtcdFlag {
        name,
        boolean: false,
        default,
        treatment,
    }
}

const fn boolean(name: &'static str, default: &'static str, treatment: Treatment) -> EtcdFlag {
    EtcdFlag {
        name,
        boolean: true,
        default,
        treatment,
    }
}

use Treatment::{Ignored, Refused, Renamed};

const CRL: &str =
    "certificate revocation lists are not supported yet; rotate the CA bundle instead";
const HOSTNAME: &str = "client certificates are checked against the trusted CA (and --peer-cert-allowed-cn or --peer-cert-allowed-hostname for members), not host names";
const AUTH: &str = "authentication is not supported yet";
const TUNING: &str = "a tuning knob of etcd's own storage; Concord's engine has its own";
const LOGGING: &str = "Concord logs with its own format to stderr (see --log-level)";

/// etcd 3.4's flags that Concord has no flag of its own for.
const ETCD_FLAGS: &[EtcdFlag] = &[
    boolean("enable-v2", "false", Ignored("the v2 API is not served; Concord serves etcd's v3 API")),
    boolean("experimental-enable-v2v3", "", Ignored("the v2 API is not served")),
    boolean("enable-pprof", "false", Ignored("profiling endpoints are not served")),
    boolean("debug", "false", Renamed("log-level=debug")),
    flag("logger", "capnslog", Ignored(LOGGING)),
    flag("log-outputs", "default", Ignored(LOGGING)),
    flag("log-package-levels", "", Ignored(LOGGING)),
    flag("metrics", "basic", Ignored("metrics are not served yet")),
    flag("max-snapshots", "5", Ignored("Concord keeps no snapshot files beyond the latest")),
    flag("max-wals", "5", Ignored("Concord's log engine reclaims its own files")),
    boolean("pre-vote", "false", Ignored("Concord always runs Raft's pre-vote")),
    boolean("initial-election-tick-advance", "true", Ignored(TUNING)),
    boolean("experimental-enable-lease-checkpoint", "false", Ignored("Concord always checkpoints leases")),
    flag("experimental-watch-progress-notify-interval", "10m0s", Renamed("watch-progress-notify-interval")),
    flag("experimental-compaction-batch-limit", "1000", Ignored(TUNING)),
    flag("experimental-backend-bbolt-freelist-type", "array", Ignored(TUNING)),
    flag("experimental-warning-apply-duration", "100ms", Ignored(TUNING)),
    flag("backend-batch-interval", "0s", Ignored(TUNING)),
    flag("backend-batch-limit", "0", Ignored(TUNING)),
    flag("grpc-keepalive-min-time", "5s", Ignored(TUNING)),
    flag("grpc-keepalive-interval", "2h0m0s", Ignored(TUNING)),
    flag("grpc-keepalive-timeout", "20s", Ignored(TUNING)),
    flag("cors", "", Ignored("the v2 API's CORS setting; the v3 API is gRPC")),
    flag("host-whitelist", "*", Ignored("the v2 API's host check; the v3 API is gRPC")),
    flag("auth-token", "simple", Ignored(AUTH)),
    flag("auth-token-ttl", "300", Ignored(AUTH)),
    flag("bcrypt-cost", "10", Ignored(AUTH)),
    flag("listen-metrics-urls", "", Refused("metrics are not served yet")),
    flag("auto-compaction-mode", "periodic", Ignored("auto-compaction is off unless --auto-compaction-retention is set")),
    flag("auto-compaction-retention", "0", Refused("auto-compaction is not supported yet; compact from the client (Kubernetes does)")),
    boolean("force-new-cluster", "false", Refused("rebuilding a cluster from one member is not supported; restore a backup (concord snapshot restore)")),
    flag("discovery", "", Refused("discovery is not supported; list the members in --initial-cluster")),
    flag("discovery-srv", "", Refused("discovery is not supported; list the members in --initial-cluster")),
    flag("discovery-srv-name", "", Refused("discovery is not supported")),
    flag("discovery-fallback", "proxy", Ignored("discovery is not supported")),
    flag("discovery-proxy", "", Refused("discovery is not supported")),
    flag("proxy", "off", Refused("the v2 proxy is not supported")),
    flag("proxy-failure-wait", "5000", Ignored("the v2 proxy is not supported")),
    flag("proxy-refresh-interval", "30000", Ignored("the v2 proxy is not supported")),
    flag("proxy-dial-timeout", "1000", Ignored("the v2 proxy is not supported")),
    flag("proxy-write-timeout", "5000", Ignored("the v2 proxy is not supported")),
    flag("proxy-read-timeout", "0", Ignored("the v2 proxy is not supported")),
    flag("client-crl-file", "", Refused(CRL)),
    flag("client-cert-allowed-hostname", "", Refused(HOSTNAME)),
    flag("peer-crl-file", "", Refused(CRL)),
    boolean("experimental-peer-skip-client-san-verification", "false", Ignored("Concord does not check client certificates' host names")),
];

/// `concord serve`'s arguments (after `serve`) with etcd's flags of [`ETCD_FLAGS`] taken
/// out (or rewritten to Concord's), and the warnings to log about those accepted.
///
/// # Errors
/// A refused flag, with the reason; a flag missing its value.
pub fn take_etcd_flags(args: &[OsString]) -> Result<(Vec<OsString>, Vec<String>), String> {
    let mut kept = Vec::new();
    let mut warnings = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let Some((known, inline)) = arg.to_str().and_then(recognise) else {
            kept.push(arg.clone());
            continue;
        };
        let value = match inline {
            Some(value) => value.to_string(),
            None if known.boolean => "true".to_string(),
            None => rest
                .next()
                .and_then(|v| v.to_str())
                .ok_or_else(|| format!("flag --{} needs a value", known.name))?
                .to_string(),
        };
        let is_default = value == known.default || (known.boolean && value.is_empty());
        match known.treatment {
            Treatment::Renamed(to) => {
                let renamed = match to.split_once('=') {
                    // A boolean switch for a setting: only "true" sets it.
                    Some((name, set)) if value == "true" => format!("--{name}={set}"),
                    Some(_) => continue,
                    None => format!("--{to}={value}"),
                };
                kept.push(renamed.into());
            }
            _ if is_default => {}
            Treatment::Ignored(why) => {
                warnings.push(format!(
                    "--{}={value} is accepted and ignored: {why}",
                    known.name
                ));
            }
            Treatment::Refused(why) => {
                return Err(format!("--{}={value} is not supported: {why}", known.name));
            }
        }
    }
    Ok((kept, warnings))
}

/// The flag `arg` names (`--name`, `--name=value`, or Go's single-dash spelling) and its
/// inline value, if it is one of [`ETCD_FLAGS`].
fn recognise(arg: &str) -> Option<(&'static EtcdFlag, Option<&str>)> {
    let body = arg
        .strip_prefix("--")
        .or_else(|| arg.strip_prefix('-'))
        .filter(|body| !body.starts_with('-'))?;
    let (name, value) = match body.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (body, None),
    };
    ETCD_FLAGS
        .iter()
        .find(|f| f.name == name)
        .map(|f| (f, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(args: &[&str]) -> Result<(Vec<String>, Vec<String>), String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        take_etcd_flags(&args).map(|(kept, warnings)| {
            let kept = kept.into_iter().map(|a| a.into_string().unwrap()).collect();
            (kept, warnings)
        })
    }

    // Proves etcd's flags are taken out as etcd parses them (inline, separate or bare
    // booleans), silently at their defaults, with a warning when harmless, refused with the
    // reason when Concord does not do what they ask, and rewritten where Concord spells
    // them differently; everything else passes through untouched.
    #[test]
    fn etcd_flags_are_accepted_warned_refused_or_renamed() {
        let (kept, warnings) = take(&[
            "--name",
            "m0",
            "--enable-v2=false",
            "--client-crl-file=",
            "--auto-compaction-retention",
            "0",
            "--data-dir=/d",
        ])
        .unwrap();
        assert_eq!(kept, ["--name", "m0", "--data-dir=/d"]);
        assert!(warnings.is_empty(), "{warnings:?}");

        let (kept, warnings) = take(&["--enable-v2", "--max-wals", "7", "-logger=zap"]).unwrap();
        assert!(kept.is_empty());
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].starts_with("--enable-v2=true is accepted and ignored: the v2 API"));

        let refused = take(&["--client-crl-file", "/revoked.crl"]).unwrap_err();
        assert_eq!(
            refused,
            "--client-crl-file=/revoked.crl is not supported: certificate revocation lists are not supported yet; rotate the CA bundle instead"
        );
        // Concord's own TLS flags pass through to `concord serve`.
        let (kept, _) = take(&["--cert-file", "/server.crt", "--auto-tls"]).unwrap();
        assert_eq!(kept, ["--cert-file", "/server.crt", "--auto-tls"]);
        assert!(take(&["--force-new-cluster"]).is_err());
        assert_eq!(
            take(&["--max-wals"]).unwrap_err(),
            "flag --max-wals needs a value"
        );

        let (kept, _) = take(&[
            "--debug",
            "--experimental-watch-progress-notify-interval",
            "5s",
        ])
        .unwrap();
        assert_eq!(
            kept,
            ["--log-level=debug", "--watch-progress-notify-interval=5s"]
        );
        let (kept, _) = take(&["--debug=false"]).unwrap();
        assert!(kept.is_empty());
    }
}
