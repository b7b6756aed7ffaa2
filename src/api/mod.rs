//! The HTTP API: Kuma's routes, bodies, status codes and error texts for Secret,
//! GlobalSecret and Mesh (reference §3), plus ETag preconditions, cursor pagination,
//! health, metrics and OpenAPI.
//!
//! One module per resource, each with its own `router()`; [`app`] joins them with the
//! middleware, and [`serve`] runs the result on a bound listener until shutdown. Who is
//! calling is decided once, in [`auth`] (localhost, user tokens); handlers take typed
//! inputs (`extract.rs`: preconditions, JSON bodies) and PUTs share one flow
//! (`upsert.rs`). Bodies are the [`crate::wire`] types.
//!
//! | module | routes |
//! | --- | --- |
//! | `secrets` | `/meshes/{mesh}/secrets[/{name}]`, `/secrets` |
//! | `global_secrets` | `/global-secrets[/{name}]`, `/globalsecrets[/{name}]` |
//! | `meshes` | `/meshes[/{name}]` |
//! | `external_services` | `/meshes/{mesh}/external-services[/{name}]`, `/external-services` |
//! | `user_token` | `POST /tokens/user` |
//! | `changes` | `/_changes` (long poll), `/_watch` (server-sent events) |
//! | `health` | `/`, `/healthz`, `/readyz`, `/metrics`, `/openapi.json` |
//! | `openapi` | what the parts of the OpenAPI document share, and `Routes`, through which every route is registered |
//! | `document` | the OpenAPI document: every resource's part (its `doc` module, e.g. `secrets/doc.rs`) joined |
//!
//! What every handler reaches ([`AppState`]: the store, [`ApiConfig`], the metrics) is in
//! `state.rs`.

pub mod auth;
mod certificates;
mod changes;
mod connections;
mod document;
mod error;
mod external_services;
mod extract;
mod global_secrets;
mod gui;
mod health;
mod history;
mod list;
mod meshes;
mod metrics;
mod openapi;
mod secrets;
mod state;
mod upsert;
mod user_token;
mod zones;

pub use auth::User;
pub use connections::ConnectionLimits;
pub use document::document as openapi_document;
pub use error::{ApiError, ApiResult};
pub use metrics::{MeteredStore, Metrics};
pub use state::{ApiConfig, AppState, Shared};

use crate::domain::{Labels, MeshName, NewMesh};
use crate::store::{SecretStore, StoreError};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

/// The API as a router, ready to serve (with `ConnectInfo<SocketAddr>`, which the
/// localhost-is-admin check needs; [`serve`] provides it).
pub fn app<S: SecretStore + Clone + 'static>(state: AppState<S>) -> Router {
    let (resources, _) = resource_routes::<S>().into_parts();
    let resources = resources.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate::<S>,
    ));
    let (operational, _) = health::router::<S>().merge(gui::router()).into_parts();
    Router::new()
        .merge(resources)
        .merge(operational)
        .layer(DefaultBodyLimit::max(state.config.body_limit()))
        .layer(axum::middleware::from_fn_with_state(
            EveryRequest {
                metrics: state.metrics.clone(),
                timeout: state.config.request_timeout,
            },
            every_request,
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
                let route = request
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map_or("unmatched", |p| p.as_str());
                tracing::info_span!("request", method = %request.method(), route)
            }),
        )
        .with_state(state)
}

/// The routes that need authentication.
fn resource_routes<S: SecretStore + Clone + 'static>() -> openapi::Routes<AppState<S>> {
    secrets::router()
        .merge(certificates::router())
        .merge(changes::router())
        .merge(global_secrets::router())
        .merge(history::router())
        .merge(meshes::router())
        .merge(external_services::router())
        .merge(user_token::router())
        .merge(zones::router())
}

/// `(METHOD, path)` of every operation [`app`] serves, from the same registrations: what
/// the OpenAPI parity test compares with the document.
pub fn served_operations() -> Vec<(String, String)> {
    let (_, mut served) = resource_routes::<crate::store::AnyStore>().into_parts();
    served.extend(health::router::<crate::store::AnyStore>().into_parts().1);
    served.extend(gui::router::<crate::store::AnyStore>().into_parts().1);
    served
}

/// What every request goes through, in one layer: it is counted and timed under its route
/// ([`metrics::track_requests`]), and answered 503 once it takes longer than
/// `--request-timeout` ([`within_request_timeout`]). One layer rather than two: each
/// `from_fn` layer clones the service stack beneath it and boxes a future, on every request.
#[derive(Clone)]
struct EveryRequest {
    metrics: std::sync::Arc<Metrics>,
    timeout: std::time::Duration,
}

