//! HTTPS against the real binary, with certificates the test makes (its own CAs, rcgen): a
//! whole login and key flow through reqwest and through curl with `--cacert`; certificate
//! rotation by SIGHUP and by only rewriting the files, where new connections get the new
//! certificate and a connection opened before keeps working; a broken new pair leaving the
//! old one serving.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use reqwest::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::harness::{PASSWORD, PROVIDER_TOKEN, Process};

/// A CA of the test's own.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and key in PEM.
struct Pair {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn server_pair(&self) -> Pair {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

struct Files {
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn in_dir(dir: &Path) -> Files {
        Files {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// Replaces both files (each by rename, so no half-written file is ever read).
    fn write(&self, pair: &Pair) {
        replace(&self.cert, &pair.cert, 0o644);
        replace(&self.key, &pair.key, 0o600);
    }
}

fn replace(path: &Path, text: &str, mode: u32) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(dir: &Path, files: &Files, extra: &[(&str, &str)]) -> Process {
    let mut envs = vec![
        ("KEYGATE_TLS_CERT", files.cert.to_str().unwrap()),
        ("KEYGATE_TLS_KEY", files.key.to_str().unwrap()),
        ("RUST_LOG", "info"),
    ];
    envs.extend_from_slice(extra);
    Process::start_with(&dir.join("data"), &dir.join("log"), &envs)
}

fn addr(p: &Process) -> SocketAddr {
    p.base
        .strip_prefix("https://")
        .expect("listening on https")
        .parse()
        .unwrap()
}

fn client_config(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS connection trusting only `ca_pem`.
async fn connect(addr: SocketAddr, ca_pem: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(client_config(ca_pem))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

fn peer_leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate")[0]
        .to_vec()
}

fn leaf_der(pair: &Pair) -> Vec<u8> {
    CertificateDer::from_pem_slice(pair.cert.as_bytes())
        .unwrap()
        .to_vec()
}

/// `GET /healthz` on an open keep-alive connection; returns the status line.
async fn healthz_on(stream: &mut TlsStream<TcpStream>) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.expect("read answer");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= len {
                return head.lines().next().unwrap().to_owned();
            }
        }
    }
}

/// Polls (the server is another process: there is no clock to move) until a new connection
/// trusting `ca_pem` gets `leaf`.
async fn until_serving(addr: SocketAddr, ca_pem: &str, leaf: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = connect(addr, ca_pem).await
            && peer_leaf(&s) == leaf
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sighup(p: &Process) {
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGHUP);
    }
}

async fn wait_for_log(p: &Process, needle: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&p.log_path).unwrap_or_default();
        if log.matches(needle).count() >= times {
            return;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .cookie_store(true)
        .build()
        .unwrap()
}

#[tokio::test]
async fn login_and_key_flow_over_https_with_reqwest_and_curl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("keygate test CA");
    let files = Files::in_dir(dir.path());
    files.write(&ca.server_pair());
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let p = start(dir.path(), &files, &[]);
    assert!(p.base.starts_with("https://"), "{}", p.base);

