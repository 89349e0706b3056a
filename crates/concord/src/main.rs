//! `concord`: the one binary. `serve` runs a member; `dev` runs a local cluster; `bench`
//! measures a cluster (Concord's or etcd's) through the public API.
//!
//! - `concord serve [etcd flags]`: one member (flags and `CONCORD_*` variables in
//!   `server::ServeArgs`). SIGINT or SIGTERM stops it cleanly (exit 0). A bad configuration
//!   or a failure is one line on stderr, `concord: error: <message>`, and exit 1.
//! - `concord dev [--data-dir DIR] [--members N] [--base-port P]`: N members (default 3) as
//!   child processes of this executable, named m0, m1, ..., member i on 127.0.0.1 with
//!   client port P + 10*i and peer port P + 10*i + 1 (default 2379/2380, 2389/2390,
//!   2399/2400), data in DIR/m<i> (default `concord-dev-data`), cluster token
//!   `concord-dev`. Their output is relayed line by line, prefixed `m<i> | `. SIGINT or
//!   SIGTERM sends SIGTERM to every member, waits for them, and exits 0; a member that exits
//!   on its own is reported, the others are stopped, and dev exits 1. (A SIGKILLed dev
//!   cannot stop its members.) `concord dev --join` adds one member to a running dev
//!   cluster (`member add`, then `serve --initial-cluster-state existing`).
//! - `concord snapshot restore FILE [etcd's restore flags]` and `concord snapshot status
//!   FILE`: backups.
//! - Usage errors are clap's (exit 2); `--help` and `--version` exit 0.
//!
//! `main` maps `run() -> anyhow::Result<ExitCode>` to the exit code, as ripgrep does.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "concord",
    version,
    about = "A distributed key-value and coordination service"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run a member (accepts etcd's flags).
    Serve(Box<server::ServeArgs>),
    /// Start a local cluster on 127.0.0.1 in one command; Ctrl-C stops it.
    Dev(DevArgs),
    /// Load a cluster through the etcd v3 API and report throughput and latency.
    Bench(BenchArgs),
    /// Backups (`etcdctl snapshot save` files): restore one into a new cluster's member,
    /// or tell what one holds.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Print a new random key for `--encryption-key-file` (one line, 64 hex digits).
    EncryptionKey,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Write the data directory of a member of a new cluster from a backup (etcd's flags).
    Restore(server::RestoreArgs),
    /// Tell what a backup holds: hash, revision, keys, size.
    Status(SnapshotStatusArgs),
}

/// `concord snapshot status` flags.
#[derive(clap::Args)]
struct SnapshotStatusArgs {
    /// The backup file.
    file: PathBuf,
    /// Output format: table, simple or json.
    #[arg(short = 'w', long = "write-out", default_value = "simple")]
    write_out: String,
    /// The key file of the member the backup was taken from, if it encrypts at rest.
    #[arg(long)]
    encryption_key_file: Option<PathBuf>,
}

/// `concord dev` flags.
#[derive(clap::Args)]
struct DevArgs {
    /// Where the members keep their data (one subdirectory per member, named after it).
    #[arg(long, default_value = "concord-dev-data")]
    data_dir: PathBuf,
    /// Number of members.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    members: u16,
    /// Client port of the first member. Member i (named m<i>) listens on 127.0.0.1, port
    /// base + 10*i for clients and base + 10*i + 1 for peers: 2379/2380, 2389/2390,
    /// 2399/2400 by default.
    #[arg(long, default_value_t = 2379)]
    base_port: u16,
    /// Instead of starting a cluster: add one member to the dev cluster already running
    /// with the same --data-dir and --base-port (`member add` through its first member),
    /// and run it here until Ctrl-C, so that a membership change can be watched.
    #[arg(long)]
    join: bool,
    /// Serve plain HTTP instead of TLS. By default the dev cluster makes a private CA in
    /// <data-dir>/pki, serves clients and peers over TLS with certificates from it, and
    /// requires client certificates (the etcdctl flags to use are printed).
    #[arg(long)]
    plaintext: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Comma-separated client URLs.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoints: String,
    /// Concurrent requests.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 20_000)]
    total: usize,
    /// Key size in bytes.
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// put, get (linearizable) or get-serializable.
    #[arg(long, default_value = "put")]
    workload: String,
}

/// How long `concord dev` waits for its members to stop after SIGTERM before killing them.
const DEV_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often `concord dev` checks whether a member has exited.
const DEV_POLL_INTERVAL: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            // One line, whatever the causes say.
            let message = format!("{e:#}").replace(['\n', '\r'], " ");
            eprintln!("concord: error: {message}");
            ExitCode::from(1)
        }
    }
}

