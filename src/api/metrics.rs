//! Prometheus metrics: HTTP requests by route and status, their latency, and the latency of
//! every store operation (via [`MeteredStore`], a decorator around any [`SecretStore`]).
//!
//! Each server owns its own `Registry` rather than the process-global one, so several
//! servers (tests, or an embedding control plane) never mix their numbers.

use crate::domain::{
    ExternalService, Mesh, MeshName, MeshUpdate, NewExternalService, NewMesh, NewSecret, Resource,
    ResourceName, Secret, SecretKey, SecretReferrer, SecretUpdate,
};
use crate::store::CacheReport;
use crate::store::feed::{EventFilter, EventPage};
use crate::store::history::VersionInfo;
use crate::store::{
    Expect, ExternalServiceQuery, ImportCounts, MeshQuery, Page, PoolReport, Put, Result,
    SecretQuery, SecretStore, forward_store_methods,
};
use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;
use std::time::Instant;

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    in_flight: IntGaugeVec,
    request_seconds: HistogramVec,
    store_seconds: HistogramVec,
    cache_reads: IntCounterVec,
    cache_drops: prometheus::IntCounter,
    connections_discarded: prometheus::IntCounter,
    connections_refused: prometheus::IntCounter,
    write_batches: prometheus::IntCounter,
    batched_writes: prometheus::IntCounter,
    write_conflicts: prometheus::IntCounter,
    cache_totals_reused: prometheus::IntCounter,
    cache_entries: prometheus::IntGauge,
    cache_bytes: prometheus::IntGauge,
    key_source_calls: IntCounterVec,
    zone_sync_revision: prometheus::IntGauge,
    zone_sync_behind: prometheus::IntGauge,
    zone_sync_down: prometheus::IntGauge,
    zone_sync_lists: prometheus::IntCounter,
    mesh_ca_expiry: IntGaugeVec,
    /// When `mesh_ca_expiry` was last brought up to date.
    mesh_ca_expiry_read: std::sync::Mutex<Option<Instant>>,
}

