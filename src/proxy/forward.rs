//! One attempt at the upstream leg: send the rewritten request to one deployment with the real
//! key (or answer from the mock provider), then relay the answer — plain bodies read whole
//! (bounded) to take their usage, streams relayed event by event while the observer reads
//! usage — and settle; or hand the request back for another deployment when that is safe
//! (nothing reached the client and the provider did no billable work).

use super::settle::{Charge, Settlement};
use crate::app::{AppState, ProviderRoute};
use crate::error::{ApiError, Code};
use crate::providers::{self, Api, InboundRequest, MockReply, ProviderKind, StreamObserver};
use crate::routing::Verdict;
use crate::secrets::ProviderKey;
use crate::telemetry::trace;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// What every attempt of a request shares.
pub struct Outbound<'a> {
    /// The API called.
    pub api: Api,
    /// The parsed client request (after max_tokens clamping).
    pub request: &'a InboundRequest,
    /// The client's headers (only the allow-listed ones are forwarded).
    pub client_headers: &'a HeaderMap,
    /// A stream is cut off past this many output tokens (what was reserved for it).
    pub output_limit: Option<u64>,
    /// ... and at the first of these in its output (the binding's stop sequences).
    pub stops: &'a [String],
}

/// Where one attempt goes.
pub struct Target<'a> {
    /// The provider.
    pub route: &'a ProviderRoute,
    /// The key to inject (`None` for the mock provider).
    pub key: Option<Arc<ProviderKey>>,
    /// The upstream model (its tokenizer meters the stream).
    pub upstream_model: &'a str,
    /// Body to send.
    pub body: Bytes,
    /// How long to wait for the response head (the request's deadline may shorten it).
    pub timeout: Duration,
    /// The request's first attempt: only its time is Tollgate's overhead (a later one's
    /// includes earlier attempts and backoff).
    pub first: bool,
}

