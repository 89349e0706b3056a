use std::collections::BTreeMap;

use mvcc::KeyValue;
use proptest::prelude::*;

use super::*;

/// A store's history: every event ever made, and a compaction revision below which they are
/// gone.
#[derive(Default)]
struct FakeHistory {
    events: Vec<Event>,
    compacted: Revision,
}

impl HistorySource for FakeHistory {
    fn compacted(&self) -> Revision {
        self.compacted
    }

    fn history(
        &self,
        from: Revision,
        to: Revision,
        max_bytes: usize,
        with_prev_kv: bool,
    ) -> Result<History, MvccError> {
        if from < self.compacted {
            return Err(MvccError::Compacted);
        }
        let mut history = History {
            events: Vec::new(),
            through: to,
        };
        let mut bytes = 0;
        for event in self
            .events
            .iter()
            .filter(|e| (from..=to).contains(&e.revision()))
        {
            let last = history.events.last().map(Event::revision);
            if bytes >= max_bytes && last.is_some_and(|last| event.revision() > last) {
                history.through = last.unwrap_or(to);
                break;
            }
            bytes += event.kv.key.len() + event.kv.value.len();
            let mut event = event.clone();
            if !with_prev_kv {
                event.prev_kv = None;
            }
            history.events.push(event);
        }
        Ok(history)
    }
}

fn event(key: u8, revision: Revision, delete: bool) -> Event {
    Event {
        kind: if delete {
            EventKind::Delete
        } else {
            EventKind::Put
        },
        kv: KeyValue {
            key: vec![b'a' + key],
            mod_revision: revision,
            value: vec![b'v'; 8],
            ..KeyValue::default()
        },
        // Every event of the fake has a previous version, so a watcher that asked for them
        // must see one on every event.
        prev_kv: Some(KeyValue {
            key: vec![b'a' + key],
            ..KeyValue::default()
        }),
    }
}

fn spec(range: KeyRange, start_revision: Revision) -> WatchSpec {
    WatchSpec {
        id: AUTO_WATCH_ID,
        range,
        start_revision,
        no_put: false,
        no_delete: false,
        prev_kv: false,
        progress_notify: false,
        fragment: false,
    }
}

fn drain(receiver: &mut mpsc::Receiver<Message>) -> Vec<Message> {
    let mut out = Vec::new();
    while let Ok(message) = receiver.try_recv() {
        out.push(message);
    }
    out
}

/// Creates a watcher as the api does: register, queue `created`, activate.
fn create(stream: &WatchStream, spec: WatchSpec) -> WatchId {
    let (id, revision) = stream.watch(spec).unwrap();
    stream
        .sink
        .try_send(Message::Created {
            watch_id: id,
            revision,
        })
        .unwrap();
    stream.activate(id);
    id
}

// Proves the watch range rules of etcd's create request.
#[test]
fn key_ranges_follow_etcd() {
    assert_eq!(KeyRange::new(b"", b""), Ok(KeyRange::Key(vec![0])));
    assert_eq!(
        KeyRange::new(b"a", b"\0"),
        Ok(KeyRange::From(b"a".to_vec()))
    );
    assert_eq!(KeyRange::new(b"a", b"a"), Err(WatchError::EmptyRange));
    assert_eq!(KeyRange::new(b"b", b"a"), Err(WatchError::EmptyRange));
    let prefix = KeyRange::new(b"a", b"b").unwrap();
    assert!(prefix.contains(b"a") && prefix.contains(b"az") && !prefix.contains(b"b"));
    assert!(KeyRange::From(b"b".to_vec()).contains(b"zz"));
    assert!(!KeyRange::From(b"b".to_vec()).contains(b"a"));
}

