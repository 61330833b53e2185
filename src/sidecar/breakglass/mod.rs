//! Breakglass sessions: server-owned conversations with the breakglass agent that a phone can
//! attach to, lose, and attach to again without losing or repeating anything.
//!
//! Each session keeps a bounded event log (`log`: a ring of numbered [`BreakglassEvent`]s). A
//! prompt starts a detached turn that writes into the log whether or not anyone is listening;
//! subscribers read the log from their cursor (`Last-Event-ID`): replay, `caught-up`, then live
//! (`sessions`). A subscriber's queue is a window onto the shared ring plus a small bounded frame
//! channel, so a slow or stalled phone costs a fixed amount of memory; when its cursor falls out
//! of the ring it gets `event: resync` and a fresh replay. Sessions are capped and evicted when
//! idle; a turn has a deadline, and cancel kills the CLI's process group. `handlers` is the HTTP
//! face.

mod handlers;
mod log;
mod sessions;

pub use handlers::{
    Accepted, Cancelled, Created, PromptRequest, SessionList, cancel, create, delete, list, prompt, stream,
};
pub use log::{BreakglassEvent, EventLog, LoggedEvent, Notice, Since};
pub use sessions::{AtCapacity, Breakglass, Session, SessionSummary, TurnRunning};
