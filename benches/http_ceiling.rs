//! The ceiling of our own HTTP stack, for `benches/http.sh`: the same axum, hyper and tokio
//! as `kuma-secrets serve`, answering every `GET /meshes/{mesh}/secrets/{name}` with a
//! constant body the size of a cached Secret's (and its `ETag`), and nothing else: no
//! store, no middleware. What a cached GET is compared with.
//!
//!   cargo bench --bench http_ceiling -- 127.0.0.1:PORT

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// A Secret as `GET` answers it: about 300 bytes.
const BODY: &str = r#"{"type":"Secret","mesh":"default","name":"s-1","creationTime":"2026-12-07T06:00:00.123456Z","modificationTime":"2026-12-07T06:00:00.123456Z","labels":{"kuma.io/mesh":"default","kuma.io/origin":"zone","kuma.io/zone":"default","kuma.io/env":"universal"},"data":"eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4"}"#;

async fn secret() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ETAG, "\"1\""),
        ],
        BODY,
    )
}

fn main() {
    let address = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "127.0.0.1:5690".to_owned());
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let app = Router::new().route("/meshes/{mesh}/secrets/{name}", get(secret));
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .expect("the address is free");
        eprintln!("http_ceiling listening on {address}");
        axum::serve(listener, app).await.expect("serve");
    });
}
