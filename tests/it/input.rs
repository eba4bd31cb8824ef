//! Bad input (PRODUCT.md §3.4, §9): wrong media types, oversized, malformed, wrong-typed and
//! hostile bodies, bad ids, bad paging, bad credentials. Every answer is a JSON 4xx that says
//! what was wrong, never a 5xx, and nothing changes.

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

// ---------------------------------------------------------------- helpers

fn org_id(org: &Value) -> i64 {
    org["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("org id in {org}"))
}

/// A raw request: bearer token (provider paths), console cookie and CSRF (admin paths),
/// the given content type and bytes.
async fn raw(
    server: &TestServer,
    admin: Option<&Admin>,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value, Option<String>) {
    let mut req = match admin {
        Some(a) => a
            .http
            .request(method, server.url(path))
            .header("X-CSRF-Token", &a.csrf),
        None => server
            .http
            .request(method, server.url(path))
            .bearer_auth(PROVIDER_TOKEN),
    };
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    let resp = req.body(body).send().await.expect("request");
    let ct = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, value) = into_json(resp).await;
    (status, value, ct)
}

/// Asserts a JSON error answer with a 4xx status.
fn assert_json_4xx(what: &str, got: &(StatusCode, Value, Option<String>)) {
    assert!(
        got.0.is_client_error(),
        "{what}: expected 4xx, got {} {}",
        got.0,
        got.1
    );
    assert!(
        got.2
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json")),
        "{what}: content type {:?}",
        got.2
    );
    assert!(
        got.1["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{what}: no code in {}",
        got.1
    );
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no message in {}",
        got.1
    );
}

/// Everything a bad request could have changed: the org as the provider sees it, its audit
/// log without reveals, the full key, and how many orgs there are.
#[derive(Debug, PartialEq)]
struct Snapshot {
    org: Value,
    audit: Vec<Value>,
    key: String,
    org_count: i64,
}

