//! Long-lived connections follow their session (SPEC §7): a WebSocket tunnel and a
//! streamed response opened with a session are closed within a second, on every
//! replica, when the session is revoked (deactivation, cancellation, removal from the
//! company, logout) or expires; shutdown closes tunnels when the grace period ends, not
//! before. Real idgate processes on a real Redis, a real WebSocket upstream.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use idgate::config::Config;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket through idgate with `cookie`, checked to echo.
async fn open_ws(idgate: &Idgate, cookie: &str) -> Ws {
    let mut req = format!("ws://{}/ws", idgate.public)
        .into_client_request()
        .unwrap();
    if !cookie.is_empty() {
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
    }
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket handshake through idgate");
    assert_eq!(resp.status(), 101);
    echo(&mut ws, "hello").await;
    ws
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an echo in time")
        .expect("the tunnel is open")
        .expect("a message");
    assert_eq!(got.into_text().unwrap().as_str(), text);
}

/// Waits for the tunnel to close, at most `limit`; returns how long it took and the
/// close code the client got, if any.
async fn closed(ws: &mut Ws, limit: Duration) -> (Duration, Option<CloseCode>) {
    let start = Instant::now();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("the tunnel is still open after {limit:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (start.elapsed(), frame.map(|f| f.code));
            }
            Ok(Some(Ok(_))) => continue,
            Ok(None) | Ok(Some(Err(_))) => return (start.elapsed(), None),
        }
    }
}

/// A Server-Sent Events response through idgate, its first tick read.
async fn open_stream(idgate: &Idgate, cookie: &str) -> hyper::body::Incoming {
    let req = http::Request::get(idgate.url("/stream"))
        .header("cookie", cookie)
        .header("accept", "text/event-stream")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.expect("stream response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a first tick").expect("readable");
    assert!(first.is_data());
    body
}

/// Reads the stream until it ends or breaks, at most `limit`; returns how long that took
/// and whether it ended cleanly.
async fn stream_cut(body: &mut hyper::body::Incoming, limit: Duration) -> (Duration, bool) {
    let start = Instant::now();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, body.frame()).await {
            Err(_) => panic!("the stream still flows after {limit:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(None) => return (start.elapsed(), true),
            Ok(Some(Err(_))) => return (start.elapsed(), false),
        }
    }
}

/// Reads the next frame after a millisecond's pause: a client slower than the upstream.
async fn slow_read(
    body: &mut hyper::body::Incoming,
) -> Result<
    Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>,
    tokio::time::error::Elapsed,
> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    tokio::time::timeout(Duration::from_secs(3), body.frame()).await
}

/// The access-log lines of ended tunnels.
fn tunnel_lines(idgate: &Idgate) -> Vec<serde_json::Value> {
    idgate
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["route"] == "tunnel")
        .collect()
}