/// How an attempt ended.
pub enum Attempt {
    /// The answer (or a failure) for the client; the settlement is finished or travels with
    /// the streamed body.
    Done(Result<Response, ApiError>, Verdict, &'static str),
    /// The deployment failed before anything reached the client and before the provider did
    /// work it bills: the request may go elsewhere. The settlement comes back unfinished.
    Failover(Box<Failover>),
}

/// A failed attempt handed back.
pub struct Failover {
    /// The request's settlement, unfinished.
    pub settle: Settlement,
    /// What the client is told if nothing else serves.
    pub error: ApiError,
    /// What it shows of the deployment.
    pub verdict: Verdict,
    /// The provider's own 429, relayed if nothing else serves.
    pub relay: Option<Response>,
    /// The metric's outcome label.
    pub outcome: &'static str,
    /// May a later round try this deployment again (not after it refused our key or
    /// redirected: that does not pass within a request)?
    pub again: bool,
}

fn failover(
    settle: Settlement,
    error: ApiError,
    verdict: Verdict,
    relay: Option<Response>,
) -> Attempt {
    failover_once(settle, error, verdict, relay, true)
}

fn failover_once(
    settle: Settlement,
    error: ApiError,
    verdict: Verdict,
    relay: Option<Response>,
    again: bool,
) -> Attempt {
    let outcome = match verdict {
        Verdict::Throttled(_) => "throttled",
        _ => "failed",
    };
    Attempt::Failover(Box::new(Failover {
        settle,
        error,
        verdict,
        relay,
        outcome,
        again,
    }))
}

/// A send that got no response head: a connection that never carried the request can go
/// elsewhere; one that may have (a timeout, a break after sending) is finished here and
/// charged its reservation, since the provider may be doing, and billing, the work.
fn unsent(f: SendFailed, mut settle: Settlement) -> Attempt {
    if f.maybe_served {
        settle.finish(f.error.code.status().as_u16(), f.charge());
        Attempt::Done(Err(f.error), Verdict::Failed, "timeout")
    } else {
        failover(settle, f.error, Verdict::Failed, None)
    }
}

/// Send to `target` and relay, or hand the request back ([`Attempt::Failover`]).
pub async fn attempt(
    state: &AppState,
    out: &Outbound<'_>,
    target: Target<'_>,
    mut settle: Settlement,
) -> Attempt {
    if target.route.kind == ProviderKind::Mock {
        return Attempt::Done(
            Ok(mock(state, out, &target, settle)),
            Verdict::Healthy,
            "served",
        );
    }
    let mut target = target;
    // Time spent waiting on the provider, so the rest is Tollgate's own (`overhead`).
    let mut upstream = std::time::Duration::ZERO;
    let sent_at = std::time::Instant::now();
    // The provider call's span lives until its body is read (or, streaming, relayed).
    let (mut status, mut headers, mut body, mut span) = match send(state, out, &target).await {
        Ok(r) => r,
        Err(f) => return unsent(f, settle),
    };
    // A rotation candidate the provider refused or failed: nothing has reached the client, so
    // the current version serves the request instead (once). The canary still counts the
    // failure, from the attempt's own row.
    if candidate_failed(status)
        && let Some(k) = &target.key
        && let Some(current) = state.keys.fallback_for(k)
    {
        if matches!(status.as_u16(), 401 | 403) && state.keys.quarantine(k) {
            tracing::error!(provider = %target.route.id, provider_key = %k.id, version = %k.version, status = status.as_u16(),
                "provider rejected the rotation candidate; it no longer serves here and the canary will roll it back");
        }
        settle.failed_attempt(status.as_u16(), &k.version, &current.version);
        target.key = Some(current);
        upstream += sent_at.elapsed();
        let sent_at = std::time::Instant::now();
        (status, headers, body, span) = match send(state, out, &target).await {
            Ok(r) => r,
            Err(f) => return unsent(f, settle),
        };
        upstream += sent_at.elapsed();
    } else {
        upstream += sent_at.elapsed();
    }
    if target.first {
        state
            .requests
            .overhead(out.api.path(), settle.elapsed().saturating_sub(upstream));
    }
    if !status.is_success() {
        return upstream_failure(state, &target, status, &headers, body, settle).await;
    }
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if out.request.stream() && is_sse {
        let mut observer = StreamObserver::new(out.api, out.request.strip_usage_chunk());
        if let Some(limit) = out.output_limit {
            observer = observer
                .with_output_limit(limit, target.upstream_model)
                .with_stops(out.stops);
        }
        return Attempt::Done(
            Ok(stream_response(
                status,
                byte_stream(body, span),
                observer,
                settle,
                state.upstream.idle_timeout,
            )),
            Verdict::Healthy,
            "served",
        );
    }
    let bytes = match read_bounded(
        body,
        state.limits.max_response_bytes,
        state.upstream.idle_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            settle.finish(e.code.status().as_u16(), Charge::WorstCase);
            return Attempt::Done(Err(e), Verdict::Failed, "timeout");
        }
    };
    let charge = providers::usage_from_body(out.api, &bytes).map_or_else(
        || {
            tracing::warn!(api = ?out.api, "upstream response without usage; charging the reserved worst case");
            Charge::WorstCase
        },
        Charge::Usage,
    );
    settle.finish(status.as_u16(), charge);
    Attempt::Done(Ok(json_response(status, bytes)), Verdict::Healthy, "served")
}

/// A provider call that got no response head.
struct SendFailed {
    error: ApiError,
    /// The request may have reached the provider (it timed out or broke after it was sent),
    /// which may then have done, and billed, the work.
    maybe_served: bool,
}

impl SendFailed {
    /// What it costs: nothing when the provider never got the request; otherwise the
    /// reservation, since the provider may bill it and Tollgate cannot tell how much.
    fn charge(&self) -> Charge {
        if self.maybe_served {
            Charge::WorstCase
        } else {
            Charge::Nothing
        }
    }
}

