//! `file-transfer`: A file in checksummed chunks, interrupted and resumed, verified with SHA-256.
//! See the crate's README. Exits 0 if every invariant held, 1 if one broke, 2 on an error.

use clap::Parser;

#[derive(Parser)]
#[command(about = "A file in checksummed chunks, interrupted and resumed, verified with SHA-256")]
struct Args {
    #[command(flatten)]
    config: examples::file_transfer::Config,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    examples::exit(
        "file-transfer",
        examples::file_transfer::run(&args.config).await,
    );
}
