//! Operational routes: `/healthz` (the process answers), `/readyz` (the store answers),
//! `/metrics` (Prometheus), `/openapi.json`, and `/` (Kuma's index with the version).

use super::AppState;
use crate::store::SecretStore;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The OpenAPI description of every route, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Operational routes (no authentication).
pub fn router<S: SecretStore + Clone + 'static>() -> Router<AppState<S>> {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/openapi.json", get(openapi))
}

async fn index() -> Response {
    axum::Json(serde_json::json!({
        "tagline": "kuma-secrets",
        "product": "kuma-secrets",
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<S: SecretStore + Clone + 'static>(State(state): State<AppState<S>>) -> Response {
    match state.store.ping().await {
        Ok(()) => "ok\n".into_response(),
        Err(err) => {
            tracing::warn!(error = %super::error::error_chain(&err), "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
        }
    }
}

async fn metrics<S: SecretStore + Clone + 'static>(State(state): State<AppState<S>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