// Proves etcd's id rules: automatic ids count up from 0 and skip ids in use; a client's own
// id may not repeat on a stream but may on another; cancelling frees it; ids are per stream.
#[test]
fn watch_ids_follow_etcd() {
    let hub = Hub::new(1, HubConfig::default());
    let (stream, _rx) = hub.open();
    let (other, _rx2) = hub.open();
    let chosen = |id| WatchSpec {
        id,
        ..spec(KeyRange::Key(b"a".to_vec()), 0)
    };
    assert_eq!(stream.watch(chosen(1)).map(|r| r.0), Ok(1));
    assert_eq!(stream.watch(chosen(0)).map(|r| r.0), Ok(0));
    assert_eq!(stream.watch(chosen(0)).map(|r| r.0), Ok(2));
    assert_eq!(stream.watch(chosen(1)), Err(WatchError::DuplicateId));
    assert_eq!(other.watch(chosen(1)).map(|r| r.0), Ok(1));
    assert!(stream.cancel(1));
    assert!(!stream.cancel(1));
    assert_eq!(stream.watch(chosen(1)).map(|r| r.0), Ok(1));
    assert_eq!(hub.watchers(), 4);
    drop(stream);
    assert_eq!(hub.watchers(), 1);
    let small = Hub::new(
        1,
        HubConfig {
            max_watchers: 1,
            ..HubConfig::default()
        },
    );
    let (stream, _rx) = small.open();
    stream.watch(chosen(0)).unwrap();
    assert_eq!(stream.watch(chosen(0)), Err(WatchError::TooManyWatchers));
}

// Proves the live path: a synced watcher gets the events of its range that pass its filters,
// as one message per published batch, after its `created`; nothing is built while nobody
// watches; and a watcher registered during a batch built without its events catches up.
#[test]
fn synced_watchers_get_published_events() {
    let hub = Hub::new(1, HubConfig::default());
    assert_eq!(hub.events_wanted(), EventsWanted::None);
    let (stream, mut rx) = hub.open();
    let id = create(
        &stream,
        WatchSpec {
            no_delete: true,
            ..spec(KeyRange::Between(b"a".to_vec(), b"c".to_vec()), 0)
        },
    );
    assert_eq!(hub.events_wanted(), EventsWanted::Events);
    hub.publish(
        vec![event(0, 2, false), event(2, 2, false), event(1, 2, true)],
        2,
        EventsWanted::Events,
    );
    let messages = drain(&mut rx);
    assert_eq!(messages.len(), 2);
    assert!(matches!(messages[0], Message::Created { watch_id, revision: 1 } if watch_id == id));
    let Message::Events {
        events, revision, ..
    } = &messages[1]
    else {
        panic!("{messages:?}");
    };
    assert_eq!(*revision, 2);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kv.key, b"a");

    // A batch made while the hub said nobody wants events leaves the watcher behind; it then
    // catches up from history.
    let mut history = FakeHistory::default();
    history.events.push(event(0, 3, false));
    hub.publish(Vec::new(), 3, EventsWanted::None);
    assert!(drain(&mut rx).is_empty());
    assert_eq!(hub.sync(&history), Ok(SyncOutcome::Advanced));
    let messages = drain(&mut rx);
    assert!(matches!(&messages[..], [Message::Events { events, .. }] if events[0].revision() == 3));
    assert_eq!(hub.sync(&history), Ok(SyncOutcome::Idle));
}

// Proves progress requests: answered for the whole stream at the last published revision
// only while every watcher on it is synced; a stream without watchers gets nothing.
#[test]
fn progress_requests_wait_for_synced_watchers() {
    let hub = Hub::new(5, HubConfig::default());
    let (stream, mut rx) = hub.open();
    assert!(stream.request_progress());
    assert!(drain(&mut rx).is_empty());
    create(&stream, spec(KeyRange::Key(b"a".to_vec()), 2));
    assert!(
        !stream.request_progress(),
        "a watcher from the past is not synced"
    );
    let mut history = FakeHistory::default();
    history.events.push(event(0, 3, false));
    assert_eq!(hub.sync(&history), Ok(SyncOutcome::Advanced));
    assert!(stream.request_progress());
    let messages = drain(&mut rx);
    assert!(matches!(
        messages.last(),
        Some(Message::Progress {
            watch_id: NO_WATCH_ID,
            revision: 5
        })
    ));
}

// Proves compaction: a watcher that needs revisions below the compaction revision gets one
// `Compacted` message with that revision and is removed.
#[test]
fn watchers_behind_compaction_are_told_and_removed() {
    let hub = Hub::new(10, HubConfig::default());
    let (stream, mut rx) = hub.open();
    let id = create(&stream, spec(KeyRange::From(vec![0]), 3));
    let history = FakeHistory {
        events: Vec::new(),
        compacted: 6,
    };
    assert_eq!(hub.sync(&history), Ok(SyncOutcome::Advanced));
    let messages = drain(&mut rx);
    assert_eq!(
        messages[1],
        Message::Compacted {
            watch_id: id,
            compact_revision: 6
        }
    );
    assert_eq!(hub.watchers(), 0);
}

