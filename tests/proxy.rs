//! The proxy core and header hygiene, end to end: a real idgate process between a real
//! client and a real upstream on loopback.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use support::*;

fn public_all(upstream: std::net::SocketAddr) -> String {
    config(upstream, "", "[access]\npublic_paths = [\"/\"]\n")
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&config(
        up.addr,
        "",
        "[access]\npublic_paths = [\"/\"]\n[identity.headers]\nrole = \"X-Remote-Role\"\n",
    ));
    // Every spelling a client might use to smuggle an identity in.
    let spoof = "GET /spoof HTTP/1.1\r\nHost: app\r\n\
        X-Idgate-User-Id: admin\r\n\
        x-idgate-user-id: admin2\r\n\
        X-IDGATE-GROUP-ID: g\r\n\
        X_Idgate_Tenant: t\r\n\
        x_idgate_email: e@x\r\n\
        X-Idgate_Name: n\r\n\
        X-Idgate-Assertion: forged.jwt.value\r\n\
        X-Idgate-Future-Header: f\r\n\
        X-Remote-Role: owner\r\n\
        X_REMOTE_ROLE: owner\r\n\
        X-Kept: yes\r\n\
        Connection: close\r\n\r\n";
    let resp = raw(idgate.public, spoof).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let echo = raw_json(&resp);
    let names = received_names(&echo);
    for name in &names {
        let folded = name.replace('_', "-");
        assert!(
            !folded.starts_with("x-idgate-") && folded != "x-remote-role",
            "spoofed header {name} reached the upstream: {names:?}"
        );
    }
    assert_eq!(received(&echo, "x-kept"), ["yes"]);
    // The strip is logged at debug, by name only.
    assert!(idgate.wait_for_log("stripped client-sent identity header"));
    let logs = idgate.logs();
    assert!(
        logs.contains("stripped client-sent identity header"),
        "{logs}"
    );
    assert!(!logs.contains("forged.jwt.value"));
}

#[tokio::test]
async fn connection_header_naming_an_identity_header_is_refused() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr));
    for token in [
        "X-Idgate-User-Id, close",
        "close, x_idgate_group_id",
        "close, X-IDGATE-TENANT",
    ] {
        let req = format!(
            "GET /trick HTTP/1.1\r\nHost: app\r\nAccept: application/json\r\nConnection: {token}\r\n\r\n"
        );
        let resp = raw(idgate.public, &req).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{token}: {resp}");
        assert!(resp.contains("\"error\":\"bad_request\""), "{resp}");
    }
}

#[tokio::test]
async fn session_cookie_is_removed_and_other_cookies_kept() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr));
    let r = get(
        &idgate.url("/c"),
        &[(
            "cookie",
            "theme=dark; idgate_session=SECRETSESSION; __Host-idgate_session=S2; lang=en",
        )],
    )
    .await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(received(&echo, "cookie"), ["theme=dark; lang=en"]);
    assert!(idgate.wait_for_log("\"/c\""), "the request was logged");
    assert!(!idgate.logs().contains("SECRETSESSION"));
}

