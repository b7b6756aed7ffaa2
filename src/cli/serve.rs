//! `kuma-secrets serve`: open the store, bootstrap it, and serve the API until SIGINT or
//! SIGTERM (requests in flight finish first).

use super::StoreArgs;
use super::keyring::{Access, EncryptionArgs, KekUri, KeySource, kek_keyring, store_options};
use crate::api::{self, ApiConfig, AppState};
use crate::domain::DEFAULT_MAX_SECRET_SIZE;
use crate::store::cache::CachedStore;
use crate::store::replica::ReadReplica;
use crate::store::upkeep::{Upkeep, UpkeepOptions};
use crate::store::{AnyStore, PostgresStore, SealedReads, SecretStore, StoreOptions, StoreUrl};
use anyhow::Context;
use clap::ArgAction;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `kuma-secrets serve …`
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    encryption: EncryptionArgs,
    /// Address the API listens on (Kuma's port is 5681).
    #[arg(long, env = "KUMA_SECRETS_API_ADDR", default_value = "127.0.0.1:5681")]
    api_addr: SocketAddr,
    /// Do not create Mesh `default` on first start.
    #[arg(long, env = "KUMA_SECRETS_SKIP_DEFAULT_MESH")]
    skip_default_mesh: bool,
    /// Treat direct requests from this machine as the admin (Kuma's localhostIsAdmin).
    #[arg(long, env = "KUMA_SECRETS_LOCALHOST_IS_ADMIN", default_value_t = true, action = ArgAction::Set)]
    localhost_is_admin: bool,
    /// Largest secret, in bytes once decoded.
    #[arg(long, env = "KUMA_SECRETS_MAX_SECRET_SIZE", default_value_t = DEFAULT_MAX_SECRET_SIZE)]
    max_secret_size: usize,
    /// Start on a Postgres schema migrated by a newer kuma-secrets.
    #[arg(long)]
    tolerate_newer_schema: bool,
    /// Kuma's control plane mode: `zone` (standalone, or federated with --global-url) or
    /// `global` (what is written here is synced to every zone that follows it).
    #[arg(long, env = "KUMA_SECRETS_MODE", default_value = "zone", value_parser = ["zone", "global"])]
    mode: String,
    /// The zone's name (Kuma's computed `kuma.io/zone` label); with --global-url, a
    /// lowercase DNS label (up to 63 of a-z, 0-9 and '-').
    #[arg(long, env = "KUMA_SECRETS_ZONE", default_value = "default")]
    zone: String,
    /// With --mode zone: the global store to follow (its API URL). The zone lists it, then
    /// follows its change feed, holding its Meshes, Secrets and GlobalSecrets read-only.
    #[arg(long, env = "KUMA_SECRETS_GLOBAL_URL")]
    global_url: Option<String>,
    /// With --global-url: a file holding the token this zone presents to the global store.
    #[arg(long, env = "KUMA_SECRETS_GLOBAL_TOKEN_FILE", requires = "global_url")]
    global_token_file: Option<std::path::PathBuf>,
    /// With an https:// --global-url: CA certificates (PEM) to trust for the global
    /// store's certificate, beside the bundled Mozilla roots.
    #[arg(long, env = "KUMA_SECRETS_GLOBAL_CA_CERT", requires = "global_url")]
    global_ca_cert: Option<std::path::PathBuf>,
    /// Answer 503 to requests that take longer than this (e.g. 30s, 1m).
    #[arg(long, env = "KUMA_SECRETS_REQUEST_TIMEOUT", default_value = "30s", value_parser = crate::duration::parse)]
    request_timeout: std::time::Duration,
    /// Client connections open at once; more are closed as soon as they are accepted.
    #[arg(long, env = "KUMA_SECRETS_MAX_CLIENT_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_client_connections: u32,
    /// Time a client has to send a request's headers; slower clients are disconnected.
    #[arg(long, env = "KUMA_SECRETS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = crate::duration::parse)]
    header_read_timeout: std::time::Duration,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "KUMA_SECRETS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "KUMA_SECRETS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Allow deleting a Secret that a Mesh's mTLS backend uses (Kuma's store.unsafeDelete).
    #[arg(long, env = "KUMA_SECRETS_UNSAFE_DELETE")]
    unsafe_delete: bool,
    /// How long the change feed keeps events (e.g. 7d, 12h); older ones are pruned in small
    /// batches, and a reader asking for them gets 410 Gone.
    #[arg(long, env = "KUMA_SECRETS_EVENTS_RETENTION", default_value = "7d", value_parser = crate::duration::parse)]
    events_retention: std::time::Duration,
    /// How many earlier versions each secret keeps (0: no history, and deletes are final).
    /// The limit is the store's: starting `serve` records it in the database, for every
    /// replica.
    #[arg(long, env = "KUMA_SECRETS_MAX_VERSIONS", default_value_t = crate::store::history::DEFAULT_MAX_VERSIONS)]
    max_versions: u32,
    /// How long a deleted secret's versions are kept for `_restore` (e.g. 7d, 12h); then
    /// they are pruned in small batches.
    #[arg(long, env = "KUMA_SECRETS_DELETED_RETENTION", default_value = "7d", value_parser = crate::duration::parse)]
    deleted_retention: std::time::Duration,
    /// How many secrets the read cache keeps in memory, sealed (0: no cache, every GET
    /// reads the database). Kept coherent by the change feed: see the README.
    #[arg(long, env = "KUMA_SECRETS_CACHE_ENTRIES", default_value_t = crate::store::cache::DEFAULT_CACHE_ENTRIES)]
    cache_entries: usize,
    /// How much memory the read cache may take, in MiB, whatever the number of secrets (a
    /// secret larger than a sixteenth of it is always read from the database).
    #[arg(long, env = "KUMA_SECRETS_CACHE_MIB", default_value_t = crate::store::cache::DEFAULT_CACHE_BYTES >> 20)]
    cache_mib: usize,
    /// A streaming standby of the Postgres --store to send reads to (GETs, history, Mesh
    /// reads, list pages past the first), while it is within --max-replica-lag and has
    /// replayed this server's own last write; writes and counts go to the primary.
    #[arg(long, env = "KUMA_SECRETS_READ_REPLICA")]
    read_replica: Option<StoreUrl>,
    /// How far behind the primary the read replica may be and still serve reads (e.g. 5s).
    #[arg(long, env = "KUMA_SECRETS_MAX_REPLICA_LAG", default_value = "5s", value_parser = crate::duration::parse)]
    max_replica_lag: std::time::Duration,
    /// How often a server with keys in an HSM or a KMS checks that it answers (`/readyz` says
    /// when it does not; serving goes on with the data keys held), and reads the store's
    /// data keys again (to load those another server or rotate-keys made).
    #[arg(long, env = "KUMA_SECRETS_KEY_SOURCE_PROBE_INTERVAL", default_value = "10s", value_parser = crate::duration::parse)]
    key_source_probe_interval: std::time::Duration,
    /// With keys in an HSM or a KMS: make a new data key when the newest is this old (it
    /// seals new writes three probe intervals later, once every server holds it); `never`
    /// for none but those made with rotate-keys --new-data-key.
    #[arg(long, env = "KUMA_SECRETS_DATA_KEY_ROTATION_PERIOD", default_value = "30d", value_parser = parse_rotation_period)]
    data_key_rotation_period: RotationPeriod,
    /// Largest number of database connections.
    #[arg(long, env = "KUMA_SECRETS_MAX_CONNECTIONS", default_value_t = StoreOptions::DEFAULT_MAX_CONNECTIONS)]
    max_connections: u32,
}

