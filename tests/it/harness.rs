//! Test servers over real HTTP: in-process on port 0 with a fresh data directory and a
//! manual clock, or the real binary as a child process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use keygate::clock::ManualClock;
use keygate::config::Config;
use keygate::domain::time::Millis;
use keygate::{App, serve};
use reqwest::{Client, Method, Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;

pub const PROVIDER_TOKEN: &str = "test-provider-token-0123456789abcdef";
pub const PASSWORD: &str = "correct-horse-battery-staple";
/// 2026-11-01T00:00:00Z: tests start here and move the clock by hand.
pub const T0_SECS: i64 = 1_793_491_200;

/// Where test clocks start: T0 plus 467 ms. A whole second's timestamp ends in `000`, and the
/// login protocol reads few key positions at such residues (T0's reads three, T0 + 800 s's is
/// refused for everyone, see `domain::login_guard`); real clients' timestamps carry their
/// milliseconds, and so do the tests'.
pub fn t0() -> Millis {
    Millis(T0_SECS * 1000 + 467)
}

pub struct TestServer {
    pub base: String,
    pub clock: Arc<ManualClock>,
    pub dir: TempDir,
    pub http: Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, tweak).await
    }

    pub async fn start_in(dir: TempDir, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let mut config = Config::new(addr, dir.path().to_path_buf());
        config.provider_token = Some(SecretString::from(PROVIDER_TOKEN));
        config.password_hash_concurrency = 2;
        // Thousands of logins run in this suite; OWASP cost is tested in crypto::password.
        config.password_hash_params = keygate::crypto::password::HashParams {
            m_kib: 1024,
            t: 1,
            p: 1,
        };
        if let Some(url) = test_database_url(dir.path()).await {
            config.database_url = Some(SecretString::from(url));
        }
        tweak(&mut config);
        let clock = ManualClock::new(t0());
        let app = App::build(&config, clock.clone())
            .await
            .expect("app builds");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app, async move {
            let _ = rx.await;
        }));
        TestServer {
            base: format!("http://{addr}"),
            clock,
            dir,
            http: Client::new(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server and waits for it to finish; returns the data directory.
    pub async fn stop(mut self) -> TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran");
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A provider request with the bearer token.
    pub async fn provider(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(PROVIDER_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        into_json(req.send().await.expect("request")).await
    }

    /// Creates an org with a FULL admin `full@<slug>` and a VIEW_ONLY admin `view@<slug>`
    /// (password [`PASSWORD`]) and an enabled subscription; returns the org JSON.
    pub async fn create_org(&self, slug: &str) -> Value {
        self.create_org_with(slug, json!({"enabled": true, "expiresAt": null}))
            .await
    }

    pub async fn create_org_with(&self, slug: &str, subscription: Value) -> Value {
        let (status, body) = self
            .provider(
                Method::POST,
                "/provider/v1/orgs",
                Some(json!({
                    "name": format!("Org {slug}"),
                    "admins": [
                        {"loginName": format!("full@{slug}"), "password": PASSWORD, "role": "FULL"},
                        {"loginName": format!("view@{slug}"), "password": PASSWORD, "role": "VIEW_ONLY"},
                    ],
                    "subscription": subscription,
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create org: {body}");
        body
    }

    pub async fn login(&self, login: &str) -> Admin {
        self.login_with(login, PASSWORD)
            .await
            .unwrap_or_else(|(s, b)| panic!("login {login}: {s} {b}"))
    }

    pub async fn login_with(
        &self,
        login: &str,
        password: &str,
    ) -> Result<Admin, (StatusCode, Value)> {
        let http = Client::builder().cookie_store(true).build().unwrap();
        let resp = http
            .post(self.url("/admin/v1/login"))
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
            base: self.base.clone(),
            csrf,
            login: body,
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An admin logged in to the console, with cookie and CSRF token.
pub struct Admin {
    pub http: Client,
    pub base: String,
    pub csrf: String,
    pub login: Value,
}

impl Admin {
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        into_json(
            self.http
                .get(format!("{}{}", self.base, path))
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    /// A write with the CSRF header; `body` is sent as JSON when given.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("X-CSRF-Token", &self.csrf);
        if let Some(b) = body {
            req = req.json(&b);
        }
        into_json(req.send().await.expect("request")).await
    }

    pub async fn key(&self) -> (StatusCode, Value) {
        self.get("/admin/v1/apiKey").await
    }

    pub async fn reveal(&self) -> String {
        let (status, body) = self
            .send(Method::POST, "/admin/v1/apiKey/reveal", None)
            .await;
        assert_eq!(status, StatusCode::OK, "reveal: {body}");
        body["keyValue"].as_str().unwrap().to_owned()
    }

    pub async fn add(&self) -> (StatusCode, Value) {
        self.send(Method::POST, "/admin/v1/apiKey", None).await
    }
    pub async fn edit(&self, value: Value) -> (StatusCode, Value) {
        self.send(
            Method::PUT,
            "/admin/v1/apiKey",
            Some(json!({ "keyValue": value })),
        )
        .await
    }
    pub async fn regenerate(&self) -> (StatusCode, Value) {
        self.send(Method::POST, "/admin/v1/apiKey/regenerate", None)
            .await
    }
    pub async fn delete(&self) -> (StatusCode, Value) {
        self.send(Method::DELETE, "/admin/v1/apiKey", None).await
    }
    pub async fn audit(&self) -> Vec<Value> {
        let (status, body) = self.get("/admin/v1/audit?pageSize=1000").await;
        assert_eq!(status, StatusCode::OK, "audit: {body}");
        body["items"].as_array().unwrap().clone()
    }
}

pub async fn into_json(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

/// Asserts an error response: status, code, and (for 400s) that the message names `field`.
pub fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "body: {}", got.1);
    assert_eq!(got.1["code"], code, "body: {}", got.1);
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {}",
        got.1
    );
}

// ---------------------------------------------------------------- the real binary

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_keygate")
}

/// The `keygate serve` process, its port, and where its logs go.
pub struct Process {
    pub child: Child,
    pub base: String,
    pub log_path: PathBuf,
    /// The `/metrics` URL of `--metrics-listen`, when given.
    pub metrics_url: Option<String>,
}

impl Process {
    /// Starts `keygate serve` on port 0 in `data_dir`, logging at `trace` to `log_path`.
    pub fn start(data_dir: &Path, log_path: &Path) -> Process {
        Self::start_with(data_dir, log_path, &[])
    }

    pub fn kill9(&mut self) {
        // Child::kill sends SIGKILL on Unix.
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    pub fn terminate(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().expect("wait");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- the store under test

/// Set to a PostgreSQL URL (e.g. `postgres://postgres@127.0.0.1/test`) to run the whole suite
/// on PostgreSQL: every server gets a fresh database named `kg_test_…`, remembered in its
/// data directory so a restart on the same directory finds the same database. `.ci/run`
/// drops them all after the run.
pub const PG_ENV: &str = "KEYGATE_TEST_DATABASE_URL";

pub fn on_postgres() -> bool {
    std::env::var(PG_ENV).is_ok_and(|u| !u.is_empty())
}

pub async fn test_database_url(data_dir: &Path) -> Option<String> {
    use sqlx::Connection;
    let admin_url = std::env::var(PG_ENV).ok().filter(|u| !u.is_empty())?;
    let marker = data_dir.join("test-database-name");
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("a database URL with a path");
    if let Ok(name) = std::fs::read_to_string(&marker) {
        return Some(format!("{base}/{name}"));
    }
    let name = format!(
        "kg_test_{}",
        keygate::crypto::token::random_token()[..16]
            .to_ascii_lowercase()
            .replace(['-', '_'], "x")
    );
    let mut conn = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to the PostgreSQL admin URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    std::fs::write(&marker, &name).expect("remember the test database");
    Some(format!("{base}/{name}"))
}

/// A direct connection to the database of a (stopped or running) test server, whichever
/// store it used, for tests that check what the database itself holds or refuses. SQL uses
/// `$N` parameters, which both databases accept.
pub enum Db {
    Sqlite(sqlx::SqliteConnection),
    Pg(sqlx::PgConnection),
}

pub enum Arg {
    I(i64),
    B(Vec<u8>),
}

macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::I(i) => q.bind(*i),
                Arg::B(b) => q.bind(b.clone()),
            };
        }
        q
    }};
}

impl Db {
    pub async fn open(data_dir: &Path) -> Db {
        use sqlx::Connection;
        match std::fs::read_to_string(data_dir.join("test-database-name")) {
            Ok(name) => {
                let admin_url = std::env::var(PG_ENV).expect("a PostgreSQL test run");
                let (base, _) = admin_url.rsplit_once('/').unwrap();
                Db::Pg(
                    sqlx::PgConnection::connect(&format!("{base}/{name}"))
                        .await
                        .expect("connect"),
                )
            }
            Err(_) => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(data_dir.join("keygate.db"))
                    .create_if_missing(false);
                Db::Sqlite(
                    sqlx::SqliteConnection::connect_with(&opts)
                        .await
                        .expect("open keygate.db"),
                )
            }
        }
    }

    pub async fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<u64, sqlx::Error> {
        match self {
            Db::Sqlite(c) => bind_all!(sqlx::query(sql), args)
                .execute(&mut *c)
                .await
                .map(|r| r.rows_affected()),
            Db::Pg(c) => bind_all!(sqlx::query(sql), args)
                .execute(&mut *c)
                .await
                .map(|r| r.rows_affected()),
        }
    }

    pub async fn i64(&mut self, sql: &str, args: &[Arg]) -> i64 {
        match self {
            Db::Sqlite(c) => bind_all!(sqlx::query_scalar(sql), args)
                .fetch_one(&mut *c)
                .await
                .expect("query"),
            Db::Pg(c) => bind_all!(sqlx::query_scalar(sql), args)
                .fetch_one(&mut *c)
                .await
                .expect("query"),
        }
    }

    pub async fn strings(&mut self, sql: &str, args: &[Arg]) -> Vec<String> {
        match self {
            Db::Sqlite(c) => bind_all!(sqlx::query_scalar(sql), args)
                .fetch_all(&mut *c)
                .await
                .expect("query"),
            Db::Pg(c) => bind_all!(sqlx::query_scalar(sql), args)
                .fetch_all(&mut *c)
                .await
                .expect("query"),
        }
    }

    pub async fn id_and_text(&mut self, sql: &str, args: &[Arg]) -> Vec<(i64, String)> {
        match self {
            Db::Sqlite(c) => bind_all!(sqlx::query_as(sql), args)
                .fetch_all(&mut *c)
                .await
                .expect("query"),
            Db::Pg(c) => bind_all!(sqlx::query_as(sql), args)
                .fetch_all(&mut *c)
                .await
                .expect("query"),
        }
    }
}

// ---------------------------------------------------------------- nodes of one deployment

/// How an in-process node's usage counts reach the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// As `keygate serve` does it: every second, and once more at shutdown.
    Periodic,
    /// Only when the test calls `services.flush_usage()`: the test decides what each node
    /// has written and read back.
    Manual,
}

impl TestServer {
    /// One node of a multi-node deployment: an in-process server on port 0 with its own data
    /// directory and manual clock. The caller points it at the shared database in `tweak`
    /// (`database_url`, `master_key`); no database is created for it. Returns the node and
    /// its services (for `flush_usage`).
    pub async fn start_node(
        flush: Flush,
        tweak: impl FnOnce(&mut Config),
    ) -> (TestServer, Arc<keygate::service::Services>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let mut config = Config::new(addr, dir.path().to_path_buf());
        config.provider_token = Some(SecretString::from(PROVIDER_TOKEN));
        config.password_hash_concurrency = 2;
        config.password_hash_params = keygate::crypto::password::HashParams {
            m_kib: 1024,
            t: 1,
            p: 1,
        };
        tweak(&mut config);
        let clock = ManualClock::new(t0());
        let app = App::build(&config, clock.clone())
            .await
            .expect("node builds");
        let services = app.services.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = rx.await;
        };
        let task = match flush {
            Flush::Periodic => tokio::spawn(serve(listener, app, stopped)),
            Flush::Manual => tokio::spawn(async move {
                let service = app
                    .router
                    .into_make_service_with_connect_info::<std::net::SocketAddr>();
                axum::serve(listener, service)
                    .with_graceful_shutdown(stopped)
                    .await?;
                Ok(())
            }),
        };
        let node = TestServer {
            base: format!("http://{addr}"),
            clock,
            dir,
            http: Client::new(),
            shutdown: Some(tx),
            task: Some(task),
        };
        (node, services)
    }
}