#[tokio::test]
async fn forwarded_headers_are_set_and_client_values_replaced() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr));
    let r = get(
        &idgate.url("/f"),
        &[
            ("host", "shop.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6"),
        ],
    )
    .await;
    let echo = r.json();
    assert_eq!(received(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(received(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(received(&echo, "x-forwarded-host"), ["shop.example"]);
    assert_eq!(received(&echo, "host"), ["shop.example"]);
    assert!(received(&echo, "forwarded").is_empty());

    // From a trusted proxy the chain is kept and extended.
    let trusted = Idgate::start(&config(
        up.addr,
        "trusted_proxies = [\"127.0.0.0/8\"]",
        "[access]\npublic_paths = [\"/\"]\n",
    ));
    let r = get(
        &trusted.url("/f"),
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let echo = r.json();
    assert_eq!(
        received(&echo, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(received(&echo, "x-forwarded-proto"), ["https"]);
}

#[tokio::test]
async fn all_methods_and_bodies_pass_through() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr));
    for method in [
        "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND",
    ] {
        let r = send(
            method,
            &idgate.url("/m?q=1"),
            &[],
            Bytes::from_static(b"hello"),
        )
        .await;
        assert_eq!(r.status, 200, "{method}");
        let echo = r.json();
        assert_eq!(echo["method"], method);
        assert_eq!(echo["uri"], "/m?q=1");
        assert_eq!(echo["body_bytes"], 5);
    }
    let head = send("HEAD", &idgate.url("/m"), &[], Bytes::new()).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr));
    let req = "GET /h HTTP/1.1\r\nHost: app\r\nConnection: close, X-Client-Private\r\n\
        X-Client-Private: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
        Proxy-Connection: keep-alive\r\nX-Client-Public: 1\r\n\r\n";
    let echo = raw_json(&raw(idgate.public, req).await);
    let names = received_names(&echo);
    for hop in ["x-client-private", "keep-alive", "te", "proxy-connection"] {
        assert!(
            !names.contains(&hop.to_string()),
            "{hop} forwarded: {names:?}"
        );
    }
    assert!(names.contains(&"x-client-public".to_string()));

    let r = get(&idgate.url("/hop"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("x-upstream-private"));
    assert!(!r.headers.contains_key("keep-alive"));
    assert_eq!(r.headers["x-upstream-public"], "1");
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let req = http::Request::builder()
        .uri(idgate.url("/h2?x=1"))
        .header("x-idgate-user-id", "spoof")
        .body(http_body_util::Full::new(Bytes::from_static(b"h2 body")))
        .unwrap();
    let resp = client.request(req).await.expect("h2 request");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "upstream is spoken to in HTTP/1.1"
    );
    assert_eq!(echo["uri"], "/h2?x=1");
    assert_eq!(echo["body_bytes"], 7);
    assert_eq!(received(&echo, "host"), [idgate.public.to_string()]);
    assert!(received(&echo, "x-idgate-user-id").is_empty());
}

const BIG: u64 = 200 * 1024 * 1024;

#[tokio::test]
async fn large_bodies_stream_both_ways_in_bounded_memory() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr));

    // Upload: 200 MiB generated on the fly, never held whole by anyone.
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = (BIG / chunk.len() as u64) as usize;
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(idgate.url("/upload"))
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let resp = client.request(req).await.expect("upload");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["body_bytes"], BIG, "upstream received every byte");

    // Download: 200 MiB streamed from the upstream, counted frame by frame.
    let resp = client
        .request(
            http::Request::get(idgate.url(&format!("/bytes/{BIG}")))
                .body(http_body_util::Empty::<Bytes>::new().boxed())
                .unwrap(),
        )
        .await
        .expect("download");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            got += data.len() as u64;
        }
    }
    assert_eq!(got, BIG);

    let peak = idgate.peak_rss_kib();
    assert!(
        peak < 64 * 1024,
        "idgate peak RSS {peak} KiB is not under 64 MiB"
    );
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr));
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", idgate.public))
        .await
        .expect("websocket handshake through idgate");
    assert_eq!(resp.status(), 101);
    for text in ["hello", "second message", &"x".repeat(100_000)] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("not an error");
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_upstream_is_504_in_the_clients_format() {
    // A port with nothing listening.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let idgate = Idgate::start(&public_all(dead));
    let json = get(&idgate.url("/x"), &[("accept", "application/json")]).await;
    assert_eq!(json.status, 502);
    assert_eq!(json.json()["error"], "upstream_unavailable");
    let html = get(&idgate.url("/x"), &[("accept", "text/html")]).await;
    assert_eq!(html.status, 502);
    assert!(
        html.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(html.text().contains("<html>") || html.text().contains("<!doctype html>"));
    assert!(
        idgate.wait_for_log("upstream request failed"),
        "{}",
        idgate.logs()
    );

    let up = TestUpstream::start().await;
    let slow = Idgate::start(&config(
        up.addr,
        "upstream_timeout = \"300ms\"",
        "[access]\npublic_paths = [\"/\"]\n",
    ));
    let r = get(&slow.url("/sleep/2000"), &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    // A fast answer through the same instance is unaffected.
    assert_eq!(get(&slow.url("/sleep/10"), &[]).await.status, 200);

    let metrics = get(&slow.admin_url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("idgate_upstream_errors_total{kind=\"timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn request_id_is_forwarded_kept_and_returned() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr));
    let r = get(&idgate.url("/r"), &[]).await;
    let echo = r.json();
    let sent = received(&echo, "x-request-id");
    assert_eq!(sent.len(), 1);
    assert_eq!(r.headers["x-request-id"], sent[0].as_str());
    assert!(
        idgate.wait_for_log(&sent[0]),
        "the access log carries the id"
    );

    // A client's own id is not idgate's (SPEC §10): the upstream, the response and the
    // log carry idgate's id, and the client's only as `client_request_id`.
    let r = get(&idgate.url("/r"), &[("x-request-id", "trace-abc-123")]).await;
    let own = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(own, "trace-abc-123");
    assert_eq!(received(&r.json(), "x-request-id"), [own.as_str()]);
    let needle = format!("\"request_id\":\"{own}\",\"client_request_id\":\"trace-abc-123\"");
    assert!(idgate.wait_for_log(&needle), "{}", idgate.logs());

    // From a trusted proxy the id is kept, so a trace crosses hops.
    let trusted = Idgate::start(&config(
        up.addr,
        "trusted_proxies = [\"127.0.0.0/8\"]",
        "[access]\npublic_paths = [\"/\"]\n",
    ));
    let r = get(&trusted.url("/r"), &[("x-request-id", "trace-abc-123")]).await;
    assert_eq!(received(&r.json(), "x-request-id"), ["trace-abc-123"]);
    assert_eq!(r.headers["x-request-id"], "trace-abc-123");
}

#[tokio::test]
async fn secrets_in_headers_are_never_logged() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr));
    get(
        &idgate.url("/s?token=QUERYSECRET"),
        &[
            ("authorization", "Bearer AUTHSECRET"),
            ("cookie", "idgate_session=COOKIESECRET; other=OTHERSECRET"),
            ("x-idgate-assertion", "ASSERTIONSECRET"),
        ],
    )
    .await;
    assert!(
        idgate.wait_for_log("\"/s\""),
        "the request was logged: {}",
        idgate.logs()
    );
    let logs = idgate.logs();
    for secret in [
        "AUTHSECRET",
        "COOKIESECRET",
        "OTHERSECRET",
        "ASSERTIONSECRET",
        "QUERYSECRET",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the log");
    }
}

#[tokio::test]
async fn ambiguous_paths_are_refused_before_routing() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&config(
        up.addr,
        "",
        "[access]\npublic_paths = [\"/public\"]\n",
    ));
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/..%2Fadmin",
        "/public\\..\\admin",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
        let resp = raw(idgate.public, &req).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
    }
    assert_eq!(get(&idgate.url("/public/ok"), &[]).await.status, 200);
}

