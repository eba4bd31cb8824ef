//! Prometheus metrics through the `metrics` facade and its Prometheus exporter.
//!
//! One registry per process (the facade's global recorder), installed by the first
//! [`App`](crate::App) built with metrics on. Counters and histograms touched by every
//! request are registered once ([`Hot`]) and reached through a `OnceLock`, so the fast paths
//! pay one atomic load when metrics are off; when on, their counts are added to per thread and
//! summed into the series at each scrape, and their latencies go to the exporter's
//! histograms. The rest use the facade's macros. Every label value comes from a fixed set in this file or from a
//! route template: never a key, session id, login name, client address or org id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use metrics::{Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::service::Services;
use crate::service::sessions::{ApiPrincipal, Denial};
use crate::store::StoreResult;

/// Seconds; from a cached answer (tens of microseconds) to a database under strain.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Histogram samples wait in the exporter's lock-free buffers (16 bytes each, in fresh memory)
/// until drained into bucket counts. Draining often keeps that buffer small enough to stay in
/// the CPU's cache (about 100 KB at 70,000 requests a second, against megabytes when drained
/// every 5 s); measured side by side, about a point of throughput (BENCHMARKS §17). A drain
/// of every histogram takes tens of microseconds.
const UPKEEP_INTERVAL: Duration = Duration::from_millis(100);

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
static HOT: OnceLock<Hot> = OnceLock::new();

/// Where `/metrics` is served, and for the main listener the bearer token's hash.
pub struct Exposition {
    handle: PrometheusHandle,
    token_hash: Option<[u8; 32]>,
}

impl Exposition {
    /// Installs the process's recorder (once) and describes every metric.
    pub fn new(token: Option<&str>) -> anyhow::Result<Arc<Self>> {
        let handle = install().map_err(|e| anyhow::anyhow!("cannot install metrics: {e}"))?;
        Ok(Arc::new(Exposition {
            handle,
            token_hash: token.map(|t| Sha256::digest(t.as_bytes()).into()),
        }))
    }

    /// Whether `Authorization: Bearer <token>` carries the metrics token (compared as
    /// SHA-256 digests in constant time, so neither its length nor its bytes leak by timing).
    pub fn token_accepted(&self, authorization: Option<&str>) -> bool {
        let (Some(expected), Some(presented)) = (
            self.token_hash.as_ref(),
            authorization.and_then(|v| v.strip_prefix("Bearer ")),
        ) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        digest.ct_eq(expected).into()
    }

    /// The text exposition, after the gauges read at scrape time are set.
    pub async fn render(&self, services: &Services) -> String {
        scrape_gauges(services).await;
        if let Some(hot) = HOT.get() {
            hot.publish();
        }
        self.handle.render()
    }
}

fn install() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
            let _ = HOT.set(Hot::register());
            // Calibrates quanta's clock now rather than in the first request.
            let _ = RequestStart::now();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .clone()
}

/// When a request's latency starts: quanta's clock reads the TSC where it is invariant (10 ns
/// a read on this VM against the OS clock's 23, twice per request) and falls back to the OS
/// clock elsewhere. The exporter stamps every histogram sample with the same clock.
pub type RequestStart = quanta::Instant;

/// The pre-registered series of the fast paths, once metrics are on.
pub fn hot() -> Option<&'static Hot> {
    HOT.get()
}

// ------------------------------------------------------------------ label sets

pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

pub fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_index(s: StatusCode) -> usize {
    (usize::from(s.as_u16() / 100)).clamp(1, 5) - 1
}

/// Decisions on an API call or an `/authz` sub-request: allowed, each refusal's code, or a
/// server error.
const OUTCOMES: [&str; 8] = [
    "ALLOWED",
    "SESSION_NOT_VALID",
    "NO_API_SUBSCRIPTION",
    "SUBSCRIPTION_EXPIRED",
    "NOT_AUTHORIZED",
    "RATE_LIMIT_EXCEEDED",
    "API_KEY_DISABLED",
    "INTERNAL_ERROR",
];
const RATE_LIMITED: usize = 5;

fn outcome_index(decision: Option<&StoreResult<Result<ApiPrincipal, Denial>>>) -> usize {
    match decision {
        None => 1,
        Some(Ok(Ok(_))) => 0,
        Some(Ok(Err(d))) => match d {
            Denial::SessionNotValid => 1,
            Denial::NoApiSubscription => 2,
            Denial::SubscriptionExpired => 3,
            Denial::NotAuthorized => 4,
            Denial::RateLimited(_) => RATE_LIMITED,
            Denial::KeyDisabled(_) => 6,
        },
        Some(Err(_)) => 7,
    }
}

