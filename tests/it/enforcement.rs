//! Enforcement (PRODUCT.md R8–R10, §3.4, §5): the call threshold that disables a key by itself
//! (R9), the per-org rate limits with their headers and the provider's overrides, metering
//! that loses no count on graceful shutdown, and `/authz`, the decision a reverse proxy asks
//! for. The server's clock only moves when a test moves it, so every limit is exact.

use keygate::clock::Clock;
use keygate::domain::key::ApiKeyValue;
use keygate::domain::time::Millis;
use reqwest::header::{COOKIE, HeaderMap, RETRY_AFTER, SET_COOKIE};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

// ---------------------------------------------------------------- helpers (also used by nginx.rs)

/// A response with everything a test may look at; the body parsed as JSON when it is JSON.
pub(crate) struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    pub(crate) async fn of(resp: reqwest::Response) -> Resp {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }

    fn is_success(&self) -> bool {
        self.status.is_success()
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {:?}", self.status, self.body, self.headers)
    }
}

/// Asserts an error answer: status, JSON `code` and a message.
pub(crate) fn assert_refused(r: &Resp, status: StatusCode, code: &str, why: &str) {
    assert_eq!(r.status, status, "{why}: {r}");
    assert_eq!(r.body["code"], code, "{why}: {r}");
    assert!(!r.message().is_empty(), "{why}: a message: {r}");
}

/// Asserts a success (2xx) and returns the response.
#[track_caller]
fn ok(r: Resp, why: &str) -> Resp {
    assert!(r.is_success(), "{why}: {r}");
    r
}

/// The `x-ratelimit-limit`, `-remaining` and `-reset` headers, all required, as integers.
#[track_caller]
pub(crate) fn rate(r: &Resp, why: &str) -> (u64, u64, u64) {
    let get = |name: &str| -> u64 {
        r.header(name)
            .unwrap_or_else(|| panic!("{why}: no {name} header: {r}"))
            .parse()
            .unwrap_or_else(|e| panic!("{why}: {name} is not an integer ({e}): {r}"))
    };
    (
        get("x-ratelimit-limit"),
        get("x-ratelimit-remaining"),
        get("x-ratelimit-reset"),
    )
}