#[tokio::test]
async fn only_public_paths_are_forwarded_without_a_session() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&config(
        up.addr,
        "",
        "[access]\npublic_paths = [\"/public\"]\napi_paths = [\"/api\"]\n",
    ));
    assert_eq!(get(&idgate.url("/public/x"), &[]).await.status, 200);
    // `/publicity` is not under `/public`.
    let r = get(&idgate.url("/publicity"), &[("accept", "*/*")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthenticated");
    // Reserved paths are idgate's, never the app's, however they are spelled.
    for path in ["/_idgate/anything", "/%5Fidgate/anything"] {
        let r = get(&idgate.url(path), &[]).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not_found");
    }
}

#[tokio::test]
async fn browser_navigation_is_sent_to_login_and_apis_get_401_json() {
    let up = TestUpstream::start().await;
    let dir = env!("CARGO_MANIFEST_DIR");
    let tenant = format!(
        "[access]\napi_paths = [\"/api\"]\n[[tenants]]\nid = \"acme\"\n[tenants.saml]\n\
         idp_entity_id = \"https://idp.example.com\"\nidp_sso_url = \"https://idp.example.com/sso\"\n\
         idp_certificate = \"file:{dir}/config/examples/example-idp.crt\"\n"
    );
    let idgate = Idgate::start(&config(up.addr, "", &tenant));
    let nav = get(
        &idgate.url("/reports?y=2024&q=a%20b"),
        &[("accept", "text/html")],
    )
    .await;
    assert_eq!(nav.status, 302);
    assert_eq!(
        nav.headers["location"],
        "/_idgate/saml/acme/login?return_to=/reports%3Fy%3D2024%26q%3Da%2520b"
    );
    let nav2 = get(&idgate.url("/x"), &[("sec-fetch-mode", "navigate")]).await;
    assert_eq!(nav2.status, 302);
    let api = get(&idgate.url("/api/items"), &[("accept", "text/html")]).await;
    assert_eq!(api.status, 401);
    assert_eq!(
        api.json()["login_url"],
        "/_idgate/saml/acme/login?return_to=/api/items"
    );
    let xhr = get(&idgate.url("/x"), &[("accept", "*/*")]).await;
    assert_eq!(xhr.status, 401);
    let post = send("POST", &idgate.url("/x"), &[("accept", "text/html")], "a").await;
    assert_eq!(post.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_closed_ones_replaced() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr));
    // One client connection lands on one worker, whose pool reuses one upstream
    // connection for sequential requests.
    let stream = tokio::net::TcpStream::connect(idgate.public).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut ports = std::collections::BTreeSet::new();
    for _ in 0..20 {
        sender.ready().await.unwrap();
        let req = http::Request::get("/conn")
            .header("host", "app")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        ports.insert(String::from_utf8(body.to_vec()).unwrap());
    }
    assert_eq!(
        ports.len(),
        1,
        "sequential requests reuse one upstream connection: {ports:?}"
    );
    // The upstream closing connections never surfaces as an error.
    for _ in 0..10 {
        assert_eq!(get(&idgate.url("/close"), &[]).await.status, 200);
        assert_eq!(get(&idgate.url("/conn"), &[]).await.status, 200);
    }
}