/// Parses the command line and runs the subcommand; the exit code on success or on a
/// failure that has been reported already.
fn run() -> anyhow::Result<ExitCode> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut warnings = Vec::new();
    if args.get(1).is_some_and(|a| a == "serve") {
        // etcd's flags Concord has no setting for are decided first (see
        // `server::take_etcd_flags`): clap would refuse them all as unknown.
        let (kept, warned) = server::take_etcd_flags(&args[2..]).map_err(anyhow::Error::msg)?;
        args.truncate(2);
        args.extend(kept);
        warnings = warned;
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // clap's own report: usage errors (exit 2) on stderr, --help and --version
            // (exit 0) on stdout.
            let _ = e.print();
            return Ok(ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)));
        }
    };
    match cli.command {
        Commands::Serve(args) => serve(&args, &warnings),
        Commands::Dev(args) => dev(&args),
        Commands::Bench(args) => bench(&args),
        Commands::EncryptionKey => {
            println!("{}", encryption::KeyRing::generate_line());
            Ok(ExitCode::SUCCESS)
        }
        Commands::Snapshot(SnapshotCommand::Restore(args)) => snapshot_restore(&args),
        Commands::Snapshot(SnapshotCommand::Status(args)) => snapshot_status(&args),
    }
}

/// `concord snapshot restore`: one line on success, as etcd's restore logs.
fn snapshot_restore(args: &server::RestoreArgs) -> anyhow::Result<ExitCode> {
    let restored = server::restore(args)?;
    println!(
        "restored snapshot {} (revision {}, {} keys) into {}: member {:x} of cluster {:x}",
        args.file.display(),
        restored.status.revision,
        restored.status.total_keys,
        restored.data_dir.display(),
        restored.member_id,
        restored.cluster_id
    );
    Ok(ExitCode::SUCCESS)
}

