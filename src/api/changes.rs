//! The change feed over HTTP (admin only, like secrets themselves):
//!
//! - `GET /_changes?after=R&limit=N&wait=30s&mesh=M&type=T`: the events after revision R,
//!   at once if there are any, else after waiting up to `wait` for one (a long poll);
//!   `{"events": […], "revision": R'}`, R' being the revision to continue after.
//! - `GET /_watch?after=R`: the same feed as server-sent events, one per change, `id:` its
//!   revision; `Last-Event-ID` resumes after a reconnect.
//!
//! Events retention pruned answer 410 Gone with the oldest revision still kept: list again
//! (every list carries its revision in `Kuma-Secrets-Revision`) and follow from there. So
//! does a revision beyond the feed's last (the store was reset below it, as a restore from
//! a backup does).

pub(super) mod doc;

use super::AppState;
use super::auth::tokens::{self, ZONE_REVOCATIONS_SECRET};
use super::error::{ApiError, ApiResult};
use super::extract::Caller;
use super::openapi::Routes;
use crate::federation::sent_to_zones;
use crate::store::feed::{Changes, EventFilter};
use crate::store::{SecretStore, StoreError};
use axum::Json;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::time::Duration;
use tokio::time::Instant;

/// How often a waiting reader looks again when no local write woke it (changes made
/// through another replica, or by an embedding process).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// The longest `wait` a long poll may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The longest a long poll waits here: [`MAX_WAIT`], and well inside the server's request
/// timeout, so a long poll answers with what it has rather than a 503.
fn longest_wait(config: &crate::api::ApiConfig) -> Duration {
    MAX_WAIT.min(config.request_timeout * 9 / 10)
}
/// Events per answer, at most.
const MAX_LIMIT: u32 = 1000;

/// The feed routes.
pub fn router<S: SecretStore + Clone + 'static>() -> Routes<AppState<S>> {
    Routes::new()
        .add::<doc::__path_get_changes, _, _>(get_changes::<S>)
        .add::<doc::__path_watch_changes, _, _>(watch_changes::<S>)
}

/// The feed's query parameters.
struct FeedParams {
    after: i64,
    limit: u32,
    wait: Duration,
    filter: EventFilter,
}

fn bad(reason: impl Into<String>, field: &str) -> ApiError {
    ApiError::invalid(
        "Could not retrieve changes",
        crate::domain::ValidationError::single(field, reason),
    )
}

fn parse_params(query: Option<&str>, longest_wait: Duration) -> ApiResult<FeedParams> {
    let mut params = FeedParams {
        after: 0,
        limit: 100,
        wait: Duration::ZERO,
        filter: EventFilter::default(),
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if value.contains('\0') {
            return Err(bad(crate::domain::NUL_REASON, &key));
        }
        match key.as_ref() {
            "after" => {
                params.after = value
                    .parse()
                    .ok()
                    .filter(|r: &i64| *r >= 0)
                    .ok_or_else(|| bad("must be a revision: a whole number, 0 or more", "after"))?;
            }
            "limit" => {
                params.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(format!("must be between 1 and {MAX_LIMIT}"), "limit"))?;
            }
            "wait" => {
                params.wait = if value == "0" || value.is_empty() {
                    Duration::ZERO
                } else {
                    crate::duration::parse(&value).map_err(|e| bad(e, "wait"))?
                }
                .min(longest_wait);
            }
            "mesh" => params.filter.mesh = Some(value.into_owned()).filter(|m| !m.is_empty()),
            "type" => {
                let kind = value.into_owned();
                if !matches!(
                    kind.as_str(),
                    "Secret" | "GlobalSecret" | "Mesh" | "ExternalService"
                ) {
                    return Err(bad(
                        "must be Secret, GlobalSecret, Mesh or ExternalService",
                        "type",
                    ));
                }
                params.filter.resource_type = Some(kind);
            }
            _ => {}
        }
    }
    Ok(params)
}

/// 410 Gone for a feed that cannot answer from `after`: pruned past it, or reset below it.
fn gone_or(err: StoreError, after: i64) -> ApiError {
    match err {
        StoreError::Gone { oldest } if after.saturating_add(1) >= oldest => ApiError::new(
            StatusCode::GONE,
            "Gone",
            format!(
                "the change feed has no revision {after}: it was reset (the store restored from a backup, or replaced); list again and continue from the list's Kuma-Secrets-Revision"
            ),
        ),
        StoreError::Gone { oldest } => ApiError::new(
            StatusCode::GONE,
            "Gone",
            format!(
                "the change feed starts at revision {oldest}: the events asked for were pruned; list again and continue from the list's Kuma-Secrets-Revision"
            ),
        ),
        other => ApiError::store("Could not retrieve changes", other),
    }
}

/// `GET /_changes`: a page of the feed, waiting up to `wait` for one.
async fn get_changes<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    uri: Uri,
) -> ApiResult<Response> {
    user.require_reader("Secret")?;
    let params = parse_params(uri.query(), longest_wait(&state.config))?;
    // A zone's long poll also tells the global store where that zone is.
    let _polling = user
        .zone
        .as_ref()
        .map(|zone| state.config.zones.polling(&zone.zone, params.after));
    let deadline = Instant::now() + params.wait;
    let mut after = params.after;
    let mut waiter = state.store.change_signal().map(|signal| signal.subscribe());
    loop {
        if let Some(waiter) = &mut waiter {
            waiter.mark_seen();
        }
        let page = state
            .store
            .events_after(after, params.limit, &params.filter)
            .await
            .map_err(|e| gone_or(e, after))?;
        after = page.revision;
        let mut events = page.events;
        if let Some(zone) = &user.zone {
            // A zone token revoked while its long poll waits ends the poll at once.
            if events
                .iter()
                .any(|e| e.resource_type == "GlobalSecret" && e.name == ZONE_REVOCATIONS_SECRET)
                && tokens::zone_token_revoked(&state.store, &zone.jti).await?
            {
                return Err(ApiError::unauthenticated());
            }
            events.retain(|e| sent_to_zones(&e.resource_type, &e.name));
        }
        if !events.is_empty() || Instant::now() >= deadline {
            return Ok(Json(Changes {
                events,
                revision: page.revision,
            })
            .into_response());
        }
        crate::store::watch::wait_for_change(
            waiter.as_mut(),
            POLL_INTERVAL.min(deadline - Instant::now()),
        )
        .await;
    }
}

/// `GET /_watch`: the feed as server-sent events, from `after` or `Last-Event-ID`.
async fn watch_changes<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    user.require_admin("Secret")?;
    let mut params = parse_params(uri.query(), longest_wait(&state.config))?;
    if let Some(last) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        params.after = last.max(0);
    }
    // Fail at once (410, 503) rather than open a stream that ends straight away.
    state
        .store
        .events_after(params.after, 1, &params.filter)
        .await
        .map_err(|e| gone_or(e, params.after))?;
    let events = crate::store::watch::watch(state.store.clone(), params.after, params.filter);
    let stream = futures_util::StreamExt::map(events, |item| {
        Ok::<_, Infallible>(match item {
            Ok(event) => SseEvent::default()
                .id(event.revision.to_string())
                .event("change")
                .json_data(&event)
                .unwrap_or_else(|_| SseEvent::default().comment("unencodable event")),
            Err(err) => SseEvent::default().event("error").data(err.to_string()),
        })
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
