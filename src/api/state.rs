//! What every handler can reach: [`AppState`] (the store, timed by the metrics, and the
//! metrics themselves) and [`ApiConfig`], the API's behaviour switches.

use super::metrics::{MeteredStore, Metrics};
use crate::domain::DEFAULT_MAX_SECRET_SIZE;
use std::sync::Arc;
use std::time::Duration;

/// How the API behaves.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Treat direct loopback requests as the admin (Kuma's `localhostIsAdmin`).
    pub localhost_is_admin: bool,
    /// Which control plane this is (Kuma's `mode`, the zone's name, whether it follows a
    /// global store): the labels computed on write, and what may be written here.
    pub control_plane: crate::domain::ControlPlane,
    /// Largest decoded secret, in bytes.
    pub max_secret_size: usize,
    /// A request that takes longer is answered 503.
    pub request_timeout: Duration,
    /// The API is served over TLS (for `next` links).
    pub tls: bool,
    /// The health of the key source holding the key-encryption key, when there is one
    /// (`/readyz` says when it is down).
    pub key_source: Option<Arc<crate::envelope::KeySourceHealth>>,
    /// A federated zone's sync with its global store (`/readyz` is 503 until the first
    /// full copy, then says when the global store does not answer).
    pub zone_sync: Option<Arc<crate::federation::zone::ZoneSyncStatus>>,
    /// The zones that follow this store (a global store's view of them, `GET /zones`).
    pub zones: Arc<crate::federation::global::ZoneRegistry>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            localhost_is_admin: true,
            control_plane: crate::domain::ControlPlane::default(),
            max_secret_size: DEFAULT_MAX_SECRET_SIZE,
            request_timeout: Duration::from_secs(30),
            tls: false,
            key_source: None,
            zone_sync: None,
            zones: Arc::default(),
        }
    }
}

impl ApiConfig {
    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// Largest request body: the base64 of the largest secret, a quarter more for line
    /// breaks inside it (a JSON-escaped `\r\n` is 4 bytes: PEM-style wrapping at 64
    /// characters adds 1/16, wrapping at 16 still fits), and room for the JSON around it.
    /// The decoded size is checked against the limit exactly, after parsing.
    pub fn body_limit(&self) -> usize {
        let base64 = self.max_secret_size.div_ceil(3) * 4;
        base64 + base64 / 4 + 64 * 1024
    }
}

/// What every handler can reach: one `Arc`, because axum clones the state for every
/// request (twice: the authentication middleware and the handler), and each clone and drop
/// of a shared count is an atomic operation on a cache line both cores want.
pub struct AppState<S> {
    shared: Arc<Shared<S>>,
}

/// What an [`AppState`] holds (reached through it by `Deref`: `state.store`).
pub struct Shared<S> {
    /// The store, timed by the metrics.
    pub store: MeteredStore<S>,
    /// Behaviour switches.
    pub config: ApiConfig,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
}

impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> std::ops::Deref for AppState<S> {
    type Target = Shared<S>;

    fn deref(&self) -> &Shared<S> {
        &self.shared
    }
}

impl<S> AppState<S> {
    /// State for `store` with `config` and fresh metrics.
    pub fn new(store: S, config: ApiConfig) -> Self {
        let metrics = Arc::new(Metrics::new());
        Self {
            shared: Arc::new(Shared {
                store: MeteredStore::new(store, metrics.clone()),
                config,
                metrics,
            }),
        }
    }
}
