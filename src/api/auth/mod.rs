//! Who is calling, and may they touch secrets: authentication in one place. `tokens.rs`
//! signs and verifies user tokens; the route that issues them is `api/user_token.rs`.
//!
//! As Kuma (reference §3.7): a *direct* loopback request is the admin when
//! `localhost_is_admin` is on; otherwise a `Authorization: Bearer <user token>` names the
//! user; otherwise the caller is anonymous. Secrets and global secrets are admin-only for
//! every verb. A token that does not verify is a 401 on any route, before the handler runs.

pub mod tokens;

use crate::store::feed::{Actor, WriteContext, with_write_context};

use super::AppState;
use super::error::ApiError;
use crate::store::SecretStore;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};

/// The admin user and group.
pub const ADMIN: &str = "mesh-system:admin";
/// Group of every authenticated user.
pub const AUTHENTICATED: &str = "mesh-system:authenticated";
/// The user of a request with no credentials.
pub const ANONYMOUS: &str = "mesh-system:anonymous";
/// Group of the anonymous user.
pub const UNAUTHENTICATED: &str = "mesh-system:unauthenticated";
/// Group of the zones that present a zone token to their global store.
pub const ZONES: &str = "mesh-system:zones";

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User name, e.g. `mesh-system:admin` or `john.doe@example.com`.
    pub name: String,
    /// Groups, e.g. `mesh-system:admin`.
    pub groups: Vec<String>,
    /// The zone a zone token speaks for (with the token's id, to notice a revocation while
    /// a long poll waits); `None` for users.
    pub zone: Option<tokens::ZoneIdentity>,
}

impl User {
    /// The admin, as localhost is.
    pub fn admin() -> Self {
        Self {
            name: ADMIN.into(),
            groups: vec![ADMIN.into(), AUTHENTICATED.into()],
            zone: None,
        }
    }

    /// A caller with no credentials.
    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS.into(),
            groups: vec![UNAUTHENTICATED.into()],
            zone: None,
        }
    }

    /// A zone's control plane, as its zone token names it: `zone:NAME`, in the group
    /// [`ZONES`].
    pub fn zone(identity: tokens::ZoneIdentity) -> Self {
        Self {
            name: format!("zone:{}", identity.zone),
            groups: vec![ZONES.into(), AUTHENTICATED.into()],
            zone: Some(identity),
        }
    }

    /// Whether this caller may read what a zone syncs (Meshes with their CA keys, Secrets,
    /// GlobalSecrets and the change feed): admins, and zones, which are shown only what
    /// Kuma sends to zones ([`crate::federation::sent_to_zones`]).
    pub fn reads_for_zones(&self) -> bool {
        self.is_admin() || self.zone.is_some()
    }

    /// Requires read access to resources of `resource_type` as [`Self::reads_for_zones`]
    /// grants it.
    ///
    /// # Errors
    /// 403 "Access Denied" with Kuma's text.
    pub fn require_reader(&self, resource_type: &str) -> Result<(), ApiError> {
        if self.zone.is_some() {
            return Ok(());
        }
        self.require_admin(resource_type)
    }

    /// Whether this caller is shown the resource `name` of `resource_type`: a zone is not
    /// shown what Kuma never sends to zones.
    pub fn is_shown(&self, resource_type: &str, name: &str) -> bool {
        self.zone.is_none() || crate::federation::sent_to_zones(resource_type, name)
    }

    /// Kuma's static admin-resource access: the admin user or anyone in the admin group.
    pub fn is_admin(&self) -> bool {
        self.name == ADMIN || self.groups.iter().any(|g| g == ADMIN)
    }

    /// Requires admin access to resources of `resource_type`.
    ///
    /// # Errors
    /// 403 "Access Denied" with Kuma's text.
    pub fn require_admin(&self, resource_type: &str) -> Result<(), ApiError> {
        if self.is_admin() {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Access Denied",
            format!(
                "user \"{}/{}\" cannot access the resource of type \"{resource_type}\"",
                self.name,
                self.groups.join(",")
            ),
        ))
    }
}

