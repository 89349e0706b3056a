//! `workers`: Registration by lease, a leader by election, the leader's work fenced.
//! See the crate's README. Exits 0 if every invariant held, 1 if one broke, 2 on an error.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Registration by lease, a leader by election, the leader's work fenced")]
struct Args {
    #[command(flatten)]
    config: examples::workers::Config,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    examples::exit("workers", examples::workers::run(&args.config).await);
}