impl Process {
    /// Like [`Process::start`] with extra environment (`KEYGATE_DATABASE_URL`,
    /// `KEYGATE_MASTER_KEY`, `RUST_LOG` …), which overrides the defaults.
    pub fn start_with(data_dir: &Path, log_path: &Path, envs: &[(&str, &str)]) -> Process {
        Self::try_start_with(data_dir, log_path, envs).unwrap_or_else(|status| {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            panic!("{status}; log:\n{log}")
        })
    }

    /// Starts `keygate serve`; `Err` says how it exited if it stopped before listening.
    pub fn try_start_with(
        data_dir: &Path,
        log_path: &Path,
        envs: &[(&str, &str)],
    ) -> Result<Process, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("log file");
        let mut child = Command::new(binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("KEYGATE_PROVIDER_TOKEN", PROVIDER_TOKEN)
            .env("RUST_LOG", "trace")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn keygate");
        let stdout = child.stdout.take().unwrap();
        let mut metrics_url = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("keygate metrics on ") {
                metrics_url = Some(rest.trim().to_owned());
            }
            if let Some(rest) = line.strip_prefix("keygate listening on ") {
                return Ok(Process {
                    child,
                    base: rest.trim().to_owned(),
                    log_path: log_path.to_path_buf(),
                    metrics_url,
                });
            }
        }
        let status = child.wait().expect("wait");
        Err(format!("keygate exited before listening: {status}"))
    }
}