async fn snapshot(server: &TestServer, id: i64, admin: &Admin) -> Snapshot {
    let (status, org) = server
        .provider(Method::GET, &format!("/provider/v1/orgs/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{org}");
    let (status, audit) = server
        .provider(
            Method::GET,
            &format!("/provider/v1/orgs/{id}/audit?pageSize=1000"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let (status, list) = server
        .provider(Method::GET, "/provider/v1/orgs", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    Snapshot {
        org,
        audit: audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] != "KEY_REVEAL")
            .cloned()
            .collect(),
        key: admin.reveal().await,
        org_count: list["total"].as_i64().unwrap(),
    }
}

async fn setup() -> (TestServer, i64, Admin) {
    let server = TestServer::start().await;
    let org = server.create_org("acme").await;
    let admin = server.login("full@acme").await;
    (server, org_id(&org), admin)
}

fn valid_org_body() -> Value {
    json!({
        "name": "New Org",
        "admins": [{"loginName": "new@neworg", "password": PASSWORD, "role": "FULL"}],
        "subscription": {"enabled": true, "expiresAt": null},
        "callThreshold": {"calls": 1000, "periodSeconds": 3600},
    })
}

/// The endpoints that read a JSON body, for an org `id`: (admin?, method, path).
fn body_endpoints(id: i64) -> Vec<(bool, Method, String)> {
    vec![
        (true, Method::PUT, "/admin/v1/apiKey".into()),
        (false, Method::POST, "/provider/v1/orgs".into()),
        (
            false,
            Method::PUT,
            format!("/provider/v1/orgs/{id}/subscription"),
        ),
        (
            false,
            Method::POST,
            format!("/provider/v1/orgs/{id}/apiKey/disable"),
        ),
        (
            false,
            Method::POST,
            format!("/provider/v1/orgs/{id}/admins"),
        ),
        (false, Method::PUT, format!("/provider/v1/orgs/{id}/limits")),
    ]
}

// ---------------------------------------------------------------- media type, size

#[tokio::test]
async fn non_json_content_type_is_415_and_changes_nothing() {
    let (server, id, admin) = setup().await;
    let before = snapshot(&server, id, &admin).await;
    let valid: Vec<Value> = vec![
        json!({"keyValue": "Fresh1Value2"}),
        valid_org_body(),
        json!({"enabled": true, "expiresAt": T0_SECS - 1}),
        json!({"reason": "TERMS_VIOLATION"}),
        json!({"loginName": "other@acme", "password": PASSWORD, "role": "FULL"}),
        json!({"callThreshold": {"calls": 5, "periodSeconds": 60}, "rateLimits": null}),
    ];
    for ((is_admin, method, path), body) in body_endpoints(id).into_iter().zip(valid) {
        let bytes = serde_json::to_vec(&body).unwrap();
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/xml"),
            Some("application/jsonx"),
            Some("json"),
            Some(""),
        ] {
            let got = raw(
                &server,
                is_admin.then_some(&admin),
                method.clone(),
                &path,
                ct,
                bytes.clone(),
            )
            .await;
            let what = format!("{method} {path} as {ct:?}");
            assert_json_4xx(&what, &got);
            assert_eq!(
                got.0,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{what}: {}",
                got.1
            );
            assert_eq!(got.1["code"], "UNSUPPORTED_MEDIA_TYPE", "{what}");
        }
    }
    // Login too.
    let resp = server
        .http
        .post(server.url("/admin/v1/login"))
        .header(CONTENT_TYPE, "text/plain")
        .body(json!({"loginName": "full@acme", "password": PASSWORD}).to_string())
        .send()
        .await
        .unwrap();
    assert_error(
        &into_json(resp).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
    );
    assert_eq!(snapshot(&server, id, &admin).await, before);

    // JSON media types with parameters or a +json suffix are JSON.
    for ct in ["application/json; charset=utf-8", "Application/JSON"] {
        let got = raw(
            &server,
            Some(&admin),
            Method::PUT,
            "/admin/v1/apiKey",
            Some(ct),
            br#"{"keyValue": 5}"#.to_vec(),
        )
        .await;
        assert_eq!(got.0, StatusCode::BAD_REQUEST, "{ct}: {}", got.1);
        assert_eq!(got.1["field"], "keyValue");
    }
}

#[tokio::test]
async fn oversized_body_is_413_and_changes_nothing() {
    let (server, id, admin) = setup().await;
    let before = snapshot(&server, id, &admin).await;
    let huge = "A".repeat(64 * 1024 + 1);
    let bodies: Vec<Value> = vec![
        json!({"keyValue": huge}),
        json!({"name": huge, "subscription": {"enabled": true, "expiresAt": null}}),
        json!({"enabled": true, "expiresAt": null, "pad": huge}),
        json!({"reason": "OTHER", "note": huge}),
        json!({"loginName": "big@acme", "password": huge, "role": "FULL"}),
        json!({"rateLimits": [{"methods": [huge], "limit": 1, "periodSeconds": 1}]}),
    ];
    for ((is_admin, method, path), body) in body_endpoints(id).into_iter().zip(bodies) {
        let got = raw(
            &server,
            is_admin.then_some(&admin),
            method.clone(),
            &path,
            Some("application/json"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        let what = format!("{method} {path}");
        assert_json_4xx(&what, &got);
        assert_eq!(got.0, StatusCode::PAYLOAD_TOO_LARGE, "{what}: {}", got.1);
        assert_eq!(got.1["code"], "PAYLOAD_TOO_LARGE");
    }
    let resp = server
        .http
        .post(server.url("/admin/v1/login"))
        .json(&json!({"loginName": "full@acme", "password": huge}))
        .send()
        .await
        .unwrap();
    assert_error(
        &into_json(resp).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    );
    // Just under the limit is read (and then refused for what it says).
    let under = json!({"keyValue": "A".repeat(60 * 1024)});
    let got = raw(
        &server,
        Some(&admin),
        Method::PUT,
        "/admin/v1/apiKey",
        Some("application/json"),
        serde_json::to_vec(&under).unwrap(),
    )
    .await;
    assert_eq!(got.0, StatusCode::BAD_REQUEST, "{}", got.1);
    assert_eq!(got.1["field"], "keyValue");
    assert!(
        got.1.to_string().len() < 1024,
        "the error does not echo the input"
    );
    assert_eq!(snapshot(&server, id, &admin).await, before);
}

#[tokio::test]
async fn body_limit_is_configurable() {
    let server = TestServer::start_with(|c| c.max_body_bytes = 2048).await;
    let org = server.create_org("acme").await;
    let id = org_id(&org);
    let got = raw(
        &server,
        None,
        Method::POST,
        &format!("/provider/v1/orgs/{id}/apiKey/disable"),
        Some("application/json"),
        serde_json::to_vec(&json!({"reason": "OTHER", "note": "n".repeat(3000)})).unwrap(),
    )
    .await;
    assert_eq!(got.0, StatusCode::PAYLOAD_TOO_LARGE, "{}", got.1);
    let (status, body) = server
        .provider(Method::GET, &format!("/provider/v1/orgs/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["keyStatus"], "ENABLED");
}

// ---------------------------------------------------------------- malformed and wrong-typed

#[tokio::test]
async fn malformed_and_wrong_typed_bodies_name_the_field() {
    let (server, id, admin) = setup().await;
    let before = snapshot(&server, id, &admin).await;
    let admin0 = || json!({"loginName": "x@neworg", "password": PASSWORD, "role": "FULL"});
    let with = |path: &[&str], value: Option<Value>| {
        let mut body = valid_org_body();
        let mut at = &mut body;
        for p in &path[..path.len() - 1] {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*p],
            };
        }
        let last = path[path.len() - 1];
        match value {
            Some(v) => at[last] = v,
            None => {
                at.as_object_mut().unwrap().remove(last);
            }
        }
        body.to_string()
    };
    let orgs = "/provider/v1/orgs".to_string();
    let sub = format!("/provider/v1/orgs/{id}/subscription");
    let dis = format!("/provider/v1/orgs/{id}/apiKey/disable");
    let adm = format!("/provider/v1/orgs/{id}/admins");
    let key = "/admin/v1/apiKey".to_string();
    let lim = format!("/provider/v1/orgs/{id}/limits");
    let cases: Vec<(Method, &String, String, &str)> = vec![
        // create org
        (Method::POST, &orgs, "{".into(), "body"),
        (Method::POST, &orgs, "".into(), "body"),
        (Method::POST, &orgs, "[]".into(), "body"),
        (Method::POST, &orgs, "null".into(), "body"),
        (Method::POST, &orgs, "\"org\"".into(), "body"),
        (Method::POST, &orgs, with(&["name"], Some(json!(5))), "name"),
        (Method::POST, &orgs, with(&["name"], None), "name"),
        (
            Method::POST,
            &orgs,
            with(&["name"], Some(json!(""))),
            "name",
        ),
        (
            Method::POST,
            &orgs,
            with(&["name"], Some(json!("a\u{7}b"))),
            "name",
        ),
        (
            Method::POST,
            &orgs,
            with(&["name"], Some(json!("x".repeat(201)))),
            "name",
        ),
        (
            Method::POST,
            &orgs,
            with(&["admins"], Some(json!({}))),
            "admins",
        ),
        (
            Method::POST,
            &orgs,
            with(&["admins", "0", "password"], Some(json!(5))),
            "admins[0].password",
        ),
        (
            Method::POST,
            &orgs,
            with(&["admins", "0", "password"], None),
            "admins[0].password",
        ),
        (
            Method::POST,
            &orgs,
            with(&["admins", "0", "password"], Some(json!("short"))),
            "admins[0].password",
        ),
        (
            Method::POST,
            &orgs,
            with(&["admins", "0", "loginName"], Some(json!("a b"))),
            "admins[0].loginName",
        ),
        (
            Method::POST,
            &orgs,
            with(&["admins", "0", "loginName"], Some(json!("ab"))),
            "admins[0].loginName",
        ),
        (
            Method::POST,
            &orgs,
            with(&["admins", "0", "role"], Some(json!("ROOT"))),
            "admins[0].role",
        ),
        (
            Method::POST,
            &orgs,
            with(&["admins", "0", "role"], None),
            "admins[0].role",
        ),
        (
            Method::POST,
            &orgs,
            with(&["admins", "0", "extra"], Some(json!(1))),
            "admins[0].extra",
        ),
        (
            Method::POST,
            &orgs,
            with(&["admins"], Some(json!([admin0(), admin0()]))),
            "admins[1].loginName",
        ),
        (
            Method::POST,
            &orgs,
            with(&["admins"], Some(json!(vec![admin0(); 101]))),
            "admins",
        ),
        (
            Method::POST,
            &orgs,
            with(&["subscription"], None),
            "subscription",
        ),
        (
            Method::POST,
            &orgs,
            with(&["subscription"], Some(json!(true))),
            "subscription",
        ),
        (
            Method::POST,
            &orgs,
            with(&["subscription", "enabled"], None),
            "subscription.enabled",
        ),
        (
            Method::POST,
            &orgs,
            with(&["subscription", "enabled"], Some(json!("yes"))),
            "subscription.enabled",
        ),
        (
            Method::POST,
            &orgs,
            with(&["subscription", "expiresAt"], Some(json!("tomorrow"))),
            "subscription.expiresAt",
        ),
        (
            Method::POST,
            &orgs,
            with(&["subscription", "expiresAt"], Some(json!(1.5))),
            "subscription.expiresAt",
        ),
        (
            Method::POST,
            &orgs,
            with(&["subscription", "expiresAt"], Some(json!(-1))),
            "subscription.expiresAt",
        ),
        (
            Method::POST,
            &orgs,
            with(&["subscription", "expiresAt"], Some(json!(i64::MAX))),
            "subscription.expiresAt",
        ),
        (
            Method::POST,
            &orgs,
            with(&["subscription", "expiresAt"], Some(json!(u64::MAX))),
            "subscription.expiresAt",
        ),
        (
            Method::POST,
            &orgs,
            with(&["subscription", "plan"], Some(json!("gold"))),
            "subscription.plan",
        ),
        (
            Method::POST,
            &orgs,
            with(&["callThreshold", "calls"], Some(json!("many"))),
            "callThreshold.calls",
        ),
        (
            Method::POST,
            &orgs,
            with(&["callThreshold", "calls"], Some(json!(0))),
            "callThreshold.calls",
        ),
        (
            Method::POST,
            &orgs,
            with(&["callThreshold", "calls"], None),
            "callThreshold.calls",
        ),
        (
            Method::POST,
            &orgs,
            with(&["callThreshold", "periodSeconds"], Some(json!(0))),
            "callThreshold.periodSeconds",
        ),
        (
            Method::POST,
            &orgs,
            with(
                &["callThreshold", "periodSeconds"],
                Some(json!(86_400 * 32)),
            ),
            "callThreshold.periodSeconds",
        ),
        (
            Method::POST,
            &orgs,
            with(&["callThreshold"], Some(json!("1/3600"))),
            "callThreshold",
        ),
        (
            Method::POST,
            &orgs,
            with(&["surprise"], Some(json!(1))),
            "surprise",
        ),
        // subscription
        (Method::PUT, &sub, "{}".into(), "enabled"),
        (
            Method::PUT,
            &sub,
            r#"{"enabled": 1, "expiresAt": null}"#.into(),
            "enabled",
        ),
        (
            Method::PUT,
            &sub,
            r#"{"enabled": true, "expiresAt": "2027-01-01"}"#.into(),
            "expiresAt",
        ),
        (
            Method::PUT,
            &sub,
            r#"{"enabled": true, "expiresAt": 1e20}"#.into(),
            "expiresAt",
        ),
        (
            Method::PUT,
            &sub,
            r#"{"enabled": true, "expiresAt": 253402300800}"#.into(),
            "expiresAt",
        ),
        (
            Method::PUT,
            &sub,
            r#"{"enabled": true, "expires": 5}"#.into(),
            "expires",
        ),
        (Method::PUT, &sub, r#"{"enabled": true,}"#.into(), "body"),
        // disable
        (Method::POST, &dis, "{}".into(), "reason"),
        (
            Method::POST,
            &dis,
            r#"{"reason": "BORED"}"#.into(),
            "reason",
        ),
        (
            Method::POST,
            &dis,
            r#"{"reason": "terms_violation"}"#.into(),
            "reason",
        ),
        (
            Method::POST,
            &dis,
            r#"{"reason": ["OTHER"]}"#.into(),
            "reason",
        ),
        (
            Method::POST,
            &dis,
            r#"{"reason": "OTHER", "note": 5}"#.into(),
            "note",
        ),
        (
            Method::POST,
            &dis,
            r#"{"reason": "OTHER", "note": "a\nb"}"#.into(),
            "note",
        ),
        (
            Method::POST,
            &dis,
            format!(r#"{{"reason": "OTHER", "note": "{}"}}"#, "n".repeat(501)),
            "note",
        ),
        (
            Method::POST,
            &dis,
            r#"{"reason": "OTHER", "note": "x", "by": "me"}"#.into(),
            "by",
        ),
        // add admin
        (Method::POST, &adm, "{}".into(), "loginName"),
        (
            Method::POST,
            &adm,
            format!(r#"{{"loginName": "ok@acme", "password": "{PASSWORD}"}}"#),
            "role",
        ),
        (
            Method::POST,
            &adm,
            format!(r#"{{"loginName": "o k", "password": "{PASSWORD}", "role": "FULL"}}"#),
            "loginName",
        ),
        (
            Method::POST,
            &adm,
            format!(
                r#"{{"loginName": "{}", "password": "{PASSWORD}", "role": "FULL"}}"#,
                "a".repeat(129)
            ),
            "loginName",
        ),
        (
            Method::POST,
            &adm,
            format!(
                r#"{{"loginName": "ok@acme", "password": "{}", "role": "FULL"}}"#,
                "p".repeat(257)
            ),
            "password",
        ),
        (
            Method::POST,
            &adm,
            r#"{"loginName": "ok@acme", "password": null, "role": "FULL"}"#.into(),
            "password",
        ),
        // limits
        (
            Method::PUT,
            &lim,
            r#"{"callThreshold": {"calls": -1, "periodSeconds": 60}}"#.into(),
            "callThreshold.calls",
        ),
        (
            Method::PUT,
            &lim,
            r#"{"callThreshold": {"calls": 5}}"#.into(),
            "callThreshold.periodSeconds",
        ),
        (
            Method::PUT,
            &lim,
            r#"{"rateLimits": {"methods": ["GET"]}}"#.into(),
            "rateLimits",
        ),
        (
            Method::PUT,
            &lim,
            r#"{"rateLimits": [{"methods": ["GET"], "limit": "2", "periodSeconds": 1}]}"#.into(),
            "rateLimits[0].limit",
        ),
        (
            Method::PUT,
            &lim,
            r#"{"rateLimits": [{"methods": ["GET"], "limit": -2, "periodSeconds": 1}]}"#.into(),
            "rateLimits[0].limit",
        ),
        (
            Method::PUT,
            &lim,
            r#"{"rateLimits": [{"methods": ["GET"], "limit": 2}]}"#.into(),
            "rateLimits[0].periodSeconds",
        ),
        (
            Method::PUT,
            &lim,
            r#"{"rateLimits": [{"methods": "GET", "limit": 2, "periodSeconds": 1}]}"#.into(),
            "rateLimits[0].methods",
        ),
        (
            Method::PUT,
            &lim,
            r#"{"rateLimits": [{"methods": ["GET"], "limit": 2, "periodSeconds": 1, "burst": 3}]}"#
                .into(),
            "rateLimits[0].burst",
        ),
        (Method::PUT, &lim, r#"{"limits": []}"#.into(), "limits"),
        // edit key (console)
        (Method::PUT, &key, "{}".into(), "keyValue"),
        (
            Method::PUT,
            &key,
            r#"{"keyValue": {"v": "abcdefghijkl"}}"#.into(),
            "keyValue",
        ),
        (
            Method::PUT,
            &key,
            r#"{"keyValue": true}"#.into(),
            "keyValue",
        ),
        (
            Method::PUT,
            &key,
            r#"{"keyValue": "abcdefghijkl""#.into(),
            "body",
        ),
        (
            Method::PUT,
            &key,
            r#"{"keyValue": 'abcdefghijkl'}"#.into(),
            "body",
        ),
    ];
    for (method, path, body, field) in cases {
        let got = raw(
            &server,
            path.starts_with("/admin").then_some(&admin),
            method.clone(),
            path,
            Some("application/json"),
            body.clone().into_bytes(),
        )
        .await;
        let short: String = body.chars().take(120).collect();
        let what = format!("{method} {path} {short}");
        assert_json_4xx(&what, &got);
        assert_eq!(got.0, StatusCode::BAD_REQUEST, "{what}: {}", got.1);
        assert_eq!(got.1["code"], "INVALID_INPUT_ARGUMENT", "{what}: {}", got.1);
        assert_eq!(got.1["field"], field, "{what}: {}", got.1);
        assert!(
            got.1["message"].as_str().unwrap().contains(field),
            "{what}: the message names the field: {}",
            got.1
        );
        assert!(
            !got.1.to_string().contains(PASSWORD),
            "{what}: an error echoes a password"
        );
    }
    assert_eq!(snapshot(&server, id, &admin).await, before);

    // Login bodies are checked the same way.
    for (body, field) in [
        (json!({"loginName": 5, "password": "x"}), "loginName"),
        (json!({"loginName": "full@acme"}), "password"),
        (json!({"password": PASSWORD}), "loginName"),
        (json!(["full@acme", PASSWORD]), "body"),
    ] {
        let resp = server
            .http
            .post(server.url("/admin/v1/login"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let got = into_json(resp).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
        assert_eq!(got.1["field"], field, "{body}: {}", got.1);
    }
}

// ---------------------------------------------------------------- paths, queries, methods

#[tokio::test]
async fn bad_path_ids_are_400_or_404_never_5xx() {
    let (server, id, admin) = setup().await;
    let before = snapshot(&server, id, &admin).await;
    let (_, org) = server
        .provider(Method::GET, &format!("/provider/v1/orgs/{id}"), None)
        .await;
    let admin_id = org["admins"][0]["id"].as_i64().unwrap();
    let bad = [
        "abc",
        "0",
        "-1",
        "00",
        "1.5",
        "1e3",
        "0x10",
        "%20",
        "%201",
        "%FF",
        "%00",
        "9223372036854775807",
        "9223372036854775808",
        "99999999999999999999999999999999",
        "-9223372036854775808",
        "999999",
        "%2e%2e",
        "1;2",
        "null",
    ];
    for x in bad {
        let endpoints: Vec<(Method, String, Option<Value>)> = vec![
            (Method::GET, format!("/provider/v1/orgs/{x}"), None),
            (Method::GET, format!("/provider/v1/orgs/{x}/audit"), None),
            (
                Method::PUT,
                format!("/provider/v1/orgs/{x}/subscription"),
                Some(json!({"enabled": false, "expiresAt": null})),
            ),
            (
                Method::POST,
                format!("/provider/v1/orgs/{x}/apiKey/disable"),
                Some(json!({"reason": "TERMS_VIOLATION"})),
            ),
            (
                Method::POST,
                format!("/provider/v1/orgs/{x}/apiKey/enable"),
                None,
            ),
            (
                Method::PUT,
                format!("/provider/v1/orgs/{x}/limits"),
                Some(json!({"callThreshold": null, "rateLimits": null})),
            ),
            (Method::GET, format!("/provider/v1/orgs/{x}/usage"), None),
            (
                Method::POST,
                format!("/provider/v1/orgs/{x}/admins"),
                Some(json!({"loginName": "new@acme", "password": PASSWORD, "role": "FULL"})),
            ),
            (
                Method::DELETE,
                format!("/provider/v1/orgs/{x}/admins/{admin_id}"),
                None,
            ),
            (
                Method::DELETE,
                format!("/provider/v1/orgs/{id}/admins/{x}"),
                None,
            ),
        ];
        for (method, path, body) in endpoints {
            let got = raw(
                &server,
                None,
                method.clone(),
                &path,
                Some("application/json"),
                body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            )
            .await;
            let what = format!("{method} {path}");
            assert_json_4xx(&what, &got);
            assert!(
                got.0 == StatusCode::BAD_REQUEST || got.0 == StatusCode::NOT_FOUND,
                "{what}: {} {}",
                got.0,
                got.1
            );
        }
    }
    // A well-formed id that does not exist is a 404 naming the org.
    let got = raw(
        &server,
        None,
        Method::GET,
        "/provider/v1/orgs/999999",
        None,
        vec![],
    )
    .await;
    assert_eq!(got.0, StatusCode::NOT_FOUND);
    assert_eq!(got.1["code"], "NOT_FOUND");
    // An id that is not a positive integer is a 400 naming the parameter.
    let got = raw(
        &server,
        None,
        Method::GET,
        "/provider/v1/orgs/abc",
        None,
        vec![],
    )
    .await;
    assert_eq!(got.0, StatusCode::BAD_REQUEST);
    assert_eq!(got.1["field"], "id");
    let got = raw(
        &server,
        None,
        Method::DELETE,
        &format!("/provider/v1/orgs/{id}/admins/-5"),
        None,
        vec![],
    )
    .await;
    assert_eq!(got.0, StatusCode::BAD_REQUEST);
    assert_eq!(got.1["field"], "adminId");
    assert_eq!(snapshot(&server, id, &admin).await, before);
}

#[tokio::test]
async fn bad_paging_query_is_400() {
    let (server, id, admin) = setup().await;
    let paths = [
        (false, "/provider/v1/orgs".to_string()),
        (false, format!("/provider/v1/orgs/{id}/audit")),
        (true, "/admin/v1/audit".to_string()),
    ];
    for (is_admin, path) in &paths {
        for q in [
            "page=0",
            "page=-1",
            "page=abc",
            "page=1.5",
            "page=",
            "page=4294967296",
            "page=99999999999999999999",
            "pageSize=0",
            "pageSize=1001",
            "pageSize=-1",
            "pageSize=ten",
            "pageSize=%FF",
            "bogus=1",
            "page=1&page=2",
        ] {
            let url = format!("{path}?{q}");
            let got = if *is_admin {
                admin.get(&url).await
            } else {
                server.provider(Method::GET, &url, None).await
            };
            assert_eq!(got.0, StatusCode::BAD_REQUEST, "{url}: {}", got.1);
            assert_eq!(got.1["code"], "INVALID_INPUT_ARGUMENT", "{url}");
        }
        // The edges of the valid range are fine; a page past the end is empty.
        for q in ["page=1&pageSize=1", "pageSize=1000", "page=4294967295"] {
            let url = format!("{path}?{q}");
            let got = if *is_admin {
                admin.get(&url).await
            } else {
                server.provider(Method::GET, &url, None).await
            };
            assert_eq!(got.0, StatusCode::OK, "{url}: {}", got.1);
            assert!(got.1["items"].is_array(), "{url}");
        }
        let url = format!("{path}?page=4294967295");
        let got = if *is_admin {
            admin.get(&url).await
        } else {
            server.provider(Method::GET, &url, None).await
        };
        assert_eq!(got.1["items"], json!([]), "{url}");
    }
    // LIKE wildcards in a search are literal.
    for (q, n) in [
        ("search=%25", 0),
        ("search=_", 0),
        ("search=acme", 1),
        ("search=ACME", 1),
    ] {
        let (status, body) = server
            .provider(Method::GET, &format!("/provider/v1/orgs?{q}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
        assert_eq!(body["total"], n, "{q}: {body}");
    }
}

#[tokio::test]
async fn provider_api_needs_the_bearer_token() {
    // Every wrong token here must be answered 401: the throttle of wrong tokens per address
    // (tests/it/operators.rs) is out of the way.
    let server = TestServer::start_with(|c| c.bearer_max_failures = u32::MAX).await;
    let org = server.create_org("acme").await;
    let admin = server.login("full@acme").await;
    let id = org_id(&org);
    let before = snapshot(&server, id, &admin).await;
    let endpoints: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/provider/v1/orgs".into(), None),
        (
            Method::POST,
            "/provider/v1/orgs".into(),
            Some(valid_org_body()),
        ),
        (Method::GET, format!("/provider/v1/orgs/{id}"), None),
        (Method::GET, format!("/provider/v1/orgs/{id}/audit"), None),
        (
            Method::PUT,
            format!("/provider/v1/orgs/{id}/subscription"),
            Some(json!({"enabled": false, "expiresAt": null})),
        ),
        (
            Method::POST,
            format!("/provider/v1/orgs/{id}/apiKey/disable"),
            Some(json!({"reason": "TERMS_VIOLATION"})),
        ),
        (
            Method::POST,
            format!("/provider/v1/orgs/{id}/apiKey/enable"),
            None,
        ),
        (
            Method::PUT,
            format!("/provider/v1/orgs/{id}/limits"),
            Some(json!({"callThreshold": {"calls": 1, "periodSeconds": 1}})),
        ),
        (Method::GET, format!("/provider/v1/orgs/{id}/usage"), None),
        (
            Method::POST,
            format!("/provider/v1/orgs/{id}/admins"),
            Some(json!({"loginName": "new@acme", "password": PASSWORD, "role": "FULL"})),
        ),
        (
            Method::DELETE,
            format!("/provider/v1/orgs/{id}/admins/1"),
            None,
        ),
        // Authentication comes before any reading of the path or body.
        (Method::GET, "/provider/v1/orgs/abc".into(), None),
        (
            Method::POST,
            "/provider/v1/orgs".into(),
            Some(json!("garbage")),
        ),
    ];
    let wrong = format!("{PROVIDER_TOKEN}x");
    let short = &PROVIDER_TOKEN[..PROVIDER_TOKEN.len() - 1];
    let authorizations: Vec<Option<String>> = vec![
        None,
        Some(String::new()),
        Some("Bearer".into()),
        Some("Bearer ".into()),
        Some(format!("Bearer {wrong}")),
        Some(format!("Bearer {short}")),
        Some(format!("Basic {PROVIDER_TOKEN}")),
        Some(PROVIDER_TOKEN.to_string()),
        Some(format!("Bearer  {PROVIDER_TOKEN} x")),
        Some(format!("Token {PROVIDER_TOKEN}")),
    ];
    for (method, path, body) in &endpoints {
        for auth in &authorizations {
            let mut req = server.http.request(method.clone(), server.url(path));
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let got = into_json(req.send().await.unwrap()).await;
            let what = format!("{method} {path} with {auth:?}");
            assert_eq!(got.0, StatusCode::UNAUTHORIZED, "{what}: {}", got.1);
            assert_eq!(got.1["code"], "AUTHENTICATION_FAILED", "{what}");
            assert!(!got.1.to_string().contains(PROVIDER_TOKEN), "{what}");
        }
        // A console session is no provider credential.
        let mut req = admin
            .http
            .request(method.clone(), server.url(path))
            .header("X-CSRF-Token", &admin.csrf);
        if let Some(b) = body {
            req = req.json(b);
        }
        let got = into_json(req.send().await.unwrap()).await;
        assert_eq!(
            got.0,
            StatusCode::UNAUTHORIZED,
            "{method} {path} as admin: {}",
            got.1
        );
    }
    assert_eq!(snapshot(&server, id, &admin).await, before);

    // The scheme is case-insensitive; surrounding blanks around the token do not matter.
    for auth in [
        format!("bearer {PROVIDER_TOKEN}"),
        format!("BEARER {PROVIDER_TOKEN}"),
        format!("Bearer  {PROVIDER_TOKEN} "),
    ] {
        let resp = server
            .http
            .get(server.url("/provider/v1/orgs"))
            .header(AUTHORIZATION, &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{auth}");
    }
}

#[tokio::test]
async fn duplicate_login_name_is_409_and_creates_nothing() {
    let (server, id, admin) = setup().await;
    let before = snapshot(&server, id, &admin).await;
    for login in ["full@acme", "FULL@ACME", "View@Acme"] {
        let resp = server
            .provider(
                Method::POST,
                &format!("/provider/v1/orgs/{id}/admins"),
                Some(json!({"loginName": login, "password": PASSWORD, "role": "FULL"})),
            )
            .await;
        assert_error(&resp, StatusCode::CONFLICT, "LOGIN_NAME_TAKEN");
    }
    // A new org whose second admin's name is taken is not created at all.
    let resp = server
        .provider(
            Method::POST,
            "/provider/v1/orgs",
            Some(json!({
                "name": "Copycat",
                "admins": [
                    {"loginName": "fresh@copycat", "password": PASSWORD, "role": "FULL"},
                    {"loginName": "view@acme", "password": PASSWORD, "role": "VIEW_ONLY"},
                ],
                "subscription": {"enabled": true, "expiresAt": null},
            })),
        )
        .await;
    assert_error(&resp, StatusCode::CONFLICT, "LOGIN_NAME_TAKEN");
    assert!(server.login_with("fresh@copycat", PASSWORD).await.is_err());
    let (_, list) = server
        .provider(Method::GET, "/provider/v1/orgs?search=Copycat", None)
        .await;
    assert_eq!(list["total"], 0);
    assert_eq!(snapshot(&server, id, &admin).await, before);
    // The original admin still logs in with the original password.
    server.login("view@acme").await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_in_json() {
    let (server, id, admin) = setup().await;
    for path in [
        "/nope",
        "/admin/v1/nope",
        "/admin/v1/apiKey/nope",
        "/provider/v1/nope",
        &format!("/provider/v1/orgs/{id}/nope"),
        "/provider/v1/orgs/",
        "/admin/v1/apiKey/",
        "/%FF",
        "/provider/v1/orgs/1/admins",
    ] {
        let got = raw(&server, None, Method::GET, path, None, vec![]).await;
        assert_json_4xx(path, &got);
        assert!(
            got.0 == StatusCode::NOT_FOUND || got.0 == StatusCode::METHOD_NOT_ALLOWED,
            "{path}: {}",
            got.0
        );
    }
    let got = raw(&server, None, Method::GET, "/nope", None, vec![]).await;
    assert_eq!(got.0, StatusCode::NOT_FOUND);
    assert_eq!(got.1["code"], "NOT_FOUND");
    for (is_admin, method, path) in [
        (true, Method::PATCH, "/admin/v1/apiKey".to_string()),
        (true, Method::GET, "/admin/v1/login".to_string()),
        (true, Method::GET, "/admin/v1/apiKey/regenerate".to_string()),
        (true, Method::GET, "/admin/v1/apiKey/reveal".to_string()),
        (true, Method::DELETE, "/admin/v1/audit".to_string()),
        (false, Method::DELETE, "/provider/v1/orgs".to_string()),
        (false, Method::PUT, format!("/provider/v1/orgs/{id}")),
        (
            false,
            Method::GET,
            format!("/provider/v1/orgs/{id}/apiKey/disable"),
        ),
        (false, Method::POST, format!("/provider/v1/orgs/{id}/audit")),
        (
            false,
            Method::GET,
            format!("/provider/v1/orgs/{id}/subscription"),
        ),
    ] {
        let got = raw(
            &server,
            is_admin.then_some(&admin),
            method.clone(),
            &path,
            None,
            vec![],
        )
        .await;
        let what = format!("{method} {path}");
        assert_json_4xx(&what, &got);
        assert_eq!(got.0, StatusCode::METHOD_NOT_ALLOWED, "{what}: {}", got.1);
        assert_eq!(got.1["code"], "METHOD_NOT_ALLOWED", "{what}");
    }
}

// ---------------------------------------------------------------- hostile input

/// Odd bodies, none of them a valid request to any endpoint.
fn hostile_bodies() -> Vec<(String, Vec<u8>)> {
    let deep_arrays = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(8_000), "}".repeat(8_000));
    let mut bodies: Vec<(String, Vec<u8>)> = vec![
        ("deeply nested arrays".into(), deep_arrays.clone().into_bytes()),
        ("deeply nested objects".into(), deep_objects.clone().into_bytes()),
        (
            "deep array in keyValue".into(),
            format!(r#"{{"keyValue": {deep_arrays}}}"#).into_bytes(),
        ),
        (
            "deep array under an unknown field".into(),
            format!(r#"{{"zzz": {deep_arrays}}}"#).into_bytes(),
        ),
        (
            "deep object under an unknown field".into(),
            format!(r#"{{"zzz": {deep_objects}}}"#).into_bytes(),
        ),
        (
            "deep nesting in every field".into(),
            format!(
                r#"{{"name": {d}, "admins": {d}, "subscription": {d}, "enabled": {d}, "reason": {d}, "loginName": {d}}}"#,
                d = "[".repeat(2_000) + &"]".repeat(2_000)
            )
            .into_bytes(),
        ),
        (
            "huge string everywhere".into(),
            {
                let s = "x".repeat(9_000);
                json!({"keyValue": s, "name": s, "loginName": s, "password": s, "reason": s,
                       "note": s, "enabled": s})
                .to_string()
                .into_bytes()
            },
        ),
        ("huge number".into(), br#"{"keyValue": 1e999999, "enabled": 1e999999, "expiresAt": 1e999999}"#.to_vec()),
        ("huge integer".into(), format!(r#"{{"expiresAt": {}}}"#, "9".repeat(5000)).into_bytes()),
        ("null".into(), b"null".to_vec()),
        ("all nulls".into(), json!({"keyValue": null, "name": null, "admins": null,
            "subscription": null, "enabled": null, "expiresAt": null, "reason": null,
            "note": null, "loginName": null, "password": null, "role": null}).to_string().into_bytes()),
        ("empty object".into(), b"{}".to_vec()),
        ("empty array".into(), b"[]".to_vec()),
        ("array of a valid-looking object".into(), json!([{"keyValue": "abcdefghijkl", "reason": "TERMS_VIOLATION", "enabled": false, "expiresAt": null}]).to_string().into_bytes()),
        ("array of numbers".into(), b"[1, 2, 3]".to_vec()),
        ("bare string".into(), br#""abcdefghijkl""#.to_vec()),
        ("bare number".into(), b"12".to_vec()),
        ("bare true".into(), b"true".to_vec()),
        ("empty".into(), Vec::new()),
        ("whitespace".into(), b" \n\t\r ".to_vec()),
        ("BOM then object".into(), b"\xEF\xBB\xBF{\"keyValue\": \"abcdefghijkl\"}".to_vec()),
        ("invalid UTF-8".into(), b"{\"keyValue\": \"abc\xff\xfedefghij\", \"name\": \"\xc0\xaf\"}".to_vec()),
        ("lone surrogate".into(), br#"{"keyValue": "\ud800abcdefghijk", "name": "\udfff", "reason": "\ud800"}"#.to_vec()),
        ("raw control characters".into(), b"{\"keyValue\": \"abc\x01\x02defghij\"}".to_vec()),
        ("escaped control characters".into(), json!({"keyValue": "abc\u{0}\u{1}\u{1b}defghi", "loginName": "a\u{0}b@x", "name": "\u{0}", "reason": "OTHER", "note": "\u{7}\u{8}"}).to_string().into_bytes()),
        ("NUL bytes".into(), vec![0u8; 64]),
        ("unicode lookalikes".into(), json!({"keyValue": "ＡＢＣＤＥＦＧＨＩＪＫＬ", "loginName": "ｆｕｌｌ@acme", "reason": "ＯＴＨＥＲ", "role": "ＦＵＬＬ"}).to_string().into_bytes()),
        ("bidi and zero-width".into(), json!({"keyValue": "abc\u{202e}defghijk", "loginName": "full\u{200b}@acme", "name": "\u{202e}\u{200b}"}).to_string().into_bytes()),
        ("emoji".into(), json!({"keyValue": "😀😀😀😀😀😀", "reason": "😀"}).to_string().into_bytes()),
        ("duplicate keys".into(), br#"{"keyValue": "abcdefghijkl", "keyValue": "bbbbbbbbbbbb", "reason": "OTHER", "reason": "OTHER"}"#.to_vec()),
        ("trailing garbage".into(), br#"{"keyValue": "abcdefghijkl"} trailing"#.to_vec()),
        ("two documents".into(), br#"{"keyValue": "abcdefghijkl"}{"keyValue": "abcdefghijkl"}"#.to_vec()),
        ("single quotes".into(), b"{'keyValue': 'abcdefghijkl'}".to_vec()),
        ("comments".into(), b"{/* c */ \"keyValue\": \"abcdefghijkl\"}".to_vec()),
        ("NaN".into(), br#"{"keyValue": NaN, "expiresAt": NaN, "enabled": true}"#.to_vec()),
        ("prototype pollution".into(), br#"{"__proto__": {"admin": true}, "constructor": {"prototype": {}}}"#.to_vec()),
        ("long field name".into(), format!(r#"{{"{}": 1}}"#, "k".repeat(50_000)).into_bytes()),
        ("many fields".into(), {
            let fields: Vec<String> = (0..3000).map(|i| format!(r#""f{i}": {i}"#)).collect();
            format!("{{{}}}", fields.join(",")).into_bytes()
        }),
        ("SQL in strings".into(), json!({"keyValue": "'; DROP TABLE api_keys; --", "name": "x'); DELETE FROM orgs; --", "loginName": "' OR '1'='1", "reason": "OTHER' --"}).to_string().into_bytes()),
        ("wrong types everywhere".into(), json!({"keyValue": 1, "name": [], "admins": "x", "subscription": 1, "enabled": "true", "expiresAt": "1", "reason": 1, "note": {}, "loginName": false, "password": 1, "role": 1}).to_string().into_bytes()),
        ("negative zero and floats".into(), br#"{"enabled": true, "expiresAt": -0.0}"#.to_vec()),
        ("truncated".into(), br#"{"keyValue": "abcdef"#.to_vec()),
    ];
    // Nested JSON strings.
    bodies.push((
        "JSON in a string".into(),
        json!({"keyValue": json!({"keyValue": "abcdefghijkl"}).to_string()})
            .to_string()
            .into_bytes(),
    ));
    bodies
}

#[tokio::test]
async fn hostile_bodies_get_a_4xx_and_change_nothing() {
    let (server, id, admin) = setup().await;
    let before = snapshot(&server, id, &admin).await;
    let bodies = hostile_bodies();
    let mut endpoints = body_endpoints(id);
    endpoints.push((false, Method::POST, "/admin/v1/login".into()));
    for (name, bytes) in &bodies {
        for (is_admin, method, path) in &endpoints {
            // `{}` keeps the deployment defaults: a valid limits request.
            if path.ends_with("/limits") && name == "empty object" {
                continue;
            }
            let what = format!("{name} -> {method} {path}");
            let got = if path == "/admin/v1/login" {
                let resp = server
                    .http
                    .post(server.url(path))
                    .header(CONTENT_TYPE, "application/json")
                    .body(bytes.clone())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let ct = resp
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let (s, v) = into_json(resp).await;
                (s, v, ct)
            } else {
                raw(
                    &server,
                    is_admin.then_some(&admin),
                    method.clone(),
                    path,
                    Some("application/json"),
                    bytes.clone(),
                )
                .await
            };
            assert_json_4xx(&what, &got);
            assert!(
                got.1.to_string().len() < 2048,
                "{what}: the error echoes the input ({} bytes)",
                got.1.to_string().len()
            );
        }
    }
    assert_eq!(snapshot(&server, id, &admin).await, before);
    let (status, _) = into_json(
        server
            .http
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the server is still up");
}

/// Endpoints that take no body ignore one; with the request otherwise refused, a hostile
/// body still gets a 4xx and changes nothing.
#[tokio::test]
async fn hostile_bodies_on_bodiless_writes_change_nothing() {
    let (server, id, admin) = setup().await;
    let view = server.login("view@acme").await;
    let before = snapshot(&server, id, &admin).await;
    let writes = [
        (Method::POST, "/admin/v1/apiKey"),
        (Method::POST, "/admin/v1/apiKey/regenerate"),
        (Method::DELETE, "/admin/v1/apiKey"),
    ];
    for (name, bytes) in hostile_bodies() {
        for (method, path) in &writes {
            for ct in [Some("application/json"), Some("text/plain"), None] {
                let got = raw(
                    &server,
                    Some(&view),
                    method.clone(),
                    path,
                    ct,
                    bytes.clone(),
                )
                .await;
                let what = format!("{name} -> {method} {path} as {ct:?}");
                assert_json_4xx(&what, &got);
                assert_eq!(got.1["code"], "NOT_AUTHORIZED", "{what}: {}", got.1);
            }
        }
        // Add is refused while a key exists, whatever the body says.
        let got = raw(
            &server,
            Some(&admin),
            Method::POST,
            "/admin/v1/apiKey",
            Some("application/json"),
            bytes.clone(),
        )
        .await;
        assert_eq!(got.1["code"], "KEY_ALREADY_EXISTS", "{name}: {}", got.1);
    }
    assert_eq!(snapshot(&server, id, &admin).await, before);
}

/// A body is a JSON object: an array holding the fields in order is not one, even though
/// serde would read it as the struct.
#[tokio::test]
async fn arrays_are_not_objects() {
    let (server, id, admin) = setup().await;
    let before = snapshot(&server, id, &admin).await;
    let cases: Vec<(bool, Method, String, Value)> = vec![
        (
            true,
            Method::PUT,
            "/admin/v1/apiKey".into(),
            json!(["Fresh1Value2"]),
        ),
        (
            false,
            Method::PUT,
            format!("/provider/v1/orgs/{id}/subscription"),
            json!([false, null]),
        ),
        (
            false,
            Method::POST,
            format!("/provider/v1/orgs/{id}/apiKey/disable"),
            json!(["TERMS_VIOLATION", null]),
        ),
        (
            false,
            Method::POST,
            format!("/provider/v1/orgs/{id}/admins"),
            json!(["arr@acme", PASSWORD, "FULL"]),
        ),
        (
            false,
            Method::POST,
            "/provider/v1/orgs".into(),
            json!(["Array Org", [], [true, null], null]),
        ),
    ];
    for (is_admin, method, path, body) in cases {
        let got = raw(
            &server,
            is_admin.then_some(&admin),
            method.clone(),
            &path,
            Some("application/json"),
            body.to_string().into_bytes(),
        )
        .await;
        let what = format!("{method} {path} {body}");
        assert_json_4xx(&what, &got);
        assert_eq!(got.0, StatusCode::BAD_REQUEST, "{what}: {}", got.1);
        assert_eq!(got.1["field"], "body", "{what}: {}", got.1);
    }
    let resp = server
        .http
        .post(server.url("/admin/v1/login"))
        .json(&json!(["full@acme", PASSWORD]))
        .send()
        .await
        .unwrap();
    assert_error(
        &into_json(resp).await,
        StatusCode::BAD_REQUEST,
        "INVALID_INPUT_ARGUMENT",
    );
    assert_eq!(snapshot(&server, id, &admin).await, before);
}