/// Asserts a 429 as §3.4 describes it and returns its `Retry-After` seconds: the code, the
/// header as an integer ≥ 1, the same number in the body as `"<n> seconds"`, and the three
/// rate-limit headers with nothing remaining.
#[track_caller]
pub(crate) fn assert_rate_limited(r: &Resp, why: &str) -> u64 {
    assert_refused(r, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED", why);
    let secs: u64 = r
        .header(RETRY_AFTER.as_str())
        .unwrap_or_else(|| panic!("{why}: no Retry-After: {r}"))
        .parse()
        .unwrap_or_else(|e| panic!("{why}: Retry-After is not an integer ({e}): {r}"));
    assert!(secs >= 1, "{why}: Retry-After ≥ 1: {r}");
    assert_eq!(
        r.body["Retry-After"],
        format!("{secs} seconds"),
        "{why}: body Retry-After: {r}"
    );
    let (limit, remaining, reset) = rate(r, why);
    assert!(limit >= 1, "{why}: {r}");
    assert_eq!(remaining, 0, "{why}: nothing remaining on a 429: {r}");
    assert!(reset >= 1, "{why}: x-ratelimit-reset ≥ 1 on a 429: {r}");
    secs
}

pub(crate) fn org_id(org: &Value) -> i64 {
    org["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("org id in {org}"))
}

/// Rate limits that never get in the way of a test about something else.
pub(crate) fn generous() -> Value {
    json!([{"methods": ["GET", "POST", "PUT", "DELETE"], "limit": 1_000_000, "periodSeconds": 1}])
}

/// `PUT /provider/v1/orgs/{id}/limits`.
pub(crate) async fn set_limits(server: &TestServer, org: i64, body: Value) -> (StatusCode, Value) {
    server
        .provider(
            Method::PUT,
            &format!("/provider/v1/orgs/{org}/limits"),
            Some(body),
        )
        .await
}

/// Sets the limits and asserts they were taken.
pub(crate) async fn limits(server: &TestServer, org: i64, body: Value) -> Value {
    let (status, view) = set_limits(server, org, body).await;
    assert_eq!(status, StatusCode::OK, "set limits: {view}");
    view
}

pub(crate) async fn provider_org(server: &TestServer, org: i64) -> Value {
    let (status, view) = server
        .provider(Method::GET, &format!("/provider/v1/orgs/{org}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "GET org: {view}");
    view
}

/// `GET /provider/v1/orgs/{id}/usage` (the whole view).
pub(crate) async fn usage_view(server: &TestServer, org: i64) -> Value {
    let (status, view) = server
        .provider(Method::GET, &format!("/provider/v1/orgs/{org}/usage"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "GET usage: {view}");
    view
}

/// The current period's calls as the provider sees them, from both `GET usage` and `GET org`
/// (which must agree), and `remaining`.
pub(crate) async fn usage(server: &TestServer, org: i64) -> (i64, Value) {
    let view = usage_view(server, org).await;
    let current = view["current"].clone();
    let in_org = provider_org(server, org).await["usage"].clone();
    assert_eq!(current, in_org, "GET usage and GET org agree");
    let calls = current["calls"]
        .as_i64()
        .unwrap_or_else(|| panic!("usage calls: {view}"));
    (calls, current["remaining"].clone())
}

pub(crate) async fn provider_audit(server: &TestServer, org: i64) -> Vec<Value> {
    let (status, page) = server
        .provider(
            Method::GET,
            &format!("/provider/v1/orgs/{org}/audit?pageSize=1000"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "audit: {page}");
    page["items"].as_array().expect("audit items").clone()
}

fn with_action<'a>(audit: &'a [Value], action: &str) -> Vec<&'a Value> {
    audit.iter().filter(|r| r["action"] == action).collect()
}

/// A cloud service API session; requests carry it as the `JSESSIONID` cookie.
#[derive(Clone)]
pub(crate) struct Session {
    pub http: Client,
    pub base: String,
    pub token: String,
}

impl Session {
    pub(crate) async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header(COOKIE, format!("JSESSIONID={}", self.token));
        if let Some(b) = body {
            req = req.json(&b);
        }
        Resp::of(req.send().await.expect("request")).await
    }

    /// `GET /api/v1/apiKeys`: a metered read.
    pub(crate) async fn get_keys(&self) -> Resp {
        self.call(Method::GET, "/api/v1/apiKeys", None).await
    }

    /// `/authz` as nginx asks: the cookie and `X-Original-Method`.
    pub(crate) async fn authz(&self, method: &str) -> Resp {
        authz_with(
            &self.http,
            &self.base,
            Method::GET,
            &[
                ("Cookie", &format!("JSESSIONID={}", self.token)),
                ("X-Original-Method", method),
            ],
        )
        .await
    }
}

/// `/authz` with exactly these headers, sent with `method`.
pub(crate) async fn authz_with(
    http: &Client,
    base: &str,
    method: Method,
    headers: &[(&str, &str)],
) -> Resp {
    let mut req = http.request(method, format!("{base}/authz"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Resp::of(req.send().await.expect("authz request")).await
}

/// Opens a session on `POST /api/v1/auth` with `key` obfuscated for the server's time.
pub(crate) async fn api_login(
    server: &TestServer,
    login: &str,
    key: &str,
) -> Result<Session, Resp> {
    let ts = server.clock.now().0;
    let obfuscated = ApiKeyValue::parse("key", key)
        .expect("a valid key value")
        .obfuscate(ts);
    let obfuscated = std::str::from_utf8(&obfuscated[..]).unwrap().to_owned();
    let resp = server
        .http
        .post(server.url("/api/v1/auth"))
        .json(&json!({"apiKey": obfuscated, "username": login, "password": PASSWORD, "timestamp": ts}))
        .send()
        .await
        .expect("login request");
    let r = Resp::of(resp).await;
    if r.status != StatusCode::OK {
        return Err(r);
    }
    let cookie = r
        .header(SET_COOKIE.as_str())
        .unwrap_or_else(|| panic!("Set-Cookie on login: {r}"))
        .to_owned();
    let token = cookie
        .split(';')
        .next()
        .and_then(|kv| kv.trim().strip_prefix("JSESSIONID="))
        .unwrap_or_else(|| panic!("JSESSIONID cookie: {cookie}"))
        .to_owned();
    Ok(Session {
        http: server.http.clone(),
        base: server.base.clone(),
        token,
    })
}

/// Logs in and panics unless it works.
pub(crate) async fn must_login(server: &TestServer, login: &str, key: &str) -> Session {
    api_login(server, login, key)
        .await
        .unwrap_or_else(|r| panic!("API login {login}: {r}"))
}

/// An org `slug` with its key value (revealed on the console) and an API session of
/// `full@slug`.
pub(crate) async fn org_with_session(server: &TestServer, slug: &str) -> (i64, String, Session) {
    org_with_session_sub(server, slug, json!({"enabled": true, "expiresAt": null})).await
}

pub(crate) async fn org_with_session_sub(
    server: &TestServer,
    slug: &str,
    subscription: Value,
) -> (i64, String, Session) {
    let org = server.create_org_with(slug, subscription).await;
    let key = server.login(&format!("full@{slug}")).await.reveal().await;
    let session = must_login(server, &format!("full@{slug}"), &key).await;
    (org_id(&org), key, session)
}

/// Moves the clock on by `ms` milliseconds.
fn advance_ms(server: &TestServer, ms: i64) {
    server.clock.set(Millis(server.clock.now().0 + ms));
}

/// Moves the clock `secs` on in steps short of the idle timeout, reading in between so the
/// session stays alive.
async fn advance_keeping_alive(server: &TestServer, s: &Session, secs: i64) {
    let mut left = secs;
    while left > 0 {
        let step = left.min(60);
        server.clock.advance_secs(step);
        left -= step;
        ok(s.get_keys().await, "keep-alive read");
    }
}

// ---------------------------------------------------------------- R9: the call threshold

/// Calls 1..=N pass (API calls and `/authz` decisions alike), call N+1 disables the key with
/// reason CALL_THRESHOLD_EXCEEDED: 403 to that call, the key DISABLED on the console and to
/// the provider, a SYSTEM audit record, the session over, a fresh login refused. The provider
/// sees N+1 calls and nothing remaining; re-enabling starts the period's count from zero.
#[tokio::test]
async fn r9_call_n_plus_1_disables_the_key_until_the_provider_reenables_it() {
    const N: i64 = 5;
    let server = TestServer::start().await;
    let (org, key, s) = org_with_session(&server, "r9").await;
    let view = limits(
        &server,
        org,
        json!({"callThreshold": {"calls": N, "periodSeconds": 3600}, "rateLimits": generous()}),
    )
    .await;
    assert_eq!(
        view["callThreshold"],
        json!({"calls": N, "periodSeconds": 3600})
    );
    assert_eq!(
        usage(&server, org).await,
        (0, json!(N)),
        "nothing counted yet"
    );

    for i in 1..=N {
        let r = if i % 2 == 1 {
            s.get_keys().await
        } else {
            s.authz("GET").await
        };
        ok(r, &format!("call {i} of {N}"));
        assert_eq!(
            usage(&server, org).await,
            (i, json!(N - i)),
            "after call {i}"
        );
    }

    let r = s.get_keys().await;
    assert_refused(&r, StatusCode::FORBIDDEN, "API_KEY_DISABLED", "call N+1");
    assert!(
        r.message().contains("CALL_THRESHOLD_EXCEEDED"),
        "the reason is in the message: {r}"
    );

    // What everyone sees.
    let view = provider_org(&server, org).await;
    assert_eq!(view["keyStatus"], "DISABLED", "{view}");
    assert_eq!(
        view["keyDisabledReason"], "CALL_THRESHOLD_EXCEEDED",
        "{view}"
    );
    assert_eq!(view["usage"]["calls"], N + 1, "{view}");
    assert_eq!(view["usage"]["remaining"], 0, "{view}");
    assert_eq!(usage(&server, org).await, (N + 1, json!(0)));
    let admin = server.login("full@r9").await;
    let (status, k) = admin.key().await;
    assert_eq!(status, StatusCode::OK, "{k}");
    assert_eq!(k["status"], "DISABLED", "console key: {k}");
    assert_eq!(k["enabled"], false, "console key: {k}");
    assert_eq!(
        k["disabledReason"], "CALL_THRESHOLD_EXCEEDED",
        "console key: {k}"
    );

    let audit = provider_audit(&server, org).await;
    let disables = with_action(&audit, "KEY_DISABLE");
    assert_eq!(disables.len(), 1, "one KEY_DISABLE: {audit:?}");
    assert_eq!(disables[0]["actorType"], "SYSTEM", "{}", disables[0]);
    assert_eq!(
        disables[0]["details"]["reason"], "CALL_THRESHOLD_EXCEEDED",
        "{}",
        disables[0]
    );
    assert_eq!(
        with_action(&admin.audit().await, "KEY_DISABLE").len(),
        1,
        "the org's admins see it in their audit trail too"
    );

    // The session ended; the right credentials are refused with the reason.
    assert_refused(
        &s.get_keys().await,
        StatusCode::UNAUTHORIZED,
        "SESSION_NOT_VALID",
        "the session ended with the disable",
    );
    assert_refused(
        &s.authz("GET").await,
        StatusCode::UNAUTHORIZED,
        "SESSION_NOT_VALID",
        "/authz on the ended session",
    );
    let refused = api_login(&server, "full@r9", &key)
        .await
        .err()
        .expect("login refused");
    assert_refused(
        &refused,
        StatusCode::FORBIDDEN,
        "API_KEY_DISABLED",
        "login while disabled",
    );
    assert!(
        refused.message().contains("CALL_THRESHOLD_EXCEEDED"),
        "{refused}"
    );
    assert_eq!(
        usage(&server, org).await,
        (N + 1, json!(0)),
        "refused requests are not counted"
    );

    // Only the provider re-enables it; the period's count starts again from zero.
    let (status, view) = server
        .provider(
            Method::POST,
            &format!("/provider/v1/orgs/{org}/apiKey/enable"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "enable: {view}");
    assert_eq!(view["keyStatus"], "ENABLED", "{view}");
    assert_eq!(
        view["usage"]["calls"], 0,
        "re-enabling resets the count: {view}"
    );
    assert_eq!(usage(&server, org).await, (0, json!(N)));
    let enables = with_action(&provider_audit(&server, org).await, "KEY_ENABLE")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(enables.len(), 1, "{enables:?}");
    assert_eq!(enables[0]["actorType"], "PROVIDER", "{}", enables[0]);

    // The same key works again, for exactly N more calls in the same period.
    let s = must_login(&server, "full@r9", &key).await;
    for i in 1..=N {
        let r = if i % 2 == 0 {
            s.get_keys().await
        } else {
            s.authz("POST").await
        };
        ok(r, &format!("call {i} after re-enable"));
    }
    assert_eq!(usage(&server, org).await, (N, json!(0)));
    assert_refused(
        &s.authz("GET").await,
        StatusCode::FORBIDDEN,
        "API_KEY_DISABLED",
        "call N+1 after re-enable trips again",
    );
    assert_eq!(
        with_action(&provider_audit(&server, org).await, "KEY_DISABLE").len(),
        2,
        "a second automatic disable"
    );
}

/// The count is per period (aligned to the period length): a call at the last second of a
/// period still counts there; the next period starts at zero. A `/authz` decision trips the
/// threshold like an API call, with the same 403.
#[tokio::test]
async fn r9_a_new_period_restarts_the_count_and_authz_decisions_trip_it_too() {
    let server = TestServer::start().await;
    let (org, _key, s) = org_with_session(&server, "r9p").await;
    limits(
        &server,
        org,
        json!({"callThreshold": {"calls": 3, "periodSeconds": 60}, "rateLimits": generous()}),
    )
    .await;

    ok(s.get_keys().await, "call 1");
    ok(s.authz("GET").await, "call 2");
    server.clock.advance_secs(59);
    ok(
        s.authz("DELETE").await,
        "call 3, at the period's last second",
    );
    let view = usage_view(&server, org).await;
    assert_eq!(view["current"]["calls"], 3, "{view}");
    assert_eq!(view["current"]["remaining"], 0, "{view}");
    assert_eq!(view["current"]["periodSeconds"], 60, "{view}");
    assert_eq!(view["current"]["periodStart"], T0_SECS, "{view}");

    server.clock.advance_secs(1);
    let view = usage_view(&server, org).await;
    assert_eq!(view["current"]["calls"], 0, "a new period: {view}");
    assert_eq!(view["current"]["remaining"], 3, "{view}");
    assert_eq!(view["current"]["periodStart"], T0_SECS + 60, "{view}");

    ok(s.get_keys().await, "new period, call 1");
    ok(s.authz("PUT").await, "new period, call 2");
    ok(s.get_keys().await, "new period, call 3");
    let r = s.authz("GET").await;
    assert_refused(
        &r,
        StatusCode::FORBIDDEN,
        "API_KEY_DISABLED",
        "/authz call 4",
    );
    assert!(r.message().contains("CALL_THRESHOLD_EXCEEDED"), "{r}");
    assert_eq!(r.header("x-keygate-code"), Some("API_KEY_DISABLED"), "{r}");
    assert_eq!(usage(&server, org).await, (4, json!(0)));
    assert_refused(
        &s.authz("GET").await,
        StatusCode::UNAUTHORIZED,
        "SESSION_NOT_VALID",
        "the session ended",
    );
    let view = provider_org(&server, org).await;
    assert_eq!(
        view["keyDisabledReason"], "CALL_THRESHOLD_EXCEEDED",
        "{view}"
    );
}

/// A threshold the org is already over (the provider lowered it) trips on the next call; one
/// the org is under does not. An org without a threshold is never disabled.
#[tokio::test]
async fn r9_lowering_the_threshold_below_the_count_trips_on_the_next_call() {
    let server = TestServer::start().await;
    let (org, _key, s) = org_with_session(&server, "r9l").await;
    limits(&server, org, json!({"rateLimits": generous()})).await;
    for i in 1..=20 {
        ok(s.get_keys().await, &format!("no threshold, call {i}"));
    }
    let (calls, remaining) = usage(&server, org).await;
    assert_eq!(
        (calls, remaining),
        (20, Value::Null),
        "no threshold: remaining is null"
    );

    let view = limits(
        &server,
        org,
        json!({"callThreshold": {"calls": 10, "periodSeconds": 3600}, "rateLimits": generous()}),
    )
    .await;
    assert_eq!(
        view["usage"]["calls"], 20,
        "the hour's count is kept: {view}"
    );
    assert_eq!(view["usage"]["remaining"], 0, "{view}");
    assert_refused(
        &s.get_keys().await,
        StatusCode::FORBIDDEN,
        "API_KEY_DISABLED",
        "over the new threshold",
    );
}

/// The meter's flush writes every org's counts in one statement per 500 rows and reads the
/// totals back in one query: a count given twice in one flush (a failed flush's counts put
/// back beside newer ones) is summed, counts add up across flushes and across the chunk
/// boundary, and the totals come back in the order asked, 0 where nothing is stored. On the
/// suite's store (SQLite, or PostgreSQL with `KEYGATE_TEST_DATABASE_URL`).
#[tokio::test]
async fn usage_counts_are_written_and_read_back_in_batches() {
    use keygate::domain::ids::OrgId;
    let scratch = tempfile::tempdir().unwrap();
    let url = test_database_url(scratch.path()).await;
    let (node, services) = TestServer::start_node(Flush::Manual, |c| {
        if let Some(url) = url {
            c.database_url = Some(secrecy::SecretString::from(url));
        }
    })
    .await;
    let a = OrgId(node.create_org("batch-a").await["id"].as_i64().unwrap());
    let b = OrgId(node.create_org("batch-b").await["id"].as_i64().unwrap());
    // 700 periods: more than one statement's 500 rows.
    let periods: Vec<(OrgId, i64, i64)> = (0..350)
        .flat_map(|i| [(a, 60, 1_000 + i * 60), (b, 3600, 7_200 + i * 3600)])
        .collect();
    let mut deltas: Vec<(OrgId, i64, i64, i64)> = periods
        .iter()
        .enumerate()
        .map(|(i, (org, p, s))| (*org, *p, *s, i as i64 + 1))
        .collect();
    // The same periods again, as a failed flush would put them back.
    deltas.extend(
        periods
            .iter()
            .step_by(3)
            .map(|(org, p, s)| (*org, *p, *s, 1000)),
    );
    let expected = |round: i64| -> Vec<i64> {
        (0..periods.len())
            .map(|i| round * (i as i64 + 1 + if i % 3 == 0 { 1000 } else { 0 }))
            .collect()
    };
    services
        .store
        .add_usage(&deltas)
        .await
        .expect("first flush");
    services
        .store
        .add_usage(&deltas)
        .await
        .expect("second flush");

    let mut asked = periods.clone();
    asked.reverse();
    asked.insert(17, (a, 60, 999_999_960));
    asked.push((b, 86_400, 0));
    let got = services
        .store
        .usage_calls_of(&asked)
        .await
        .expect("read back");
    let mut want = expected(2);
    want.reverse();
    want.insert(17, 0);
    want.push(0);
    assert_eq!(
        got, want,
        "totals in the order asked, 0 where none are stored"
    );
    for (i, (org, p, s)) in periods.iter().enumerate().step_by(97) {
        let one = services.store.usage_calls(*org, *p, *s).await.unwrap();
        assert_eq!(
            one,
            expected(2)[i],
            "the single read agrees for {org:?} {p} {s}"
        );
    }
    assert_eq!(
        services.store.usage_calls_of(&[]).await.unwrap(),
        Vec::<i64>::new()
    );
    services
        .store
        .add_usage(&[])
        .await
        .expect("nothing to write");
    node.stop().await;
}

// ---------------------------------------------------------------- rate limits (§3.4)

/// GET: 2 per second by default. Every admitted answer (200 from the API, 204 from `/authz`,
/// and a 404 from a handler) carries the three headers; the third GET in a second gets 429;
/// other methods have their own allowance; half a second gives one GET back, a second both.
#[tokio::test]
async fn get_default_is_two_per_second_with_headers_on_every_answer() {
    let server = TestServer::start().await;
    let (_org, _key, s) = org_with_session(&server, "rlget").await;

    let r = ok(s.get_keys().await, "GET 1");
    assert_eq!(rate(&r, "GET 1"), (2, 1, 1));
    let r = ok(s.authz("GET").await, "GET 2 (through /authz)");
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(rate(&r, "GET 2"), (2, 0, 1));

    let r = s.get_keys().await;
    assert_eq!(assert_rate_limited(&r, "GET 3"), 1);
    assert_eq!(rate(&r, "GET 3").0, 2, "the 2/s rule refused it");
    let r = s.authz("GET").await;
    assert_eq!(assert_rate_limited(&r, "GET 4 via /authz"), 1);
    assert_eq!(
        r.header("x-keygate-code"),
        Some("RATE_LIMIT_EXCEEDED"),
        "{r}"
    );
    let r = s.authz("HEAD").await;
    assert_rate_limited(&r, "HEAD weighs as GET");

    // POST and PUT, and DELETE, are counted apart from GET.
    let r = ok(s.authz("POST").await, "POST while GET is exhausted");
    assert_eq!(rate(&r, "POST").0, 1);
    let r = ok(s.authz("DELETE").await, "DELETE while GET is exhausted");
    assert_eq!(rate(&r, "DELETE").0, 1);

    if on_postgres() {
        // Global limits: windows aligned to the clock, whole again at the next second.
        advance_ms(&server, 500);
        let r = s.get_keys().await;
        assert_eq!(assert_rate_limited(&r, "GET 500 ms later, same window"), 1);
    } else {
        // GCRA: one GET every 500 ms.
        advance_ms(&server, 500);
        let r = ok(s.get_keys().await, "GET after 500 ms");
        assert_eq!(rate(&r, "GET after 500 ms"), (2, 0, 1));
        assert_rate_limited(&s.get_keys().await, "the second GET after 500 ms");
    }

    advance_ms(&server, 1000);
    let r = ok(s.get_keys().await, "GET after a whole second");
    assert_eq!(rate(&r, "refilled"), (2, 1, 1));
    let r = s.call(Method::GET, "/api/v1/apiKeys/987654321", None).await;
    assert_refused(&r, StatusCode::NOT_FOUND, "NOT_FOUND", "unknown key id");
    assert_eq!(rate(&r, "a 404 from the handler"), (2, 0, 1));
}

/// GET: 1000 per hour by default. Two GETs every second keep the per-second rule satisfied;
/// the hourly GCRA (a burst of 1000, one more every 3.6 s) refuses the 1162nd call, at
/// second 580, with its own limit in the headers, until its allowance is back.
#[tokio::test]
async fn get_default_is_1000_per_hour() {
    let server = TestServer::start().await;
    let (_org, _key, s) = org_with_session(&server, "rlhour").await;
    let mut served = 0u32;
    let refused = 'outer: loop {
        for _ in 0..2 {
            let r = s.authz("GET").await;
            if r.status != StatusCode::NO_CONTENT {
                break 'outer r;
            }
            served += 1;
            let (limit, _, _) = rate(&r, "hourly loop");
            assert!(limit == 2 || limit == 1000, "{r}");
            assert!(served <= 1200, "the hourly rule never refused");
        }
        server.clock.advance_secs(1);
    };
    if on_postgres() {
        // Global limits: exactly 1000 in the clock's hour (t0 starts one), then refused until
        // the hour ends; a refused call still keeps the session alive.
        assert_eq!(served, 1000, "the hour's window");
        let retry = assert_rate_limited(&refused, "the hourly rule");
        assert_eq!(rate(&refused, "hourly 429").0, 1000, "{refused}");
        assert_eq!(retry, 3600 - 500, "until the hour's end");
        let mut left = 3600 - 500;
        while left > 0 {
            let step = left.min(60);
            server.clock.advance_secs(step);
            left -= step;
            if left > 0 {
                assert_rate_limited(&s.get_keys().await, "within the hour");
            }
        }
        ok(s.get_keys().await, "the next hour");
        return;
    }
    assert_eq!(served, 1161, "1000 + 161 given back over 580 s");
    let retry = assert_rate_limited(&refused, "the hourly rule");
    assert_eq!(rate(&refused, "hourly 429").0, 1000, "{refused}");
    assert_eq!(retry, 4, "3.2 s until the next hourly cell");

    server.clock.advance_secs(1);
    let r = s.get_keys().await;
    assert_eq!(
        assert_rate_limited(&r, "the per-second rule is whole again, the hourly is not"),
        3
    );
    assert_eq!(rate(&r, "hourly").0, 1000);
    server.clock.advance_secs(3);
    ok(s.get_keys().await, "after Retry-After");
}

/// POST and PUT share 1 per second and 400 per hour; the API and `/authz` draw on the same
/// allowance.
#[tokio::test]
async fn post_and_put_default_is_one_per_second_and_400_per_hour() {
    let server = TestServer::start().await;
    let (_org, _key, s) = org_with_session(&server, "rlpost").await;
    let report = json!({"startTime": (T0_SECS - 3600) * 1000, "endTime": T0_SECS * 1000});

    let r = s
        .call(
            Method::POST,
            "/api/v1/auditlogEntryReport",
            Some(report.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r}");
    assert_eq!(rate(&r, "POST 1"), (1, 0, 1));
    assert_eq!(
        assert_rate_limited(&s.authz("PUT").await, "PUT shares POST's second"),
        1
    );
    let r = s
        .call(
            Method::PUT,
            "/api/v1/apiKeys/1",
            Some(json!({"keyValue": "x"})),
        )
        .await;
    assert_eq!(assert_rate_limited(&r, "PUT through the API"), 1);
    assert_rate_limited(&s.authz("PATCH").await, "PATCH weighs as PUT");
    ok(s.get_keys().await, "GET is apart");

    server.clock.advance_secs(1);
    let r = ok(s.authz("PUT").await, "PUT a second later");
    assert_eq!(rate(&r, "PUT"), (1, 0, 1));

    // Hourly: one POST a second; GCRA with a burst of 400 and a cell every 9 s refuses the
    // 450th (counting the PUT above as the 2nd).
    let mut served = 2u32;
    let refused = loop {
        server.clock.advance_secs(1);
        let r = s.authz("POST").await;
        if r.status != StatusCode::NO_CONTENT {
            break r;
        }
        served += 1;
        assert!(served <= 500, "the hourly rule never refused");
    };
    if on_postgres() {
        // Global limits: exactly 400 in the clock's hour, refused until its end.
        assert_eq!(served, 400, "the hour's window");
        assert_eq!(
            assert_rate_limited(&refused, "POST hourly"),
            3600 - 400,
            "until the hour's end"
        );
        assert_eq!(rate(&refused, "POST hourly").0, 400, "{refused}");
        return;
    }
    assert_eq!(served, 449, "400 + 49 given back over 448 s");
    assert_eq!(assert_rate_limited(&refused, "POST hourly"), 1);
    assert_eq!(rate(&refused, "POST hourly").0, 400, "{refused}");
}

/// DELETE: 1 per minute and 4 per hour.
#[tokio::test]
async fn delete_default_is_one_per_minute_and_4_per_hour() {
    let server = TestServer::start().await;
    let (_org, _key, s) = org_with_session(&server, "rldel").await;

    let r = s
        .call(Method::DELETE, "/api/v1/auditlogEntryReport", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r}");
    assert_eq!(rate(&r, "DELETE 1"), (1, 0, 60));
    let r = s.authz("DELETE").await;
    assert_eq!(assert_rate_limited(&r, "DELETE 2 at once"), 60);
    assert_eq!(rate(&r, "DELETE 2").0, 1);
    server.clock.advance_secs(59);
    assert_eq!(
        assert_rate_limited(&s.authz("DELETE").await, "after 59 s"),
        1
    );
    server.clock.advance_secs(1);
    ok(s.authz("DELETE").await, "DELETE 2 after a minute");
    advance_keeping_alive(&server, &s, 60).await;
    ok(s.authz("DELETE").await, "DELETE 3");
    advance_keeping_alive(&server, &s, 60).await;
    let r = ok(s.authz("DELETE").await, "DELETE 4");
    assert_eq!(rate(&r, "DELETE 4").1, 0);

    advance_keeping_alive(&server, &s, 60).await;
    let r = s.authz("DELETE").await;
    if on_postgres() {
        // Global limits: 4 in the clock's hour, the next at the hour's end.
        assert_eq!(
            assert_rate_limited(&r, "DELETE 5 within the hour"),
            3600 - 240
        );
        assert_eq!(rate(&r, "DELETE 5").0, 4, "the hourly rule refused it: {r}");
        return;
    }
    // GCRA, burst 4, a cell every 900 s: after calls at 0, 60, 120 and 180 s the next is
    // allowed at 900 s.
    assert_eq!(assert_rate_limited(&r, "DELETE 5 within the hour"), 660);
    assert_eq!(rate(&r, "DELETE 5").0, 4, "the hourly rule refused it: {r}");
    advance_keeping_alive(&server, &s, 659).await;
    assert_eq!(
        assert_rate_limited(&s.authz("DELETE").await, "one second early"),
        1
    );
    server.clock.advance_secs(1);
    ok(s.authz("DELETE").await, "DELETE 5 after Retry-After");
}

/// One org's burst does not touch another's allowance, or its usage.
#[tokio::test]
async fn rate_limits_and_usage_are_per_org() {
    let server = TestServer::start().await;
    let (a, _, sa) = org_with_session(&server, "isoa").await;
    let (b, _, sb) = org_with_session(&server, "isob").await;

    ok(sa.get_keys().await, "A GET 1");
    ok(sa.get_keys().await, "A GET 2");
    assert_rate_limited(&sa.get_keys().await, "A GET 3");
    ok(sa.authz("POST").await, "A POST 1");
    assert_rate_limited(&sa.authz("POST").await, "A POST 2");

    let r = ok(sb.get_keys().await, "B GET 1");
    assert_eq!(rate(&r, "B GET 1"), (2, 1, 1));
    let r = ok(sb.authz("POST").await, "B POST 1");
    assert_eq!(rate(&r, "B POST 1"), (1, 0, 1));
    ok(sb.authz("GET").await, "B GET 2");

    assert_eq!(
        usage(&server, a).await.0,
        3,
        "A: the refused calls are not counted"
    );
    assert_eq!(usage(&server, b).await.0, 3);
}

/// The provider's rules replace the defaults for that org at once (the org view shows them),
/// and `null` brings the defaults back at once.
#[tokio::test]
async fn provider_overrides_take_effect_at_once_and_null_restores_the_defaults() {
    let server = TestServer::start().await;
    let (org, _key, s) = org_with_session(&server, "ovr").await;
    let (other, _, so) = org_with_session(&server, "ovrother").await;
    assert_eq!(provider_org(&server, org).await["rateLimits"], Value::Null);
    ok(s.get_keys().await, "default GET 1");
    ok(s.get_keys().await, "default GET 2");
    assert_rate_limited(&s.get_keys().await, "default GET 3");

    let rules = json!([
        {"methods": ["GET"], "limit": 5, "periodSeconds": 1},
        {"methods": ["POST", "PUT", "DELETE"], "limit": 3, "periodSeconds": 60},
    ]);
    let view = limits(&server, org, json!({"rateLimits": rules})).await;
    assert_eq!(view["rateLimits"], rules, "{view}");
    assert_eq!(view["callThreshold"], Value::Null, "{view}");
    for i in 0..5 {
        let r = ok(s.get_keys().await, &format!("override GET {}", i + 1));
        assert_eq!(rate(&r, "override GET"), (5, 4 - i, 1));
    }
    let r = s.get_keys().await;
    assert_rate_limited(&r, "override GET 6");
    assert_eq!(rate(&r, "override GET 6").0, 5);
    for m in ["POST", "DELETE", "PUT"] {
        let r = ok(s.authz(m).await, m);
        assert_eq!(rate(&r, m).0, 3, "{r}");
    }
    let r = s.authz("DELETE").await;
    // GCRA gives a cell back every 20 s; global limits' window ends with the minute.
    let retry = if on_postgres() { 60 } else { 20 };
    assert_eq!(assert_rate_limited(&r, "the 4th write in a minute"), retry);
    assert_eq!(rate(&r, "writes").0, 3);
    // The other org keeps the defaults.
    let r = ok(so.get_keys().await, "other org");
    assert_eq!(rate(&r, "other org"), (2, 1, 1));
    assert_eq!(
        provider_org(&server, other).await["rateLimits"],
        Value::Null
    );

    let view = limits(&server, org, json!({"rateLimits": null})).await;
    assert_eq!(view["rateLimits"], Value::Null, "{view}");
    // Global limits count per rule and window: the two default GETs of this second still
    // count under the default rule (GCRA starts the org's buckets afresh).
    let minute_left = if on_postgres() {
        assert_rate_limited(
            &s.get_keys().await,
            "this second's default GETs are counted",
        );
        server.clock.advance_secs(1);
        59
    } else {
        60
    };
    let r = ok(s.get_keys().await, "defaults again, GET 1");
    assert_eq!(rate(&r, "defaults again"), (2, 1, 1));
    ok(s.get_keys().await, "defaults again, GET 2");
    let r = s.get_keys().await;
    assert_rate_limited(&r, "defaults again, GET 3");
    assert_eq!(rate(&r, "defaults again").0, 2);
    let r = ok(s.authz("DELETE").await, "default DELETE");
    assert_eq!(rate(&r, "default DELETE"), (1, 0, minute_left));
    assert_eq!(
        assert_rate_limited(&s.authz("DELETE").await, "default DELETE 2"),
        minute_left
    );
}

/// A request refused by one rule costs nothing under the others, whatever order the provider
/// lists them in: a client retrying on the per-second rule's 429 does not spend its hourly
/// allowance, and refused GETs do not spend a rule shared with POST.
#[tokio::test]
async fn a_refused_request_costs_nothing_under_the_other_rules() {
    let server = TestServer::start().await;
    for (slug, rules) in [
        (
            "hourfirst",
            json!([{"methods": ["GET"], "limit": 5, "periodSeconds": 3600},
                   {"methods": ["GET"], "limit": 1, "periodSeconds": 1}]),
        ),
        (
            "secfirst",
            json!([{"methods": ["GET"], "limit": 1, "periodSeconds": 1},
                   {"methods": ["GET"], "limit": 5, "periodSeconds": 3600}]),
        ),
    ] {
        let (org, _key, s) = org_with_session(&server, slug).await;
        limits(&server, org, json!({"rateLimits": rules})).await;
        for second in 0..5 {
            ok(
                s.get_keys().await,
                &format!("{slug}: GET at second {second}"),
            );
            // (After the fifth, both rules would refuse.)
            let retries = if second < 4 { 5 } else { 0 };
            for retry in 0..retries {
                let r = s.get_keys().await;
                assert_eq!(
                    assert_rate_limited(&r, &format!("{slug}: retry {retry} at second {second}")),
                    1,
                    "{slug}: the per-second rule refuses, not the hourly one: {r}"
                );
                assert_eq!(rate(&r, slug).0, 1, "{r}");
            }
            server.clock.advance_secs(1);
        }
        let r = s.get_keys().await;
        assert_rate_limited(&r, &format!("{slug}: the 6th served GET in the hour"));
        assert_eq!(
            rate(&r, slug).0,
            5,
            "{slug}: now the hourly rule refuses: {r}"
        );
        assert_eq!(usage(&server, org).await.0, 5, "{slug}: five calls served");
    }

    let (org, _key, s) = org_with_session(&server, "shared").await;
    limits(
        &server,
        org,
        json!({"rateLimits": [{"methods": ["GET", "POST"], "limit": 3, "periodSeconds": 1},
                              {"methods": ["GET"], "limit": 1, "periodSeconds": 1}]}),
    )
    .await;
    ok(s.authz("GET").await, "GET 1");
    for _ in 0..3 {
        let r = s.authz("GET").await;
        assert_rate_limited(&r, "GET refused by the GET-only rule");
        assert_eq!(rate(&r, "GET-only rule").0, 1, "{r}");
    }
    ok(
        s.authz("POST").await,
        "POST 1: the shared rule has two cells left",
    );
    ok(s.authz("POST").await, "POST 2");
    let r = s.authz("POST").await;
    assert_rate_limited(&r, "POST 3: the shared rule is spent");
    assert_eq!(rate(&r, "shared rule").0, 3, "{r}");
}

/// Bad limits bodies get 400 naming the field, and change nothing: not the stored limits, not
/// the limiter, not the audit log.
#[tokio::test]
async fn invalid_limits_are_refused_naming_the_field_and_change_nothing() {
    let server = TestServer::start().await;
    let (org, _key, s) = org_with_session(&server, "badlim").await;
    let good = json!({
        "callThreshold": {"calls": 100, "periodSeconds": 3600},
        "rateLimits": [{"methods": ["GET"], "limit": 5, "periodSeconds": 1}],
    });
    limits(&server, org, good.clone()).await;
    let before = provider_org(&server, org).await;
    let audit_before = provider_audit(&server, org).await.len();

    let rule = |methods: Value, limit: Value, period: Value| json!({"rateLimits": [{"methods": methods, "limit": limit, "periodSeconds": period}]});
    let many: Vec<Value> = (0..33)
        .map(|_| json!({"methods": ["GET"], "limit": 1, "periodSeconds": 1}))
        .collect();
    let cases: Vec<(Value, &str)> = vec![
        (
            rule(json!(["GET"]), json!(0), json!(1)),
            "rateLimits[0].limit",
        ),
        (
            rule(json!(["GET"]), json!(-1), json!(1)),
            "rateLimits[0].limit",
        ),
        (
            rule(json!(["GET"]), json!("2"), json!(1)),
            "rateLimits[0].limit",
        ),
        (
            rule(json!(["GET"]), json!(1_000_001), json!(1)),
            "rateLimits[0].limit",
        ),
        (rule(json!([]), json!(1), json!(1)), "rateLimits[0].methods"),
        (
            rule(json!(["FETCH"]), json!(1), json!(1)),
            "rateLimits[0].methods",
        ),
        (
            rule(json!(["get"]), json!(1), json!(1)),
            "rateLimits[0].methods",
        ),
        (
            rule(json!("GET"), json!(1), json!(1)),
            "rateLimits[0].methods",
        ),
        (
            rule(json!(["GET"]), json!(1), json!(0)),
            "rateLimits[0].periodSeconds",
        ),
        (
            json!({"rateLimits": [
                {"methods": ["GET"], "limit": 1, "periodSeconds": 1},
                {"methods": ["POST"], "limit": 0, "periodSeconds": 1},
            ]}),
            "rateLimits[1].limit",
        ),
        (json!({"rateLimits": many}), "rateLimits"),
        (
            json!({"callThreshold": {"calls": 0, "periodSeconds": 60}}),
            "callThreshold.calls",
        ),
        (
            json!({"callThreshold": {"calls": -5, "periodSeconds": 60}}),
            "callThreshold.calls",
        ),
        (
            json!({"callThreshold": {"calls": "10", "periodSeconds": 60}}),
            "callThreshold.calls",
        ),
        (
            json!({"callThreshold": {"calls": 10, "periodSeconds": 0}}),
            "callThreshold.periodSeconds",
        ),
        // A valid threshold does not go through with invalid rules.
        (
            json!({"callThreshold": {"calls": 1, "periodSeconds": 60},
                   "rateLimits": [{"methods": ["GET"], "limit": 0, "periodSeconds": 1}]}),
            "rateLimits[0].limit",
        ),
    ];
    for (body, field) in &cases {
        let got = set_limits(&server, org, body.clone()).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
        assert_eq!(got.1["field"], *field, "{body} → {}", got.1);
        assert!(
            got.1["message"].as_str().unwrap().contains(field),
            "the message names {field}: {}",
            got.1
        );
    }
    // Shapes that are wrong as a whole.
    for body in [
        json!({"rateLimit": []}),
        json!({"rateLimits": [{"methods": ["GET"], "limit": 2}]}),
        json!([]),
    ] {
        let got = set_limits(&server, org, body.clone()).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
    }

    let after = provider_org(&server, org).await;
    assert_eq!(after["callThreshold"], before["callThreshold"]);
    assert_eq!(after["rateLimits"], before["rateLimits"]);
    assert_eq!(after["rateLimits"], good["rateLimits"]);
    assert_eq!(
        provider_audit(&server, org).await.len(),
        audit_before,
        "no audit record for a refused change"
    );
    for i in 0..5 {
        ok(
            s.get_keys().await,
            &format!("GET {} under the kept rule", i + 1),
        );
    }
    let r = s.get_keys().await;
    assert_rate_limited(&r, "GET 6 under the kept rule");
    assert_eq!(rate(&r, "kept rule").0, 5);
}

// ---------------------------------------------------------------- metering and shutdown

/// Every count reaches the store by the end of a graceful shutdown: the current period's, and
/// those of a period that ended before it.
#[tokio::test]
async fn graceful_shutdown_persists_every_count() {
    let server = TestServer::start().await;
    let (a, _, sa) = org_with_session(&server, "flusha").await;
    let (b, _, sb) = org_with_session(&server, "flushb").await;
    limits(&server, a, json!({"rateLimits": generous()})).await;
    limits(
        &server,
        b,
        json!({"callThreshold": {"calls": 1000, "periodSeconds": 60}, "rateLimits": generous()}),
    )
    .await;

    const K: i64 = 57;
    for i in 0..K {
        let r = if i % 3 == 0 {
            sa.authz("GET").await
        } else {
            sa.get_keys().await
        };
        ok(r, "org A");
    }
    for _ in 0..4 {
        ok(sb.get_keys().await, "org B, first minute");
    }
    server.clock.advance_secs(60);
    for _ in 0..9 {
        ok(sb.authz("POST").await, "org B, second minute");
    }
    assert_eq!(usage(&server, a).await.0, K);
    assert_eq!(usage(&server, b).await.0, 9);

    let dir = server.stop().await;
    // The clock restarts at T0: org A's hour and org B's first minute are current again.
    let server = TestServer::start_in(dir, |_| {}).await;
    assert_eq!(usage(&server, a).await.0, K, "org A's count survived");
    assert_eq!(
        usage(&server, b).await.0,
        4,
        "org B's first minute survived"
    );
    let hist_a = usage_view(&server, a).await["history"].clone();
    assert_eq!(
        hist_a,
        json!([{"periodSeconds": 3600, "periodStart": T0_SECS, "calls": K}]),
        "org A history"
    );
    let hist_b = usage_view(&server, b).await["history"].clone();
    assert_eq!(
        hist_b,
        json!([
            {"periodSeconds": 60, "periodStart": T0_SECS + 60, "calls": 9},
            {"periodSeconds": 60, "periodStart": T0_SECS, "calls": 4},
        ]),
        "org B history, newest first"
    );
}

// ---------------------------------------------------------------- /authz (§5)

/// No session, or one that is not a live session: 401 SESSION_NOT_VALID.
#[tokio::test]
async fn authz_without_a_live_session_is_401() {
    let server = TestServer::start().await;
    let (_org, _key, s) = org_with_session(&server, "authz401").await;
    let other_cookie = format!("XJSESSIONID={}", s.token);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("X-Original-Method", "GET")],
        vec![("Cookie", "JSESSIONID=not-a-session")],
        vec![("Cookie", "JSESSIONID=")],
        vec![("Cookie", "other=1; another=2")],
        vec![("JSessionID", "not-a-session")],
        vec![("Cookie", &other_cookie)],
    ];
    for headers in &cases {
        for method in [Method::GET, Method::POST] {
            let r = authz_with(&server.http, &server.base, method.clone(), headers).await;
            assert_refused(
                &r,
                StatusCode::UNAUTHORIZED,
                "SESSION_NOT_VALID",
                &format!("{method} {headers:?}"),
            );
            assert_eq!(r.header("x-keygate-code"), Some("SESSION_NOT_VALID"), "{r}");
            assert!(r.header("x-keygate-org-id").is_none(), "{r}");
        }
    }
    ok(s.authz("GET").await, "the real session still works");
}

/// 204 carries the org id, the admin's login name and the rate-limit headers; the session
/// can come as the cookie or as the `JSessionID` header, among other cookies.
#[tokio::test]
async fn authz_204_names_the_org_and_admin() {
    let server = TestServer::start().await;
    let (org, key, s) = org_with_session(&server, "authzok").await;
    limits(&server, org, json!({"rateLimits": generous()})).await;
    let r = s.authz("GET").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r}");
    assert_eq!(
        r.header("x-keygate-org-id"),
        Some(org.to_string().as_str()),
        "{r}"
    );
    assert_eq!(r.header("x-keygate-admin"), Some("full@authzok"), "{r}");
    assert!(r.header("x-keygate-code").is_none(), "{r}");
    rate(&r, "204");
    // The allowance goes to the proxy, never to a browser: no store, and no browser headers
    // (a 204 has nothing to sniff or frame). A refusal, which a proxy may hand to the
    // client, keeps them.
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r}");
    for h in [
        "x-frame-options",
        "content-security-policy",
        "x-content-type-options",
    ] {
        assert!(r.header(h).is_none(), "204 with {h}: {r}");
    }
    let refused = authz_with(&server.http, &server.base, Method::GET, &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused}");
    assert_eq!(
        refused.header("cache-control"),
        Some("no-store"),
        "{refused}"
    );
    assert_eq!(refused.header("x-frame-options"), Some("DENY"), "{refused}");
    assert_eq!(
        refused.header("x-content-type-options"),
        Some("nosniff"),
        "{refused}"
    );

    let among = format!("a=1; JSESSIONID={}; b=2", s.token);
    let via = [
        vec![
            ("JSessionID", s.token.as_str()),
            ("X-Original-Method", "GET"),
        ],
        vec![("jsessionid", s.token.as_str())],
        vec![("Cookie", among.as_str())],
    ];
    for headers in &via {
        let r = authz_with(&server.http, &server.base, Method::GET, headers).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{headers:?}: {r}");
        assert_eq!(r.header("x-keygate-org-id"), Some(org.to_string().as_str()));
    }

    // The view-only admin is named as such and makes read-only calls (§1): its writes are
    // refused here exactly as on the API.
    let v = must_login(&server, "view@authzok", &key).await;
    let r = v.authz("GET").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r}");
    assert_eq!(r.header("x-keygate-admin"), Some("view@authzok"), "{r}");
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = v.authz(method).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "NOT_AUTHORIZED", method);
        assert_eq!(r.header("x-keygate-code"), Some("NOT_AUTHORIZED"), "{r}");
    }
    // Envoy appends the original path to `/authz`.
    let r = authz_with(
        &server.http,
        &server.base,
        Method::DELETE,
        &[("JSessionID", s.token.as_str())],
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r}");
    let envoy = server
        .http
        .request(
            Method::POST,
            format!("{}/authz/api/v1/things?x=1", server.base),
        )
        .header("JSessionID", v.token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(envoy.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        envoy.headers().get("x-keygate-code").unwrap(),
        "NOT_AUTHORIZED"
    );
}

