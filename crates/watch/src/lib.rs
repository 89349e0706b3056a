//! The watch hub of a member: who watches which keys, and how every change reaches them in
//! order, exactly once, with bounded memory.
//!
//! The apply task publishes the events of each applied batch ([`Hub::publish`]). A *synced*
//! watcher (it has been sent everything up to the last published revision) gets its share at
//! once, as one message per batch, if its stream's queue has room. A watcher whose queue is
//! full, or that starts in the past, is *unsynced*: it holds no events, only the revision it
//! needs next, and [`Hub::sync`] (run by a thread of `node`) reads its events back from the
//! store's history in bounded chunks until it has caught up and is synced again. So memory
//! is bounded by the per-stream queues whatever the clients do, and a slow client costs reads,
//! not memory.
//!
//! Invariants:
//! - Per watcher, events are queued in revision order, each once, and a revision is never split
//!   across messages: a watcher's `next` only moves forward, past whole revisions.
//! - A synced watcher's `next` is past the last published revision.
//! - A stream's messages keep the order they were queued in. A watcher is `Pending` (gets
//!   nothing) until its `created` message is queued, so that message comes first.
//! - A progress message for revision `r` is queued only when every event up to `r` of every
//!   watcher it speaks for is queued before it.
//!
//! Pure logic over a lock and bounded channels: no clock, no thread, no IO but the history
//! reads of [`HistorySource`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mvcc::{Event, EventKind, EventsWanted, History, MvccError, Revision};
use parking_lot::{Condvar, Mutex};
use tokio::sync::mpsc::{self, error::TrySendError};

/// A watcher's id, unique within its stream (etcd's `WatchID`).
pub type WatchId = i64;
/// The id a client sends to have the server choose one.
pub const AUTO_WATCH_ID: WatchId = 0;
/// The id of a response that is about no single watcher: a failed create, a progress reply
/// for the whole stream.
pub const NO_WATCH_ID: WatchId = -1;

/// Settings of the hub. Defaults follow etcd's where it has one.
#[derive(Clone, Copy, Debug)]
pub struct HubConfig {
    /// Messages queued per stream before its watchers fall back to history (etcd: 128).
    pub stream_queue: usize,
    /// Watchers on a member at most; a create beyond is refused.
    pub max_watchers: usize,
    /// Bytes of keys and values one catch-up read gathers at most (whole revisions, so a
    /// single larger revision is still read whole).
    pub sync_read_bytes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            stream_queue: 128,
            max_watchers: 100_000,
            sync_read_bytes: 1024 * 1024,
        }
    }
}

/// Why a watcher could not be created. The texts are etcd's `cancel_reason`s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// `range_end` is not after `key`.
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
    /// The client chose an id already in use on the stream.
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    /// The member has [`HubConfig::max_watchers`] already.
    #[error("etcdserver: too many requests")]
    TooManyWatchers,
}

/// The keys a watcher watches, after etcd's rules for a create request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// One key.
    Key(Vec<u8>),
    /// Every key `>=` this one.
    From(Vec<u8>),
    /// Keys in `[start, end)`.
    Between(Vec<u8>, Vec<u8>),
}

impl KeyRange {
    /// etcd's watch range from a create request: an empty key means `"\0"` (the smallest);
    /// an empty `range_end` the key alone; `"\0"` every key from `key` on; anything else
    /// `[key, range_end)`, which must not be empty.
    ///
    /// # Errors
    /// `EmptyRange` when `range_end <= key`.
    pub fn new(key: &[u8], range_end: &[u8]) -> Result<Self, WatchError> {
        let key = if key.is_empty() {
            vec![0]
        } else {
            key.to_vec()
        };
        match range_end {
            [] => Ok(KeyRange::Key(key)),
            [0] => Ok(KeyRange::From(key)),
            end if key.as_slice() < end => Ok(KeyRange::Between(key, end.to_vec())),
            _ => Err(WatchError::EmptyRange),
        }
    }