/// `concord snapshot status`: etcdctl's columns (hash, revision, total keys, total size).
fn snapshot_status(args: &SnapshotStatusArgs) -> anyhow::Result<ExitCode> {
    let keys = server::load_encryption_keys(args.encryption_key_file.as_deref())?;
    let status = server::backup_status(&args.file, keys.as_ref())
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    match args.write_out.as_str() {
        "json" => println!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}",
            status.hash, status.revision, status.total_keys, status.total_size
        ),
        "table" => {
            println!("+----------+----------+------------+------------+");
            println!("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |");
            println!("+----------+----------+------------+------------+");
            println!(
                "| {:08x} | {:>8} | {:>10} | {:>10} |",
                status.hash, status.revision, status.total_keys, status.total_size
            );
            println!("+----------+----------+------------+------------+");
        }
        "simple" => println!(
            "{:x}, {}, {}, {}",
            status.hash, status.revision, status.total_keys, status.total_size
        ),
        other => anyhow::bail!("unknown output format {other:?}: one of simple, table, json"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Installs the tracing subscriber: `RUST_LOG` if it is set, else `level` (from
/// `--log-level`). The raft crate's events (target `slog`) are kept to warnings and above
/// unless `RUST_LOG` says otherwise: at debug level it logs every message.
fn init_tracing(level: &str) {
    use std::io::IsTerminal as _;
    let slog_level = if level == "error" { "error" } else { "warn" };
    let default = || tracing_subscriber::EnvFilter::new(format!("{level},slog={slog_level}"));
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
                eprintln!("concord: warning: ignoring RUST_LOG={directives:?}: {e}");
                default()
            })
        }
        _ => default(),
    };
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// `concord serve`: validates the flags (a bad one is one line and exit 1, before anything
/// starts), then runs the member until SIGINT or SIGTERM.
fn serve(args: &server::ServeArgs, warnings: &[String]) -> anyhow::Result<ExitCode> {
    let config = args.validate()?;
    init_tracing(config.log_level);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(server::run(config, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for SIGTERM; only Ctrl-C stops this member");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

/// One member started by `concord dev`.
struct DevMember {
    name: String,
    client_url: String,
    peer_url: String,
}

/// `concord dev`: runs `--members` copies of this executable as `concord serve`, prefixes
/// their output with their names, and stops them all on SIGINT or SIGTERM (exit 0) or when
/// one of them exits on its own (exit 1).
fn dev(args: &DevArgs) -> anyhow::Result<ExitCode> {
    if args.join {
        return dev_join(args);
    }
    let members = dev_members(args.members, args.base_port, !args.plaintext)?;
    let exe = std::env::current_exe().context("cannot find the concord executable")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let pki = if args.plaintext {
        None
    } else {
        Some(DevPki::make(&args.data_dir)?)
    };
    let tls_flags = pki.as_ref().map(DevPki::member_flags).unwrap_or_default();
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    let endpoints = members
        .iter()
        .map(|m| m.client_url.as_str())
        .collect::<Vec<_>>()
        .join(",");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Watch for signals before the first member starts, so none is ever left behind.
        let signal = dev_signal()?;
        tokio::pin!(signal);
        let mut children: Vec<(String, Child)> = Vec::with_capacity(members.len());
        let mut relays = Vec::new();
        for member in &members {
            let data_dir = args.data_dir.join(&member.name);
            let spawned = Command::new(&exe)
                .arg("serve")
                .args(["--name", &member.name])
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--listen-client-urls", &member.client_url])
                .args(["--advertise-client-urls", &member.client_url])
                .args(["--listen-peer-urls", &member.peer_url])
                .args(["--initial-advertise-peer-urls", &member.peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "concord-dev"])
                .args(&tls_flags)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    stop_members(&mut children).await;
                    return Err(anyhow::Error::new(e)
                        .context(format!("cannot start member {}", member.name)));
                }
            };
            if let Some(out) = child.stdout.take() {
                relays.push(relay(out, &member.name, false));
            }
            if let Some(err) = child.stderr.take() {
                relays.push(relay(err, &member.name, true));
            }
            children.push((member.name.clone(), child));
        }
        println!(
            "concord dev: {} member{} on 127.0.0.1, data in {}",
            members.len(),
            if members.len() == 1 { "" } else { "s" },
            args.data_dir.display()
        );
        for member in &members {
            println!(
                "  {}: client {}, peer {}",
                member.name, member.client_url, member.peer_url
            );
        }
        println!("client endpoints: {endpoints}");
        match &pki {
            Some(pki) => {
                println!("clients need a certificate from the dev CA; in a shell:");
                println!("  export ETCDCTL_API=3 ETCDCTL_ENDPOINTS={endpoints}");
                println!("  export {}", pki.etcdctl_env().join(" "));
                println!("  etcdctl put foo bar");
                println!("or with flags: etcdctl --endpoints={endpoints} {} put foo bar", pki.etcdctl_flags().join(" "));
            }
            None => println!("try: etcdctl --endpoints={endpoints} put foo bar"),
        }
        println!("press Ctrl-C to stop");

        let mut poll = tokio::time::interval(DEV_POLL_INTERVAL);
        let code = loop {
            tokio::select! {
                // A member stopped by the same Ctrl-C (the terminal signals the whole process
                // group) must not be mistaken for one that died: the signal is seen first.
                biased;
                () = &mut signal => {
                    eprintln!("concord dev: stopping");
                    break ExitCode::SUCCESS;
                }
                _ = poll.tick() => {
                    if let Some((name, status)) = exited(&mut children) {
                        eprintln!("concord dev: member {name} exited ({status}); stopping the others");
                        break ExitCode::from(1);
                    }
                }
            }
        };
        stop_members(&mut children).await;
        // Each relay ends when its member's pipe closes, that is once the member has exited.
        for relay in relays {
            let _ = relay.join();
        }
        Ok(code)
    })
}

/// The dev cluster's private CA and certificates, in `<data-dir>/pki`: one member
/// certificate for 127.0.0.1 and localhost that every member (and every member that joins)
/// uses, and a client certificate for `root`. Made on the first TLS run, then reused.
struct DevPki {
    dir: PathBuf,
}

