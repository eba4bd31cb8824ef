//! The Zscaler-compatible cloud service API (PRODUCT.md §3.1–§3.4): sessions with the
//! obfuscated key, the `/apiKeys` endpoints, the audit log report, and the errors, over real
//! HTTP against a test server whose clock only moves when a test moves it.
//!
//! Rate limits and the `x-ratelimit-*` headers of §3.4 are not built yet and not tested here.

use keygate::clock::Clock;
use keygate::domain::key::ApiKeyValue;
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap, RETRY_AFTER, SET_COOKIE};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

// ---------------------------------------------------------------- helpers (also used by race.rs)

/// The session body of §3.1, byte for byte.
pub(crate) const SESSION_BODY: &str = r#"{"authType":"ADMIN_LOGIN","obfuscateApiKey":false,"passwordExpiryTime":0,"passwordExpiryDays":0}"#;

/// The obfuscation of §3.1 written independently of the server, the way the Python SDKs do
/// it: `n` = the last six digits of the timestamp as text, `r` = `int(n) >> 1` zero-padded to
/// six digits; `key[d]` for each digit `d` of `n`, then `key[d + 2]` for each digit of `r`.
pub(crate) fn obfuscate(key: &str, timestamp_ms: i64) -> String {
    let key: Vec<char> = key.chars().collect();
    let n = format!("{:06}", timestamp_ms.rem_euclid(1_000_000));
    let r = format!("{:06}", n.parse::<u64>().unwrap() >> 1);
    let digit = |c: char| c.to_digit(10).unwrap() as usize;
    n.chars()
        .map(|d| key[digit(d)])
        .chain(r.chars().map(|d| key[digit(d) + 2]))
        .collect()
}

pub(crate) fn now_ms(server: &TestServer) -> i64 {
    server.clock.now().0
}

pub(crate) fn login_body(key: &str, login: &str, password: &str, timestamp: Value) -> Value {
    json!({"apiKey": key, "username": login, "password": password, "timestamp": timestamp})
}

/// A response with everything a test may look at.
pub(crate) struct Raw {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Raw {
    pub(crate) async fn of(resp: reqwest::Response) -> Raw {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        Raw {
            status,
            headers,
            text,
        }
    }
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }
    pub(crate) fn header(&self, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn content_type(&self) -> &str {
        self.header(CONTENT_TYPE).unwrap_or("")
    }
}

/// An error response as §3.4 describes it: status, JSON content type, code and a message.
pub(crate) fn assert_api_error(raw: &Raw, status: StatusCode, code: &str) {
    assert_eq!(raw.status, status, "body: {}", raw.text);
    assert!(
        raw.content_type().starts_with("application/json"),
        "{status} {code}: Content-Type {:?}",
        raw.content_type()
    );
    let body = raw.json();
    assert_eq!(body["code"], code, "body: {}", raw.text);
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {}",
        raw.text
    );
}

/// A cloud service API session: the `JSESSIONID` value, sent as a cookie.
#[derive(Clone)]
pub(crate) struct ApiClient {
    pub http: Client,
    pub base: String,
    pub token: String,
}

impl ApiClient {
    pub(crate) async fn raw(&self, method: Method, path: &str, body: Option<Value>) -> Raw {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header(COOKIE, format!("JSESSIONID={}", self.token));
        if let Some(b) = body {
            req = req.json(&b);
        }
        Raw::of(req.send().await.expect("request")).await
    }
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let raw = self.raw(method, path, body).await;
        let value = if raw.text.is_empty() {
            Value::Null
        } else {
            raw.json()
        };
        (raw.status, value)
    }
    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }
    /// Asserts the session is over: 401 `SESSION_NOT_VALID` on a read.
    pub(crate) async fn assert_ended(&self, why: &str) {
        for path in ["/api/v1/apiKeys", "/api/v1/authenticatedSession"] {
            let raw = self.raw(Method::GET, path, None).await;
            assert_eq!(
                raw.status,
                StatusCode::UNAUTHORIZED,
                "{why}: GET {path}: {}",
                raw.text
            );
            assert_api_error(&raw, StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID");
        }
    }
    /// Asserts the session is alive and returns the key list.
    pub(crate) async fn assert_alive(&self, why: &str) -> Value {
        let (status, body) = self.get("/api/v1/apiKeys").await;
        assert_eq!(status, StatusCode::OK, "{why}: {body}");
        body
    }
}

pub(crate) async fn post_login(server: &TestServer, path: &str, body: &Value) -> Raw {
    Raw::of(
        server
            .http
            .post(server.url(path))
            .json(body)
            .send()
            .await
            .expect("login request"),
    )
    .await
}

/// The session id from a login response's `Set-Cookie`, after checking its exact form.
pub(crate) fn session_from_set_cookie(raw: &Raw) -> String {
    let cookies: Vec<&str> = raw
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies.len(), 1, "one Set-Cookie: {cookies:?}");
    let parts: Vec<&str> = cookies[0].split("; ").collect();
    assert_eq!(
        &parts[1..],
        &["Path=/", "HttpOnly"],
        "Set-Cookie attributes (no Secure over http): {}",
        cookies[0]
    );
    let id = parts[0]
        .strip_prefix("JSESSIONID=")
        .unwrap_or_else(|| panic!("JSESSIONID cookie: {}", cookies[0]));
    assert!(
        id.len() >= 22
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "session id should be ≥128 bits of base64url: {id:?}"
    );
    id.to_owned()
}

/// Logs in to the cloud service API on `path` with the key obfuscated for `timestamp_ms`.
pub(crate) async fn api_login_at(
    server: &TestServer,
    path: &str,
    login: &str,
    key: &str,
    timestamp_ms: i64,
) -> Result<ApiClient, Raw> {
    let body = login_body(
        &obfuscate(key, timestamp_ms),
        login,
        PASSWORD,
        json!(timestamp_ms),
    );
    let raw = post_login(server, path, &body).await;
    if raw.status != StatusCode::OK {
        return Err(raw);
    }
    assert_eq!(raw.text, SESSION_BODY);
    Ok(ApiClient {
        http: server.http.clone(),
        base: server.base.clone(),
        token: session_from_set_cookie(&raw),
    })
}

/// Logs in on `/api/v1/authenticatedSession` at the server's time; panics on failure.
pub(crate) async fn api_login(server: &TestServer, login: &str, key: &str) -> ApiClient {
    api_login_at(
        server,
        "/api/v1/authenticatedSession",
        login,
        key,
        now_ms(server),
    )
    .await
    .unwrap_or_else(|r| panic!("API login {login}: {} {}", r.status, r.text))
}

