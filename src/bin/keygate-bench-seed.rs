//! Bulk seeder for the benchmark harness (`bench/run.sh`): grows the embedded SQLite database
//! of a data directory to N orgs, each with one FULL admin and one provisioned key, with the
//! same rows (and audit entries) `POST /provider/v1/orgs` writes, without an argon2id hash per
//! admin (every seeded admin shares one hash of `--password`, made once at OWASP cost).
//!
//! Run it only while keygate is stopped (keygate locks the data directory) and after keygate
//! has started once on the directory, so the migrations and the master-key check exist.
//! Then it writes the keys of the orgs named by `--export-ids` (opened with the data
//! directory's `master.key`) to `--export-file`, for the harness to log in with.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection};

use keygate::crypto::{KeyCipher, MasterKey, PasswordHasher};
use keygate::domain::admin::Password;
use keygate::domain::ids::OrgId;
use keygate::domain::key::ApiKeyValue;

#[derive(Parser)]
#[command(
    name = "keygate-bench-seed",
    about = "Bulk-seed orgs into a stopped keygate's SQLite data directory"
)]
struct Args {
    /// The data directory keygate ran on once (holds keygate.db and master.key).
    #[arg(long)]
    data_dir: PathBuf,
    /// Grow the database to this many orgs (orgs already there are kept).
    #[arg(long)]
    orgs: i64,
    /// The password of every seeded admin (`admin{ID}@bench.example`).
    #[arg(long, default_value = "bench-password-0001")]
    password: String,
    /// Comma-separated org ids whose login and key to write to --export-file.
    #[arg(long, default_value = "")]
    export_ids: String,
    #[arg(long)]
    export_file: Option<PathBuf>,
    /// Rows per multi-row INSERT.
    #[arg(long, default_value_t = 200)]
    batch: i64,
}

const PROVIDER: (&str, i64, &str) = ("PROVIDER", 1, "Service Provider");

fn login_of(id: i64) -> String {
    format!("admin{id}@bench.example")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = args.data_dir.join("keygate.db");
    if !db.exists() {
        bail!(
            "{} does not exist: start keygate once on this data directory first",
            db.display()
        );
    }
    let master = MasterKey::load_or_create(&args.data_dir.join("master.key"))?;
    let cipher = KeyCipher::new(&master);
    // Durability is not needed while seeding: the final checkpoint and fsync make it so.
    let opts = SqliteConnectOptions::from_str("sqlite://")?
        .filename(&db)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Off)
        .foreign_keys(true)
        .pragma("cache_size", "-262144");
    let mut conn = SqliteConnection::connect_with(&opts)
        .await
        .context("open keygate.db")?;

    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM orgs")
        .fetch_one(&mut conn)
        .await?;
    let max_id: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM orgs")
        .fetch_one(&mut conn)
        .await?;
    if existing != max_id {
        bail!(
            "orgs ids are not 1..{existing} (max {max_id}): seed only a database keygate-bench-seed grew"
        );
    }
    let started = Instant::now();
    if args.orgs > existing {
        let hash = PasswordHasher::new(1)
            .hash(
                Password::parse("password", &args.password)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?,
            )
            .await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let mut next = existing + 1;
        while next <= args.orgs {
            // One transaction per 50,000 orgs.
            let tx_end = (next + 50_000 - 1).min(args.orgs);
            let mut tx = conn.begin().await?;
            let mut from = next;
            while from <= tx_end {
                let to = (from + args.batch - 1).min(tx_end);
                insert_batch(&mut tx, &cipher, &hash, from, to, now_ms).await?;
                from = to + 1;
            }
            tx.commit().await?;
            next = tx_end + 1;
        }
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut conn)
            .await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM orgs")
        .fetch_one(&mut conn)
        .await?;

    let mut exported = Vec::new();
    for id in args
        .export_ids
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let id: i64 = id.parse().with_context(|| format!("bad org id {id:?}"))?;
        let row = sqlx::query("SELECT k.sealed, a.login_name FROM api_keys k JOIN admins a ON a.org_id = k.org_id WHERE k.org_id = ?1 ORDER BY a.id LIMIT 1")
            .bind(id)
            .fetch_optional(&mut conn)
            .await?
            .with_context(|| format!("org {id} has no key or admin"))?;
        let sealed: Vec<u8> = row.get(0);
        let login: String = row.get(1);
        let key = cipher
            .open(OrgId(id), &sealed)
            .with_context(|| format!("org {id}: key does not open with master.key"))?;
        exported.push(serde_json::json!({"orgId": id, "login": login, "password": args.password, "key": key.expose()}));
    }
    if let Some(path) = &args.export_file {
        std::fs::write(path, serde_json::to_vec_pretty(&exported)?)?;
    }
    conn.close().await?;
    println!(
        "{}",
        serde_json::json!({"orgs": total, "added": (total - existing).max(0), "seconds": seconds, "exported": exported.len()})
    );
    Ok(())
}