pub(super) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (control_plane, global) = control_plane(&args)?;
    // With keys in an HSM or a KMS, the port opens first: while the key source does not answer,
    // the server waits and retries, and says so on /readyz (503) instead of exiting.
    let kek_start = match &args.encryption.keys {
        Some(KeySource::Kek(uri)) => Some(start_with_kek(&args, uri).await?),
        _ => None,
    };
    let keys = match &kek_start {
        Some(start) => StoreOptions::sealed_with(start.keyring.clone()),
        None => store_options(&args.store.url, &args.encryption, Access::Write).await?,
    };
    let options = StoreOptions {
        max_connections: args.max_connections,
        max_secret_size: args.max_secret_size,
        tolerate_newer_schema: args.tolerate_newer_schema,
        unsafe_delete: args.unsafe_delete,
        accept_plaintext_rows: args.encryption.accept_plaintext_rows(),
        ..keys
    };
    // The standby holds the same rows: the same keyring opens them.
    let replica_options = StoreOptions {
        tolerate_newer_schema: true,
        reads_only: true,
        ..options.clone()
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(api::load_tls(cert, key).await.with_context(|| {
            format!(
                "cannot load the TLS certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })?),
        _ => None,
    };
    let store = AnyStore::open(args.store.url.expose(), options)
        .await
        .with_context(|| format!("cannot open the store {}", args.store.url))?;
    // A federated zone's Meshes are the global store's.
    let default_mesh = !args.skip_default_mesh && !control_plane.is_federated_zone();
    api::bootstrap(&store, default_mesh, &control_plane).await?;
    let zone_sync = global.map(|global| {
        let sync = crate::federation::zone::ZoneSync::new(store.clone(), global);
        match &args.global_token_file {
            Some(path) => sync.with_token_file(path.clone()),
            None => sync,
        }
    });
    let zone_sync_status = zone_sync
        .as_ref()
        .map(crate::federation::zone::ZoneSync::status);
    let syncing = zone_sync.map(|sync| {
        tracing::info!(zone = %args.zone, global = %sync.status().global(), "following the global store");
        tokio::spawn(sync.run())
    });
    store
        .set_max_versions(args.max_versions)
        .await
        .context("cannot record --max-versions in the store")?;
    let (listener, key_source, key_tasks) = match kek_start {
        Some(KekStart {
            listener,
            health,
            probing,
            keyring,
            kek,
        }) => {
            let keeping = tokio::spawn(crate::envelope::keep_data_keys(
                store.clone(),
                kek,
                keyring,
                crate::envelope::DataKeyUpkeep {
                    refresh: args.key_source_probe_interval,
                    rotation: args.data_key_rotation_period.0,
                },
            ));
            (listener, Some(health), vec![probing, keeping])
        }
        None => (bind(args.api_addr).await?, None, Vec::new()),
    };
    let config = ApiConfig {
        localhost_is_admin: args.localhost_is_admin,
        control_plane,
        max_secret_size: args.max_secret_size,
        request_timeout: args.request_timeout,
        tls: tls.is_some(),
        key_source,
        zone_sync: zone_sync_status,
        zones: Default::default(),
    };
    let addr = listener.local_addr()?;
    let endpoint = Endpoint {
        listener,
        tls,
        limits: api::ConnectionLimits {
            max_open: fit_client_connections(
                args.max_client_connections as usize,
                args.max_connections,
            ),
            header_read_timeout: args.header_read_timeout,
        },
    };
    tracing::info!(
        %addr,
        scheme = config.scheme(),
        store = %args.store.url,
        "kuma-secrets API listening"
    );
    let upkeep = Upkeep::start(
        store.clone(),
        UpkeepOptions::default()
            .events_retention(args.events_retention)
            .deleted_retention(args.deleted_retention),
    );
    let cache = CacheSize {
        entries: args.cache_entries,
        bytes: args.cache_mib.saturating_mul(1 << 20),
    };
    let served = match &args.read_replica {
        None => serve_store(store.clone(), cache, config, endpoint, upkeep).await,
        Some(url) => {
            let AnyStore::Postgres(primary) = &store else {
                anyhow::bail!("--read-replica needs a Postgres --store");
            };
            let replica = PostgresStore::open(url.expose(), replica_options)
                .await
                .with_context(|| format!("cannot open the read replica {url}"))?;
            let routed = ReadReplica::new(primary.clone(), replica.clone(), args.max_replica_lag);
            let upkeep = upkeep.with_replica_monitor(routed.clone());
            let served = serve_store(routed, cache, config, endpoint, upkeep).await;
            replica.close().await;
            served
        }
    };
    for task in key_tasks.into_iter().chain(syncing) {
        task.abort();
    }
    served?;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// What a start with keys in an HSM or a KMS has before the store opens: the port, bound
/// first (it answered while the key source was awaited), the keyring of the store's data
/// keys (replaced while serving as data keys come), the key, and the key source's health
/// with the task that probes it.
struct KekStart {
    listener: tokio::net::TcpListener,
    keyring: crate::sealing::SharedKeyring,
    kek: Arc<dyn crate::envelope::KeyEncryptionKey>,
    health: Arc<crate::envelope::KeySourceHealth>,
    probing: tokio::task::JoinHandle<()>,
}

/// Binds the API's port, waits there for the key `uri` to unwrap the store's data keys
/// (answering that it is starting, unless over TLS), then starts probing the key source.
async fn start_with_kek(args: &ServeArgs, uri: &KekUri) -> anyhow::Result<KekStart> {
    let listener = bind(args.api_addr).await?;
    let status = Arc::new(Mutex::new(format!(
        "starting: opening the key source {}",
        uri.name()
    )));
    let waiting = wait_for_keyring(&args.store.url, uri, status.clone());
    let (keyring, kek) = if args.tls_cert.is_some() {
        // (A plain-HTTP answer on a TLS port would only confuse clients.)
        waiting.await?
    } else {
        while_starting(&listener, status, waiting).await??
    };
    let health = Arc::new(crate::envelope::KeySourceHealth::new(&uri.name()));
    let probing = tokio::spawn(crate::envelope::watch_key_source(
        kek.clone(),
        health.clone(),
        args.key_source_probe_interval,
    ));
    Ok(KekStart {
        listener,
        keyring: crate::sealing::SharedKeyring::new(keyring),
        kek,
        health,
        probing,
    })
}

/// The control plane `--mode`, `--zone` and `--global-url` make, and for a federated zone
/// a client of its global store.
///
/// # Errors
/// `--global-url` with `--mode global`, an invalid zone name or URL, an unreadable token
/// file.
fn control_plane(
    args: &ServeArgs,
) -> anyhow::Result<(
    crate::domain::ControlPlane,
    Option<crate::client::ApiClient>,
)> {
    use crate::domain::ControlPlane;
    match (args.mode.as_str(), &args.global_url) {
        ("global", None) => Ok((ControlPlane::Global, None)),
        ("global", Some(_)) => {
            anyhow::bail!("--global-url is for a zone (--mode zone) that follows a global store")
        }
        (_, None) => Ok((ControlPlane::standalone(&args.zone), None)),
        (_, Some(url)) => {
            let zone = &args.zone;
            if !crate::domain::is_zone_name(zone) {
                anyhow::bail!("invalid --zone {zone:?}: {}", crate::domain::ZONE_NAME_RULE);
            }
            let token = match &args.global_token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| {
                            format!("cannot read --global-token-file {}", path.display())
                        })?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            let client = crate::client::ApiClient::new(url, token).map_err(|_| {
                anyhow::anyhow!(
                    "invalid --global-url {url:?}: expected http://HOST:PORT or https://HOST:PORT"
                )
            })?;
            let client = match &args.global_ca_cert {
                Some(path) => {
                    let pem = std::fs::read(path).with_context(|| {
                        format!("cannot read --global-ca-cert {}", path.display())
                    })?;
                    client.trusting(&pem).map_err(|e| {
                        anyhow::anyhow!("invalid --global-ca-cert {}: {e}", path.display())
                    })?
                }
                None => client,
            };
            Ok((
                ControlPlane::Zone {
                    name: zone.clone(),
                    federated: true,
                },
                Some(client),
            ))
        }
    }
}

/// `--data-key-rotation-period`: a period, or none (`never`).
#[derive(Debug, Clone, Copy)]
struct RotationPeriod(Option<Duration>);

/// `--data-key-rotation-period`: a duration, or `never`.
fn parse_rotation_period(text: &str) -> Result<RotationPeriod, String> {
    if text == "never" {
        return Ok(RotationPeriod(None));
    }
    crate::duration::parse(text)
        .map(|period| RotationPeriod(Some(period)))
        .map_err(|err| format!("{err}, or never"))
}

/// The API's listener on `addr`.
async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// The longest wait between two tries of a key source that does not answer at start.
const KEY_SOURCE_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// The keyring of the store's data keys, unwrapped by the key `uri`: tried again with
/// backoff (0.5 s doubling to 30 s) while the key source or the database does not answer, each
/// failure logged and written to `status`; a wrong configuration fails at once.
async fn wait_for_keyring(
    store_url: &StoreUrl,
    uri: &KekUri,
    status: Arc<Mutex<String>>,
) -> anyhow::Result<(
    Arc<crate::sealing::Keyring>,
    Arc<dyn crate::envelope::KeyEncryptionKey>,
)> {
    let mut backoff = Duration::from_millis(500);
    let since = chrono::Utc::now();
    loop {
        let err = match kek_keyring(store_url, uri).await {
            Ok(keys) => return Ok(keys),
            Err(err) if super::keyring::is_retryable(&err) => err,
            Err(err) => return Err(err),
        };
        let reason = format!("{err:#}");
        tracing::warn!(error = %reason, retry_in = ?backoff, "the key source does not answer; waiting for it before serving");
        *status.lock().unwrap_or_else(|e| e.into_inner()) = format!(
            "starting: waiting since {} for the key source {}: {reason}",
            since.format("%Y-%m-%dT%H:%M:%SZ"),
            uri.name()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(KEY_SOURCE_BACKOFF_CAP);
    }
}

/// Runs `work` while answering on a duplicate of `listener` that the server is starting:
/// `/healthz` 200, everything else (`/readyz` included) 503 with `status`. The duplicate
/// stops accepting when `work` ends; the API then accepts on `listener` itself.
async fn while_starting<T>(
    listener: &tokio::net::TcpListener,
    status: Arc<Mutex<String>>,
    work: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    use std::os::fd::AsFd;
    let duplicate = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?);
    duplicate.set_nonblocking(true)?;
    let duplicate = tokio::net::TcpListener::from_std(duplicate)?;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .fallback(move || {
            let body = format!("{}\n", status.lock().unwrap_or_else(|e| e.into_inner()));
            async move { (axum::http::StatusCode::SERVICE_UNAVAILABLE, body) }
        });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let starting = tokio::spawn(async move {
        axum::serve(duplicate, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    let out = work.await;
    let _ = stop.send(());
    let _ = starting.await;
    Ok(out)
}

/// Descriptors kept aside from client connections: the store's files, the log, the
/// listener, a read replica's pool.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft open-files limit to the hard one (as servers do), then lowers
/// `requested` to what fits beside the database pool of `pool` connections, saying so:
/// the cap must be reached before the descriptors run out, or accepting fails for
/// everyone.
fn fit_client_connections(requested: usize, pool: u32) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "could not raise the open-files limit");
        }
    }
    let Some(soft) = getrlimit(Resource::Nofile).current else {
        return requested;
    };
    let fits = soft.saturating_sub(RESERVED_DESCRIPTORS + u64::from(pool));
    let fits = usize::try_from(fits).unwrap_or(usize::MAX).max(1);
    if fits < requested {
        tracing::warn!(
            requested,
            open_files_limit = soft,
            "--max-client-connections lowered to {fits}: the open-files limit leaves no room for more beside the database pool"
        );
        fits
    } else {
        requested
    }
}

/// Where and how the API is served: the bound listener, TLS if any, and what clients'
/// connections may hold.
struct Endpoint {
    listener: tokio::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    limits: api::ConnectionLimits,
}

/// How large the read cache may grow.
#[derive(Clone, Copy)]
struct CacheSize {
    /// Secrets (0: no cache).
    entries: usize,
    /// Memory.
    bytes: usize,
}

/// Serves the API on `store`, through a read cache of `cache` (none for 0 entries) kept
/// coherent by the change feed, until SIGINT or SIGTERM; then stops the upkeep.
async fn serve_store<S>(
    store: S,
    cache: CacheSize,
    config: ApiConfig,
    endpoint: Endpoint,
    upkeep: Upkeep,
) -> anyhow::Result<()>
where
    S: SecretStore + SealedReads + Clone + 'static,
{
    let (served, upkeep) = if cache.entries == 0 || cache.bytes == 0 {
        let served = serve_app(endpoint, api::app(AppState::new(store, config))).await;
        (served, upkeep)
    } else {
        let cached = CachedStore::with_memory(store, cache.entries, cache.bytes);
        let upkeep = upkeep.with_cache_follower(cached.clone());
        let served = serve_app(endpoint, api::app(AppState::new(cached, config))).await;
        (served, upkeep)
    };
    upkeep.stop().await;
    served
}

/// Serves `app` until SIGINT or SIGTERM, over TLS if given.
async fn serve_app(endpoint: Endpoint, app: axum::Router) -> anyhow::Result<()> {
    let Endpoint {
        listener,
        tls,
        limits,
    } = endpoint;
    match tls {
        Some(tls) => api::serve_tls(listener, app, tls, limits, shutdown_signal()).await?,
        None => api::serve(listener, app, limits, shutdown_signal()).await?,
    }
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
