//! The web pages in a real browser: headless Chromium driven over WebDriver (chromedriver),
//! through every flow and state of the Cloud Service API Key page and the provider console,
//! asserting on the page and on the server's state, with a PNG screenshot of each state in
//! `target/screenshots/`. Plus the pages' security headers and CSRF/origin refusals over
//! plain HTTP.
//!
//! Chromium and chromedriver come from Debian (`chromium`, `chromium-driver`); set
//! `KEYGATE_CHROMIUM` / `KEYGATE_CHROMEDRIVER` to use others. Under `CI=true` a missing
//! browser fails the suite; elsewhere the browser tests are skipped with a loud message.

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::header::{HeaderMap, SET_COOKIE};
use reqwest::{Method, StatusCode, redirect};
use serde_json::{Value, json};

use crate::harness::*;

/// How long a page may take to show what a test waits for.
const WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ the browser

fn program(env_var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var).map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|c| c.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// chromedriver (in its own process group, with the Chromium it starts) and one WebDriver
/// session. Dropping it kills the whole group, so nothing outlives a failed test.
pub(crate) struct Browser {
    client: Option<Client>,
    driver: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    /// `None`: no browser here and not under CI, so the caller skips.
    async fn start(test: &str) -> Option<Browser> {
        let chromium = program(
            "KEYGATE_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let driver = program("KEYGATE_CHROMEDRIVER", &["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            assert!(
                !in_ci(),
                "{test}: Chromium and chromedriver are required under CI \
                 (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "\n==================== SKIPPED {test} ====================\n\
                 Chromium or chromedriver is not installed, so the browser tests did not run.\n\
                 Install them (Debian: apt-get install chromium chromium-driver) or set\n\
                 KEYGATE_CHROMIUM / KEYGATE_CHROMEDRIVER. Under CI=true this is a failure.\n\
                 =========================================================\n"
            );
            return None;
        };
        let mut last_error = String::new();
        for _attempt in 0..3 {
            match Self::try_start(&chromium, &driver).await {
                Ok(b) => return Some(b),
                Err(e) => last_error = e,
            }
        }
        panic!("{test}: could not start chromedriver/Chromium: {last_error}");
    }

    async fn try_start(chromium: &Path, driver: &Path) -> Result<Browser, String> {
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            l.local_addr().map_err(|e| e.to_string())?.port()
        };
        let log = std::fs::File::create(profile.path().join("chromedriver.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", driver.display()))?;
        let mut browser = Browser {
            client: None,
            driver: child,
            profile,
        };
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = browser.driver.try_wait() {
                return Err(format!("chromedriver exited: {status}"));
            }
            let ready = match http.get(format!("{url}/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .is_some_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err("chromedriver did not become ready".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let user_data = browser.profile.path().join("chrome");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--lang=en-US", "--window-size=1280,1000",
                    format!("--user-data-dir={}", user_data.display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .map_err(|e| format!("new WebDriver session: {e}"))?;
        browser.client = Some(client);
        Ok(browser)
    }

    fn client(&self) -> Client {
        self.client.clone().expect("session")
    }

    /// Ends the session (Chromium quits) and chromedriver.
    async fn finish(mut self) {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), c.close()).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group holds chromedriver and the Chromium it started.
        let pgid = self.driver.id() as i32;
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// Runs `body` with a browser, then ends it whether `body` passed or panicked.
pub(crate) async fn with_browser<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Ui) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let ui = Ui {
        c: browser.client(),
        base: String::new(),
    };
    let outcome = tokio::spawn(body(ui)).await;
    browser.finish().await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("{test}: {e}");
    }
}

fn screenshot_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    dir
}

/// The page in the browser, with waiting helpers.
#[derive(Clone)]
pub(crate) struct Ui {
    pub(crate) c: Client,
    pub(crate) base: String,
}

impl Ui {
    pub(crate) fn on(mut self, server: &TestServer) -> Self {
        self.base = server.base.clone();
        self
    }

    /// Pages from `base` (e.g. a load balancer in front of several nodes).
    pub(crate) fn at(mut self, base: &str) -> Self {
        self.base = base.to_owned();
        self
    }

    pub(crate) async fn goto(&self, path: &str) {
        self.c
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }

    pub(crate) async fn path(&self) -> String {
        let url = self.c.current_url().await.expect("current url");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Saves what the browser shows (PNG and HTML) beside the screenshots, for a failure.
    async fn evidence(&self) -> String {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let dir = screenshot_dir();
        if let Ok(png) = self.c.screenshot().await {
            let _ = std::fs::write(dir.join(format!("FAILED-{n}.png")), png);
        }
        if let Ok(html) = self.c.source().await {
            let _ = std::fs::write(dir.join(format!("FAILED-{n}.html")), html);
        }
        let path = self.path().await;
        format!("at {path}; see {}/FAILED-{n}.png", dir.display())
    }

    pub(crate) async fn wait_until(&self, script: &str, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Value::Bool(true)) = self.c.execute(script, vec![]).await {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what} ({})", self.evidence().await);
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    /// The element, once it is there.
    pub(crate) async fn el(&self, css: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(e) = self.c.find(Locator::Css(css)).await {
                return e;
            }
            if Instant::now() > deadline {
                panic!("no element {css} ({})", self.evidence().await);
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    /// Whether the loaded page has the element (no waiting: call it once the page is there).
    pub(crate) async fn has(&self, css: &str) -> bool {
        !self
            .c
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
            .is_empty()
    }

    pub(crate) async fn text(&self, css: &str) -> String {
        self.el(css).await.text().await.expect("text")
    }

    pub(crate) async fn wait_text(&self, css: &str, wanted: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(e) = self.c.find(Locator::Css(css)).await
                && let Ok(t) = e.text().await
                && t.contains(wanted)
            {
                return t;
            }
            if Instant::now() > deadline {
                let now = match self.c.find(Locator::Css(css)).await {
                    Ok(e) => e.text().await.unwrap_or_default(),
                    Err(_) => "<absent>".into(),
                };
                panic!(
                    "{css} never showed {wanted:?} (shows {now:?}; {})",
                    self.evidence().await
                );
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    pub(crate) async fn click(&self, css: &str) {
        self.el(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    pub(crate) async fn fill(&self, css: &str, value: &str) {
        let e = self.el(css).await;
        e.clear().await.expect("clear");
        if !value.is_empty() {
            e.send_keys(value).await.expect("type");
        }
    }

    pub(crate) async fn dialog_open(&self, id: &str) -> bool {
        let script = format!("return !!document.getElementById('{id}')?.open;");
        matches!(self.c.execute(&script, vec![]).await, Ok(Value::Bool(true)))
    }

    pub(crate) async fn wait_dialog(&self, id: &str) {
        self.wait_until(
            &format!("return !!document.getElementById('{id}')?.open;"),
            &format!("dialog #{id} to open"),
        )
        .await;
    }

    /// Does `act`, then waits for a new document to have loaded.
    pub(crate) async fn navigating<Fut: Future<Output = ()>>(&self, act: Fut) {
        self.c
            .execute("window.__keygateOldPage = true; return null;", vec![])
            .await
            .expect("mark page");
        act.await;
        self.wait_until(
            "return window.__keygateOldPage === undefined && document.readyState === 'complete';",
            "the next page",
        )
        .await;
    }

    pub(crate) async fn submit_with(&self, css: &str) {
        self.navigating(self.click(css)).await;
    }

    /// Saves a PNG of the viewport as `target/screenshots/<name>.png`.
    pub(crate) async fn shot(&self, name: &str) -> PathBuf {
        let png = self.c.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    async fn cookie(&self, name: &str) -> Option<String> {
        self.c
            .get_all_cookies()
            .await
            .expect("cookies")
            .into_iter()
            .find(|c| c.name() == name)
            .map(|c| c.value().to_owned())
    }

    pub(crate) async fn portal_login(&self, login: &str) {
        self.goto("/portal/login").await;
        self.fill("#login-name", login).await;
        self.fill("#password", PASSWORD).await;
        self.submit_with("#sign-in").await;
        assert_eq!(self.path().await, "/portal/key", "signed in as {login}");
    }

    async fn portal_logout(&self) {
        self.submit_with("#logout").await;
        assert!(self.path().await.starts_with("/portal/login"));
    }

    /// The change controls the key page shows.
    async fn change_controls(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for id in ["add-key", "edit-key", "regenerate-key", "delete-key"] {
            if self.has(&format!("#{id}")).await {
                out.push(id);
            }
        }
        out
    }
}

pub(crate) fn masked(full: &str) -> String {
    format!("*********{}", &full[9..])
}

fn has_audit(records: &[Value], action: &str, actor: &str) -> bool {
    records
        .iter()
        .any(|r| r["action"] == action && r["actorName"] == actor)
}

async fn org_json(server: &TestServer, id: i64) -> Value {
    let (status, org) = server
        .provider(Method::GET, &format!("/provider/v1/orgs/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{org}");
    org
}

// ------------------------------------------------------------------ the key page

/// Login, reveal, edit (a bad value, a value the server refuses, a good one), regenerate,
/// delete, add, the audit trail, logout, and the view-only admin.
#[tokio::test]
async fn browser_admin_key_page() {
    let server = TestServer::start().await;
    server.create_org("web").await;
    let api = server.login("full@web").await;
    let base = server.base.clone();
    with_browser("browser_admin_key_page", move |ui| async move {
        let ui = ui.on(&server);

        // Not signed in: the login page. A wrong password gets the server's answer.
        ui.goto("/portal/key").await;
        assert_eq!(ui.path().await, "/portal/login");
        ui.fill("#login-name", "full@web").await;
        ui.fill("#password", "not-the-password-at-all").await;
        ui.submit_with("#sign-in").await;
        assert_eq!(ui.text("#error").await, "Authentication failed");
        ui.shot("00-portal-login-failed").await;

        // Enabled.
        ui.portal_login("full@web").await;
        assert_eq!(ui.text("h1").await, "Cloud Service API Key");
        let full = api.reveal().await;
        assert_eq!(ui.text("#key-value").await, masked(&full));
        assert_eq!(ui.text("#key-status").await, "Enabled");
        assert_eq!(ui.text("#base-url").await, format!("{base}/api/v1"));
        assert_eq!(ui.text("#last-modified-by").await, "bootstrap token");
        assert_eq!(
            ui.text("#last-modified-time").await,
            "2026-11-01 00:00:00 UTC"
        );
        assert_eq!(
            ui.change_controls().await,
            ["edit-key", "regenerate-key", "delete-key"],
            "a key exists: no Add"
        );
        ui.shot("01-key-enabled").await;

        // Reveal: the page asks the server, which audits it; the URL never holds the key.
        let before = api.audit().await.len();
        ui.click("#reveal").await;
        ui.wait_text("#key-value", &full).await;
        assert_eq!(ui.text("#reveal").await, "Hide");
        assert!(!ui.path().await.contains(&full));
        let audit = api.audit().await;
        assert!(audit.len() > before && has_audit(&audit, "KEY_REVEAL", "full@web"));
        ui.shot("02-key-revealed").await;
        ui.click("#reveal").await;
        ui.wait_text("#key-value", "*********").await;

        // Edit, a value the page's check refuses: the dialog stays, nothing is sent.
        ui.click("#edit-key").await;
        ui.wait_dialog("edit-dialog").await;
        ui.fill("#new-api-key", "abc-12").await;
        ui.wait_text("#new-api-key-msg", "must be alphanumeric")
            .await;
        ui.click("#edit-confirm").await;
        assert!(ui.dialog_open("edit-dialog").await);
        assert_eq!(ui.path().await, "/portal/key");
        ui.fill("#new-api-key", "abc12").await;
        ui.wait_text("#new-api-key-msg", "exactly 12 characters")
            .await;
        ui.shot("03-edit-invalid").await;
        assert_eq!(api.reveal().await, full, "nothing changed");

        // Edit, a well-formed value the server refuses (the current key): its message as is.
        let refused = api.edit(json!(full)).await;
        assert_eq!(refused.0, StatusCode::BAD_REQUEST);
        ui.fill("#new-api-key", &full).await;
        ui.wait_until(
            "return document.getElementById('new-api-key-msg').textContent === '';",
            "the page's check to pass",
        )
        .await;
        ui.submit_with("#edit-confirm").await;
        ui.wait_dialog("edit-dialog").await;
        assert_eq!(
            ui.text("#new-api-key-msg").await,
            refused.1["message"].as_str().unwrap()
        );

        // A malformed value sent past the page's check: the server's own message.
        let server_says = api.edit(json!("short")).await;
        ui.navigating(async {
            ui.c.execute(
                "const f = document.getElementById('edit-form'); \
                 f.elements.key_value.value = 'short'; f.submit(); return null;",
                vec![],
            )
            .await
            .expect("submit past the check");
        })
        .await;
        ui.wait_dialog("edit-dialog").await;
        assert_eq!(
            ui.text("#new-api-key-msg").await,
            server_says.1["message"].as_str().unwrap()
        );
        assert_eq!(api.reveal().await, full, "nothing changed");

        // A good value.
        let edited = "WebKey2026ab";
        ui.fill("#new-api-key", edited).await;
        ui.submit_with("#edit-confirm").await;
        ui.wait_text("#notice", "The Cloud Service API Key was changed")
            .await;
        assert_eq!(ui.text("#key-value").await, masked(edited));
        assert!(!ui.path().await.contains(edited));
        assert_eq!(
            api.reveal().await,
            edited,
            "the server holds the value typed"
        );
        ui.click("#reveal").await;
        ui.wait_text("#key-value", edited).await;
        assert_eq!(ui.text("#last-modified-by").await, "full@web");
        ui.shot("04-key-edited").await;

        // Regenerate: Cancel changes nothing; Escape closes the dialog; Ok by keyboard.
        ui.click("#regenerate-key").await;
        ui.wait_dialog("regenerate-dialog").await;
        let focused =
            ui.c.execute(
                "return document.activeElement && document.activeElement.id;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(focused, "regenerate-cancel", "focus moves into the dialog");
        ui.click("#regenerate-cancel").await;
        assert!(!ui.dialog_open("regenerate-dialog").await);
        ui.click("#regenerate-key").await;
        ui.wait_dialog("regenerate-dialog").await;
        ui.c.active_element()
            .await
            .unwrap()
            .send_keys("\u{E00C}")
            .await
            .unwrap();
        ui.wait_until(
            "return !document.getElementById('regenerate-dialog').open;",
            "Escape to close the dialog",
        )
        .await;
        assert_eq!(api.reveal().await, edited, "nothing changed");
        ui.click("#regenerate-key").await;
        ui.wait_dialog("regenerate-dialog").await;
        let ok = ui.el("#regenerate-ok").await;
        ui.navigating(async { ok.send_keys("\u{E007}").await.expect("Enter on Ok") })
            .await;
        ui.wait_text("#notice", "A new Cloud Service API Key was generated")
            .await;
        let regenerated = api.reveal().await;
        assert_ne!(regenerated, edited);
        assert_eq!(ui.text("#key-value").await, masked(&regenerated));
        ui.shot("05-key-regenerated").await;

        // Delete: only Add remains.
        ui.click("#delete-key").await;
        ui.wait_dialog("delete-dialog").await;
        ui.submit_with("#delete-ok").await;
        ui.wait_text("#notice", "The Cloud Service API Key was deleted")
            .await;
        assert!(ui.has("#no-key").await && !ui.has("#key-value").await && !ui.has("#reveal").await);
        assert_eq!(ui.change_controls().await, ["add-key"]);
        assert!(ui.has("#banner-no-key").await);
        assert_eq!(api.key().await.0, StatusCode::NOT_FOUND);
        ui.shot("06-no-key").await;

        // Add.
        ui.click("#add-key").await;
        ui.wait_dialog("add-dialog").await;
        assert_eq!(ui.text("#add-title").await, "Add Cloud Service API Key");
        ui.submit_with("#add-ok").await;
        ui.wait_text("#notice", "The Cloud Service API Key was added")
            .await;
        let added = api.reveal().await;
        assert_eq!(ui.text("#key-value").await, masked(&added));
        assert_eq!(ui.text("#key-status").await, "Enabled");
        assert_eq!(
            ui.change_controls().await,
            ["edit-key", "regenerate-key", "delete-key"]
        );
        let audit_text = ui.text("#audit-table").await;
        for action in [
            "KEY_ADD",
            "KEY_DELETE",
            "KEY_REGENERATE",
            "KEY_EDIT",
            "KEY_REVEAL",
        ] {
            assert!(audit_text.contains(action), "audit trail shows {action}");
        }
        assert!(!audit_text.contains(&added) && !audit_text.contains(edited));
        ui.shot("07-key-added").await;

        // The audit trail pages.
        assert!(ui.text("#audit-page").await.starts_with("Page 1 of "));
        ui.navigating(ui.click("#audit-older")).await;
        assert!(ui.text("#audit-page").await.starts_with("Page 2 of "));
        assert!(ui.path().await.starts_with("/portal/key?page=2"));

        // Logout ends the session on the server: its cookie no longer works.
        let session = ui.cookie("keygate_console").await.expect("session cookie");
        ui.portal_logout().await;
        assert_eq!(ui.text("#notice").await, "You have logged out.");
        let resp = reqwest::Client::new()
            .get(format!("{base}/admin/v1/apiKey"))
            .header("Cookie", format!("keygate_console={session}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        ui.goto("/portal/key").await;
        assert_eq!(ui.path().await, "/portal/login");

        // View only: the page, the reveal, and no change control.
        ui.portal_login("view@web").await;
        assert!(ui.change_controls().await.is_empty());
        assert!(ui.has("#banner-view-only").await);
        assert_eq!(ui.text("#role").await, "View only");
        ui.click("#reveal").await;
        ui.wait_text("#key-value", &added).await;
        ui.shot("08-view-only").await;
        let view = server.login("view@web").await;
        assert_eq!(
            view.regenerate().await.1["code"],
            "NOT_AUTHORIZED",
            "the server agrees"
        );
        ui.portal_logout().await;
    })
    .await;
}

// ------------------------------------------------------------------ console and states

/// The provider console (login, orgs table with search and pages, create, disable/enable,
/// expire/renew, turn off, limits, admins) and what each state does to the key page.
#[tokio::test]
async fn browser_provider_console_and_key_states() {
    let server = TestServer::start().await;
    let org = server.create_org("st").await;
    let id = org["id"].as_i64().unwrap();
    let never = server
        .create_org_with("ne", json!({"enabled": false, "expiresAt": null}))
        .await;
    assert_eq!(never["keyStatus"], "NONE");
    for i in 1..=21 {
        let (status, body) = server
            .provider(
                Method::POST,
                "/provider/v1/orgs",
                Some(json!({"name": format!("Bulk {i:02}"), "subscription": {"enabled": true, "expiresAt": null}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let admin = server.login("full@st").await;
    with_browser(
        "browser_provider_console_and_key_states",
        move |ui| async move {
            let ui = ui.on(&server);

            // Sign in with the provider token; a wrong one is refused.
            ui.goto("/console/orgs").await;
            assert_eq!(ui.path().await, "/console/login");
            ui.fill("#provider-token", "wrong-token").await;
            ui.submit_with("#sign-in").await;
            assert_eq!(ui.text("#error").await, "Authentication failed");
            ui.shot("09-console-login-failed").await;
            ui.fill("#provider-token", PROVIDER_TOKEN).await;
            ui.submit_with("#sign-in").await;
            assert_eq!(ui.path().await, "/console/orgs");

            // The table: pages of 20, searchable.
            assert_eq!(
                ui.text("#orgs-page").await,
                "Page 1 of 2 (23 organizations)"
            );
            let row = ui.text(&format!("tr[data-org-id='{id}']")).await;
            assert!(
                row.contains("Org st") && row.contains("ACTIVE") && row.contains("ENABLED"),
                "{row}"
            );
            assert!(row.contains("0 calls this hour (no threshold)"), "{row}");
            ui.shot("10-console-orgs").await;
            ui.navigating(ui.click("#orgs-next")).await;
            assert_eq!(
                ui.text("#orgs-page").await,
                "Page 2 of 2 (23 organizations)"
            );
            ui.fill("#search", "org n").await;
            ui.submit_with("#search-button").await;
            let rows =
                ui.c.find_all(Locator::Css("#orgs-table tbody tr"))
                    .await
                    .unwrap();
            assert_eq!(rows.len(), 1);
            let row = rows[0].text().await.unwrap();
            assert!(
                row.contains("Org ne") && row.contains("NOT_ENABLED") && row.contains("NONE"),
                "{row}"
            );

            // Create an org through the form, with a confirmation.
            ui.goto("/console/orgs").await;
            ui.click("#create-org > summary").await;
            ui.fill("#org-name", "Org made").await;
            ui.fill("#full-login", "full@made").await;
            ui.fill("#full-password", PASSWORD).await;
            ui.fill("#create-calls", "1000").await;
            ui.fill("#create-period", "3600").await;
            ui.click("#create-org-submit").await;
            ui.wait_dialog("confirm-dialog").await;
            ui.submit_with("#confirm-ok").await;
            ui.wait_text("#notice", "The organization was created.")
                .await;
            let made_id: i64 = ui.text("#org-id").await.parse().unwrap();
            let made = org_json(&server, made_id).await;
            assert_eq!(made["name"], "Org made");
            assert_eq!(made["keyStatus"], "ENABLED");
            assert_eq!(
                made["callThreshold"],
                json!({"calls": 1000, "periodSeconds": 3600})
            );
            assert_eq!(made["admins"][0]["loginName"], "full@made");

            // Disable with a reason; Cancel first changes nothing.
            ui.goto(&format!("/console/orgs/{id}")).await;
            assert_eq!(ui.text("#key-status").await, "ENABLED");
            ui.el("#disable-reason")
                .await
                .select_by_value("TERMS_VIOLATION")
                .await
                .unwrap();
            ui.fill("#disable-note", "abuse report 42").await;
            ui.click("#disable-key").await;
            ui.wait_dialog("confirm-dialog").await;
            assert!(
                ui.text("#confirm-text")
                    .await
                    .starts_with("Disable the API key of Org st?")
            );
            ui.click("#confirm-cancel").await;
            assert_eq!(org_json(&server, id).await["keyStatus"], "ENABLED");
            ui.click("#disable-key").await;
            ui.wait_dialog("confirm-dialog").await;
            ui.shot("11-console-confirm-disable").await;
            ui.submit_with("#confirm-ok").await;
            ui.wait_text("#notice", "was disabled").await;
            assert_eq!(ui.text("#key-status").await, "DISABLED");
            let now = org_json(&server, id).await;
            assert_eq!(now["keyStatus"], "DISABLED");
            assert_eq!(now["keyDisabledReason"], "TERMS_VIOLATION");
            assert_eq!(now["apiKey"]["disabledNote"], "abuse report 42");
            ui.shot("11b-console-key-disabled").await;

            // The key page while disabled: status and reason, no change control.
            ui.portal_login("full@st").await;
            assert_eq!(ui.text("#key-status").await, "Disabled");
            let reason = ui.text("#key-reason").await;
            assert!(
                reason.contains("TERMS_VIOLATION") && reason.contains("abuse report 42"),
                "{reason}"
            );
            assert!(
                ui.text("#banner-disabled")
                    .await
                    .contains("disabled by the platform operator")
            );
            assert!(ui.change_controls().await.is_empty());
            ui.shot("12-key-disabled").await;
            assert_eq!(
                admin.regenerate().await.1["code"],
                "API_KEY_DISABLED",
                "the server agrees"
            );

            // Enable again.
            ui.goto(&format!("/console/orgs/{id}")).await;
            ui.click("#enable-key").await;
            ui.wait_dialog("confirm-dialog").await;
            ui.submit_with("#confirm-ok").await;
            ui.wait_text("#notice", "re-enabled").await;
            assert_eq!(org_json(&server, id).await["keyStatus"], "ENABLED");
            ui.goto("/portal/key").await;
            assert_eq!(ui.text("#key-status").await, "Enabled");
            assert_eq!(
                ui.change_controls().await,
                ["edit-key", "regenerate-key", "delete-key"]
            );

            // Expire now: the key page is read-only, the key shows Disabled / SUBSCRIPTION_EXPIRED.
            let value = admin.reveal().await;
            ui.goto(&format!("/console/orgs/{id}")).await;
            ui.click("#expire-now").await;
            ui.wait_dialog("confirm-dialog").await;
            ui.submit_with("#confirm-ok").await;
            ui.wait_text("#notice", "was expired").await;
            assert_eq!(ui.text("#sub-state").await, "EXPIRED");
            assert_eq!(
                org_json(&server, id).await["subscription"]["state"],
                "EXPIRED"
            );
            ui.goto("/portal/key").await;
            assert!(ui.text("#banner-expired").await.contains("read-only"));
            assert_eq!(ui.text("#key-status").await, "Disabled");
            assert!(
                ui.text("#key-reason")
                    .await
                    .contains("SUBSCRIPTION_EXPIRED")
            );
            assert!(ui.change_controls().await.is_empty());
            ui.click("#reveal").await;
            ui.wait_text("#key-value", &value).await;
            ui.shot("13-subscription-expired").await;
            assert_eq!(
                admin.regenerate().await.1["code"],
                "SUBSCRIPTION_EXPIRED",
                "the server agrees"
            );

            // Renew for good, then until a date.
            ui.goto(&format!("/console/orgs/{id}")).await;
            ui.click("#renew").await;
            ui.wait_dialog("confirm-dialog").await;
            ui.submit_with("#confirm-ok").await;
            ui.wait_text("#notice", "was renewed").await;
            let now = org_json(&server, id).await;
            assert_eq!(
                now["subscription"],
                json!({"enabled": true, "expiresAt": null, "state": "ACTIVE"})
            );
            ui.fill("#renew-expires", "2027-01-01").await;
            ui.click("#renew").await;
            ui.wait_dialog("confirm-dialog").await;
            ui.submit_with("#confirm-ok").await;
            ui.wait_text("#sub-detail", "Active until 2027-01-01 00:00:00 UTC")
                .await;
            assert_eq!(
                org_json(&server, id).await["subscription"]["expiresAt"],
                1_798_761_600
            );
            ui.fill("#renew-expires", "next tuesday").await;
            ui.click("#renew").await;
            ui.wait_dialog("confirm-dialog").await;
            ui.submit_with("#confirm-ok").await;
            assert!(
                ui.text("#error")
                    .await
                    .starts_with("expiresAt: must be a UTC date")
            );
            ui.goto("/portal/key").await;
            assert_eq!(ui.text("#key-status").await, "Enabled");
            assert_eq!(admin.reveal().await, value, "renewal keeps the value");
            assert_eq!(
                ui.change_controls().await,
                ["edit-key", "regenerate-key", "delete-key"]
            );

            // Limits.
            ui.goto(&format!("/console/orgs/{id}")).await;
            ui.fill("#threshold-calls", "500").await;
            ui.fill("#threshold-period", "60").await;
            ui.click("#save-limits").await;
            ui.wait_dialog("confirm-dialog").await;
            ui.submit_with("#confirm-ok").await;
            ui.wait_text("#notice", "limits were saved").await;
            assert_eq!(ui.text("#usage").await, "0 / 500 calls per minute");
            assert_eq!(
                org_json(&server, id).await["callThreshold"],
                json!({"calls": 500, "periodSeconds": 60})
            );
            ui.fill("#threshold-calls", "0").await;
            ui.click("#save-limits").await;
            ui.wait_dialog("confirm-dialog").await;
            ui.submit_with("#confirm-ok").await;
            assert_eq!(
                ui.text("#error").await,
                "callThreshold.calls: must be at least 1"
            );

            // Admins: add, then remove.
            ui.goto(&format!("/console/orgs/{id}")).await;
            ui.fill("#admin-login", "extra@st").await;
            ui.fill("#admin-password", PASSWORD).await;
            ui.el("#admin-role")
                .await
                .select_by_value("VIEW_ONLY")
                .await
                .unwrap();
            ui.click("#add-admin").await;
            ui.wait_dialog("confirm-dialog").await;
            ui.submit_with("#confirm-ok").await;
            ui.wait_text("#notice", "admin was added").await;
            let admins = org_json(&server, id).await["admins"].clone();
            assert!(
                admins
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["loginName"] == "extra@st" && a["role"] == "VIEW_ONLY")
            );
            ui.click("tr[data-admin='extra@st'] .remove-admin").await;
            ui.wait_dialog("confirm-dialog").await;
            ui.submit_with("#confirm-ok").await;
            ui.wait_text("#notice", "admin was removed").await;
            let admins = org_json(&server, id).await["admins"].clone();
            assert!(
                !admins
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["loginName"] == "extra@st")
            );
            assert!(ui.text("#audit-table").await.contains("ADMIN_REMOVE"));
            ui.shot("14-console-org").await;

            // Turn the subscription off: not enabled, no change control.
            ui.click("#turn-off").await;
            ui.wait_dialog("confirm-dialog").await;
            ui.submit_with("#confirm-ok").await;
            ui.wait_text("#notice", "turned off").await;
            assert_eq!(
                org_json(&server, id).await["subscription"]["state"],
                "NOT_ENABLED"
            );
            ui.goto("/portal/key").await;
            assert!(ui.has("#banner-not-enabled").await);
            assert!(ui.text("#key-reason").await.contains("NO_API_SUBSCRIPTION"));
            assert!(ui.change_controls().await.is_empty());
            ui.shot("15-subscription-not-enabled").await;
            ui.portal_logout().await;

            // An org whose subscription was never enabled: no key, and no Add.
            ui.portal_login("full@ne").await;
            assert!(ui.has("#no-key").await && ui.has("#banner-not-enabled").await);
            assert!(ui.change_controls().await.is_empty());
            ui.shot("16-never-enabled-no-key").await;
            ui.portal_logout().await;

            // Console logout.
            ui.goto("/console/orgs").await;
            ui.submit_with("#logout").await;
            assert!(ui.path().await.starts_with("/console/login"));
            ui.goto("/console/orgs").await;
            assert_eq!(ui.path().await, "/console/login");
        },
    )
    .await;
}

// ------------------------------------------------------------------ headers and CSRF

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

fn set_cookies(h: &HeaderMap) -> Vec<String> {
    h.get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn cookie_named(h: &HeaderMap, name: &str) -> Option<String> {
    set_cookies(h)
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
}

/// The value of the first `name="csrf"` field in a page.
fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// A browser-like client over plain HTTP: keeps cookies by hand, follows no redirect.
struct Form {
    http: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
}

impl Form {
    fn new(base: &str) -> Self {
        Form {
            http: no_redirects(),
            base: base.to_owned(),
            cookies: Vec::new(),
        }
    }

    fn keep(&mut self, h: &HeaderMap) {
        for c in set_cookies(h) {
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !v.is_empty() {
                self.cookies.push((k.to_owned(), v.to_owned()));
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, path: &str) -> (StatusCode, HeaderMap, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        let (s, h) = (r.status(), r.headers().clone());
        self.keep(&h);
        (s, h, r.text().await.unwrap())
    }

    async fn post(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Cookie", self.cookie_header())
            .form(fields);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let (s, h) = (r.status(), r.headers().clone());
        self.keep(&h);
        (s, h, r.text().await.unwrap())
    }
}

/// Form fields or request headers.
type Pairs<'a> = &'a [(&'a str, &'a str)];

fn assert_page_headers(h: &HeaderMap, what: &str) {
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{what}: {csp}"
    );
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{what}: {csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY", "{what}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(h["cache-control"], "no-store", "{what}");
    assert_eq!(h["referrer-policy"], "same-origin", "{what}");
}

/// Security headers on every page, cookie attributes, and forms that fail the CSRF or
/// origin check change nothing; logout ends the session; failed logins are throttled.
#[tokio::test]
async fn pages_security_headers_and_csrf() {
    let server = TestServer::start().await;
    let org = server.create_org("sec").await;
    let org_id = org["id"].as_i64().unwrap();
    let api = server.login("full@sec").await;
    let base = server.base.clone();
    let same = [("Origin", base.as_str())];

    // The login page: headers, and the login form's CSRF cookie.
    let mut b = Form::new(&base);
    let (status, h, html) = b.get("/portal/login").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_page_headers(&h, "/portal/login");
    let login_cookie = cookie_named(&h, "keygate_login_csrf").expect("login csrf cookie");
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));
    assert!(!login_cookie.contains("Secure"), "plain http: no Secure");
    assert!(!html.contains("<script>") && !html.contains("style=") && !html.contains("onclick"));
    let login_csrf = csrf_in(&html);

    // Static assets: right types, long cache.
    let (status, h, js) = b.get("/static/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert!(
        h["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=31536000")
    );
    assert!(js.contains("/admin/v1/apiKey/reveal"));
    let (_, h, _) = b.get("/static/app.css").await;
    assert_eq!(h["content-type"], "text/css; charset=utf-8");

    // A login without its token, or from another site, is refused and not even tried.
    let creds = [("login_name", "full@sec"), ("password", PASSWORD)];
    let (status, h, _) = b.post("/portal/login", &creds, &same).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_page_headers(&h, "403");
    let with_token = [
        ("csrf", login_csrf.as_str()),
        ("login_name", "full@sec"),
        ("password", PASSWORD),
    ];
    let (status, _, _) = b
        .post(
            "/portal/login",
            &with_token,
            &[("Origin", "https://evil.example")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        api.audit()
            .await
            .iter()
            .filter(|r| r["action"] == "LOGIN_SUCCESS")
            .count(),
        1,
        "only the API login so far"
    );

    // The login that works: session cookies with the right attributes.
    let (status, h, _) = b.post("/portal/login", &with_token, &same).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/portal/key");
    let session = cookie_named(&h, "keygate_console").expect("session cookie");
    assert!(
        session.contains("HttpOnly")
            && session.contains("SameSite=Strict")
            && session.contains("Path=/")
    );
    let page_csrf = cookie_named(&h, "keygate_portal_csrf").expect("page csrf cookie");
    assert!(page_csrf.contains("HttpOnly") && page_csrf.contains("SameSite=Strict"));
    let session_value = session
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();

    let (status, h, html) = b.get("/portal/key").await;
    assert_eq!(status, StatusCode::OK);
    assert_page_headers(&h, "/portal/key");
    let key = api.reveal().await;
    assert!(
        html.contains(&masked(&key)) && !html.contains(&key),
        "the page shows the key masked"
    );
    let csrf = csrf_in(&html);

    // Changes without the token, with a wrong one, or from another site: 403, nothing done.
    let refusals: [(Pairs, Pairs); 6] = [
        (&[], &same),
        (&[("csrf", "not-the-token")], &same),
        (
            &[("csrf", csrf.as_str())],
            &[("Origin", "https://evil.example")],
        ),
        (&[("csrf", csrf.as_str())], &[("Origin", "null")]),
        (
            &[("csrf", csrf.as_str())],
            &[("Referer", "https://evil.example/page")],
        ),
        (
            &[("csrf", csrf.as_str())],
            &[("Sec-Fetch-Site", "cross-site")],
        ),
    ];
    for path in [
        "/portal/key/regenerate",
        "/portal/key/delete",
        "/portal/key/reveal",
    ] {
        for (fields, headers) in refusals {
            let (status, _, body) = b.post(path, fields, headers).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{path} {fields:?} {headers:?}"
            );
            assert!(body.contains("Nothing was changed") && !body.contains(&key));
        }
    }
    let edit = [("csrf", "nope"), ("key_value", "Forged123456")];
    assert_eq!(
        b.post("/portal/key/edit", &edit, &same).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(api.reveal().await, key, "the key is unchanged");
    let audit = api.audit().await;
    for action in ["KEY_REGENERATE", "KEY_DELETE", "KEY_EDIT"] {
        assert!(!has_audit(&audit, action, "full@sec"), "{action} happened");
    }
    assert_eq!(
        audit.iter().filter(|r| r["action"] == "KEY_REVEAL").count(),
        2,
        "only the API's reveals"
    );

    // No key value in a URL: reveal and the changes are POST only.
    for path in [
        "/portal/key/reveal",
        "/portal/key/edit",
        "/portal/key/delete",
    ] {
        assert_eq!(
            b.get(path).await.0,
            StatusCode::METHOD_NOT_ALLOWED,
            "GET {path}"
        );
    }

    // The same form with its token from this site works (the control).
    let (status, h, _) = b
        .post("/portal/key/regenerate", &[("csrf", csrf.as_str())], &same)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/portal/key?done=regenerated");
    assert_ne!(api.reveal().await, key);
    // Without script, Reveal posts and the value comes back in the body, never the URL.
    let (status, _, html) = b
        .post(
            "/portal/key/reveal",
            &[("csrf", csrf.as_str())],
            &[("Referer", &format!("{base}/portal/key"))],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(&api.reveal().await));

    // Logout ends the session on the server.
    let (status, h, _) = b
        .post("/portal/logout", &[("csrf", csrf.as_str())], &same)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        cookie_named(&h, "keygate_console")
            .unwrap()
            .contains("Max-Age=0")
    );
    let resp = reqwest::Client::new()
        .get(format!("{base}/admin/v1/apiKey"))
        .header("Cookie", format!("keygate_console={session_value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, h, _) = b.get("/portal/key").await;
    assert_eq!(
        (status, h["location"].to_str().unwrap()),
        (StatusCode::SEE_OTHER, "/portal/login")
    );

    // Failed logins are throttled; the page says so with the server's message.
    let mut last = (StatusCode::OK, HeaderMap::new(), String::new());
    for _ in 0..6 {
        let wrong = [
            ("csrf", login_csrf.as_str()),
            ("login_name", "full@sec"),
            ("password", "wrong-password-123"),
        ];
        last = b.post("/portal/login", &wrong, &same).await;
    }
    assert_eq!(last.0, StatusCode::TOO_MANY_REQUESTS);
    assert!(last.1.contains_key("retry-after"));
    assert!(
        last.2.contains("Rate limit exceeded; retry after"),
        "throttle message shown"
    );
    let (status, _, _) = b.post("/portal/login", &with_token, &same).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );

    // The provider console: the same refusals.
    let mut p = Form::new(&base);
    let (_, h, html) = p.get("/console/login").await;
    assert_page_headers(&h, "/console/login");
    let token_csrf = csrf_in(&html);
    let (status, _, _) = p
        .post("/console/login", &[("token", PROVIDER_TOKEN)], &same)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no login token");
    let (status, h, _) = p
        .post(
            "/console/login",
            &[("csrf", token_csrf.as_str()), ("token", PROVIDER_TOKEN)],
            &same,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let provider_cookie = cookie_named(&h, "keygate_provider").expect("provider session cookie");
    assert!(provider_cookie.contains("HttpOnly") && provider_cookie.contains("SameSite=Strict"));
    assert!(!provider_cookie.contains(PROVIDER_TOKEN));
    let (status, h, html) = p.get(&format!("/console/orgs/{org_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_page_headers(&h, "/console/orgs/{id}");
    let pcsrf = csrf_in(&html);
    let disable = format!("/console/orgs/{org_id}/key/disable");
    let reason = ("reason", "TERMS_VIOLATION");
    for (fields, headers) in [
        (vec![reason], same.to_vec()),
        (vec![reason, ("csrf", "forged")], same.to_vec()),
        (
            vec![reason, ("csrf", pcsrf.as_str())],
            vec![("Origin", "https://evil.example")],
        ),
    ] {
        let (status, _, _) = p.post(&disable, &fields, &headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{fields:?} {headers:?}");
    }
    assert_eq!(
        org_json(&server, org_id).await["keyStatus"],
        "ENABLED",
        "nothing changed"
    );
    let (status, _, _) = p
        .post(&disable, &[reason, ("csrf", pcsrf.as_str())], &same)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(org_json(&server, org_id).await["keyStatus"], "DISABLED");
    let (status, _, _) = p
        .post("/console/logout", &[("csrf", pcsrf.as_str())], &same)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, _) = p.get("/console/orgs").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the provider session ended");

    // Under an https public URL, the cookies are Secure.
    let tls =
        TestServer::start_with(|c| c.public_base_url = Some("https://keygate.example".into()))
            .await;
    let (_, h, _) = Form::new(&tls.base).get("/portal/login").await;
    assert!(
        cookie_named(&h, "keygate_login_csrf")
            .unwrap()
            .contains("; Secure")
    );
}