/// The routes answered in `http::dispatch` without the router.
#[derive(Clone, Copy)]
pub enum FastRoute {
    Authz = 0,
    ListKeys = 1,
    Healthz = 2,
}
const FAST_ROUTES: [&str; 3] = ["/authz", "/api/v1/apiKeys", "/healthz"];

/// Which caller asked for a decision.
#[derive(Clone, Copy)]
pub enum DecisionSurface {
    Api = 0,
    Authz = 1,
}
const DECISION_SURFACES: [&str; 2] = ["api", "authz"];

#[derive(Clone, Copy)]
pub enum CacheMap {
    Session = 0,
    Org = 1,
    KeyList = 2,
}
const CACHE_MAPS: [&str; 3] = ["session", "org", "key_list"];

#[derive(Clone, Copy)]
pub enum LoginSurface {
    Api,
    Console,
    Provider,
}

#[derive(Clone, Copy)]
pub enum LoginOutcome {
    Success,
    Failure,
    Throttled,
    Locked,
}

impl LoginSurface {
    const ALL: [LoginSurface; 3] = [Self::Api, Self::Console, Self::Provider];
    fn label(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Console => "console",
            Self::Provider => "provider",
        }
    }
}

impl LoginOutcome {
    const ALL: [LoginOutcome; 4] = [Self::Success, Self::Failure, Self::Throttled, Self::Locked];
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Throttled => "throttled",
            Self::Locked => "locked",
        }
    }
}

/// Changes to an org's key, by what changed and who changed it.
#[derive(Clone, Copy)]
pub enum KeyChangeKind {
    Provision,
    Add,
    Edit,
    Regenerate,
    Delete,
    Disable,
    Enable,
}

impl KeyChangeKind {
    fn label(self) -> &'static str {
        match self {
            Self::Provision => "provision",
            Self::Add => "add",
            Self::Edit => "edit",
            Self::Regenerate => "regenerate",
            Self::Delete => "delete",
            Self::Disable => "disable",
            Self::Enable => "enable",
        }
    }
}

/// The combinations that can happen, registered up front so they are exported at 0.
const KEY_CHANGES: [(KeyChangeKind, &str); 8] = [
    (KeyChangeKind::Add, "admin"),
    (KeyChangeKind::Edit, "admin"),
    (KeyChangeKind::Regenerate, "admin"),
    (KeyChangeKind::Delete, "admin"),
    (KeyChangeKind::Provision, "provider"),
    (KeyChangeKind::Disable, "provider"),
    (KeyChangeKind::Enable, "provider"),
    (KeyChangeKind::Disable, "system"),
];

fn actor_label(actor: &crate::domain::audit::Actor) -> &'static str {
    use crate::domain::audit::Actor;
    match actor {
        Actor::Provider { .. } => "provider",
        Actor::Admin { .. } => "admin",
        Actor::System => "system",
        Actor::Anonymous { .. } => "anonymous",
    }
}

// ------------------------------------------------------------------ the hot series

/// Counts added to on every request, kept per thread: an add is a plain load and store on the
/// thread's own slots, where a shared series takes a locked instruction (two, with the
/// exporter's generation count) and an indirect call, and on many cores a cache line passed
/// between them. [`Hot::publish`] sums them into their series when `/metrics` is rendered
/// (`Counter::absolute` only ever raises a count, so two scrapes at once cannot lower one;
/// a thread's slots outlive it and pass to the next thread given its id).
struct PerThread {
    slots: thread_local::ThreadLocal<[AtomicU64; HOT_SLOTS]>,
}

