//! Shared harness of the integration tests: the real server on port 0 with real peers
//! (a loopback OIDC issuer, a loopback LLM upstream, a fresh SQLite or PostgreSQL database).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod app;
pub mod db;
pub mod hooks;
pub mod multi;
pub mod oidc;
pub mod peers;
pub mod pg;
pub mod process;
pub mod upstream;
