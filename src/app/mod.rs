//! Start-up and shutdown: build the [`AppState`] from a [`Config`], bind the listener (port 0
//! in tests), own every background task, and drain on shutdown (stop accepting, let in-flight
//! requests and streams finish up to the drain timeout, flush the writers).

pub mod budget;
mod build;
mod keys;
mod metrics;
pub mod rates;
mod routes;
mod state;

pub use build::{Application, DevOptions, StartError};
pub use keys::{open_store, sync_inventory};
pub use state::{AppState, DevIdentity, Inner, ProviderRoute};

use axum::Router;

/// The full router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(routes::router())
        .merge(crate::admin::router())
        .merge(crate::proxy::router())
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .with_state(state)
}
