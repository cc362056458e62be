//! Process lifecycle: graceful drain on SIGTERM/SIGINT, health, readiness against a real
//! Redis, and the metrics exposition.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn public_all(upstream: std::net::SocketAddr, server: &str) -> String {
    config(upstream, server, "[access]\npublic_paths = [\"/\"]\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_refuses_new_ones() {
    let up = TestUpstream::start().await;
    let mut idgate = Idgate::start(&public_all(up.addr, "shutdown_grace = \"10s\""));
    let url = idgate.url("/sleep/1500");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    idgate.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No longer accepting: the listener is closed.
    assert!(
        std::net::TcpStream::connect(idgate.public).is_err(),
        "idgate still accepts connections after SIGTERM"
    );
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request completed");
    assert_eq!(r.text(), "slept");
    let status = tokio::task::block_in_place(|| idgate.wait_exit(Duration::from_secs(10)))
        .expect("idgate exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "exited promptly once drained"
    );
    assert!(idgate.wait_for_log("draining"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_with_a_stuck_request_exits_after_the_grace_period() {
    let up = TestUpstream::start().await;
    let mut idgate = Idgate::start(&public_all(up.addr, "shutdown_grace = \"1s\""));
    let url = idgate.url("/sleep/30000");
    let _stuck = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    idgate.signal("INT");
    let status = tokio::task::block_in_place(|| idgate.wait_exit(Duration::from_secs(10)))
        .expect("idgate exits when the grace period ends");
    assert!(status.success());
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "exit took {took:?}, grace was 1 s"
    );
    assert!(idgate.wait_for_log("shutdown grace expired"));
}

#[tokio::test]
async fn healthz_and_readyz_with_the_memory_store() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr, ""));
    assert_eq!(get(&idgate.admin_url("/healthz"), &[]).await.status, 200);
    assert_eq!(get(&idgate.admin_url("/readyz"), &[]).await.status, 200);
    assert_eq!(get(&idgate.admin_url("/nope"), &[]).await.status, 404);
    // The admin endpoints are not on the public listener: there they are the app's.
    let r = get(&idgate.url("/healthz"), &[]).await;
    assert_eq!(r.json()["uri"], "/healthz");
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_redis() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let key = run_cli(&["keygen"], &[]).1;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("signing.pem");
    std::fs::write(&key_path, key).unwrap();
    let cfg = config(
        up.addr,
        "",
        &format!(
            "[store]\nurl = \"{}\"\n[identity]\nsigning_key = \"file:{}\"\n",
            redis.url(),
            key_path.display()
        ),
    );
    let idgate = Idgate::start(&cfg);
    // Ready once Redis answers and the event subscription is up.
    idgate.wait_ready().await;

    redis.stop();
    let started = Instant::now();
    let r = get(&idgate.admin_url("/readyz"), &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the ping is bounded"
    );
    assert_eq!(
        get(&idgate.admin_url("/healthz"), &[]).await.status,
        200,
        "still alive"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if get(&idgate.admin_url("/readyz"), &[]).await.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz did not recover after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_class() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&config(
        up.addr,
        "",
        "[access]\npublic_paths = [\"/pub\"]\n",
    ));
    for _ in 0..3 {
        assert_eq!(get(&idgate.url("/pub/a"), &[]).await.status, 200);
    }
    assert_eq!(get(&idgate.url("/_idgate/x"), &[]).await.status, 404);
    assert_eq!(get(&idgate.url("/private"), &[]).await.status, 401);
    let m = get(&idgate.admin_url("/metrics"), &[]).await;
    assert_eq!(m.status, 200);
    let text = m.text();
    for line in [
        "idgate_requests_total{route=\"public\",status=\"2xx\"} 3",
        "idgate_requests_total{route=\"reserved\",status=\"4xx\"} 1",
        "idgate_requests_total{route=\"proxied\",status=\"4xx\"} 1",
        "idgate_request_duration_seconds_count{route=\"public\"} 3",
        "idgate_in_flight_requests 0",
        "idgate_upstream_errors_total{kind=\"connect\"} 0",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
}

/// The first read of an answer on a raw connection (the tests' answers fit in one).
async fn answer(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `[server].max_connections`: at the limit a new connection waits (in the listen
/// backlog) while the open ones keep being served, the log says why, the metrics show
/// it, and the waiting connection is served as soon as one closes.
#[tokio::test(flavor = "multi_thread")]
async fn max_connections_holds_new_connections_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr, "max_connections = 3\nworkers = 2"));
    let request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(idgate.public).await.unwrap();
        s.write_all(request).await.unwrap();
        assert!(answer(&mut s).await.starts_with("HTTP/1.1 200"));
        open.push(s);
    }
    let mut waiting = tokio::net::TcpStream::connect(idgate.public).await.unwrap();
    waiting.write_all(request).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buf))
            .await
            .is_err(),
        "a fourth connection is not served while three are open"
    );
    // The open ones are.
    open[0].write_all(request).await.unwrap();
    assert!(answer(&mut open[0]).await.starts_with("HTTP/1.1 200"));
    assert!(idgate.wait_for_log("connection limit reached"));
    let metrics = get(&idgate.admin_url("/metrics"), &[]).await.text();
    assert!(metrics.contains("idgate_connections_open 3"), "{metrics}");
    assert!(metrics.contains("idgate_connections_max 3"), "{metrics}");
    assert!(
        metrics.contains("idgate_connection_limit_reached_total 1"),
        "{metrics}"
    );

    drop(open.pop());
    let got = tokio::time::timeout(Duration::from_secs(5), answer(&mut waiting))
        .await
        .expect("served once a connection closed");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

/// Idle HTTP/1.1 keep-alive connections park (idgate keeps their socket, not hyper's
/// buffers), the metrics count them, and each still answers its next request on the
/// same socket, on every worker.
#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_park_and_answer_their_next_request() {
    use tokio::io::AsyncWriteExt;
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr, "workers = 2"));
    let request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    async fn parked(idgate: &Idgate) -> String {
        let metrics = get(&idgate.admin_url("/metrics"), &[]).await.text();
        metrics
            .lines()
            .find(|l| l.starts_with("idgate_connections_parked "))
            .unwrap_or_else(|| panic!("no idgate_connections_parked in {metrics}"))
            .to_owned()
    }
    // Four connections: the acceptor hands them to the two workers in turn.
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(idgate.public).await.unwrap();
        s.write_all(request).await.unwrap();
        assert!(answer(&mut s).await.starts_with("HTTP/1.1 200"));
        open.push(s);
    }
    assert_eq!(parked(&idgate).await, "idgate_connections_parked 0");
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while parked(&idgate).await != "idgate_connections_parked 4" {
        assert!(
            std::time::Instant::now() < end,
            "not all idle connections parked: {}",
            parked(&idgate).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in &mut open {
        s.write_all(request).await.unwrap();
        let got = answer(s).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    assert_eq!(parked(&idgate).await, "idgate_connections_parked 0");
}
