//! `game`: An item many servers see: exactly one player gets it, every server learns who.
//! See the crate's README. Exits 0 if every invariant held, 1 if one broke, 2 on an error.

use clap::Parser;

#[derive(Parser)]
#[command(about = "An item many servers see: exactly one player gets it, every server learns who")]
struct Args {
    #[command(flatten)]
    config: examples::game::Config,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    examples::exit("game", examples::game::run(&args.config).await);
}