    let http = https_client(&ca.pem());
    let resp = http
        .post(format!("{}/provider/v1/orgs", p.base))
        .bearer_auth(PROVIDER_TOKEN)
        .json(&json!({
            "name": "Org tls",
            "admins": [{"loginName": "full@tls", "password": PASSWORD, "role": "FULL"}],
            "subscription": {"enabled": true, "expiresAt": null},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = http
        .post(format!("{}/admin/v1/login", p.base))
        .json(&json!({"loginName": "full@tls", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    let csrf = resp.json::<Value>().await.unwrap()["csrfToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let key: Value = http
        .get(format!("{}/admin/v1/apiKey", p.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = http
        .post(format!("{}/admin/v1/apiKey/regenerate", p.base))
        .header("X-CSRF-Token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let regenerated: Value = resp.json().await.unwrap();
    assert_ne!(regenerated["id"], Value::Null, "{regenerated}");
    assert_ne!(key, regenerated);

    // A client that does not trust the test CA is refused; plain HTTP gets no answer.
    let stranger = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    assert!(
        stranger
            .get(format!("{}/healthz", p.base))
            .send()
            .await
            .is_err()
    );
    let plain = p.base.replacen("https://", "http://", 1);
    let plain = reqwest::get(format!("{plain}/healthz")).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // curl, the whole flow: login with a cookie jar, read the key, regenerate it.
    let Some(curl) = which("curl") else {
        assert!(std::env::var("CI").is_err(), "curl is missing under CI");
        eprintln!("SKIPPING the curl part: no curl binary");
        return;
    };
    let jar = dir.path().join("jar");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&curl)
            .args(["-sS", "--cacert"])
            .arg(&ca_path)
            .args(["-c"])
            .arg(&jar)
            .args(["-b"])
            .arg(&jar)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let login = run(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        &json!({"loginName": "full@tls", "password": PASSWORD}).to_string(),
        &format!("{}/admin/v1/login", p.base),
    ]);
    let csrf = login["csrfToken"].as_str().expect("csrf").to_owned();
    let key = run(&[&format!("{}/admin/v1/apiKey", p.base)]);
    assert_eq!(key["id"], regenerated["id"], "{key}");
    let again = run(&[
        "-X",
        "POST",
        "-H",
        &format!("X-CSRF-Token: {csrf}"),
        &format!("{}/admin/v1/apiKey/regenerate", p.base),
    ]);
    assert_ne!(again["keyValue"], Value::Null, "{again}");
    // Without --cacert curl refuses the certificate.
    let out = std::process::Command::new(&curl)
        .args(["-sS", &format!("{}/healthz", p.base)])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[tokio::test]
async fn sighup_serves_the_new_certificate_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (old, new) = (old_ca.server_pair(), new_ca.server_pair());
    let files = Files::in_dir(dir.path());
    files.write(&old);
    // Polling slower than the test: only SIGHUP can explain a reload.
    let p = start(
        dir.path(),
        &files,
        &[("KEYGATE_TLS_WATCH_INTERVAL_MS", "3600000")],
    );
    let addr = addr(&p);
    let mut before = connect(addr, &old_ca.pem()).await.unwrap();
    assert_eq!(peer_leaf(&before), leaf_der(&old));
    assert!(healthz_on(&mut before).await.contains("200"));

    files.write(&new);
    sighup(&p);
    until_serving(addr, &new_ca.pem(), &leaf_der(&new)).await;
    // A client trusting only the old CA is now refused.
    assert!(connect(addr, &old_ca.pem()).await.is_err());
    // The connection opened before still answers, on its old certificate.
    assert!(healthz_on(&mut before).await.contains("200"));
    assert!(healthz_on(&mut before).await.contains("200"));
    wait_for_log(&p, "TLS certificate reloaded", 1).await;
}

#[tokio::test]
async fn rewritten_files_are_picked_up_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (old, new) = (old_ca.server_pair(), new_ca.server_pair());
    let files = Files::in_dir(dir.path());
    files.write(&old);
    let p = start(
        dir.path(),
        &files,
        &[("KEYGATE_TLS_WATCH_INTERVAL_MS", "100")],
    );
    let addr = addr(&p);
    let mut before = connect(addr, &old_ca.pem()).await.unwrap();
    assert!(healthz_on(&mut before).await.contains("200"));

    files.write(&new);
    until_serving(addr, &new_ca.pem(), &leaf_der(&new)).await;
    assert!(connect(addr, &old_ca.pem()).await.is_err());
    assert!(healthz_on(&mut before).await.contains("200"));
}

#[tokio::test]
async fn a_broken_new_pair_is_refused_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let old = ca.server_pair();
    let other = ca.server_pair();
    let files = Files::in_dir(dir.path());
    files.write(&old);
    let p = start(
        dir.path(),
        &files,
        &[("KEYGATE_TLS_WATCH_INTERVAL_MS", "3600000")],
    );
    let addr = addr(&p);
    let broken = [
        // A certificate with someone else's key.
        Pair {
            cert: other.cert.clone(),
            key: old.key.clone(),
        },
        // Not PEM.
        Pair {
            cert: "not a certificate\n".into(),
            key: old.key.clone(),
        },
        Pair {
            cert: other.cert.clone(),
            key: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
        },
    ];
    for (i, pair) in broken.iter().enumerate() {
        files.write(pair);
        sighup(&p);
        wait_for_log(&p, "TLS certificate reload refused", i + 1).await;
        let mut s = connect(addr, &ca.pem()).await.unwrap();
        assert_eq!(peer_leaf(&s), leaf_der(&old), "broken pair {i}");
        assert!(healthz_on(&mut s).await.contains("200"));
    }
    // A key file others may read is refused the same way.
    files.write(&other);
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    sighup(&p);
    wait_for_log(&p, "TLS certificate reload refused", broken.len() + 1).await;
    let s = connect(addr, &ca.pem()).await.unwrap();
    assert_eq!(peer_leaf(&s), leaf_der(&old));
    // Fixed: the next SIGHUP takes it.
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    sighup(&p);
    until_serving(addr, &ca.pem(), &leaf_der(&other)).await;
}

#[test]
fn a_broken_pair_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (a, b) = (ca.server_pair(), ca.server_pair());
    let files = Files::in_dir(dir.path());
    files.write(&Pair {
        cert: a.cert,
        key: b.key,
    });
    let status = Process::try_start_with(
        &dir.path().join("data"),
        &dir.path().join("log"),
        &[
            ("KEYGATE_TLS_CERT", files.cert.to_str().unwrap()),
            ("KEYGATE_TLS_KEY", files.key.to_str().unwrap()),
        ],
    );
    assert!(status.is_err());
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("TLS"), "{log}");
    // Either file alone is refused too.
    let out = std::process::Command::new(crate::harness::binary())
        .args(["config", "check", "--tls-cert"])
        .arg(&files.cert)
        .env_remove("KEYGATE_TLS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
}