/// The `i`-th (mod 62) of 62 key values that differ from each other at every position, so
/// that editing from one to another is never refused as too similar (R4 + issue 12).
pub fn spread_key(i: usize) -> String {
    const ALNUM: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // 7 and 62 are coprime: for i != j (mod 62), position p differs by 7 (i - j) != 0 (mod 62).
    (0..12)
        .map(|p| ALNUM[(i * 7 + p * 11 + 3) % 62] as char)
        .collect()
}

/// Whether a key change was refused because its value is too similar to the current key or a
/// recently replaced one for the login protocol: keygate refuses about 1 in 7,000 random
/// values that way, so a test that edits to random values must allow it (nothing changed).
pub fn too_similar(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::BAD_REQUEST
        && body["code"] == "INVALID_INPUT_ARGUMENT"
        && body["field"] == "keyValue"
        && body["message"]
            .as_str()
            .is_some_and(|m| m.contains("too similar"))
}

/// A random key value that keygate will accept as an edit from any of `others` (the current
/// key and those replaced recently): distinguishable from each at every login timestamp.
pub fn random_key_unlike(others: &[String]) -> String {
    use keygate::domain::key::ApiKeyValue;
    use keygate::domain::login_guard::distinguishable;
    let others: Vec<ApiKeyValue> = others
        .iter()
        .filter_map(|o| ApiKeyValue::parse("k", o).ok())
        .collect();
    loop {
        let v = ApiKeyValue::generate(&mut rand::rngs::OsRng);
        if others.iter().all(|o| distinguishable(o, &v)) {
            return v.expose().to_owned();
        }
    }
}
