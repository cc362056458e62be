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
