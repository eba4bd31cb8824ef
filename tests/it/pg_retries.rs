//! PostgreSQL aborting a write transaction with a serialization failure (SQLSTATE 40001) or a
//! deadlock (40P01): the store runs the whole transaction again, a bounded number of times
//! (`store::sql::TX_ATTEMPTS`, 5) with a jittered backoff (issue 14).
//!
//! Each is forced on the real server: a trigger on `orgs` (whose `key_generation` every key
//! change bumps) raises the code for the first N attempts. The attempts are counted in a
//! sequence, not a table row: `nextval` is not rolled back with the aborted transaction, a
//! row would be. Below the bound the change succeeds, applied once with one audit record;
//! at the bound it is answered 503 with nothing changed. One real deadlock is also made, by a
//! transaction of the test that takes the two rows a key change needs in the other order.
//! Needs PostgreSQL like `multinode` (fails under `CI=true` without it, skips loudly
//! otherwise).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};

use crate::harness::*;
use crate::multinode::{SharedDb, random_master_key};

const METRICS_TOKEN: &str = "retries-metrics-token-0123456789";
/// The store's bound (`keygate::store::sql::TX_ATTEMPTS`).
const ATTEMPTS: i64 = 5;

// ---------------------------------------------------------------- trigger helpers

/// Makes the next `n` attempts to bump an org's key generation fail with SQLSTATE `code`.
async fn force_failures(pg: &mut PgConnection, code: &str, n: i64) {
    for sql in [
        "DROP TRIGGER IF EXISTS kg_test_fail ON orgs".to_owned(),
        "DROP SEQUENCE IF EXISTS kg_test_attempts".to_owned(),
        "CREATE SEQUENCE kg_test_attempts".to_owned(),
        format!(
            "CREATE OR REPLACE FUNCTION kg_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               IF nextval('kg_test_attempts') <= {n} THEN \
                 RAISE EXCEPTION 'forced by the test' USING ERRCODE = '{code}'; \
               END IF; \
               RETURN NEW; \
             END $$"
        ),
        "CREATE TRIGGER kg_test_fail BEFORE UPDATE OF key_generation ON orgs \
         FOR EACH ROW EXECUTE FUNCTION kg_test_fail()"
            .to_owned(),
    ] {
        sqlx::query(&sql).execute(&mut *pg).await.unwrap();
    }
}

/// How many times the trigger ran (each run is one attempt of the transaction).
async fn attempts(pg: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM kg_test_attempts",
    )
    .fetch_one(pg)
    .await
    .unwrap()
}

async fn stop_forcing(pg: &mut PgConnection) {
    sqlx::query("DROP TRIGGER IF EXISTS kg_test_fail ON orgs")
        .execute(pg)
        .await
        .unwrap();
}

// ---------------------------------------------------------------- what a change left

#[derive(Debug, PartialEq)]
struct OrgState {
    generation: i64,
    sealed: Vec<u8>,
    regenerations: i64,
    replaced: i64,
}

async fn org_state(pg: &mut PgConnection, org: i64) -> OrgState {
    let generation = sqlx::query_scalar("SELECT key_generation FROM orgs WHERE id = $1")
        .bind(org)
        .fetch_one(&mut *pg)
        .await
        .unwrap();
    let sealed = sqlx::query_scalar("SELECT sealed FROM api_keys WHERE org_id = $1")
        .bind(org)
        .fetch_one(&mut *pg)
        .await
        .unwrap();
    let regenerations = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE org_id = $1 AND action = 'KEY_REGENERATE'",
    )
    .bind(org)
    .fetch_one(&mut *pg)
    .await
    .unwrap();
    let replaced = sqlx::query_scalar("SELECT count(*) FROM replaced_keys WHERE org_id = $1")
        .bind(org)
        .fetch_one(&mut *pg)
        .await
        .unwrap();
    OrgState {
        generation,
        sealed,
        regenerations,
        replaced,
    }
}

