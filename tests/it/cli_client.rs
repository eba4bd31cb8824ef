//! The client subcommands (`keygate provider …`, `keygate admin …`) run as the real binary
//! against an in-process server.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::*;

/// What one run of the binary did.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        assert!(self.success, "command failed: {}", self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts a failure whose stderr reports `code` in the `error: CODE: message` shape.
    fn assert_error(&self, code: &str) {
        assert!(
            !self.success,
            "expected {code}, but it succeeded: {}",
            self.stdout
        );
        assert!(
            self.stderr.contains(&format!("error: {code}: ")),
            "expected {code} on stderr: {:?}",
            self.stderr
        );
        assert!(self.stdout.is_empty(), "stdout on error: {:?}", self.stdout);
    }
}

/// Runs `keygate ARGS` with `ENV` (and `stdin`) on a blocking thread, so that the server,
/// which lives on this test's runtime, keeps answering.
async fn keygate(
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    stdin: Option<String>,
) -> Run {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.args(&args)
            .env_remove("KEYGATE_URL")
            .env_remove("KEYGATE_PROVIDER_TOKEN")
            .env_remove("KEYGATE_ADMIN_LOGIN")
            .env_remove("KEYGATE_ADMIN_PASSWORD")
            .envs(env)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn keygate");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        let out = child.wait_with_output().expect("wait for keygate");
        Run {
            success: out.status.success(),
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
        }
    })
    .await
    .expect("join")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `keygate provider --url … --output json ARGS`, token from the environment.
async fn provider(server: &TestServer, args: &[&str]) -> Run {
    let mut all = strings(&["provider", "--url", &server.base, "--output", "json"]);
    all.extend(strings(args));
    keygate(
        all,
        vec![("KEYGATE_PROVIDER_TOKEN", PROVIDER_TOKEN.to_string())],
        None,
    )
    .await
}

/// `keygate admin --url … --login LOGIN --output json ARGS`, password from the environment.
async fn admin(server: &TestServer, login: &str, args: &[&str]) -> Run {
    admin_as(server, login, PASSWORD, "json", args).await
}

async fn admin_as(
    server: &TestServer,
    login: &str,
    password: &str,
    output: &str,
    args: &[&str],
) -> Run {
    let mut all = strings(&[
        "admin",
        "--url",
        &server.base,
        "--login",
        login,
        "--output",
        output,
    ]);
    all.extend(strings(args));
    keygate(
        all,
        vec![("KEYGATE_ADMIN_PASSWORD", password.to_string())],
        None,
    )
    .await
}

fn id_of(v: &Value) -> String {
    v["id"].as_i64().expect("numeric id").to_string()
}

fn actions(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect()
}

fn is_key(s: &str) -> bool {
    s.len() == 12 && s.chars().all(|c| c.is_ascii_alphanumeric())
}

// ----------------------------------------------------------------------------- provider

