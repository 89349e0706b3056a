//! The watch hub's catch-up thread: watchers that fell behind read their events back from
//! the state machine's history (see the `watch` crate), and watchers that asked for them get
//! periodic progress notifications.

use std::time::Duration;

use mvcc::Store;
use storage::KvStore;
use watch::SyncOutcome;

use crate::shared::Shared;

/// How long the thread sleeps while no watcher is behind (etcd's resync period), unless a
/// watcher falling behind wakes it.
const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Runs catch-up passes until the node stops.
pub(crate) fn run<S: KvStore>(shared: &Shared, store: &Store<S>) {
    let mut last_progress = shared.config.clock.now();
    while !shared.is_stopped() {
        match shared.watch_hub.sync(store) {
            Ok(SyncOutcome::Advanced) => {}
            Ok(SyncOutcome::Idle | SyncOutcome::Stuck) => shared.watch_hub.wait(SYNC_INTERVAL),
            Err(e) => {
                shared.fail(format!("reading history for watchers failed: {e}"));
                return;
            }
        }
        let now = shared.config.clock.now();
        if now.duration_since(last_progress) >= shared.config.watch_progress_notify_interval {
            shared.watch_hub.notify_progress();
            last_progress = now;
        }
    }
}

/// One catch-up pass, for a node driven step by step. False if the member failed.
pub(crate) fn step<S: KvStore>(shared: &Shared, store: &Store<S>) -> bool {
    match shared.watch_hub.sync(store) {
        Ok(_) => true,
        Err(e) => {
            shared.fail(format!("reading history for watchers failed: {e}"));
            false
        }
    }
}
