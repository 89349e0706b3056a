//! `bank`: Concurrent transfers as txns guarded by mod revisions: the total never changes.
//! See the crate's README. Exits 0 if every invariant held, 1 if one broke, 2 on an error.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Concurrent transfers as txns guarded by mod revisions: the total never changes")]
struct Args {
    #[command(flatten)]
    config: examples::bank::Config,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    examples::exit("bank", examples::bank::run(&args.config).await);
}