#[tokio::test]
async fn request_trailers_and_h2c_upgrades_are_not_passed_on() {
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&public_all(up.addr));
    // A chunked body whose trailer would set an identity header.
    let req = "POST /t HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\
        Trailer: X-Idgate-User-Id\r\nConnection: close\r\n\r\n\
        5\r\nhello\r\n0\r\nX-Idgate-User-Id: admin\r\n\r\n";
    // Sent straight to the app, the trailer arrives (so this test can tell).
    let direct = raw(up.addr, req).await;
    let direct: serde_json::Value =
        serde_json::from_str(direct.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(direct["trailers"][0][0], "x-idgate-user-id", "{direct}");
    let resp = raw(idgate.public, req).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    // The echo answers with Content-Length; the body is the JSON description.
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echo["body_bytes"], 5);
    assert_eq!(echo["trailers"], serde_json::json!([]), "{echo}");
    assert!(received(&echo, "trailer").is_empty());

    // An h2c upgrade is not tunnelled: the upstream sees a plain request.
    let req = "GET /plain HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
        Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    let resp = raw(idgate.public, req).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let echo = raw_json(&resp);
    assert!(received(&echo, "upgrade").is_empty(), "{echo}");
}

/// An upstream speaking raw bytes: each request (bodiless, as the tests send) gets the
/// reply scripted for its path, and every connection it accepts is counted. It is how
/// the tests reach framings that no well-behaved server library would produce.
struct ScriptedUpstream {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedUpstream {
    /// `script` maps a request line to the bytes to answer and what to do next.
    async fn start(script: fn(&str) -> (&'static str, After)) -> ScriptedUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut drop_next = false;
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        if drop_next {
                            return;
                        }
                        let (reply, after) = script(head.lines().next().unwrap_or(""));
                        if after == After::CloseUnanswered
                            || stream.write_all(reply.as_bytes()).await.is_err()
                            || after == After::Close
                        {
                            return;
                        }
                        if after == After::LateStray {
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            let stray = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen";
                            if stream.write_all(stray.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        drop_next = after == After::DropNextRequest;
                    }
                });
            }
        });
        ScriptedUpstream {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a scripted upstream does after its reply.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// Waits for the next request.
    Keep,
    /// Closes the connection.
    Close,
    /// Reads the next request and closes without answering: a keep-alive timeout that
    /// fires just as a request arrives.
    DropNextRequest,
    /// Closes without writing the reply at all.
    CloseUnanswered,
    /// After a pause, writes a stray response that belongs to no request.
    LateStray,
}

/// One client connection (so one idgate worker and one upstream pool) for a sequence of
/// requests; a response whose body fails comes back as `Err`.
struct OneConnection(hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>);

impl OneConnection {
    async fn open(addr: std::net::SocketAddr) -> OneConnection {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        OneConnection(sender)
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
    ) -> Result<(u16, http::HeaderMap, String), String> {
        self.0.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "app")
            .header("accept", "application/json")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let resp = self.0.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((
            parts.status.as_u16(),
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }
}

fn scripted(request_line: &str) -> (&'static str, After) {
    let path = request_line.split(' ').nth(1).unwrap_or("");
    if request_line.starts_with("HEAD ") {
        // A body anyway, as careless apps do; idgate must not take it for a response.
        return (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            After::Keep,
        );
    }
    match path {
        "/length" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            After::Keep,
        ),
        "/chunked" => (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Idgate-User-Id\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Idgate-User-Id: admin\r\n\r\n",
            After::Keep,
        ),
        "/interim" => (
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            After::Keep,
        ),
        "/until-close" => ("HTTP/1.1 200 OK\r\n\r\nall of it", After::Close),
        "/smuggle" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            After::Keep,
        ),
        "/two-lengths" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            After::Keep,
        ),
        "/extra" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
             HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen",
            After::Keep,
        ),
        "/drop-next" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            After::DropNextRequest,
        ),
        "/late-stray" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            After::LateStray,
        ),
        "/unanswered" => ("", After::CloseUnanswered),
        "/truncated" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
            After::Close,
        ),
        // No `Connection: close`, so idgate pools the connection that is then closed.
        "/silent-close" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            After::Close,
        ),
        _ => (
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            After::Keep,
        ),
    }
}

