//! afk-operator: a Kubernetes operator that lets coding agents implement triaged issues while
//! nobody is at the keyboard, plus the sidecar that serves a voice gateway and breakglass
//! endpoints from the same binary.
//!
//! Layers and the directions they may depend on: `crd` (API types) ← `policy` (pure decisions,
//! no I/O, no clock) ← `controller` (observe → decide → act → write status) → `adapters`
//! (narrow traits over GitHub, T3, CI, notifiers). `sidecar` (axum) names of the controllers only
//! their `Trigger`. `args` (the clap tree), `agents` and `metrics` are leaves. The full matrix is in
//! `docs/architecture.md` and `tests/layering.rs` enforces it. `main.rs` only parses the command
//! line and calls `cli::run`. Lints for every crate are `[workspace.lints]` in `Cargo.toml`;
//! unsafe code is forbidden there and here.
#![forbid(unsafe_code)]

pub mod adapters;
pub mod agents;
pub mod args;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod metrics;
pub mod policy;
pub mod sidecar;
pub mod telemetry;