/// Asserts a login with these values fails with 401 `AUTHENTICATION_FAILED`; returns the body.
async fn assert_login_fails(server: &TestServer, login: &str, key: &str, why: &str) -> String {
    let raw = api_login_at(
        server,
        "/api/v1/authenticatedSession",
        login,
        key,
        now_ms(server),
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("{why}: login should fail"));
    assert_api_error(&raw, StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED");
    assert!(
        raw.header(SET_COOKIE).is_none(),
        "{why}: no cookie on failure"
    );
    raw.text
}

/// A server whose login throttle does not get in the way of tests about something else.
async fn start_lenient() -> TestServer {
    TestServer::start_with(|c| {
        c.login_throttle.max_failures_per_login_addr = 1000;
        c.login_throttle.max_failures_per_addr = 1000;
        c.login_throttle.login_under_attack = 1000;
    })
    .await
}

/// Creates an org as [`TestServer::create_org`] does, with the §3.4 rate limits lifted: these
/// tests are about other things, and their clock stands still.
pub(crate) async fn create_org(server: &TestServer, slug: &str) -> Value {
    let org = server.create_org(slug).await;
    lift_rate_limits(server, org_id(&org)).await;
    org
}

/// Sets the org's rate limits (§3.4) far out of reach.
pub(crate) async fn lift_rate_limits(server: &TestServer, org: i64) {
    let (status, body) = server
        .provider(
            Method::PUT,
            &format!("/provider/v1/orgs/{org}/limits"),
            Some(json!({
                "callThreshold": null,
                "rateLimits": [
                    {"methods": ["GET", "POST", "PUT", "DELETE"], "limit": 1_000_000, "periodSeconds": 1},
                ],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "lift rate limits: {body}");
}

pub(crate) fn org_id(org: &Value) -> i64 {
    org["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("org id in {org}"))
}

fn admin_id(org: &Value, login: &str) -> i64 {
    org["admins"]
        .as_array()
        .expect("admins")
        .iter()
        .find(|a| a["loginName"] == login)
        .and_then(|a| a["id"].as_i64())
        .unwrap_or_else(|| panic!("admin {login} in {org}"))
}

fn is_key_value(v: &str) -> bool {
    v.len() == 12 && v.bytes().all(|b| b.is_ascii_alphanumeric())
}

async fn set_subscription(server: &TestServer, org: i64, enabled: bool, expires_at: Option<i64>) {
    let (status, body) = server
        .provider(
            Method::PUT,
            &format!("/provider/v1/orgs/{org}/subscription"),
            Some(json!({"enabled": enabled, "expiresAt": expires_at})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "subscription: {body}");
}

async fn provider_disable(server: &TestServer, org: i64) {
    let (status, body) = server
        .provider(
            Method::POST,
            &format!("/provider/v1/orgs/{org}/apiKey/disable"),
            Some(json!({"reason": "TERMS_VIOLATION"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "disable: {body}");
}

async fn provider_enable(server: &TestServer, org: i64) {
    let (status, body) = server
        .provider(
            Method::POST,
            &format!("/provider/v1/orgs/{org}/apiKey/enable"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "enable: {body}");
}

/// Checks every field of the §3.2 key object.
fn assert_key_object(server: &TestServer, k: &Value, value: &str, active: bool) {
    let obj = k.as_object().unwrap_or_else(|| panic!("key object: {k}"));
    for field in [
        "id",
        "keyValue",
        "permissions",
        "enabled",
        "status",
        "disabledReason",
        "lastModifiedTime",
        "lastModifiedBy",
        "partner",
        "partnerUrl",
        "baseUrl",
    ] {
        assert!(obj.contains_key(field), "{field} missing from {k}");
    }
    assert!(k["id"].as_i64().is_some_and(|i| i > 0), "id: {k}");
    assert_eq!(k["keyValue"], value, "the full value: {k}");
    if active {
        assert_eq!(k["permissions"], json!(["READ", "WRITE"]));
        assert_eq!(k["enabled"], true);
        assert_eq!(k["status"], "ENABLED");
        assert_eq!(k["disabledReason"], Value::Null);
        // keygate's own field, only with a provider's note (not in §3.2's object).
        assert!(!obj.contains_key("disabledNote"), "no note: {k}");
    }
    // Epoch seconds, not ms: within a day of the test clock.
    let t = k["lastModifiedTime"].as_i64().expect("lastModifiedTime");
    assert!(
        (now_ms(server) / 1000 - t).abs() < 86_400,
        "lastModifiedTime in seconds: {t}"
    );
    assert!(k["lastModifiedBy"]["id"].is_i64(), "lastModifiedBy.id: {k}");
    assert!(
        k["lastModifiedBy"]["name"].is_string(),
        "lastModifiedBy.name: {k}"
    );
    assert_eq!(k["partner"], Value::Null);
    assert_eq!(k["partnerUrl"], Value::Null);
    assert_eq!(k["baseUrl"], format!("{}/api/v1", server.base));
}

/// The only element of a `GET /api/v1/apiKeys` answer.
fn only_key(list: &Value) -> &Value {
    let items = list.as_array().unwrap_or_else(|| panic!("array: {list}"));
    assert_eq!(items.len(), 1, "one key: {list}");
    &items[0]
}

// ---------------------------------------------------------------- obfuscation

#[test]
fn obfuscation_matches_the_spec_example_and_the_server() {
    assert_eq!(obfuscate("ABCDEFGHIJKL", 1_700_000_123_456), "BCDEFGCIDJEK");
    // Leading zeros of n and r are digits too.
    assert_eq!(obfuscate("ABCDEFGHIJKL", 1_700_000_000_001), "AAAAABCCCCCC");
    assert_eq!(obfuscate("ABCDEFGHIJKL", 1_700_000_999_999), "JJJJJJGLLLLL");
    let keys = ["ABCDEFGHIJKL", "a1B2c3D4e5F6", "zZ09yY18xX27"];
    let mut ts = T0_SECS * 1000;
    for i in 0..5_000i64 {
        ts += 7_919 + i * 13;
        for key in keys {
            let server_side = ApiKeyValue::parse("k", key).unwrap().obfuscate(ts);
            assert_eq!(
                std::str::from_utf8(&server_side[..]).unwrap(),
                obfuscate(key, ts),
                "{key} at {ts}"
            );
        }
    }
}

// ---------------------------------------------------------------- §3.1 login and sessions

#[tokio::test]
async fn login_on_both_paths_with_number_and_string_timestamps() {
    let server = TestServer::start().await;
    create_org(&server, "login").await;
    let key = server.login("full@login").await.reveal().await;
    let mut tokens = Vec::new();
    for (i, path) in ["/api/v1/authenticatedSession", "/api/v1/auth"]
        .into_iter()
        .enumerate()
    {
        for as_string in [false, true] {
            let ts = now_ms(&server) + 123_457 * (i as i64 + 1) - 250_000 * as_string as i64;
            let timestamp = if as_string {
                json!(ts.to_string())
            } else {
                json!(ts)
            };
            let raw = post_login(
                &server,
                path,
                &login_body(&obfuscate(&key, ts), "full@login", PASSWORD, timestamp),
            )
            .await;
            assert_eq!(
                raw.status,
                StatusCode::OK,
                "{path} string={as_string}: {}",
                raw.text
            );
            assert_eq!(raw.text, SESSION_BODY, "{path}: body exactly");
            assert!(raw.content_type().starts_with("application/json"));
            assert_eq!(
                raw.json(),
                json!({"authType":"ADMIN_LOGIN","obfuscateApiKey":false,"passwordExpiryTime":0,"passwordExpiryDays":0})
            );
            tokens.push(session_from_set_cookie(&raw));
        }
    }
    let mut unique = tokens.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), tokens.len(), "session ids are fresh");
    // Every session works on both status paths.
    for token in &tokens {
        let s = ApiClient {
            http: server.http.clone(),
            base: server.base.clone(),
            token: token.clone(),
        };
        for path in ["/api/v1/authenticatedSession", "/api/v1/auth"] {
            let raw = s.raw(Method::GET, path, None).await;
            assert_eq!(raw.status, StatusCode::OK, "GET {path}: {}", raw.text);
            assert_eq!(raw.text, SESSION_BODY);
        }
    }

    // Only hashes of the session ids are stored: not in the table, not anywhere in the files.
    let rows = Db::open(server.dir.path())
        .await
        .strings("SELECT id_hash FROM api_sessions", &[])
        .await;
    assert_eq!(rows.len(), tokens.len(), "one row per session");
    for stored in &rows {
        for t in &tokens {
            assert!(!stored.contains(t.as_str()), "raw session id stored");
        }
    }
    for file in ["keygate.db", "keygate.db-wal"] {
        let path = server.dir.path().join(file);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        for t in &tokens {
            assert!(
                !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                "raw session id found in {file}"
            );
        }
    }
}

#[tokio::test]
async fn session_by_cookie_or_jsessionid_header_and_status_checks() {
    let server = TestServer::start().await;
    create_org(&server, "sess").await;
    let key = server.login("full@sess").await.reveal().await;
    let s = api_login(&server, "full@sess", &key).await;
    for path in ["/api/v1/authenticatedSession", "/api/v1/auth"] {
        // The cookie.
        let raw = s.raw(Method::GET, path, None).await;
        assert_eq!(raw.status, StatusCode::OK, "{path}: {}", raw.text);
        assert_eq!(raw.text, SESSION_BODY);
        // The cookie among others, as a browser-like client sends it.
        let raw = Raw::of(
            server
                .http
                .get(server.url(path))
                .header(COOKIE, format!("a=b; JSESSIONID={}; c=d", s.token))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            raw.status,
            StatusCode::OK,
            "{path} among cookies: {}",
            raw.text
        );
        // The JSessionID header, no cookie.
        let raw = Raw::of(
            server
                .http
                .get(server.url(path))
                .header("JSessionID", &s.token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(raw.status, StatusCode::OK, "{path} by header: {}", raw.text);
        assert_eq!(raw.text, SESSION_BODY);
        // Key endpoint by header too.
        let raw = Raw::of(
            server
                .http
                .get(server.url("/api/v1/apiKeys"))
                .header("JSessionID", &s.token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            raw.status,
            StatusCode::OK,
            "apiKeys by header: {}",
            raw.text
        );
        assert_eq!(only_key(&raw.json())["keyValue"], key.as_str());
        // No session at all, or one that does not exist.
        let none = Raw::of(server.http.get(server.url(path)).send().await.unwrap()).await;
        assert_api_error(&none, StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID");
        let bogus = ApiClient {
            token: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            ..s.clone()
        };
        let raw = bogus.raw(Method::GET, path, None).await;
        assert_api_error(&raw, StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID");
        // One character off the live session, which this node has just cached by its tag.
        let mut near = s.token.clone();
        let last = near.pop().unwrap();
        near.push(if last == 'A' { 'B' } else { 'A' });
        let near = ApiClient {
            token: near,
            ..s.clone()
        };
        let raw = near.raw(Method::GET, path, None).await;
        assert_api_error(&raw, StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID");
        let raw = s.raw(Method::GET, path, None).await;
        assert_eq!(raw.status, StatusCode::OK, "the live session: {}", raw.text);
        let raw = Raw::of(
            server
                .http
                .get(server.url(path))
                .header("JSessionID", "nonsense")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_api_error(&raw, StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID");
    }
    // Without a session, the key endpoints are closed too.
    let raw = Raw::of(
        server
            .http
            .get(server.url("/api/v1/apiKeys"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_api_error(&raw, StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID");
}

#[tokio::test]
async fn behind_an_https_public_url_the_cookie_is_secure() {
    let server = TestServer::start_with(|c| {
        c.public_base_url = Some("https://keygate.example/".into());
    })
    .await;
    create_org(&server, "tls").await;
    let key = server.login("full@tls").await.reveal().await;
    let ts = now_ms(&server);
    let raw = post_login(
        &server,
        "/api/v1/auth",
        &login_body(&obfuscate(&key, ts), "full@tls", PASSWORD, json!(ts)),
    )
    .await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text);
    let cookie = raw.header(SET_COOKIE).expect("Set-Cookie");
    let parts: Vec<&str> = cookie.split("; ").collect();
    assert!(parts[0].starts_with("JSESSIONID="), "{cookie}");
    assert_eq!(&parts[1..], &["Path=/", "HttpOnly", "Secure"], "{cookie}");
    let s = ApiClient {
        http: server.http.clone(),
        base: server.base.clone(),
        token: parts[0]["JSESSIONID=".len()..].to_owned(),
    };
    let list = s.assert_alive("https").await;
    assert_eq!(only_key(&list)["baseUrl"], "https://keygate.example/api/v1");
}

#[tokio::test]
async fn logout_on_every_path_ends_the_session() {
    let server = TestServer::start().await;
    create_org(&server, "out").await;
    let key = server.login("full@out").await.reveal().await;
    for path in [
        "/api/v1/authenticatedSession",
        "/api/v1/auth",
        "/authenticatedSession",
        "/auth",
    ] {
        let s = api_login(&server, "full@out", &key).await;
        let other = api_login(&server, "full@out", &key).await;
        s.assert_alive(path).await;
        let raw = s.raw(Method::DELETE, path, None).await;
        assert_eq!(
            raw.status,
            StatusCode::NO_CONTENT,
            "DELETE {path}: {}",
            raw.text
        );
        s.assert_ended(&format!("after DELETE {path}")).await;
        // Only that session ended.
        other
            .assert_alive(&format!("other session after DELETE {path}"))
            .await;
        // By header as well.
        let raw = Raw::of(
            server
                .http
                .delete(server.url(path))
                .header("JSessionID", &other.token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            raw.status,
            StatusCode::NO_CONTENT,
            "DELETE {path} by header"
        );
        other
            .assert_ended(&format!("after DELETE {path} by header"))
            .await;
    }
    // A logout without a session is harmless.
    let raw = Raw::of(
        server
            .http
            .delete(server.url("/api/v1/authenticatedSession"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(raw.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn every_failed_login_gets_the_same_answer() {
    let server = start_lenient().await;
    let org = create_org(&server, "same").await;
    create_org(&server, "other").await;
    let console = server.login("full@same").await;
    let key = console.reveal().await;
    let other_key = server.login("full@other").await.reveal().await;
    let now = now_ms(&server);
    let mut bodies: Vec<(&str, String)> = Vec::new();

    bodies.push((
        "unknown login",
        assert_login_fails(&server, "nobody@same", &key, "unknown login").await,
    ));
    let raw = post_login(
        &server,
        "/api/v1/authenticatedSession",
        &login_body(
            &obfuscate(&key, now),
            "full@same",
            "wrong-password-123",
            json!(now),
        ),
    )
    .await;
    assert_api_error(&raw, StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED");
    bodies.push(("wrong password", raw.text));
    bodies.push((
        "wrong key",
        assert_login_fails(&server, "full@same", "WrongKey1234", "wrong key").await,
    ));
    bodies.push((
        "another org's key",
        assert_login_fails(&server, "full@same", &other_key, "another org's key").await,
    ));
    // The key itself, not obfuscated.
    assert_ne!(obfuscate(&key, now), key);
    let raw = post_login(
        &server,
        "/api/v1/auth",
        &login_body(&key, "full@same", PASSWORD, json!(now)),
    )
    .await;
    assert_api_error(&raw, StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED");
    bodies.push(("plain key", raw.text));
    // Obfuscated correctly, but for a timestamp outside the ±10 min window.
    for (label, ts) in [
        ("stale past", now - 600_001),
        ("stale future", now + 600_001),
        ("an hour ago", now - 3_600_000),
        ("zero", 0),
    ] {
        let raw = api_login_at(&server, "/api/v1/auth", "full@same", &key, ts)
            .await
            .err()
            .unwrap_or_else(|| panic!("{label}: should fail"));
        assert_api_error(&raw, StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED");
        bodies.push((label, raw.text));
    }
    // Inside the window it works, either way.
    for ts in [now - 9 * 60_000, now + 9 * 60_000, now - 1, now + 1] {
        let s = api_login_at(&server, "/api/v1/auth", "full@same", &key, ts)
            .await
            .unwrap_or_else(|r| panic!("ts {ts} inside the window: {} {}", r.status, r.text));
        s.assert_alive("inside the window").await;
    }
    // An org without a key.
    let (status, _) = console.delete().await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    bodies.push((
        "no key",
        assert_login_fails(&server, "full@same", &key, "org without a key").await,
    ));
    let (first_label, first) = &bodies[0];
    for (label, body) in &bodies {
        assert_eq!(
            body, first,
            "{label} vs {first_label}: byte-identical bodies"
        );
    }
    // Every failure is audited (R11), with the org when the login exists.
    let (status, audit) = server
        .provider(
            Method::GET,
            &format!("/provider/v1/orgs/{}/audit?pageSize=1000", org_id(&org)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let failures = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "LOGIN_FAILURE" || r["action"] == "API_KEY_GUESS")
        .count();
    assert!(
        failures >= bodies.len() - 1,
        "LOGIN_FAILURE and API_KEY_GUESS records: {failures}"
    );
}

#[tokio::test]
async fn disabled_key_and_missing_subscription_are_told_only_to_holders_of_all_three() {
    let server = start_lenient().await;
    let org = create_org(&server, "dis").await;
    let id = org_id(&org);
    let key = server.login("full@dis").await.reveal().await;
    let s = api_login(&server, "full@dis", &key).await;

    provider_disable(&server, id).await;
    s.assert_ended("the provider disabled the key (R7/R8)")
        .await;
    let raw = api_login_at(
        &server,
        "/api/v1/authenticatedSession",
        "full@dis",
        &key,
        now_ms(&server),
    )
    .await
    .err()
    .expect("login with a disabled key is refused");
    assert_api_error(&raw, StatusCode::FORBIDDEN, "API_KEY_DISABLED");
    let message = raw.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with("The API key was disabled by your service provider"),
        "{message}"
    );
    assert!(raw.header(SET_COOKIE).is_none());
    // Missing any one of the three: the uniform 401, nothing about the key.
    assert_login_fails(&server, "full@dis", "WrongKey1234", "disabled, wrong key").await;
    assert_login_fails(&server, "nobody@dis", &key, "disabled, unknown login").await;
    let now = now_ms(&server);
    let raw = post_login(
        &server,
        "/api/v1/auth",
        &login_body(
            &obfuscate(&key, now),
            "full@dis",
            "wrong-password-123",
            json!(now),
        ),
    )
    .await;
    assert_api_error(&raw, StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED");
    provider_enable(&server, id).await;
    s.assert_ended("a session ended by a disable stays ended")
        .await;
    let s = api_login(&server, "full@dis", &key).await;
    s.assert_alive("re-enabled").await;

    // The subscription turned off.
    set_subscription(&server, id, false, None).await;
    let raw = s.raw(Method::GET, "/api/v1/apiKeys", None).await;
    assert!(
        matches!(raw.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
        "no API access without a subscription: {} {}",
        raw.status,
        raw.text
    );
    let raw = api_login_at(&server, "/api/v1/auth", "full@dis", &key, now_ms(&server))
        .await
        .err()
        .expect("login without a subscription is refused");
    assert_api_error(&raw, StatusCode::FORBIDDEN, "NO_API_SUBSCRIPTION");
    let now = now_ms(&server);
    let raw = post_login(
        &server,
        "/api/v1/auth",
        &login_body(
            &obfuscate(&key, now),
            "full@dis",
            "wrong-password-123",
            json!(now),
        ),
    )
    .await;
    assert_api_error(&raw, StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED");
    assert_login_fails(
        &server,
        "full@dis",
        "WrongKey1234",
        "no subscription, wrong key",
    )
    .await;
    set_subscription(&server, id, true, None).await;
    api_login(&server, "full@dis", &key)
        .await
        .assert_alive("subscription back on")
        .await;
}

// ---------------------------------------------------------------- throttling

fn assert_throttled(raw: &Raw) -> u64 {
    assert_api_error(raw, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED");
    let secs: u64 = raw
        .header(RETRY_AFTER)
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After is an integer");
    assert_eq!(
        raw.json()["Retry-After"],
        format!("{secs} seconds"),
        "body: {}",
        raw.text
    );
    assert!(raw.header(SET_COOKIE).is_none());
    secs
}

#[tokio::test]
async fn repeated_failures_for_a_login_are_throttled_until_the_window_passes() {
    let server = TestServer::start().await;
    create_org(&server, "thr").await;
    let key = server.login("full@thr").await.reveal().await;
    for i in 0..5 {
        assert_login_fails(&server, "full@thr", "WrongKey1234", &format!("failure {i}")).await;
    }
    // Now even the right key, login and password are turned away, on both paths.
    for path in ["/api/v1/authenticatedSession", "/api/v1/auth"] {
        let raw = api_login_at(&server, path, "full@thr", &key, now_ms(&server))
            .await
            .err()
            .expect("throttled");
        let secs = assert_throttled(&raw);
        assert!((1..=300).contains(&secs), "Retry-After {secs}");
    }
    // The login name is matched without regard to case.
    let raw = api_login_at(&server, "/api/v1/auth", "FULL@THR", &key, now_ms(&server))
        .await
        .err()
        .expect("throttled whatever the case");
    assert_throttled(&raw);
    // Another admin from the same address is not locked out by these five.
    api_login(&server, "view@thr", &key)
        .await
        .assert_alive("another login")
        .await;
    // The wait counts down with the clock.
    server.clock.advance_secs(200);
    let raw = api_login_at(&server, "/api/v1/auth", "full@thr", &key, now_ms(&server))
        .await
        .err()
        .expect("still throttled");
    let secs = assert_throttled(&raw);
    assert!((1..=100).contains(&secs), "Retry-After after 200 s: {secs}");
    server.clock.advance_secs(secs as i64);
    api_login(&server, "full@thr", &key)
        .await
        .assert_alive("after the window")
        .await;
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_throttled() {
    let server = TestServer::start().await;
    create_org(&server, "addr").await;
    let key = server.login("full@addr").await.reveal().await;
    // 20 failures under 20 different names (each below the per-login limit).
    for i in 0..20 {
        assert_login_fails(&server, &format!("nobody{i}@addr"), &key, "spray").await;
    }
    let raw = api_login_at(&server, "/api/v1/auth", "full@addr", &key, now_ms(&server))
        .await
        .err()
        .expect("the address is throttled");
    let secs = assert_throttled(&raw);
    assert!((1..=300).contains(&secs));
    server.clock.advance_secs(301);
    api_login(&server, "full@addr", &key)
        .await
        .assert_alive("after the window")
        .await;
}

// ---------------------------------------------------------------- idle and lifetime

#[tokio::test]
async fn sessions_end_after_five_idle_minutes_and_activity_keeps_them() {
    let server = TestServer::start().await;
    create_org(&server, "idle").await;
    let key = server.login("full@idle").await.reveal().await;
    let s = api_login(&server, "full@idle", &key).await;
    let idle = api_login(&server, "full@idle", &key).await;
    // Activity at +200 s, +499 s, +798 s: never 300 s idle.
    for step in [200, 299, 299] {
        server.clock.advance_secs(step);
        let raw = s
            .raw(Method::GET, "/api/v1/authenticatedSession", None)
            .await;
        assert_eq!(
            raw.status,
            StatusCode::OK,
            "active session after {step} s: {}",
            raw.text
        );
    }
    // The other one has been idle all along.
    idle.assert_ended("idle for 798 s").await;
    server.clock.advance_secs(301);
    s.assert_ended("idle for 301 s").await;
    // A fresh one lives, and dies after 301 s of nothing.
    let fresh = api_login(&server, "full@idle", &key).await;
    server.clock.advance_secs(290);
    fresh.assert_alive("idle for 290 s").await;
    server.clock.advance_secs(301);
    fresh.assert_ended("idle for 301 s").await;
}

#[tokio::test]
async fn sessions_end_after_the_absolute_lifetime_even_when_active() {
    let server = TestServer::start_with(|c| c.api_max_lifetime_secs = 600).await;
    create_org(&server, "life").await;
    let key = server.login("full@life").await.reveal().await;
    let s = api_login(&server, "full@life", &key).await;
    for step in [250, 250, 99] {
        server.clock.advance_secs(step);
        s.assert_alive("within the lifetime").await;
    }
    server.clock.advance_secs(2);
    s.assert_ended("601 s after login").await;
    api_login(&server, "full@life", &key)
        .await
        .assert_alive("a new session")
        .await;
}

// ---------------------------------------------------------------- §3.2 key endpoints

#[tokio::test]
async fn key_endpoints_view_edit_regenerate_delete() {
    let server = start_lenient().await;
    let org = create_org(&server, "keys").await;
    let full_id = admin_id(&org, "full@keys");
    let console = server.login("full@keys").await;
    let key = console.reveal().await;
    let api = api_login(&server, "full@keys", &key).await;

    let (status, list) = api.get("/api/v1/apiKeys").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let k = only_key(&list).clone();
    assert_key_object(&server, &k, &key, true);
    assert_eq!(
        k["lastModifiedTime"], T0_SECS,
        "provisioned at org creation"
    );
    let id = k["id"].as_i64().unwrap();
    for q in [
        "?includePartnerKeys=true",
        "?includePartnerKey=true",
        "?includePartnerKeys=false",
    ] {
        let (status, body) = api.get(&format!("/api/v1/apiKeys{q}")).await;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
        assert_eq!(body, list, "{q}");
    }
    let (status, one) = api.get(&format!("/api/v1/apiKeys/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, k);
    // The list is answered before the router (`http::dispatch`), one key through it: the
    // same headers either way (a key value is never cached; the rate-limit headers).
    let listed = api.raw(Method::GET, "/api/v1/apiKeys", None).await;
    let routed = api
        .raw(Method::GET, &format!("/api/v1/apiKeys/{id}"), None)
        .await;
    for (what, raw) in [("list", &listed), ("one", &routed)] {
        assert_eq!(raw.status, StatusCode::OK, "{what}: {}", raw.text);
        assert!(raw.content_type().starts_with("application/json"), "{what}");
        assert_eq!(raw.header("cache-control"), Some("no-store"), "{what}");
        assert_eq!(
            raw.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(raw.header("x-frame-options"), Some("DENY"), "{what}");
        for h in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            let n = raw.header(h).unwrap_or_else(|| panic!("{what}: no {h}"));
            assert!(n.parse::<u64>().is_ok(), "{what}: {h} = {n}");
        }
    }
    assert_eq!(listed.json(), serde_json::json!([routed.json()]));

    // Wrong ids.
    let raw = api
        .raw(Method::GET, &format!("/api/v1/apiKeys/{}", id + 1), None)
        .await;
    assert_api_error(&raw, StatusCode::NOT_FOUND, "NOT_FOUND");
    let raw = api
        .raw(
            Method::PUT,
            &format!("/api/v1/apiKeys/{}", id + 1),
            Some(json!({"keyValue": "Another12345"})),
        )
        .await;
    assert_api_error(&raw, StatusCode::NOT_FOUND, "NOT_FOUND");
    let raw = api
        .raw(
            Method::POST,
            &format!("/api/v1/apiKeys/{}/regenerate", id + 1),
            None,
        )
        .await;
    assert_api_error(&raw, StatusCode::NOT_FOUND, "NOT_FOUND");
    let raw = api
        .raw(Method::DELETE, &format!("/api/v1/apiKeys/{}", id + 1), None)
        .await;
    assert_api_error(&raw, StatusCode::NOT_FOUND, "NOT_FOUND");

    // Another org's key, by its id: as if it did not exist.
    create_org(&server, "neighbour").await;
    let neighbour = server.login("full@neighbour").await;
    let (_, theirs) = neighbour.key().await;
    let theirs = theirs["id"].as_i64().unwrap();
    assert_ne!(theirs, id);
    for (method, path, body) in [
        (Method::GET, format!("/api/v1/apiKeys/{theirs}"), None),
        (
            Method::PUT,
            format!("/api/v1/apiKeys/{theirs}"),
            Some(json!({"keyValue": "Neighbour123"})),
        ),
        (
            Method::POST,
            format!("/api/v1/apiKeys/{theirs}/regenerate"),
            None,
        ),
        (Method::DELETE, format!("/api/v1/apiKeys/{theirs}"), None),
    ] {
        let raw = api.raw(method.clone(), &path, body).await;
        assert_eq!(
            raw.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            raw.text
        );
        assert_api_error(&raw, StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    let neighbour_key = neighbour.reveal().await;
    api_login(&server, "full@neighbour", &neighbour_key)
        .await
        .assert_alive("the neighbour's key is untouched")
        .await;
    api.assert_alive("refused requests end nothing").await;

    // Refused edits.
    let raw = api
        .raw(
            Method::PUT,
            &format!("/api/v1/apiKeys/{id}"),
            Some(json!({"keyValue": "abcdefghijk"})),
        )
        .await;
    assert_api_error(&raw, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
    let body = raw.json();
    assert!(
        body["field"] == "keyValue" || body["message"].as_str().unwrap().contains("keyValue"),
        "names keyValue: {body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("12"),
        "says why: {body}"
    );
    let raw = api
        .raw(
            Method::PUT,
            &format!("/api/v1/apiKeys/{id}"),
            Some(json!({"keyValue": key})),
        )
        .await;
    assert_api_error(&raw, StatusCode::BAD_REQUEST, "SAME_AS_CURRENT_KEY");
    let raw = api.raw(Method::POST, "/api/v1/apiKeys", None).await;
    assert_api_error(&raw, StatusCode::CONFLICT, "KEY_ALREADY_EXISTS");
    assert!(raw.json()["message"].as_str().unwrap().contains("delete"));
    // Refused changes change nothing and end nothing.
    assert_eq!(api.assert_alive("after refused changes").await, list);

    // Edit.
    server.clock.advance_secs(60);
    let edited = "EditedKey001";
    let (status, body) = api
        .call(
            Method::PUT,
            &format!("/api/v1/apiKeys/{id}"),
            Some(json!({"keyValue": edited})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_key_object(&server, &body, edited, true);
    assert_eq!(body["lastModifiedTime"], now_ms(&server) / 1000);
    assert_eq!(
        body["lastModifiedBy"],
        json!({"id": full_id, "name": "full@keys"})
    );
    api.assert_ended("own session after an edit (opened with the old key)")
        .await;
    assert_eq!(console.reveal().await, edited);
    assert_login_fails(&server, "full@keys", &key, "old key after edit").await;
    let api = api_login(&server, "full@keys", edited).await;

    // Regenerate.
    server.clock.advance_secs(60);
    let id = body["id"].as_i64().unwrap();
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/api/v1/apiKeys/{id}/regenerate"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let regenerated = body["keyValue"].as_str().unwrap().to_owned();
    assert!(is_key_value(&regenerated), "{regenerated}");
    assert_ne!(regenerated, edited);
    assert_key_object(&server, &body, &regenerated, true);
    assert_eq!(
        body["lastModifiedBy"],
        json!({"id": full_id, "name": "full@keys"})
    );
    api.assert_ended("own session after a regenerate").await;
    assert_login_fails(&server, "full@keys", edited, "old key after regenerate").await;
    assert_eq!(console.reveal().await, regenerated);
    let api = api_login(&server, "full@keys", &regenerated).await;
    assert_eq!(
        only_key(&api.assert_alive("new key").await)["keyValue"],
        regenerated.as_str()
    );

    // The same audit record as a console change, with the API admin as actor.
    let (status, _) = console.regenerate().await;
    assert_eq!(status, StatusCode::OK);
    api.assert_ended("a console regenerate").await;
    let audit = console.audit().await;
    let regenerations: Vec<&Value> = audit
        .iter()
        .filter(|r| r["action"] == "KEY_REGENERATE")
        .collect();
    assert_eq!(regenerations.len(), 2, "{audit:?}");
    let (by_console, by_api) = (regenerations[0], regenerations[1]); // newest first
    for r in [by_console, by_api] {
        assert_eq!(r["actorType"], "ADMIN");
        assert_eq!(r["actorId"], full_id);
        assert_eq!(r["actorName"], "full@keys");
    }
    assert_eq!(by_api["keySuffix"], &regenerated[9..]);
    assert_eq!(
        by_api.as_object().unwrap().keys().collect::<Vec<_>>(),
        by_console.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    let edit = audit
        .iter()
        .find(|r| r["action"] == "KEY_EDIT")
        .expect("KEY_EDIT audited");
    assert_eq!(edit["actorName"], "full@keys");
    assert_eq!(edit["keySuffix"], &edited[9..]);
    for r in &audit {
        assert!(
            !r.to_string().contains(&regenerated) && !r.to_string().contains(edited),
            "no full key in the audit: {r}"
        );
    }

    // Delete.
    let current = console.reveal().await;
    let api = api_login(&server, "full@keys", &current).await;
    let (status, list) = api.get("/api/v1/apiKeys").await;
    assert_eq!(status, StatusCode::OK);
    let id = only_key(&list)["id"].as_i64().unwrap();
    let raw = api
        .raw(Method::DELETE, &format!("/api/v1/apiKeys/{id}"), None)
        .await;
    assert_eq!(raw.status, StatusCode::NO_CONTENT, "{}", raw.text);
    assert!(raw.text.is_empty());
    api.assert_ended("own session after a delete").await;
    let (status, _) = console.key().await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_login_fails(&server, "full@keys", &current, "deleted key").await;
    assert!(
        console
            .audit()
            .await
            .iter()
            .any(|r| r["action"] == "KEY_DELETE" && r["actorName"] == "full@keys")
    );
}

#[tokio::test]
async fn view_only_admin_reads_the_key_but_every_change_is_refused() {
    let server = TestServer::start().await;
    create_org(&server, "vo").await;
    let console = server.login("full@vo").await;
    let key = console.reveal().await;
    let view = api_login(&server, "view@vo", &key).await;
    let list = view.assert_alive("view only").await;
    let k = only_key(&list).clone();
    assert_key_object(&server, &k, &key, true);
    let id = k["id"].as_i64().unwrap();
    let (status, one) = view.get(&format!("/api/v1/apiKeys/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, k);
    let audit_before = console.audit().await.len();
    let changes: [(Method, String, Option<Value>); 4] = [
        (
            Method::PUT,
            format!("/api/v1/apiKeys/{id}"),
            Some(json!({"keyValue": "ViewOnly1234"})),
        ),
        (Method::POST, "/api/v1/apiKeys".into(), None),
        (
            Method::POST,
            format!("/api/v1/apiKeys/{id}/regenerate"),
            None,
        ),
        (Method::DELETE, format!("/api/v1/apiKeys/{id}"), None),
    ];
    for (method, path, body) in changes {
        let raw = view.raw(method.clone(), &path, body).await;
        assert_eq!(
            raw.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            raw.text
        );
        assert_api_error(&raw, StatusCode::FORBIDDEN, "NOT_AUTHORIZED");
    }
    assert_eq!(console.reveal().await, key, "nothing changed");
    assert_eq!(view.assert_alive("after refusals").await, list);
    let audit = console.audit().await;
    assert!(
        !audit[..audit.len() - audit_before]
            .iter()
            .any(|r| r["action"].as_str().unwrap().starts_with("KEY_")
                && r["action"] != "KEY_REVEAL"),
        "no key change audited: {audit:?}"
    );
}

// ---------------------------------------------------------------- R7 through other paths

#[tokio::test]
async fn changes_elsewhere_end_api_sessions_at_once() {
    let server = start_lenient().await;
    let org = create_org(&server, "r7").await;
    let id = org_id(&org);
    let console = server.login("full@r7").await;
    let key = console.reveal().await;

    let s = api_login(&server, "full@r7", &key).await;
    let view = api_login(&server, "view@r7", &key).await;
    let (status, _) = console.regenerate().await;
    assert_eq!(status, StatusCode::OK);
    s.assert_ended("console regenerate").await;
    view.assert_ended("console regenerate, other admin's session")
        .await;
    assert_login_fails(&server, "full@r7", &key, "old key after console regenerate").await;

    let key = console.reveal().await;
    let s = api_login(&server, "full@r7", &key).await;
    let (status, body) = console.edit(json!("ConsoleEdit1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.assert_ended("console edit").await;

    let s = api_login(&server, "full@r7", "ConsoleEdit1").await;
    provider_disable(&server, id).await;
    s.assert_ended("provider disable").await;
    provider_enable(&server, id).await;
    s.assert_ended("still ended after re-enable").await;

    let s = api_login(&server, "full@r7", "ConsoleEdit1").await;
    let (status, _) = console.delete().await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    s.assert_ended("console delete").await;

    // Removing an admin ends their sessions, and only theirs.
    let org = create_org(&server, "rm").await;
    let key = server.login("full@rm").await.reveal().await;
    let full = api_login(&server, "full@rm", &key).await;
    let view = api_login(&server, "view@rm", &key).await;
    let (status, body) = server
        .provider(
            Method::DELETE,
            &format!(
                "/provider/v1/orgs/{}/admins/{}",
                org_id(&org),
                admin_id(&org, "view@rm")
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    view.assert_ended("admin removed").await;
    full.assert_alive("the other admin").await;
    assert_login_fails(&server, "view@rm", &key, "removed admin").await;
}

// ---------------------------------------------------------------- R10 read-only

/// The key list is rendered once and kept (embedded store): the subscription expiring with
/// the passing of time alone, no change made, still shows at once.
#[tokio::test]
async fn the_key_list_follows_a_subscription_that_expires_with_time() {
    let server = TestServer::start().await;
    let org = create_org(&server, "ages").await;
    let id = org_id(&org);
    let key = server.login("full@ages").await.reveal().await;
    set_subscription(&server, id, true, Some(T0_SECS + 60)).await;
    let s = api_login(&server, "full@ages", &key).await;
    for _ in 0..2 {
        let list = s.assert_alive("active").await;
        assert_eq!(only_key(&list)["permissions"], json!(["READ", "WRITE"]));
        assert_eq!(only_key(&list)["status"], "ENABLED");
    }
    server.clock.advance_secs(61);
    let list = s.assert_alive("expired by time").await;
    let k = only_key(&list);
    assert_eq!(k["permissions"], json!(["READ"]), "{list}");
    assert_eq!(k["status"], "DISABLED", "{list}");
    assert_eq!(k["disabledReason"], "SUBSCRIPTION_EXPIRED", "{list}");
}

#[tokio::test]
async fn expired_subscription_makes_the_api_read_only_until_renewed() {
    let server = TestServer::start().await;
    let org = create_org(&server, "exp").await;
    let id = org_id(&org);
    let key = server.login("full@exp").await.reveal().await;
    let s = api_login(&server, "full@exp", &key).await;

    set_subscription(&server, id, true, Some(T0_SECS - 1)).await;
    let check_expired = |list: Value| {
        let k = only_key(&list);
        assert_key_object(&server, k, &key, false);
        assert_eq!(k["permissions"], json!(["READ"]));
        assert_eq!(k["status"], "DISABLED");
        assert_eq!(k["enabled"], false);
        assert_eq!(k["disabledReason"], "SUBSCRIPTION_EXPIRED");
    };
    check_expired(s.assert_alive("expired: reads work").await);
    let kid = only_key(&s.get("/api/v1/apiKeys").await.1)["id"]
        .as_i64()
        .unwrap();
    let (status, _) = s.get(&format!("/api/v1/apiKeys/{kid}")).await;
    assert_eq!(status, StatusCode::OK);
    let writes: [(Method, String, Option<Value>); 5] = [
        (
            Method::PUT,
            format!("/api/v1/apiKeys/{kid}"),
            Some(json!({"keyValue": "Expired12345"})),
        ),
        (Method::POST, "/api/v1/apiKeys".into(), None),
        (
            Method::POST,
            format!("/api/v1/apiKeys/{kid}/regenerate"),
            None,
        ),
        (Method::DELETE, format!("/api/v1/apiKeys/{kid}"), None),
        (
            Method::POST,
            "/api/v1/auditlogEntryReport".into(),
            Some(json!({"startTime": 0, "endTime": now_ms(&server)})),
        ),
    ];
    for (method, path, body) in writes {
        let raw = s.raw(method.clone(), &path, body).await;
        assert_eq!(
            raw.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            raw.text
        );
        assert_api_error(&raw, StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
    }
    // Login still works with the same key; the new session is read-only too.
    let s2 = api_login(&server, "full@exp", &key).await;
    check_expired(s2.assert_alive("login while expired").await);
    let raw = s2
        .raw(
            Method::POST,
            &format!("/api/v1/apiKeys/{kid}/regenerate"),
            None,
        )
        .await;
    assert_api_error(&raw, StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");

    // Renewal: read and write again, same key.
    set_subscription(&server, id, true, Some(T0_SECS + 365 * 86_400)).await;
    let list = s2.assert_alive("renewed").await;
    assert_key_object(&server, only_key(&list), &key, true);
    let (status, body) = s2
        .call(
            Method::POST,
            &format!("/api/v1/apiKeys/{kid}/regenerate"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "writes work after renewal: {body}");
    assert_ne!(body["keyValue"], key.as_str());
    let key = body["keyValue"].as_str().unwrap().to_owned();

    // Expiry by the passing of time, not only by the provider.
    set_subscription(&server, id, true, Some(now_ms(&server) / 1000 + 100)).await;
    let s3 = api_login(&server, "full@exp", &key).await;
    assert_eq!(
        only_key(&s3.assert_alive("before expiry").await)["permissions"],
        json!(["READ", "WRITE"])
    );
    server.clock.advance_secs(101);
    let k = s3.assert_alive("after expiry").await;
    assert_eq!(only_key(&k)["permissions"], json!(["READ"]));
    assert_eq!(only_key(&k)["disabledReason"], "SUBSCRIPTION_EXPIRED");
    let raw = s3
        .raw(Method::DELETE, &format!("/api/v1/apiKeys/{kid}"), None)
        .await;
    assert_api_error(&raw, StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
}

// ---------------------------------------------------------------- §3.3 audit log report

#[tokio::test]
async fn audit_log_report_lifecycle() {
    let server = start_lenient().await;
    create_org(&server, "rep").await;
    let console = server.login("full@rep").await;
    let key = console.reveal().await; // KEY_REVEAL at T0: outside the range below.
    create_org(&server, "elsewhere").await;
    let other_key = server.login("full@elsewhere").await.reveal().await;

    // (Less than the console's 15 idle minutes, so the console session lives on.)
    server.clock.advance_secs(800);
    let from = now_ms(&server);
    let s = api_login(&server, "full@rep", &key).await; // LOGIN_SUCCESS in range
    assert_login_fails(&server, "full@rep", "WrongKey1234", "in range").await; // LOGIN_FAILURE
    // Another org's records in the same range stay out of this org's report.
    api_login(&server, "full@elsewhere", &other_key).await;
    assert_login_fails(&server, "full@elsewhere", "WrongKey1234", "other org").await;
    let to = from + 5_000;
    server.clock.advance_secs(10);
    assert_eq!(console.reveal().await, key); // KEY_REVEAL after the range

    // Nothing yet.
    let (status, body) = s.get("/api/v1/auditlogEntryReport").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(body["status"], "COMPLETE");
    let raw = s
        .raw(Method::GET, "/api/v1/auditlogEntryReport/download", None)
        .await;
    assert_api_error(&raw, StatusCode::NOT_FOUND, "NOT_FOUND");

    let expected: Vec<Value> = console
        .audit()
        .await
        .into_iter()
        .filter(|r| (from..=to).contains(&r["time"].as_i64().unwrap()))
        .collect();
    assert!(expected.iter().any(|r| r["action"] == "LOGIN_SUCCESS"));
    // The right password with a wrong key: its own action (issue 12).
    assert!(expected.iter().any(|r| r["action"] == "API_KEY_GUESS"));

    for bounds in [
        json!({"startTime": from, "endTime": to}),
        json!({"startTime": from.to_string(), "endTime": to.to_string()}),
    ] {
        let raw = s
            .raw(
                Method::POST,
                "/api/v1/auditlogEntryReport",
                Some(bounds.clone()),
            )
            .await;
        assert_eq!(raw.status, StatusCode::NO_CONTENT, "{bounds}: {}", raw.text);
        let (status, body) = s.get("/api/v1/auditlogEntryReport").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "COMPLETE", "{body}");
        let raw = s
            .raw(Method::GET, "/api/v1/auditlogEntryReport/download", None)
            .await;
        assert_eq!(raw.status, StatusCode::OK, "{}", raw.text);
        assert!(
            raw.content_type().starts_with("text/csv"),
            "{}",
            raw.content_type()
        );
        let mut reader = csv::Reader::from_reader(raw.text.as_bytes());
        let headers = reader.headers().unwrap().clone();
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h.eq_ignore_ascii_case(name))
                .unwrap_or_else(|| panic!("column {name} in {headers:?}"))
        };
        let (time, action) = (col("Time"), col("Action"));
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(
            rows.len(),
            expected.len(),
            "one row per record in range:\n{}",
            raw.text
        );
        for row in &rows {
            let t: i64 = row[time].parse().unwrap();
            assert!((from..=to).contains(&t), "row outside the range: {row:?}");
        }
        let actions: Vec<&str> = rows.iter().map(|r| &r[action]).collect();
        assert!(actions.contains(&"LOGIN_SUCCESS"), "{actions:?}");
        assert!(actions.contains(&"API_KEY_GUESS"), "{actions:?}");
        let actor = col("Actor");
        assert!(
            rows.iter().all(|r| &r[actor] == "full@rep"),
            "only this org's records:\n{}",
            raw.text
        );
        assert!(!raw.text.contains("elsewhere"), "{}", raw.text);
        for outside in ["ORG_CREATE", "KEY_PROVISION", "KEY_REVEAL"] {
            assert!(
                !actions.contains(&outside),
                "{outside} is outside the range"
            );
        }
        assert!(!raw.text.contains(&key), "no key in the report");
    }

    let raw = s
        .raw(Method::DELETE, "/api/v1/auditlogEntryReport", None)
        .await;
    assert_eq!(raw.status, StatusCode::NO_CONTENT);
    let raw = s
        .raw(Method::GET, "/api/v1/auditlogEntryReport/download", None)
        .await;
    assert_api_error(&raw, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (_, body) = s.get("/api/v1/auditlogEntryReport").await;
    assert_ne!(body["status"], "COMPLETE");

    // Bad ranges and bodies.
    for bad in [
        json!({"startTime": to, "endTime": from}),
        json!({"startTime": "yesterday", "endTime": to}),
        json!({"startTime": from}),
        json!({"startTime": -1, "endTime": to}),
        json!({"startTime": true, "endTime": to}),
    ] {
        let raw = s
            .raw(
                Method::POST,
                "/api/v1/auditlogEntryReport",
                Some(bad.clone()),
            )
            .await;
        assert_api_error(&raw, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
    }
    // Without a session: 401.
    let raw = Raw::of(
        server
            .http
            .post(server.url("/api/v1/auditlogEntryReport"))
            .json(&json!({"startTime": from, "endTime": to}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_api_error(&raw, StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID");
}

// ---------------------------------------------------------------- §3.4 errors and bad input

#[tokio::test]
async fn bad_input_gets_a_json_4xx_never_a_5xx() {
    let server = start_lenient().await;
    create_org(&server, "bad").await;
    let key = server.login("full@bad").await.reveal().await;
    let now = now_ms(&server);
    let good = login_body(&obfuscate(&key, now), "full@bad", PASSWORD, json!(now));
    let without = |field: &str| {
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove(field);
        b
    };
    let with = |field: &str, v: Value| {
        let mut b = good.clone();
        b[field] = v;
        b
    };
    let mut bodies: Vec<(String, String)> = Vec::new();
    for field in ["apiKey", "username", "password", "timestamp"] {
        bodies.push((format!("without {field}"), without(field).to_string()));
    }
    for (field, v) in [
        ("timestamp", json!(true)),
        ("timestamp", Value::Null),
        ("timestamp", json!({})),
        ("timestamp", json!([now])),
        ("timestamp", json!("abc")),
        ("timestamp", json!("")),
        ("timestamp", json!(-5)),
        ("timestamp", json!(1.5)),
        ("timestamp", json!("1e12")),
        ("timestamp", json!(1e30)),
        ("timestamp", json!(u64::MAX)),
        ("apiKey", json!(123)),
        ("apiKey", Value::Null),
        ("username", json!(["full@bad"])),
        ("password", json!({"p": 1})),
    ] {
        bodies.push((format!("{field} = {v}"), with(field, v).to_string()));
    }
    for (label, text) in [
        ("broken JSON", "{\"apiKey\": "),
        ("empty", ""),
        ("array", "[]"),
        ("string", "\"hello\""),
        ("null", "null"),
    ] {
        bodies.push((label.to_owned(), text.to_owned()));
    }
    for path in ["/api/v1/authenticatedSession", "/api/v1/auth"] {
        for (label, text) in &bodies {
            let raw = Raw::of(
                server
                    .http
                    .post(server.url(path))
                    .header(CONTENT_TYPE, "application/json")
                    .body(text.clone())
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(
                raw.status,
                StatusCode::BAD_REQUEST,
                "{path} {label}: {}",
                raw.text
            );
            assert_api_error(&raw, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
        }
        // Not JSON at all.
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let mut req = server.http.post(server.url(path)).body(good.to_string());
            if let Some(ct) = content_type {
                req = req.header(CONTENT_TYPE, ct);
            }
            let raw = Raw::of(req.send().await.unwrap()).await;
            assert_api_error(
                &raw,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
            );
        }
        // Too large.
        let big = with("password", json!("x".repeat(100 * 1024)));
        let raw = post_login(&server, path, &big).await;
        assert_api_error(&raw, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
        // Well-formed but absurd: the uniform 401, no overflow.
        for ts in [json!(i64::MAX), json!(i64::MAX.to_string())] {
            let raw = post_login(
                &server,
                path,
                &login_body("AAAAAAAAAAAA", "full@bad", PASSWORD, ts),
            )
            .await;
            assert_api_error(&raw, StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED");
        }
    }

    // The same with a session, on the key endpoints.
    let s = api_login(&server, "full@bad", &key).await;
    let list = s.assert_alive("before").await;
    let id = only_key(&list)["id"].as_i64().unwrap();
    for (value, label) in [
        (json!(123), "number"),
        (Value::Null, "null"),
        (json!("abc-def_ghi!"), "punctuation"),
        (json!("abcdéfghijkl"), "non-ASCII"),
        (json!(""), "empty"),
        (json!("abcdefghijklm"), "13 chars"),
    ] {
        let raw = s
            .raw(
                Method::PUT,
                &format!("/api/v1/apiKeys/{id}"),
                Some(json!({"keyValue": value})),
            )
            .await;
        assert_eq!(raw.status, StatusCode::BAD_REQUEST, "{label}: {}", raw.text);
        assert_api_error(&raw, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
    }
    let raw = Raw::of(
        s.http
            .put(server.url(&format!("/api/v1/apiKeys/{id}")))
            .header(COOKIE, format!("JSESSIONID={}", s.token))
            .header(CONTENT_TYPE, "text/plain")
            .body("{\"keyValue\":\"Plaintext123\"}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_api_error(
        &raw,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
    );
    for bad_id in ["abc", "-1", "0", "99999999999999999999999", "1.5"] {
        let raw = s
            .raw(Method::GET, &format!("/api/v1/apiKeys/{bad_id}"), None)
            .await;
        assert!(
            raw.status.is_client_error(),
            "id {bad_id}: {} {}",
            raw.status,
            raw.text
        );
        assert!(
            raw.content_type().starts_with("application/json"),
            "id {bad_id}"
        );
    }
    let raw = s.raw(Method::GET, "/api/v1/noSuchThing", None).await;
    assert_api_error(&raw, StatusCode::NOT_FOUND, "NOT_FOUND");
    let raw = s.raw(Method::PATCH, "/api/v1/apiKeys", None).await;
    assert_api_error(&raw, StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
    let raw = s
        .raw(Method::PUT, "/api/v1/authenticatedSession", None)
        .await;
    assert_api_error(&raw, StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
    // Nothing changed, and the session still works.
    assert_eq!(s.assert_alive("after bad input").await, list);
}

/// One HTTP/1.1 request on `conn` (kept alive); the status, the `X-Keygate-Org-Id` header
/// and the body.
async fn on_connection(
    conn: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    path: &str,
    token: &str,
) -> (u16, Option<String>, String) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: keygate\r\nCookie: JSESSIONID={token}\r\nX-Original-Method: GET\r\n\r\n"
    );
    conn.get_mut()
        .write_all(request.as_bytes())
        .await
        .expect("send");
    let (mut status, mut org, mut length) = (0, None, 0);
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await.expect("read the head");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(code) = line.strip_prefix("HTTP/1.1 ") {
            status = code[..3].parse().expect("status");
        } else if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().expect("length"),
                "x-keygate-org-id" => org = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await.expect("read the body");
    (status, org, String::from_utf8(body).expect("text"))
}

/// A reverse proxy sends many clients' sessions over one kept-alive connection: every request
/// is decided by its own token, whatever the connection carried before (a guard for anything
/// kept per connection, such as a memo of the last token's hash). Two orgs' sessions
/// alternate on one connection, each answered for its own org; the last token with one
/// character changed, cut short or lengthened is refused right after the real one; a session
/// ended elsewhere is refused on the connection that had just used it.
#[tokio::test]
async fn one_connection_carrying_several_sessions_decides_each_by_its_own() {
    let server = TestServer::start().await;
    let (a, b) = (
        org_id(&create_org(&server, "memo-a").await).to_string(),
        org_id(&create_org(&server, "memo-b").await).to_string(),
    );
    let key_a = server.login("full@memo-a").await.reveal().await;
    let key_b = server.login("full@memo-b").await.reveal().await;
    let (sa, sb) = (
        api_login(&server, "full@memo-a", &key_a).await,
        api_login(&server, "full@memo-b", &key_b).await,
    );
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut conn =
        tokio::io::BufReader::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    for round in 0..3 {
        for (token, org) in [(&sa.token, &a), (&sa.token, &a), (&sb.token, &b)] {
            let (status, got, _) = on_connection(&mut conn, "/authz", token).await;
            assert_eq!((status, got.as_ref()), (204, Some(org)), "round {round}");
        }
        let (status, _, body) = on_connection(&mut conn, "/api/v1/apiKeys", &sa.token).await;
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body, sa.get("/api/v1/apiKeys").await.1);
        assert_ne!(body, sb.get("/api/v1/apiKeys").await.1);
    }
    let last = sa.token.chars().last().expect("a token");
    let changed = format!(
        "{}{}",
        &sa.token[..sa.token.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    let shorter = &sa.token[..sa.token.len() - 1];
    let longer = format!("{}A", sa.token);
    for forged in [changed.as_str(), shorter, longer.as_str()] {
        // Right after the real one, so that it is the token remembered.
        assert_eq!(on_connection(&mut conn, "/authz", &sa.token).await.0, 204);
        let (status, org, _) = on_connection(&mut conn, "/authz", forged).await;
        assert_eq!((status, org), (401, None), "{forged}");
        let (status, _, body) = on_connection(&mut conn, "/api/v1/apiKeys", forged).await;
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(on_connection(&mut conn, "/authz", &sa.token).await.0, 204);
    let raw = sa
        .raw(Method::DELETE, "/api/v1/authenticatedSession", None)
        .await;
    assert_eq!(raw.status, StatusCode::NO_CONTENT, "{}", raw.text);
    let (status, _, _) = on_connection(&mut conn, "/authz", &sa.token).await;
    assert_eq!(
        status, 401,
        "the ended session, on the connection that remembers it"
    );
    let (status, org, _) = on_connection(&mut conn, "/authz", &sb.token).await;
    assert_eq!((status, org.as_deref()), (204, Some(b.as_str())));
}