#[tokio::test]
async fn bodiless_requests_are_framed_strictly_and_connections_reused_only_when_clean() {
    let up = ScriptedUpstream::start(scripted).await;
    let idgate = Idgate::start(&public_all(up.addr));
    let mut c = OneConnection::open(idgate.public).await;

    // Length, chunked (extensions and trailers dropped) and interim 1xx responses share
    // one upstream connection.
    let (status, _, body) = c.send("GET", "/length").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"));
    let (status, headers, body) = c.send("GET", "/chunked").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello world"));
    assert!(headers.get("trailer").is_none(), "{headers:?}");
    assert!(headers.get("x-idgate-user-id").is_none(), "{headers:?}");
    let (status, _, body) = c.send("GET", "/interim").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(up.connections(), 1, "clean responses keep the connection");
    // After HEAD (to which this app wrongly sends a body) the connection is not reused.
    let (status, headers, body) = c.send("HEAD", "/length").await.unwrap();
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(headers["content-length"], "5");
    assert_eq!(c.send("GET", "/length").await.unwrap().2, "hello");
    assert_eq!(up.connections(), 2);

    // Bytes beyond the response are never taken for the next answer: that connection
    // is dropped and the next request gets its own response on a new one.
    let (status, _, body) = c.send("GET", "/extra").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"));
    let (status, _, body) = c.send("GET", "/length").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"), "no stray response");
    assert_eq!(up.connections(), 3);

    // A body delimited by the close is read to the end and its connection not reused.
    let (status, _, body) = c.send("GET", "/until-close").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "all of it"));
    assert_eq!(c.send("GET", "/length").await.unwrap().2, "hello");
    assert_eq!(up.connections(), 4);

    // A pooled connection the upstream closed in silence is replaced, unseen.
    assert_eq!(c.send("GET", "/silent-close").await.unwrap().2, "ok");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _, body) = c.send("GET", "/length").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"));

    // A request that meets a connection closing under it is sent again on a new one
    // (GET and HEAD are idempotent), unseen by the client.
    let before = up.connections();
    assert_eq!(c.send("GET", "/drop-next").await.unwrap().2, "ok");
    let (status, _, body) = c.send("GET", "/length").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"));
    assert_eq!(up.connections(), before + 1);

    // Bytes that arrive on an idle pooled connection are never read as a response.
    let before = up.connections();
    assert_eq!(c.send("GET", "/late-stray").await.unwrap().2, "ok");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, body) = c.send("GET", "/length").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"), "no stray response");
    assert_eq!(up.connections(), before + 1);

    // A request is sent at most twice, and never again after a fresh connection fails.
    let before = up.connections();
    let (status, _, body) = c.send("GET", "/unanswered").await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        up.connections(),
        before + 1,
        "one retry, on a new connection"
    );
    assert!(
        idgate.wait_for_log("upstream closed the connection before responding"),
        "{}",
        idgate.logs()
    );

    // Ambiguous framing is a 502 in the client's format, logged with the reason.
    for (path, reason) in [
        ("/smuggle", "both Transfer-Encoding and Content-Length"),
        ("/two-lengths", "conflicting Content-Length values"),
    ] {
        let (status, _, body) = c.send("GET", path).await.unwrap();
        assert_eq!(status, 502, "{path}: {body}");
        assert!(body.contains("upstream_unavailable"), "{body}");
        assert!(idgate.wait_for_log(reason), "{path}: {}", idgate.logs());
    }

    // A body cut short reaches the client as a failed response, never as a whole one.
    let mut c = OneConnection::open(idgate.public).await;
    let cut = c.send("GET", "/truncated").await;
    assert!(cut.is_err(), "{cut:?}");
    assert!(
        idgate.wait_for_log("upstream closed the connection mid-message"),
        "{}",
        idgate.logs()
    );
}

