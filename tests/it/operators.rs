//! Operators and their tokens (issue 15): roles and scope on `/provider/v1/operators` and
//! `/provider/v1/tokens`, the bootstrap token's retirement (also across a restart), the
//! start-up refusal of a short bootstrap token, the throttling of wrong bearer tokens, the
//! audit naming the operator, no token value at rest, an upgrade from a 0007 database, and a
//! revocation on one PostgreSQL node refused on another at once.

use keygate::clock::ManualClock;
use keygate::config::Config;
use keygate::server::App;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::harness::*;

async fn call(
    s: &TestServer,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    call_at(&s.http, &s.base, token, method, path, body).await
}

async fn call_at(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    into_json(req.send().await.expect("request")).await
}

/// Creates an operator with `token` (a platform owner's, or the bootstrap token); returns its id.
async fn operator(
    s: &TestServer,
    token: &str,
    login: &str,
    role: &str,
    partner: Option<i64>,
) -> i64 {
    let got = call(
        s,
        token,
        Method::POST,
        "/provider/v1/operators",
        Some(json!({
            "loginName": login, "displayName": format!("{login} display"), "password": PASSWORD,
            "role": role, "partnerId": partner,
        })),
    )
    .await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
    assert!(got.1.get("passwordHash").is_none());
    got.1["id"].as_i64().unwrap()
}

/// A token for operator `id`, made with `token`; returns (token id, value).
async fn token_for(s: &TestServer, token: &str, id: i64) -> (i64, String) {
    token_labelled(s, token, id, "test").await
}

/// [`token_for`] with a label of the caller's.
async fn token_labelled(s: &TestServer, token: &str, id: i64, label: &str) -> (i64, String) {
    let got = call(
        s,
        token,
        Method::POST,
        "/provider/v1/tokens",
        Some(json!({"label": label, "operatorId": id})),
    )
    .await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
    let value = got.1["value"].as_str().unwrap().to_owned();
    // 256 bits, URL-safe base64 or longer.
    assert!(value.len() >= 43, "{value}");
    (got.1["id"].as_i64().unwrap(), value)
}

const ROLE: &str = "OPERATOR_ROLE_NOT_ALLOWED";