    /// Whether `key` is in the range.
    #[must_use]
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k.as_slice() == key,
            KeyRange::From(start) => start.as_slice() <= key,
            KeyRange::Between(start, end) => start.as_slice() <= key && key < end.as_slice(),
        }
    }
}

/// What a client asks of a new watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    /// The id the client chose, or [`AUTO_WATCH_ID`].
    pub id: WatchId,
    /// The keys.
    pub range: KeyRange,
    /// First revision to report (inclusive); 0 = after the current one. Past revisions come
    /// from history; a future one is waited for.
    pub start_revision: Revision,
    /// Leave out puts (etcd's NOPUT filter).
    pub no_put: bool,
    /// Leave out deletes (etcd's NODELETE filter).
    pub no_delete: bool,
    /// Report each change's previous version.
    pub prev_kv: bool,
    /// Send periodic progress notifications ([`Hub::notify_progress`]).
    pub progress_notify: bool,
    /// Split responses larger than the request limit (the api does it; the hub carries the
    /// flag).
    pub fragment: bool,
}

impl WatchSpec {
    fn wants(&self, event: &Event) -> bool {
        let filtered = match event.kind {
            EventKind::Put => self.no_put,
            EventKind::Delete => self.no_delete,
        };
        !filtered && self.range.contains(&event.kv.key)
    }
}

/// What a stream sends its client, in order. `api` turns each into a `WatchResponse`;
/// `revision` is the header revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A watcher was created.
    Created {
        /// Its id.
        watch_id: WatchId,
        /// The current revision when it was created.
        revision: Revision,
    },
    /// A create was refused (etcd: `created` and `canceled`, id -1, with the reason).
    CreateFailed {
        /// The current revision.
        revision: Revision,
        /// etcd's `cancel_reason`.
        reason: String,
    },
    /// A watcher was cancelled at the client's request.
    Canceled {
        /// Its id.
        watch_id: WatchId,
        /// The current revision.
        revision: Revision,
    },
    /// Events for one watcher: whole revisions, in order.
    Events {
        /// The watcher.
        watch_id: WatchId,
        /// The revision the events were read or published at.
        revision: Revision,
        /// The events (shared between the watchers that get them).
        events: Vec<Arc<Event>>,
        /// Whether the watcher asked for previous versions (events may carry them anyway).
        prev_kv: bool,
        /// Whether the watcher accepts fragmented responses.
        fragment: bool,
    },
    /// The watcher needs events that compaction removed; it is cancelled.
    Compacted {
        /// The watcher.
        watch_id: WatchId,
        /// The compaction revision.
        compact_revision: Revision,
    },
    /// Every event up to `revision` has been sent: for one watcher, or for every watcher on
    /// the stream when `watch_id` is [`NO_WATCH_ID`].
    Progress {
        /// The watcher, or [`NO_WATCH_ID`].
        watch_id: WatchId,
        /// The revision promised.
        revision: Revision,
    },
}

/// Where the hub reads history for watchers catching up. `mvcc::Store` is one.
pub trait HistorySource {
    /// The compaction revision: events below it are gone.
    fn compacted(&self) -> Revision;
    /// Events of revisions `from..=to`, as [`mvcc::Store::history`].
    ///
    /// # Errors
    /// As [`mvcc::Store::history`].
    fn history(
        &self,
        from: Revision,
        to: Revision,
        max_bytes: usize,
        with_prev_kv: bool,
    ) -> Result<History, MvccError>;
}

impl<S: storage::KvStore> HistorySource for mvcc::Store<S> {
    fn compacted(&self) -> Revision {
        self.compact_revision()
    }

    fn history(
        &self,
        from: Revision,
        to: Revision,
        max_bytes: usize,
        with_prev_kv: bool,
    ) -> Result<History, MvccError> {
        mvcc::Store::history(self, from, to, max_bytes, with_prev_kv)
    }
}

