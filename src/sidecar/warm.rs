//! Warm `claude` processes for the voice gateway, so a request does not pay the CLI's cold start
//! (≈ 300 ms here, more in production) before its first word.
//!
//! - [`WarmPool`]: processes started ahead of time for `/v1/chat/completions`, waiting on stdin
//!   for their first message (stream-json input). A request takes one whose key — model and API
//!   key generation, everything fixed at spawn — matches, writes the dialogue, and closes stdin:
//!   each process serves exactly one request, so nothing of one request can reach another. A
//!   replacement is started in the background for every model used in the last window.
//! - [`LiveSessions`]: `/v1/conversational` keeps a session's process after a turn, so the next
//!   turn is one stdin write instead of a `--resume` cold start; bounded in count (LRU) and idle
//!   time, after which the process is let go and the session continues by `--resume`.
//!
//! Every waiting process holds one concurrency [`Slot`] like a running turn, so the chart's memory
//! arithmetic (`--max-concurrent-turns` CLIs at most) stays true; warm processes use spare slots
//! only and give theirs up first when a request finds every slot taken ([`WarmPool::evict_one`],
//! [`LiveSessions::evict_lru`]). Dropping a process (death, key rotation, eviction, shutdown)
//! kills its process group; the slot is handed on once it is reaped.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use super::turns::{Limiter, Slot, Workdir};
use crate::adapters::claude::{AgentCli, AgentSpec, Reaped, SessionMode, Turn, TurnRequest};

/// How long a let-go process may take to finish its session files before its group is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How often idle processes are checked (deaths, key rotation, idle timeouts).
const TICK: Duration = Duration::from_secs(1);
/// Longest pause between attempts while starting warm processes keeps failing.
const MAX_SPAWN_BACKOFF: Duration = Duration::from_secs(60);

/// A process ready for one request, with its slot and working directory.
#[derive(Debug)]
pub struct Warm {
    /// The waiting process.
    pub turn: Turn,
    /// Its concurrency slot.
    pub slot: Slot,
    /// Its (empty, per-process) working directory, removed with it.
    pub workdir: Workdir,
}

#[derive(Debug)]
struct Pooled {
    model: String,
    generation: u64,
    warm: Warm,
}

#[derive(Debug, Default)]
struct PoolState {
    ready: VecDeque<Pooled>,
    /// Models asked for, with when they were last asked for.
    seen: HashMap<String, Instant>,
    failures: u32,
    next_attempt: Option<Instant>,
}

/// What the pool is told at start.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Warm processes per recently used model (0 disables the pool).
    pub per_model: usize,
    /// A model counts as recently used for this long after a request named it.
    pub window: Duration,
    /// Where per-process working directories go.
    pub chat_dir: PathBuf,
    /// `--max-budget-usd` of chat turns.
    pub max_budget_usd: Option<f64>,
}

/// Single-use warm processes for stateless chat.
#[derive(Debug)]
pub struct WarmPool {
    cli: Arc<dyn AgentCli>,
    agent: Arc<AgentSpec>,
    limiter: Arc<Limiter>,
    settings: PoolSettings,
    state: Mutex<PoolState>,
    wake: Notify,
}

impl WarmPool {
    /// A pool for `agent`; `first_model` counts as used at start (the first request is warm).
    pub fn new(
        cli: Arc<dyn AgentCli>,
        agent: Arc<AgentSpec>,
        limiter: Arc<Limiter>,
        settings: PoolSettings,
        first_model: &str,
    ) -> Self {
        let mut state = PoolState::default();
        if settings.per_model > 0 {
            state.seen.insert(first_model.to_string(), Instant::now());
        }
        Self {
            cli,
            agent,
            limiter,
            settings,
            state: Mutex::new(state),
            wake: Notify::new(),
        }
    }

    /// The turn request every process of `model` is started with (the prompt comes later).
    pub fn request(&self, model: &str, cwd: PathBuf) -> TurnRequest {
        TurnRequest {
            prompt: String::new(),
            model: model.to_string(),
            agent: self.agent.clone(),
            session: SessionMode::Stateless,
            cwd,
            max_budget_usd: self.settings.max_budget_usd,
            allowed_tools: vec![],
        }
    }