impl PerThread {
    #[inline]
    fn add(&self, slot: usize) {
        let c = &self
            .slots
            .get_or(|| std::array::from_fn(|_| AtomicU64::new(0)))[slot];
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    fn totals(&self) -> [u64; HOT_SLOTS] {
        let mut totals = [0; HOT_SLOTS];
        for thread in self.slots.iter() {
            for (total, c) in totals.iter_mut().zip(thread) {
                *total += c.load(Ordering::Relaxed);
            }
        }
        totals
    }
}

/// The per-thread slots: requests by fast route, method and status class, then decisions by
/// surface and outcome, rate-limit refusals by surface, cache look-ups by map and result.
const REQUEST_SLOTS: usize = FAST_ROUTES.len() * METHODS.len() * STATUS_CLASSES.len();
const DECISION_SLOTS: usize = DECISION_SURFACES.len() * OUTCOMES.len();
const REFUSAL_SLOTS: usize = DECISION_SURFACES.len();
const CACHE_SLOTS: usize = CACHE_MAPS.len() * 2;
const HOT_SLOTS: usize = REQUEST_SLOTS + DECISION_SLOTS + REFUSAL_SLOTS + CACHE_SLOTS;

fn request_slot(route: FastRoute, method: usize, status: usize) -> usize {
    (route as usize * METHODS.len() + method) * STATUS_CLASSES.len() + status
}

fn decision_slot(surface: DecisionSurface, outcome: usize) -> usize {
    REQUEST_SLOTS + surface as usize * OUTCOMES.len() + outcome
}

fn refusal_slot(surface: DecisionSurface) -> usize {
    REQUEST_SLOTS + DECISION_SLOTS + surface as usize
}

fn cache_slot(map: CacheMap, hit: bool) -> usize {
    REQUEST_SLOTS + DECISION_SLOTS + REFUSAL_SLOTS + map as usize * 2 + usize::from(!hit)
}

pub struct Hot {
    counts: PerThread,
    /// The series of each slot. Those of requests are registered on first publication (most
    /// combinations never happen); the others at start, so they are exported at 0.
    series: [OnceLock<Counter>; HOT_SLOTS],
    /// By fast route, then method.
    latency: [[OnceLock<Histogram>; METHODS.len()]; FAST_ROUTES.len()],
}

impl Hot {
    fn register() -> Hot {
        let series: [OnceLock<Counter>; HOT_SLOTS] = std::array::from_fn(|_| OnceLock::new());
        for surface in [DecisionSurface::Api, DecisionSurface::Authz] {
            let label = DECISION_SURFACES[surface as usize];
            for (o, outcome) in OUTCOMES.into_iter().enumerate() {
                let _ = series[decision_slot(surface, o)]
                    .set(counter!(DECISIONS, "surface" => label, "outcome" => outcome));
            }
            let _ = series[refusal_slot(surface)]
                .set(counter!(RATE_LIMIT_REFUSALS, "surface" => label));
        }
        for map in [CacheMap::Session, CacheMap::Org, CacheMap::KeyList] {
            for hit in [true, false] {
                let _ = series[cache_slot(map, hit)].set(counter!(CACHE_LOOKUPS,
                    "map" => CACHE_MAPS[map as usize], "result" => if hit { "hit" } else { "miss" }));
            }
        }
        for s in LoginSurface::ALL {
            for o in LoginOutcome::ALL {
                counter!(LOGINS, "surface" => s.label(), "outcome" => o.label()).absolute(0);
            }
        }
        for (kind, actor) in KEY_CHANGES {
            counter!(KEY_CHANGES_TOTAL, "kind" => kind.label(), "actor" => actor).absolute(0);
        }
        counter!(THRESHOLD_TRIPS).absolute(0);
        for o in BearerFailure::ALL {
            counter!(BEARER_FAILURES, "outcome" => o.label()).absolute(0);
        }
        for store in RATE_LIMIT_STORES {
            counter!(RATE_LIMIT_FALLBACKS, "store" => store).absolute(0);
            for result in ["granted", "spent"] {
                counter!(RATE_LIMIT_CLAIMS, "store" => store, "result" => result).absolute(0);
            }
        }
        counter!(FLUSH_FAILURES).absolute(0);
        for kind in ["unavailable", "other"] {
            counter!(DB_ERRORS, "kind" => kind).absolute(0);
        }
        for reason in [
            crate::store::sql::RetryReason::Serialization,
            crate::store::sql::RetryReason::Deadlock,
        ] {
            for outcome in ["retried", "exhausted"] {
                counter!(TX_RETRIES, "reason" => retry_label(reason), "outcome" => outcome)
                    .absolute(0);
            }
        }
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Hot {
            counts: PerThread {
                slots: thread_local::ThreadLocal::new(),
            },
            series,
            latency: Default::default(),
        }
    }