/// Orgs `from..=to`: the org, its admin, its key, and the audit entries of their creation.
async fn insert_batch(
    conn: &mut SqliteConnection,
    cipher: &KeyCipher,
    hash: &str,
    from: i64,
    to: i64,
    now_ms: i64,
) -> anyhow::Result<()> {
    let rows = |n: usize| vec!["(?, ?, ?, ?, ?, ?)"; n].join(", ");
    let n = (to - from + 1) as usize;

    let mut q = format!(
        "INSERT INTO orgs (id, name, subscription_enabled, subscription_expires_at, key_generation, created_at) VALUES {}",
        rows(n)
    );
    let mut query = sqlx::query(&q);
    for id in from..=to {
        query = query
            .bind(id)
            .bind(format!("Bench org {id}"))
            .bind(true)
            .bind(None::<i64>)
            .bind(1i64)
            .bind(now_ms);
    }
    query.execute(&mut *conn).await?;

    q = format!(
        "INSERT INTO admins (id, org_id, login_name, password_hash, role, created_at) VALUES {}",
        rows(n)
    );
    let mut query = sqlx::query(&q);
    for id in from..=to {
        query = query
            .bind(id)
            .bind(id)
            .bind(login_of(id))
            .bind(hash)
            .bind("FULL")
            .bind(now_ms);
    }
    query.execute(&mut *conn).await?;

    let keys: Vec<(i64, ApiKeyValue)> = (from..=to)
        .map(|id| (id, ApiKeyValue::generate(&mut rand::rngs::OsRng)))
        .collect();
    q = format!(
        "INSERT INTO api_keys (org_id, sealed, modified_at, modified_by_id, modified_by_name) VALUES {}",
        vec!["(?, ?, ?, ?, ?)"; n].join(", ")
    );
    let mut query = sqlx::query(&q);
    for (id, key) in &keys {
        query = query
            .bind(*id)
            .bind(cipher.seal(OrgId(*id), key))
            .bind(now_ms)
            .bind(PROVIDER.1)
            .bind(PROVIDER.2);
    }
    query.execute(&mut *conn).await?;

    // The three audit entries `create_org` writes: ORG_CREATE, ADMIN_ADD, KEY_PROVISION.
    q = format!(
        "INSERT INTO audit_log (at, org_id, actor_kind, actor_id, actor_name, action, key_suffix, details, client_addr) VALUES {}",
        vec!["(?, ?, ?, ?, ?, ?, ?, ?, '127.0.0.1')"; 3 * n].join(", ")
    );
    let mut query = sqlx::query(&q);
    for (id, key) in &keys {
        let id = *id;
        let entries = [
            (
                "ORG_CREATE",
                None,
                serde_json::json!({"name": format!("Bench org {id}"), "subscription": {"enabled": true, "expiresAt": null}, "callThreshold": null}),
            ),
            (
                "ADMIN_ADD",
                None,
                serde_json::json!({"adminId": id, "loginName": login_of(id), "role": "FULL"}),
            ),
            (
                "KEY_PROVISION",
                Some(key.suffix()),
                serde_json::json!({"generation": 1}),
            ),
        ];
        for (action, suffix, details) in entries {
            query = query
                .bind(now_ms)
                .bind(id)
                .bind(PROVIDER.0)
                .bind(PROVIDER.1)
                .bind(PROVIDER.2)
                .bind(action)
                .bind(suffix)
                .bind(details.to_string());
        }
    }
    query.execute(&mut *conn).await?;
    Ok(())
}