    /// A live process for `model` under the current key, if one is waiting; the model counts as
    /// used either way and a replacement is started in the background.
    pub fn take(&self, model: &str) -> Option<Warm> {
        if self.settings.per_model == 0 {
            return None;
        }
        let generation = self.cli.generation();
        let taken = {
            let mut state = self.state.lock().expect("pool lock");
            state.seen.insert(model.to_string(), Instant::now());
            let position = state
                .ready
                .iter()
                .position(|p| p.model == model && p.generation == generation && p.warm.turn.is_alive());
            position.and_then(|i| state.ready.remove(i))
        };
        self.wake.notify_one();
        taken.map(|p| p.warm)
    }

    /// Give up the longest-waiting process (its slot is handed on once it is reaped).
    pub fn evict_one(&self) -> bool {
        let evicted = self.state.lock().expect("pool lock").ready.pop_front();
        self.wake.notify_one();
        evicted.is_some()
    }

    /// The process groups (= CLI pids) of the processes waiting now, oldest first.
    pub fn process_groups(&self) -> Vec<i32> {
        let state = self.state.lock().expect("pool lock");
        state.ready.iter().map(|p| p.warm.turn.process_group()).collect()
    }

    /// Processes waiting now.
    pub fn ready(&self) -> usize {
        self.state.lock().expect("pool lock").ready.len()
    }

    /// Keep the pool full until `shutdown`, then kill every waiting process.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.settings.per_model == 0 {
            return;
        }
        tend(&shutdown, Some(&self.wake), || self.refill()).await;
        let drained = std::mem::take(&mut self.state.lock().expect("pool lock").ready);
        drop(drained);
    }

    /// Drop dead and stale processes, forget models not used within the window, and start what
    /// is missing with the slots that are free.
    async fn refill(self: &Arc<Self>) {
        let generation = self.cli.generation();
        let now = Instant::now();
        let missing: Vec<String> = {
            let mut state = self.state.lock().expect("pool lock");
            let window = self.settings.window;
            state.seen.retain(|_, used| now.duration_since(*used) <= window);
            let seen = state.seen.clone();
            // Dropping a process kills its group; its slot follows once reaped.
            state.ready.retain(|p| {
                p.generation == generation && p.warm.turn.is_alive() && seen.contains_key(&p.model)
            });
            if state.next_attempt.is_some_and(|at| now < at) {
                return;
            }
            let mut models: Vec<(&String, &Instant)> = seen.iter().collect();
            models.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            models
                .into_iter()
                .flat_map(|(model, _)| {
                    let have = state.ready.iter().filter(|p| &p.model == model).count();
                    std::iter::repeat_n(model.clone(), self.settings.per_model.saturating_sub(have))
                })
                .collect()
        };
        for model in missing {
            let Some(permit) = self.limiter.try_admit() else {
                return;
            };
            match self.start(&model).await {
                Ok((turn, workdir)) => {
                    let reaped = turn.reaped();
                    let warm = Warm {
                        slot: Slot::new(permit, reaped.clone()),
                        turn,
                        workdir,
                    };
                    let mut state = self.state.lock().expect("pool lock");
                    state.failures = 0;
                    state.next_attempt = None;
                    state.ready.push_back(Pooled {
                        model,
                        generation,
                        warm,
                    });
                    drop(state);
                    // A process that dies while waiting is replaced at once.
                    let pool = Arc::downgrade(self);
                    tokio::spawn(async move {
                        reaped.wait().await;
                        if let Some(pool) = pool.upgrade() {
                            pool.wake.notify_one();
                        }
                    });
                }
                Err(message) => {
                    let mut state = self.state.lock().expect("pool lock");
                    state.failures = state.failures.saturating_add(1);
                    let backoff = TICK
                        .saturating_mul(2u32.saturating_pow(state.failures.min(8)))
                        .min(MAX_SPAWN_BACKOFF);
                    state.next_attempt = Some(Instant::now() + backoff);
                    tracing::warn!(%model, error = %message, ?backoff, "cannot start a warm claude process");
                    return;
                }
            }
        }
    }

    async fn start(&self, model: &str) -> Result<(Turn, Workdir), String> {
        let workdir = Workdir::new(&self.settings.chat_dir).map_err(|e| e.to_string())?;
        let request = self.request(model, workdir.path().to_path_buf());
        let turn = self
            .cli
            .start_waiting(&request)
            .await
            .map_err(|e| e.to_string())?;
        Ok((turn, workdir))
    }
}