async fn every_request(
    axum::extract::State(every): axum::extract::State<EveryRequest>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    metrics::track_requests(&every.metrics, request, |request| {
        within_request_timeout(every.timeout, next.run(request))
    })
    .await
}

/// Answers a request that takes longer than `limit` (`--request-timeout`) with a 503 that
/// carries `Retry-After`, as every 503 does, and Kuma's error body, instead of letting the
/// client hang (a store that stopped answering, say).
async fn within_request_timeout(
    limit: std::time::Duration,
    answer: impl Future<Output = axum::response::Response>,
) -> axum::response::Response {
    match tokio::time::timeout(limit, answer).await {
        Ok(response) => response,
        Err(_) => axum::response::IntoResponse::into_response(error::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Request timeout",
            format!(
                "the request took longer than {} s (--request-timeout); retry",
                limit.as_secs_f64()
            ),
        )),
    }
}

/// Serves `app` on `listener` until `shutdown` completes; requests in flight finish first
/// (the request timeout bounds them). Clients' connections are held to `limits`.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = axum_server::from_tcp(listener.into_std()?)?
        .map(|plain| connections::CappedAcceptor::new(plain, limits.max_open));
    with_limits(server, limits, shutdown)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await
}

/// As [`serve`], over TLS (rustls) with the certificate chain and key in `tls`. The cap
/// applies before the TLS handshake; the header deadline after it.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    tls: axum_server::tls_rustls::RustlsConfig,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = axum_server::from_tcp_rustls(listener.into_std()?, tls)?.map(|rustls| {
        rustls.acceptor(connections::CappedAcceptor::new(
            axum_server::accept::DefaultAcceptor::new(),
            limits.max_open,
        ))
    });
    with_limits(server, limits, shutdown)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await
}

/// `server` with the header deadline of `limits`, stopped gracefully when `shutdown`
/// completes: what both servers share.
fn with_limits<A>(
    mut server: axum_server::Server<SocketAddr, A>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> axum_server::Server<SocketAddr, A> {
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        // No deadline: requests in flight finish (the request timeout bounds them).
        stopper.graceful_shutdown(None);
    });
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_read_timeout);
    server
        .first_request_timeout(limits.header_read_timeout)
        .handle(handle)
}

/// Loads a PEM certificate chain and private key for [`serve_tls`].
///
/// # Errors
/// Unreadable files or invalid PEM.
pub async fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<axum_server::tls_rustls::RustlsConfig> {
    // One process-wide crypto provider for rustls; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await
}

/// First-start setup, as Kuma does it: the Mesh `default` (unless `create_default_mesh` is
/// false: a federated zone gets its Meshes from the global store), labelled as
/// `control_plane` computes them, the user-token signing key and the `admin-user-token`. Idempotent and safe
/// when several replicas start at once.
///
/// # Errors
/// Store failures.
pub async fn bootstrap<S: SecretStore>(
    store: &S,
    create_default_mesh: bool,
    control_plane: &crate::domain::ControlPlane,
) -> Result<(), StoreError> {
    if create_default_mesh {
        let name = MeshName::parse("default").expect("valid name");
        match store.get_mesh(&name).await {
            Ok(_) => {}
            Err(StoreError::NotFound(_)) => {
                let labels =
                    crate::domain::computed_labels(Default::default(), None, control_plane)
                        .unwrap_or_else(|_| Labels::default());
                match store
                    .create_mesh(NewMesh {
                        name,
                        spec: Default::default(),
                        labels,
                    })
                    .await
                {
                    Ok(_) => tracing::info!("created Mesh default"),
                    Err(StoreError::AlreadyExists(_)) => {}
                    Err(other) => return Err(other),
                }
            }
            Err(other) => return Err(other),
        }
    }
    auth::tokens::ensure_signing_key(store, auth::tokens::USER_TOKENS).await?;
    auth::tokens::ensure_admin_token(store).await?;
    // A global store signs zone tokens; zones receive the public keys (as Kuma, a
    // federated zone has no zone signing key of its own).
    if matches!(control_plane, crate::domain::ControlPlane::Global) {
        auth::tokens::ensure_signing_key(store, auth::tokens::ZONE_TOKENS).await?;
        auth::tokens::ensure_zone_public_keys(store).await?;
    }
    Ok(())
}
