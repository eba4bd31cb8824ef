//! The service every connection is served by. Three routes hit at request rate by machines
//! are answered here directly: `/authz` (a reverse proxy asks it for every API call it passes
//! on), `GET /api/v1/apiKeys` (the API's most frequent call) and `GET /healthz` (load
//! balancers). Everything else goes to the router with its layers (tracing, body limit). The
//! router declares these routes too, with the same code behind them, for the OpenAPI document
//! and for callers that use it as a tower service.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath};
use axum::http::{Method, Request};
use axum::response::Response;
use tower::ServiceExt;

use super::extract::AppState;
use super::{authz, cloud, health, security_headers};
use crate::telemetry::{self, FastRoute};

#[derive(Clone)]
pub struct Dispatch {
    router: Router,
    state: AppState,
}

impl Dispatch {
    pub fn new(router: Router, state: AppState) -> Self {
        Self { router, state }
    }

    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Result<Response, Infallible>
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let Some(hot) = telemetry::hot().filter(|_| self.state.metrics.is_some()) else {
            return Ok(self.route(req, peer).await.0);
        };
        let started = Instant::now();
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
            return (security_headers(response), Some(FastRoute::Authz));
        }
        if path == "/healthz" && req.method() == Method::GET {
            return (
                security_headers(health::healthz_response()),
                Some(FastRoute::Healthz),
            );
        }
        if path == "/api/v1/apiKeys" && req.method() == Method::GET {
            let response = cloud::list_keys_direct(&self.state, req.headers(), req.method()).await;
            return (security_headers(response), Some(FastRoute::ListKeys));
        }
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        match self.router.clone().oneshot(req).await {
            Ok(response) => (response, None),
            Err(never) => match never {},
        }
    }
}