/// What one [`Hub::sync`] pass achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Every watcher is synced.
    Idle,
    /// Some watcher moved forward; run again at once.
    Advanced,
    /// Watchers are behind but none could move (full queues): try again later.
    Stuck,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncState {
    /// Created, but its `created` message may not be queued yet: gets nothing.
    Pending,
    /// Has everything up to the last published revision; gets new events as published.
    Synced,
    /// Behind: catches up from history.
    Unsynced,
}

struct Watcher {
    spec: WatchSpec,
    /// The first revision not yet sent.
    next: Revision,
    state: SyncState,
}

impl Watcher {
    /// The events of `events` it has not been sent yet and wants.
    fn share(&self, events: &[Arc<Event>]) -> Vec<Arc<Event>> {
        events
            .iter()
            .filter(|e| e.revision() >= self.next && self.spec.wants(e))
            .cloned()
            .collect()
    }
}

/// Identifies a watcher: its stream and its id there.
type WatcherKey = (u64, WatchId);

struct StreamEntry {
    sink: mpsc::Sender<Message>,
    /// etcd's `nextID`: where the search for a free automatic id starts.
    next_auto_id: WatchId,
}

#[derive(Default)]
struct State {
    /// The last published revision.
    current: Revision,
    watchers: BTreeMap<WatcherKey, Watcher>,
    streams: BTreeMap<u64, StreamEntry>,
    next_stream: u64,
    /// Watchers that want previous versions.
    prev_kv_watchers: usize,
    /// Set when a watcher falls behind; cleared by [`Hub::wait`].
    woken: bool,
}

impl State {
    fn remove_watcher(&mut self, key: WatcherKey) -> bool {
        match self.watchers.remove(&key) {
            Some(watcher) => {
                if watcher.spec.prev_kv {
                    self.prev_kv_watchers -= 1;
                }
                true
            }
            None => false,
        }
    }

    fn remove_stream(&mut self, stream: u64) {
        let keys: Vec<WatcherKey> = self
            .watchers
            .range((stream, WatchId::MIN)..=(stream, WatchId::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            self.remove_watcher(key);
        }
        self.streams.remove(&stream);
    }

    /// Queues `message` on `stream` without waiting. `Err(true)` if the stream is gone.
    fn try_send(&self, stream: u64, message: Message) -> Result<(), bool> {
        let Some(entry) = self.streams.get(&stream) else {
            return Err(true);
        };
        queue(&entry.sink, message)
    }
}

/// Queues `events` for watcher `id` of `stream` without waiting. `Err(false)` if the queue
/// is full, `Err(true)` if the stream is gone.
fn offer(
    streams: &BTreeMap<u64, StreamEntry>,
    stream: u64,
    id: WatchId,
    revision: Revision,
    events: Vec<Arc<Event>>,
    spec: &WatchSpec,
) -> Result<(), bool> {
    let Some(entry) = streams.get(&stream) else {
        return Err(true);
    };
    let message = Message::Events {
        watch_id: id,
        revision,
        events,
        prev_kv: spec.prev_kv,
        fragment: spec.fragment,
    };
    queue(&entry.sink, message)
}

/// Queues `message` without waiting: `Err(false)` if the queue is full, `Err(true)` if its
/// reader is gone.
fn queue(sink: &mpsc::Sender<Message>, message: Message) -> Result<(), bool> {
    match sink.try_send(message) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => Err(false),
        Err(TrySendError::Closed(_)) => Err(true),
    }
}

/// The watchers of one member and the fan-out of its applied changes.
pub struct Hub {
    config: HubConfig,
    state: Mutex<State>,
    wake: Condvar,
}