impl DevPki {
    fn make(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let dir = std::path::absolute(data_dir.join("pki"))
            .context("cannot find the dev data directory")?;
        let pki = Self { dir };
        if pki.file("ca.pem").is_file()
            && pki.file("member.key").is_file()
            && pki.file("client.key").is_file()
        {
            return Ok(pki);
        }
        use tls::pki::{Authority, Validity};
        // A year: long enough for a development cluster, short enough to be obviously not
        // a production CA.
        let validity = Validity::from_now(Duration::from_secs(365 * 24 * 3600));
        let ca = Authority::new("concord-dev-ca", validity)?;
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        let member = ca.issue("concord-dev-member", &hosts, validity)?;
        let client = ca.issue("root", &hosts, validity)?;
        let write = |name: &str, pem: &str, private: bool| {
            tls::pki::write_pem(&pki.file(name), pem, private)
        };
        write("member.key", &member.key_pem, true)?;
        write("member.crt", &member.cert_pem, false)?;
        write("client.key", &client.key_pem, true)?;
        write("client.crt", &client.cert_pem, false)?;
        // The CA last: its presence says the set is complete.
        write("ca.pem", &ca.cert_pem(), false)?;
        Ok(pki)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn path(&self, name: &str) -> String {
        self.file(name).display().to_string()
    }

    /// `concord serve`'s flags: TLS and client-certificate auth on both ports.
    fn member_flags(&self) -> Vec<String> {
        tls::pki::mutual_tls_member_flags(
            &self.file("member.crt"),
            &self.file("member.key"),
            &self.file("ca.pem"),
        )
    }

    fn etcdctl_flags(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.path("ca.pem")),
            format!("--cert={}", self.path("client.crt")),
            format!("--key={}", self.path("client.key")),
        ]
    }

    fn etcdctl_env(&self) -> Vec<String> {
        vec![
            format!("ETCDCTL_CACERT={}", self.path("ca.pem")),
            format!("ETCDCTL_CERT={}", self.path("client.crt")),
            format!("ETCDCTL_KEY={}", self.path("client.key")),
        ]
    }

    /// How `concord dev --join` dials the cluster: the client certificate, the dev CA.
    fn dialer(&self) -> anyhow::Result<tls::Dialer> {
        let mut settings = tls::TlsSettings::new(
            tls::Side::Client,
            self.file("client.crt"),
            self.file("client.key"),
        );
        settings.trusted_ca_file = Some(self.file("ca.pem"));
        Ok(tls::Dialer::new(Some(std::sync::Arc::new(
            tls::ClientTls::new(settings)?,
        ))))
    }
}

/// The members of a dev cluster: m<i> on ports base + 10*i (clients) and + 1 (peers), on
/// https URLs with `tls`.
fn dev_members(count: u16, base_port: u16, tls: bool) -> anyhow::Result<Vec<DevMember>> {
    let scheme = if tls { "https" } else { "http" };
    (0..count)
        .map(|i| {
            let client = u32::from(base_port) + 10 * u32::from(i);
            let peer = client + 1;
            if peer > u32::from(u16::MAX) {
                anyhow::bail!(
                    "--base-port {base_port} is too high for {count} members: member m{i} would need port {peer}"
                );
            }
            Ok(DevMember {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{client}"),
                peer_url: format!("{scheme}://127.0.0.1:{peer}"),
            })
        })
        .collect()
}