/// Middleware: works out the [`User`] and stores it in the request's extensions.
pub async fn authenticate<S: SecretStore + Clone + 'static>(
    State(state): State<AppState<S>>,
    mut request: Request,
    next: Next,
) -> Response {
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    // Two Host headers: which one a proxy in front routed on, and which one this server
    // would judge, may differ. HTTP/1.1 says such a request is a 400 (RFC 9112 §3.2).
    if request
        .headers()
        .get_all(axum::http::header::HOST)
        .iter()
        .count()
        > 1
    {
        return ApiError::bad_request("the request has more than one Host header").into_response();
    }
    let host = request_host(&request);
    // A zone token is honoured from anywhere, loopback included: a caller that presents one
    // acts as that zone, with a zone's rights only, and a revoked one is refused.
    let zone_token = bearer_token(request.headers()).filter(|t| tokens::is_zone_token(t));
    let local = zone_token.is_none()
        && state.config.localhost_is_admin
        && is_direct_loopback(remote, host, request.headers(), state.config.tls);
    let user = if let Some(token) = zone_token {
        match tokens::verify_zone_token(&state.store, token).await {
            Ok(identity) => User::zone(identity),
            Err(err) => return err.into_response(),
        }
    } else if local {
        User::admin()
    } else if let Some(token) = bearer_token(request.headers()) {
        match tokens::verify(&state.store, token).await {
            Ok(user) => user,
            Err(err) => return err.into_response(),
        }
    } else {
        User::anonymous()
    };
    // The audit trail's actor: the token's user, or `localhost` for the local admin.
    let actor = Actor {
        name: if local {
            LOCALHOST_ACTOR.to_owned()
        } else {
            user.name.clone()
        },
        groups: user.groups.clone(),
    };
    let request_id = request_id(request.headers());
    request.extensions_mut().insert(user);
    let context = WriteContext {
        actor,
        request_id: Some(request_id.clone()),
    };
    let mut response = with_write_context(context, next.run(request)).await;
    // Answers carry secrets and who may see them: no browser or proxy keeps a copy.
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(axum::http::HeaderValue::from_static("no-store"));
    if let Ok(value) = axum::http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// The actor name of a change made by the local admin (`localhostIsAdmin`).
pub const LOCALHOST_ACTOR: &str = "localhost";

/// The header a request id comes in and goes back in.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's `X-Request-Id` if it is a sane one (1 to 128 of `[A-Za-z0-9._:-]`, so it
/// cannot forge log or audit lines), else a fresh one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map_or_else(new_request_id, str::to_owned)
}

/// A new request id: a UUID (the version 4 layout), unique in this process, from a random
/// per-process key mixed with a counter (multiplying by an odd constant and XOR-ing a key
/// are both one-to-one). A `Uuid::new_v4` per request asked the kernel for randomness each
/// time: 1.6 % of a cached GET's CPU under `perf`. An id names a request in logs and the
/// audit trail; it is no secret.
fn new_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEY: OnceLock<u128> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let key = *KEY.get_or_init(|| uuid::Uuid::new_v4().as_u128());
    let n = u128::from(COUNTER.fetch_add(1, Ordering::Relaxed));
    let mixed = key ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    uuid::Builder::from_random_bytes(mixed.to_be_bytes())
        .into_uuid()
        .to_string()
}