/// `upstream_timeout` counts from the end of the upload (SPEC §7): a 14-byte body sent
/// at a byte per 250 ms (over three times the timeout) is answered by the upstream, not
/// cut off with 504; an upstream that stays silent after a complete body still is.
#[tokio::test]
async fn slow_uploads_are_not_upstream_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&config(
        up.addr,
        "upstream_timeout = \"1s\"",
        "[access]\npublic_paths = [\"/\"]\n",
    ));
    let mut conn = tokio::net::TcpStream::connect(idgate.public).await.unwrap();
    conn.write_all(
        b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 14\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let start = std::time::Instant::now();
    for b in b"fourteen bytes" {
        tokio::time::sleep(Duration::from_millis(250)).await;
        conn.write_all(&[*b]).await.unwrap();
    }
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(3));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let echo = raw_json(&answer);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_bytes"], 14, "{echo}");

    // A complete body and a silent upstream: 504 after the timeout.
    let start = std::time::Instant::now();
    let r = send("POST", &idgate.url("/sleep/5000"), &[], "body").await;
    assert_eq!(r.status, 504);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "504 after {took:?}"
    );
    // An upload that stops arriving is ended (408) after the same time without progress,
    // rather than holding the app's connection forever.
    let mut conn = tokio::net::TcpStream::connect(idgate.public).await.unwrap();
    conn.write_all(
        b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 14\r\nConnection: close\r\n\r\nfour",
    )
    .await
    .unwrap();
    let start = std::time::Instant::now();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut answer))
        .await
        .expect("answered")
        .ok();
    let took = start.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(idgate.wait_for_log("refused: request body stalled"));
}

/// SPEC §7: the default `[access].strip_headers`, the URL-override and remote-user
/// families.
const STEERING: [&str; 15] = [
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Original-URI",
    "X-Forwarded-Uri",
    "X-Forwarded-Path",
    "X-Remote-User",
    "Remote-User",
    "X-Remote-Email",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Groups",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
];
/// Client-address headers kept only from a `trusted_proxies` peer.
const TRUSTED_ONLY: [&str; 7] = [
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Server",
    "X-Real-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "X-Cluster-Client-IP",
];
/// Framing and hop-by-hop names that have a `_` spelling (the `-` spellings have their
/// meaning and their own tests).
const FRAMING: [&str; 4] = [
    "Transfer-Encoding",
    "Content-Length",
    "Keep-Alive",
    "Proxy-Connection",
];

