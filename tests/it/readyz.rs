//! `/readyz` on PostgreSQL: not ready (503 with a JSON reason) while the database is
//! unreachable and, with `--node-cache`, while the node holds no lease; ready again when the
//! database comes back, without a restart. `/healthz` answers throughout. The database is made
//! unreachable by refusing new connections to it and ending the node's open ones
//! (`pg_terminate_backend`). Needs PostgreSQL like `multinode` (fails under `CI=true`
//! without it, skips loudly otherwise).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::Value;
use sqlx::Connection;

use crate::harness::{Flush, TestServer};
use crate::multinode::{SharedDb, random_master_key};

/// The server runs on real time here (leases and pools are not on the injected clock):
/// poll until `want` or give up after far longer than a lease.
async fn until_readyz(node: &TestServer, want: impl Fn(StatusCode, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = node.http.get(node.url("/readyz")).send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if want(status, &body) {
            return body;
        }
        let health = node.http.get(node.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK, "healthz stays up");
        assert!(Instant::now() < deadline, "readyz stayed {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin(db: &SharedDb) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&db.admin_url).await.unwrap()
}

/// Refuses new connections to the test database and ends those open.
async fn cut(db: &SharedDb) {
    let mut c = admin(db).await;
    sqlx::query(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        db.name
    ))
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db.name)
        .execute(&mut c)
        .await
        .unwrap();
}

async fn restore(db: &SharedDb) {
    let mut c = admin(db).await;
    sqlx::query(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        db.name
    ))
    .execute(&mut c)
    .await
    .unwrap();
}

async fn node(db: &SharedDb, node_cache: bool) -> TestServer {
    let key = random_master_key();
    let (node, _) = TestServer::start_node(Flush::Periodic, |c| {
        c.database_url = Some(SecretString::from(db.url.clone()));
        c.master_key = Some(SecretString::from(key));
        c.node_cache = node_cache;
        c.node_lease = Duration::from_millis(1_000);
    })
    .await;
    node
}

fn ready(s: StatusCode, _: &Value) -> bool {
    s == StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database() {
    let Some(db) = SharedDb::create("readyz_db").await else {
        return;
    };
    let node = node(&db, false).await;
    let body = until_readyz(&node, ready).await;
    // Turned off by its setting, and /readyz says so.
    assert_eq!(body["nodeCache"], "off", "{body}");
    assert!(
        body["nodeCacheReason"]
            .as_str()
            .is_some_and(|r| r.contains("node_cache = false")),
        "{body}"
    );
    cut(&db).await;
    let body = until_readyz(&node, |s, b| {
        s == StatusCode::SERVICE_UNAVAILABLE && b["code"] == "DATABASE_UNAVAILABLE"
    })
    .await;
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    restore(&db).await;
    until_readyz(&node, ready).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_with_node_cache_needs_the_lease() {
    let Some(db) = SharedDb::create("readyz_lease").await else {
        return;
    };
    let node = node(&db, true).await;
    let body = until_readyz(&node, ready).await;
    assert_eq!(body["nodeCache"], "on", "{body}");
    assert!(body.get("nodeCacheReason").is_none(), "{body}");
    cut(&db).await;
    // The listener is gone: the lease lapses within one lease and readyz says why.
    let body = until_readyz(&node, |s, b| {
        s == StatusCode::SERVICE_UNAVAILABLE && b["code"] == "NOT_READY"
    })
    .await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("lease")),
        "{body}"
    );
    restore(&db).await;
    until_readyz(&node, ready).await;
}

/// Without a setting, a PostgreSQL node runs the node cache (issue 14: the default is the fast
/// path) and says so; the embedded store says `embedded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_the_node_cache_is_on_by_default() {
    let embedded = TestServer::start_with(|c| c.database_url = None).await;
    let body = until_readyz(&embedded, ready).await;
    assert_eq!(body["nodeCache"], "embedded", "{body}");
    let Some(db) = SharedDb::create("readyz_default").await else {
        return;
    };
    let key = random_master_key();
    let (node, _) = TestServer::start_node(Flush::Periodic, |c| {
        c.database_url = Some(SecretString::from(db.url.clone()));
        c.master_key = Some(SecretString::from(key));
        c.node_lease = Duration::from_millis(1_000);
    })
    .await;
    let body = until_readyz(&node, ready).await;
    assert_eq!(body["nodeCache"], "on", "{body}");
}