async fn send(
    state: &AppState,
    out: &Outbound<'_>,
    target: &Target<'_>,
) -> Result<(StatusCode, HeaderMap, Incoming, tracing::Span), SendFailed> {
    let uri = target
        .route
        .endpoint(out.api)
        .ok_or_else(|| SendFailed {
            error: ApiError::new(Code::NoProviderKey, "provider has no base URL"),
            maybe_served: false,
        })?
        .clone();
    let mut req = http::Request::new(Full::new(target.body.clone()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    for name in providers::forwardable_headers(out.api.family()) {
        if let Some(v) = out.client_headers.get(name) {
            headers.insert(name.clone(), v.clone());
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(k) = &target.key {
        providers::apply_auth(target.route.kind, headers, &k.secret);
    }
    let host = req.uri().host().unwrap_or("-").to_owned();
    let span = trace::client_span(
        &target.route.id,
        target.upstream_model,
        &host,
        req.headers_mut(),
    );
    let sent = state.upstream_client.send(req);
    let sent =
        tracing::Instrument::instrument(tokio::time::timeout(target.timeout, sent), span.clone());
    let resp = match sent.await {
        Err(_) => {
            trace::finish_client(&span, 504);
            state.requests.upstream_error(&target.route.id, 504);
            return Err(SendFailed {
                error: timeout_error(target),
                maybe_served: true,
            });
        }
        Ok(Err(e)) => {
            trace::finish_client(&span, 502);
            tracing::warn!(provider = %target.route.id, error = %e, "upstream request failed");
            state.requests.upstream_error(&target.route.id, 502);
            return Err(SendFailed {
                error: ApiError::new(
                    Code::UpstreamError,
                    format!("could not reach provider {}: {e}", target.route.id),
                ),
                maybe_served: matches!(e, super::client::SendError::Request),
            });
        }
        Ok(Ok(r)) => r,
    };
    let (parts, body) = resp.into_parts();
    trace::finish_client(&span, parts.status.as_u16());
    if !parts.status.is_success() {
        state
            .requests
            .upstream_error(&target.route.id, parts.status.as_u16());
    }
    Ok((parts.status, parts.headers, body, span))
}

fn timeout_error(target: &Target<'_>) -> ApiError {
    ApiError::new(
        Code::UpstreamTimeout,
        format!("provider {} did not answer in time", target.route.id),
    )
}

/// Statuses that blame the key version rather than the request (canary judgement).
fn candidate_failed(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403) || status.is_server_error()
}

/// An upstream body as a stream of data chunks (trailers dropped), for the SSE relay.
fn byte_stream(body: Incoming, span: tracing::Span) -> ByteStream {
    Box::pin(BodyDataStream::new(body).map(move |r| {
        let _span = &span;
        r.map_err(|_| "response body failed".to_owned())
    }))
}

async fn upstream_failure(
    state: &AppState,
    target: &Target<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    body: Incoming,
    mut settle: Settlement,
) -> Attempt {
    let provider = &target.route.id;
    let key_id = target.key.as_ref().map_or("-", |k| k.id.as_str());
    match status.as_u16() {
        401 | 403 => {
            // The provider refused *our* key: never pass its message (it may echo the key).
            // The key leaves service until the store holds a new version of it. Another
            // deployment has keys of its own; the deployment itself answered.
            if let Some(k) = &target.key
                && state.keys.quarantine(k)
            {
                tracing::error!(provider = %provider, provider_key = key_id, version = %k.version, status = status.as_u16(),
                    "provider rejected Tollgate's key; key quarantined until the secret store has a new version");
            }
            let e = ApiError::new(
                Code::UpstreamError,
                format!(
                    "provider {provider} rejected Tollgate's provider key; operators have been alerted"
                ),
            );
            failover_once(settle, e, Verdict::Healthy, None, false)
        }
        s if s >= 500 => failover(
            settle,
            ApiError::new(
                Code::UpstreamError,
                format!("provider {provider} failed with status {s}"),
            ),
            Verdict::Failed,
            None,
        ),
        // A redirect is never followed: the provider key would go with it.
        s if s < 400 => failover_once(
            settle,
            ApiError::new(
                Code::UpstreamError,
                format!(
                    "provider {provider} answered with status {s} instead of a result; redirects are not followed"
                ),
            ),
            Verdict::Failed,
            None,
            false,
        ),
        s => {
            // The provider's own verdict on the request (400, 404, 422, 429): relayed as is
            // — a 429 only if no other deployment serves.
            let bytes = read_bounded(body, 1024 * 1024, state.upstream.idle_timeout)
                .await
                .unwrap_or_default();
            let bytes = match &target.key {
                Some(k) => without_secret(bytes, secrecy::ExposeSecret::expose_secret(&k.secret)),
                None => bytes,
            };
            let mut resp = json_response(status, bytes);
            let retry_after = headers.get(header::RETRY_AFTER);
            if let Some(ra) = retry_after {
                resp.headers_mut().insert(header::RETRY_AFTER, ra.clone());
            }
            if s == 429 {
                // A pause the provider asked for; without one the deployment counts as
                // failing (a key that is over its limit for an unknown time).
                let pause = retry_after
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let e = ApiError::new(
                    Code::RateLimitExceeded,
                    format!("provider {provider} is rate limiting this model"),
                );
                let verdict = pause.map_or(Verdict::Failed, Verdict::Throttled);
                return failover(settle, e, verdict, Some(resp));
            }
            settle.finish(status.as_u16(), Charge::Nothing);
            Attempt::Done(Ok(resp), Verdict::Healthy, "client_error")
        }
    }
}

/// `body` with every occurrence of `secret` replaced: a provider's error message may quote
/// the key it was sent, and the caller must never see it.
fn without_secret(body: Bytes, secret: &str) -> Bytes {
    let needle = secret.as_bytes();
    if needle.len() < 8 || memchr::memmem::find(&body, needle).is_none() {
        return body;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut rest: &[u8] = &body;
    while let Some(i) = memchr::memmem::find(rest, needle) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(b"[redacted]");
        rest = &rest[i + needle.len()..];
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

/// Read a whole body, at most `limit` bytes, each chunk within `idle`. A body that arrives
/// in one chunk (the common case for a JSON answer) is returned without a copy.
async fn read_bounded(mut body: Incoming, limit: usize, idle: Duration) -> Result<Bytes, ApiError> {
    let mut first: Option<Bytes> = None;
    let mut buf = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    Code::UpstreamTimeout,
                    "provider stopped sending its response",
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError::new(
                    Code::UpstreamError,
                    "provider response failed: response body failed",
                ));
            }
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        let held = first.as_ref().map_or(0, Bytes::len) + buf.len();
        if held + chunk.len() > limit {
            return Err(ApiError::new(
                Code::UpstreamError,
                "provider response exceeds the size limit",
            ));
        }
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            None => buf.extend_from_slice(&chunk),
            Some(f) => {
                buf.reserve(f.len() + chunk.len());
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(buf)))
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

struct Relay {
    upstream: ByteStream,
    observer: StreamObserver,
    settle: Settlement,
    idle: Duration,
    done: bool,
}

/// Tokens a provider may still produce between the last event Tollgate read and noticing
/// that the connection was dropped; charged on top of what was counted.
const DISCONNECT_MARGIN: u64 = 16;

impl Drop for Relay {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The client went away mid-stream. Dropping the upstream body hangs up on the
        // provider; charge what it produced as far as the meter saw, plus the few tokens it
        // may have generated meanwhile. Without a meter, the settlement's own drop charges
        // the whole reservation.
        if self.observer.is_metered() {
            let output = self.observer.output_counted() + DISCONNECT_MARGIN;
            self.settle.finish(
                499,
                Charge::Cut {
                    reported: self.observer.usage(),
                    output,
                },
            );
        }
    }
}

fn stream_response(
    status: StatusCode,
    upstream: ByteStream,
    observer: StreamObserver,
    settle: Settlement,
    idle: Duration,
) -> Response {
    let relay = Relay {
        upstream,
        observer,
        settle,
        idle,
        done: false,
    };
    let s = futures_util::stream::unfold(relay, |mut r| async move {
        if r.done {
            return None;
        }
        loop {
            let (status, next) = match tokio::time::timeout(r.idle, r.upstream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    let out = r.observer.feed(&chunk);
                    if r.observer.is_cut() {
                        // Past its reservation: end it here (dropping the upstream body hangs
                        // up on the provider) and charge what was produced.
                        r.done = true;
                        tracing::warn!(
                            output_tokens = r.observer.output_counted(),
                            "stream went past its reserved output; cut off"
                        );
                        r.settle.finish(
                            200,
                            Charge::Cut {
                                reported: r.observer.usage(),
                                output: r.observer.output_counted(),
                            },
                        );
                        return Some((Ok(out), r));
                    }
                    if out.is_empty() {
                        continue;
                    }
                    return Some((Ok::<Bytes, std::io::Error>(out), r));
                }
                Ok(None) => (200, "end"),
                Ok(Some(Err(_))) => (502, "upstream stream failed"),
                Err(_) => (504, "upstream stream stalled"),
            };
            r.done = true;
            let rest = r.observer.finish();
            let charge = match (r.observer.usage(), r.observer.is_cut()) {
                (reported, true) => Charge::Cut {
                    reported,
                    output: r.observer.output_counted(),
                },
                (Some(u), false) => Charge::Usage(u),
                (None, false) => Charge::WorstCase,
            };
            if status != 200 {
                tracing::warn!(reason = next, "stream ended early");
            }
            r.settle.finish(status, charge);
            return (!rest.is_empty()).then(|| (Ok(rest), r));
        }
    });
    let mut resp = Response::new(Body::from_stream(s));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    resp
}

fn mock(
    state: &AppState,
    out: &Outbound<'_>,
    target: &Target<'_>,
    mut settle: Settlement,
) -> Response {
    // The mock answers what a real provider would receive: the rewritten upstream body.
    let upstream_req = match providers::parse_request(out.api, target.body.clone()) {
        Ok(r) => r,
        Err(_) => {
            settle.finish(500, Charge::Nothing);
            return json_response(StatusCode::INTERNAL_SERVER_ERROR, Bytes::from_static(b"{}"));
        }
    };
    let upstream_model = upstream_req.model().to_owned();
    match providers::mock::mock_reply(&upstream_req, &upstream_model) {
        MockReply::Json(body) => {
            let charge =
                providers::usage_from_body(out.api, &body).map_or(Charge::WorstCase, Charge::Usage);
            settle.finish(200, charge);
            json_response(StatusCode::OK, body)
        }
        MockReply::Sse(events) => {
            let upstream: ByteStream =
                Box::pin(futures_util::stream::iter(events.into_iter().map(Ok)));
            let observer = StreamObserver::new(out.api, out.request.strip_usage_chunk());
            stream_response(
                StatusCode::OK,
                upstream,
                observer,
                settle,
                state.upstream.idle_timeout,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_key_is_redacted_from_a_relayed_error() {
        let key = "sk-live-0123456789abcdef";
        let body = Bytes::from(format!(
            "{{\"error\":{{\"message\":\"bad key {key}, really {key}!\"}}}}"
        ));
        let out = without_secret(body, key);
        assert_eq!(
            &out[..],
            br#"{"error":{"message":"bad key [redacted], really [redacted]!"}}"#
        );
        let clean = Bytes::from_static(b"{\"error\":{\"message\":\"rate limited\"}}");
        assert_eq!(without_secret(clean.clone(), key), clean);
    }
}