impl Hub {
    /// A hub whose store is at `current`.
    #[must_use]
    pub fn new(current: Revision, config: HubConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            state: Mutex::new(State {
                current,
                ..State::default()
            }),
            wake: Condvar::new(),
        })
    }

    /// Opens a stream: its handle, and the receiving end of its message queue.
    #[must_use]
    pub fn open(self: &Arc<Self>) -> (WatchStream, mpsc::Receiver<Message>) {
        let (sink, receiver) = mpsc::channel(self.config.stream_queue.max(1));
        let mut state = self.state.lock();
        let id = state.next_stream;
        state.next_stream += 1;
        state.streams.insert(
            id,
            StreamEntry {
                sink: sink.clone(),
                next_auto_id: 0,
            },
        );
        let stream = WatchStream {
            hub: self.clone(),
            id,
            sink,
        };
        (stream, receiver)
    }

    /// The last published revision.
    pub fn current(&self) -> Revision {
        self.state.lock().current
    }

    /// Watchers on the member.
    pub fn watchers(&self) -> usize {
        self.state.lock().watchers.len()
    }

    /// Which events the next applied batch must report: none while nobody watches.
    pub fn events_wanted(&self) -> EventsWanted {
        let state = self.state.lock();
        if state.watchers.is_empty() {
            EventsWanted::None
        } else if state.prev_kv_watchers > 0 {
            EventsWanted::WithPrevKv
        } else {
            EventsWanted::Events
        }
    }

    /// The apply task applied a batch: the store is now at `revision`, and `events` are the
    /// batch's changes, built as `wanted` (from [`Hub::events_wanted`] before the batch) says.
    /// Synced watchers get their share now; a watcher whose queue is full, or for which the
    /// events were not built as it needs (it arrived during the batch), falls back to
    /// history.
    pub fn publish(&self, events: Vec<Event>, revision: Revision, wanted: EventsWanted) {
        let mut state = self.state.lock();
        if revision <= state.current {
            return;
        }
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        let mut closed = Vec::new();
        let mut behind = false;
        let State {
            watchers, streams, ..
        } = &mut *state;
        for (&(stream, id), watcher) in watchers.iter_mut() {
            if watcher.state != SyncState::Synced || watcher.next > revision {
                continue;
            }
            let built = match wanted {
                EventsWanted::None => false,
                EventsWanted::Events => !watcher.spec.prev_kv,
                EventsWanted::WithPrevKv => true,
            };
            if !built {
                watcher.state = SyncState::Unsynced;
                behind = true;
                continue;
            }
            let mine = watcher.share(&events);
            if mine.is_empty() {
                watcher.next = revision + 1;
                continue;
            }
            match offer(streams, stream, id, revision, mine, &watcher.spec) {
                Ok(()) => watcher.next = revision + 1,
                Err(false) => {
                    watcher.state = SyncState::Unsynced;
                    behind = true;
                }
                Err(true) => closed.push(stream),
            }
        }
        state.current = revision;
        for stream in closed {
            state.remove_stream(stream);
        }
        if behind {
            state.woken = true;
            self.wake.notify_all();
        }
    }

    /// The state machine was replaced by a snapshot at `revision`: revisions may have been
    /// skipped, so every watcher catches up from the new history (or learns it was
    /// compacted away).
    pub fn reset(&self, revision: Revision) {
        let mut state = self.state.lock();
        state.current = state.current.max(revision);
        for watcher in state.watchers.values_mut() {
            if watcher.state == SyncState::Synced {
                watcher.state = SyncState::Unsynced;
            }
        }
        state.woken = true;
        self.wake.notify_all();
    }

    /// One catch-up pass for the unsynced watchers: those that need compacted revisions are
    /// told so and removed; the others get the next chunk of history (at most
    /// [`HubConfig::sync_read_bytes`], read once for all of them) if their queue has room,
    /// and are synced once they reach the last published revision.
    ///
    /// # Errors
    /// Storage errors from `source` (the member is failing).
    pub fn sync(&self, source: &dyn HistorySource) -> Result<SyncOutcome, MvccError> {
        let mut advanced = false;
        let (from, to, with_prev_kv) = {
            let mut state = self.state.lock();
            let compacted = source.compacted();
            let lost: Vec<WatcherKey> = state
                .watchers
                .iter()
                .filter(|(_, w)| w.state == SyncState::Unsynced && w.next < compacted)
                .map(|(key, _)| *key)
                .collect();
            for key in lost {
                let message = Message::Compacted {
                    watch_id: key.1,
                    compact_revision: compacted,
                };
                match state.try_send(key.0, message) {
                    Ok(()) => {
                        state.remove_watcher(key);
                        advanced = true;
                    }
                    Err(true) => state.remove_stream(key.0),
                    Err(false) => {}
                }
            }
            // A negative start revision that compaction does not rule out reads no history
            // (etcd's revision encoding makes that range empty): the watcher starts now.
            let current = state.current;
            for watcher in state.watchers.values_mut() {
                if watcher.state == SyncState::Unsynced && watcher.next < 0 {
                    watcher.next = current + 1;
                    watcher.state = SyncState::Synced;
                    advanced = true;
                }
            }
            let behind = state
                .watchers
                .values()
                .filter(|w| w.state == SyncState::Unsynced && w.next >= compacted);
            let mut from = None::<Revision>;
            let mut with_prev_kv = false;
            for watcher in behind {
                from = Some(from.map_or(watcher.next, |f| f.min(watcher.next)));
                with_prev_kv |= watcher.spec.prev_kv;
            }
            match from {
                Some(from) => (from, state.current, with_prev_kv),
                None if advanced => return Ok(SyncOutcome::Advanced),
                None if state
                    .watchers
                    .values()
                    .any(|w| w.state == SyncState::Unsynced) =>
                {
                    return Ok(SyncOutcome::Stuck)
                }
                None => return Ok(SyncOutcome::Idle),
            }
        };
        let read = match source.history(from, to, self.config.sync_read_bytes, with_prev_kv) {
            Ok(read) => read,
            // Compacted while the lock was released: the next pass reports it.
            Err(MvccError::Compacted) => return Ok(SyncOutcome::Advanced),
            Err(e) => return Err(e),
        };
        let events: Vec<Arc<Event>> = read.events.into_iter().map(Arc::new).collect();
        let mut state = self.state.lock();
        let current = state.current;
        let mut closed = Vec::new();
        let State {
            watchers, streams, ..
        } = &mut *state;
        for (&(stream, id), watcher) in watchers.iter_mut() {
            // Only those the read was made for: behind, from within the chunk read, with the
            // previous versions they need.
            if watcher.state != SyncState::Unsynced
                || watcher.next < from
                || (watcher.spec.prev_kv && !with_prev_kv)
            {
                continue;
            }
            let mine = watcher.share(&events);
            let delivered = !mine.is_empty();
            if delivered {
                match offer(streams, stream, id, to, mine, &watcher.spec) {
                    Ok(()) => {}
                    Err(false) => continue,
                    Err(true) => {
                        closed.push(stream);
                        continue;
                    }
                }
            }
            let next = watcher.next.max(read.through + 1);
            advanced |= next > watcher.next || delivered;
            watcher.next = next;
            if watcher.next > current {
                watcher.state = SyncState::Synced;
                advanced = true;
            }
        }
        for stream in closed {
            state.remove_stream(stream);
        }
        Ok(if advanced {
            SyncOutcome::Advanced
        } else {
            SyncOutcome::Stuck
        })
    }

    /// Sends a progress notification to every synced watcher that asked for them (etcd's
    /// periodic `progress_notify`); a watcher whose queue is full skips this one.
    pub fn notify_progress(&self) {
        let state = self.state.lock();
        for (&(stream, id), watcher) in &state.watchers {
            if watcher.spec.progress_notify && watcher.state == SyncState::Synced {
                let _ = state.try_send(
                    stream,
                    Message::Progress {
                        watch_id: id,
                        revision: state.current,
                    },
                );
            }
        }
    }

    /// Waits until a watcher falls behind or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let mut state = self.state.lock();
        if !state.woken {
            self.wake.wait_for(&mut state, timeout);
        }
        state.woken = false;
    }

    /// Wakes [`Hub::wait`] (for shutdown).
    pub fn wake(&self) {
        self.state.lock().woken = true;
        self.wake.notify_all();
    }
}

