//! A session's event log: what happened in it, as a bounded ring of numbered
//! [`BreakglassEvent`]s. Pure data; no clock, no I/O. Readers hold a cursor (the last id they
//! saw, the SSE `Last-Event-ID`) and either get exactly what came after it or are told to
//! [`Since::Resync`] when it fell out of the ring.

use std::collections::VecDeque;

use axum::body::Bytes;
use serde::Serialize;
use serde_json::Value;

/// Something that happened in a session. Serialized with its name as `"type"` (the SSE `event:`
/// name too); the payload keys are what clients have always read.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BreakglassEvent {
    /// A prompt was accepted.
    User {
        /// The prompt.
        text: String,
    },
    /// The CLI started (or resumed) its session.
    Session {
        /// The CLI's session id.
        session_id: String,
        /// The model it runs.
        model: String,
    },
    /// Text from the agent (whole messages, not deltas).
    Text {
        /// The text.
        text: String,
    },
    /// The agent called a tool.
    Tool {
        /// Tool name.
        name: String,
        /// Its input, as the CLI reported it.
        input: Value,
    },
    /// The turn's result (also after an error that has one).
    Result {
        /// Whether the turn failed.
        is_error: bool,
        /// The CLI's result text, or the failure's message.
        result: Option<String>,
        /// Wall time inside the CLI (0 after a failure).
        duration_ms: u64,
    },
    /// The turn failed.
    Error {
        /// What went wrong, for a person.
        message: String,
        /// A stable code (the CLI failure metric's label).
        code: &'static str,
    },
    /// The turn was cancelled and its process group killed.
    Cancelled,
    /// The turn is over, however it ended: a new prompt is accepted.
    TurnEnd,
}

/// One logged event.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedEvent {
    /// Monotonic id within the session (the SSE `id:`), starting at 1.
    pub id: u64,
    /// What happened.
    pub event: BreakglassEvent,
}

impl LoggedEvent {
    /// The SSE frame.
    pub fn frame(&self) -> Bytes {
        sse_frame(self.id, &self.event)
    }
}

/// `id:`, `event:` and `data:` for a payload tagged with its `type`, which is also the event
/// name, so the two cannot disagree. The payload goes through a `Value`, so its keys come out
/// sorted, exactly as the `json!` payloads this log used to store did.
fn sse_frame(id: u64, payload: &impl Serialize) -> Bytes {
    let data = serde_json::to_value(payload).expect("an event serializes");
    let name = data["type"].as_str().expect("events are tagged with their type");
    Bytes::from(format!("id: {id}\nevent: {name}\ndata: {data}\n\n"))
}

/// A frame about the stream itself rather than the session. Never logged: its `id:` is the
/// subscriber's cursor, so a reconnect resumes after the last event actually delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum Notice {
    /// The cursor fell out of the ring (or was never in it); what is kept is replayed next.
    #[serde(rename = "resync")]
    Resync {
        /// Why, for a person.
        reason: &'static str,
    },
    /// The replay is done; what follows is live.
    #[serde(rename = "caught-up")]
    CaughtUp,
}

impl Notice {
    /// The resync notice.
    pub const RESYNC: Self = Self::Resync {
        reason: "the cursor is older than the session log; replaying what is kept",
    };

    /// The SSE frame at `cursor`.
    pub fn frame(self, cursor: u64) -> Bytes {
        sse_frame(cursor, &self)
    }
}

/// What a cursor gets from the log.
#[derive(Clone, Debug, PartialEq)]
pub enum Since {
    /// Everything after the cursor, in order (possibly empty).
    Events(Vec<LoggedEvent>),
    /// The cursor is older than the log (or from another life of the session): start over.
    Resync,
}

/// A bounded ring of numbered events.
#[derive(Clone, Debug)]
pub struct EventLog {
    events: VecDeque<LoggedEvent>,
    capacity: usize,
    next_id: u64,
}

