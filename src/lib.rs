//! Tollgate: a secrets broker for LLM APIs.
//!
//! Workloads prove who they are with their platform identity token, exchange it for a
//! short-lived Tollgate token that carries their quota (RFC 8693), and call OpenAI- or
//! Anthropic-compatible endpoints through Tollgate, which injects the real provider key,
//! enforces limits and budgets, and records spend. `DESIGN.md` is the contract; each module
//! below owns one concern of it.

pub mod admin;
pub mod alerts;
pub mod anomaly;
pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod guardrails;
pub mod identity;
pub mod policy;
pub mod pricing;
pub mod providers;
pub mod proxy;
pub mod quota;
pub mod revocation;
pub mod rotation;
pub mod routing;
pub mod secrets;
pub mod spend;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod token;
