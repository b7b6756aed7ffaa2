//! A client for the HTTP API, as kumactl's remote store is: what the CLI's `apply`, `get`,
//! `delete` and `generate` verbs use. Failures become one-line [`ClientError`]s carrying
//! the server's Kuma error body (title, detail, field violations), never a raw response.

use crate::wire::ErrorBody;
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::time::Duration;

/// Default API address, Kuma's port.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:5681";

/// A client of one server.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// How long one request may take, answer included (60 s unless set).
    timeout: Option<Duration>,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What can go wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached (down, wrong address, TLS failure, timeout).
    #[error("could not reach the API at {url}: {reason}")]
    Unreachable {
        /// The base URL.
        url: String,
        /// Why, in one line.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{}", api_error_text(.0))]
    Api(Box<ErrorBody>),
    /// The server answered with something that is not the API's.
    #[error("unexpected response from {url}: {reason}")]
    Protocol {
        /// The URL asked.
        url: String,
        /// What was wrong with the answer.
        reason: String,
    },
    /// The `--api-url` is not a URL.
    #[error("invalid --api-url {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    BadUrl(String),
}

/// kumactl's text of a Kuma error: `Title (Detail)`, then `;field=reason ` for each
/// violation (its `rest_errors.Error.Error()`).
fn api_error_text(body: &ErrorBody) -> String {
    let mut text = if body.detail.is_empty() || body.detail == body.title {
        body.title.clone()
    } else {
        format!("{} ({})", body.title, body.detail)
    };
    for p in &body.invalid_parameters {
        text.push_str(&format!(";{}={} ", p.field, p.reason));
    }
    text
}

impl ClientError {
    /// The HTTP status if the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(body) => Some(body.status),
            _ => None,
        }
    }
}

/// The path and query of `url` (a list's absolute `next` link), what [`ApiClient::get`]
/// takes; `url` itself if it does not parse.
pub fn path_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => match parsed.query() {
            Some(query) => format!("{}?{query}", parsed.path()),
            None => parsed.path().to_owned(),
        },
        Err(_) => url.to_owned(),
    }
}

/// The HTTP client's settings: 5 s to connect, 60 s for a whole request.
fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
}

