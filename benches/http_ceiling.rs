//! The ceiling of our own HTTP stack, for `benches/http.sh`: the same axum, hyper and tokio
//! as `kuma-secrets serve`, answering every `GET /meshes/{mesh}/secrets/{name}` with a
//! constant body the size of a cached Secret's (and its `ETag`), and nothing else: no
//! store, no middleware. What a cached GET is compared with.
//!
//!   cargo bench --bench http_ceiling -- 127.0.0.1:PORT [--value-bytes 1024]

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The same allocator as the binary (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Secret as `GET` answers it, with a value of `value_bytes` (its `data` the base64 of
/// that many bytes): the same size as what `serve` answers for the benchmark's secrets.
fn secret_body(value_bytes: usize) -> &'static str {
    let data = "eHh4".repeat(value_bytes / 3) + ["", "eA==", "eHg="][value_bytes % 3];
    let body = format!(
        r#"{{"type":"Secret","mesh":"default","name":"s-1","creationTime":"2026-12-07T06:00:00.123456Z","modificationTime":"2026-12-07T06:00:00.123456Z","labels":{{"kuma.io/env":"universal","kuma.io/mesh":"default","kuma.io/origin":"zone","kuma.io/zone":"default"}},"data":"{data}"}}"#
    );
    Box::leak(body.into_boxed_str())
}

async fn secret(body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ETAG, "\"1\""),
        ],
        body,
    )
}

fn main() {
    let mut address = "127.0.0.1:5690".to_owned();
    let mut value_bytes = 1024;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--value-bytes" => {
                value_bytes = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--value-bytes takes a number");
            }
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            flag if flag.starts_with('-') => {
                panic!("unknown argument {flag}: use [ADDRESS] [--value-bytes N]")
            }
            _ => address = arg,
        }
    }
    let body = secret_body(value_bytes);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let app = Router::new().route("/meshes/{mesh}/secrets/{name}", get(move || secret(body)));
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .expect("the address is free");
        eprintln!("http_ceiling listening on {address}");
        axum::serve(listener, app).await.expect("serve");
    });
}