#[tokio::test]
async fn provider_creates_lists_and_gets_orgs() {
    let server = TestServer::start().await;
    // The password holds colons: only the first and last colon of --admin separate fields.
    let colon_password = "pass:word:with:colons";
    let expires = (T0_SECS + 86_400).to_string();
    let run = provider(
        &server,
        &[
            "orgs",
            "create",
            "--name",
            "Cli Widgets",
            "--admin",
            &format!("boss@cliw:{colon_password}:FULL"),
            "--admin",
            &format!("peek@cliw:{PASSWORD}:VIEW_ONLY"),
            "--expires-at",
            &expires,
            "--call-threshold",
            "500/3600",
        ],
    )
    .await;
    let org = run.json();
    assert!(!run.stdout.contains(colon_password), "password echoed");
    assert!(!run.stdout.contains(PASSWORD), "password echoed");
    assert_eq!(org["name"], "Cli Widgets");
    assert_eq!(org["subscription"]["enabled"], true);
    assert_eq!(org["subscription"]["expiresAt"], T0_SECS + 86_400);
    assert_eq!(org["subscription"]["state"], "ACTIVE");
    assert_eq!(org["callThreshold"]["calls"], 500);
    assert_eq!(org["callThreshold"]["periodSeconds"], 3600);
    assert_eq!(org["keyStatus"], "ENABLED");
    let admins = org["admins"].as_array().unwrap();
    assert_eq!(admins.len(), 2);
    assert_eq!(admins[0]["loginName"], "boss@cliw");
    assert_eq!(admins[0]["role"], "FULL");
    assert_eq!(admins[1]["role"], "VIEW_ONLY");
    let id = id_of(&org);
    // The admin really got the password with its colons.
    server
        .login_with("boss@cliw", colon_password)
        .await
        .expect("login with the password given on the command line");

    // Subscription off at creation: no key provisioned.
    let off = provider(
        &server,
        &[
            "orgs",
            "create",
            "--name",
            "Cli Dormant",
            "--subscription-enabled",
            "false",
        ],
    )
    .await
    .json();
    assert_eq!(off["subscription"]["state"], "NOT_ENABLED");
    assert_eq!(off["keyStatus"], "NONE");
    assert!(off["apiKey"].is_null());

    server.create_org("other").await;

    let list = provider(&server, &["orgs", "list", "--search", "cli"])
        .await
        .json();
    assert_eq!(list["total"], 2, "{list}");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Cli Widgets", "Cli Dormant"]);

    let paged = provider(
        &server,
        &["orgs", "list", "--page", "2", "--page-size", "1"],
    )
    .await
    .json();
    assert_eq!(paged["page"], 2);
    assert_eq!(paged["pageSize"], 1);
    assert_eq!(paged["total"], 3);
    assert_eq!(paged["items"].as_array().unwrap().len(), 1);
    assert_eq!(paged["items"][0]["name"], "Cli Dormant");

    let got = provider(&server, &["orgs", "get", &id]).await.json();
    assert_eq!(got["id"], org["id"]);
    assert_eq!(got["admins"].as_array().unwrap().len(), 2);
    // The provider never sees the full key.
    let masked = got["apiKey"]["keyValue"].as_str().unwrap();
    assert!(masked.starts_with("*********"), "{masked}");

    provider(&server, &["orgs", "get", "999999"])
        .await
        .assert_error("NOT_FOUND");
    provider(
        &server,
        &[
            "orgs",
            "create",
            "--name",
            "Bad",
            "--admin",
            "ab:short:FULL",
        ],
    )
    .await
    .assert_error("INVALID_INPUT_ARGUMENT");
}

#[tokio::test]
async fn provider_sets_subscription_and_disables_and_enables_the_key() {
    let server = TestServer::start().await;
    let org = server.create_org("subs").await;
    let id = id_of(&org);

    let off = provider(&server, &["subscription", "set", &id, "--enabled", "false"])
        .await
        .json();
    assert_eq!(off["subscription"]["enabled"], false);
    assert_eq!(off["subscription"]["state"], "NOT_ENABLED");

    let past = (T0_SECS - 1).to_string();
    let expired = provider(
        &server,
        &[
            "subscription",
            "set",
            &id,
            "--enabled",
            "true",
            "--expires-at",
            &past,
        ],
    )
    .await
    .json();
    assert_eq!(expired["subscription"]["state"], "EXPIRED");
    assert_eq!(expired["subscription"]["expiresAt"], T0_SECS - 1);
    assert_eq!(expired["keyDisabledReason"], "SUBSCRIPTION_EXPIRED");

    let renewed = provider(&server, &["subscription", "set", &id, "--enabled", "true"])
        .await
        .json();
    assert_eq!(renewed["subscription"]["state"], "ACTIVE");
    assert!(renewed["subscription"]["expiresAt"].is_null());
    assert_eq!(renewed["keyStatus"], "ENABLED");

    let disabled = provider(
        &server,
        &[
            "key",
            "disable",
            &id,
            "--reason",
            "TERMS_VIOLATION",
            "--note",
            "scraping",
        ],
    )
    .await
    .json();
    assert_eq!(disabled["keyStatus"], "DISABLED");
    assert_eq!(disabled["keyDisabledReason"], "TERMS_VIOLATION");
    // The org's admins see it, and cannot change the key meanwhile.
    let key = admin(&server, "full@subs", &["key", "show"]).await.json();
    assert_eq!(key["status"], "DISABLED");
    assert_eq!(key["disabledReason"], "TERMS_VIOLATION");
    assert_eq!(key["disabledNote"], "scraping");
    admin(&server, "full@subs", &["key", "regenerate"])
        .await
        .assert_error("API_KEY_DISABLED");

    let enabled = provider(&server, &["key", "enable", &id]).await.json();
    assert_eq!(enabled["keyStatus"], "ENABLED");
    assert!(enabled["keyDisabledReason"].is_null());

    // clap refuses a reason outside the list before anything is sent.
    let bad = provider(&server, &["key", "disable", &id, "--reason", "BORED"]).await;
    assert!(!bad.success);
    assert!(bad.stderr.contains("BORED"), "{}", bad.stderr);
    let audit = provider(&server, &["audit", &id, "--page-size", "3"])
        .await
        .json();
    assert_eq!(actions(&audit), ["KEY_ENABLE", "LOGOUT", "LOGIN_SUCCESS"]);
}