impl EventLog {
    /// An empty log keeping at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            next_id: 1,
        }
    }

    /// Append an event; the oldest falls out when full. Returns its id.
    pub fn push(&mut self, event: BreakglassEvent) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(LoggedEvent { id, event });
        id
    }

    /// The id of the newest event (0 when none was ever logged).
    pub fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// Events after `cursor` (the last id the reader has seen; 0 = nothing seen).
    pub fn since(&self, cursor: u64) -> Since {
        if !self.holds(cursor) {
            return Since::Resync;
        }
        Since::Events(self.events.iter().filter(|e| e.id > cursor).cloned().collect())
    }

    /// The one event after `cursor`: `Ok(None)` when the reader is up to date, `Err(Resync)` when
    /// the cursor is older than the log or from the future. O(1).
    pub fn after(&self, cursor: u64) -> Result<Option<LoggedEvent>, Since> {
        if !self.holds(cursor) {
            return Err(Since::Resync);
        }
        let index = usize::try_from(cursor + 1 - self.oldest_id()).expect("a ring index fits");
        Ok(self.events.get(index).cloned())
    }

    /// Whether a reader at `cursor` can continue without a gap: it is not from the future, and
    /// the event right after it is still kept (or not written yet).
    fn holds(&self, cursor: u64) -> bool {
        cursor <= self.last_id() && cursor + 1 >= self.oldest_id()
    }

    /// The id of the oldest event kept (the next id when empty).
    pub fn oldest_id(&self) -> u64 {
        self.events.front().map_or(self.next_id, |e| e.id)
    }

    /// Every event kept.
    pub fn all(&self) -> Vec<LoggedEvent> {
        self.events.iter().cloned().collect()
    }

    /// Number of events kept.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn text(i: impl ToString) -> BreakglassEvent {
        BreakglassEvent::Text { text: i.to_string() }
    }

    #[test]
    fn replay_from_zero_and_from_a_cursor() {
        let mut log = EventLog::new(4);
        for i in 0..3 {
            log.push(text(i));
        }
        let Since::Events(all) = log.since(0) else {
            panic!()
        };
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[0].event, text(0));
        let Since::Events(tail) = log.since(2) else {
            panic!()
        };
        assert_eq!(tail.iter().map(|e| e.id).collect::<Vec<_>>(), [3]);
        assert_eq!(log.since(3), Since::Events(vec![]));
    }

    #[test]
    fn a_cursor_older_than_the_ring_or_from_the_future_resyncs() {
        let mut log = EventLog::new(3);
        for i in 0..5 {
            log.push(text(i));
        }
        // Kept: 3, 4, 5. Cursor 2 has seen everything before 3: fine. Cursor 1 missed 2: resync.
        assert!(matches!(log.since(2), Since::Events(e) if e.len() == 3));
        assert_eq!(log.since(1), Since::Resync);
        assert_eq!(log.since(0), Since::Resync);
        assert_eq!(log.since(6), Since::Resync);
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn an_empty_log_replays_nothing() {
        let log = EventLog::new(3);
        assert_eq!(log.since(0), Since::Events(vec![]));
        assert_eq!(log.since(1), Since::Resync);
        assert!(log.is_empty());
    }

    /// The frames are byte for byte what the untyped log wrote: sorted keys, `type` included.
    #[test]
    fn frames_keep_their_wire_form() {
        let frame = |event| String::from_utf8(LoggedEvent { id: 7, event }.frame().to_vec()).unwrap();
        assert_eq!(
            frame(BreakglassEvent::User { text: "hi".into() }),
            "id: 7\nevent: user\ndata: {\"text\":\"hi\",\"type\":\"user\"}\n\n"
        );
        assert_eq!(
            frame(BreakglassEvent::TurnEnd),
            "id: 7\nevent: turn_end\ndata: {\"type\":\"turn_end\"}\n\n"
        );
        assert_eq!(
            frame(BreakglassEvent::Result {
                is_error: false,
                result: None,
                duration_ms: 3
            }),
            "id: 7\nevent: result\ndata: {\"duration_ms\":3,\"is_error\":false,\"result\":null,\"type\":\"result\"}\n\n"
        );
        let tool = BreakglassEvent::Tool {
            name: "Bash".into(),
            input: json!({"z": 1, "a": 2}),
        };
        let mut legacy = json!({"name": "Bash", "input": {"z": 1, "a": 2}});
        legacy["type"] = json!("tool");
        assert_eq!(frame(tool), format!("id: 7\nevent: tool\ndata: {legacy}\n\n"));
        assert_eq!(
            frame(BreakglassEvent::Cancelled).lines().nth(1),
            Some("event: cancelled")
        );
        assert_eq!(
            Notice::RESYNC.frame(4),
            "id: 4\nevent: resync\ndata: {\"reason\":\"the cursor is older than the session log; replaying what is kept\",\"type\":\"resync\"}\n\n"
        );
        assert_eq!(
            Notice::CaughtUp.frame(0),
            "id: 0\nevent: caught-up\ndata: {\"type\":\"caught-up\"}\n\n"
        );
    }

    proptest! {
        /// Whatever the capacity, pushes and cursor: a reader either gets exactly the events after
        /// its cursor with no gap, or is told to resync; memory never exceeds the capacity.
        #[test]
        fn readers_never_see_gaps_or_duplicates(capacity in 1usize..20, pushes in 0usize..60, cursor in 0u64..70) {
            let mut log = EventLog::new(capacity);
            for i in 0..pushes {
                log.push(text(i));
            }
            prop_assert!(log.len() <= capacity);
            match log.since(cursor) {
                Since::Events(events) => {
                    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
                    let expected: Vec<u64> = (cursor + 1..=pushes as u64).collect();
                    prop_assert_eq!(ids, expected);
                }
                Since::Resync => {
                    let oldest = (pushes as u64).saturating_sub(capacity as u64) + 1;
                    prop_assert!(cursor > pushes as u64 || cursor + 1 < oldest);
                }
            }
            // Walking with `after` yields exactly what `since` yields.
            let mut walked = Vec::new();
            let mut at = cursor;
            let outcome = loop {
                match log.after(at) {
                    Ok(Some(event)) => { at = event.id; walked.push(event); }
                    Ok(None) => break Since::Events(walked),
                    Err(resync) => break resync,
                }
            };
            prop_assert_eq!(outcome, log.since(cursor));
        }
    }
}