/// The host the client asked for: the `Host` header (HTTP/1.1), or the URI's authority
/// (HTTP/2 carries it in `:authority`, and there is no `Host` header).
fn request_host(request: &Request) -> Option<&str> {
    match request.headers().get(header::HOST) {
        Some(host) => host.to_str().ok(),
        None => request.uri().authority().map(|a| a.as_str()),
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A request straight from this machine: loopback peer, no proxy headers, a loopback Host,
/// and nothing suggesting a browser on another site sent it (Kuma's
/// `LocalhostAuthenticator`). An `Origin` must be the same origin as the `Host` (`tls`: the
/// request came over HTTPS), a port left out meaning the scheme's default, as browsers do.
pub fn is_direct_loopback(
    remote: Option<IpAddr>,
    host: Option<&str>,
    headers: &HeaderMap,
    tls: bool,
) -> bool {
    // On a dual-stack listener (`[::]:PORT`) IPv4 loopback arrives as `::ffff:127.0.0.1`.
    if !remote.is_some_and(|ip| ip.to_canonical().is_loopback()) {
        return false;
    }
    if headers.keys().any(|name| PROXY_HEADERS.contains(name)) {
        return false;
    }
    let Some(host) = host else {
        return false;
    };
    if !is_loopback_host(host) {
        return false;
    }
    match headers
        .get(SEC_FETCH_SITE)
        .map(|v| v.to_str().unwrap_or("invalid"))
    {
        None | Some("same-origin" | "none") => {}
        Some(_) => return false,
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => origin.to_str().is_ok_and(|origin| {
            let (authority, default_port) = match origin.split_once("://") {
                Some(("http", authority)) => (authority, 80),
                Some(("https", authority)) => (authority, 443),
                _ => return false,
            };
            let ours = origin_of(host, if tls { 443 } else { 80 });
            is_loopback_host(authority)
                && ours.is_some()
                && origin_of(authority, default_port) == ours
        }),
    }
}

/// `(host, port)` of an authority, the host lower-cased without brackets and a missing port
/// as `default_port`.
fn origin_of(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        (ip, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(port) => port.parse().ok()?,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Headers that a proxy or a CDN adds: a request carrying any of them came through one, so
/// its loopback peer is the proxy, not the client. Names, not strings: looking 27 strings
/// up in every request's headers parsed each name each time (3 % of a cached GET).
static PROXY_HEADERS: [HeaderName; 27] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("via"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded"),
    HeaderName::from_static("forwarded-for"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("cf-connecting-ipv6"),
    HeaderName::from_static("x-original-forwarded-for"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("client-ip"),
    HeaderName::from_static("fastly-client-ip"),
    HeaderName::from_static("akamai-origin-hop"),
    HeaderName::from_static("x-envoy-external-address"),
    HeaderName::from_static("x-envoy-original-ip"),
    HeaderName::from_static("x-proxyuser-ip"),
    HeaderName::from_static("x-appengine-user-ip"),
    HeaderName::from_static("x-azure-clientip"),
];

/// Where a browser says a request comes from (Fetch Metadata): `same-origin`, `same-site`,
/// `cross-site` or `none` (typed in by the user).
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// `localhost`, `127.x.y.z` or `[::1]`, with an optional port (a `:` must be followed by
/// one: `localhost:` is not a loopback host).
fn is_loopback_host(host: &str) -> bool {
    let port_ok = |port: &str| !port.is_empty() && port.chars().all(|c| c.is_ascii_digit());
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, "")) => ip,
            Some((ip, after)) => match after.strip_prefix(':') {
                Some(port) if port_ok(port) => ip,
                _ => return false,
            },
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port_ok(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn request_ids_are_distinct_version_4_uuids() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(20) {
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 4, "{id}");
        }
    }

    fn direct(remote: Option<IpAddr>, headers: &HeaderMap) -> bool {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        is_direct_loopback(remote, host, headers, false)
    }

    fn direct_tls(remote: Option<IpAddr>, headers: &HeaderMap) -> bool {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        is_direct_loopback(remote, host, headers, true)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    const LOCAL: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn only_direct_loopback_requests_are_local() {
        assert!(direct(LOCAL, &headers(&[("host", "127.0.0.1:5681")])));
        assert!(direct(LOCAL, &headers(&[("host", "localhost:5681")])));
        assert!(direct(
            Some("::1".parse().unwrap()),
            &headers(&[("host", "[::1]:5681")])
        ));
        assert!(!direct(
            Some("10.0.0.1".parse().unwrap()),
            &headers(&[("host", "127.0.0.1:5681")])
        ));
        assert!(!direct(None, &headers(&[("host", "127.0.0.1")])));
        for proxy in &PROXY_HEADERS {
            assert!(!direct(
                LOCAL,
                &headers(&[("host", "127.0.0.1"), (proxy.as_str(), "1.2.3.4")])
            ));
        }
        assert!(!direct(LOCAL, &headers(&[("host", "kuma.example.com")])));
        assert!(!direct(LOCAL, &headers(&[])));
        assert!(!direct(
            LOCAL,
            &headers(&[("host", "127.0.0.1:5681"), ("origin", "https://evil.com")])
        ));
        assert!(direct(
            LOCAL,
            &headers(&[
                ("host", "127.0.0.1:5681"),
                ("origin", "http://127.0.0.1:5681")
            ])
        ));
        assert!(!direct(
            LOCAL,
            &headers(&[("host", "127.0.0.1:5681"), ("sec-fetch-site", "cross-site")])
        ));
    }

    /// Kuma's grant table: the same origin whether or not the default port is spelled out.
    #[test]
    fn a_same_origin_with_the_default_port_spelled_out_or_not_is_local() {
        for (host, origin) in [
            ("localhost:80", "http://localhost"),
            ("localhost", "http://localhost:80"),
            ("127.0.0.1:80", "http://127.0.0.1"),
            ("[::1]:80", "http://[::1]"),
            ("LOCALHOST:5681", "http://localhost:5681"),
        ] {
            assert!(
                direct(LOCAL, &headers(&[("host", host), ("origin", origin)])),
                "{host} {origin}"
            );
        }
        assert!(direct_tls(
            LOCAL,
            &headers(&[("host", "[::1]:443"), ("origin", "https://[::1]")])
        ));
        // Not the same origin: another port, another scheme, another host.
        for (host, origin) in [
            ("localhost:80", "https://localhost"),
            ("localhost:8080", "http://localhost"),
            ("localhost", "http://127.0.0.1"),
            ("localhost", "null"),
        ] {
            assert!(
                !direct(LOCAL, &headers(&[("host", host), ("origin", origin)])),
                "{host} {origin}"
            );
        }
        assert!(!direct_tls(
            LOCAL,
            &headers(&[("host", "[::1]:443"), ("origin", "http://[::1]")])
        ));
    }

    #[test]
    fn ipv4_loopback_on_a_dual_stack_listener_is_local() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(direct(
            Some(mapped),
            &headers(&[("host", "127.0.0.1:5681")])
        ));
        let mapped_remote: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(!direct(
            Some(mapped_remote),
            &headers(&[("host", "127.0.0.1:5681")])
        ));
    }

    #[test]
    fn any_proxy_header_makes_a_request_proxied() {
        for proxy in &PROXY_HEADERS {
            assert!(
                !direct(
                    LOCAL,
                    &headers(&[("host", "127.0.0.1"), (proxy.as_str(), "x")])
                ),
                "{proxy}"
            );
        }
    }

    #[test]
    fn a_host_with_an_empty_or_bad_port_is_not_local() {
        for host in [
            "localhost:",
            "127.0.0.1:",
            "[::1]:",
            "[::1]x",
            "localhost:80a",
            "[::1",
        ] {
            assert!(!direct(LOCAL, &headers(&[("host", host)])), "{host}");
        }
        assert!(direct(LOCAL, &headers(&[("host", "[::1]")])));
        assert!(direct(LOCAL, &headers(&[("host", "localhost")])));
    }

    #[test]
    fn access_denied_names_the_user_and_type() {
        let err = User::anonymous().require_admin("Secret").unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert_eq!(
            err.detail,
            r#"user "mesh-system:anonymous/mesh-system:unauthenticated" cannot access the resource of type "Secret""#
        );
        assert!(User::admin().require_admin("Secret").is_ok());
    }
}
