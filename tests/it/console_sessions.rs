//! Provider console sessions are rows in the database (issue 14), like the admin console's:
//!
//! - two `keygate serve` processes on one PostgreSQL database (the node cache at its default):
//!   a session opened on node 1 serves every console page on node 2 and back, a form post
//!   with its CSRF token works on node 2, and a logout on node 2 ends it on node 1 at once;
//! - in-process with the manual clock: the idle timeout and the lifetime hold on every node,
//!   and the sweeper deletes the expired rows;
//! - on the embedded store: a restart keeps the session, and neither the cookie value nor the
//!   CSRF token is in the database file (only their SHA-256).
//!
//! The PostgreSQL tests fail under `CI=true` without it and skip loudly otherwise
//! (`multinode::SharedDb`).

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use secrecy::SecretString;

use crate::harness::*;
use crate::multinode::{SharedDb, random_master_key};

pub(crate) const SESSION_COOKIE: &str = "keygate_provider";
const CSRF_COOKIE: &str = "keygate_provider_csrf";

/// A browser over plain HTTP that keeps its cookies by hand, so the same cookies can be sent
/// to any node; follows no redirect.
pub(crate) struct Browser {
    http: Client,
    cookies: Vec<(String, String)>,
}

impl Browser {
    pub(crate) fn new() -> Browser {
        Browser {
            http: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Vec::new(),
        }
    }

    pub(crate) fn cookie(&self, name: &str) -> Option<String> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub(crate) fn keep(&mut self, h: &HeaderMap) {
        for c in h.get_all("set-cookie") {
            let pair = c.to_str().unwrap().split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !v.is_empty() {
                self.cookies.push((k.to_owned(), v.to_owned()));
            }
        }
    }