#[tokio::test]
async fn provider_adds_and_removes_admins_and_reads_audit() {
    let server = TestServer::start().await;
    let org = server.create_org("adm").await;
    let id = id_of(&org);

    let new_password = "a-brand-new-password-42";
    let run = provider(
        &server,
        &[
            "admins",
            "add",
            &id,
            "--login",
            "new@adm",
            "--password",
            new_password,
            "--role",
            "VIEW_ONLY",
        ],
    )
    .await;
    let added = run.json();
    assert!(!run.stdout.contains(new_password));
    assert_eq!(added["loginName"], "new@adm");
    assert_eq!(added["role"], "VIEW_ONLY");
    let admin_id = id_of(&added);
    let key = admin_as(&server, "new@adm", new_password, "json", &["key", "show"])
        .await
        .json();
    assert_eq!(key["status"], "ENABLED");

    provider(
        &server,
        &[
            "admins",
            "add",
            &id,
            "--login",
            "new@adm",
            "--password",
            new_password,
            "--role",
            "FULL",
        ],
    )
    .await
    .assert_error("LOGIN_NAME_TAKEN");

    let removed = provider(&server, &["admins", "remove", &id, &admin_id]).await;
    assert!(removed.success, "{}", removed.stderr);
    assert!(
        removed.stdout.is_empty(),
        "204 has no body: {:?}",
        removed.stdout
    );
    admin_as(&server, "new@adm", new_password, "json", &["key", "show"])
        .await
        .assert_error("AUTHENTICATION_FAILED");
    provider(&server, &["admins", "remove", &id, &admin_id])
        .await
        .assert_error("NOT_FOUND");

    let audit = provider(&server, &["audit", &id]).await.json();
    let got = actions(&audit);
    // Newest first; refused requests and the removed admin's failed login (it no longer
    // belongs to the org) leave no record here.
    assert_eq!(
        got[..4],
        ["ADMIN_REMOVE", "LOGOUT", "LOGIN_SUCCESS", "ADMIN_ADD"],
        "{got:?}"
    );
    assert_eq!(got.last().unwrap(), "ORG_CREATE", "{got:?}");
    assert_eq!(audit["total"], got.len() as i64);
    // Audit records never carry the password.
    assert!(!audit.to_string().contains(new_password));

    let page = provider(&server, &["audit", &id, "--page", "2", "--page-size", "2"])
        .await
        .json();
    assert_eq!(actions(&page), got[2..4]);
}

#[tokio::test]
async fn provider_needs_the_right_token_and_prints_text() {
    let server = TestServer::start().await;
    let org = server.create_org("tok").await;
    let id = id_of(&org);

    // The token as a flag works as well as from the environment.
    let run = keygate(
        strings(&[
            "provider",
            "--url",
            &server.base,
            "--token",
            PROVIDER_TOKEN,
            "orgs",
            "get",
            &id,
        ]),
        vec![],
        None,
    )
    .await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout.starts_with(&format!("org {id}: Org tok\n")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("ACTIVE"), "{}", run.stdout);
    assert!(run.stdout.contains("full@tok"), "{}", run.stdout);
    assert!(!run.stdout.contains(PROVIDER_TOKEN));

    let run = keygate(
        strings(&["provider", "--url", &server.base, "orgs", "list"]),
        vec![("KEYGATE_PROVIDER_TOKEN", "not-the-token".into())],
        None,
    )
    .await;
    run.assert_error("AUTHENTICATION_FAILED");
    assert!(!run.stderr.contains("not-the-token"));

    let run = keygate(
        strings(&["provider", "--url", &server.base, "orgs", "list"]),
        vec![],
        None,
    )
    .await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("KEYGATE_PROVIDER_TOKEN"),
        "{}",
        run.stderr
    );

    // Text listing: a header, one row per org, a footer.
    let mut args = strings(&["provider", "--url", &server.base, "orgs", "list"]);
    args.push("--search".into());
    args.push("tok".into());
    let run = keygate(
        args,
        vec![("KEYGATE_PROVIDER_TOKEN", PROVIDER_TOKEN.into())],
        None,
    )
    .await;
    assert!(run.success, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(lines[1].contains("Org tok") && lines[1].contains("ENABLED"));
    assert!(lines[2].ends_with("orgs in all: 1"), "{}", lines[2]);
}

// -------------------------------------------------------------------------------- admin

