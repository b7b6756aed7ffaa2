//! A real API server on port 0, on either backend, for black-box HTTP tests.

use super::{TestDb, postgres_store_with, sqlite_store_with};
use kuma_secrets::api::{self, ApiConfig, AppState};
use kuma_secrets::store::{AnyStore, StoreOptions};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which store a test server runs on: the library's own enum.
pub use kuma_secrets::store::Backend;

/// Keeps a test's database or directory alive.
pub enum Guard {
    Postgres(TestDb),
    Sqlite(tempfile::TempDir),
}

/// The API's defaults, but loopback callers are not admins: every caller needs a token.
pub fn tokens_only() -> ApiConfig {
    ApiConfig {
        localhost_is_admin: false,
        ..ApiConfig::default()
    }
}

/// A running server.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The store under the server, for direct checks.
    pub store: AnyStore,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
    /// The database or directory.
    pub guard: Guard,
}

impl TestServer {
    /// Starts a server with default settings.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(
            backend,
            ApiConfig::default(),
            StoreOptions::allow_plaintext_secrets(),
        )
        .await
    }

    /// Starts a server where every caller needs a token ([`tokens_only`]).
    pub async fn start_tokens_only(backend: Backend) -> Self {
        Self::start_with(
            backend,
            tokens_only(),
            StoreOptions::allow_plaintext_secrets(),
        )
        .await
    }

    /// Starts a server on a fresh store of `backend`.
    pub async fn start_with(backend: Backend, config: ApiConfig, options: StoreOptions) -> Self {
        let (store, guard) = match backend {
            Backend::Postgres => {
                let (db, store) = postgres_store_with(options).await;
                (AnyStore::Postgres(store), Guard::Postgres(db))
            }
            Backend::Sqlite => {
                let (dir, store) = sqlite_store_with(options).await;
                (AnyStore::Sqlite(store), Guard::Sqlite(dir))
            }
        };
        Self::start_on(store, guard, config).await
    }

    /// Starts a server on an existing store (several servers may share one Postgres).
    pub async fn start_on(store: AnyStore, guard: Guard, config: ApiConfig) -> Self {
        api::bootstrap(&store, true, &config.control_plane)
            .await
            .expect("bootstrap");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let app = api::app(AppState::new(store.clone(), config));
        let handle = tokio::spawn(api::serve(listener, app, Default::default(), async {
            let _ = rx.await;
        }));
        let server = Self {
            url,
            store,
            shutdown: Some(tx),
            handle: Some(handle),
            guard,
        };
        server.wait_ready().await;
        server
    }

    /// Polls `/readyz` until it answers 200, for at most 30 s.
    pub async fn wait_ready(&self) {
        wait_ready(&self.url).await;
    }

    /// Asks the server to stop and waits for it to finish its requests.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    /// Sends the stop signal without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server task to end.
    pub async fn join(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The admin token the server bootstrapped (GlobalSecret `admin-user-token`).
    pub async fn admin_token(&self) -> String {
        use kuma_secrets::store::SecretStore;
        let key = kuma_secrets::domain::SecretKey::parse(None, "admin-user-token").unwrap();
        let secret = self.store.get_secret(&key).await.unwrap();
        String::from_utf8(secret.data.expose().to_vec()).unwrap()
    }
}

/// A token for user `jane`, in no admin group, valid for an hour, issued by the admin.
pub async fn member_token(server: &TestServer) -> String {
    let admin = server.admin_token().await;
    let response = reqwest::Client::new()
        .post(server.at("/tokens/user"))
        .bearer_auth(admin)
        .json(&serde_json::json!({"name": "jane", "groups": ["team-a"], "validFor": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    response.text().await.unwrap()
}

/// Polls `{base}/readyz` until 200, panicking after 30 s (a bound on failure: a server
/// starting on a loaded machine is ready as soon as it answers).
pub async fn wait_ready(base: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server at {base} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