#[derive(Clone, Debug)]
enum Op {
    /// A write of one or two keys, built as the hub asked before the batch; optionally a
    /// watcher is created in between (the race the hub must survive).
    Write(u8, Option<u8>, bool, bool),
    Watch(usize, u8, u8, u8, bool, bool),
    Cancel(usize, u8),
    Consume(usize, u8),
    Sync,
    Compact(u8),
    Progress(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..5, proptest::option::of(0u8..5), any::<bool>(), any::<bool>())
            .prop_map(|(a, b, d, race)| Op::Write(a, b, d, race)),
        2 => (0usize..2, 0u8..5, 0u8..4, any::<u8>(), any::<bool>(), any::<bool>())
            .prop_map(|(s, k, r, start, prev, filter)| Op::Watch(s, k, r, start, prev, filter)),
        1 => (0usize..2, 0u8..4).prop_map(|(s, id)| Op::Cancel(s, id)),
        4 => (0usize..2, 0u8..6).prop_map(|(s, n)| Op::Consume(s, n)),
        2 => Just(Op::Sync),
        1 => any::<u8>().prop_map(Op::Compact),
        1 => (0usize..2).prop_map(Op::Progress),
    ]
}

/// What the test knows of one watcher.
struct Expect {
    spec: WatchSpec,
    start: Revision,
    cancelled: bool,
}

/// What a client received on one stream.
#[derive(Default)]
struct Received {
    events: BTreeMap<WatchId, Vec<Event>>,
    created: Vec<WatchId>,
    compacted: BTreeMap<WatchId, Revision>,
}

fn receive(
    received: &mut Received,
    expects: &BTreeMap<WatchId, Expect>,
    history: &FakeHistory,
    messages: Vec<Message>,
) -> Result<(), TestCaseError> {
    for message in messages {
        match message {
            Message::Created { watch_id, .. } => received.created.push(watch_id),
            Message::Events {
                watch_id, events, ..
            } => {
                prop_assert!(
                    received.created.contains(&watch_id),
                    "events before created"
                );
                prop_assert!(!received.compacted.contains_key(&watch_id));
                let got = received.events.entry(watch_id).or_default();
                let expect = &expects[&watch_id];
                for e in events {
                    prop_assert!(expect.spec.wants(&e));
                    if expect.spec.prev_kv {
                        prop_assert!(e.prev_kv.is_some(), "previous version missing");
                    }
                    got.push((*e).clone());
                }
            }
            Message::Compacted {
                watch_id,
                compact_revision,
            } => {
                received.compacted.insert(watch_id, compact_revision);
            }
            Message::Progress { watch_id, revision } => {
                prop_assert_eq!(watch_id, NO_WATCH_ID);
                // Every event up to `revision` of every live watcher on the stream is in.
                for (id, expect) in expects {
                    if expect.cancelled || received.compacted.contains_key(id) {
                        continue;
                    }
                    let want = expected(history, expect, revision).len();
                    let got = received.events.get(id).map_or(0, Vec::len);
                    prop_assert!(got >= want, "progress at {} before events", revision);
                }
            }
            Message::CreateFailed { .. } | Message::Canceled { .. } => {}
        }
    }
    Ok(())
}

/// The events `expect` should get, up to revision `through`.
fn expected(history: &FakeHistory, expect: &Expect, through: Revision) -> Vec<Event> {
    history
        .events
        .iter()
        .filter(|e| e.revision() >= expect.start && e.revision() <= through)
        .filter(|e| expect.spec.wants(e))
        .cloned()
        .collect()
}