#[tokio::test]
async fn roles_decide_who_manages_operators_and_tokens() {
    let s = TestServer::start().await;
    let owner = operator(&s, PROVIDER_TOKEN, "owner.one", "OWNER", None).await;
    let op = operator(&s, PROVIDER_TOKEN, "operator.one", "OPERATOR", None).await;
    let aud = operator(&s, PROVIDER_TOKEN, "auditor.one", "AUDITOR", None).await;
    let (_, owner_t) = token_for(&s, PROVIDER_TOKEN, owner).await;
    let (op_tid, op_t) = token_for(&s, PROVIDER_TOKEN, op).await;
    let (_, aud_t) = token_for(&s, PROVIDER_TOKEN, aud).await;
    let (owner_tid, _) = token_for(&s, &owner_t, owner).await;

    // AUDITOR and OPERATOR read operators; neither changes them.
    for t in [&aud_t, &op_t] {
        let (status, list) = call(&s, t, Method::GET, "/provider/v1/operators", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["items"].as_array().unwrap().len(), 3);
        let got = call(
            &s,
            t,
            Method::GET,
            &format!("/provider/v1/operators/{owner}"),
            None,
        )
        .await;
        assert_eq!(got.0, StatusCode::OK);
        assert_eq!(got.1["role"], "OWNER");
        let create = json!({"loginName": "x.y.z", "displayName": "X", "password": PASSWORD, "role": "OWNER"});
        assert_error(
            &call(&s, t, Method::POST, "/provider/v1/operators", Some(create)).await,
            StatusCode::FORBIDDEN,
            ROLE,
        );
        assert_error(
            &call(
                &s,
                t,
                Method::PATCH,
                &format!("/provider/v1/operators/{owner}"),
                Some(json!({"displayName": "Mallory"})),
            )
            .await,
            StatusCode::FORBIDDEN,
            ROLE,
        );
        assert_error(
            &call(
                &s,
                t,
                Method::DELETE,
                &format!("/provider/v1/operators/{owner}"),
                None,
            )
            .await,
            StatusCode::FORBIDDEN,
            ROLE,
        );
        // Nor another operator's tokens.
        assert_error(
            &call(
                &s,
                t,
                Method::POST,
                "/provider/v1/tokens",
                Some(json!({"label": "x", "operatorId": owner})),
            )
            .await,
            StatusCode::FORBIDDEN,
            ROLE,
        );
        assert_error(
            &call(
                &s,
                t,
                Method::DELETE,
                &format!("/provider/v1/tokens/{owner_tid}"),
                None,
            )
            .await,
            StatusCode::FORBIDDEN,
            ROLE,
        );
        assert_error(
            &call(
                &s,
                t,
                Method::POST,
                &format!("/provider/v1/tokens/{owner_tid}/rotate"),
                None,
            )
            .await,
            StatusCode::FORBIDDEN,
            ROLE,
        );
        // Nor retire the bootstrap token.
        assert_error(
            &call(&s, t, Method::POST, "/provider/v1/bootstrap/retire", None).await,
            StatusCode::FORBIDDEN,
            ROLE,
        );
    }
    // Nothing changed.
    let (_, list) = call(&s, &owner_t, Method::GET, "/provider/v1/operators", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    assert_eq!(list["items"][0]["displayName"], "owner.one display");
    let (_, tokens) = call(&s, &owner_t, Method::GET, "/provider/v1/tokens", None).await;
    assert!(
        tokens["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["revokedAt"].is_null())
    );
    assert!(!tokens.to_string().contains(&owner_t) && !tokens.to_string().contains(&op_t));
    // An AUDITOR reads everything in scope: the same token list as the owner's, no values.
    let (_, seen) = call(&s, &aud_t, Method::GET, "/provider/v1/tokens", None).await;
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&seen), ids(&tokens));
    assert!(ids(&seen).contains(&op_tid) && ids(&seen).contains(&owner_tid));
    assert!(
        seen["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("value").is_none())
    );

    // An operator lists only its own tokens, makes and rotates its own.
    let (_, mine) = call(&s, &op_t, Method::GET, "/provider/v1/tokens", None).await;
    let mine = mine["items"].as_array().unwrap().clone();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["id"], op_tid);
    assert!(mine[0].get("value").is_none());
    let rotated = call(
        &s,
        &op_t,
        Method::POST,
        &format!("/provider/v1/tokens/{op_tid}/rotate"),
        None,
    )
    .await;
    assert_eq!(rotated.0, StatusCode::CREATED, "{}", rotated.1);
    let new_t = rotated.1["value"].as_str().unwrap().to_owned();
    assert_error(
        &call(&s, &op_t, Method::GET, "/provider/v1/tokens", None).await,
        StatusCode::UNAUTHORIZED,
        "AUTHENTICATION_FAILED",
    );
    assert_eq!(
        call(&s, &new_t, Method::GET, "/provider/v1/tokens", None)
            .await
            .0,
        StatusCode::OK
    );
    // … and may change its own display name and password, not its role.
    let me = format!("/provider/v1/operators/{op}");
    assert_eq!(
        call(
            &s,
            &new_t,
            Method::PATCH,
            &me,
            Some(json!({"displayName": "Olive"}))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_error(
        &call(
            &s,
            &new_t,
            Method::PATCH,
            &me,
            Some(json!({"role": "OWNER"})),
        )
        .await,
        StatusCode::FORBIDDEN,
        ROLE,
    );

    // The owner revokes the operator's token: refused at once.
    assert_eq!(
        call(
            &s,
            &owner_t,
            Method::DELETE,
            &format!("/provider/v1/tokens/{}", rotated.1["id"]),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&s, &new_t, Method::GET, "/provider/v1/tokens", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // Bad input: named, nothing changed.
    for (body, field) in [
        (
            json!({"loginName": "ab", "displayName": "A", "password": PASSWORD, "role": "OWNER"}),
            "loginName",
        ),
        (
            json!({"loginName": "abc.d", "displayName": " ", "password": PASSWORD, "role": "OWNER"}),
            "displayName",
        ),
        (
            json!({"loginName": "abc.d", "displayName": "A", "password": "short", "role": "OWNER"}),
            "password",
        ),
    ] {
        let got = call(
            &s,
            &owner_t,
            Method::POST,
            "/provider/v1/operators",
            Some(body),
        )
        .await;
        assert_error(&got, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
        assert_eq!(got.1["field"], field);
    }
    let got = call(
        &s,
        &owner_t,
        Method::POST,
        "/provider/v1/operators",
        Some(
            json!({"loginName": "abc.d", "displayName": "A", "password": PASSWORD, "role": "KING"}),
        ),
    )
    .await;
    assert_eq!(got.0, StatusCode::BAD_REQUEST, "{}", got.1);
    let got = call(
        &s,
        &owner_t,
        Method::POST,
        "/provider/v1/tokens",
        Some(json!({"label": "old", "expiresAt": T0_SECS - 1})),
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
    assert_eq!(got.1["field"], "expiresAt");
    assert_error(
        &call(&s, &owner_t, Method::POST, "/provider/v1/operators",
            Some(json!({"loginName": "owner.one", "displayName": "A", "password": PASSWORD, "role": "OWNER"}))).await,
        StatusCode::CONFLICT,
        "LOGIN_NAME_TAKEN",
    );
    assert_error(
        &call(
            &s,
            &owner_t,
            Method::GET,
            "/provider/v1/operators/999999",
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    assert_error(
        &call(
            &s,
            &owner_t,
            Method::GET,
            "/provider/v1/operators/abc",
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "INVALID_INPUT_ARGUMENT",
    );

    // The platform's last owner is neither demoted nor removed.
    let own = format!("/provider/v1/operators/{owner}");
    assert_error(
        &call(
            &s,
            &owner_t,
            Method::PATCH,
            &own,
            Some(json!({"role": "AUDITOR"})),
        )
        .await,
        StatusCode::CONFLICT,
        "LAST_OWNER",
    );
    assert_error(
        &call(&s, &owner_t, Method::DELETE, &own, None).await,
        StatusCode::CONFLICT,
        "LAST_OWNER",
    );
    // With a second owner it is.
    let owner2 = operator(&s, &owner_t, "owner.two", "OWNER", None).await;
    let (_, owner2_t) = token_for(&s, &owner_t, owner2).await;
    assert_eq!(
        call(&s, &owner2_t, Method::DELETE, &own, None).await.0,
        StatusCode::NO_CONTENT
    );
    // A removed operator's tokens hold nothing.
    assert_eq!(
        call(&s, &owner_t, Method::GET, "/provider/v1/tokens", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // An expiring token stops at its time.
    let got = call(
        &s,
        &owner2_t,
        Method::POST,
        "/provider/v1/tokens",
        Some(json!({"label": "an hour", "expiresAt": T0_SECS + 3600})),
    )
    .await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
    let hour = got.1["value"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&s, &hour, Method::GET, "/provider/v1/operators", None)
            .await
            .0,
        StatusCode::OK
    );
    s.clock.advance_secs(3600);
    assert_eq!(
        call(&s, &hour, Method::GET, "/provider/v1/operators", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    s.stop().await;
}

#[tokio::test]
async fn a_partner_owner_manages_only_its_own_partners_operators() {
    let s = TestServer::start().await;
    let mut partner = Vec::new();
    for name in ["P", "Q"] {
        let (st, b) = call(
            &s,
            PROVIDER_TOKEN,
            Method::POST,
            "/provider/v1/partners",
            Some(json!({"name": name})),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
        partner.push(b["id"].as_i64().unwrap());
    }
    let (p, q) = (partner[0], partner[1]);
    let p_owner = operator(&s, PROVIDER_TOKEN, "p.owner", "OWNER", Some(p)).await;
    let q_owner = operator(&s, PROVIDER_TOKEN, "q.owner", "OWNER", Some(q)).await;
    let platform_op = operator(&s, PROVIDER_TOKEN, "plat.op", "OPERATOR", None).await;
    let (_, pt) = token_for(&s, PROVIDER_TOKEN, p_owner).await;
    let (q_tid, _) = token_for(&s, PROVIDER_TOKEN, q_owner).await;
    // The partner is implied.
    let p_op = operator(&s, &pt, "p.op", "OPERATOR", None).await;
    let (_, got) = call(
        &s,
        &pt,
        Method::GET,
        &format!("/provider/v1/operators/{p_op}"),
        None,
    )
    .await;
    assert_eq!(got["partnerId"], p);
    // Its list holds its own partner's operators only.
    let (_, list) = call(&s, &pt, Method::GET, "/provider/v1/operators", None).await;
    let ids: Vec<i64> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![p_owner, p_op]);
    // Another partner's (or the platform's) operators and tokens do not exist for it.
    for id in [q_owner, platform_op] {
        for (m, path, body) in [
            (Method::GET, format!("/provider/v1/operators/{id}"), None),
            (
                Method::PATCH,
                format!("/provider/v1/operators/{id}"),
                Some(json!({"displayName": "x"})),
            ),
            (Method::DELETE, format!("/provider/v1/operators/{id}"), None),
            (
                Method::POST,
                "/provider/v1/tokens".into(),
                Some(json!({"label": "x", "operatorId": id})),
            ),
        ] {
            assert_error(
                &call(&s, &pt, m, &path, body).await,
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
            );
        }
    }
    for (m, path) in [
        (Method::GET, format!("/provider/v1/tokens/{q_tid}")),
        (Method::DELETE, format!("/provider/v1/tokens/{q_tid}")),
        (Method::POST, format!("/provider/v1/tokens/{q_tid}/rotate")),
    ] {
        assert_error(
            &call(&s, &pt, m, &path, None).await,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        );
    }
    let (_, tokens) = call(&s, &pt, Method::GET, "/provider/v1/tokens", None).await;
    assert!(
        tokens["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["id"] != q_tid)
    );
    // Nor may it make an operator for another partner, or for one that does not exist.
    for partner in [q, 999_999] {
        assert_error(
            &call(
                &s,
                &pt,
                Method::POST,
                "/provider/v1/operators",
                Some(
                    json!({"loginName": "sneaky", "displayName": "S", "password": PASSWORD,
                    "role": "OWNER", "partnerId": partner}),
                ),
            )
            .await,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        );
    }
    // Nor retire the platform's bootstrap token.
    assert_error(
        &call(&s, &pt, Method::POST, "/provider/v1/bootstrap/retire", None).await,
        StatusCode::FORBIDDEN,
        ROLE,
    );
    s.stop().await;
}

/// The token values in the database, audit and logs: none (only SHA-256 hashes).
#[tokio::test]
async fn bootstrap_retires_for_good_and_the_audit_names_the_operator() {
    let s = TestServer::start().await;
    // Not before the platform has an owner.
    assert_error(
        &call(
            &s,
            PROVIDER_TOKEN,
            Method::POST,
            "/provider/v1/bootstrap/retire",
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "NO_PLATFORM_OWNER",
    );
    let owner = operator(&s, PROVIDER_TOKEN, "first.owner", "OWNER", None).await;
    let (_, owner_t) = token_for(&s, PROVIDER_TOKEN, owner).await;
    let org = call(
        &s,
        &owner_t,
        Method::POST,
        "/provider/v1/orgs",
        Some(json!({"name": "Acme", "subscription": {"enabled": true, "expiresAt": null}})),
    )
    .await;
    assert_eq!(org.0, StatusCode::CREATED, "{}", org.1);
    let org_id = org.1["id"].as_i64().unwrap();
    let (_, audit) = call(
        &s,
        &owner_t,
        Method::GET,
        &format!("/provider/v1/orgs/{org_id}/audit"),
        None,
    )
    .await;
    let create = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "ORG_CREATE")
        .expect("ORG_CREATE audited")
        .clone();
    assert_eq!(create["actorName"], "first.owner display");
    assert_eq!(create["actorTier"], "PLATFORM");
    assert_eq!(create["operatorId"], owner);
    assert!(create["partnerId"].is_null());

    // The owner retires the bootstrap token: refused at once, and after a restart with the
    // same KEYGATE_PROVIDER_TOKEN.
    assert_eq!(
        call(
            &s,
            &owner_t,
            Method::POST,
            "/provider/v1/bootstrap/retire",
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &call(&s, PROVIDER_TOKEN, Method::GET, "/provider/v1/orgs", None).await,
        StatusCode::UNAUTHORIZED,
        "AUTHENTICATION_FAILED",
    );
    let dir = s.stop().await;
    let fresh = "a-brand-new-configured-bootstrap-token-0001";
    let s = TestServer::start_in(dir, |c| {
        c.provider_token = Some(SecretString::from(fresh));
    })
    .await;
    for t in [PROVIDER_TOKEN, fresh] {
        assert_eq!(
            call(&s, t, Method::GET, "/provider/v1/orgs", None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        call(&s, &owner_t, Method::GET, "/provider/v1/orgs", None)
            .await
            .0,
        StatusCode::OK
    );
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |_| {}).await;
    assert_eq!(
        call(&s, PROVIDER_TOKEN, Method::GET, "/provider/v1/orgs", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // Operator and token changes are audited with no org, naming who did them.
    let mut db = Db::open(s.dir.path()).await;
    let rows = db
        .strings(
            "SELECT action || '|' || actor_name || '|' || COALESCE(actor_tier, '-') || '|' || \
             COALESCE(CAST(operator_id AS TEXT), '-') FROM audit_log WHERE org_id IS NULL ORDER BY id",
            &[],
        )
        .await;
    assert!(
        rows.contains(&"OPERATOR_CREATE|bootstrap token|PLATFORM|-".to_owned()),
        "{rows:?}"
    );
    assert!(
        rows.contains(&"TOKEN_CREATE|bootstrap token|PLATFORM|-".to_owned()),
        "{rows:?}"
    );
    assert!(
        rows.contains(&format!(
            "BOOTSTRAP_RETIRE|first.owner display|PLATFORM|{owner}"
        )),
        "{rows:?}"
    );
    // No token value anywhere in the database: every text column of every row.
    let everything = db
        .strings(
            "SELECT COALESCE(token_hash, '') || label FROM provider_tokens \
             UNION ALL SELECT actor_name || details || action FROM audit_log",
            &[],
        )
        .await
        .join("\n");
    for secret in [PROVIDER_TOKEN, fresh, owner_t.as_str()] {
        assert!(!everything.contains(secret));
    }
    drop(db);
    let dir = s.stop().await;
    // Nor in the files of the data directory (database, WAL).
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            for secret in [PROVIDER_TOKEN, fresh, owner_t.as_str()] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds a token",
                    path.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn a_short_bootstrap_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    config.provider_token = Some(SecretString::from("abc"));
    let err = App::build(&config, ManualClock::new(t0()))
        .await
        .err()
        .expect("a 3-character token is refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("KEYGATE_PROVIDER_TOKEN") && msg.contains("32"),
        "{msg}"
    );
    assert!(!msg.contains("abc\""), "{msg}");
}

#[tokio::test]
async fn wrong_bearer_tokens_are_throttled_per_address() {
    let s = TestServer::start().await;
    let (mut unauthorized, mut throttled) = (0, 0);
    for i in 0..300 {
        let resp = s
            .http
            .get(s.url("/provider/v1/orgs"))
            .bearer_auth(format!("wrong-token-{i}"))
            .send()
            .await
            .unwrap();
        match resp.status() {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                throttled += 1;
                let secs: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&secs), "{secs}");
                let (_, body) = into_json(resp).await;
                assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!((unauthorized, throttled), (20, 280));
    // The address is throttled whatever it presents, until the window ends.
    assert_eq!(
        call(&s, PROVIDER_TOKEN, Method::GET, "/provider/v1/orgs", None)
            .await
            .0,
        StatusCode::TOO_MANY_REQUESTS
    );
    s.clock.advance_secs(60);
    assert_eq!(
        call(&s, PROVIDER_TOKEN, Method::GET, "/provider/v1/orgs", None)
            .await
            .0,
        StatusCode::OK
    );
    s.stop().await;
}

const OLD_KEY: &str = "OldKey12345x";

/// A database migrated to 0007 (before issue 15) with an org and a generated bootstrap token
/// is upgraded by starting today's keygate; the old token works until retired.
#[tokio::test]
async fn a_0007_database_upgrades_in_place_and_its_token_works_until_retired() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let old_token = keygate::crypto::token::random_token();
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("keygate.db"))
            .create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        let mut migrator = sqlx::migrate::Migrator::new(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/sqlite"
        )))
        .await
        .unwrap();
        migrator.migrations = migrator
            .migrations
            .iter()
            .filter(|m| m.version <= 7)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        migrator.run(&mut conn).await.unwrap();
        sqlx::query(
            "INSERT INTO provider_tokens (token_hash, label, created_at) VALUES ($1, 'generated at first start', 0)",
        )
        .bind(keygate::crypto::token::token_hash(&old_token).to_string())
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO orgs (name, subscription_enabled, subscription_expires_at, key_generation, created_at) \
             VALUES ('Old Org', 1, NULL, 0, 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        // Its key, sealed with the data directory's master key as keygate does.
        let master =
            keygate::crypto::MasterKey::load_or_create(&dir.path().join("master.key")).unwrap();
        let sealed = keygate::crypto::KeyCipher::new(&master).seal(
            keygate::domain::ids::OrgId(1),
            &keygate::domain::key::ApiKeyValue::parse("keyValue", OLD_KEY).unwrap(),
        );
        sqlx::query(
            "INSERT INTO api_keys (org_id, sealed, modified_at, modified_by_id, modified_by_name) \
             VALUES (1, $1, 0, 1, 'Service Provider')",
        )
        .bind(sealed)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let s = TestServer::start_in(dir, |c| {
        c.provider_token = None;
        c.database_url = None;
    })
    .await;
    let (status, orgs) = call(&s, &old_token, Method::GET, "/provider/v1/orgs", None).await;
    assert_eq!(status, StatusCode::OK, "{orgs}");
    assert_eq!(orgs["items"][0]["name"], "Old Org");
    assert_eq!(orgs["items"][0]["keyStatus"], "ENABLED", "{orgs}");
    assert!(
        orgs.to_string().contains(&OLD_KEY[OLD_KEY.len() - 3..]),
        "{orgs}"
    );
    let owner = operator(&s, &old_token, "new.owner", "OWNER", None).await;
    let (_, owner_t) = token_for(&s, &old_token, owner).await;
    assert_eq!(
        call(&s, &old_token, Method::GET, "/provider/v1/orgs", None)
            .await
            .0,
        StatusCode::OK
    );
    let (_, tokens) = call(&s, &owner_t, Method::GET, "/provider/v1/tokens", None).await;
    let bootstrap = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["operatorId"].is_null())
        .expect("the old token is listed")
        .clone();
    assert_eq!(
        call(
            &s,
            &owner_t,
            Method::DELETE,
            &format!("/provider/v1/tokens/{}", bootstrap["id"]),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&s, &old_token, Method::GET, "/provider/v1/orgs", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // A restart generates no new bootstrap token.
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |c| {
        c.provider_token = None;
        c.database_url = None;
    })
    .await;
    assert_eq!(
        call(&s, &owner_t, Method::GET, "/provider/v1/orgs", None)
            .await
            .0,
        StatusCode::OK
    );
    s.stop().await;
}

/// PostgreSQL, two nodes: a token revoked on one node is refused by the other at once.
#[tokio::test]
async fn a_token_revoked_on_one_node_is_refused_on_another_at_once() {
    use crate::multinode::{SharedDb, random_master_key};
    let Some(db) = SharedDb::create("operators_revocation").await else {
        return;
    };
    let master = random_master_key();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let (node, _) = TestServer::start_node(Flush::Periodic, |c| {
            crate::multinode::node_config(c, &db.url, &master);
        })
        .await;
        nodes.push(node);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let owner = operator(a, PROVIDER_TOKEN, "mn.owner", "OWNER", None).await;
    let (tid, t) = token_for(a, PROVIDER_TOKEN, owner).await;
    for _ in 0..20 {
        assert_eq!(
            call(b, &t, Method::GET, "/provider/v1/operators", None)
                .await
                .0,
            StatusCode::OK
        );
    }
    assert_eq!(
        call(
            a,
            PROVIDER_TOKEN,
            Method::DELETE,
            &format!("/provider/v1/tokens/{tid}"),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &call(b, &t, Method::GET, "/provider/v1/operators", None).await,
        StatusCode::UNAUTHORIZED,
        "AUTHENTICATION_FAILED",
    );
    for n in nodes {
        n.stop().await;
    }
    drop(db);
}

/// Runs `keygate provider --url … ARGS` with `token`.
async fn cli(s: &TestServer, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<String> = ["provider", "--url", &s.base]
        .iter()
        .map(|a| a.to_string())
        .collect();
    all.extend(args.iter().map(|a| a.to_string()));
    let token = token.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(&all)
            .env_remove("KEYGATE_URL")
            .env("KEYGATE_PROVIDER_TOKEN", token)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run keygate");
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_cli_manages_operators_and_tokens() {
    let s = TestServer::start().await;
    let (ok, out, err) = cli(
        &s,
        PROVIDER_TOKEN,
        &[
            "--output",
            "json",
            "operators",
            "create",
            "--login",
            "cli.owner",
            "--display-name",
            "Cli Owner",
            "--password",
            PASSWORD,
            "--role",
            "OWNER",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let op: Value = serde_json::from_str(&out).unwrap();
    let id = op["id"].as_i64().unwrap().to_string();
    let (ok, out, err) = cli(
        &s,
        PROVIDER_TOKEN,
        &[
            "--output",
            "json",
            "tokens",
            "create",
            "--label",
            "laptop",
            "--operator",
            &id,
        ],
    )
    .await;
    assert!(ok, "{err}");
    let issued: Value = serde_json::from_str(&out).unwrap();
    let t = issued["value"].as_str().unwrap().to_owned();
    let tid = issued["id"].as_i64().unwrap().to_string();
    let (ok, out, _) = cli(&s, &t, &["operators", "list"]).await;
    assert!(
        ok && out.contains("cli.owner") && out.contains("OWNER") && out.contains("platform"),
        "{out}"
    );
    let (ok, out, _) = cli(
        &s,
        &t,
        &["operators", "edit", &id, "--display-name", "Chief"],
    )
    .await;
    assert!(ok && out.contains("\"Chief\""), "{out}");
    let (ok, out, _) = cli(&s, &t, &["tokens", "list"]).await;
    assert!(
        ok && out.contains("\"laptop\"") && out.contains("live") && !out.contains(&t),
        "{out}"
    );
    let (ok, out, err) = cli(&s, &t, &["tokens", "rotate", &tid]).await;
    assert!(ok, "{err}");
    let new_t = out.lines().nth(1).unwrap().trim().to_owned();
    assert!(out.contains("shown once"), "{out}");
    let (ok, _, err) = cli(&s, &t, &["tokens", "list"]).await;
    assert!(!ok && err.contains("AUTHENTICATION_FAILED"), "{err}");
    let (ok, out, err) = cli(&s, &new_t, &["bootstrap", "retire"]).await;
    assert!(ok && out.contains("retired"), "{err}");
    let (ok, _, err) = cli(&s, PROVIDER_TOKEN, &["operators", "list"]).await;
    assert!(!ok && err.contains("AUTHENTICATION_FAILED"), "{err}");
    let (ok, _, err) = cli(&s, &new_t, &["operators", "remove", &id]).await;
    assert!(!ok && err.contains("LAST_OWNER"), "{err}");
    let new_tid = {
        let (_, out, _) = cli(&s, &new_t, &["--output", "json", "tokens", "list"]).await;
        let v: Value = serde_json::from_str(&out).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|t| t["revokedAt"].is_null())
            .unwrap()["id"]
            .to_string()
    };
    let (ok, out, _) = cli(&s, &new_t, &["tokens", "revoke", &new_tid]).await;
    assert!(ok && out.contains("revoked"), "{out}");
    s.stop().await;
}

/// The console: an operator signs in with login name and password (throttled and audited
/// like admin logins), sees the operator and token pages of its scope, makes a token (value
/// shown once) and revokes it; its session carries the operator into the audit.
#[tokio::test]
async fn an_operator_signs_in_to_the_console_and_manages_its_tokens() {
    use crate::console_sessions::{Browser, csrf_in};
    let s = TestServer::start().await;
    let owner = operator(&s, PROVIDER_TOKEN, "console.owner", "OWNER", None).await;
    let aud = operator(&s, PROVIDER_TOKEN, "console.auditor", "AUDITOR", None).await;
    let base = s.base.clone();

    // A wrong password: the login page again, 401, audited.
    let mut b = Browser::new();
    let (_, _, page) = b.get(&base, "/console/login").await;
    assert!(page.contains("id=\"operator-login-form\""));
    let csrf = csrf_in(&page);
    let (status, _, body) = b
        .post(
            &base,
            "/console/login",
            &[
                ("csrf", csrf.as_str()),
                ("loginName", "console.owner"),
                ("password", "wrong-password-123"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // The right one: a session as that operator.
    let (status, h, body) = b
        .post(
            &base,
            "/console/login",
            &[
                ("csrf", csrf.as_str()),
                ("loginName", "console.owner"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(h["location"], "/console/orgs");
    let (status, _, orgs) = b.get(&base, "/console/orgs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        orgs.contains("console.owner display (OWNER, platform)"),
        "{orgs}"
    );
    let (_, _, ops) = b.get(&base, "/console/operators").await;
    assert!(ops.contains("console.auditor") && ops.contains("id=\"create-operator-form\""));
    let csrf = csrf_in(&ops);
    // Create a token for the auditor: its value is on this answer only.
    let (status, _, page) = b
        .post(
            &base,
            "/console/tokens",
            &[
                ("csrf", csrf.as_str()),
                ("label", "for the auditor"),
                ("expires_at", ""),
                ("operator_id", &aud.to_string()),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{page}");
    let at =
        page.find("id=\"issued-token\">").expect("the value shown") + "id=\"issued-token\">".len();
    let value = page[at..at + page[at..].find('<').unwrap()].to_owned();
    assert_eq!(
        call(&s, &value, Method::GET, "/provider/v1/operators", None)
            .await
            .0,
        StatusCode::OK
    );
    let (_, _, tokens) = b.get(&base, "/console/tokens").await;
    assert!(!tokens.contains(&value), "the value is shown once only");
    assert!(tokens.contains("for the auditor"));
    // Revoke it from the page.
    let (_, list) = call(&s, PROVIDER_TOKEN, Method::GET, "/provider/v1/tokens", None).await;
    let tid = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "for the auditor")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (status, h, _) = b
        .post(
            &base,
            &format!("/console/tokens/{tid}/revoke"),
            &[("csrf", csrf.as_str())],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/console/tokens?done=revoked");
    assert_eq!(
        call(&s, &value, Method::GET, "/provider/v1/operators", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // A form without the CSRF token changes nothing.
    let (status, _, _) = b
        .post(
            &base,
            "/console/operators",
            &[
                ("login_name", "no.csrf"),
                ("display_name", "N"),
                ("password", PASSWORD),
                ("role", "OWNER"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The auditor's console: reads operators, no create form; a create post is refused.
    let mut a = Browser::new();
    let (_, _, page) = a.get(&base, "/console/login").await;
    let csrf = csrf_in(&page);
    let (status, _, _) = a
        .post(
            &base,
            "/console/login",
            &[
                ("csrf", csrf.as_str()),
                ("loginName", "console.auditor"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, ops) = a.get(&base, "/console/operators").await;
    assert!(ops.contains("console.owner") && !ops.contains("create-operator-form"));
    let csrf = csrf_in(&ops);
    let (status, _, body) = a
        .post(
            &base,
            "/console/operators",
            &[
                ("csrf", csrf.as_str()),
                ("login_name", "aud.made"),
                ("display_name", "A"),
                ("password", PASSWORD),
                ("role", "OWNER"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, list) = call(
        &s,
        PROVIDER_TOKEN,
        Method::GET,
        "/provider/v1/operators",
        None,
    )
    .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // The owner edits the auditor: display name and role; a blank form is refused.
    let (_, _, ops) = b.get(&base, "/console/operators").await;
    let csrf = csrf_in(&ops);
    let edit = format!("/console/operators/{aud}/edit");
    let (status, h, _) = b
        .post(
            &base,
            &edit,
            &[
                ("csrf", csrf.as_str()),
                ("display_name", "Audrey"),
                ("role", "OPERATOR"),
                ("password", ""),
            ],
        )
        .await;
    assert_eq!(
        (status, h["location"].to_str().unwrap()),
        (StatusCode::SEE_OTHER, "/console/operators?done=edited")
    );
    let (_, got) = call(
        &s,
        PROVIDER_TOKEN,
        Method::GET,
        &format!("/provider/v1/operators/{aud}"),
        None,
    )
    .await;
    assert_eq!(
        (got["displayName"].as_str(), got["role"].as_str()),
        (Some("Audrey"), Some("OPERATOR"))
    );
    let (status, _, body) = b
        .post(
            &base,
            &edit,
            &[
                ("csrf", csrf.as_str()),
                ("display_name", ""),
                ("role", ""),
                ("password", ""),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // The platform's last owner cannot demote itself from the page either.
    let (status, _, _) = b
        .post(
            &base,
            &format!("/console/operators/{owner}/edit"),
            &[("csrf", csrf.as_str()), ("role", "AUDITOR")],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Removing the owner… is refused (last owner); removing the auditor ends its session.
    let (status, _, _) = b
        .post(
            &base,
            &format!("/console/operators/{aud}/remove"),
            &[("csrf", csrf.as_str())],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, h, _) = a.get(&base, "/console/operators").await;
    assert_eq!(
        (status, h["location"].to_str().unwrap()),
        (StatusCode::SEE_OTHER, "/console/login")
    );
    let (status, _, body) = b
        .post(
            &base,
            &format!("/console/operators/{owner}/remove"),
            &[("csrf", csrf.as_str())],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // The audit names the operator for console sign-ins.
    let mut db = Db::open(s.dir.path()).await;
    let rows = db
        .strings(
            "SELECT action || '|' || actor_name || '|' || COALESCE(CAST(operator_id AS TEXT), '-') \
             FROM audit_log WHERE action LIKE 'LOGIN%' ORDER BY id",
            &[],
        )
        .await;
    assert!(
        rows.contains(&format!("LOGIN_SUCCESS|console.owner display|{owner}")),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|r| r.starts_with("LOGIN_FAILURE|con…|")),
        "{rows:?}"
    );
    drop(db);
    s.stop().await;
}

/// The token an operator's console sign-in makes for its session lives exactly as long as the
/// session: logout, idle expiry and the sweep of dead sessions revoke it. A token the operator
/// typed into the sign-in form is its own and outlives its sessions, even one labelled like a
/// sign-in's (the attack: a label alone deciding would let a logout revoke it).
#[tokio::test]
async fn a_console_sign_in_token_ends_with_its_session_and_no_other_token_does() {
    use crate::console_sessions::{Browser, csrf_in};
    const IDLE_SECS: i64 = 600;
    let s = TestServer::start_with(|c| c.console_idle_timeout_secs = IDLE_SECS).await;
    let op = operator(&s, PROVIDER_TOKEN, "signin.owner", "OWNER", None).await;
    let base = s.base.clone();
    // (token id, revoked) of the operator's tokens labelled "console sign-in", by id.
    let signin_tokens = || async {
        let (status, list) =
            call(&s, PROVIDER_TOKEN, Method::GET, "/provider/v1/tokens", None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["label"] == "console sign-in" && t["operatorId"] == op)
            .map(|t| (t["id"].as_i64().unwrap(), !t["revokedAt"].is_null()))
            .collect::<Vec<_>>()
    };
    let revoked =
        |tokens: &[(i64, bool)], id: i64| tokens.iter().find(|(t, _)| *t == id).expect("listed").1;
    let sign_in = |fields: Vec<(&'static str, String)>| {
        let base = base.clone();
        async move {
            let mut b = Browser::new();
            let (_, _, page) = b.get(&base, "/console/login").await;
            let mut form = vec![("csrf", csrf_in(&page))];
            form.extend(fields);
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, _, body) = b.post(&base, "/console/login", &form).await;
            assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
            b
        }
    };
    let with_password = || {
        vec![
            ("loginName", "signin.owner".to_owned()),
            ("password", PASSWORD.to_owned()),
        ]
    };
    let logout = |mut b: Browser| {
        let base = base.clone();
        async move {
            let (status, _, page) = b.get(&base, "/console/orgs").await;
            assert_eq!(status, StatusCode::OK);
            let csrf = csrf_in(&page);
            let (status, h, _) = b
                .post(&base, "/console/logout", &[("csrf", csrf.as_str())])
                .await;
            assert_eq!(status, StatusCode::SEE_OTHER);
            assert_eq!(h["location"], "/console/login?done=logged_out");
            b
        }
    };
    let signed_out = |got: (StatusCode, reqwest::header::HeaderMap, String)| {
        got.0 == StatusCode::SEE_OTHER && got.1["location"] == "/console/login"
    };

    // The operator's own token, labelled like a sign-in's, typed into the form.
    let (own_id, own) = token_labelled(&s, PROVIDER_TOKEN, op, "console sign-in").await;
    let own_works = || async {
        call(&s, &own, Method::GET, "/provider/v1/operators", None)
            .await
            .0
            == StatusCode::OK
    };

    // A password sign-in makes a live token for its session.
    let by_password = sign_in(with_password()).await;
    let mut by_token = sign_in(vec![("token", own.clone())]).await;
    let tokens = signin_tokens().await;
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    let made = tokens.iter().find(|(t, _)| *t != own_id).unwrap().0;
    assert!(!revoked(&tokens, made) && !revoked(&tokens, own_id));

    // Logout revokes it; the typed token and its session live on.
    let mut by_password = logout(by_password).await;
    let tokens = signin_tokens().await;
    assert!(revoked(&tokens, made), "logout revokes the sign-in's token");
    assert!(
        !revoked(&tokens, own_id),
        "a typed token is not the session's"
    );
    assert!(signed_out(by_password.get(&base, "/console/orgs").await));
    assert_eq!(by_token.get(&base, "/console/orgs").await.0, StatusCode::OK);
    assert!(own_works().await);
    // Logging out of the typed token's session ends the session only.
    let mut by_token = logout(by_token).await;
    assert!(signed_out(by_token.get(&base, "/console/orgs").await));
    assert!(!revoked(&signin_tokens().await, own_id));
    assert!(own_works().await);

    // Idle expiry, found by the next page load: revoked.
    let mut idle = sign_in(with_password()).await;
    let tokens = signin_tokens().await;
    let idle_token = tokens.iter().map(|(t, _)| *t).max().unwrap();
    assert!(!revoked(&tokens, idle_token));
    s.clock.advance_secs(IDLE_SECS);
    assert!(signed_out(idle.get(&base, "/console/orgs").await));
    assert!(
        revoked(&signin_tokens().await, idle_token),
        "expired by idleness"
    );

    // A dead session nobody loads again: the sweep (with the usage flush, at most once a
    // minute of the node's clock) deletes it and revokes its token; a live one keeps its own.
    let _dead = sign_in(with_password()).await;
    let dead_token = signin_tokens().await.iter().map(|(t, _)| *t).max().unwrap();
    s.clock.advance_secs(IDLE_SECS + 60);
    let mut live = sign_in(with_password()).await;
    let live_token = signin_tokens().await.iter().map(|(t, _)| *t).max().unwrap();
    assert!(live_token > dead_token);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !revoked(&signin_tokens().await, dead_token) {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep did not revoke the dead session's token"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!revoked(&signin_tokens().await, live_token));
    assert_eq!(live.get(&base, "/console/orgs").await.0, StatusCode::OK);
    assert!(own_works().await);
    s.stop().await;
}

/// `keygate serve` logging at `trace`: no token value (bootstrap, issued, rotated, wrong) and
/// no operator password in its log.
#[tokio::test]
async fn no_token_value_or_password_in_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("keygate.log");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let (data2, log2) = (data.clone(), log.clone());
    let mut p = tokio::task::spawn_blocking(move || Process::start(&data2, &log2))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let password = "operator-password-in-no-log-4471";
    let got = call_at(&http, &p.base, PROVIDER_TOKEN, Method::POST, "/provider/v1/operators",
        Some(json!({"loginName": "log.owner", "displayName": "Log Owner", "password": password, "role": "OWNER"}))).await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
    let id = got.1["id"].as_i64().unwrap();
    let got = call_at(
        &http,
        &p.base,
        PROVIDER_TOKEN,
        Method::POST,
        "/provider/v1/tokens",
        Some(json!({"label": "log", "operatorId": id})),
    )
    .await;
    let (tid, t) = (
        got.1["id"].as_i64().unwrap(),
        got.1["value"].as_str().unwrap().to_owned(),
    );
    let got = call_at(
        &http,
        &p.base,
        &t,
        Method::POST,
        &format!("/provider/v1/tokens/{tid}/rotate"),
        None,
    )
    .await;
    let t2 = got.1["value"].as_str().unwrap().to_owned();
    let wrong = "wrong-token-that-must-not-be-logged-9d2e";
    for token in [t.as_str(), t2.as_str(), wrong] {
        call_at(
            &http,
            &p.base,
            token,
            Method::GET,
            "/provider/v1/tokens",
            None,
        )
        .await;
    }
    assert_eq!(
        call_at(
            &http,
            &p.base,
            &t2,
            Method::POST,
            "/provider/v1/bootstrap/retire",
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    tokio::task::spawn_blocking(move || p.terminate())
        .await
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.len() > 1000, "the log has content");
    for secret in [PROVIDER_TOKEN, t.as_str(), t2.as_str(), wrong, password] {
        assert!(!text.contains(secret), "a secret in the log");
    }
}

/// Chromium: an operator signs in with login name and password, makes a token on the token
/// page (its value shown once), and revokes it through the confirm dialog.
#[tokio::test]
async fn browser_operator_console_login_and_token_page() {
    use crate::browser::with_browser;
    let server = TestServer::start().await;
    operator(&server, PROVIDER_TOKEN, "chrome.owner", "OWNER", None).await;
    let base = server.base.clone();
    with_browser(
        "browser_operator_console_login_and_token_page",
        move |ui| async move {
            let ui = ui.at(&base);
            ui.goto("/console/login").await;
            ui.fill("#operator-login", "chrome.owner").await;
            ui.fill("#operator-password", "not-the-password-1").await;
            ui.submit_with("#operator-sign-in").await;
            assert_eq!(ui.text("#error").await, "Authentication failed");
            ui.fill("#operator-login", "chrome.owner").await;
            ui.fill("#operator-password", PASSWORD).await;
            ui.submit_with("#operator-sign-in").await;
            assert_eq!(ui.path().await, "/console/orgs");
            assert_eq!(
                ui.text("#signed-in-as").await,
                "chrome.owner display (OWNER, platform)"
            );
            ui.navigating(ui.click("#nav-tokens")).await;
            assert_eq!(ui.path().await, "/console/tokens");
            ui.fill("#token-label", "from chromium").await;
            ui.submit_with("#create-token-submit").await;
            let value = ui.text("#issued-token").await;
            assert!(value.len() >= 43, "{value}");
            ui.shot("operators-01-token-issued").await;
            let (status, _) = call_at(
                &reqwest::Client::new(),
                &base,
                &value,
                Method::GET,
                "/provider/v1/tokens",
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            ui.goto("/console/tokens").await;
            assert!(!ui.has("#issued-token").await);
            let row =
                ui.c.find(fantoccini::Locator::XPath(
                    "//tr[td[text()='from chromium']]//button[contains(@class,'revoke-token')]",
                ))
                .await
                .expect("the token's revoke button");
            row.click().await.unwrap();
            ui.wait_dialog("confirm-dialog").await;
            ui.submit_with("#confirm-ok").await;
            ui.wait_text("#notice", "Token revoked.").await;
            let (status, _) = call_at(
                &reqwest::Client::new(),
                &base,
                &value,
                Method::GET,
                "/provider/v1/tokens",
                None,
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            ui.navigating(ui.click("#nav-operators")).await;
            assert!(ui.text("#operators-table").await.contains("chrome.owner"));
        },
    )
    .await;
}

/// The ZIA audit report CSV names the operator and tier of provider-side rows.
#[tokio::test]
async fn the_audit_report_csv_carries_operator_and_tier() {
    let s = TestServer::start().await;
    let owner = operator(&s, PROVIDER_TOKEN, "csv.owner", "OWNER", None).await;
    let (_, t) = token_for(&s, PROVIDER_TOKEN, owner).await;
    let got = call(
        &s,
        &t,
        Method::POST,
        "/provider/v1/orgs",
        Some(json!({
            "name": "Csv Org", "subscription": {"enabled": true, "expiresAt": null},
            "admins": [{"loginName": "full@csv", "password": PASSWORD, "role": "FULL"}],
        })),
    )
    .await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
    let key = s.login("full@csv").await.reveal().await;
    let from = t0().0 - 1000;
    s.clock.advance_secs(5);
    let api = crate::cloud_api::api_login(&s, "full@csv", &key).await;
    let to = t0().0 + 10_000;
    let raw = api
        .raw(
            Method::POST,
            "/api/v1/auditlogEntryReport",
            Some(json!({"startTime": from, "endTime": to})),
        )
        .await;
    assert_eq!(raw.status, StatusCode::NO_CONTENT, "{}", raw.text);
    let raw = api
        .raw(Method::GET, "/api/v1/auditlogEntryReport/download", None)
        .await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text);
    let mut reader = csv::Reader::from_reader(raw.text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("{name} in {headers:?}"))
    };
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let create = rows
        .iter()
        .find(|r| &r[col("Action")] == "ORG_CREATE")
        .expect("ORG_CREATE in the report");
    assert_eq!(&create[col("Actor")], "csv.owner display");
    assert_eq!(&create[col("Actor Tier")], "PLATFORM");
    assert_eq!(&create[col("Operator ID")], owner.to_string());
    assert_eq!(&create[col("Partner ID")], "");
    let login = rows
        .iter()
        .find(|r| &r[col("Action")] == "LOGIN_SUCCESS")
        .expect("the admin's login");
    assert_eq!(&login[col("Actor Tier")], "");
    assert!(!raw.text.contains(&t));
    s.stop().await;
}