/// A conversation's process between turns.
#[derive(Debug)]
pub struct Live {
    /// The process, waiting for the next message.
    pub turn: Turn,
    /// Its concurrency slot.
    pub slot: Slot,
    /// The model it was started with.
    pub model: String,
    /// The API key generation it was started under.
    pub generation: u64,
}

#[derive(Debug)]
struct Idle {
    live: Live,
    since: Instant,
}

/// Conversations whose process is kept alive between turns.
#[derive(Debug)]
pub struct LiveSessions {
    max: usize,
    idle_timeout: Duration,
    idle: Mutex<HashMap<uuid::Uuid, Idle>>,
}

impl LiveSessions {
    /// At most `max` kept processes (0: none), each let go after `idle_timeout` without a turn.
    pub fn new(max: usize, idle_timeout: Duration) -> Self {
        Self {
            max,
            idle_timeout,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Whether processes are kept at all.
    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    /// The session's kept process, taken out for one turn.
    pub fn take(&self, id: &uuid::Uuid) -> Option<Live> {
        self.idle
            .lock()
            .expect("live sessions lock")
            .remove(id)
            .map(|idle| idle.live)
    }

    /// Keep `live` for the session's next turn; beyond the bound the longest-idle one is let go.
    pub fn put(&self, id: uuid::Uuid, live: Live) {
        if !self.enabled() {
            let _ = let_go(live);
            return;
        }
        let over = {
            let mut idle = self.idle.lock().expect("live sessions lock");
            idle.insert(
                id,
                Idle {
                    live,
                    since: Instant::now(),
                },
            );
            (idle.len() > self.max)
                .then(|| Self::pop_lru(&mut idle))
                .flatten()
        };
        if let Some(live) = over {
            let _ = let_go(live);
        }
    }

    /// Let the longest-idle process go (its slot is handed on once it is reaped).
    pub fn evict_lru(&self) -> bool {
        let lru = Self::pop_lru(&mut self.idle.lock().expect("live sessions lock"));
        lru.map(let_go).is_some()
    }

    /// Processes kept now.
    pub fn count(&self) -> usize {
        self.idle.lock().expect("live sessions lock").len()
    }

    fn pop_lru(idle: &mut HashMap<uuid::Uuid, Idle>) -> Option<Live> {
        let oldest = idle
            .iter()
            .min_by_key(|(_, entry)| entry.since)
            .map(|(id, _)| *id)?;
        idle.remove(&oldest).map(|entry| entry.live)
    }

    /// Let idle and dead processes go until `shutdown`, then kill every kept process.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.enabled() {
            return;
        }
        tend(&shutdown, None, || {
            self.let_idle_go();
            std::future::ready(())
        })
        .await;
        let all = std::mem::take(&mut *self.idle.lock().expect("live sessions lock"));
        drop(all);
    }
}

impl LiveSessions {
    /// Let go every process idle past the timeout, and forget the dead ones.
    fn let_idle_go(&self) {
        let now = Instant::now();
        let expired: Vec<Live> = {
            let mut idle = self.idle.lock().expect("live sessions lock");
            let ids: Vec<uuid::Uuid> = idle
                .iter()
                .filter(|(_, e)| !e.live.turn.is_alive() || now.duration_since(e.since) >= self.idle_timeout)
                .map(|(id, _)| *id)
                .collect();
            ids.iter()
                .filter_map(|id| idle.remove(id))
                .map(|e| e.live)
                .collect()
        };
        for live in expired {
            let _ = let_go(live);
        }
    }
}

/// Run `step` every [`TICK`] and whenever `wake` fires, until `shutdown`.
async fn tend<F: std::future::Future<Output = ()>>(
    shutdown: &CancellationToken,
    wake: Option<&Notify>,
    mut step: impl FnMut() -> F,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let woken = async {
            match wake {
                Some(wake) => wake.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = woken => {}
            _ = tick.tick() => {}
        }
        step().await;
    }
}

/// End a kept process's input so it saves the session and exits on its own (killed after a
/// grace); resolves once it is reaped, when `--resume` of its session is safe.
pub fn let_go(live: Live) -> Reaped {
    let Live { mut turn, slot, .. } = live;
    let reaped = turn.reaped();
    turn.end_input();
    tokio::spawn(async move {
        let _slot = slot;
        let _ = tokio::time::timeout(EXIT_GRACE, async { while turn.next().await.is_some() {} }).await;
        // Dropping the turn kills whatever is left of the group.
    });
    reaped
}
