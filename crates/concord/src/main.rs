//! `concord`: the one binary. `serve` runs a member; `dev` runs a local cluster; `bench`
//! measures a cluster (Concord's or etcd's) through the public API.

use std::path::PathBuf;
use std::process::ExitCode;
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
    Serve(server::ServeArgs),
    /// Start a local cluster on 127.0.0.1 in one command; Ctrl-C stops it.
    Dev(DevArgs),
    /// Load a cluster through the etcd v3 API and report throughput and latency.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct DevArgs {
    /// Where the members keep their data (one subdirectory each).
    #[arg(long, default_value = "concord-dev-data")]
    data_dir: PathBuf,
    /// Number of members.
    #[arg(long, default_value_t = 3)]
    members: u16,
    /// Client port of the first member; member i listens on base + 10*i for clients and
    /// base + 10*i + 1 for peers.
    #[arg(long, default_value_t = 2379)]
    base_port: u16,
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("concord: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Commands::Serve(args) => serve(&args),
        Commands::Dev(args) => dev(&args),
        Commands::Bench(args) => bench(&args),
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn serve(args: &server::ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.validate()?;
    init_tracing(&args.log_level);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    runtime.block_on(server::run(config, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

fn dev(args: &DevArgs) -> anyhow::Result<ExitCode> {
    if args.members == 0 {
        anyhow::bail!("--members must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the concord executable")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let port = |i: u16, offset: u16| -> anyhow::Result<u16> {
        args.base_port
            .checked_add(10 * i + offset)
            .context("--base-port too high for this many members")
    };
    let mut initial_cluster = Vec::new();
    for i in 0..args.members {
        initial_cluster.push(format!("m{i}=http://127.0.0.1:{}", port(i, 1)?));
    }
    let initial_cluster = initial_cluster.join(",");
    let mut endpoints = Vec::new();
    let mut children = Vec::new();
    for i in 0..args.members {
        let name = format!("m{i}");
        let client = format!("http://127.0.0.1:{}", port(i, 0)?);
        let peer = format!("http://127.0.0.1:{}", port(i, 1)?);
        let data_dir = args.data_dir.join(&name);
        let child = std::process::Command::new(&exe)
            .args(["serve", "--name", &name])
            .arg("--data-dir")
            .arg(&data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", "concord-dev"])
            .spawn()
            .with_context(|| format!("cannot start member {name}"))?;
        endpoints.push(client);
        children.push((name, child));
    }
    let endpoints = endpoints.join(",");
    println!(
        "concord dev: {} members, data in {}",
        args.members,
        args.data_dir.display()
    );
    println!("client endpoints: {endpoints}");
    println!("try: ETCDCTL_API=3 etcdctl --endpoints={endpoints} put foo bar");
    println!("press Ctrl-C to stop");

    let runtime = tokio::runtime::Runtime::new()?;
    let stopped_by_user = runtime.block_on(async {
        let mut poll = tokio::time::interval(Duration::from_millis(200));
        let signal = shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                () = &mut signal => return true,
                _ = poll.tick() => {
                    for (name, child) in &mut children {
                        if let Ok(Some(status)) = child.try_wait() {
                            eprintln!("concord dev: member {name} exited ({status}); stopping the others");
                            return false;
                        }
                    }
                }
            }
        }
    });
    for (_, child) in &children {
        // SIGTERM: each member shuts down cleanly.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for (_, child) in &mut children {
        let _ = child.wait();
    }
    Ok(if stopped_by_user {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
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
