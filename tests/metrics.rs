//! The metrics an operator alerts on (docs/operations.md, "Metrics"), from real idgate
//! processes on a real Redis: every family is on `/metrics` from the start, and each
//! moves when its event happens (a refused login, a SCIM deactivation of a signed-in
//! user, a WebSocket opened and closed, Redis going away).

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The current exposition.
async fn scrape(idgate: &Idgate) -> String {
    let r = get(&idgate.admin_url("/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    r.text()
}

/// The value of one series (name with labels, exactly as exposed), or None when absent.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

/// The value of a series that must be there.
async fn metric(idgate: &Idgate, series: &str) -> f64 {
    let text = scrape(idgate).await;
    value(&text, series).unwrap_or_else(|| panic!("no {series} on /metrics:\n{text}"))
}

/// The sum of every series of `family` (all label values).
fn family_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Polls `series` until it equals `want`, for at most 5 s (what moves it happens in
/// another process, after the answer the test saw).
async fn eventually(idgate: &Idgate, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = metric(idgate, series).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_family_is_on_metrics_from_the_start() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "", "");
    let idgate = Idgate::start(&d.text);
    idgate.wait_ready().await;
    let text = scrape(&idgate).await;
    for series in [
        "idgate_logins_total",
        "idgate_login_failures_total{reason=\"signature\"}",
        "idgate_login_failures_total{reason=\"not_provisioned\"}",
        "idgate_session_revocations_total{cause=\"account_deactivated\"}",
        "idgate_session_revocations_total{cause=\"company_cancelled\"}",
        "idgate_session_revocations_total{cause=\"removed_from_company\"}",
        "idgate_session_revocations_total{cause=\"admin\"}",
        "idgate_session_revocations_total{cause=\"logout\"}",
        "idgate_session_revocations_total{cause=\"single_logout\"}",
        "idgate_config_reloads_total{result=\"ok\"}",
        "idgate_config_reloads_total{result=\"error\"}",
        "idgate_tunnels_open",
        "idgate_store_errors_total{op=\"session\"}",
        "idgate_job_queue_depth{queue=\"maestrano-billing\"}",
        "idgate_job_queue_depth{queue=\"maestrano-connec\"}",
        "idgate_job_queue_oldest_age_seconds{queue=\"maestrano-billing\"}",
        "idgate_job_queue_oldest_age_seconds{queue=\"maestrano-connec\"}",
    ] {
        assert_eq!(value(&text, series), Some(0.0), "{series}:\n{text}");
    }
    // The readiness probe above made store round trips: they are timed.
    let pings = value(&text, "idgate_store_duration_seconds_count{op=\"ping\"}")
        .unwrap_or_else(|| panic!("no store histogram:\n{text}"));
    assert!(pings >= 1.0, "{text}");
    assert!(
        text.contains("idgate_store_duration_seconds_bucket{op=\"session\",le=\"0.001\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_counted_by_its_reason() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "", "");
    let idgate = Idgate::start(&d.text);
    idgate.wait_ready().await;
    let malformed = "idgate_login_failures_total{reason=\"malformed\"}";
    let before = value(&scrape(&idgate).await, malformed).unwrap_or(0.0);
    let r = send(
        "POST",
        &idgate.url("/_idgate/saml/acme/acs"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "SAMLResponse=not-a-saml-response",
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.headers.get("set-cookie").is_none(), "no session");
    let text = scrape(&idgate).await;
    assert_eq!(value(&text, malformed), Some(before + 1.0), "{text}");
    assert_eq!(value(&text, "idgate_logins_total"), Some(0.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scim_deactivation_of_a_signed_in_user_counts_its_revoked_session() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "", "");
    let idgate = Idgate::start(&d.text);
    idgate.wait_ready().await;
    let cookie = d.login("u-1", "g-1").await;
    let r = get(&idgate.url("/"), &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "signed in: {}", r.text());
    let deactivated = "idgate_session_revocations_total{cause=\"account_deactivated\"}";
    assert_eq!(metric(&idgate, deactivated).await, 0.0);

    let r = send(
        "DELETE",
        &idgate.url("/_idgate/scim/acme/v2/Users/u-1"),
        &[("authorization", &format!("Bearer {SCIM_TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    // Counted before the SCIM answer, by the replica that revoked it.
    let text = scrape(&idgate).await;
    assert_eq!(value(&text, deactivated), Some(1.0), "{text}");
    assert_eq!(
        value(
            &text,
            "idgate_session_revocations_total{cause=\"company_cancelled\"}"
        ),
        Some(0.0),
        "{text}"
    );
    let r = get(&idgate.url("/"), &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_is_counted_until_it_closes() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "", "");
    let idgate = Idgate::start(&d.text);
    idgate.wait_ready().await;
    let cookie = d.login("u-1", "g-1").await;
    assert_eq!(metric(&idgate, "idgate_tunnels_open").await, 0.0);

    let mut req = format!("ws://{}/ws", idgate.public)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket handshake through idgate");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an echo in time")
        .expect("open")
        .expect("a message");
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello");
    // The echo crossed the tunnel, so it is open and counted now.
    assert_eq!(metric(&idgate, "idgate_tunnels_open").await, 1.0);

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    // A browser closes its socket once the close handshake is done; tungstenite only
    // on drop. Kept open, the tunnel would wait out its half-close drain (5 s), which
    // races the poll below.
    drop(ws);
    eventually(&idgate, "idgate_tunnels_open", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_are_counted_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "", "");
    let idgate = Idgate::start(&d.text);
    idgate.wait_ready().await;
    let before = family_sum(&scrape(&idgate).await, "idgate_store_errors_total");
    assert_eq!(before, 0.0, "no store error while Redis is up");

    redis.stop();
    // Calls that need the store now fail: the readiness probe's PING, and a SCIM read.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = get(&idgate.admin_url("/readyz"), &[]).await;
        let _ = get(
            &idgate.url("/_idgate/scim/acme/v2/Users/u-1"),
            &[("authorization", &format!("Bearer {SCIM_TOKEN}"))],
        )
        .await;
        let text = scrape(&idgate).await;
        if family_sum(&text, "idgate_store_errors_total") > before {
            assert_eq!(ready.status, 503, "a failing store is not ready");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no store error counted with Redis down:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