    pub(crate) fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) async fn get(&mut self, base: &str, path: &str) -> (StatusCode, HeaderMap, String) {
        let r = self
            .http
            .get(format!("{base}{path}"))
            .header("Cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        let (s, h) = (r.status(), r.headers().clone());
        self.keep(&h);
        (s, h, r.text().await.unwrap())
    }

    /// A form post from the page's own origin.
    pub(crate) async fn post(
        &mut self,
        base: &str,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let r = self
            .http
            .post(format!("{base}{path}"))
            .header("Cookie", self.cookie_header())
            .header("Origin", base)
            .form(fields)
            .send()
            .await
            .unwrap();
        let (s, h) = (r.status(), r.headers().clone());
        self.keep(&h);
        (s, h, r.text().await.unwrap())
    }

    /// Signs in to the provider console at `base` with the provider token.
    pub(crate) async fn sign_in(&mut self, base: &str) {
        let (status, _, html) = self.get(base, "/console/login").await;
        assert_eq!(status, StatusCode::OK);
        let csrf = csrf_in(&html);
        let (status, h, body) = self
            .post(
                base,
                "/console/login",
                &[("csrf", csrf.as_str()), ("token", PROVIDER_TOKEN)],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        assert_eq!(h["location"], "/console/orgs");
        assert!(self.cookie(SESSION_COOKIE).is_some() && self.cookie(CSRF_COOKIE).is_some());
    }
}

/// The value of the first `name="csrf"` field in a page.
pub(crate) fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn to_login(got: &(StatusCode, HeaderMap, String)) -> bool {
    got.0 == StatusCode::SEE_OTHER && got.1["location"] == "/console/login"
}

/// Every page of the console, signed in, at `base`; returns the CSRF token the pages carry.
async fn every_page(b: &mut Browser, base: &str, org_id: i64) -> String {
    let (status, h, _) = b.get(base, "/console").await;
    assert_eq!(
        (status, h["location"].to_str().unwrap()),
        (StatusCode::SEE_OTHER, "/console/orgs"),
        "{base}"
    );
    let (status, _, html) = b.get(base, "/console/orgs").await;
    assert_eq!(status, StatusCode::OK, "orgs page on {base}");
    let csrf = csrf_in(&html);
    let (status, _, html) = b.get(base, "/console/orgs?q=Org").await;
    assert_eq!(status, StatusCode::OK, "orgs search on {base}");
    assert!(html.contains("Org "), "{base}");
    let (status, _, html) = b.get(base, &format!("/console/orgs/{org_id}")).await;
    assert_eq!(status, StatusCode::OK, "org page on {base}");
    assert_eq!(csrf_in(&html), csrf, "one session, one token");
    csrf
}

fn node_env<'a>(db: &'a SharedDb, master_key: &'a str) -> Vec<(&'a str, &'a str)> {
    // No KEYGATE_NODE_CACHE: the default (on) is what runs.
    vec![
        ("KEYGATE_DATABASE_URL", db.url.as_str()),
        ("KEYGATE_MASTER_KEY", master_key),
        ("KEYGATE_NODE_LEASE_MS", "1500"),
        ("RUST_LOG", "info"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_console_session_serves_every_node_and_logout_ends_it_everywhere() {
    let Some(db) = SharedDb::create("provider_console_nodes").await else {
        return;
    };
    let master_key = random_master_key();
    let tmp = tempfile::tempdir().unwrap();
    let env = node_env(&db, &master_key);
    let mut nodes = Vec::new();
    for i in 0..2 {
        let data = tmp.path().join(format!("node{i}"));
        std::fs::create_dir_all(&data).unwrap();
        nodes.push(Process::start_with(
            &data,
            &tmp.path().join(format!("node{i}.log")),
            &env,
        ));
    }
    let (n1, n2) = (nodes[0].base.clone(), nodes[1].base.clone());
    // The start-up log says the node cache runs (the default on PostgreSQL).
    for n in &nodes {
        let log = std::fs::read_to_string(&n.log_path).unwrap();
        assert!(log.contains("node cache on"), "{log}");
    }
    // An org to show, made through the provider API.
    let (status, org) = into_json(
        Client::new()
            .post(format!("{n1}/provider/v1/orgs"))
            .bearer_auth(PROVIDER_TOKEN)
            .json(&serde_json::json!({
                "name": "Org console",
                "admins": [{"loginName": "full@console", "password": PASSWORD, "role": "FULL"}],
                "subscription": {"enabled": true, "expiresAt": null},
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{org}");
    let org_id = org["id"].as_i64().unwrap();

    let mut b = Browser::new();
    b.sign_in(&n1).await;
    // Each page load on a different node, with the same cookies.
    let mut csrf = String::new();
    for base in [&n2, &n1, &n2, &n1] {
        csrf = every_page(&mut b, base, org_id).await;
    }
    // A form post with the session's CSRF token on node 2 (signed in on node 1).
    let (status, h, body) = b
        .post(
            &n2,
            "/console/orgs",
            &[
                ("csrf", csrf.as_str()),
                ("name", "Org made on node two"),
                ("full_login", "full@nodetwo"),
                ("full_password", PASSWORD),
                ("subscription", "on"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let location = h["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/console/orgs/"), "{location}");
    let (status, _, html) = b.get(&n1, &location).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Org made on node two"));
    // A forged token is refused on either node, nothing made.
    for base in [&n1, &n2] {
        let (status, _, _) = b
            .post(
                base,
                "/console/orgs",
                &[
                    ("csrf", "forged"),
                    ("name", "Org forged"),
                    ("full_login", "full@forged"),
                    ("full_password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    // Logout on node 2: the old cookies are refused on node 1 at once.
    let old = Browser {
        http: b.http.clone(),
        cookies: b.cookies.clone(),
    };
    let (status, h, _) = b.post(&n2, "/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/console/login?done=logged_out");
    assert!(b.cookie(SESSION_COOKIE).is_none(), "cookie cleared");
    for base in [&n1, &n2] {
        let mut replay = Browser {
            http: old.http.clone(),
            cookies: old.cookies.clone(),
        };
        for path in [
            "/console/orgs".to_owned(),
            format!("/console/orgs/{org_id}"),
        ] {
            let got = replay.get(base, &path).await;
            assert!(to_login(&got), "{base}{path} after logout: {:?}", got.0);
        }
        let got = replay
            .post(
                base,
                &format!("/console/orgs/{org_id}/key/disable"),
                &[("csrf", &csrf), ("reason", "TERMS_VIOLATION")],
            )
            .await;
        assert!(to_login(&got), "post after logout on {base}: {:?}", got.0);
    }
    // Signing in again on node 2 works on node 1.
    let mut again = Browser::new();
    again.sign_in(&n2).await;
    every_page(&mut again, &n1, org_id).await;
}

/// Idle timeout and lifetime of provider console sessions, judged from the row, on two
/// in-process nodes of one PostgreSQL database with manual clocks moved together; the sweeper
/// deletes the rows once they are dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_console_session_expires_on_every_node_and_is_swept() {
    let Some(db) = SharedDb::create("provider_console_expiry").await else {
        return;
    };
    let key = random_master_key();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let (node, _) = TestServer::start_node(Flush::Periodic, |c| {
            c.database_url = Some(SecretString::from(db.url.clone()));
            c.master_key = Some(SecretString::from(key.clone()));
            c.node_lease = Duration::from_millis(1_500);
            c.console_idle_timeout_secs = 600;
            c.console_max_lifetime_secs = 3_600;
        })
        .await;
        nodes.push(node);
    }
    let advance = |secs: i64| {
        for n in &nodes {
            n.clock.advance_secs(secs);
        }
    };
    let (n1, n2) = (nodes[0].base.clone(), nodes[1].base.clone());
    let mut pg = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&db.url).await.unwrap()
    };

    // Idle: used on node 2 just before the timeout, then idle one timeout → gone everywhere.
    let mut b = Browser::new();
    b.sign_in(&n1).await;
    advance(599);
    assert_eq!(b.get(&n2, "/console/orgs").await.0, StatusCode::OK);
    advance(599);
    assert_eq!(
        b.get(&n1, "/console/orgs").await.0,
        StatusCode::OK,
        "touched on node 2"
    );
    advance(600);
    assert!(to_login(&b.get(&n2, "/console/orgs").await), "idle");
    assert!(to_login(&b.get(&n1, "/console/orgs").await), "idle");

    // Lifetime: kept busy, it still ends one lifetime after it began, on every node.
    let mut b = Browser::new();
    b.sign_in(&n2).await;
    for i in 0..6 {
        advance(599);
        let base = if i % 2 == 0 { &n1 } else { &n2 };
        assert_eq!(b.get(base, "/console/orgs").await.0, StatusCode::OK);
    }
    advance(3_600 - 6 * 599 - 1);
    assert_eq!(b.get(&n1, "/console/orgs").await.0, StatusCode::OK);
    advance(1);
    assert!(to_login(&b.get(&n1, "/console/orgs").await), "lifetime");
    assert!(to_login(&b.get(&n2, "/console/orgs").await), "lifetime");

    // A dead session nobody reads is swept (the sweep runs with the usage flush, at most once
    // a minute of the node's clock); a live one stays.
    let mut dead = Browser::new();
    dead.sign_in(&n1).await;
    advance(601);
    let mut live = Browser::new();
    live.sign_in(&n1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM provider_console_sessions")
        .fetch_one(&mut pg)
        .await
        .unwrap()
        != 1
    {
        assert!(Instant::now() < deadline, "the dead session was not swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live.get(&n2, "/console/orgs").await.0, StatusCode::OK);
    assert!(to_login(&dead.get(&n2, "/console/orgs").await));
}

/// On the embedded store: the session survives a restart, and the database holds only hashes
/// of the cookie and the CSRF token.
#[tokio::test]
async fn provider_console_session_survives_a_restart_and_is_stored_hashed() {
    let server = TestServer::start_with(|c| c.database_url = None).await;
    server.create_org("restart").await;
    let mut b = Browser::new();
    b.sign_in(&server.base).await;
    let (status, _, html) = b.get(&server.base, "/console/orgs").await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_in(&html);
    let cookie = b.cookie(SESSION_COOKIE).unwrap();
    assert_eq!(b.cookie(CSRF_COOKIE).unwrap(), csrf);
    let dir = server.stop().await;

    // Nothing in plaintext: not in the database file, its WAL, or any row.
    for file in ["keygate.db", "keygate.db-wal"] {
        let Ok(bytes) = std::fs::read(dir.path().join(file)) else {
            continue;
        };
        for secret in [&cookie, &csrf, &PROVIDER_TOKEN.to_owned()] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret in {file}"
            );
        }
    }
    let stored: Vec<(String, String)> = {
        use sqlx::Connection;
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("keygate.db"))
            .create_if_missing(false);
        let mut db = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        sqlx::query_as("SELECT id_hash, csrf_hash FROM provider_console_sessions")
            .fetch_all(&mut db)
            .await
            .unwrap()
    };
    use keygate::crypto::token::token_hash;
    assert_eq!(
        stored,
        vec![(
            token_hash(&cookie).to_string(),
            token_hash(&csrf).to_string()
        )]
    );

    let server = TestServer::start_in(dir, |c| c.database_url = None).await;
    let (status, _, html) = b.get(&server.base, "/console/orgs").await;
    assert_eq!(status, StatusCode::OK, "the session survived the restart");
    assert_eq!(csrf_in(&html), csrf);
    let (status, h, _) = b
        .post(&server.base, "/console/logout", &[("csrf", &csrf)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/console/login?done=logged_out");
    let mut replay = Browser::new();
    replay.cookies = vec![
        (SESSION_COOKIE.into(), cookie),
        (CSRF_COOKIE.into(), csrf.clone()),
    ];
    assert!(to_login(&replay.get(&server.base, "/console/orgs").await));
}
