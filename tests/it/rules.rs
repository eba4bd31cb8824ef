//! The product rules (PRODUCT.md §2, R1–R12) and console authentication (§3.5), each over
//! real HTTP against a test server whose clock only moves when a test moves it.

use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

// ---------------------------------------------------------------- helpers

fn org_id(org: &Value) -> i64 {
    org["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("org id in {org}"))
}

fn is_key_value(v: &str) -> bool {
    v.len() == 12 && v.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn masked(full: &str) -> String {
    format!("*********{}", &full[9..])
}

fn text(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn now_ms(server: &TestServer) -> i64 {
    use keygate::clock::Clock;
    server.clock.now().0
}

fn now_secs(server: &TestServer) -> i64 {
    now_ms(server) / 1000
}

async fn provider_org(server: &TestServer, id: i64) -> Value {
    let (status, body) = server
        .provider(Method::GET, &format!("/provider/v1/orgs/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "provider GET org: {body}");
    body
}

async fn provider_audit(server: &TestServer, id: i64) -> Vec<Value> {
    let (status, body) = server
        .provider(
            Method::GET,
            &format!("/provider/v1/orgs/{id}/audit?pageSize=1000"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "provider audit: {body}");
    body["items"].as_array().expect("items").clone()
}

fn actions(records: &[Value]) -> Vec<&str> {
    records.iter().map(|r| text(&r["action"])).collect()
}

async fn set_subscription(
    server: &TestServer,
    id: i64,
    enabled: bool,
    expires_at: Option<i64>,
) -> Value {
    let (status, body) = server
        .provider(
            Method::PUT,
            &format!("/provider/v1/orgs/{id}/subscription"),
            Some(json!({"enabled": enabled, "expiresAt": expires_at})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "set subscription: {body}");
    body
}

async fn disable(server: &TestServer, id: i64, body: Value) -> (StatusCode, Value) {
    server
        .provider(
            Method::POST,
            &format!("/provider/v1/orgs/{id}/apiKey/disable"),
            Some(body),
        )
        .await
}

async fn enable(server: &TestServer, id: i64) -> (StatusCode, Value) {
    server
        .provider(
            Method::POST,
            &format!("/provider/v1/orgs/{id}/apiKey/enable"),
            None,
        )
        .await
}

/// Every change an admin can ask for, as `(name, response)`; the edit uses a fresh valid value.
async fn every_change(admin: &Admin) -> Vec<(&'static str, (StatusCode, Value))> {
    vec![
        ("add", admin.add().await),
        ("edit", admin.edit(json!("Fresh1Value2")).await),
        ("regenerate", admin.regenerate().await),
        ("delete", admin.delete().await),
    ]
}

fn assert_all_refused(results: &[(&str, (StatusCode, Value))], status: StatusCode, code: &str) {
    for (op, resp) in results {
        assert_eq!(resp.0, status, "{op}: {}", resp.1);
        assert_eq!(resp.1["code"], code, "{op}: {}", resp.1);
        assert!(
            resp.1["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{op}: {}",
            resp.1
        );
    }
}

/// Logs in without a cookie store; returns the raw cookie value, the CSRF token and the
/// `Set-Cookie` header.
async fn raw_login(server: &TestServer, login: &str) -> (String, String, String) {
    let resp = server
        .http
        .post(server.url("/admin/v1/login"))
        .json(&json!({"loginName": login, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let set_cookie = resp
        .headers()
        .get(SET_COOKIE)
        .expect("Set-Cookie")
        .to_str()
        .unwrap()
        .to_owned();
    let (_, body) = into_json(resp).await;
    let cookie = set_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    (cookie, text(&body["csrfToken"]).to_owned(), set_cookie)
}

async fn with_cookie(
    server: &TestServer,
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = server
        .http
        .request(method, server.url(path))
        .header(COOKIE, format!("keygate_console={cookie}"));
    if let Some(t) = csrf {
        req = req.header("X-CSRF-Token", t);
    }
    into_json(req.send().await.unwrap()).await
}

// ---------------------------------------------------------------- R1, R3: add

#[tokio::test]
async fn r1_r3_add_is_refused_while_a_key_exists_and_allowed_after_delete() {
    let server = TestServer::start().await;
    server.create_org("acme").await;
    let admin = server.login("full@acme").await;
    let old = admin.reveal().await;
    let audit_before = admin.audit().await.len();

    let resp = admin.add().await;
    assert_error(&resp, StatusCode::CONFLICT, "KEY_ALREADY_EXISTS");
    let msg = text(&resp.1["message"]).to_lowercase();
    assert!(
        msg.contains("delete") && msg.contains("existing key"),
        "message should say to delete the existing key first: {msg}"
    );
    assert!(!text(&resp.1["message"]).contains(&old));
    // The refusal changed nothing.
    assert_eq!(admin.audit().await.len(), audit_before);
    assert_eq!(admin.reveal().await, old);

    let (status, body) = admin.delete().await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = admin.add().await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let new = text(&body["keyValue"]).to_owned();
    assert!(is_key_value(&new), "shown in full: {new}");
    assert_ne!(new, old);
    assert_eq!(body["status"], "ENABLED");
    assert_eq!(body["enabled"], true);
    assert_eq!(body["permissions"], json!(["READ", "WRITE"]));
    assert_eq!(body["lastModifiedBy"]["name"], "full@acme");
    assert_eq!(admin.reveal().await, new);
    let (status, shown) = admin.key().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["keyValue"], masked(&new));
    assert_eq!(shown["status"], "ENABLED");

    // A second add is refused again: at most one key.
    assert_error(
        &admin.add().await,
        StatusCode::CONFLICT,
        "KEY_ALREADY_EXISTS",
    );
    let audit = admin.audit().await;
    assert_eq!(
        &actions(&audit)[..4],
        ["KEY_REVEAL", "KEY_ADD", "KEY_DELETE", "KEY_REVEAL"]
    );
    assert_eq!(audit[1]["keySuffix"], &new[9..]);
    assert_eq!(audit[2]["keySuffix"], &old[9..]);
}

#[tokio::test]
async fn r1_concurrent_adds_leave_exactly_one_key() {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let admin = server.login("full@acme").await;
    for round in 0..3 {
        assert_eq!(
            admin.delete().await.0,
            StatusCode::NO_CONTENT,
            "round {round}"
        );
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let req = admin
                .http
                .post(server.url("/admin/v1/apiKey"))
                .header("X-CSRF-Token", &admin.csrf);
            tasks.spawn(async move { into_json(req.send().await.unwrap()).await });
        }
        let mut created = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (status, body) = done.unwrap();
            match status {
                StatusCode::CREATED => created.push(text(&body["keyValue"]).to_owned()),
                StatusCode::CONFLICT => assert_eq!(body["code"], "KEY_ALREADY_EXISTS"),
                other => panic!("round {round}: {other} {body}"),
            }
        }
        assert_eq!(created.len(), 1, "round {round}: exactly one add wins");
        assert_eq!(admin.reveal().await, created[0]);
    }
    let audit = provider_audit(&server, org_id(&org)).await;
    let adds = actions(&audit)
        .into_iter()
        .filter(|a| *a == "KEY_ADD")
        .count();
    assert_eq!(adds, 3, "one KEY_ADD per winning add");
}

// ---------------------------------------------------------------- R2, R10a: subscription

#[tokio::test]
async fn r2_enabled_subscription_provisions_an_enabled_key_shown_with_base_url() {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let base_url = format!("{}/api/v1", server.base);
    assert_eq!(org["keyStatus"], "ENABLED");
    assert_eq!(org["subscription"]["state"], "ACTIVE");
    assert_eq!(org["apiKey"]["status"], "ENABLED");
    assert_eq!(org["apiKey"]["baseUrl"], base_url);

    let admin = server.login("full@acme").await;
    assert_eq!(admin.login["org"]["baseUrl"], base_url);
    let (status, key) = admin.key().await;
    assert_eq!(status, StatusCode::OK, "{key}");
    assert_eq!(key["status"], "ENABLED");
    assert_eq!(key["enabled"], true);
    assert_eq!(key["disabledReason"], Value::Null);
    assert_eq!(key["permissions"], json!(["READ", "WRITE"]));
    assert_eq!(key["baseUrl"], base_url);
    assert_eq!(key["lastModifiedTime"], T0_SECS);
    let full = admin.reveal().await;
    assert!(is_key_value(&full));
    assert_eq!(key["keyValue"], masked(&full));
    assert_eq!(org["apiKey"]["keyValue"], masked(&full));

    let audit = provider_audit(&server, org_id(&org)).await;
    let provision: Vec<_> = audit
        .iter()
        .filter(|r| r["action"] == "KEY_PROVISION")
        .collect();
    assert_eq!(provision.len(), 1, "{audit:?}");
    assert_eq!(provision[0]["actorType"], "PROVIDER");
    assert_eq!(provision[0]["keySuffix"], &full[9..]);
}

#[tokio::test]
async fn r2_r10a_without_subscription_there_is_no_key_until_the_provider_enables_it() {
    let server = TestServer::start().await;
    let org = server
        .create_org_with("nosub", json!({"enabled": false, "expiresAt": null}))
        .await;
    let id = org_id(&org);
    assert_eq!(org["keyStatus"], "NONE");
    assert_eq!(org["apiKey"], Value::Null);
    assert_eq!(org["subscription"]["state"], "NOT_ENABLED");

    let admin = server.login("full@nosub").await;
    assert_error(&admin.key().await, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (status, page) = admin.get("/admin/v1/org").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["subscription"]["state"], "NOT_ENABLED");
    assert_eq!(page["hasKey"], false);
    let audit_before = admin.audit().await.len();
    assert_error(
        &admin.add().await,
        StatusCode::FORBIDDEN,
        "NO_API_SUBSCRIPTION",
    );
    assert_eq!(admin.audit().await.len(), audit_before);
    assert_error(&admin.key().await, StatusCode::NOT_FOUND, "NOT_FOUND");

    server.clock.advance_secs(60);
    let org = set_subscription(&server, id, true, None).await;
    assert_eq!(org["keyStatus"], "ENABLED");
    assert_eq!(org["subscription"]["state"], "ACTIVE");
    let (status, key) = admin.key().await;
    assert_eq!(status, StatusCode::OK, "{key}");
    assert_eq!(key["status"], "ENABLED");
    assert_eq!(key["lastModifiedTime"], T0_SECS + 60);
    let full = admin.reveal().await;
    assert_eq!(org["apiKey"]["keyValue"], masked(&full));

    let audit = provider_audit(&server, id).await;
    assert_eq!(
        &actions(&audit)[..3],
        ["KEY_REVEAL", "KEY_PROVISION", "SUBSCRIPTION_UPDATE"]
    );
    assert_eq!(audit[1]["actorType"], "PROVIDER");
    assert_eq!(audit[1]["time"], t0().0 + 60_000);
    // Now it has one: add is refused.
    assert_error(
        &admin.add().await,
        StatusCode::CONFLICT,
        "KEY_ALREADY_EXISTS",
    );
}

#[tokio::test]
async fn r10a_subscription_turned_off_keeps_the_key_but_refuses_changes() {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let id = org_id(&org);
    let admin = server.login("full@acme").await;
    let full = admin.reveal().await;

    let org = set_subscription(&server, id, false, None).await;
    assert_eq!(org["subscription"]["state"], "NOT_ENABLED");
    assert_eq!(org["keyStatus"], "DISABLED");
    let (status, key) = admin.key().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(key["status"], "DISABLED");
    assert_eq!(key["permissions"], json!(["READ"]));
    let audit_before = admin.audit().await.len();
    let results = every_change(&admin).await;
    assert_all_refused(&results, StatusCode::FORBIDDEN, "NO_API_SUBSCRIPTION");
    assert_eq!(admin.audit().await.len(), audit_before);
    assert_eq!(admin.reveal().await, full);

    // Turned back on: the same key, no second provisioning.
    let org = set_subscription(&server, id, true, None).await;
    assert_eq!(org["keyStatus"], "ENABLED");
    assert_eq!(admin.reveal().await, full);
    let audit = provider_audit(&server, id).await;
    let provisions = actions(&audit)
        .into_iter()
        .filter(|a| *a == "KEY_PROVISION")
        .count();
    assert_eq!(provisions, 1);
}

// ---------------------------------------------------------------- R4: edit

#[tokio::test]
async fn r4_edit_replaces_the_key_with_a_valid_new_value() {
    let server = TestServer::start().await;
    server.create_org("acme").await;
    let admin = server.login("full@acme").await;
    let old = admin.reveal().await;
    let new = if old == "NewKey123abc" {
        "NewKey123abd"
    } else {
        "NewKey123abc"
    };
    server.clock.advance_secs(5);
    let (status, body) = admin.edit(json!(new)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["keyValue"], new);
    assert_eq!(body["status"], "ENABLED");
    assert_eq!(body["lastModifiedTime"], T0_SECS + 5);
    assert_eq!(body["lastModifiedBy"]["name"], "full@acme");
    let revealed = admin.reveal().await;
    assert_eq!(revealed, new);
    assert_ne!(revealed, old);
    let (_, shown) = admin.key().await;
    assert_eq!(shown["keyValue"], masked(new));

    let audit = admin.audit().await;
    let edit = &audit[1];
    assert_eq!(edit["action"], "KEY_EDIT");
    assert_eq!(edit["keySuffix"], &new[9..]);
    assert_eq!(edit["details"]["previousKeySuffix"], &old[9..]);
    assert_eq!(edit["actorName"], "full@acme");
}

#[tokio::test]
async fn r4_edit_refuses_bad_values_with_the_field_and_the_reason() {
    let server = TestServer::start().await;
    server.create_org("acme").await;
    let admin = server.login("full@acme").await;
    let current = admin.reveal().await;
    let mut audit_count = admin.audit().await.len();

    let cases: Vec<(Value, &[&str])> = vec![
        (json!("abcdefghijk"), &["12", "11"]),
        (json!("abcdefghijklm"), &["12", "13"]),
        (json!("abc-def_ghi!"), &["alphanumeric", "'-'"]),
        (json!("abcdéfghijkl"), &["alphanumeric"]),
        (json!("abcdefghijk٣"), &["alphanumeric"]),
        (json!("ＡＢＣＤＥＦＧＨＩＪＫＬ"), &["alphanumeric"]),
        (json!("abcdef ghijk"), &["alphanumeric"]),
        (json!(" abcdefghijkl"), &["alphanumeric"]),
        (json!("abcdefghijk\u{0}"), &["alphanumeric"]),
        (json!(""), &["empty"]),
        (json!(123456789012_i64), &["string"]),
        (Value::Null, &["string"]),
        (json!(["abcdefghijkl"]), &["string"]),
    ];
    for (value, needles) in cases {
        let resp = admin.edit(value.clone()).await;
        assert_error(&resp, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
        assert_eq!(resp.1["field"], "keyValue", "{value}: {}", resp.1);
        let msg = text(&resp.1["message"]);
        assert!(msg.contains("keyValue"), "{value}: {msg}");
        for needle in needles {
            assert!(msg.contains(needle), "{value}: {msg} should say {needle}");
        }
        assert_eq!(admin.audit().await.len(), audit_count, "{value}");
        assert_eq!(admin.reveal().await, current, "{value}");
        audit_count += 1; // the reveal
    }

    let resp = admin.edit(json!(current)).await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "SAME_AS_CURRENT_KEY");
    assert_eq!(resp.1["field"], "keyValue");
    assert!(!text(&resp.1["message"]).contains(&current));
    assert_eq!(admin.audit().await.len(), audit_count);
    assert_eq!(admin.reveal().await, current);
}

// ---------------------------------------------------------------- R5, R6

#[tokio::test]
async fn r5_regenerate_gives_a_new_random_alphanumeric_key() {
    let server = TestServer::start().await;
    server.create_org("acme").await;
    let admin = server.login("full@acme").await;
    let mut seen = vec![admin.reveal().await];
    for i in 1..=5 {
        server.clock.advance_secs(1);
        let (status, body) = admin.regenerate().await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let new = text(&body["keyValue"]).to_owned();
        assert!(is_key_value(&new), "{new}");
        assert!(!seen.contains(&new), "regenerate {i} repeated a key");
        assert_eq!(body["status"], "ENABLED");
        assert_eq!(body["lastModifiedTime"], T0_SECS + i);
        assert_eq!(admin.reveal().await, new);
        let (_, shown) = admin.key().await;
        assert_eq!(shown["keyValue"], masked(&new));
        let audit = admin.audit().await;
        assert_eq!(audit[1]["action"], "KEY_REGENERATE");
        assert_eq!(audit[1]["keySuffix"], &new[9..]);
        assert_eq!(
            audit[1]["details"]["previousKeySuffix"],
            &seen.last().unwrap()[9..]
        );
        seen.push(new);
    }
}

#[tokio::test]
async fn r6_delete_removes_the_key_until_one_is_added() {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let admin = server.login("full@acme").await;
    let old = admin.reveal().await;

    let (status, body) = admin.delete().await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null, "204 has no body");
    assert_error(&admin.key().await, StatusCode::NOT_FOUND, "NOT_FOUND");
    let reveal = admin
        .send(Method::POST, "/admin/v1/apiKey/reveal", None)
        .await;
    assert_error(&reveal, StatusCode::NOT_FOUND, "NOT_FOUND");
    let audit_count = admin.audit().await.len();
    assert_error(
        &admin.regenerate().await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    assert_error(
        &admin.edit(json!("Fresh1Value2")).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    assert_error(&admin.delete().await, StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_eq!(admin.audit().await.len(), audit_count);
    assert_error(&admin.key().await, StatusCode::NOT_FOUND, "NOT_FOUND");

    let (_, page) = admin.get("/admin/v1/org").await;
    assert_eq!(page["hasKey"], false);
    assert_eq!(page["keyStatus"], "NONE");
    let org = provider_org(&server, org_id(&org)).await;
    assert_eq!(org["apiKey"], Value::Null);
    assert_eq!(org["keyStatus"], "NONE");

    let audit = admin.audit().await;
    let delete = audit
        .iter()
        .find(|r| r["action"] == "KEY_DELETE")
        .expect("KEY_DELETE audited");
    assert_eq!(delete["keySuffix"], &old[9..]);
}

// ---------------------------------------------------------------- roles

#[tokio::test]
async fn view_only_admin_sees_the_key_but_cannot_change_it() {
    let server = TestServer::start().await;
    server.create_org("acme").await;
    let full = server.login("full@acme").await;
    let view = server.login("view@acme").await;
    assert_eq!(view.login["admin"]["role"], "VIEW_ONLY");
    let value = full.reveal().await;

    let (status, key) = view.key().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(key["keyValue"], masked(&value));
    assert_eq!(view.reveal().await, value);
    let audit_count = full.audit().await.len();
    let results = every_change(&view).await;
    assert_all_refused(&results, StatusCode::FORBIDDEN, "NOT_AUTHORIZED");
    assert_eq!(full.audit().await.len(), audit_count);
    assert_eq!(full.reveal().await, value);

    // Still refused when the org has no key: the role is checked first.
    assert_eq!(full.delete().await.0, StatusCode::NO_CONTENT);
    assert_error(&view.add().await, StatusCode::FORBIDDEN, "NOT_AUTHORIZED");
    assert_error(&view.key().await, StatusCode::NOT_FOUND, "NOT_FOUND");
}

// ---------------------------------------------------------------- R8: provider disable

#[tokio::test]
async fn r8_provider_disable_blocks_every_change_until_the_provider_enables() {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let id = org_id(&org);
    let admin = server.login("full@acme").await;
    let value = admin.reveal().await;

    for (reason, note) in [
        ("CALL_THRESHOLD_EXCEEDED", None),
        ("TERMS_VIOLATION", None),
        ("OTHER", Some("abuse report 42")),
    ] {
        let mut body = json!({ "reason": reason });
        if let Some(n) = note {
            body["note"] = json!(n);
        }
        let (status, org) = disable(&server, id, body).await;
        assert_eq!(status, StatusCode::OK, "{reason}: {org}");
        assert_eq!(org["keyStatus"], "DISABLED");
        assert_eq!(org["keyDisabledReason"], reason);
        assert_eq!(org["apiKey"]["status"], "DISABLED");
        assert_eq!(org["apiKey"]["keyValue"], masked(&value));

        let (status, key) = admin.key().await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(key["status"], "DISABLED", "{reason}");
        assert_eq!(key["enabled"], false);
        assert_eq!(key["disabledReason"], reason);
        let (_, page) = admin.get("/admin/v1/org").await;
        assert_eq!(page["keyStatus"], "DISABLED");
        assert_eq!(page["keyDisabledReason"], reason);

        let audit_count = admin.audit().await.len();
        let results = every_change(&admin).await;
        assert_all_refused(&results, StatusCode::FORBIDDEN, "API_KEY_DISABLED");
        for (op, (_, body)) in &results {
            let msg = text(&body["message"]);
            assert!(
                msg.contains("disabled by your service provider"),
                "{op}: {msg}"
            );
            assert!(msg.contains(reason), "{op}: {msg}");
            if let Some(n) = note {
                assert!(msg.contains(n), "{op}: {msg}");
            }
        }
        assert_eq!(admin.audit().await.len(), audit_count);
        assert_eq!(admin.reveal().await, value);

        // Admins cannot lift it themselves.
        let attempt = admin
            .send(Method::POST, "/admin/v1/apiKey/enable", None)
            .await;
        assert!(attempt.0.is_client_error(), "{:?}", attempt);
        assert_eq!(admin.key().await.1["status"], "DISABLED");

        let (status, org) = enable(&server, id).await;
        assert_eq!(status, StatusCode::OK, "{org}");
        assert_eq!(org["keyStatus"], "ENABLED");
        assert_eq!(org["keyDisabledReason"], Value::Null);
        let (_, key) = admin.key().await;
        assert_eq!(key["status"], "ENABLED");
        assert_eq!(key["disabledReason"], Value::Null);
        assert_eq!(admin.reveal().await, value);

        let audit = provider_audit(&server, id).await;
        assert_eq!(
            &actions(&audit)[..3],
            ["KEY_REVEAL", "KEY_ENABLE", "KEY_REVEAL"]
        );
        let d = audit.iter().find(|r| r["action"] == "KEY_DISABLE").unwrap();
        assert_eq!(d["details"]["reason"], reason);
        assert_eq!(d["actorType"], "PROVIDER");
    }

    // Changes work again once enabled.
    assert_eq!(admin.regenerate().await.0, StatusCode::OK);
}

#[tokio::test]
async fn r8_disable_input_rules() {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let id = org_id(&org);
    let audit_count = provider_audit(&server, id).await.len();

    for body in [
        json!({"reason": "OTHER"}),
        json!({"reason": "OTHER", "note": null}),
        json!({"reason": "OTHER", "note": "   "}),
    ] {
        let resp = disable(&server, id, body.clone()).await;
        assert_error(&resp, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
        assert_eq!(resp.1["field"], "note", "{body}: {}", resp.1);
        assert!(text(&resp.1["message"]).contains("note"));
    }
    let resp = disable(&server, id, json!({"reason": "BORED"})).await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
    assert_eq!(resp.1["field"], "reason");
    assert_eq!(provider_org(&server, id).await["keyStatus"], "ENABLED");
    assert_eq!(provider_audit(&server, id).await.len(), audit_count);

    // No key: nothing to disable or enable.
    let admin = server.login("full@acme").await;
    assert_eq!(admin.delete().await.0, StatusCode::NO_CONTENT);
    let resp = disable(&server, id, json!({"reason": "TERMS_VIOLATION"})).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_error(
        &enable(&server, id).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    // No org.
    let resp = disable(&server, id + 1000, json!({"reason": "TERMS_VIOLATION"})).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "NOT_FOUND");
}

#[tokio::test]
async fn r8_disabled_key_of_an_org_is_refused_before_already_exists() {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let id = org_id(&org);
    let (status, _) = disable(&server, id, json!({"reason": "TERMS_VIOLATION"})).await;
    assert_eq!(status, StatusCode::OK);
    // Add with a (disabled) key present: the disablement is what the admin must hear.
    let admin = server.login("full@acme").await;
    assert_error(
        &admin.add().await,
        StatusCode::FORBIDDEN,
        "API_KEY_DISABLED",
    );
    // A view-only admin hears about the role first.
    let view = server.login("view@acme").await;
    assert_error(
        &view.regenerate().await,
        StatusCode::FORBIDDEN,
        "NOT_AUTHORIZED",
    );
}

// ---------------------------------------------------------------- R10: expiry

async fn assert_expired_state(server: &TestServer, id: i64, admin: &Admin, value: &str) {
    let (status, key) = admin.key().await;
    assert_eq!(status, StatusCode::OK, "the key page stays viewable: {key}");
    assert_eq!(key["status"], "DISABLED");
    assert_eq!(key["enabled"], false);
    assert_eq!(key["disabledReason"], "SUBSCRIPTION_EXPIRED");
    assert_eq!(key["permissions"], json!(["READ"]));
    assert_eq!(key["keyValue"], masked(value));
    let (_, page) = admin.get("/admin/v1/org").await;
    assert_eq!(page["subscription"]["state"], "EXPIRED");
    let org = provider_org(server, id).await;
    assert_eq!(org["keyStatus"], "DISABLED");
    assert_eq!(org["keyDisabledReason"], "SUBSCRIPTION_EXPIRED");
    assert_eq!(org["subscription"]["state"], "EXPIRED");

    let audit_count = admin.audit().await.len();
    let results = every_change(admin).await;
    assert_all_refused(&results, StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
    assert_eq!(admin.audit().await.len(), audit_count);
    assert_eq!(admin.reveal().await, value, "the key keeps its value");
}

async fn assert_renewed(server: &TestServer, id: i64, admin: &Admin, value: &str) {
    let expires = now_secs(server) + 365 * 86_400;
    let org = set_subscription(server, id, true, Some(expires)).await;
    assert_eq!(org["subscription"]["state"], "ACTIVE");
    assert_eq!(org["keyStatus"], "ENABLED");
    let (_, key) = admin.key().await;
    assert_eq!(key["status"], "ENABLED");
    assert_eq!(key["disabledReason"], Value::Null);
    assert_eq!(key["permissions"], json!(["READ", "WRITE"]));
    assert_eq!(admin.reveal().await, value, "renewal keeps the same value");
    let audit = provider_audit(server, id).await;
    let provisions = actions(&audit)
        .into_iter()
        .filter(|a| *a == "KEY_PROVISION")
        .count();
    assert_eq!(provisions, 1, "renewal does not provision a new key");
}

#[tokio::test]
async fn r10_expired_subscription_set_by_the_provider_is_read_only_until_renewed() {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let id = org_id(&org);
    let admin = server.login("full@acme").await;
    let value = admin.reveal().await;

    let org = set_subscription(&server, id, true, Some(T0_SECS - 1)).await;
    assert_eq!(org["subscription"]["expiresAt"], T0_SECS - 1);
    assert_expired_state(&server, id, &admin, &value).await;
    assert_renewed(&server, id, &admin, &value).await;
    let (status, body) = admin.regenerate().await;
    assert_eq!(status, StatusCode::OK, "changes work after renewal: {body}");
}

#[tokio::test]
async fn r10_subscription_expires_when_the_clock_passes_expires_at() {
    let server = TestServer::start().await;
    let expires = T0_SECS + 3600;
    let org = server
        .create_org_with("acme", json!({"enabled": true, "expiresAt": expires}))
        .await;
    let id = org_id(&org);
    assert_eq!(org["keyStatus"], "ENABLED");
    {
        let admin = server.login("full@acme").await;
        assert_eq!(admin.key().await.1["status"], "ENABLED");
    }
    // One second before: still active.
    server.clock.advance_secs(3599);
    let admin = server.login("full@acme").await;
    let value = admin.reveal().await;
    assert_eq!(admin.key().await.1["status"], "ENABLED");
    server.clock.advance_secs(1);
    assert_expired_state(&server, id, &admin, &value).await;
    // Expired past the console idle timeout too: log in again, still read-only.
    server.clock.advance_secs(86_400);
    let admin = server.login("full@acme").await;
    assert_expired_state(&server, id, &admin, &value).await;
    assert_renewed(&server, id, &admin, &value).await;
}

// ---------------------------------------------------------------- R11: audit

#[tokio::test]
async fn r11_every_change_is_audited_once_with_actor_and_time_newest_first() {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let id = org_id(&org);
    let other = server.create_org("other").await;
    let mut keys: Vec<String> = Vec::new();
    // (action, actorType, actorName, time ms), oldest first.
    let mut expected: Vec<(&str, &str, String, i64)> = vec![
        ("ORG_CREATE", "PROVIDER", "bootstrap token".into(), t0().0),
        ("ADMIN_ADD", "PROVIDER", "bootstrap token".into(), t0().0),
        ("ADMIN_ADD", "PROVIDER", "bootstrap token".into(), t0().0),
        (
            "KEY_PROVISION",
            "PROVIDER",
            "bootstrap token".into(),
            t0().0,
        ),
    ];
    let sp = || "bootstrap token".to_string();
    let me = || "full@acme".to_string();

    macro_rules! step {
        ($action:expr, $kind:expr, $name:expr) => {{
            expected.push(($action, $kind, $name, now_ms(&server)));
            server.clock.advance_secs(7);
        }};
    }

    server.clock.advance_secs(7);
    let admin = server.login("full@acme").await;
    step!("LOGIN_SUCCESS", "ADMIN", me());
    let failed = server.login_with("full@acme", "wrong-password-123").await;
    assert!(failed.is_err());
    step!("LOGIN_FAILURE", "ANONYMOUS", me());
    // Unknown login: audited, but it belongs to no org.
    assert!(server.login_with("nobody@acme", PASSWORD).await.is_err());
    server.clock.advance_secs(7);
    keys.push(admin.reveal().await);
    step!("KEY_REVEAL", "ADMIN", me());
    let (status, _) = admin.edit(json!("Audited1Key2")).await;
    assert_eq!(status, StatusCode::OK);
    keys.push("Audited1Key2".into());
    step!("KEY_EDIT", "ADMIN", me());
    let (status, body) = admin.regenerate().await;
    assert_eq!(status, StatusCode::OK);
    keys.push(text(&body["keyValue"]).to_owned());
    step!("KEY_REGENERATE", "ADMIN", me());
    assert_eq!(admin.delete().await.0, StatusCode::NO_CONTENT);
    step!("KEY_DELETE", "ADMIN", me());
    // Refused changes leave no record.
    assert_eq!(admin.delete().await.0, StatusCode::NOT_FOUND);
    server.clock.advance_secs(7);
    let (status, body) = admin.add().await;
    assert_eq!(status, StatusCode::CREATED);
    keys.push(text(&body["keyValue"]).to_owned());
    step!("KEY_ADD", "ADMIN", me());
    let (status, _) = disable(
        &server,
        id,
        json!({"reason": "OTHER", "note": "audit test"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    step!("KEY_DISABLE", "PROVIDER", sp());
    assert_eq!(enable(&server, id).await.0, StatusCode::OK);
    step!("KEY_ENABLE", "PROVIDER", sp());
    set_subscription(&server, id, true, Some(T0_SECS + 86_400 * 30)).await;
    step!("SUBSCRIPTION_UPDATE", "PROVIDER", sp());
    let (status, body) = server
        .provider(
            Method::PUT,
            &format!("/provider/v1/orgs/{id}/limits"),
            Some(json!({"callThreshold": {"calls": 500, "periodSeconds": 3600}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    step!("LIMITS_UPDATE", "PROVIDER", sp());
    let (status, added) = server
        .provider(
            Method::POST,
            &format!("/provider/v1/orgs/{id}/admins"),
            Some(json!({"loginName": "new@acme", "password": PASSWORD, "role": "VIEW_ONLY"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    step!("ADMIN_ADD", "PROVIDER", sp());
    let (status, _) = server
        .provider(
            Method::DELETE,
            &format!("/provider/v1/orgs/{id}/admins/{}", added["id"]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    step!("ADMIN_REMOVE", "PROVIDER", sp());
    keys.push(admin.reveal().await);
    step!("KEY_REVEAL", "ADMIN", me());
    // The other org's key, to check it never shows up here either.
    let other_admin = server.login("full@other").await;
    keys.push(other_admin.reveal().await);

    let admin_view = admin.audit().await;
    let provider_view = provider_audit(&server, id).await;
    assert_eq!(admin_view, provider_view, "both APIs show the same log");
    let got: Vec<(&str, &str, String, i64)> = admin_view
        .iter()
        .map(|r| {
            (
                text(&r["action"]),
                text(&r["actorType"]),
                text(&r["actorName"]).to_owned(),
                r["time"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut want = expected.clone();
    want.reverse();
    assert_eq!(got, want, "one record per change, newest first");
    for r in &admin_view {
        assert_eq!(r["orgId"], id, "{r}");
        assert_eq!(r["clientAddress"], "127.0.0.1", "{r}");
        if let Some(s) = r["keySuffix"].as_str() {
            assert!(s.len() <= 3, "{r}");
        }
        let json = r.to_string();
        for k in &keys {
            assert!(
                !json.contains(k.as_str()),
                "audit record holds a full key: {json}"
            );
        }
    }
    // The key-changing records carry the suffix of the key they are about.
    let edit = admin_view
        .iter()
        .find(|r| r["action"] == "KEY_EDIT")
        .unwrap();
    assert_eq!(edit["keySuffix"], "ey2");
    assert_eq!(edit["details"]["previousKeySuffix"], &keys[0][9..]);
    assert!(admin_view.iter().all(|r| r["actorName"] != "nobody@acme"));
    assert_eq!(
        provider_audit(&server, org_id(&other)).await.len(),
        6,
        "the other org's log holds only its creation, its login and its reveal"
    );
}

#[tokio::test]
async fn r11_audit_is_paged_newest_first() {
    let server = TestServer::start().await;
    server.create_org("acme").await;
    let admin = server.login("full@acme").await;
    for _ in 0..4 {
        server.clock.advance_secs(1);
        admin.reveal().await;
    }
    let all = admin.audit().await;
    let (status, page1) = admin.get("/admin/v1/audit?page=1&pageSize=2").await;
    assert_eq!(status, StatusCode::OK);
    let (_, page2) = admin.get("/admin/v1/audit?page=2&pageSize=2").await;
    assert_eq!(page1["total"], all.len());
    assert_eq!(page1["items"].as_array().unwrap()[..], all[..2]);
    assert_eq!(page2["items"].as_array().unwrap()[..], all[2..4]);
    let times: Vec<i64> = all.iter().map(|r| r["time"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    let ids: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
}

// ---------------------------------------------------------------- R12: the key is secret

#[tokio::test]
async fn r12_key_is_masked_everywhere_but_the_key_endpoints() {
    let server = TestServer::start().await;
    let created = server.create_org("acme").await;
    let id = org_id(&created);
    let admin = server.login("full@acme").await;
    let mut values = vec![admin.reveal().await];
    let (_, body) = admin.regenerate().await;
    values.push(text(&body["keyValue"]).to_owned());
    let current = values.last().unwrap().clone();

    let mut responses: Vec<(String, Value)> = vec![("create org".into(), created)];
    let (status, key) = admin.key().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(key["keyValue"], masked(&current));
    responses.push(("admin GET apiKey".into(), key));
    responses.push(("admin GET org".into(), admin.get("/admin/v1/org").await.1));
    responses.push(("admin audit".into(), json!(admin.audit().await)));
    responses.push(("login".into(), server.login("view@acme").await.login));
    for path in [
        "/provider/v1/orgs".to_string(),
        format!("/provider/v1/orgs/{id}"),
        format!("/provider/v1/orgs/{id}/audit"),
    ] {
        let (status, body) = server.provider(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK);
        responses.push((path, body));
    }
    let (_, disabled) = disable(&server, id, json!({"reason": "TERMS_VIOLATION"})).await;
    responses.push(("disable".into(), disabled));
    responses.push(("enable".into(), enable(&server, id).await.1));
    responses.push((
        "subscription".into(),
        set_subscription(&server, id, true, None).await,
    ));
    responses.push(("same-as-current".into(), admin.edit(json!(current)).await.1));
    let org = provider_org(&server, id).await;
    assert_eq!(org["apiKey"]["keyValue"], masked(&current));
    let (_, list) = server
        .provider(Method::GET, "/provider/v1/orgs", None)
        .await;
    assert_eq!(list["items"][0]["apiKey"]["keyValue"], masked(&current));

    for (what, body) in &responses {
        let json = body.to_string();
        for v in &values {
            assert!(
                !json.contains(v.as_str()),
                "{what} shows a full key: {json}"
            );
        }
    }

    // Responses that may carry a key are never cached.
    let resp = admin
        .http
        .post(server.url("/admin/v1/apiKey/reveal"))
        .header("X-CSRF-Token", &admin.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
    assert!(
        resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
}

#[tokio::test]
async fn r12_tenants_are_isolated() {
    let server = TestServer::start().await;
    let a = server.create_org("alpha").await;
    let b = server.create_org("beta").await;
    let (a_id, b_id) = (org_id(&a), org_id(&b));
    let alice = server.login("full@alpha").await;
    let bob = server.login("full@beta").await;
    let b_value = bob.reveal().await;
    let b_audit = provider_audit(&server, b_id).await;
    let b_org = provider_org(&server, b_id).await;

    assert_eq!(alice.login["org"]["id"], a_id);
    let (_, page) = alice.get("/admin/v1/org").await;
    assert_eq!(page["id"], a_id);
    assert_eq!(page["name"], "Org alpha");
    let a_value = alice.reveal().await;
    assert_ne!(a_value, b_value);
    let (_, key) = alice.key().await;
    assert_eq!(key["keyValue"], masked(&a_value));
    // Org ids in the query or body are ignored: the session decides the org.
    let (_, key) = alice.get(&format!("/admin/v1/apiKey?orgId={b_id}")).await;
    assert_ne!(key["keyValue"], masked(&b_value));
    for r in alice.audit().await {
        assert_eq!(r["orgId"], a_id, "{r}");
    }
    let (status, body) = alice.get(&format!("/admin/v1/audit?orgId={b_id}")).await;
    assert!(
        status == StatusCode::BAD_REQUEST
            || body["items"]
                .as_array()
                .is_some_and(|i| i.iter().all(|r| r["orgId"] == a_id)),
        "{status} {body}"
    );

    // A's changes never touch B.
    assert_eq!(alice.regenerate().await.0, StatusCode::OK);
    assert_eq!(alice.edit(json!(b_value)).await.0, StatusCode::OK);
    assert_eq!(alice.delete().await.0, StatusCode::NO_CONTENT);
    assert_eq!(alice.add().await.0, StatusCode::CREATED);
    // A's cookie with B's CSRF token is refused.
    let mixed = alice
        .http
        .post(server.url("/admin/v1/apiKey/regenerate"))
        .header("X-CSRF-Token", &bob.csrf)
        .send()
        .await
        .unwrap();
    assert_error(
        &into_json(mixed).await,
        StatusCode::FORBIDDEN,
        "CSRF_TOKEN_INVALID",
    );

    assert_eq!(provider_audit(&server, b_id).await, b_audit);
    assert_eq!(provider_org(&server, b_id).await, b_org);
    assert_eq!(bob.reveal().await, b_value);
    // The provider cannot remove B's admin through A's path.
    let bob_id = b_org["admins"][0]["id"].as_i64().unwrap();
    let resp = server
        .provider(
            Method::DELETE,
            &format!("/provider/v1/orgs/{a_id}/admins/{bob_id}"),
            None,
        )
        .await;
    assert_error(&resp, StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_eq!(bob.key().await.0, StatusCode::OK);
}

// ---------------------------------------------------------------- console authentication

#[tokio::test]
async fn console_writes_need_the_csrf_token() {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let id = org_id(&org);
    let admin = server.login("full@acme").await;
    let value = admin.reveal().await;
    let audit_count = provider_audit(&server, id).await.len();

    let writes: [(Method, &str, Option<Value>); 6] = [
        (Method::POST, "/admin/v1/apiKey", None),
        (
            Method::PUT,
            "/admin/v1/apiKey",
            Some(json!({"keyValue": "Fresh1Value2"})),
        ),
        (Method::POST, "/admin/v1/apiKey/regenerate", None),
        (Method::DELETE, "/admin/v1/apiKey", None),
        (Method::POST, "/admin/v1/apiKey/reveal", None),
        (Method::POST, "/admin/v1/logout", None),
    ];
    for token in [None, Some(""), Some("wrong-token"), Some(&admin.csrf[1..])] {
        for (method, path, body) in &writes {
            let mut req = admin.http.request(method.clone(), server.url(path));
            if let Some(t) = token {
                req = req.header("X-CSRF-Token", t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = into_json(req.send().await.unwrap()).await;
            assert_error(&resp, StatusCode::FORBIDDEN, "CSRF_TOKEN_INVALID");
            assert!(!resp.1.to_string().contains(&admin.csrf));
        }
    }
    assert_eq!(provider_audit(&server, id).await.len(), audit_count);
    // The session survived (logout was refused too) and the key is unchanged.
    assert_eq!(admin.key().await.0, StatusCode::OK);
    assert_eq!(admin.reveal().await, value);
}

#[tokio::test]
async fn console_session_cookie_rules() {
    let server = TestServer::start().await;
    server.create_org("acme").await;

    // No cookie, or a made-up one.
    let (status, body) = into_json(
        server
            .http
            .get(server.url("/admin/v1/apiKey"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(
        &(status, body),
        StatusCode::UNAUTHORIZED,
        "SESSION_NOT_VALID",
    );
    let resp = with_cookie(&server, Method::GET, "/admin/v1/apiKey", "made-up", None).await;
    assert_error(&resp, StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID");
    let resp = with_cookie(&server, Method::POST, "/admin/v1/apiKey", "", Some("x")).await;
    assert_error(&resp, StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID");

    // The cookie is HttpOnly and SameSite=Strict.
    let (cookie, csrf, set_cookie) = raw_login(&server, "full@acme").await;
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(cookie.len() >= 22, "session id too short: {cookie}");
    assert_eq!(
        with_cookie(&server, Method::GET, "/admin/v1/apiKey", &cookie, None)
            .await
            .0,
        StatusCode::OK
    );

    // After logout the old cookie is dead.
    let resp = with_cookie(
        &server,
        Method::POST,
        "/admin/v1/logout",
        &cookie,
        Some(&csrf),
    )
    .await;
    assert_eq!(resp.0, StatusCode::NO_CONTENT, "{}", resp.1);
    let resp = with_cookie(&server, Method::GET, "/admin/v1/apiKey", &cookie, None).await;
    assert_error(&resp, StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID");
    let resp = with_cookie(
        &server,
        Method::POST,
        "/admin/v1/apiKey/regenerate",
        &cookie,
        Some(&csrf),
    )
    .await;
    assert_error(&resp, StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID");
    // Another session of the same admin is unaffected by that logout.
    let (other, _, _) = raw_login(&server, "full@acme").await;
    assert_eq!(
        with_cookie(&server, Method::GET, "/admin/v1/org", &other, None)
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn console_session_idle_timeout_and_lifetime() {
    let server = TestServer::start().await;
    server.create_org("acme").await;
    let admin = server.login("full@acme").await;

    // Activity keeps it alive: 14 minutes at a time, well past 15 minutes in total.
    for _ in 0..3 {
        server.clock.advance_secs(14 * 60);
        assert_eq!(admin.key().await.0, StatusCode::OK);
    }
    server.clock.advance_secs(15 * 60 + 1);
    assert_error(
        &admin.key().await,
        StatusCode::UNAUTHORIZED,
        "SESSION_NOT_VALID",
    );
    // Dead for good, even if the clock were to come back.
    server.clock.advance_secs(-(15 * 60 + 1));
    assert_error(
        &admin.key().await,
        StatusCode::UNAUTHORIZED,
        "SESSION_NOT_VALID",
    );

    // The absolute lifetime (8 hours) ends a session however busy it is.
    let admin = server.login("full@acme").await;
    for i in 0..34 {
        server.clock.advance_secs(14 * 60);
        assert_eq!(
            admin.key().await.0,
            StatusCode::OK,
            "after {} min",
            (i + 1) * 14
        );
    }
    server.clock.advance_secs(5 * 60); // 481 minutes
    assert_error(
        &admin.key().await,
        StatusCode::UNAUTHORIZED,
        "SESSION_NOT_VALID",
    );
}

#[tokio::test]
async fn console_login_failures_look_the_same() {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let id = org_id(&org);
    let audit_count = provider_audit(&server, id).await.len();

    let wrong_password = server
        .login_with("full@acme", "not-the-password")
        .await
        .err()
        .expect("wrong password refused");
    let unknown = server
        .login_with("nobody@acme", PASSWORD)
        .await
        .err()
        .expect("unknown login refused");
    let malformed = server
        .login_with("x", PASSWORD)
        .await
        .err()
        .expect("malformed login refused");
    let empty = server
        .login_with("full@acme", "")
        .await
        .err()
        .expect("empty password refused");
    assert_error(
        &wrong_password,
        StatusCode::UNAUTHORIZED,
        "AUTHENTICATION_FAILED",
    );
    assert_eq!(unknown, wrong_password);
    assert_eq!(malformed, wrong_password);
    assert_eq!(empty, wrong_password);
    // The password with a different case, or the login of another org, fail alike.
    let upper = server
        .login_with("full@acme", &PASSWORD.to_uppercase())
        .await
        .err()
        .unwrap();
    assert_eq!(upper, wrong_password);

    // Failures under a known login are in the org's log (without the password typed).
    let audit = provider_audit(&server, id).await;
    assert_eq!(audit.len(), audit_count + 3);
    for r in &audit[..3] {
        assert_eq!(r["action"], "LOGIN_FAILURE");
        assert!(!r.to_string().contains("not-the-password"));
        assert!(!r.to_string().contains(&PASSWORD.to_uppercase()));
    }
    // Login names are case-insensitive.
    let admin = server.login("FULL@Acme").await;
    assert_eq!(admin.login["admin"]["loginName"], "full@acme");
}

#[tokio::test]
async fn removed_admin_loses_console_session() {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let id = org_id(&org);
    let view = server.login("view@acme").await;
    assert_eq!(view.key().await.0, StatusCode::OK);
    let view_id = org["admins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["loginName"] == "view@acme")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (status, body) = server
        .provider(
            Method::DELETE,
            &format!("/provider/v1/orgs/{id}/admins/{view_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_error(
        &view.key().await,
        StatusCode::UNAUTHORIZED,
        "SESSION_NOT_VALID",
    );
    assert!(server.login_with("view@acme", PASSWORD).await.is_err());
}

/// No key and no password in plaintext in any file of the data directory (R12, §9), whatever
/// was typed where: here the password is also typed into the login-name box.
#[tokio::test]
async fn r12_no_key_or_password_in_the_database_files() {
    let server = TestServer::start().await;
    server.create_org("acme").await;
    let admin = server.login("full@acme").await;
    let mut secrets = vec![admin.reveal().await];
    let (status, _) = admin.edit(json!("PlainText123")).await;
    assert_eq!(status, StatusCode::OK);
    secrets.push("PlainText123".into());
    let (_, body) = admin.regenerate().await;
    secrets.push(text(&body["keyValue"]).to_owned());
    // A password typed into the login box, and a wrong password that is a near miss.
    assert!(server.login_with(PASSWORD, PASSWORD).await.is_err());
    assert!(
        server
            .login_with("full@acme", "correct-horse-battery-stapler")
            .await
            .is_err()
    );
    // The same on the cloud service API.
    let resp = server
        .http
        .post(server.url("/api/v1/authenticatedSession"))
        .json(&json!({"apiKey": "ABCDEFGHIJKL", "username": PASSWORD,
                      "password": PASSWORD, "timestamp": now_ms(&server)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    secrets.push(PASSWORD.into());
    secrets.push("correct-horse-battery-stapler".into());
    secrets.push(admin.csrf.clone());

    let dir = server.stop().await;
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path).unwrap();
        for s in &secrets {
            let found = bytes.windows(s.len()).any(|w| w == s.as_bytes());
            assert!(
                !found,
                "{} holds a secret in plaintext ({}…)",
                path.display(),
                &s[..3]
            );
        }
    }
    assert!(files >= 1, "the data directory has the database");
}