/// One client stream's watchers. Dropping it removes them.
pub struct WatchStream {
    hub: Arc<Hub>,
    id: u64,
    sink: mpsc::Sender<Message>,
}

impl WatchStream {
    /// Registers a watcher, `Pending` until [`WatchStream::activate`]. Returns its id and the
    /// current revision (the header revision of its `created` message): with start revision
    /// 0 it reports every change after that revision.
    ///
    /// # Errors
    /// `DuplicateId`, `TooManyWatchers`.
    pub fn watch(&self, spec: WatchSpec) -> Result<(WatchId, Revision), WatchError> {
        let mut state = self.hub.state.lock();
        if state.watchers.len() >= self.hub.config.max_watchers {
            return Err(WatchError::TooManyWatchers);
        }
        let id = if spec.id == AUTO_WATCH_ID {
            let entry = state
                .streams
                .get(&self.id)
                .expect("an open stream is registered");
            let mut id = entry.next_auto_id;
            while state.watchers.contains_key(&(self.id, id)) {
                id += 1;
            }
            state
                .streams
                .get_mut(&self.id)
                .expect("an open stream is registered")
                .next_auto_id = id + 1;
            id
        } else if state.watchers.contains_key(&(self.id, spec.id)) {
            return Err(WatchError::DuplicateId);
        } else {
            spec.id
        };
        let current = state.current;
        let next = if spec.start_revision == 0 {
            current + 1
        } else {
            spec.start_revision
        };
        if spec.prev_kv {
            state.prev_kv_watchers += 1;
        }
        state.watchers.insert(
            (self.id, id),
            Watcher {
                spec,
                next,
                state: SyncState::Pending,
            },
        );
        Ok((id, current))
    }

