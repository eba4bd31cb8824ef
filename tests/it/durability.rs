//! Durability and secrecy at rest (§9, R1, R11, R12): no plaintext secret in the data
//! directory or the logs; concurrent changes to one org form one serial order; `kill -9`
//! loses no acknowledged change; the database itself holds one key per org and an
//! append-only audit log; SIGTERM shuts down cleanly; the master key file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::Rng;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

// ---------------------------------------------------------------- helpers

const ALNUM: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn random_alnum(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALNUM[rng.gen_range(0..ALNUM.len())] as char)
        .collect()
}

/// A valid key value (R4) that the test chose.
fn random_key() -> String {
    random_alnum(12)
}

fn suffix(key: &str) -> String {
    key[key.len() - 3..].to_owned()
}

fn is_key_value(v: &str) -> bool {
    v.len() == 12 && v.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A provider request against any base URL (the real binary's, say).
async fn provider_at(
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(PROVIDER_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    into_json(req.send().await.expect("provider request")).await
}

/// Console login against any base URL; the [`Admin`] it returns works like the harness's.
async fn login_at(base: &str, login: &str, password: &str) -> Result<Admin, (StatusCode, Value)> {
    let http = Client::builder().cookie_store(true).build().unwrap();
    let resp = http
        .post(format!("{base}/admin/v1/login"))
        .json(&json!({"loginName": login, "password": password}))
        .send()
        .await
        .expect("login request");
    let (status, body) = into_json(resp).await;
    if status != StatusCode::OK {
        return Err((status, body));
    }
    let csrf = body["csrfToken"].as_str().expect("csrf token").to_owned();
    Ok(Admin {
        http,
        base: base.to_owned(),
        csrf,
        login: body,
    })
}

async fn must_login(base: &str, login: &str, password: &str) -> Admin {
    login_at(base, login, password)
        .await
        .unwrap_or_else(|(s, b)| panic!("login {login}: {s} {b}"))
}

/// Creates an org on the real binary with a FULL and a VIEW_ONLY admin and the given
/// passwords; returns the org id.
async fn create_org_at(base: &str, slug: &str, full_pw: &str, view_pw: &str) -> i64 {
    let (status, body) = provider_at(
        base,
        Method::POST,
        "/provider/v1/orgs",
        Some(json!({
            "name": format!("Org {slug}"),
            "admins": [
                {"loginName": format!("full@{slug}"), "password": full_pw, "role": "FULL"},
                {"loginName": format!("view@{slug}"), "password": view_pw, "role": "VIEW_ONLY"},
            ],
            "subscription": {"enabled": true, "expiresAt": null},
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "create org {slug}: {body}");
    body["id"].as_i64().expect("org id")
}

/// A key change the tests send.
#[derive(Clone, Debug)]
enum Op {
    Edit(String),
    Regenerate,
    Add,
}

impl Op {
    fn action(&self) -> &'static str {
        match self {
            Op::Edit(_) => "KEY_EDIT",
            Op::Regenerate => "KEY_REGENERATE",
            Op::Add => "KEY_ADD",
        }
    }
}

/// Sends a change without panicking when the server is gone: `Err` means the outcome is
/// unknown to the client (no complete response).
async fn try_change(admin: &Admin, op: &Op) -> Result<(StatusCode, Value), reqwest::Error> {
    let req = match op {
        Op::Edit(v) => admin
            .http
            .put(format!("{}/admin/v1/apiKey", admin.base))
            .json(&json!({ "keyValue": v })),
        Op::Regenerate => admin
            .http
            .post(format!("{}/admin/v1/apiKey/regenerate", admin.base)),
        Op::Add => admin.http.post(format!("{}/admin/v1/apiKey", admin.base)),
    };
    let resp = req
        .header("X-CSRF-Token", &admin.csrf)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

/// The records that bump the key generation in these tests (provision, edit, regenerate),
/// oldest first. Panics on any other generation-bumping record, which these tests never cause.
fn key_change_records(audit: &[Value]) -> Vec<Value> {
    let mut records: Vec<Value> = audit
        .iter()
        .filter(|r| {
            let action = r["action"].as_str().unwrap_or_default();
            assert!(
                !matches!(
                    action,
                    "KEY_ADD" | "KEY_DELETE" | "KEY_DISABLE" | "KEY_ENABLE"
                ),
                "unexpected key record: {r}"
            );
            matches!(action, "KEY_PROVISION" | "KEY_EDIT" | "KEY_REGENERATE")
        })
        .cloned()
        .collect();
    records.sort_by_key(|r| r["id"].as_i64().expect("audit id"));
    records
}

fn generation(record: &Value) -> i64 {
    record["details"]["generation"]
        .as_i64()
        .unwrap_or_else(|| panic!("record without generation: {record}"))
}

fn key_suffix(record: &Value) -> String {
    record["keySuffix"]
        .as_str()
        .unwrap_or_else(|| panic!("record without keySuffix: {record}"))
        .to_owned()
}

/// A serial chain: generations +1 each, and each change names the previous key's suffix.
fn assert_serial_chain(records: &[Value]) {
    assert!(!records.is_empty(), "no key records at all");
    assert_eq!(
        records[0]["action"], "KEY_PROVISION",
        "the chain starts at the provisioned key: {}",
        records[0]
    );
    for pair in records.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(
            generation(b),
            generation(a) + 1,
            "generations not consecutive:\n  {a}\n  {b}"
        );
        assert_eq!(
            b["details"]["previousKeySuffix"].as_str(),
            Some(key_suffix(a).as_str()),
            "previousKeySuffix does not name the key before:\n  {a}\n  {b}"
        );
    }
}

async fn key_rows(data_dir: &Path, org_id: i64) -> i64 {
    Db::open(data_dir)
        .await
        .i64(
            "SELECT count(*) FROM api_keys WHERE org_id = $1",
            &[Arg::I(org_id)],
        )
        .await
}

async fn sigterm_and_wait(p: &mut Process, within: Duration) -> ExitStatus {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill(SIGTERM)");
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = p.child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = p.child.kill();
            panic!("keygate did not exit within {within:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Case-insensitive search of `needle` in `haystack`.
fn contains_ci(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes().to_ascii_lowercase();
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(&needle))
}

fn read_if_present(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

fn paths(tmp: &Path) -> (PathBuf, PathBuf) {
    (tmp.join("data"), tmp.join("keygate.log"))
}

// ---------------------------------------------------------------- 1. R12 at rest and in logs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_secret_in_database_wal_or_trace_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, log) = paths(tmp.path());
    let mut proc = Process::start(&data, &log);
    let base = proc.base.clone();

    let mut keys: Vec<String> = Vec::new();
    let mut passwords: Vec<String> = Vec::new();
    let mut session_secrets: Vec<String> = Vec::new();

    for slug in ["secret-a", "secret-b"] {
        let full_pw = format!("Pw{}", random_alnum(22));
        let view_pw = format!("Pw{}", random_alnum(22));
        let extra_pw = format!("Pw{}", random_alnum(22));
        passwords.extend([full_pw.clone(), view_pw.clone(), extra_pw.clone()]);
        let org_id = create_org_at(&base, slug, &full_pw, &view_pw).await;
        let (status, body) = provider_at(
            &base,
            Method::POST,
            &format!("/provider/v1/orgs/{org_id}/admins"),
            Some(
                json!({"loginName": format!("extra@{slug}"), "password": extra_pw, "role": "FULL"}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "add admin: {body}");

        let admin = must_login(&base, &format!("full@{slug}"), &full_pw).await;
        session_secrets.push(admin.csrf.clone());
        keys.push(admin.reveal().await);

        let edited = random_key_unlike(&keys);
        let (status, body) = admin.edit(json!(edited)).await;
        assert_eq!(status, StatusCode::OK, "edit: {body}");
        assert_eq!(body["keyValue"], edited.as_str());
        keys.push(edited.clone());
        // Editing to the current value is refused; the error must not echo it.
        let (status, body) = admin.edit(json!(edited)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "same-as-current: {body}");
        assert!(
            !body.to_string().contains(&edited),
            "error echoes the key: {body}"
        );

        let (status, body) = admin.regenerate().await;
        assert_eq!(status, StatusCode::OK, "regenerate: {body}");
        let regenerated = body["keyValue"].as_str().unwrap().to_owned();
        assert!(is_key_value(&regenerated), "{body}");
        assert_eq!(admin.reveal().await, regenerated);
        keys.push(regenerated);

        let (status, body) = admin.delete().await;
        assert_eq!(status, StatusCode::NO_CONTENT, "delete: {body}");
        let (status, body) = admin.add().await;
        assert_eq!(status, StatusCode::CREATED, "add: {body}");
        let added = body["keyValue"].as_str().unwrap().to_owned();
        assert!(is_key_value(&added), "{body}");
        keys.push(added);

        let edited2 = random_key_unlike(&keys);
        let (status, body) = admin.edit(json!(edited2)).await;
        assert_eq!(status, StatusCode::OK, "edit: {body}");
        keys.push(edited2);

        let (status, body) = provider_at(
            &base,
            Method::POST,
            &format!("/provider/v1/orgs/{org_id}/apiKey/disable"),
            Some(json!({"reason": "OTHER", "note": format!("abuse reported for {slug}")})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "disable: {body}");
        // A refused edit: the value offered is a would-be key and must not leak either.
        let refused = random_key();
        let (status, body) = admin.edit(json!(refused)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "edit while disabled: {body}");
        keys.push(refused);
        let (status, body) = provider_at(
            &base,
            Method::POST,
            &format!("/provider/v1/orgs/{org_id}/apiKey/enable"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "enable: {body}");

        let view = must_login(&base, &format!("view@{slug}"), &view_pw).await;
        session_secrets.push(view.csrf.clone());
        let (status, body) = view
            .send(Method::POST, "/admin/v1/apiKey/reveal", None)
            .await;
        if status == StatusCode::OK {
            keys.push(body["keyValue"].as_str().unwrap().to_owned());
        }

        let extra = must_login(&base, &format!("extra@{slug}"), &extra_pw).await;
        session_secrets.push(extra.csrf.clone());
        let (status, body) = extra.regenerate().await;
        assert_eq!(status, StatusCode::OK, "regenerate: {body}");
        keys.push(body["keyValue"].as_str().unwrap().to_owned());
        keys.push(admin.reveal().await);
    }

    // Failed logins: wrong passwords for real admins and a password for an unknown login.
    for login in ["full@secret-a", "view@secret-b", "nobody@secret-a"] {
        let wrong = format!("Wrong{}", random_alnum(20));
        passwords.push(wrong.clone());
        let Err((status, body)) = login_at(&base, login, &wrong).await else {
            panic!("login {login} with a wrong password succeeded");
        };
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(
            !body.to_string().contains(&wrong),
            "error echoes the password: {body}"
        );
    }

    let status = sigterm_and_wait(&mut proc, Duration::from_secs(20)).await;
    assert!(status.success(), "exit status after SIGTERM: {status}");

    keys.sort();
    keys.dedup();
    assert!(keys.len() >= 14, "too few keys collected: {}", keys.len());
    let mut secrets: Vec<(&str, String)> = Vec::new();
    secrets.extend(keys.iter().map(|k| ("key", k.clone())));
    secrets.extend(passwords.iter().map(|p| ("password", p.clone())));
    secrets.extend(session_secrets.iter().map(|c| ("csrf token", c.clone())));
    secrets.push(("provider token", PROVIDER_TOKEN.to_owned()));

    // Every file the server writes: the database, its WAL and shared memory, anything else
    // in the data directory except the master key file, and the trace log.
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "master.key") {
            continue;
        }
        let bytes = read_if_present(&path).unwrap();
        files.push((path, bytes));
    }
    for name in ["keygate.db-wal", "keygate.db-shm"] {
        let p = data.join(name);
        if !files.iter().any(|(f, _)| *f == p) {
            eprintln!("note: {name} absent after SIGTERM");
        }
    }
    let log_bytes = std::fs::read(&log).unwrap();
    assert!(
        log_bytes.len() > 1000,
        "the trace log is (nearly) empty: {} bytes",
        log_bytes.len()
    );
    // The log traced the requests and the SQL they ran, so a leak would have shown.
    for expected in [
        "/admin/v1/apiKey/regenerate",
        "/admin/v1/login",
        "sqlx::query",
    ] {
        assert!(
            log_bytes
                .windows(expected.len())
                .any(|w| w == expected.as_bytes()),
            "{expected:?} not in the trace log"
        );
    }
    files.push((log.clone(), log_bytes));

    // The scan reads the right bytes: the database (with its WAL) holds the org names.
    let db_and_wal: Vec<u8> = files
        .iter()
        .filter(|(p, _)| {
            let n = p.file_name().unwrap().to_string_lossy();
            n == "keygate.db" || n == "keygate.db-wal"
        })
        .flat_map(|(_, b)| b.iter().copied())
        .collect();
    for name in [
        "Org secret-a",
        "Org secret-b",
        "full@secret-a",
        "extra@secret-b",
    ] {
        assert!(
            db_and_wal.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name:?} not found in keygate.db / keygate.db-wal: the scan reads the wrong files"
        );
    }
    let db = &files
        .iter()
        .find(|(p, _)| p.ends_with("keygate.db"))
        .expect("keygate.db exists")
        .1;
    assert!(
        db.starts_with(b"SQLite format 3\0"),
        "keygate.db is not SQLite"
    );

    let mut leaks = Vec::new();
    for (path, bytes) in &files {
        for (what, secret) in &secrets {
            if contains_ci(bytes, secret) {
                leaks.push(format!("{what} {secret} in {}", path.display()));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "plaintext secrets at rest or in logs:\n{}",
        leaks.join("\n")
    );
}

// ---------------------------------------------------------------- 2. concurrent changes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_changes_form_one_serial_order() {
    const N: usize = 50;
    let server = TestServer::start().await;
    let org = server.create_org("conc").await;
    let org_id = org["id"].as_i64().unwrap();
    let (status, body) = server
        .provider(
            Method::POST,
            &format!("/provider/v1/orgs/{org_id}/admins"),
            Some(json!({"loginName": "full2@conc", "password": PASSWORD, "role": "FULL"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "add admin: {body}");
    let sessions: Vec<Arc<Admin>> = vec![
        Arc::new(server.login("full@conc").await),
        Arc::new(server.login("full@conc").await),
        Arc::new(server.login("full2@conc").await),
        Arc::new(server.login("full2@conc").await),
    ];
    let before = key_change_records(&sessions[0].audit().await);
    assert_eq!(
        before.len(),
        1,
        "only the provisioned key so far: {before:?}"
    );
    let gen0 = generation(&before[0]);

    let ops: Vec<Op> = (0..N)
        .map(|i| match i % 5 {
            0 | 1 => Op::Edit(spread_key(i)),
            2 | 3 => Op::Regenerate,
            _ => Op::Add,
        })
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, op) in ops.iter().cloned().enumerate() {
        let admin = sessions[i % sessions.len()].clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let result = try_change(&admin, &op).await.expect("request");
            (op, result)
        });
    }
    let started = Instant::now();
    let mut acked: Vec<(Op, String)> = Vec::new();
    let mut conflicts = 0;
    let mut similar = 0;
    while let Some(joined) = tasks.join_next().await {
        let (op, (status, body)) = joined.expect("task");
        match &op {
            Op::Add => {
                assert_eq!(
                    status,
                    StatusCode::CONFLICT,
                    "add while a key exists: {body}"
                );
                assert_eq!(body["code"], "KEY_ALREADY_EXISTS", "{body}");
                conflicts += 1;
            }
            // Near a regenerated value this edit ran after: refused, nothing changed.
            Op::Edit(_) if too_similar(status, &body) => similar += 1,
            Op::Edit(v) => {
                assert_eq!(status, StatusCode::OK, "edit {v}: {body}");
                assert_eq!(body["keyValue"], v.as_str(), "edit response: {body}");
                acked.push((op.clone(), v.clone()));
            }
            Op::Regenerate => {
                assert_eq!(status, StatusCode::OK, "regenerate: {body}");
                let v = body["keyValue"].as_str().unwrap_or_default().to_owned();
                assert!(is_key_value(&v), "regenerate response: {body}");
                acked.push((op.clone(), v));
            }
        }
    }
    eprintln!(
        "{N} concurrent requests done in {:?}: {} acknowledged changes, {conflicts} conflicts",
        started.elapsed(),
        acked.len()
    );
    assert_eq!(conflicts, N / 5);
    assert_eq!(acked.len(), N - N / 5 - similar);

    // The provider sees one key, and one generation per acknowledged change.
    let (status, view) = server
        .provider(Method::GET, &format!("/provider/v1/orgs/{org_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["keyStatus"], "ENABLED", "{view}");
    assert!(view["apiKey"].is_object(), "{view}");
    assert_eq!(view["keyGeneration"], gen0 + acked.len() as i64, "{view}");

    // The audit trail is one serial chain of exactly the acknowledged changes.
    let records = key_change_records(&sessions[1].audit().await);
    assert_serial_chain(&records);
    let changes = &records[1..];
    assert_eq!(
        changes.len(),
        acked.len(),
        "one record per acknowledged change"
    );
    let mut audit_suffixes: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in changes {
        *audit_suffixes
            .entry((r["action"].as_str().unwrap().to_owned(), key_suffix(r)))
            .or_default() += 1;
    }
    let mut acked_suffixes: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (op, v) in &acked {
        *acked_suffixes
            .entry((op.action().to_owned(), suffix(v)))
            .or_default() += 1;
    }
    assert_eq!(
        audit_suffixes, acked_suffixes,
        "audit vs acknowledged changes"
    );

    let last = changes.last().unwrap();
    let final_key = sessions[2].reveal().await;
    assert_eq!(
        suffix(&final_key),
        key_suffix(last),
        "final key vs last record"
    );
    let (op, _) = acked
        .iter()
        .find(|(_, v)| *v == final_key)
        .expect("the final key is one of the acknowledged values");
    assert_eq!(
        op.action(),
        last["action"],
        "final key came from the last change"
    );

    let dir = server.stop().await;
    assert_eq!(key_rows(dir.path(), org_id).await, 1, "exactly one key row");
    let mut db = Db::open(dir.path()).await;
    let n = db
        .i64(
            "SELECT count(*) FROM audit_log WHERE org_id = $1 AND action IN ('KEY_EDIT', 'KEY_REGENERATE')",
            &[Arg::I(org_id)],
        )
        .await;
    assert_eq!(n, acked.len() as i64);
    let generation_in_db = db
        .i64(
            "SELECT key_generation FROM orgs WHERE id = $1",
            &[Arg::I(org_id)],
        )
        .await;
    assert_eq!(generation_in_db, generation(last));
}

// ---------------------------------------------------------------- 3. kill -9 under writes

/// What the client saw of one stream of changes before the kill.
struct Stream {
    acked: Vec<(Op, String)>,
    /// The request whose outcome the client never learned (the server died under it).
    in_flight: Option<Op>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_changes_loses_no_acknowledged_change() {
    const CYCLES: usize = 3;
    const MAX_CHANGES: usize = 80;
    let tmp = tempfile::tempdir().unwrap();
    let (data, log) = paths(tmp.path());
    let mut proc = Process::start(&data, &log);
    let org_id = create_org_at(&proc.base, "kill", PASSWORD, PASSWORD).await;
    let admin = must_login(&proc.base, "full@kill", PASSWORD).await;
    let mut current = admin.reveal().await;
    let mut history = key_change_records(&admin.audit().await);
    assert_serial_chain(&history);
    assert_eq!(history.len(), 1);

    for cycle in 0..CYCLES {
        let (target, delay_us, plan) = {
            let mut rng = rand::thread_rng();
            let plan: Vec<Op> = (0..MAX_CHANGES)
                .map(|_| {
                    if rng.gen_bool(0.5) {
                        Op::Edit(random_key())
                    } else {
                        Op::Regenerate
                    }
                })
                .collect();
            (rng.gen_range(5..=40usize), rng.gen_range(0..3000u64), plan)
        };
        let admin = must_login(&proc.base, "full@kill", PASSWORD).await;
        let (tx, mut rx) = tokio::sync::watch::channel(0usize);
        let worker = tokio::spawn(async move {
            let mut acked = Vec::new();
            for op in plan {
                match try_change(&admin, &op).await {
                    Ok((status, body)) if too_similar(status, &body) => {}
                    Ok((status, body)) => {
                        assert_eq!(status, StatusCode::OK, "{op:?}: {body}");
                        let v = body["keyValue"].as_str().unwrap_or_default().to_owned();
                        if let Op::Edit(want) = &op {
                            assert_eq!(&v, want, "edit response");
                        }
                        assert!(is_key_value(&v), "{body}");
                        acked.push((op, v));
                        let _ = tx.send(acked.len());
                    }
                    Err(_) => {
                        return Stream {
                            acked,
                            in_flight: Some(op),
                        };
                    }
                }
            }
            Stream {
                acked,
                in_flight: None,
            }
        });
        let reached = tokio::time::timeout(Duration::from_secs(120), rx.wait_for(|n| *n >= target))
            .await
            .expect("changes stalled before the kill")
            .is_ok();
        if !reached {
            // The stream ended early: show why (a failed assertion in it, most likely).
            match worker.await {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("stream task: {e}"),
                Ok(s) => panic!(
                    "the stream ended after {} changes, before {target}",
                    s.acked.len()
                ),
            }
        }
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        proc.kill9();
        let stream = tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("the stream noticed the kill")
            .expect("stream task");
        let pending = stream.in_flight.as_ref().map(|op| match op {
            Op::Edit(v) => format!("edit to {v}"),
            other => format!("{other:?}"),
        });
        eprintln!(
            "cycle {cycle}: killed after {} acknowledged changes (target {target}, +{delay_us}us), in flight: {pending:?}",
            stream.acked.len()
        );

        proc = Process::start(&data, &log);
        let admin = must_login(&proc.base, "full@kill", PASSWORD).await;
        let revealed = admin.reveal().await;
        let records = key_change_records(&admin.audit().await);
        assert_serial_chain(&records);

        // History before this cycle is untouched.
        assert!(records.len() >= history.len(), "records lost");
        for (old, now) in history.iter().zip(&records) {
            assert_eq!(old, now, "an earlier audit record changed");
        }
        // Every acknowledged change has its record, in order.
        let new = &records[history.len()..];
        assert!(
            new.len() >= stream.acked.len(),
            "acknowledged changes lost: {} acknowledged, {} recorded",
            stream.acked.len(),
            new.len()
        );
        for ((op, v), r) in stream.acked.iter().zip(new) {
            assert_eq!(r["action"], op.action(), "{r}");
            assert_eq!(key_suffix(r), suffix(v), "{r}");
        }
        let last_acked = stream
            .acked
            .last()
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| current.clone());
        eprintln!(
            "cycle {cycle}: after restart {} change records beyond the acknowledged ones",
            new.len() - stream.acked.len()
        );
        match new.len() - stream.acked.len() {
            0 => assert_eq!(
                revealed, last_acked,
                "the key is not the last acknowledged value"
            ),
            1 => {
                // The in-flight change committed but its response was lost.
                let op = stream
                    .in_flight
                    .as_ref()
                    .expect("an extra change record without an in-flight request");
                let extra = new.last().unwrap();
                assert_eq!(extra["action"], op.action(), "{extra}");
                match op {
                    Op::Edit(v) => assert_eq!(&revealed, v, "in-flight edit"),
                    _ => assert_ne!(revealed, last_acked, "in-flight regenerate"),
                }
            }
            more => panic!("{more} change records beyond the acknowledged ones"),
        }
        assert_eq!(
            suffix(&revealed),
            key_suffix(records.last().unwrap()),
            "the last record does not describe the current key"
        );
        let (status, view) = provider_at(
            &proc.base,
            Method::GET,
            &format!("/provider/v1/orgs/{org_id}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(
            view["keyGeneration"],
            generation(records.last().unwrap()),
            "{view}"
        );
        assert_eq!(key_rows(&data, org_id).await, 1, "exactly one key row");

        current = revealed;
        history = records;
    }
    let status = sigterm_and_wait(&mut proc, Duration::from_secs(20)).await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

// ---------------------------------------------------------------- 4. R1 and R11 in the database

#[tokio::test]
async fn database_refuses_second_key_and_audit_rewrites() {
    let server = TestServer::start().await;
    let org = server.create_org("dbrules").await;
    let org_id = org["id"].as_i64().unwrap();
    let admin = server.login("full@dbrules").await;
    let (status, body) = admin.regenerate().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let dir = server.stop().await;

    let mut db = Db::open(dir.path()).await;
    let audit_sql = "SELECT id, action FROM audit_log WHERE org_id = $1 ORDER BY id";
    let audit_before = db.id_and_text(audit_sql, &[Arg::I(org_id)]).await;
    assert!(audit_before.len() >= 4, "{audit_before:?}");

    let err = db
        .execute(
            "INSERT INTO api_keys (org_id, sealed, modified_at, modified_by_id, modified_by_name) \
             VALUES ($1, $2, 0, 0, 'test')",
            &[Arg::I(org_id), Arg::B(vec![1u8; 41])],
        )
        .await
        .expect_err("a second key row for the org");
    match &err {
        sqlx::Error::Database(d) => assert!(d.is_unique_violation(), "not a unique violation: {d}"),
        other => panic!("unexpected error: {other}"),
    }
    assert_eq!(
        db.i64(
            "SELECT count(*) FROM api_keys WHERE org_id = $1",
            &[Arg::I(org_id)]
        )
        .await,
        1
    );

    let err = db
        .execute(
            "UPDATE audit_log SET action = 'TAMPERED' WHERE org_id = $1",
            &[Arg::I(org_id)],
        )
        .await
        .expect_err("UPDATE on audit_log");
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = db
        .execute("DELETE FROM audit_log WHERE org_id = $1", &[Arg::I(org_id)])
        .await
        .expect_err("DELETE on audit_log");
    assert!(err.to_string().contains("append-only"), "{err}");

    assert_eq!(
        audit_before,
        db.id_and_text(audit_sql, &[Arg::I(org_id)]).await
    );
}

// ---------------------------------------------------------------- 5. graceful shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_keeps_every_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, log) = paths(tmp.path());
    let mut proc = Process::start(&data, &log);
    let org_id = create_org_at(&proc.base, "graceful", PASSWORD, PASSWORD).await;
    let admin = must_login(&proc.base, "full@graceful", PASSWORD).await;
    let mut acked = Vec::new();
    for i in 0..6 {
        let op = if i % 2 == 0 {
            Op::Edit(random_key())
        } else {
            Op::Regenerate
        };
        let (status, body) = try_change(&admin, &op).await.expect("request");
        if too_similar(status, &body) {
            continue;
        }
        assert_eq!(status, StatusCode::OK, "{op:?}: {body}");
        acked.push((op, body["keyValue"].as_str().unwrap().to_owned()));
    }
    let (status, view) = provider_at(
        &proc.base,
        Method::GET,
        &format!("/provider/v1/orgs/{org_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let generation_before = view["keyGeneration"].clone();

    let started = Instant::now();
    let status = sigterm_and_wait(&mut proc, Duration::from_secs(20)).await;
    eprintln!("SIGTERM to exit: {:?}", started.elapsed());
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );

    let mut proc = Process::start(&data, &log);
    let admin = must_login(&proc.base, "full@graceful", PASSWORD).await;
    assert_eq!(admin.reveal().await, acked.last().unwrap().1);
    let records = key_change_records(&admin.audit().await);
    assert_serial_chain(&records);
    assert_eq!(records.len(), 1 + acked.len());
    for (r, (op, v)) in records[1..].iter().zip(&acked) {
        assert_eq!(r["action"], op.action());
        assert_eq!(key_suffix(r), suffix(v));
    }
    let (_, view) = provider_at(
        &proc.base,
        Method::GET,
        &format!("/provider/v1/orgs/{org_id}"),
        None,
    )
    .await;
    assert_eq!(view["keyGeneration"], generation_before);
    let status = sigterm_and_wait(&mut proc, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "second SIGTERM: {status}");
}

/// Writes the request path does not wait for (a session's last use, the sweep of old login
/// failure counters) run on `Services::background`; `serve` returns only after them, so the
/// store is closed and the data directory free when it does. Before, a restart in the same
/// process right after a stop could find the directory still locked by such a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_waits_for_background_writes_and_frees_the_data_directory() {
    let (server, services) =
        TestServer::start_node(Flush::Periodic, |c| c.database_url = None).await;
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let store = services.store.clone();
    services.background.spawn(async move {
        let _ = released.await;
        drop(store);
    });
    drop(services);
    let mut stopping = tokio::spawn(server.stop());
    // With the fix the stop cannot end before the release, however slow the machine.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut stopping)
            .await
            .is_err(),
        "serve returned while a background write still held the store"
    );
    release.send(()).unwrap();
    let dir = stopping.await.expect("stop");
    let again = TestServer::start_in(dir, |c| c.database_url = None).await;
    let (status, _) = again.provider(Method::GET, "/provider/v1/orgs", None).await;
    assert_eq!(status, StatusCode::OK);
    again.stop().await;
}

// ---------------------------------------------------------------- 6. the master key file

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_key_file_is_private_and_a_wrong_master_key_reveals_nothing() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().unwrap();
    let (data, log) = paths(tmp.path());
    let mut proc = Process::start(&data, &log);
    let master_path = data.join("master.key");
    let meta = std::fs::metadata(&master_path).expect("master.key exists after first start");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "master.key mode");
    let master = std::fs::read(&master_path).unwrap();

    let org_id = create_org_at(&proc.base, "mk", PASSWORD, PASSWORD).await;
    let admin = must_login(&proc.base, "full@mk", PASSWORD).await;
    let key = admin.reveal().await;
    let (_, view) = provider_at(
        &proc.base,
        Method::GET,
        &format!("/provider/v1/orgs/{org_id}"),
        None,
    )
    .await;
    let generation_before = view["keyGeneration"].clone();
    let status = sigterm_and_wait(&mut proc, Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");

    // The same data directory under a different master key.
    let wrong = {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill(&mut bytes);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    // The server refuses to start rather than fail on every key later.
    match Process::try_start_with(&data, &log, &[("KEYGATE_MASTER_KEY", wrong.as_str())]) {
        Err(exit) => assert!(
            !exit.ends_with("exit status: 0"),
            "refused start must exit non-zero: {exit}"
        ),
        Ok(_) => panic!("keygate started with a master key that does not match its database"),
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("the master key does not match this database"),
        "no clear error in the log"
    );
    assert!(!log_text.contains(&key), "the real key reached the log");
    assert_eq!(
        std::fs::read(&master_path).unwrap(),
        master,
        "master.key was rewritten"
    );

    // Back on the right master key, nothing was lost or changed.
    let mut proc = Process::start(&data, &log);
    let admin = must_login(&proc.base, "full@mk", PASSWORD).await;
    assert_eq!(admin.reveal().await, key);
    let (_, view) = provider_at(
        &proc.base,
        Method::GET,
        &format!("/provider/v1/orgs/{org_id}"),
        None,
    )
    .await;
    assert_eq!(view["keyGeneration"], generation_before, "{view}");
    let status = sigterm_and_wait(&mut proc, Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    let log_bytes = std::fs::read(&log).unwrap();
    assert!(!contains_ci(&log_bytes, &key), "the key is in the log");
    assert!(
        !contains_ci(&log_bytes, &wrong),
        "the master key given in the environment is in the log"
    );
}

// ---------------------------------------------------------------- 7. a password typed as the login name

/// A person who types their password into the login-name field: the failed login is audited
/// under the name as typed, so the whole password (lower-cased) lands in `audit_log.actor_name`
/// in plaintext, and is shown in the org's audit trail. `src/service/auth.rs` says the name is
/// "cut short ... never all of it if it is long", but the code keeps all of it.
#[tokio::test]
async fn password_typed_as_login_name_is_not_stored_whole() {
    let server = TestServer::start().await;
    server.create_org("typo").await;
    let password = format!("Pw{}", random_alnum(22));
    let attempt = server.login_with(&password, PASSWORD).await;
    assert!(attempt.is_err(), "login under a password as name succeeded");
    let dir = server.stop().await;
    let names = Db::open(dir.path())
        .await
        .strings("SELECT actor_name FROM audit_log", &[])
        .await;
    assert!(
        !names.iter().any(|n| n
            .to_ascii_lowercase()
            .contains(&password.to_ascii_lowercase())),
        "the password typed as login name is in the audit log"
    );
    if on_postgres() {
        return; // the file scan below is of SQLite's files
    }
    let mut bytes = std::fs::read(dir.path().join("keygate.db")).unwrap();
    bytes.extend(read_if_present(&dir.path().join("keygate.db-wal")).unwrap_or_default());
    assert!(
        !contains_ci(&bytes, &password),
        "the password typed as login name is stored whole in the database"
    );
}

/// `INSERT OR REPLACE` (or `REPLACE INTO`) with an existing id rewrites an audit record: the
/// REPLACE conflict resolution deletes the old row without firing `audit_log_no_delete`
/// (SQLite fires delete triggers on REPLACE only under `PRAGMA recursive_triggers`).
#[tokio::test]
async fn database_refuses_audit_replace() {
    let server = TestServer::start().await;
    let org = server.create_org("replace").await;
    let org_id = org["id"].as_i64().unwrap();
    let dir = server.stop().await;
    if on_postgres() {
        eprintln!(
            "INSERT OR REPLACE is SQLite syntax; PostgreSQL's ON CONFLICT DO UPDATE is refused by the update trigger (tested above)"
        );
        return;
    }
    let mut db = Db::open(dir.path()).await;
    let (id, action) = db
        .id_and_text(
            "SELECT id, action FROM audit_log WHERE org_id = $1 ORDER BY id LIMIT 1",
            &[Arg::I(org_id)],
        )
        .await
        .remove(0);
    let result = db
        .execute(
            "INSERT OR REPLACE INTO audit_log (id, at, org_id, actor_kind, actor_id, actor_name, action) \
             VALUES ($1, 0, $2, 'SYSTEM', 0, 'system', 'TAMPERED')",
            &[Arg::I(id), Arg::I(org_id)],
        )
        .await;
    let after = db
        .strings("SELECT action FROM audit_log WHERE id = $1", &[Arg::I(id)])
        .await
        .remove(0);
    assert!(result.is_err(), "INSERT OR REPLACE on audit_log succeeded");
    assert_eq!(after, action, "the audit record was rewritten");
}