/// Result of a client call.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ApiClient {
    /// A client for the API at `base` (`http://HOST:PORT`), sending `token` as a bearer
    /// token if given.
    ///
    /// # Errors
    /// [`ClientError::BadUrl`] if `base` is not an http(s) URL.
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base).map_err(|_| ClientError::BadUrl(base.clone()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ClientError::BadUrl(base));
        }
        let http = http_builder()
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            base,
            token: token.filter(|t| !t.trim().is_empty()),
            http,
            timeout: None,
        })
    }

    /// The same client, also trusting the CA certificates in `ca_pem` (PEM, one or more)
    /// for an `https://` server, beside the bundled Mozilla roots: a server whose
    /// certificate an operator's own CA issued.
    ///
    /// # Errors
    /// [`ClientError::Protocol`] if `ca_pem` holds no certificate.
    pub fn trusting(mut self, ca_pem: &[u8]) -> Result<Self> {
        let roots =
            reqwest::Certificate::from_pem_bundle(ca_pem).map_err(|e| ClientError::Protocol {
                url: self.base.clone(),
                reason: format!("the CA certificate file holds no PEM certificate: {e}"),
            })?;
        if roots.is_empty() {
            return Err(ClientError::Protocol {
                url: self.base.clone(),
                reason: "the CA certificate file holds no PEM certificate".to_owned(),
            });
        }
        let mut builder = http_builder();
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
        self.http = builder.build().map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        Ok(self)
    }

    /// The same client, sending `token` instead (none if `None` or blank).
    pub fn with_token(&self, token: Option<String>) -> Self {
        Self {
            base: self.base.clone(),
            token: token.filter(|t| !t.trim().is_empty()),
            http: self.http.clone(),
            timeout: self.timeout,
        }
    }

    /// The same client, giving up on a request after `timeout` (a network that stopped
    /// answering is noticed then, not after the default 60 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Whether it sends `token`.
    pub fn sends_token(&self, token: &str) -> bool {
        self.token.as_deref() == Some(token)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(timeout) = self.timeout {
            request = request.timeout(timeout);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, bytes_body::Body)> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: one_line(&e),
        })?;
        let status = response.status();
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_owned());
        let revision = response
            .headers()
            .get("kuma-secrets-revision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                reason: one_line(&e),
            })?;
        if status.is_success() {
            return Ok((
                status,
                bytes_body::Body {
                    bytes: body.to_vec(),
                    etag,
                    revision,
                },
            ));
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(mut error) if !error.title.is_empty() => {
                error.status = status.as_u16();
                Err(ClientError::Api(Box::new(error)))
            }
            _ => Err(ClientError::Protocol {
                url: self.base.clone(),
                reason: format!("status {status} without a Kuma error body"),
            }),
        }
    }

    /// `GET path`, its JSON body read as a `T` (a [`crate::wire`] type).
    ///
    /// # Errors
    /// As [`ClientError`]; a body that is not a `T` is [`ClientError::Protocol`].
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (_, body) = self.send(self.request(reqwest::Method::GET, path)).await?;
        body.json(&self.base)
    }

    /// `GET path` of a list: its body as a `T`, and the change-feed revision the list
    /// reflects (`Kuma-Secrets-Revision`): follow the feed from there to miss nothing.
    ///
    /// # Errors
    /// As [`ClientError`]; an answer without the revision is [`ClientError::Protocol`].
    pub async fn get_list<T: DeserializeOwned>(&self, path: &str) -> Result<(T, i64)> {
        let (_, body) = self.send(self.request(reqwest::Method::GET, path)).await?;
        let revision = body.revision.ok_or_else(|| ClientError::Protocol {
            url: self.base.clone(),
            reason: format!("{path} answered without a Kuma-Secrets-Revision header"),
        })?;
        Ok((body.json(&self.base)?, revision))
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `PUT path` with a JSON body; `true` if it created the resource (201).
    ///
    /// # Errors
    /// As [`ClientError`].
    pub async fn put<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> Result<bool> {
        let (status, _) = self
            .send(self.request(reqwest::Method::PUT, path).json(body))
            .await?;
        Ok(status == StatusCode::CREATED)
    }

    /// `DELETE path`.
    ///
    /// # Errors
    /// As [`ClientError`].
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.send(self.request(reqwest::Method::DELETE, path))
            .await
            .map(|_| ())
    }

    /// `POST path` with a JSON body, answered with a `T` and its `ETag` (unquoted).
    ///
    /// # Errors
    /// As [`ClientError`]; a body that is not a `T` is [`ClientError::Protocol`].
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(T, Option<String>)> {
        let (_, body) = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        let etag = body.etag.clone();
        Ok((body.json(&self.base)?, etag))
    }

    /// `POST path` with a JSON body, answered with text.
    ///
    /// # Errors
    /// As [`ClientError`].
    pub async fn post_for_text<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<String> {
        let (_, body) = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        String::from_utf8(body.bytes).map_err(|_| ClientError::Protocol {
            url: self.base.clone(),
            reason: "the answer is not UTF-8".into(),
        })
    }
}

/// reqwest errors nest their causes; the CLI wants one line with the root cause.
fn one_line(err: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = err;
    while let Some(next) = source.source() {
        source = next;
    }
    if err.is_timeout() {
        format!("timed out ({source})")
    } else {
        source.to_string()
    }
}

mod bytes_body {
    use super::ClientError;
    use serde::de::DeserializeOwned;

    /// A successful response body, and the `ETag` it came with (unquoted), and the
    /// change-feed revision a list answer reflects.
    pub struct Body {
        pub bytes: Vec<u8>,
        pub etag: Option<String>,
        pub revision: Option<i64>,
    }

    impl Body {
        pub fn json<T: DeserializeOwned>(self, base: &str) -> Result<T, ClientError> {
            serde_json::from_slice(&self.bytes).map_err(|e| ClientError::Protocol {
                url: base.to_owned(),
                reason: format!("the answer is not what the API sends: {e}"),
            })
        }
    }
}

/// The API path of a Secret of `mesh`, or of a GlobalSecret when `mesh` is `None`.
pub fn secret_path(mesh: Option<&str>, name: &str) -> String {
    match mesh {
        Some(mesh) => format!("/meshes/{}/secrets/{}", segment(mesh), segment(name)),
        None => format!("/global-secrets/{}", segment(name)),
    }
}

/// Percent-encodes one path segment (names are RFC 1123, but a user may type anything).
pub fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
