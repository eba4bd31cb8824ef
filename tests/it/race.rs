//! R7 under a race: a key change and API requests with a session opened with the old key,
//! sent at the same time, over and over. Once the change has been answered, no request with
//! that session may be accepted, and no request with it ever sees the new key.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::cloud_api::{ApiClient, api_login_at, create_org, now_ms};
use crate::harness::*;

const TRIALS: usize = 1000;
/// Requests one trial's probe may send before giving up (a broken R7 would loop forever).
const MAX_PROBES: usize = 500;

/// One `GET /api/v1/apiKeys` with the old session.
struct Probe {
    sent: Instant,
    arrived: Instant,
    status: StatusCode,
    key: Option<String>,
}

async fn probe(session: &ApiClient) -> Probe {
    let sent = Instant::now();
    let (status, body) = session.get("/api/v1/apiKeys").await;
    let arrived = Instant::now();
    let key = body
        .as_array()
        .and_then(|a| a.first())
        .and_then(|k| k["keyValue"].as_str())
        .map(str::to_owned);
    if status != StatusCode::OK {
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::UNAUTHORIZED, &Value::from("SESSION_NOT_VALID")),
            "a request with a stale session: {body}"
        );
    }
    Probe {
        sent,
        arrived,
        status,
        key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_no_request_with_the_old_key_is_accepted_once_the_change_is_answered() {
    let server = TestServer::start().await;
    create_org(&server, "race").await;
    let console = server.login("full@race").await;
    let mut key = console.reveal().await;

    let started = Instant::now();
    let mut login_time = Duration::ZERO;
    let mut violations: Vec<String> = Vec::new();
    let mut first_get_accepted = 0usize;
    let mut first_get_refused = 0usize;
    let mut accepted_arriving_after_change = 0usize;
    let mut probes_sent = 0usize;

    for trial in 0..TRIALS {
        // A session opened with the current key, on the Cloud Connector path, at a timestamp
        // that moves around inside the window so the obfuscation varies.
        let t = Instant::now();
        let ts = now_ms(&server) + (trial as i64 * 7_919) % 500_000 - 250_000;
        let session = api_login_at(&server, "/api/v1/auth", "full@race", &key, ts)
            .await
            .unwrap_or_else(|r| panic!("trial {trial}: login: {} {}", r.status, r.text));
        login_time += t.elapsed();

        // Vary who gets going first.
        let (change_yields, probe_yields) = (trial % 3, (trial / 3) % 4);
        let ((change_done, (status, body)), probes) = tokio::join!(
            async {
                for _ in 0..change_yields {
                    tokio::task::yield_now().await;
                }
                let r = console.regenerate().await;
                (Instant::now(), r)
            },
            async {
                for _ in 0..probe_yields {
                    tokio::task::yield_now().await;
                }
                // The GET, and more of them back to back until the session is refused.
                let mut out = Vec::new();
                loop {
                    let p = probe(&session).await;
                    let done = p.status != StatusCode::OK;
                    out.push(p);
                    if done || out.len() >= MAX_PROBES {
                        break out;
                    }
                }
            }
        );
        assert_eq!(status, StatusCode::OK, "trial {trial}: regenerate: {body}");
        let new_key = body["keyValue"]
            .as_str()
            .unwrap_or_else(|| panic!("trial {trial}: key value in {body}"))
            .to_owned();
        assert_ne!(new_key, key, "trial {trial}: a new value");

        if probes[0].status == StatusCode::OK {
            first_get_accepted += 1;
        } else {
            first_get_refused += 1;
        }
        probes_sent += probes.len();
        for (i, p) in probes.iter().enumerate() {
            if p.status != StatusCode::OK {
                continue;
            }
            if p.key.as_deref() != Some(key.as_str()) {
                violations.push(format!(
                    "trial {trial} probe {i}: accepted and returned {} instead of the old key",
                    if p.key.as_deref() == Some(new_key.as_str()) {
                        "the NEW key"
                    } else {
                        "something else"
                    }
                ));
            }
            if p.sent > change_done {
                violations.push(format!(
                    "trial {trial} probe {i}: sent {:?} after the change was answered, accepted",
                    p.sent - change_done
                ));
            }
            if p.arrived > change_done {
                accepted_arriving_after_change += 1;
            }
        }
        // Sent after the change's response arrived: refused.
        let after = probe(&session).await;
        assert!(after.sent > change_done);
        if after.status != StatusCode::UNAUTHORIZED {
            violations.push(format!(
                "trial {trial}: GET sent after the change was answered got {}",
                after.status
            ));
        }
        key = new_key;
    }

    let elapsed = started.elapsed();
    eprintln!(
        "R7 race: {TRIALS} trials in {elapsed:?} (logins {login_time:?}); first GET accepted \
         (linearized before the change) {first_get_accepted}, refused {first_get_refused}; \
         {probes_sent} racing GETs; {accepted_arriving_after_change} accepted GETs arrived after \
         the change's response (all with the old key); {} violations",
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "{} R7 violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

const LOGIN_TRIALS: usize = 150;

/// R7 for logins: a login with the old key racing the change either fails, or opens a session
/// that is dead once the change has been answered; a login sent after that fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_logins_with_the_old_key_racing_a_change_open_no_live_session() {
    // Failed logins are the point here: keep the throttle out of the way.
    let server = TestServer::start_with(|c| {
        c.login_throttle.max_failures_per_login_addr = u32::MAX;
        c.login_throttle.max_failures_per_addr = u32::MAX;
        c.login_throttle.login_under_attack = u32::MAX;
        c.login_throttle.login_under_attack = u32::MAX;
    })
    .await;
    create_org(&server, "lrace").await;
    let console = server.login("full@lrace").await;
    let mut key = console.reveal().await;
    let started = Instant::now();
    let mut violations: Vec<String> = Vec::new();
    let (mut opened, mut refused) = (0usize, 0usize);
    for trial in 0..LOGIN_TRIALS {
        let ts = now_ms(&server) + (trial as i64 * 104_729) % 500_000 - 250_000;
        // Sweep where the change lands in the login's ~tens of ms (argon2): hold it back by
        // a varying number of health-check round trips (work, not a sleep).
        let hold_back = (trial % 25) * 5;
        let ((change_done, (status, body)), login) = tokio::join!(
            async {
                for _ in 0..hold_back {
                    let r = server.http.get(server.url("/healthz")).send().await;
                    assert!(r.is_ok_and(|r| r.status().is_success()));
                }
                let r = console.regenerate().await;
                (Instant::now(), r)
            },
            async {
                let sent = Instant::now();
                (
                    sent,
                    api_login_at(&server, "/api/v1/auth", "full@lrace", &key, ts).await,
                )
            }
        );
        assert_eq!(status, StatusCode::OK, "trial {trial}: regenerate: {body}");
        let (sent, login) = login;
        match login {
            Ok(session) => {
                opened += 1;
                if sent > change_done {
                    violations.push(format!(
                        "trial {trial}: login sent after the change, accepted"
                    ));
                }
                let (status, body) = session.get("/api/v1/apiKeys").await;
                if status != StatusCode::UNAUTHORIZED {
                    violations.push(format!(
                        "trial {trial}: a session opened with the old key answered {status} \
                         after the change: {body}"
                    ));
                }
            }
            Err(raw) => {
                refused += 1;
                assert_eq!(
                    raw.status,
                    StatusCode::UNAUTHORIZED,
                    "trial {trial}: {}",
                    raw.text
                );
            }
        }
        // After the change was answered, the old key opens nothing.
        if let Ok(s) = api_login_at(&server, "/api/v1/auth", "full@lrace", &key, ts).await {
            violations.push(format!(
                "trial {trial}: login with the old key after the change opened {}",
                s.token.len()
            ));
        }
        key = body["keyValue"].as_str().unwrap().to_owned();
    }
    eprintln!(
        "R7 login race: {LOGIN_TRIALS} trials in {:?}; racing logins opened {opened}, refused \
         {refused}; {} violations",
        started.elapsed(),
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "{} R7 violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
}