/// Decisions and key reads made at the same time for many sessions of different orgs (which
/// session and org reads serve in shared queries, `service::reads`): each gets its own org,
/// admin and key, and an unknown or ended session among them is refused.
#[tokio::test]
async fn concurrent_decisions_each_get_their_own_session() {
    let server = TestServer::start().await;
    let mut sessions = Vec::new();
    for i in 0..6 {
        let slug = format!("batch{i}");
        let (org, key, s) = org_with_session(&server, &slug).await;
        limits(&server, org, json!({"rateLimits": generous()})).await;
        sessions.push((org, format!("full@{slug}"), s, key));
    }
    // One session ended by logout: it must not be answered from its neighbours' reads.
    let ended = sessions.pop().expect("six sessions");
    let r = ended
        .2
        .call(Method::DELETE, "/api/v1/authenticatedSession", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "logout: {r}");

    let mut calls = Vec::new();
    for round in 0..12 {
        for (org, login, s, key) in &sessions {
            let (s, org, login, key) = (s.clone(), *org, login.clone(), key.clone());
            calls.push(tokio::spawn(async move {
                let r = s.authz("GET").await;
                assert_eq!(
                    r.status,
                    StatusCode::NO_CONTENT,
                    "{login} round {round}: {r}"
                );
                assert_eq!(
                    r.header("x-keygate-org-id"),
                    Some(org.to_string().as_str()),
                    "{r}"
                );
                assert_eq!(r.header("x-keygate-admin"), Some(login.as_str()), "{r}");
                let r = s.get_keys().await;
                assert_eq!(r.status, StatusCode::OK, "{login} round {round}: {r}");
                assert_eq!(r.body[0]["keyValue"], key.as_str(), "{login}: {r}");
            }));
        }
        let s = ended.2.clone();
        calls.push(tokio::spawn(async move {
            let r = s.authz("GET").await;
            assert_refused(
                &r,
                StatusCode::UNAUTHORIZED,
                "SESSION_NOT_VALID",
                "ended session",
            );
        }));
        let (http, base) = (server.http.clone(), server.base.clone());
        calls.push(tokio::spawn(async move {
            let cookie = format!("JSESSIONID=unknown-{round}");
            let r = authz_with(&http, &base, Method::GET, &[("Cookie", &cookie)]).await;
            assert_refused(
                &r,
                StatusCode::UNAUTHORIZED,
                "SESSION_NOT_VALID",
                "unknown session",
            );
        }));
    }
    for call in calls {
        call.await.expect("a decision task");
    }
}

