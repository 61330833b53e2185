//! The AFK decision core. Pure functions only: no async, no kube client, no HTTP client, no
//! spawned tasks and no clock reads — `now` is always passed in — so every decision the loop makes
//! unattended is cheap to test exhaustively. The controllers observe, call into here, and act.
//! `tests/layering.rs` fails the build if that ever changes.

pub mod ci;
pub mod dispatch;
pub mod health;
pub mod naming;
pub mod parse;
pub mod render;
pub mod run_decision;