    /// The watcher's `created` message is queued: it may now get events. Synced at once if it
    /// starts after the last published revision, else it catches up from history.
    pub fn activate(&self, id: WatchId) {
        let mut state = self.hub.state.lock();
        let current = state.current;
        let Some(watcher) = state.watchers.get_mut(&(self.id, id)) else {
            return;
        };
        if watcher.state != SyncState::Pending {
            return;
        }
        if watcher.next > current {
            watcher.state = SyncState::Synced;
        } else {
            watcher.state = SyncState::Unsynced;
            state.woken = true;
            self.hub.wake.notify_all();
        }
    }

    /// Removes a watcher; false if the stream has none with that id. Nothing more is queued
    /// for it afterwards.
    pub fn cancel(&self, id: WatchId) -> bool {
        self.hub.state.lock().remove_watcher((self.id, id))
    }

    /// etcd's `progress_request`: if every watcher on the stream is synced, queues a progress
    /// message for the whole stream at the last published revision and returns true;
    /// otherwise (or if the queue is full) sends nothing and returns false, and the client
    /// asks again. A stream without watchers gets nothing.
    pub fn request_progress(&self) -> bool {
        let state = self.hub.state.lock();
        let mut mine = state
            .watchers
            .range((self.id, WatchId::MIN)..=(self.id, WatchId::MAX))
            .peekable();
        if mine.peek().is_none() {
            return true;
        }
        if !mine.all(|(_, w)| w.state == SyncState::Synced) {
            return false;
        }
        let message = Message::Progress {
            watch_id: NO_WATCH_ID,
            revision: state.current,
        };
        state.try_send(self.id, message).is_ok()
    }

    /// Queues a message for the client, waiting for room (the control path: created,
    /// cancelled, failed creates). Returns false if the client is gone.
    pub async fn send(&self, message: Message) -> bool {
        self.sink.send(message).await.is_ok()
    }

    /// The last published revision.
    pub fn current(&self) -> Revision {
        self.hub.current()
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.hub.state.lock().remove_stream(self.id);
    }
}

#[cfg(test)]
mod tests;