    /// Sums the per-thread counts into their series.
    fn publish(&self) {
        let totals = self.counts.totals();
        for route in [FastRoute::Authz, FastRoute::ListKeys, FastRoute::Healthz] {
            for (method, method_label) in METHODS.into_iter().enumerate() {
                for (status, status_label) in STATUS_CLASSES.into_iter().enumerate() {
                    let slot = request_slot(route, method, status);
                    if totals[slot] > 0 {
                        self.series[slot]
                            .get_or_init(|| {
                                counter!(HTTP_REQUESTS, "route" => FAST_ROUTES[route as usize],
                                    "method" => method_label, "status" => status_label)
                            })
                            .absolute(totals[slot]);
                    }
                }
            }
        }
        for (series, total) in self.series[REQUEST_SLOTS..]
            .iter()
            .zip(&totals[REQUEST_SLOTS..])
        {
            if let Some(counter) = series.get() {
                counter.absolute(*total);
            }
        }
    }

    /// One request answered on a fast path.
    pub fn request(
        &self,
        route: FastRoute,
        method: usize,
        status: StatusCode,
        started: RequestStart,
    ) {
        let status = status_index(status);
        self.counts.add(request_slot(route, method, status));
        self.latency[route as usize][method]
            .get_or_init(|| histogram_for(FAST_ROUTES[route as usize].into(), method))
            .record(started.elapsed().as_secs_f64());
    }

    pub fn decision(
        &self,
        surface: DecisionSurface,
        decision: Option<&StoreResult<Result<ApiPrincipal, Denial>>>,
    ) {
        let outcome = outcome_index(decision);
        self.counts.add(decision_slot(surface, outcome));
        if outcome == RATE_LIMITED {
            self.counts.add(refusal_slot(surface));
        }
    }

    pub fn cache_lookup(&self, map: CacheMap, hit: bool) {
        self.counts.add(cache_slot(map, hit));
    }
}

fn histogram_for(route: metrics::SharedString, method: usize) -> Histogram {
    metrics::histogram!(HTTP_DURATION, "route" => route, "method" => METHODS[method])
}

/// A request the router answered; `route` is its template (`None`: no route matched).
pub fn router_request(
    route: Option<&str>,
    method: usize,
    status: StatusCode,
    started: RequestStart,
) {
    let route: metrics::SharedString = match route {
        Some(r) => r.to_owned().into(),
        None => "unmatched".into(),
    };
    counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => METHODS[method],
        "status" => STATUS_CLASSES[status_index(status)])
    .increment(1);
    histogram_for(route, method).record(started.elapsed().as_secs_f64());
}

pub fn login(surface: LoginSurface, outcome: LoginOutcome) {
    if hot().is_some() {
        counter!(LOGINS, "surface" => surface.label(), "outcome" => outcome.label()).increment(1);
    }
}

pub fn key_change(kind: KeyChangeKind, actor: &crate::domain::audit::Actor) {
    if hot().is_some() {
        counter!(KEY_CHANGES_TOTAL, "kind" => kind.label(), "actor" => actor_label(actor))
            .increment(1);
    }
}

/// R9: a call went over its org's threshold and the key was disabled.
pub fn threshold_trip() {
    if hot().is_some() {
        counter!(THRESHOLD_TRIPS).increment(1);
    }
}

pub fn meter_flush(started: Instant, ok: bool) {
    if hot().is_some() {
        metrics::histogram!(FLUSH_DURATION).record(started.elapsed().as_secs_f64());
        if !ok {
            counter!(FLUSH_FAILURES).increment(1);
        }
    }
}

/// A database error; `unavailable` when the database could not be reached or asked for a retry.
pub fn db_error(unavailable: bool) {
    if hot().is_some() {
        let kind = if unavailable { "unavailable" } else { "other" };
        counter!(DB_ERRORS, "kind" => kind).increment(1);
    }
}

/// A write transaction PostgreSQL aborted with 40001/40P01: run again (`retried`), or given
/// up after the last attempt (`exhausted`, answered 503).
pub fn tx_retry(reason: crate::store::sql::RetryReason, retried: bool) {
    if hot().is_some() {
        counter!(TX_RETRIES, "reason" => retry_label(reason),
            "outcome" => if retried { "retried" } else { "exhausted" })
        .increment(1);
    }
}

fn retry_label(reason: crate::store::sql::RetryReason) -> &'static str {
    match reason {
        crate::store::sql::RetryReason::Serialization => "serialization",
        crate::store::sql::RetryReason::Deadlock => "deadlock",
    }
}

