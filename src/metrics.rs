//! Prometheus metrics (text exposition at `/metrics`). Label values are static categories or
//! bounded sets (phases, kinds, controller names) — never error payloads, repos or run names —
//! so cardinality stays fixed.

use std::{sync::Arc, time::Instant};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// A label set with one label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Phase {
    /// The run phase.
    pub phase: String,
}

/// A label set naming a result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Result_ {
    /// `ok`, `transient`, `permanent`.
    pub result: String,
}

/// A label set naming a kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// E.g. `needs-human`.
    pub kind: String,
}

/// A label set for reconcile metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Controller {
    /// `afkconfig` or `afkrun`.
    pub controller: String,
}

/// A label set for reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `afkconfig` or `afkrun`.
    pub controller: String,
    /// Static error category.
    pub category: String,
}

/// A label set naming one AfkConfig (`namespace/name`; configs are few and operator-owned).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigLabel {
    /// `namespace/name` of the AfkConfig.
    pub config: String,
}

/// A label set for sidecar requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    /// The route template, e.g. `/v1/chat/completions`.
    pub route: String,
    /// The HTTP status code.
    pub status: u16,
}

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Runs by phase (set by the AfkConfig reconcile).
    pub runs: Family<Phase, Gauge>,
    /// Dispatches by result.
    pub dispatches: Family<Result_, Counter>,
    /// Escalations to a human by kind.
    pub escalations: Family<Kind, Counter>,
    /// Corrective turns sent.
    pub fix_forwards: Counter,
    /// Reconcile duration.
    pub reconcile_duration: Family<Controller, Histogram>,
    /// Reconcile errors by static category.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// GitHub requests left in the rate-limit window.
    pub github_rate_limit_remaining: Gauge,
    /// The size of the GitHub rate-limit window (`x-ratelimit-limit`).
    pub github_rate_limit_limit: Gauge,
    /// 1 while an AfkConfig is `Ready=True`, else 0.
    pub config_ready: Family<ConfigLabel, Gauge>,
    /// When the T3 token of each AfkConfig expires (unix seconds; from `/api/auth/session`).
    pub executor_token_expiry: Family<ConfigLabel, Gauge>,
    /// Time from an AfkRun's creation to T3 accepting its opening turn.
    pub dispatch_latency: Histogram,
    /// Sidecar requests by route and status.
    pub requests: Family<RouteStatus, Counter>,
    /// Time from a chat request to its first content.
    pub time_to_first_token: Histogram,
    /// Chat / conversational streams open now.
    pub active_streams: Gauge,
    /// CLI turns that failed, by static kind (`api`, `budget`, `crashed`, `timeout`, `spawn`, …).
    pub cli_failures: Family<Kind, Counter>,
    /// Breakglass sessions held now.
    pub breakglass_sessions: Gauge,
    /// Voice turns by the process that served them: `warm` (pool), `live` (kept conversation),
    /// `cold` (spawned for the request).
    pub voice_turn_starts: Family<Kind, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered under the `afk` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("afk");
        let runs = Family::<Phase, Gauge>::default();
        let dispatches = Family::<Result_, Counter>::default();
        let escalations = Family::<Kind, Counter>::default();
        let fix_forwards = Counter::default();
        let reconcile_duration = Family::<Controller, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let github_rate_limit_remaining = Gauge::default();
        registry.register("runs", "AfkRuns by phase", runs.clone());
        registry.register(
            "dispatches",
            "Dispatches to the executor by result",
            dispatches.clone(),
        );
        registry.register(
            "escalations",
            "Runs handed to a human by kind",
            escalations.clone(),
        );
        registry.register("fix_forwards", "Corrective turns sent", fix_forwards.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors by category",
            reconcile_errors.clone(),
        );
        registry.register(
            "github_rate_limit_remaining",
            "GitHub requests left in the window",
            github_rate_limit_remaining.clone(),
        );
        let github_rate_limit_limit = Gauge::default();
        registry.register(
            "github_rate_limit_limit",
            "GitHub requests allowed in the window",
            github_rate_limit_limit.clone(),
        );
        let config_ready = Family::<ConfigLabel, Gauge>::default();
        registry.register(
            "config_ready",
            "1 while an AfkConfig is Ready, else 0",
            config_ready.clone(),
        );
        let executor_token_expiry = Family::<ConfigLabel, Gauge>::default();
        registry.register(
            "executor_token_expiry_timestamp_seconds",
            "When the T3 token of an AfkConfig expires (unix seconds)",
            executor_token_expiry.clone(),
        );
        let dispatch_latency = Histogram::new([
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ]);
        registry.register(
            "dispatch_latency_seconds",
            "Time from an AfkRun's creation to T3 accepting its opening turn",
            dispatch_latency.clone(),
        );
        let requests = Family::<RouteStatus, Counter>::default();
        let time_to_first_token = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let active_streams = Gauge::default();
        let cli_failures = Family::<Kind, Counter>::default();
        let breakglass_sessions = Gauge::default();
        let voice_turn_starts = Family::<Kind, Counter>::default();
        registry.register(
            "voice_turn_starts",
            "Voice turns by the process that served them (warm, live, cold)",
            voice_turn_starts.clone(),
        );
        registry.register(
            "sidecar_requests",
            "Sidecar requests by route and status",
            requests.clone(),
        );
        registry.register(
            "chat_time_to_first_token_seconds",
            "Time from a chat request to its first content",
            time_to_first_token.clone(),
        );
        registry.register(
            "chat_active_streams",
            "Chat streams open now",
            active_streams.clone(),
        );
        registry.register(
            "cli_failures",
            "CLI turns that failed by kind",
            cli_failures.clone(),
        );
        registry.register(
            "breakglass_sessions",
            "Breakglass sessions held",
            breakglass_sessions.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            time_to_first_token,
            active_streams,
            cli_failures,
            breakglass_sessions,
            voice_turn_starts,
            runs,
            dispatches,
            escalations,
            fix_forwards,
            reconcile_duration,
            reconcile_errors,
            github_rate_limit_remaining,
            github_rate_limit_limit,
            config_ready,
            executor_token_expiry,
            dispatch_latency,
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Count a voice turn by the process that served it (`warm`, `live`, `cold`).
    pub fn voice_turn_start(&self, kind: &'static str) {
        self.voice_turn_starts
            .get_or_create(&Kind {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Count a CLI failure of a static kind.
    pub fn cli_failure(&self, kind: &str) {
        self.cli_failures
            .get_or_create(&Kind {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// A timer that records the reconcile duration when dropped.
    pub fn time_reconcile(&self, controller: &str) -> ReconcileTimer {
        ReconcileTimer {
            metrics: self.clone(),
            controller: controller.to_string(),
            start: Instant::now(),
        }
    }
}

/// Records a reconcile's duration on drop.
pub struct ReconcileTimer {
    metrics: Metrics,
    controller: String,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&Controller {
                controller: self.controller.clone(),
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.dispatches.get_or_create(&Result_ { result: "ok".into() }).inc();
        m.escalations
            .get_or_create(&Kind {
                kind: "frozen".into(),
            })
            .inc();
        m.fix_forwards.inc();
        m.runs
            .get_or_create(&Phase {
                phase: "Working".into(),
            })
            .set(2);
        drop(m.time_reconcile("afkrun"));
        m.requests
            .get_or_create(&RouteStatus {
                route: "/v1/models".into(),
                status: 200,
            })
            .inc();
        m.cli_failure("timeout");
        m.time_to_first_token.observe(0.002);
        let text = m.render();
        for needle in [
            "afk_dispatches_total{result=\"ok\"} 1",
            "afk_escalations_total{kind=\"frozen\"} 1",
            "afk_fix_forwards_total 1",
            "afk_runs{phase=\"Working\"} 2",
            "afk_reconcile_duration_seconds_count{controller=\"afkrun\"} 1",
            "afk_github_rate_limit_remaining 0",
            "afk_sidecar_requests_total{route=\"/v1/models\",status=\"200\"} 1",
            "afk_cli_failures_total{kind=\"timeout\"} 1",
            "afk_chat_time_to_first_token_seconds_count 1",
            "afk_chat_active_streams 0",
            "afk_breakglass_sessions 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
