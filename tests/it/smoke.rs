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