/// A claim on the shared rate-limit store answered: units granted, or the window spent.
pub fn rate_limit_claim(store: &'static str, granted: bool) {
    if hot().is_some() {
        let result = if granted { "granted" } else { "spent" };
        counter!(RATE_LIMIT_CLAIMS, "store" => store_label(store), "result" => result).increment(1);
    }
}

/// A window of a rule decided by the local fallback: the shared rate-limit store did not
/// answer.
pub fn rate_limit_fallback(store: &'static str) {
    if hot().is_some() {
        counter!(RATE_LIMIT_FALLBACKS, "store" => store_label(store)).increment(1);
    }
}

const RATE_LIMIT_STORES: [&str; 2] = ["postgres", "redis"];

fn store_label(store: &str) -> &'static str {
    RATE_LIMIT_STORES
        .into_iter()
        .find(|s| *s == store)
        .unwrap_or("postgres")
}

/// How long a change waited for the other caching nodes to confirm it (PostgreSQL).
pub fn change_confirmation(started: Instant) {
    if hot().is_some() {
        metrics::histogram!(CHANGE_WAIT).record(started.elapsed().as_secs_f64());
    }
}

async fn scrape_gauges(services: &Services) {
    let s = &services.settings;
    let now = services.clock.now();
    match services
        .store
        .live_sessions(
            now,
            (s.api_idle_timeout_secs, s.api_max_lifetime_secs),
            (s.console_idle_timeout_secs, s.console_max_lifetime_secs),
        )
        .await
    {
        Ok((api, console)) => {
            metrics::gauge!(API_SESSIONS).set(api as f64);
            metrics::gauge!(CONSOLE_SESSIONS).set(console as f64);
        }
        Err(e) => tracing::warn!(error = %e, "cannot count live sessions for the metrics"),
    }
    for p in services.store.pool_stats() {
        let idle = p.idle as f64;
        metrics::gauge!(DB_POOL, "pool" => p.pool, "state" => "idle").set(idle);
        metrics::gauge!(DB_POOL, "pool" => p.pool, "state" => "in_use")
            .set((f64::from(p.size) - idle).max(0.0));
    }
    if services.peers.is_some() {
        metrics::gauge!(LEASE).set(if services.cache.leased() { 1.0 } else { 0.0 });
    }
}

// ------------------------------------------------------------------ names

const HTTP_REQUESTS: &str = "keygate_http_requests_total";
const HTTP_DURATION: &str = "keygate_http_request_duration_seconds";
const DECISIONS: &str = "keygate_api_decisions_total";
const RATE_LIMIT_REFUSALS: &str = "keygate_rate_limit_refusals_total";
const RATE_LIMIT_CLAIMS: &str = "keygate_rate_limit_claims_total";
const RATE_LIMIT_FALLBACKS: &str = "keygate_rate_limit_fallbacks_total";
const LOGINS: &str = "keygate_logins_total";
const KEY_CHANGES_TOTAL: &str = "keygate_key_changes_total";
const THRESHOLD_TRIPS: &str = "keygate_call_threshold_trips_total";
const API_SESSIONS: &str = "keygate_api_sessions";
const CONSOLE_SESSIONS: &str = "keygate_console_sessions";
const FLUSH_DURATION: &str = "keygate_meter_flush_duration_seconds";
const FLUSH_FAILURES: &str = "keygate_meter_flush_failures_total";
const DB_POOL: &str = "keygate_db_pool_connections";
const DB_ERRORS: &str = "keygate_db_query_errors_total";
const TX_RETRIES: &str = "keygate_db_transaction_retries_total";
const CACHE_LOOKUPS: &str = "keygate_node_cache_lookups_total";
const LEASE: &str = "keygate_node_cache_lease_held";
const CHANGE_WAIT: &str = "keygate_node_cache_change_wait_seconds";
const BUILD_INFO: &str = "keygate_build_info";
const BEARER_FAILURES: &str = "keygate_provider_bearer_failures_total";

/// What became of a provider API request with a bearer token that was not accepted.
#[derive(Clone, Copy)]
pub enum BearerFailure {
    /// Answered 401 and counted against its address.
    Rejected,
    /// Answered 429: its address failed too often (issue 15).
    Throttled,
}

impl BearerFailure {
    const ALL: [BearerFailure; 2] = [Self::Rejected, Self::Throttled];
    fn label(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Throttled => "throttled",
        }
    }
}

