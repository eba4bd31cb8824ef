//! `GET /api/v1/status` and `POST /api/v1/status/activate` as ZIA answers them (issue 13,
//! point 4): `{"status":"ACTIVE"}` to a live session, metered and rate-limited like every API
//! call; activate is a write (refused to a view-only admin and under an expired subscription).

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::cloud_api::{ApiClient, api_login, assert_api_error, create_org, org_id};
use crate::harness::*;

const STATUS: &str = "/api/v1/status";
const ACTIVATE: &str = "/api/v1/status/activate";

async fn usage_calls(server: &TestServer, org: i64) -> i64 {
    let (status, body) = server
        .provider(Method::GET, &format!("/provider/v1/orgs/{org}/usage"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["current"]["calls"]
        .as_i64()
        .unwrap_or_else(|| panic!("no current calls in {body}"))
}

#[tokio::test]
async fn status_and_activate_answer_active_to_a_session_and_count_as_calls() {
    let server = TestServer::start().await;
    let org = create_org(&server, "st").await;
    let id = org_id(&org);
    let key = server.login("full@st").await.reveal().await;

    // Without a session, or with one that does not exist: 401 as every API call.
    let nobody = ApiClient {
        http: server.http.clone(),
        base: server.base.clone(),
        token: "no-such-session".into(),
    };
    for (method, path) in [(Method::GET, STATUS), (Method::POST, ACTIVATE)] {
        let raw = nobody.raw(method.clone(), path, None).await;
        assert_api_error(&raw, StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID");
        let resp = server
            .http
            .request(method.clone(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }

    // One POST an hour.
    let (status, body) = server
        .provider(
            Method::PUT,
            &format!("/provider/v1/orgs/{id}/limits"),
            Some(json!({"rateLimits": [
                {"methods": ["GET"], "limit": 100, "periodSeconds": 1},
                {"methods": ["POST"], "limit": 1, "periodSeconds": 3600},
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let s = api_login(&server, "full@st", &key).await;
    let before = usage_calls(&server, id).await;
    let raw = s.raw(Method::GET, STATUS, None).await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text);
    assert_eq!(raw.json(), json!({"status": "ACTIVE"}));
    assert!(
        raw.header("x-ratelimit-limit").is_some(),
        "GET status is rate-limited"
    );
    // ZIA clients post `{}`; no body at all is accepted too.
    let raw = s.raw(Method::POST, ACTIVATE, Some(json!({}))).await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text);
    assert_eq!(raw.json(), json!({"status": "ACTIVE"}));
    assert!(
        raw.header("x-ratelimit-limit").is_some(),
        "activate is rate-limited"
    );
    let raw = s.raw(Method::POST, ACTIVATE, None).await;
    assert_api_error(&raw, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED");

    // Metered: two admitted calls (the refused one is not counted).
    let after = usage_calls(&server, id).await;
    assert_eq!(after - before, 2, "status and activate are metered calls");
}

#[tokio::test]
async fn activate_is_a_write_status_is_a_read() {
    let server = TestServer::start().await;
    let org = create_org(&server, "sw").await;
    let id = org_id(&org);
    let key = server.login("full@sw").await.reveal().await;

    let viewer = api_login(&server, "view@sw", &key).await;
    let raw = viewer.raw(Method::GET, STATUS, None).await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text);
    let raw = viewer.raw(Method::POST, ACTIVATE, None).await;
    assert_api_error(&raw, StatusCode::FORBIDDEN, "NOT_AUTHORIZED");

    let s = api_login(&server, "full@sw", &key).await;
    let (status, body) = server
        .provider(
            Method::PUT,
            &format!("/provider/v1/orgs/{id}/subscription"),
            Some(json!({"enabled": true, "expiresAt": T0_SECS - 1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let raw = s.raw(Method::GET, STATUS, None).await;
    assert_eq!(
        raw.status,
        StatusCode::OK,
        "expired: reads work: {}",
        raw.text
    );
    let raw = s.raw(Method::POST, ACTIVATE, None).await;
    assert_api_error(&raw, StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
}
