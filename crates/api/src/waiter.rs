//! The clean-up a waiting Lock or Campaign call owes when its client gives up: the call's
//! key holds a place in a queue, and a client that left must not keep others waiting.

use mvcc::Command;
use node::Node;

/// Proposes a clean-up command if the waiting call is dropped before it answers.
pub(crate) struct Waiter {
    node: Node,
    cleanup: Option<Command>,
}

impl Waiter {
    /// Arms `cleanup` for a call that waits on `node`.
    pub(crate) fn new(node: Node, cleanup: Command) -> Self {
        Self {
            node,
            cleanup: Some(cleanup),
        }
    }

    /// The call has answered (or failed in a way that keeps its place): nothing to undo.
    pub(crate) fn disarm(&mut self) {
        self.cleanup = None;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let Some(cleanup) = self.cleanup.take() else {
            return;
        };
        let node = self.node.clone();
        // Best effort: if it fails, the lease's expiry removes the key.
        tokio::spawn(async move {
            let _ = node.propose(cleanup).await;
        });
    }
}