/// How often a scrape reads every Mesh's CA certificates again; scrapes between answer
/// what the last one found.
pub const MESH_CA_EXPIRY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with the server's metrics in it.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("kuma_secrets".into()), None).expect("valid registry prefix");
        let counter =
            |name: &str, help: &str| registered(&registry, prometheus::IntCounter::new(name, help));
        let gauge =
            |name: &str, help: &str| registered(&registry, prometheus::IntGauge::new(name, help));
        Self {
            requests: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "http_requests_total",
                        "HTTP requests by route, method and status",
                    ),
                    &["route", "method", "status"],
                ),
            ),
            in_flight: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "http_requests_in_flight",
                        "HTTP requests being served, by route",
                    ),
                    &["route"],
                ),
            ),
            request_seconds: registered(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("http_request_duration_seconds", "HTTP request latency"),
                    &["route", "method"],
                ),
            ),
            store_seconds: registered(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "store_operation_duration_seconds",
                        "Store operation latency by operation and outcome",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ]),
                    &["operation", "outcome"],
                ),
            ),
            cache_reads: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "read_cache_reads_total",
                        "Single-secret reads by how the read cache answered: hit (from memory), miss (read and kept), bypass (read past it)",
                    ),
                    &["outcome"],
                ),
            ),
            cache_drops: counter(
                "read_cache_drops_total",
                "Secrets the read cache dropped because a write or a change-feed event named them",
            ),
            connections_discarded: counter(
                "store_connections_discarded_total",
                "Database connections closed after an error that ends them: the server went away, is shutting down, or only reads now (a demoted primary)",
            ),
            connections_refused: counter(
                "store_connections_refused_total",
                "New database connections refused because the server only reads (a standby), as target_session_attrs=read-write",
            ),
            write_batches: counter(
                "store_write_batches_total",
                "Batches of two secret writes or more committed in one transaction (group commit)",
            ),
            batched_writes: counter(
                "store_batched_writes_total",
                "Secret writes committed in a batch of two or more",
            ),
            write_conflicts: counter(
                "store_write_conflicts_total",
                "Statements of secret writes and imports that met a deadlock or a serialization failure and ran again",
            ),
            cache_totals_reused: counter(
                "read_cache_list_totals_reused_total",
                "List pages whose total came from the read cache instead of a count",
            ),
            cache_entries: gauge("read_cache_entries", "Secrets the read cache holds"),
            cache_bytes: gauge(
                "read_cache_bytes",
                "About how much memory the read cache's rows take",
            ),
            key_source_calls: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "key_source_calls_total",
                        "Calls to the key source holding the key-encryption key (an HSM): opening it, wrapping and unwrapping data keys; by outcome: ok, unavailable (it did not answer or failed), refused (a wrapped data key did not unwrap), config (its configuration is wrong)",
                    ),
                    &["outcome"],
                ),
            ),
            zone_sync_revision: gauge(
                "zone_sync_applied_revision",
                "A federated zone: the global store's revision it holds every change up to",
            ),
            zone_sync_behind: gauge(
                "zone_sync_behind_seconds",
                "A federated zone: how long since it last held every change the global store had (0 while caught up)",
            ),
            zone_sync_down: gauge(
                "zone_sync_global_unreachable_seconds",
                "A federated zone: how long the global store has not answered (0 while it answers)",
            ),
            zone_sync_lists: counter(
                "zone_sync_full_lists_total",
                "A federated zone: full lists of the global store taken (the first, and after each 410)",
            ),
            mesh_ca_expiry: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "mesh_ca_expiry_timestamp_seconds",
                        "When the earliest CA certificate of a Mesh's mTLS backends expires (Unix time), one series per Mesh that has one",
                    ),
                    &["mesh"],
                ),
            ),
            mesh_ca_expiry_read: std::sync::Mutex::new(None),
            registry,
        }
    }

    /// Brings each Mesh's earliest CA expiry up to date, reading the store at most every
    /// `MESH_CA_EXPIRY_EVERY` (60 s); a failed read keeps the last values.
    pub async fn observe_mesh_ca_expiry<S: crate::store::SecretStore>(&self, store: &S) {
        {
            let mut read = self
                .mesh_ca_expiry_read
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if read.is_some_and(|at| at.elapsed() < MESH_CA_EXPIRY_EVERY) {
                return;
            }
            *read = Some(Instant::now());
        }
        match super::certificates::earliest_ca_expiry_by_mesh(store).await {
            Ok(found) => {
                // Meshes deleted, or whose CA went, leave no stale series behind.
                self.mesh_ca_expiry.reset();
                for (mesh, not_after) in found {
                    self.mesh_ca_expiry
                        .with_label_values(&[mesh.as_str()])
                        .set(not_after.timestamp());
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the Meshes' CA certificates for /metrics")
            }
        }
    }

    /// Brings a federated zone's sync metrics up to `status` (read at each scrape).
    pub fn observe_zone_sync(&self, status: &crate::federation::zone::ZoneSyncStatus) {
        self.zone_sync_revision
            .set(status.applied_revision().unwrap_or(0));
        self.zone_sync_behind.set(status.seconds_behind());
        self.zone_sync_down
            .set(status.seconds_since_contact().unwrap_or(0));
        raise(&self.zone_sync_lists, status.lists());
    }

    /// Brings the read cache's metrics up to `report` (read at each scrape: the cache
    /// keeps its own counts).
    pub fn observe_cache(&self, report: &crate::store::CacheReport) {
        let stats = report.stats;
        raise(&self.cache_reads.with_label_values(&["hit"]), stats.hits);
        raise(&self.cache_reads.with_label_values(&["miss"]), stats.misses);
        raise(
            &self.cache_reads.with_label_values(&["bypass"]),
            stats.bypassed,
        );
        raise(&self.cache_drops, stats.dropped);
        raise(&self.cache_totals_reused, stats.totals_reused);
        self.cache_entries
            .set(i64::try_from(report.entries).unwrap_or(i64::MAX));
        self.cache_bytes
            .set(i64::try_from(report.bytes).unwrap_or(i64::MAX));
    }

    /// Brings the connection pool's metrics up to `report` (read at each scrape).
    pub fn observe_pool(&self, report: &crate::store::PoolReport) {
        raise(&self.connections_discarded, report.discarded);
        raise(&self.connections_refused, report.refused);
        raise(&self.write_batches, report.write_batches);
        raise(&self.batched_writes, report.batched_writes);
        raise(&self.write_conflicts, report.write_conflicts);
    }

    /// Brings the key source metrics up to `calls` (the process's counts, read at each
    /// scrape).
    pub fn observe_key_source(&self, calls: crate::envelope::KeySourceCalls) {
        for (outcome, count) in [
            ("ok", calls.ok),
            ("unavailable", calls.unavailable),
            ("refused", calls.refused),
            ("config", calls.config),
        ] {
            raise(&self.key_source_calls.with_label_values(&[outcome]), count);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Raises a counter to `to`, a count kept elsewhere (never lowers it).
fn raise(counter: &prometheus::IntCounter, to: u64) {
    counter.inc_by(to.saturating_sub(counter.get()));
}

/// Counts and times `request` under its matched route (not the raw path, which would make
/// one series per secret name) while `run` answers it (part of the API's middleware,
/// `api::every_request`).
pub async fn track_requests<F>(
    metrics: &Metrics,
    request: Request,
    run: impl FnOnce(Request) -> F,
) -> Response
where
    F: std::future::Future<Output = Response>,
{
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let in_flight = InFlight::enter(metrics.in_flight.with_label_values(&[route.as_str()]));
    let response = run(request).await;
    drop(in_flight);
    metrics
        .request_seconds
        .with_label_values(&[route.as_str(), method])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[route.as_str(), method, response.status().as_str()])
        .inc();
    response
}

/// The method as a metrics label, from a fixed set: a client inventing methods must not
/// grow the number of series (each one costs memory and `/metrics` output forever).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `metric`, registered in `registry` (the server's metrics are fixed: a bad one is a bug).
fn registered<C>(registry: &Registry, metric: prometheus::Result<C>) -> C
where
    C: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metrics register once");
    metric
}

/// Counts a request in flight until dropped, so cancelled requests are uncounted too.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A [`SecretStore`] that times every call of the store it wraps.
#[derive(Clone)]
pub struct MeteredStore<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> MeteredStore<S> {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(
        &self,
        operation: &str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_retryable() => "unavailable",
            Err(crate::store::StoreError::Internal(_)) => "error",
            Err(_) => "rejected",
        };
        self.metrics
            .store_seconds
            .with_label_values(&[operation, outcome])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

impl<S: SecretStore> SecretStore for MeteredStore<S> {
    forward_store_methods! { [inner] through timed(name)
        fn create_secret(secret: NewSecret) -> Secret;
        fn update_secret(key: &SecretKey, v: i64, u: SecretUpdate) -> Secret;
        fn delete_secret(key: &SecretKey, v: Option<i64>) -> ();
        fn put_secret(secret: NewSecret, expect: Expect) -> Put<Secret>;
        fn put_mesh(mesh: NewMesh, expect: Expect) -> Put<Mesh>;
        fn get_secret(key: &SecretKey) -> Secret;
        fn get_secret_fresh(key: &SecretKey) -> Secret;
        fn secret_version(key: &SecretKey) -> Option<i64>;
        fn get_secret_version(key: &SecretKey, version: i64) -> Secret;
        fn secret_versions(key: &SecretKey) -> Vec<VersionInfo>;
        fn rollback_secret(key: &SecretKey, to: i64, v: Option<i64>) -> Secret;
        fn restore_secret(key: &SecretKey, version: Option<i64>) -> Secret;
        fn purge_secret(key: &SecretKey, expected: Option<i64>) -> ();
        fn list_secrets(query: &SecretQuery) -> Page<Secret>;
        fn create_mesh(mesh: NewMesh) -> Mesh;
        fn update_mesh(name: &MeshName, v: i64, u: MeshUpdate) -> Mesh;
        fn delete_mesh(name: &MeshName, v: Option<i64>) -> ();
        fn get_mesh(name: &MeshName) -> Mesh;
        fn list_meshes(query: &MeshQuery) -> Page<Mesh>;
        fn current_revision() -> i64;
        fn events_after(after: i64, limit: u32, filter: &EventFilter) -> EventPage;
        fn ping() -> ();
        fn put_external_service(service: NewExternalService, expect: Expect) -> Put<ExternalService>;
        fn delete_external_service(mesh: &MeshName, name: &ResourceName, v: Option<i64>) -> ();
        fn get_external_service(mesh: &MeshName, name: &ResourceName) -> ExternalService;
        fn list_external_services(query: &ExternalServiceQuery) -> Page<ExternalService>;
        fn secret_referrers(key: &SecretKey) -> Vec<SecretReferrer>;
        fn import_batch(items: Vec<Resource>) -> ImportCounts;
    }
    fn readiness_note(&self) -> Option<String> {
        self.inner.readiness_note()
    }
    fn change_signal(&self) -> Option<crate::store::feed::ChangeSignal> {
        self.inner.change_signal()
    }
    fn cache_report(&self) -> Option<CacheReport> {
        self.inner.cache_report()
    }
    fn pool_report(&self) -> Option<PoolReport> {
        self.inner.pool_report()
    }
}