/// Exact, lower, upper and `_` forms; `underscore_only` keeps the `_` forms alone.
fn spellings(name: &str, underscore_only: bool) -> Vec<String> {
    let mut out = vec![
        name.replace('-', "_"),
        name.to_ascii_lowercase().replace('-', "_"),
        name.to_ascii_uppercase().replace('-', "_"),
    ];
    if !underscore_only {
        out.extend([
            name.to_owned(),
            name.to_ascii_lowercase(),
            name.to_ascii_uppercase(),
        ]);
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    H1,
    H2,
}

/// Sends one request carrying `name: steer-1` and returns the head the upstream got.
async fn probe(
    idgate: &Idgate,
    up: &HeadRecorder,
    h2: &Client<HttpConnector, http_body_util::Full<Bytes>>,
    proto: Proto,
    post: bool,
    name: &str,
) -> String {
    up.clear();
    let body = if post { "hello" } else { "" };
    let method = if post { "POST" } else { "GET" };
    match proto {
        Proto::H1 => {
            let length = if post { "Content-Length: 5\r\n" } else { "" };
            let req = format!(
                "{method} /probe HTTP/1.1\r\nHost: app\r\n{name}: steer-1\r\n{length}\
                 Connection: close\r\n\r\n{body}"
            );
            let resp = raw(idgate.public, &req).await;
            assert!(
                resp.starts_with("HTTP/1.1 200"),
                "{proto:?} {method} {name}: {resp}"
            );
        }
        Proto::H2 => {
            let req = http::Request::builder()
                .method(method)
                .uri(idgate.url("/probe"))
                .header(name, "steer-1")
                .body(http_body_util::Full::new(Bytes::from(body)))
                .unwrap();
            let resp = h2.request(req).await.expect("h2 request");
            assert_eq!(resp.status(), 200, "{proto:?} {method} {name}");
        }
    }
    let heads = up.heads();
    assert_eq!(heads.len(), 1, "{proto:?} {method} {name}: {heads:?}");
    heads.into_iter().next().unwrap()
}

#[tokio::test]
async fn headers_that_steer_the_app_never_reach_it_in_any_spelling() {
    let up = HeadRecorder::start().await;
    let untrusted = Idgate::start(&public_all(up.addr));
    let trusted = Idgate::start(&config(
        up.addr,
        "trusted_proxies = [\"127.0.0.0/8\"]",
        "[access]\npublic_paths = [\"/\"]\n",
    ));
    let h2 = h2_client();
    // (name, underscore spellings only, kept from an untrusted peer, kept from a trusted one)
    let mut table: Vec<(&str, bool, bool, bool)> = Vec::new();
    table.extend(STEERING.iter().map(|n| (*n, false, false, false)));
    table.extend(TRUSTED_ONLY.iter().map(|n| (*n, false, false, true)));
    table.extend(FRAMING.iter().map(|n| (*n, true, false, false)));
    let mut checked = 0;
    for (peer, idgate) in [("untrusted", &untrusted), ("trusted", &trusted)] {
        for &(name, underscore_only, kept_untrusted, kept_trusted) in &table {
            let kept = if peer == "trusted" {
                kept_trusted
            } else {
                kept_untrusted
            };
            for spelled in spellings(name, underscore_only) {
                for proto in [Proto::H1, Proto::H2] {
                    // A bodiless GET takes the direct path, a POST with a body hyper's.
                    for post in [false, true] {
                        let head = probe(idgate, &up, &h2, proto, post, &spelled).await;
                        let found: Vec<(String, String)> = head_fields(&head)
                            .into_iter()
                            // The real `Content-Length` of a POST is no spoof.
                            .filter(|(n, _)| {
                                folded(n) == folded(name) && (!underscore_only || n.contains('_'))
                            })
                            .collect();
                        let what = format!("{peer} {proto:?} post={post} {spelled}");
                        if kept {
                            assert_eq!(found.len(), 1, "{what}: {head}");
                            assert_eq!(found[0].1, "steer-1", "{what}: {head}");
                        } else {
                            assert!(found.is_empty(), "{what} reached the app:\n{head}");
                        }
                        if post {
                            assert!(
                                head.to_ascii_lowercase().contains("content-length: 5\r\n"),
                                "{what}: the body's own framing is kept:\n{head}"
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    println!("{checked} spellings checked");
}

#[tokio::test]
async fn strip_headers_is_configurable() {
    let up = HeadRecorder::start().await;
    let idgate = Idgate::start(
        &public_all(up.addr).replace("[access]\n", "[access]\nstrip_headers = [\"X-Steer-Me\"]\n"),
    );
    let h2 = h2_client();
    for proto in [Proto::H1, Proto::H2] {
        let head = probe(&idgate, &up, &h2, proto, false, "X_STEER_ME").await;
        assert!(!folded(&head).contains("x-steer-me"), "{head}");
        // The list replaces the default: an app that wants X-Remote-User from a trusted
        // auth proxy can have it.
        let head = probe(&idgate, &up, &h2, proto, true, "X-Remote-User").await;
        assert!(folded(&head).contains("x-remote-user: steer-1"), "{head}");
    }
}

/// Waits (up to 5 s) until `needle` occurs more than `before` times in the log.
fn logged_again(idgate: &Idgate, needle: &str, before: usize) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if idgate.logs().matches(needle).count() > before {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[tokio::test]
async fn ambiguous_requests_are_refused_before_anything_reaches_the_app() {
    let up = HeadRecorder::start().await;
    let idgate = Idgate::start(&config(
        up.addr,
        "",
        "[access]\npublic_paths = [\"/public\"]\n",
    ));
    let get = |path: &str, fields: &str| {
        format!("GET {path} HTTP/1.1\r\n{fields}Connection: close\r\n\r\n")
    };
    let post = |fields: &str| {
        format!(
            "POST /public/x HTTP/1.1\r\nHost: app\r\n{fields}Connection: close\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
        )
    };
    let host = "Host: app\r\n";
    // (request, status, what the log line says)
    let h1: Vec<(String, u16, &str)> = vec![
        (
            get("/public/x", "Host: a.example\r\nHost: b.example\r\n"),
            400,
            "two Host headers",
        ),
        (get("/public/x", ""), 400, "HTTP/1.1 request without Host"),
        (
            get("/public/x", "Host: evil.example/x\r\n"),
            400,
            "Host is not",
        ),
        (
            get("/public/x", "Host: user@evil.example\r\n"),
            400,
            "Host is not",
        ),
        (
            get("/public/x", "Host: a.example:port\r\n"),
            400,
            "Host is not",
        ),
        (
            get("/public/x", "Host: a.example:99999\r\n"),
            400,
            "Host is not",
        ),
        (
            get("/public/x", "Host: a.example, b.example\r\n"),
            400,
            "Host is not",
        ),
        (get("/public/x", "Host: [::1\r\n"), 400, "Host is not"),
        (get("/public/x", "Host: \r\n"), 400, "Host is not"),
        (
            get("http://a.example/public/x", "Host: b.example\r\n"),
            400,
            "disagrees with Host",
        ),
        (
            post("Transfer-Encoding: gzip, chunked\r\n"),
            501,
            "Transfer-Encoding",
        ),
        (
            post("Transfer-Encoding: chunked, chunked\r\n"),
            501,
            "Transfer-Encoding",
        ),
        (
            post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
            501,
            "Transfer-Encoding",
        ),
        // hyper's parser refuses these itself (RFC 9112 §6.3), before the gateway.
        (post("Transfer-Encoding: identity\r\n"), 400, ""),
        (
            "POST /public/x HTTP/1.0\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
                .to_owned(),
            400,
            "",
        ),
    ];
    let paths = [
        "/public/..%20/admin",
        "/public/%20../admin",
        "/public/.%09./admin",
        "/public/.%20/admin",
        "/public/..%0B/admin",
        "/public/..%C2%A0/admin",
        "/public/%252e%252e/admin",
        "/public/%252E%252E/admin",
        "/public/..%252fadmin",
        "/public/..%252Fadmin",
        "/public/%C0%AE%C0%AE/admin",
        "/public/%E0%80%AE%E0%80%AE/admin",
        "/public/%F0%80%80%AE/admin",
        "/public/%ff",
        "/public/%00",
        "/public/%01x",
        "/public/%1f",
        "/public/%1F",
        "/public/%7f",
        "/public/%0d%0aX-Injected:%201",
    ];
    let mut cases = h1;
    for p in paths {
        cases.push((get(p, host), 400, "refused: ambiguous request path"));
    }
    for (req, status, why) in &cases {
        let before = idgate.logs().matches(why).count();
        let resp = raw(idgate.public, req).await;
        let expected = format!("HTTP/1.1 {status}");
        assert!(resp.starts_with(&expected), "{req:?}: {resp}");
        if !why.is_empty() {
            assert!(
                logged_again(&idgate, why, before),
                "no log line for {req:?}"
            );
        }
        assert!(
            up.heads().is_empty(),
            "{req:?} reached the app: {:?}",
            up.heads()
        );
    }

    // HTTP/2: a :path that is not ASCII origin-form, and an :authority that a Host field
    // contradicts.
    let h2 = h2_client();
    let base = format!("http://{}", idgate.public);
    let h2_cases: Vec<(http::Request<http_body_util::Full<Bytes>>, &str)> = vec![
        (
            http::Request::get(format!("{base}/public/\u{e9}"))
                .body(Default::default())
                .unwrap(),
            "not ASCII origin-form",
        ),
        (
            http::Request::get(format!("{base}?q=1"))
                .body(Default::default())
                .unwrap(),
            "not ASCII origin-form",
        ),
        (
            http::Request::get(format!("{base}/public/x"))
                .header("host", "other.example")
                .body(Default::default())
                .unwrap(),
            "disagrees with Host",
        ),
        (
            http::Request::get(format!("{base}/public/x"))
                .header("host", idgate.public.to_string())
                .header("host", idgate.public.to_string())
                .body(Default::default())
                .unwrap(),
            "two Host headers",
        ),
        (
            http::Request::get(format!("{base}/public/..%20/admin"))
                .body(Default::default())
                .unwrap(),
            "refused: ambiguous request path",
        ),
    ];
    for (req, why) in h2_cases {
        let what = format!("{:?} {:?}", req.uri(), req.headers());
        let before = idgate.logs().matches(why).count();
        let resp = h2.request(req).await.expect("h2 request");
        assert_eq!(resp.status(), 400, "{what}");
        assert!(logged_again(&idgate, why, before), "no log line for {what}");
        assert!(up.heads().is_empty(), "{what} reached the app");
    }

    // What is unambiguous still goes through, on both protocols.
    let ok = raw(idgate.public, &post("Transfer-Encoding: chunked\r\n")).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let ok = raw(
        idgate.public,
        &get("/public/a%20b/...", "Host: App.Example:8080\r\n"),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let ok = raw(idgate.public, &get("/public/x", "Host: [::1]:80\r\n")).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let resp = h2
        .request(
            http::Request::get(format!("{base}/public/caf%C3%A9"))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.heads().len(), 4);
}
