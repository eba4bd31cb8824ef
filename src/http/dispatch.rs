//! The service every connection is served by. Three routes hit at request rate by machines
//! are answered here directly: `/authz` (a reverse proxy asks it for every API call it passes
//! on), `GET /api/v1/apiKeys` (the API's most frequent call) and `GET /healthz` (load
//! balancers). Everything else goes to the router with its layers (tracing, body limit). The
//! router declares these routes too, with the same code behind them, for the OpenAPI document
//! and for callers that use it as a tower service.
//!
//! Requests for the router have a body deadline (`DeadlineBody`: a stalled body answers 408 and
//! closes the connection) and a declared `Content-Length` above the body limit is answered 413
//! before any of the body is read. The three direct routes read no body: hyper closes a
//! connection whose request body was left unread.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, MatchedPath};
use axum::http::{HeaderValue, Method, Request, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tower::ServiceExt;

use super::error::ApiError;
use super::extract::AppState;
use super::{authz, cloud, health, security_headers};
use crate::telemetry::{self, FastRoute};

#[derive(Clone)]
pub struct Dispatch {
    router: Router,
    state: AppState,
    max_body_bytes: u64,
    body_read_timeout: Duration,
}

impl Dispatch {
    pub fn new(
        router: Router,
        state: AppState,
        max_body_bytes: usize,
        body_read_timeout: Duration,
    ) -> Self {
        Self {
            router,
            state,
            max_body_bytes: max_body_bytes as u64,
            body_read_timeout,
        }
    }

    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Result<Response, Infallible>
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let Some(hot) = telemetry::hot().filter(|_| self.state.metrics.is_some()) else {
            return Ok(self.route(req, peer).await.0);
        };
        let started = telemetry::RequestStart::now();
        let method = telemetry::method_index(req.method());
        let (response, fast) = self.route(req, peer).await;
        match fast {
            Some(route) => hot.request(route, method, response.status(), started),
            None => telemetry::router_request(
                response
                    .extensions()
                    .get::<MatchedPath>()
                    .map(|m| m.as_str()),
                method,
                response.status(),
                started,
            ),
        }
        Ok(response)
    }

    /// The answer, and which fast path gave it (`None`: the router).
    async fn route<B>(&self, req: Request<B>, peer: SocketAddr) -> (Response, Option<FastRoute>)
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let path = req.uri().path();
        if path == "/authz" || path.starts_with("/authz/") {
            let response = authz::decide(&self.state, req.headers(), req.method()).await;
            return (unless_templated(response), Some(FastRoute::Authz));
        }
        if path == "/healthz" && req.method() == Method::GET {
            return (
                unless_templated(health::healthz_response()),
                Some(FastRoute::Healthz),
            );
        }
        if path == "/api/v1/apiKeys" && req.method() == Method::GET {
            let response = cloud::list_keys_direct(&self.state, req.headers(), req.method()).await;
            return (unless_templated(response), Some(FastRoute::ListKeys));
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes) {
            return (closing(ApiError::PayloadTooLarge.into_response()), None);
        }
        let timed_out = Arc::new(AtomicBool::new(false));
        let deadline = Box::pin(tokio::time::sleep(self.body_read_timeout));
        let mut req = req.map(|body| {
            Body::new(DeadlineBody {
                inner: Body::new(body),
                deadline,
                timed_out: timed_out.clone(),
            })
        });
        req.extensions_mut().insert(ConnectInfo(peer));
        let response = match self.router.clone().oneshot(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if timed_out.load(Ordering::Relaxed) {
            // Whatever the handler made of the failed read, the client hears 408.
            return (
                closing(security_headers(ApiError::BodyTimeout.into_response())),
                None,
            );
        }
        (response, None)
    }
}

/// The security headers on a direct route's answer, unless it is a success: those are built
/// from `http::templates`, which hold them already (checking each one again would hash every
/// name once more).
fn unless_templated(response: Response) -> Response {
    if response.status().is_success() {
        response
    } else {
        security_headers(response)
    }
}

/// The connection is closed after this answer (the rest of the body is never read).
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline passes (counted from the request's head, so a
/// trickle of bytes does not extend it).
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body timeout")]
struct BodyTimedOut;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