/// `concord dev --join`: asks the running dev cluster for its members, adds member m<n> (n
/// the number of members) with `member add`, then runs it with `--initial-cluster-state
/// existing` in the foreground: it receives the data from the leader and serves, and
/// Ctrl-C stops it (it stays a member; `etcdctl member remove` takes it out).
fn dev_join(args: &DevArgs) -> anyhow::Result<ExitCode> {
    use proto::etcdserverpb::cluster_client::ClusterClient;
    use proto::etcdserverpb::{MemberAddRequest, MemberListRequest};
    let first = dev_members(1, args.base_port, !args.plaintext)?.remove(0);
    let pki = if args.plaintext {
        None
    } else {
        Some(DevPki::make(&args.data_dir)?)
    };
    let dialer = match &pki {
        Some(pki) => pki.dialer()?,
        None => tls::Dialer::plain(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (name, member, initial_cluster) = runtime.block_on(async {
        let (endpoint, connector) = dialer
            .endpoint(&first.client_url)
            .map_err(|e| anyhow::anyhow!(e))?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(3))
            .connect_with_connector(connector)
            .await
            .with_context(|| {
                format!(
                    "no dev cluster answers at {} (start one with `concord dev`)",
                    first.client_url
                )
            })?;
        let mut cluster = ClusterClient::new(channel);
        let listed = cluster
            .member_list(MemberListRequest::default())
            .await
            .context("member list")?
            .into_inner()
            .members;
        let index = u16::try_from(listed.len()).context("too many members")?;
        let member =
            dev_members(index + 1, args.base_port, !args.plaintext)?.remove(usize::from(index));
        let added = cluster
            .member_add(MemberAddRequest {
                peer_ur_ls: vec![member.peer_url.clone()],
                is_learner: false,
            })
            .await
            .with_context(|| format!("member add {}", member.peer_url))?
            .into_inner();
        let new_id = added.member.map_or(0, |m| m.id);
        let initial_cluster = added
            .members
            .iter()
            .flat_map(|m| {
                let name = if m.id == new_id {
                    member.name.clone()
                } else {
                    m.name.clone()
                };
                m.peer_ur_ls
                    .iter()
                    .map(move |url| format!("{name}={url}"))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join(",");
        anyhow::Ok((member.name.clone(), member, initial_cluster))
    })?;
    println!(
        "added {name} ({}) to the dev cluster; starting it with --initial-cluster-state existing",
        member.peer_url
    );
    let exe = std::env::current_exe().context("cannot find the concord executable")?;
    runtime.block_on(async {
        // Signals are watched before the member starts, so that it is never left behind.
        let signal = dev_signal()?;
        tokio::pin!(signal);
        let child = Command::new(exe)
            .arg("serve")
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(args.data_dir.join(&name))
            .args(["--listen-client-urls", &member.client_url])
            .args(["--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "existing"])
            .args(["--initial-cluster-token", "concord-dev"])
            .args(pki.as_ref().map(DevPki::member_flags).unwrap_or_default())
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the new member")?;
        let mut children = vec![(name, child)];
        loop {
            tokio::select! {
                () = &mut signal => {
                    stop_members(&mut children).await;
                    return Ok(ExitCode::SUCCESS);
                }
                () = tokio::time::sleep(DEV_POLL_INTERVAL) => {
                    if let Ok(Some(status)) = children[0].1.try_wait() {
                        eprintln!("concord dev: member {} exited ({status})", children[0].0);
                        return Ok(ExitCode::from(1));
                    }
                }
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed before it is returned.
fn dev_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot watch for SIGINT (Ctrl-C)")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// The first member that has exited, and how.
fn exited(children: &mut [(String, Child)]) -> Option<(String, std::process::ExitStatus)> {
    children
        .iter_mut()
        .find_map(|(name, child)| match child.try_wait() {
            Ok(Some(status)) => Some((name.clone(), status)),
            _ => None,
        })
}

/// Sends SIGTERM to every member still running, waits for all of them (at most
/// [`DEV_STOP_TIMEOUT`]), and kills any that is still running then.
async fn stop_members(children: &mut [(String, Child)]) {
    for (name, child) in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            if let Err(e) = terminate(child.id()) {
                eprintln!("concord dev: cannot send SIGTERM to member {name}: {e}");
            }
        }
    }
    let deadline = tokio::time::Instant::now() + DEV_STOP_TIMEOUT;
    loop {
        let running = children
            .iter_mut()
            .filter_map(|(_, child)| child.try_wait().ok())
            .filter(Option::is_none)
            .count();
        if running == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, child) in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            eprintln!(
                "concord dev: member {name} still running {} s after SIGTERM; killing it",
                DEV_STOP_TIMEOUT.as_secs()
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends SIGTERM to process `pid`.
fn terminate(pid: u32) -> anyhow::Result<()> {
    use nix::sys::signal::{kill, Signal};
    let pid = i32::try_from(pid).context("process id out of range")?;
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM)?;
    Ok(())
}

/// Copies `from` line by line to this process's stdout (or stderr), each line prefixed with
/// `name`, on a thread of its own; the thread ends at end of file.
fn relay(
    from: impl std::io::Read + Send + 'static,
    name: &str,
    to_stderr: bool,
) -> std::thread::JoinHandle<()> {
    let prefix = format!("{name} | ");
    std::thread::spawn(move || {
        use std::io::{BufRead as _, Write as _};
        let mut from = std::io::BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match from.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            // One write per line under the lock, so members' lines never interleave.
            let written = if to_stderr {
                let mut out = std::io::stderr().lock();
                out.write_all(prefix.as_bytes())
                    .and_then(|()| out.write_all(&line))
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(prefix.as_bytes())
                    .and_then(|()| out.write_all(&line))
                    .and_then(|()| out.flush())
            };
            if written.is_err() {
                // Nobody reads any more; keep draining so the member never blocks on a
                // full pipe.
                continue;
            }
        }
    })
}

fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let workload = match args.workload.as_str() {
        "put" => loadgen::Workload::Put,
        "get" => loadgen::Workload::Get,
        "get-serializable" => loadgen::Workload::GetSerializable,
        other => anyhow::bail!("unknown --workload {other:?}: use put, get or get-serializable"),
    };
    let config = loadgen::BenchConfig {
        endpoints: args.endpoints.split(',').map(str::to_string).collect(),
        connections: args.connections,
        clients: args.clients,
        total: args.total,
        key_size: args.key_size,
        value_size: args.value_size,
        workload,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(loadgen::run(&config))?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} ok, {} failed in {:.2}s: {:.0} req/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        report.succeeded,
        report.failed,
        report.elapsed.as_secs_f64(),
        report.throughput(),
        ms(report.latency[0]),
        ms(report.latency[1]),
        ms(report.latency[2]),
        ms(report.latency[3]),
        ms(report.latency[4]),
    );
    if let Some(error) = report.first_error {
        println!("first error: {error}");
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