fn strip(events: &[Event]) -> Vec<(Vec<u8>, Revision, EventKind)> {
    events
        .iter()
        .map(|e| (e.kv.key.clone(), e.revision(), e.kind))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    // Proves the hub against the history it serves, under small queues, slow consumers,
    // watchers from the past and the future, cancellations, compactions, progress requests
    // and watchers created while a batch was applied: every watcher gets exactly the events
    // of its range and filters from its start, in order, each once, after its `created`, or a
    // correct prefix and then `Compacted`; a progress reply never overtakes an event.
    #[test]
    fn every_watcher_gets_its_events_in_order_exactly_once(ops in proptest::collection::vec(op(), 1..80)) {
        let hub = Hub::new(1, HubConfig { stream_queue: 3, max_watchers: 1000, sync_read_bytes: 20 });
        let mut history = FakeHistory::default();
        let mut streams = Vec::new();
        let mut expects: [BTreeMap<WatchId, Expect>; 2] = [BTreeMap::new(), BTreeMap::new()];
        let mut received = [Received::default(), Received::default()];
        for _ in 0..2 {
            streams.push(hub.open());
        }
        let mut current: Revision = 1;
        for op in ops {
            match op {
                Op::Write(a, b, delete, race) => {
                    let wanted = hub.events_wanted();
                    if race {
                        let messages = drain(&mut streams[0].1);
                        receive(&mut received[0], &expects[0], &history, messages)?;
                        let (stream, _) = &streams[0];
                        let id = create(stream, WatchSpec { prev_kv: true, ..spec(KeyRange::From(vec![0]), 0) });
                        expects[0].insert(id, Expect { spec: WatchSpec { prev_kv: true, ..spec(KeyRange::From(vec![0]), 0) }, start: current + 1, cancelled: false });
                    }
                    current += 1;
                    let mut events = vec![event(a, current, delete)];
                    if let Some(b) = b.filter(|b| *b != a) {
                        events.push(event(b, current, !delete));
                    }
                    history.events.extend(events.iter().cloned());
                    let built: Vec<Event> = match wanted {
                        EventsWanted::None => Vec::new(),
                        EventsWanted::Events => events.into_iter().map(|mut e| { e.prev_kv = None; e }).collect(),
                        EventsWanted::WithPrevKv => events,
                    };
                    hub.publish(built, current, wanted);
                }
                Op::Watch(s, key, range, start, prev_kv, filter) => {
                    let key = vec![b'a' + key];
                    let range = match range {
                        0 => KeyRange::Key(key),
                        1 => KeyRange::From(key),
                        2 => KeyRange::Between(key, b"d".to_vec()),
                        _ => KeyRange::From(vec![0]),
                    };
                    let start = Revision::from(start) % (current + 3);
                    let spec = WatchSpec { prev_kv, no_delete: filter, ..spec(range, start) };
                    let (stream, rx) = &mut streams[s];
                    // The api waits for room to queue `created`; here the client reads first.
                    let messages = drain(rx);
                    receive(&mut received[s], &expects[s], &history, messages)?;
                    let id = create(stream, spec.clone());
                    let start = if start == 0 { current + 1 } else { start };
                    expects[s].insert(id, Expect { spec, start, cancelled: false });
                }
                Op::Cancel(s, id) => {
                    let id = WatchId::from(id);
                    if streams[s].0.cancel(id) {
                        // What was queued before the cancel may still arrive; nothing after.
                        let messages = drain(&mut streams[s].1);
                        receive(&mut received[s], &expects[s], &history, messages)?;
                        expects[s].get_mut(&id).expect("a known watcher").cancelled = true;
                    }
                }
                Op::Consume(s, n) => {
                    let mut messages = Vec::new();
                    for _ in 0..n {
                        match streams[s].1.try_recv() {
                            Ok(m) => messages.push(m),
                            Err(_) => break,
                        }
                    }
                    receive(&mut received[s], &expects[s], &history, messages)?;
                }
                Op::Sync => {
                    hub.sync(&history).unwrap();
                }
                Op::Compact(r) => {
                    let r = Revision::from(r) % (current + 1);
                    history.compacted = history.compacted.max(r);
                }
                Op::Progress(s) => {
                    streams[s].0.request_progress();
                }
            }
        }
        // Heal: the clients read everything; sync until every watcher is caught up.
        for _ in 0..10_000 {
            for s in 0..2 {
                let messages = drain(&mut streams[s].1);
                receive(&mut received[s], &expects[s], &history, messages)?;
            }
            if hub.sync(&history).unwrap() == SyncOutcome::Idle {
                break;
            }
        }
        for s in 0..2 {
            let messages = drain(&mut streams[s].1);
            receive(&mut received[s], &expects[s], &history, messages)?;
            for (id, expect) in &expects[s] {
                let got = received[s].events.get(id).cloned().unwrap_or_default();
                let all = expected(&history, expect, current);
                if expect.cancelled {
                    prop_assert!(strip(&all).starts_with(&strip(&got)));
                } else if let Some(compacted) = received[s].compacted.get(id) {
                    // A prefix of whole revisions, then the compaction.
                    prop_assert!(strip(&all).starts_with(&strip(&got)));
                    let next = got.last().map_or(expect.start, |e| e.revision() + 1);
                    prop_assert!(next < *compacted);
                } else {
                    prop_assert_eq!(strip(&got), strip(&all), "watcher {} on stream {}", id, s);
                }
            }
        }
    }
}
