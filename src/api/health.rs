//! Operational routes: `/healthz` (the process answers), `/readyz` (the store answers),
//! `/metrics` (Prometheus), `/openapi.json`, and `/` (Kuma's index with the version).

pub(super) mod doc;

use super::AppState;
use super::openapi::Routes;
use crate::store::{SecretStore, StoreError};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Operational routes (no authentication).
pub fn router<S: SecretStore + Clone + 'static>() -> Routes<AppState<S>> {
    Routes::new()
        .add::<doc::__path_index, _, _>(index)
        .add::<doc::__path_healthz, _, _>(healthz)
        .add::<doc::__path_readyz, _, _>(readyz::<S>)
        .add::<doc::__path_metrics, _, _>(metrics::<S>)
        .add::<doc::__path_openapi, _, _>(openapi)
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
        Ok(()) => {
            let mut body = String::from("ok\n");
            let key_source = state.config.key_source.as_ref().and_then(|k| k.note());
            let zone_sync = state.config.zone_sync.as_ref();
            if let Some(sync) = zone_sync
                && !sync.has_synced()
            {
                // A zone that never held a full copy has nothing to serve yet.
                let why = sync.note().unwrap_or_else(|| {
                    format!(
                        "starting: taking the first full copy of the global store {}",
                        sync.global()
                    )
                });
                return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
            }
            let zone_sync = zone_sync.and_then(|sync| sync.note());
            for note in [state.store.readiness_note(), key_source, zone_sync]
                .into_iter()
                .flatten()
            {
                body.push_str(&note);
                body.push('\n');
            }
            body.into_response()
        }
        Err(err) => {
            tracing::warn!(error = %crate::error_chain(&err), "readiness check failed");
            let body = match err {
                StoreError::ReadOnly => {
                    "store accepts only reads (a standby, or a primary being demoted)\n"
                }
                _ => "store unavailable\n",
            };
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    }
}

async fn metrics<S: SecretStore + Clone + 'static>(State(state): State<AppState<S>>) -> Response {
    if let Some(sync) = &state.config.zone_sync {
        state.metrics.observe_zone_sync(sync);
    }
    if let Some(report) = state.store.cache_report() {
        state.metrics.observe_cache(&report);
    }
    if let Some(report) = state.store.pool_report() {
        state.metrics.observe_pool(&report);
    }
    state
        .metrics
        .observe_key_source(crate::envelope::key_source_calls());
    state.metrics.observe_mesh_ca_expiry(&state.store).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::document::document(),
    )
        .into_response()
}