/// Polls for the `n`th tunnel line.
async fn tunnel_line(idgate: &Idgate, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(line) = tunnel_lines(idgate).into_iter().nth(n) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no tunnel line #{n}:\n{}",
            idgate.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The tunnel is on replica B; the deactivation goes through replica A's SCIM endpoint.
/// Both the tunnel and a streamed response on B end within a second of A's answer,
/// the tunnel with a 1008 close frame, and B logs the tunnel's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_through_one_replica_closes_tunnels_and_streams_on_the_other() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "", "");
    let a = Idgate::start(&d.text);
    let b = Idgate::start(&d.text);
    a.wait_ready().await;
    b.wait_ready().await;
    let cookie = d.login("u-1", "g-1").await;
    let bystander = d.login("u-2", "g-1").await;

    let mut ws = open_ws(&b, &cookie).await;
    let mut other_ws = open_ws(&b, &bystander).await;
    let mut stream = open_stream(&b, &cookie).await;
    // Still open a while later: nothing closes a live session's tunnel.
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo(&mut ws, "still here").await;

    let r = send(
        "DELETE",
        &a.url("/_idgate/scim/acme/v2/Users/u-1"),
        &[("authorization", &format!("Bearer {SCIM_TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let answered = Instant::now();

    let (took, code) = closed(&mut ws, Duration::from_secs(3)).await;
    assert!(
        answered.elapsed() < Duration::from_secs(1),
        "the tunnel closed {took:?} after the deactivation's answer"
    );
    assert_eq!(code, Some(CloseCode::Policy), "close frame 1008");
    let (_, clean) = stream_cut(&mut stream, Duration::from_secs(3)).await;
    assert!(
        answered.elapsed() < Duration::from_secs(1),
        "the stream was cut {:?} after the answer",
        answered.elapsed()
    );
    assert!(!clean, "a cut stream must not look complete");

    // A long download whose upstream is always ready (read more slowly than the upstream
    // writes, so idgate never waits for it and only the bytes delivered make it a
    // stream) is cut as well. What was already in flight drains first, so the bound is
    // on bytes and time after the deactivation, not on the first read.
    let cookie = d.login("u-3", "g-1").await;
    let req = http::Request::get(b.url("/bytes/4000000000"))
        .header("cookie", &cookie)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.expect("download");
    assert_eq!(resp.status(), 200);
    let mut download = resp.into_body();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(800) {
        let frame = slow_read(&mut download).await.unwrap().unwrap().unwrap();
        assert!(frame.is_data());
    }
    let r = send(
        "DELETE",
        &a.url("/_idgate/scim/acme/v2/Users/u-3"),
        &[("authorization", &format!("Bearer {SCIM_TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    let answered = Instant::now();
    let mut after = 0usize;
    loop {
        match slow_read(&mut download).await {
            Ok(Some(Ok(frame))) => {
                after += frame.data_ref().map_or(0, |d| d.len());
                assert!(
                    answered.elapsed() < Duration::from_secs(3),
                    "the download still flows {:?} ({after} bytes) after the deactivation",
                    answered.elapsed()
                );
            }
            Ok(Some(Err(_))) => break,
            Ok(None) => panic!("the download must be cut, not completed"),
            Err(_) => panic!("the download stalled instead of being cut"),
        }
    }

    // The access log says how the tunnel ended.
    let line = tunnel_line(&b, 0).await;
    assert_eq!(line["closed_by"], "revoked", "{line}");
    assert!(line["bytes_in"].as_u64().unwrap() > 0, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > 0, "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() >= 300.0, "{line}");

    // Another user's tunnel is untouched.
    echo(&mut other_ws, "unaffected").await;
    // And the revoked cookie opens no new tunnel.
    let mut req = format!("ws://{}/ws", b.public)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
}

/// Every other way a session ends closes its tunnel on the other replica too:
/// logout, company cancellation, removal from the company.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_cancellation_and_removal_close_tunnels_everywhere() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "", "");
    let a = Idgate::start(&d.text);
    let b = Idgate::start(&d.text);
    a.wait_ready().await;
    b.wait_ready().await;

    for (n, cause) in ["logout", "cancellation", "removal"]
        .into_iter()
        .enumerate()
    {
        let (user, group) = (format!("u-{cause}"), format!("g-{cause}"));
        let cookie = d.login(&user, &group).await;
        let mut ws = open_ws(&b, &cookie).await;
        match cause {
            "logout" => {
                let r = send(
                    "POST",
                    &a.url("/_idgate/logout"),
                    &[("cookie", &cookie)],
                    "",
                )
                .await;
                assert_eq!(r.status, 302, "{}", r.text());
            }
            "cancellation" => d
                .dir
                .cancel_group(&idgate::audit::Origin::system(), "acme", &group)
                .await
                .unwrap(),
            _ => d
                .dir
                .remove_membership(&idgate::audit::Origin::system(), "acme", &user, &group)
                .await
                .unwrap(),
        }
        let answered = Instant::now();
        let (_, code) = closed(&mut ws, Duration::from_secs(3)).await;
        assert!(
            answered.elapsed() < Duration::from_secs(1),
            "{cause}: closed {:?} after the answer",
            answered.elapsed()
        );
        assert_eq!(code, Some(CloseCode::Policy), "{cause}");
        let line = tunnel_line(&b, n).await;
        assert_eq!(line["closed_by"], "revoked", "{cause}: {line}");
    }
}

/// A session that reaches its lifetime closes its tunnel (`closed_by: expired`), not
/// before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_session_closes_its_tunnel() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(
        up.addr,
        &redis.url(),
        "",
        "[session]\nidle_timeout = \"3s\"\nmax_lifetime = \"3s\"\n",
    );
    let b = Idgate::start(&d.text);
    b.wait_ready().await;
    let cookie = d.login("u-exp", "g-exp").await;
    let opened = Instant::now();
    let mut ws = open_ws(&b, &cookie).await;
    let (_, code) = closed(&mut ws, Duration::from_secs(8)).await;
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(2000) && lived < Duration::from_millis(5500),
        "closed after {lived:?}; the session lived 3 s"
    );
    assert_eq!(code, Some(CloseCode::Policy));
    assert_eq!(tunnel_line(&b, 0).await["closed_by"], "expired");
}

/// SIGTERM: open tunnels keep working through the grace period, then are closed
/// (`closed_by: shutdown`) and the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_tunnels_when_the_grace_period_ends() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "shutdown_grace = \"2s\"", "");
    let mut b = Idgate::start(&d.text);
    b.wait_ready().await;
    let cookie = d.login("u-sd", "g-sd").await;
    let mut ws = open_ws(&b, &cookie).await;
    let sent = Instant::now();
    b.signal("TERM");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    echo(&mut ws, "during the grace period").await;
    let (_, code) = closed(&mut ws, Duration::from_secs(5)).await;
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "closed {took:?} after SIGTERM, before the 2 s grace ended"
    );
    assert_eq!(code, Some(CloseCode::Policy));
    assert_eq!(tunnel_line(&b, 0).await["closed_by"], "shutdown");
    let exit = tokio::task::block_in_place(|| b.wait_exit(Duration::from_secs(10)));
    assert!(exit.expect("exits").success());
}

/// A tunnel that its client closes is logged as such, with its byte counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_closed_by_its_client_is_logged() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "", "");
    let b = Idgate::start(&d.text);
    b.wait_ready().await;
    let cookie = d.login("u-c", "g-c").await;
    let mut ws = open_ws(&b, &cookie).await;
    ws.close(None).await.unwrap();
    drop(ws);
    let line = tunnel_line(&b, 0).await;
    assert!(
        line["closed_by"] == "client" || line["closed_by"] == "upstream",
        "{line}"
    );
    assert_eq!(line["route"], "tunnel");
    assert!(line["bytes_in"].as_u64().unwrap() >= 5, "{line}");
    // No session is watched once the tunnel is gone.
    let mut stream = open_stream(&b, &cookie).await;
    drop(stream.frame().await);
}

/// A tenant that goes away (a reload without it, or Maestrano's developer platform
/// dropping its marketplace: both publish a new snapshot through `Reloader::apply`)
/// takes its open tunnels along, as it takes its sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_tenant_closes_its_tunnels() {
    let up = TestUpstream::start().await;
    let text = config(up.addr, "", &tenant_toml("acme"));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let cfg = Config::from_toml(&text, std::path::Path::new("/")).expect("valid config");
    let app = idgate::App::new(cfg)
        .expect("app")
        .reload_from(file.path().to_owned());
    let (dir, sessions) = (app.directory().clone(), app.sessions().clone());
    let running = app.start().await.expect("start");
    provision(&dir, "acme", "u-t", "g-t").await;
    let new = sessions.create_session("acme", "u-t", "g-t").await.unwrap();
    let cookie = cookie_for(&sessions, &new);
    let mut req = format!("ws://{}/ws", running.public_addr())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("handshake");
    echo(&mut ws, "before").await;
    assert_eq!(
        sessions.watched_sessions(),
        1,
        "the tunnel watches its session"
    );

    std::fs::write(file.path(), config(up.addr, "", "")).unwrap();
    assert!(
        matches!(
            running.reload().await,
            idgate::reload::Outcome::Applied { .. }
        ),
        "the config without the tenant is applied"
    );
    let (took, code) = closed(&mut ws, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    assert_eq!(code, Some(CloseCode::Policy));
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(3);
    while sessions.watched_sessions() != 0 {
        assert!(Instant::now() < deadline, "the watch outlived its tunnel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await;
}