#[tokio::test]
async fn admin_shows_reveals_edits_and_regenerates_the_key() {
    let server = TestServer::start().await;
    server.create_org("keys").await;
    let full = "full@keys";

    let run = admin(&server, full, &["key", "show"]).await;
    let shown = run.json();
    // The body as the server sent it (its field order), pretty-printed.
    assert!(run.stdout.starts_with("{\n  \"id\": "), "{}", run.stdout);
    assert_eq!(shown["status"], "ENABLED");
    assert_eq!(shown["permissions"], serde_json::json!(["READ", "WRITE"]));
    assert!(shown["baseUrl"].as_str().unwrap().ends_with("/api/v1"));
    let masked = shown["keyValue"].as_str().unwrap().to_owned();
    assert!(masked.starts_with("*********"), "{masked}");

    let revealed = admin(&server, full, &["key", "reveal"]).await.json();
    let original = revealed["keyValue"].as_str().unwrap().to_owned();
    assert!(is_key(&original), "{original}");
    assert_eq!(masked[9..], original[9..]);

    let edited = admin(&server, full, &["key", "edit", "--value", "Abcdef123456"])
        .await
        .json();
    assert_eq!(edited["keyValue"], "Abcdef123456");
    let now = admin(&server, full, &["key", "reveal"]).await.json();
    assert_eq!(now["keyValue"], "Abcdef123456");

    // Refused edits change nothing and exit non-zero with the server's code.
    let run = admin(&server, full, &["key", "edit", "--value", "short!"]).await;
    run.assert_error("INVALID_INPUT_ARGUMENT");
    assert!(run.stderr.contains("keyValue"), "{}", run.stderr);
    admin(&server, full, &["key", "edit", "--value", "Abcdef123456"])
        .await
        .assert_error("SAME_AS_CURRENT_KEY");
    admin(
        &server,
        "view@keys",
        &["key", "edit", "--value", "Zyxwvu987654"],
    )
    .await
    .assert_error("NOT_AUTHORIZED");
    let now = admin(&server, full, &["key", "reveal"]).await.json();
    assert_eq!(now["keyValue"], "Abcdef123456");

    // The new value can come from stdin instead of the command line.
    let run = keygate(
        strings(&[
            "admin",
            "--url",
            &server.base,
            "--login",
            full,
            "--output",
            "json",
            "key",
            "edit",
            "--value",
            "-",
        ]),
        vec![("KEYGATE_ADMIN_PASSWORD", PASSWORD.into())],
        Some("FromStdin123\n".into()),
    )
    .await;
    assert_eq!(run.json()["keyValue"], "FromStdin123");

    let regenerated = admin(&server, full, &["key", "regenerate"]).await.json();
    let fresh = regenerated["keyValue"].as_str().unwrap().to_owned();
    assert!(is_key(&fresh), "{fresh}");
    assert_ne!(fresh, "FromStdin123");
    let now = admin(&server, full, &["key", "reveal"]).await.json();
    assert_eq!(now["keyValue"].as_str().unwrap(), fresh);
}

