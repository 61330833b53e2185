//! In-memory adapters: a second implementation of each port, for tests that drive one reconcile
//! step at a time in milliseconds. They keep the contracts of the real systems — T3 answers a
//! repeated `commandId` from its receipt and never applies it twice, refuses a reused id, a
//! second project on one workspace root and commands on threads it does not have; GitHub answers
//! 404 for what does not exist — so a controller that passes against them does not lean on a
//! leniency the real servers lack.
//!
//! Every side effect is written to a shared [`Journal`], together with what the journal's
//! witness saw at that moment (in the tests: the run's stored status), so a test can assert what
//! was on record before each command was sent. Every request, reads included, is also kept by
//! the adapter that answered it (`requests()`), so a test can assert that nothing was asked at
//! all; faults are queued per request type and met by the next such request.

mod github;
mod t3;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;

pub use github::{GitHubFault, MemoryGitHub};
pub use t3::{MemoryT3, T3Fault};

use super::{
    AdapterError,
    notify::{Notifier, Outgoing},
    rollout::{DeploymentState, RolloutChecker},
};

/// A side effect, as the outside world saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// What happened, e.g. `t3 thread.turn.start <commandId>` or `github add-label ready`.
    pub effect: String,
    /// What the witness saw when it happened (`Value::Null` without one).
    pub witnessed: Value,
}

type Witness = Box<dyn Fn() -> Value + Send + Sync>;

/// The ordered record of side effects of every in-memory adapter sharing it.
#[derive(Default)]
pub struct Journal {
    entries: Mutex<Vec<Entry>>,
    witness: Mutex<Option<Witness>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.effects()).finish()
    }
}

impl Journal {
    /// A shared, empty journal.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Call `witness` at every side effect and keep what it returns with the entry.
    pub fn witness(&self, witness: impl Fn() -> Value + Send + Sync + 'static) {
        *self.witness.lock().expect("journal") = Some(Box::new(witness));
    }

    fn record(&self, effect: String) {
        let witnessed = self
            .witness
            .lock()
            .expect("journal")
            .as_ref()
            .map_or(Value::Null, |w| w());
        self.entries
            .lock()
            .expect("journal")
            .push(Entry { effect, witnessed });
    }

    /// Every entry, in order.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().expect("journal").clone()
    }

    /// The effects, in order.
    pub fn effects(&self) -> Vec<String> {
        self.entries().into_iter().map(|e| e.effect).collect()
    }

    /// How many effects start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.effects().iter().filter(|e| e.starts_with(prefix)).count()
    }
}

/// A notification channel, in memory.
pub struct MemoryNotifier {
    journal: Arc<Journal>,
}

impl MemoryNotifier {
    /// A channel writing to `journal`.
    pub fn new(journal: Arc<Journal>) -> Self {
        Self { journal }
    }
}

#[async_trait]
impl Notifier for MemoryNotifier {
    fn channel(&self) -> &'static str {
        "memory"
    }

    async fn deliver(&self, message: &Outgoing) -> Result<(), AdapterError> {
        self.journal.record(format!("notify {}", message.title));
        Ok(())
    }
}

/// A cluster without the Deployment (a rollout stage that is never configured here).
pub struct NoDeployments;

#[async_trait]
impl RolloutChecker for NoDeployments {
    async fn deployment_state(
        &self,
        _namespace: &str,
        _name: &str,
        _container: Option<&str>,
    ) -> Result<DeploymentState, AdapterError> {
        Ok(DeploymentState::default())
    }
}
