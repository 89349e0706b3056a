//! `shop`: A flash sale with reservations held by leases: never oversold.
//! See the crate's README. Exits 0 if every invariant held, 1 if one broke, 2 on an error.

use clap::Parser;

#[derive(Parser)]
#[command(about = "A flash sale with reservations held by leases: never oversold")]
struct Args {
    #[command(flatten)]
    config: examples::shop::Config,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    examples::exit("shop", examples::shop::run(&args.config).await);
}
