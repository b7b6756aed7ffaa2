//! A TCP proxy in front of the shared Postgres that a test can cut and heal: the database
//! "goes down" for the store behind the proxy only, and the shared server is never touched.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy to `127.0.0.1:5432` (or wherever `DATABASE_URL` points).
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    cut: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    upstream: Arc<std::sync::Mutex<String>>,
    generation: watch::Sender<u64>,
}

impl Proxy {
    /// Listens on a free port and forwards every connection to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(std::sync::Mutex::new(upstream));
        let (generation, _) = watch::channel(0u64);
        let proxy = Self {
            port,
            cut: cut.clone(),
            stalled: stalled.clone(),
            upstream: upstream.clone(),
            generation: generation.clone(),
        };
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if cut.load(Ordering::SeqCst) {
                    drop(client); // refused: the connection closes at once
                    continue;
                }
                if stalled.load(Ordering::SeqCst) {
                    // Accepted, never answered: the database hangs.
                    let mut cuts = generation.subscribe();
                    tokio::spawn(async move {
                        let _held = client;
                        let _ = cuts.changed().await;
                    });
                    continue;
                }
                let upstream = upstream.lock().unwrap().clone();
                let mut cuts = generation.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {} // cut: both sockets drop
                    }
                });
            }
        });
        proxy
    }

    /// Closes every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Closes every open connection and holds new ones open without an answer: a
    /// database that hangs rather than refuses.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Sends new connections to `upstream` (`host:port`); open ones stay where they are,
    /// as with a proxy whose health check moved to another server without killing sessions.
    pub fn set_upstream(&self, upstream: String) {
        *self.upstream.lock().unwrap() = upstream;
    }

    /// Accepts and forwards connections again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// `url` (a Postgres URL) with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let mut parsed = reqwest::Url::parse(url).unwrap();
        parsed.set_host(Some("127.0.0.1")).unwrap();
        parsed.set_port(Some(self.port)).unwrap();
        parsed.to_string()
    }
}

/// `host:port` of a Postgres URL.
pub fn upstream_of(url: &str) -> String {
    let parsed = reqwest::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        parsed.host_str().unwrap_or("127.0.0.1"),
        parsed.port().unwrap_or(5432)
    )
}