/// R10 through `/authz`: once the subscription has expired, reads pass and writes get 403
/// SUBSCRIPTION_EXPIRED, whichever header carries the method (or the sub-request's own
/// method, as Envoy sends it); the API decides the same; renewal gives writes back.
#[tokio::test]
async fn authz_is_read_only_when_the_subscription_expired() {
    let server = TestServer::start().await;
    let (org, key, s) = org_with_session_sub(
        &server,
        "ro",
        json!({"enabled": true, "expiresAt": T0_SECS + 60}),
    )
    .await;
    limits(&server, org, json!({"rateLimits": generous()})).await;
    ok(s.authz("POST").await, "a write before expiry");

    server.clock.advance_secs(61);
    assert_eq!(
        provider_org(&server, org).await["subscription"]["state"],
        "EXPIRED"
    );
    for m in ["GET", "HEAD", "OPTIONS", "get"] {
        let r = s.authz(m).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{m}: {r}");
        assert_eq!(r.header("x-keygate-org-id"), Some(org.to_string().as_str()));
        assert_eq!(r.header("x-keygate-admin"), Some("full@ro"));
        rate(&r, m);
    }
    for m in ["POST", "PUT", "DELETE", "PATCH", "post"] {
        let r = s.authz(m).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED", m);
        assert_eq!(
            r.header("x-keygate-code"),
            Some("SUBSCRIPTION_EXPIRED"),
            "{r}"
        );
    }
    let cookie = format!("JSESSIONID={}", s.token);
    let fwd = |m: &'static str| {
        vec![
            ("Cookie", cookie.clone()),
            ("X-Forwarded-Method", m.to_owned()),
        ]
    };
    for (headers, expect) in [
        (fwd("GET"), true),
        (fwd("POST"), false),
        (fwd("DELETE"), false),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = authz_with(&server.http, &server.base, Method::GET, &h).await;
        if expect {
            assert_eq!(r.status, StatusCode::NO_CONTENT, "{h:?}: {r}");
        } else {
            assert_refused(
                &r,
                StatusCode::FORBIDDEN,
                "SUBSCRIPTION_EXPIRED",
                &format!("{h:?}"),
            );
        }
    }
    let jsid = [
        ("JSessionID", s.token.as_str()),
        ("X-Original-Method", "PUT"),
    ];
    let r = authz_with(&server.http, &server.base, Method::GET, &jsid).await;
    assert_refused(
        &r,
        StatusCode::FORBIDDEN,
        "SUBSCRIPTION_EXPIRED",
        "JSessionID header, PUT",
    );
    let own = [("Cookie", cookie.as_str())];
    for (method, expect) in [
        (Method::GET, true),
        (Method::POST, false),
        (Method::DELETE, false),
    ] {
        let r = authz_with(&server.http, &server.base, method.clone(), &own).await;
        if expect {
            assert_eq!(r.status, StatusCode::NO_CONTENT, "own method {method}: {r}");
        } else {
            assert_refused(
                &r,
                StatusCode::FORBIDDEN,
                "SUBSCRIPTION_EXPIRED",
                &format!("own method {method}"),
            );
        }
    }
    // The API decides the same.
    ok(s.get_keys().await, "API read while expired");
    let r = s
        .call(
            Method::POST,
            "/api/v1/auditlogEntryReport",
            Some(json!({"startTime": 0, "endTime": 1})),
        )
        .await;
    assert_refused(
        &r,
        StatusCode::FORBIDDEN,
        "SUBSCRIPTION_EXPIRED",
        "API write while expired",
    );

    let (status, body) = server
        .provider(
            Method::PUT,
            &format!("/provider/v1/orgs/{org}/subscription"),
            Some(json!({"enabled": true, "expiresAt": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "renew: {body}");
    let s = match api_login(&server, "full@ro", &key).await {
        Ok(fresh) => fresh,
        Err(r) => panic!("the same key logs in after renewal: {r}"),
    };
    ok(s.authz("POST").await, "a write after renewal");
}

/// R7 and R8 through `/authz`: a regenerated key ends its sessions at once; a disabled key
/// too, and its holders are told why at login; an org whose subscription is turned off
/// gets nothing.
#[tokio::test]
async fn authz_follows_key_changes_at_once() {
    let server = TestServer::start().await;
    let (org, key, s) = org_with_session(&server, "authzkey").await;
    limits(&server, org, json!({"rateLimits": generous()})).await;
    ok(s.authz("GET").await, "before the change");

    let admin = server.login("full@authzkey").await;
    let (status, body) = admin.regenerate().await;
    assert_eq!(status, StatusCode::OK, "regenerate: {body}");
    for m in ["GET", "POST"] {
        assert_refused(
            &s.authz(m).await,
            StatusCode::UNAUTHORIZED,
            "SESSION_NOT_VALID",
            &format!("old session, {m}, right after regenerate"),
        );
    }
    let old = api_login(&server, "full@authzkey", &key)
        .await
        .err()
        .expect("old key refused");
    assert_refused(
        &old,
        StatusCode::UNAUTHORIZED,
        "AUTHENTICATION_FAILED",
        "old key",
    );
    let key = admin.reveal().await;
    let s = must_login(&server, "full@authzkey", &key).await;
    ok(s.authz("GET").await, "a session with the new key");

    // R8: the provider disables the key.
    let (status, body) = server
        .provider(
            Method::POST,
            &format!("/provider/v1/orgs/{org}/apiKey/disable"),
            Some(json!({"reason": "TERMS_VIOLATION"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "disable: {body}");
    assert_refused(
        &s.authz("GET").await,
        StatusCode::UNAUTHORIZED,
        "SESSION_NOT_VALID",
        "session after disable",
    );
    let r = api_login(&server, "full@authzkey", &key)
        .await
        .err()
        .expect("refused");
    assert_refused(
        &r,
        StatusCode::FORBIDDEN,
        "API_KEY_DISABLED",
        "login after disable",
    );
    assert!(r.message().contains("TERMS_VIOLATION"), "{r}");
    let (status, body) = server
        .provider(
            Method::POST,
            &format!("/provider/v1/orgs/{org}/apiKey/enable"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "enable: {body}");
    let s = must_login(&server, "full@authzkey", &key).await;
    ok(s.authz("GET").await, "after re-enable");

    // R10a: the subscription is turned off.
    let (status, body) = server
        .provider(
            Method::PUT,
            &format!("/provider/v1/orgs/{org}/subscription"),
            Some(json!({"enabled": false, "expiresAt": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "turn off: {body}");
    for m in ["GET", "POST"] {
        let r = s.authz(m).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "NO_API_SUBSCRIPTION", m);
        assert_eq!(
            r.header("x-keygate-code"),
            Some("NO_API_SUBSCRIPTION"),
            "{r}"
        );
    }
}
