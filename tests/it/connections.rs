//! Connections that cannot starve the server: 2,000 connections stalling their bodies (and,
//! separately, their heads) against the default connection limits while `/healthz` and a
//! real login keep answering, every stalled connection closed by the timeouts (short ones
//! here: they are settings, and the server's timers are tokio's, not the injected clock);
//! an early 413 for a declared body over the limit; the connection cap and its reserve
//! (idle keep-alive connections closed first).

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::TestServer;

const STALLED: usize = 2_000;
/// The longest the test waits for a connection to be closed: far past the timeouts, only so
/// a failure ends the test instead of hanging it.
const GIVE_UP: Duration = Duration::from_secs(120);

/// The client's own sockets count against the same process's open-files limit.
fn raise_open_files() {
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        assert!(
            lim.rlim_max >= 2 * STALLED as u64 + 512,
            "open files hard limit {} is too low for this test",
            lim.rlim_max
        );
    }
}

fn addr(s: &TestServer) -> String {
    s.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes; returns what it sent.
async fn until_closed(mut c: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(GIVE_UP, read)
        .await
        .expect("the server never closed a stalled connection");
    got
}

async fn start() -> TestServer {
    raise_open_files();
    TestServer::start_with(|c| {
        // Default limits (max connections, reserve); short timeouts.
        c.connections.header_read_timeout = Duration::from_secs(2);
        c.connections.body_read_timeout = Duration::from_secs(2);
    })
    .await
}

/// While the stalled connections are held: `/healthz` on new connections and a full login.
async fn still_serving(server: &TestServer) {
    for _ in 0..3 {
        let resp = reqwest::Client::new()
            .get(server.url("/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(resp.status(), StatusCode::OK);
        let admin = server.login("full@conn").await;
        assert_eq!(admin.key().await.0, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_stalled_bodies_do_not_starve_the_server() {
    let server = start().await;
    server.create_org("conn").await;
    let target = addr(&server);
    let mut stalled = Vec::with_capacity(STALLED);
    for i in 0..STALLED {
        let mut c = TcpStream::connect(&target).await.expect("connect");
        // Alternating a body the handler reads (login) and one it never gets to (a 404).
        let path = if i % 2 == 0 {
            "/admin/v1/login"
        } else {
            "/provider/v1/orgs"
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"login"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        stalled.push(c);
    }
    still_serving(&server).await;
    let answers = futures_join(stalled).await;
    for (i, got) in answers.iter().enumerate() {
        let text = String::from_utf8_lossy(got);
        if i % 2 == 0 {
            assert!(text.starts_with("HTTP/1.1 408"), "{i}: {text}");
            assert!(text.to_ascii_lowercase().contains("connection: close"));
            assert!(text.contains("REQUEST_TIMEOUT"), "{text}");
        } else {
            // Refused before the body mattered (no provider token): answered, then closed.
            assert!(text.starts_with("HTTP/1.1 4"), "{i}: {text}");
        }
    }
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_stalled_heads_do_not_starve_the_server() {
    let server = start().await;
    server.create_org("conn").await;
    let target = addr(&server);
    let mut stalled = Vec::with_capacity(STALLED);
    for i in 0..STALLED {
        let mut c = TcpStream::connect(&target).await.expect("connect");
        // Half send part of a head, half nothing at all.
        if i % 2 == 0 {
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        stalled.push(c);
    }
    still_serving(&server).await;
    let answers = futures_join(stalled).await;
    for got in &answers {
        // Closed without a request's answer (hyper may say 408 first).
        let text = String::from_utf8_lossy(got);
        assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    still_serving(&server).await;
}

async fn futures_join(conns: Vec<TcpStream>) -> Vec<Vec<u8>> {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(until_closed(c)))
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_read() {
    let server = TestServer::start().await;
    let mut c = TcpStream::connect(addr(&server)).await.unwrap();
    c.write_all(
        b"POST /admin/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    // Answered with the body still owed (the body timeout is 30 s: this is not it).
    let got = until_closed(c).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("PAYLOAD_TOO_LARGE"), "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"));
}

async fn healthz_keep_alive(c: &mut TcpStream) {
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("{\"status\":\"ok\"}") {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn idle_keep_alive_connections_close_first_and_the_cap_holds() {
    let server = TestServer::start_with(|c| {
        c.connections.max_connections = 50;
        c.connections.reserve = 10;
        c.connections.body_read_timeout = Duration::from_secs(300);
    })
    .await;
    let target = addr(&server);
    // 30 busy connections (stalled bodies), then idle keep-alive ones up to the reserve.
    let mut busy = Vec::new();
    for _ in 0..30 {
        let mut c = TcpStream::connect(&target).await.unwrap();
        c.write_all(b"POST /admin/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        busy.push(c);
    }
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut c = TcpStream::connect(&target).await.unwrap();
        healthz_keep_alive(&mut c).await;
        idle.push(c);
    }
    // 40 open = the cap less the reserve: the next connection asks the idle ones to close,
    // and is served.
    let mut fresh = TcpStream::connect(&target).await.unwrap();
    healthz_keep_alive(&mut fresh).await;
    for c in idle {
        assert!(
            until_closed(c).await.is_empty(),
            "an idle connection was closed"
        );
    }
    // The busy ones are left alone: each still gets its answer when its body comes.
    let mut c = busy.pop().unwrap();
    c.write_all(" ".repeat(99).as_bytes()).await.unwrap();
    let mut buf = [0u8; 12];
    c.read_exact(&mut buf).await.unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    drop(c);
    // Fill up to the cap with busy connections: past it, a new connection is closed unanswered.
    let mut more = Vec::new();
    for _ in 0..30 {
        let mut c = TcpStream::connect(&target).await.unwrap();
        // Past the cap the server may already have closed it.
        let _ = c.write_all(b"POST /admin/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            .await;
        more.push(c);
    }
    let mut over = TcpStream::connect(&target).await.unwrap();
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(until_closed(over).await.is_empty());
    // Freeing connections lets new ones in again.
    drop(more);
    drop(busy);
    let deadline = std::time::Instant::now() + GIVE_UP;
    loop {
        let ok = reqwest::get(server.url("/healthz"))
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK);
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