/// A provider bearer token refused, or an address throttled for failing too often.
pub fn bearer_failure(outcome: BearerFailure) {
    if hot().is_some() {
        counter!(BEARER_FAILURES, "outcome" => outcome.label()).increment(1);
    }
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status class"
    );
    describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time to answer a request's head, by route template and method"
    );
    describe_counter!(
        DECISIONS,
        "Decisions on cloud service API calls (surface=api) and /authz sub-requests (surface=authz), by outcome code"
    );
    describe_counter!(RATE_LIMIT_REFUSALS, "Calls refused by an org's rate limits");
    describe_counter!(
        RATE_LIMIT_CLAIMS,
        "Claims of a share of an org's rate-limit window from the shared store (PostgreSQL nodes), by store and result"
    );
    describe_counter!(
        RATE_LIMIT_FALLBACKS,
        "Rate-limit windows decided by the bounded local fallback because the shared store did not answer"
    );
    describe_counter!(
        LOGINS,
        "Logins by surface (api, console, provider) and outcome (success, failure, throttled, locked)"
    );
    describe_counter!(
        BEARER_FAILURES,
        "Provider API requests whose bearer token was refused (rejected: 401) or whose address was throttled for failing too often (throttled: 429)"
    );
    describe_counter!(
        KEY_CHANGES_TOTAL,
        "Changes to an org's API key, by kind and actor kind"
    );
    describe_counter!(
        THRESHOLD_TRIPS,
        "Keys disabled because their org exceeded its call threshold (R9)"
    );
    describe_gauge!(API_SESSIONS, "Live cloud service API sessions");
    describe_gauge!(CONSOLE_SESSIONS, "Live admin console sessions");
    describe_histogram!(
        FLUSH_DURATION,
        metrics::Unit::Seconds,
        "Time to write the metered call counts to the database"
    );
    describe_counter!(
        FLUSH_FAILURES,
        "Metered call count writes that failed (retried at the next flush)"
    );
    describe_gauge!(DB_POOL, "Database pool connections, by pool and state");
    describe_counter!(DB_ERRORS, "Database query errors, by kind");
    describe_counter!(
        TX_RETRIES,
        "Write transactions PostgreSQL aborted (serialization failure, deadlock), run again or given up"
    );
    describe_counter!(CACHE_LOOKUPS, "Node cache look-ups, by map and result");
    describe_gauge!(
        LEASE,
        "1 while this node holds its cache lease (PostgreSQL with --node-cache)"
    );
    describe_histogram!(
        CHANGE_WAIT,
        metrics::Unit::Seconds,
        "Time a change waited for the other caching nodes to confirm it (PostgreSQL with --node-cache)"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version in its label");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every thread's adds are in the totals, also those of threads that have ended (their
    /// slots stay), and each slot counts only its own adds.
    #[test]
    fn per_thread_counts_sum_over_every_thread_and_keep_slots_apart() {
        let counts = Arc::new(PerThread {
            slots: thread_local::ThreadLocal::new(),
        });
        let first = decision_slot(DecisionSurface::Api, 0);
        let last = HOT_SLOTS - 1;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counts.add(first);
                    }
                    counts.add(last);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        counts.add(first);
        let totals = counts.totals();
        assert_eq!(totals[first], 4001);
        assert_eq!(totals[last], 4);
        assert_eq!(totals.iter().sum::<u64>(), 4005);
    }

    #[test]
    fn slots_do_not_overlap() {
        let mut seen = std::collections::HashSet::new();
        for route in [FastRoute::Authz, FastRoute::ListKeys, FastRoute::Healthz] {
            for method in 0..METHODS.len() {
                for status in 0..STATUS_CLASSES.len() {
                    assert!(seen.insert(request_slot(route, method, status)));
                }
            }
        }
        for surface in [DecisionSurface::Api, DecisionSurface::Authz] {
            for outcome in 0..OUTCOMES.len() {
                assert!(seen.insert(decision_slot(surface, outcome)));
            }
            assert!(seen.insert(refusal_slot(surface)));
        }
        for map in [CacheMap::Session, CacheMap::Org, CacheMap::KeyList] {
            for hit in [true, false] {
                assert!(seen.insert(cache_slot(map, hit)));
            }
        }
        assert_eq!(seen.len(), HOT_SLOTS);
        assert!(seen.iter().all(|&s| s < HOT_SLOTS));
    }
}
