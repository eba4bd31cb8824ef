//! `/openapi.json` is true (issue 13, point 6): unique operationIds, security schemes applied
//! to every operation by the API it belongs to, error answers documented with the error
//! schema, and the documented cloud API login body logs in. (Conformance of every answer to
//! the document is checked by schemathesis: `tests/schema/run.sh`.)

use std::collections::{BTreeMap, BTreeSet};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cloud_api::{now_ms, obfuscate};
use crate::harness::*;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

async fn document(server: &TestServer) -> Value {
    let resp = server
        .http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// (method, path, operation) for every operation.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                ops.push((m.to_owned(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

fn schemes_of(op: &Value) -> Vec<BTreeSet<String>> {
    op["security"]
        .as_array()
        .unwrap_or_else(|| panic!("no security on {op}"))
        .iter()
        .map(|r| r.as_object().unwrap().keys().cloned().collect())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn operation_ids_are_unique_and_every_operation_says_its_security_and_errors() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let ops = operations(&doc);
    assert!(ops.len() > 30, "{} operations", ops.len());

    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (m, path, op) in &ops {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{m} {path}: no operationId"));
        ids.entry(id.to_owned())
            .or_default()
            .push(format!("{m} {path}"));
    }
    let dupes: Vec<_> = ids.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(dupes.is_empty(), "operationIds used twice: {dupes:?}");

    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["provider_token"]["scheme"], "bearer");
    assert_eq!(schemes["console_session"]["in"], "cookie");
    assert_eq!(schemes["console_session"]["name"], "keygate_console");
    assert_eq!(schemes["csrf_token"]["in"], "header");
    assert_eq!(schemes["csrf_token"]["name"], "X-CSRF-Token");
    assert_eq!(schemes["api_session"]["in"], "cookie");
    assert_eq!(schemes["api_session"]["name"], "JSESSIONID");

    let logins = [
        ("post", "/admin/v1/login"),
        ("post", "/api/v1/authenticatedSession"),
        ("post", "/api/v1/auth"),
    ];
    for (m, path, op) in &ops {
        let what = format!("{m} {path}");
        let required = schemes_of(op);
        for r in &required {
            for name in r {
                assert!(schemes.contains_key(name), "{what}: unknown scheme {name}");
            }
        }
        let expected: Vec<BTreeSet<String>> = if logins.contains(&(m.as_str(), path.as_str()))
            || ["/healthz", "/readyz"].contains(&path.as_str())
        {
            vec![]
        } else if path.starts_with("/provider/") {
            vec![set(&["provider_token"])]
        } else if path.starts_with("/admin/") && m == "get" {
            vec![set(&["console_session"])]
        } else if path.starts_with("/admin/") {
            vec![set(&["console_session", "csrf_token"])]
        } else if m == "delete"
            && (path.ends_with("/authenticatedSession") || path.ends_with("/auth"))
        {
            // Logout: with a session, or without (still 204).
            vec![set(&["api_session"]), set(&[])]
        } else {
            vec![set(&["api_session"])]
        };
        assert_eq!(required, expected, "{what}");

        let responses = op["responses"].as_object().unwrap();
        let error_ref = |status: &str| {
            responses.get(status).map(|r| {
                r["content"]["application/json"]["schema"]["$ref"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
        };
        if !expected.is_empty() && !expected.contains(&set(&[])) {
            assert_eq!(
                error_ref("401").as_deref(),
                Some("#/components/schemas/ErrorBody"),
                "{what}: 401"
            );
        }
        if op.get("requestBody").is_some() {
            for status in ["400", "413", "415"] {
                assert_eq!(
                    error_ref(status).as_deref(),
                    Some("#/components/schemas/ErrorBody"),
                    "{what}: {status}"
                );
            }
        }
        if path.contains('{') {
            assert!(responses.contains_key("404"), "{what}: 404");
            assert!(responses.contains_key("400"), "{what}: 400");
        }
        if path.starts_with("/api/v1/") && !expected.is_empty() && !expected.contains(&set(&[])) {
            assert!(responses.contains_key("429"), "{what}: 429");
        }
    }
}

#[tokio::test]
async fn the_documented_cloud_login_body_logs_in_on_both_paths() {
    let server = TestServer::start().await;
    server.create_org("oa").await;
    let key = server.login("full@oa").await.reveal().await;
    let doc = document(&server).await;
    for path in ["/api/v1/authenticatedSession", "/api/v1/auth"] {
        let body_ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no request body schema"));
        let name = body_ref.rsplit('/').next().unwrap();
        let schema = &doc["components"]["schemas"][name];
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            required,
            BTreeSet::from(["apiKey", "username", "password", "timestamp"]),
            "{path}: {schema}"
        );
        // The documented example, with this org's credentials in its fields.
        let mut body = schema["example"].clone();
        assert!(body.is_object(), "{path}: no example in {schema}");
        let ts = now_ms(&server);
        body["apiKey"] = json!(obfuscate(&key, ts));
        body["username"] = json!("full@oa");
        body["password"] = json!(PASSWORD);
        body["timestamp"] = json!(ts);
        let resp = server
            .http
            .post(server.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let cookies: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            status,
            StatusCode::OK,
            "{path}: {}",
            resp.text().await.unwrap()
        );
        assert!(
            cookies.iter().any(|c| c.starts_with("JSESSIONID=")),
            "{path}: {cookies:?}"
        );
    }
}