/// `keygate_db_transaction_retries_total{reason, outcome}`.
async fn retries(node: &TestServer, reason: &str, outcome: &str) -> f64 {
    let body = node
        .http
        .get(node.url("/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find(|l| {
            l.starts_with("keygate_db_transaction_retries_total{")
                && l.contains(&format!("reason=\"{reason}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no retries series {reason}/{outcome} in:\n{body}"))
}

/// A node on a fresh database with metrics on, one org (made with a key), and its FULL admin.
async fn setup(test: &str) -> Option<(SharedDb, TestServer, Admin, i64, PgConnection)> {
    let db = SharedDb::create(test).await?;
    let key = random_master_key();
    let (node, _) = TestServer::start_node(Flush::Periodic, |c| {
        c.database_url = Some(SecretString::from(db.url.clone()));
        c.master_key = Some(SecretString::from(key));
        c.node_lease = Duration::from_millis(1_500);
        c.metrics_token = Some(SecretString::from(METRICS_TOKEN));
    })
    .await;
    let org = node.create_org("retry").await;
    let admin = node.login("full@retry").await;
    let (status, body) = admin.key().await;
    assert_eq!(status, StatusCode::OK, "a new org has a key: {body}");
    let pg = PgConnection::connect(&db.url).await.unwrap();
    let org_id = org["id"].as_i64().unwrap();
    Some((db, node, admin, org_id, pg))
}

/// For each code: N = bound − 1 forced failures → the change succeeds after N retries,
/// applied once; N = bound → 503, nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_serialization_failures_and_deadlocks_are_retried_up_to_the_bound() {
    let Some((_db, node, admin, org, mut pg)) = setup("tx_retries_forced").await else {
        return;
    };
    for (code, reason) in [("40001", "serialization"), ("40P01", "deadlock")] {
        // Within the bound: retried, then applied exactly once.
        let before = org_state(&mut pg, org).await;
        // The counters are the process's (other tests' retries count too): at least what
        // this node did. The exact number of attempts is the sequence's.
        let retried = retries(&node, reason, "retried").await;
        let n = ATTEMPTS - 1;
        force_failures(&mut pg, code, n).await;
        let (status, body) = admin.regenerate().await;
        assert_eq!(status, StatusCode::OK, "{code}: {body}");
        assert_eq!(
            attempts(&mut pg).await,
            n + 1,
            "{code}: N failures, then one success"
        );
        let after = org_state(&mut pg, org).await;
        assert_eq!(after.generation, before.generation + 1, "{code}");
        assert_eq!(
            after.regenerations,
            before.regenerations + 1,
            "{code}: one audit record"
        );
        assert_eq!(
            after.replaced,
            before.replaced + 1,
            "{code}: one replaced key"
        );
        assert_ne!(after.sealed, before.sealed, "{code}: the key changed");
        assert!(
            retries(&node, reason, "retried").await - retried >= n as f64,
            "{code}"
        );

        // At the bound: 503, nothing changed.
        let before = after;
        let retried = retries(&node, reason, "retried").await;
        let exhausted = retries(&node, reason, "exhausted").await;
        force_failures(&mut pg, code, ATTEMPTS).await;
        let got = admin.regenerate().await;
        assert_error(
            &got,
            StatusCode::SERVICE_UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
        );
        assert_eq!(
            attempts(&mut pg).await,
            ATTEMPTS,
            "{code}: no attempt past the bound"
        );
        assert_eq!(
            org_state(&mut pg, org).await,
            before,
            "{code}: nothing changed"
        );
        assert!(retries(&node, reason, "retried").await - retried >= (ATTEMPTS - 1) as f64);
        assert!(retries(&node, reason, "exhausted").await - exhausted >= 1.0);
        stop_forcing(&mut pg).await;
    }
    // And the key changes again as usual.
    let (status, body) = admin.regenerate().await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A real deadlock: the test's transaction holds the org's key row and then asks for the org
/// row, while a key change holds the org row and asks for the key row. PostgreSQL aborts the
/// key change (its deadlock check runs first: the test's waits 30 s), the store runs it again
/// once the test's transaction committed, and it is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_deadlock_with_a_key_change_is_retried_and_applied_once() {
    let Some((db, node, admin, org, mut pg)) = setup("tx_retries_deadlock").await else {
        return;
    };
    let before = org_state(&mut pg, org).await;
    let retried = retries(&node, "deadlock", "retried").await;
    let mut other = PgConnection::connect(&db.url).await.unwrap();
    let other_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut other)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SET LOCAL deadlock_timeout = '30s'")
        .execute(&mut other)
        .await
        .unwrap();
    sqlx::query("UPDATE api_keys SET modified_at = modified_at WHERE org_id = $1")
        .bind(org)
        .execute(&mut other)
        .await
        .unwrap();
    let change = tokio::spawn(async move {
        let got = admin.regenerate().await;
        (admin, got)
    });
    // The key change holds the org row and waits for the key row.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND pid <> $1",
        )
        .bind(other_pid)
        .fetch_one(&mut pg)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the key change never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Now the other order: a cycle, which PostgreSQL breaks by aborting the key change.
    sqlx::query("SELECT 1 FROM orgs WHERE id = $1 FOR UPDATE")
        .bind(org)
        .execute(&mut other)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    let (admin, (status, body)) = change.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = org_state(&mut pg, org).await;
    assert_eq!(after.generation, before.generation + 1);
    assert_eq!(
        after.regenerations,
        before.regenerations + 1,
        "one audit record"
    );
    assert_eq!(after.replaced, before.replaced + 1);
    assert!(retries(&node, "deadlock", "retried").await - retried >= 1.0);
    let (status, _) = admin.key().await;
    assert_eq!(status, StatusCode::OK);
}
