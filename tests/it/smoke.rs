use reqwest::{Method, StatusCode};

use crate::harness::*;

#[tokio::test]
async fn provider_creates_org_and_admin_sees_key() {
    let server = TestServer::start().await;
    let org = server.create_org("smoke").await;
    assert_eq!(org["keyStatus"], "ENABLED");
    let admin = server.login("full@smoke").await;
    let (status, key) = admin.key().await;
    assert_eq!(status, StatusCode::OK);
    let full = admin.reveal().await;
    assert_eq!(
        key["keyValue"].as_str().unwrap(),
        format!("*********{}", &full[9..])
    );
    let (status, _) = server
        .provider(Method::GET, "/provider/v1/orgs", None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// The README's first command: `keygate demo` prints a URL, login, password and key that work.
#[tokio::test]
async fn demo_prints_working_credentials() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(binary())
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keygate demo");
    let stdout = child.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut fields = std::collections::HashMap::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("stdout");
            if let Some(rest) = line.strip_prefix("keygate demo is running (data in ") {
                fields.insert(
                    "data dir".to_owned(),
                    rest.split(',').next().unwrap_or("").to_owned(),
                );
            }
            if let Some((k, v)) = line.trim().split_once(':') {
                fields.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        fields
    })
    .await
    .unwrap();
    let url = printed["URL"].clone();
    let login = printed["admin login"].clone();
    let password = printed["admin password"].clone();
    let key = printed["API key"].clone();
    assert!(url.starts_with("http://127.0.0.1:"), "{printed:?}");
    assert_eq!(key.len(), 12);

    // The console accepts the login and shows the printed key.
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let resp = http
        .post(format!("{url}/admin/v1/login"))
        .json(&serde_json::json!({"loginName": login, "password": password}))
        .send()
        .await
        .unwrap();
    let (status, body) = into_json(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let csrf = body["csrfToken"].as_str().unwrap().to_owned();
    let resp = http
        .post(format!("{url}/admin/v1/apiKey/reveal"))
        .header("X-CSRF-Token", csrf)
        .send()
        .await
        .unwrap();
    let (_, revealed) = into_json(resp).await;
    assert_eq!(revealed["keyValue"], key.as_str());

    // The cloud service API accepts the key, obfuscated as clients send it.
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let obfuscated = keygate::domain::key::ApiKeyValue::parse("k", &key)
        .unwrap()
        .obfuscate(ts);
    let resp = reqwest::Client::new()
        .post(format!("{url}/api/v1/authenticatedSession"))
        .json(&serde_json::json!({
            "apiKey": std::str::from_utf8(&obfuscated[..]).unwrap(),
            "username": login, "password": password, "timestamp": ts,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // SIGTERM: the demo shuts down gracefully and removes its data directory.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    let data_dir = &printed["data dir"];
    assert!(data_dir.starts_with('/'), "{printed:?}");
    assert!(
        !std::path::Path::new(data_dir).exists(),
        "{data_dir} left behind"
    );
}