#[tokio::test]
async fn admin_deletes_and_adds_the_key_and_reads_audit() {
    let server = TestServer::start().await;
    server.create_org("del").await;
    let full = "full@del";

    let run = admin(&server, full, &["key", "delete"]).await;
    assert!(run.success, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{:?}", run.stdout);
    admin(&server, full, &["key", "show"])
        .await
        .assert_error("NOT_FOUND");
    admin(&server, full, &["key", "delete"])
        .await
        .assert_error("NOT_FOUND");

    let added = admin(&server, full, &["key", "add"]).await.json();
    let value = added["keyValue"].as_str().unwrap().to_owned();
    assert!(is_key(&value), "{value}");
    assert_eq!(added["status"], "ENABLED");
    let now = admin(&server, full, &["key", "reveal"]).await.json();
    assert_eq!(now["keyValue"].as_str().unwrap(), value);
    admin(&server, full, &["key", "add"])
        .await
        .assert_error("KEY_ALREADY_EXISTS");

    // Every invocation logs in, acts, and logs out: the audit read inside this one sees its
    // own login, then the previous invocation's logout, its refused add (no record), its login,
    // the previous one's reveal…
    let audit = admin(&server, full, &["audit", "--page-size", "7"])
        .await
        .json();
    assert_eq!(
        actions(&audit),
        [
            "LOGIN_SUCCESS",
            "LOGOUT",
            "LOGIN_SUCCESS",
            "LOGOUT",
            "KEY_REVEAL",
            "LOGIN_SUCCESS",
            "LOGOUT",
        ]
    );
    let all = admin(&server, full, &["audit", "--page-size", "1000"])
        .await
        .json();
    let got = actions(&all);
    for action in ["KEY_DELETE", "KEY_ADD", "KEY_PROVISION", "ORG_CREATE"] {
        assert!(got.contains(&action.to_string()), "{action} in {got:?}");
    }
    // Audit records never hold a full key.
    assert!(!all.to_string().contains(&value));
}

#[tokio::test]
async fn admin_wrong_password_fails_and_text_output_is_readable() {
    let server = TestServer::start().await;
    server.create_org("txt").await;

    let wrong = "wrong-password-123456";
    let run = admin_as(&server, "full@txt", wrong, "json", &["key", "show"]).await;
    run.assert_error("AUTHENTICATION_FAILED");
    assert!(!run.stderr.contains(wrong));

    let run = admin_as(&server, "full@txt", PASSWORD, "text", &["key", "show"]).await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout.contains("status:         ENABLED"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("key:            *********"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("/api/v1"), "{}", run.stdout);
    assert!(run.stdout.contains("last modified:"), "{}", run.stdout);

    // Text reveal prints the bare value, ready for a script.
    let run = admin_as(&server, "full@txt", PASSWORD, "text", &["key", "reveal"]).await;
    assert!(run.success, "{}", run.stderr);
    let value = run.stdout.strip_suffix('\n').expect("one line");
    assert!(is_key(value), "{:?}", run.stdout);
    assert!(run.stdout.ends_with(&format!("{}\n", value)));

    // Errors in text mode have the same shape.
    admin_as(&server, "full@txt", PASSWORD, "text", &["key", "add"])
        .await
        .assert_error("KEY_ALREADY_EXISTS");

    // Login and password are required.
    let run = keygate(
        strings(&["admin", "--url", &server.base, "key", "show"]),
        vec![],
        None,
    )
    .await;
    assert!(!run.success);
    assert!(run.stderr.contains("KEYGATE_ADMIN_LOGIN"), "{}", run.stderr);
}

/// `provider partners …`, `orgs create --partner-id`, `orgs move`, `orgs base-url`
/// (issue 15).
#[tokio::test]
async fn provider_manages_partners_moves_orgs_and_sets_base_urls() {
    let server = TestServer::start().await;
    let run = provider(
        &server,
        &[
            "partners",
            "create",
            "--name",
            "Acme Networks",
            "--support-url",
            "https://support.acme.example",
            "--support-email",
            "noc@acme.example",
        ],
    )
    .await;
    assert!(run.success, "{}", run.stderr);
    let partner: Value = serde_json::from_str(&run.stdout).unwrap();
    let pid = id_of(&partner);
    assert_eq!(partner["supportUrl"], "https://support.acme.example");
    let run = provider(&server, &["partners", "list"]).await;
    let list: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(list["items"][0]["name"], "Acme Networks");
    let run = provider(
        &server,
        &[
            "partners",
            "update",
            &pid,
            "--name",
            "Acme Net",
            "--support-url",
            "https://help.acme.example",
        ],
    )
    .await;
    assert!(run.success, "{}", run.stderr);
    let run = provider(&server, &["partners", "get", &pid]).await;
    let got: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (got["name"].as_str(), got["supportEmail"].clone()),
        (Some("Acme Net"), Value::Null)
    );

    let run = provider(
        &server,
        &["orgs", "create", "--name", "Cust", "--partner-id", &pid],
    )
    .await;
    assert!(run.success, "{}", run.stderr);
    let org: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(org["partnerId"].as_i64().unwrap().to_string(), pid);
    let oid = id_of(&org);
    let run = provider(&server, &["orgs", "move", &oid, "--platform"]).await;
    let moved: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(moved["partnerId"], Value::Null);
    let run = provider(
        &server,
        &[
            "orgs",
            "base-url",
            &oid,
            "--base-url",
            "https://zs.example/api/v1",
        ],
    )
    .await;
    let set: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(set["baseUrl"], "https://zs.example/api/v1");
    // A bad URL: the server's 400 naming the field, a failing exit.
    let run = provider(
        &server,
        &["orgs", "base-url", &oid, "--base-url", "ftp://x"],
    )
    .await;
    assert!(!run.success);
    assert!(run.stderr.contains("baseUrl"), "{}", run.stderr);
    let run = provider(&server, &["orgs", "base-url", &oid, "--clear"]).await;
    let cleared: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(cleared["baseUrl"], Value::Null);
    // Text output names the owner and the base URL.
    let all = strings(&["provider", "--url", &server.base, "orgs", "get", &oid]);
    let run = keygate(
        all,
        vec![("KEYGATE_PROVIDER_TOKEN", PROVIDER_TOKEN.to_string())],
        None,
    )
    .await;
    assert!(
        run.stdout.contains("owner:           the platform"),
        "{}",
        run.stdout
    );
}
