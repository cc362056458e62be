//! `make bench` (`cargo bench --bench scim`): SCIM provisioning on a Redis store.
//!
//! - **creates/s**: `POST /Users` from `BENCH_SCIM_CLIENTS` concurrent keep-alive clients
//!   (default 16), `BENCH_SCIM_CREATES` users (default 5000), in a tenant of its own;
//!   the baseline in the same run is the rate of authenticated `GET
//!   /ServiceProviderConfig` (the same path through idgate with no store work).
//! - **userName eq latency**: `GET /Users?filter=userName eq "…"` for random existing
//!   users, one at a time, `BENCH_SCIM_QUERIES` (default 2000) each, with 1,000 users in
//!   the tenant and again with 100,000. The ratio of the two medians shows whether the
//!   filter is served by an index (about 1) or a scan (about 100).
//!
//! The tenant is filled to 100,000 through the library (one Lua script per user), which
//! is what a SCIM create does minus HTTP, to keep the run short.

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::json;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn call(
    client: &Client,
    method: &str,
    url: &str,
    token: &str,
    body: Option<String>,
) -> (u16, Bytes) {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        req = req.header("content-type", "application/scim+json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    match client.request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, body)
        }
        Err(_) => (0, Bytes::new()),
    }
}

/// Runs `total` requests from `clients` tasks; returns requests per second.
async fn rate<F, Fut>(clients: usize, total: usize, make: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let make = Arc::new(make);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let make = make.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                make(i).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn lookup_latencies(
    client: &Client,
    base: &str,
    token: &str,
    users: usize,
    queries: usize,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(queries);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..queries {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = (seed % users as u64) as usize;
        let filter = format!("userName eq \"user-{i}@bench.example\"");
        let url = format!(
            "{base}/Users?{}",
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("filter", &filter)
                .finish()
        );
        let start = Instant::now();
        let (status, body) = call(client, "GET", &url, token, None).await;
        out.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["totalResults"], 1, "user-{i} not found: {v}");
    }
    out.sort_by(f64::total_cmp);
    out
}

async fn fill(directory: &idgate::directory::Directory, tenant: &str, from: usize, to: usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(from));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let directory = directory.clone();
        let next = next.clone();
        let tenant = tenant.to_owned();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= to {
                    break;
                }
                let mut u = idgate::directory::model::User::new(
                    format!("id-{i:07}"),
                    idgate::directory::now(),
                );
                u.user_name = Some(format!("user-{i}@bench.example"));
                u.email = Some(format!("user-{i}@bench.example"));
                u.given_name = Some("Bench".into());
                u.family_name = Some(format!("User {i}"));
                directory
                    .create_user(&tenant, &u)
                    .await
                    .expect("create user");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let clients = env_or("BENCH_SCIM_CLIENTS", 16) as usize;
    let creates = env_or("BENCH_SCIM_CREATES", 5000) as usize;
    let queries = env_or("BENCH_SCIM_QUERIES", 2000) as usize;
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let key = std::process::Command::new(env!("CARGO_BIN_EXE_idgate"))
        .arg("keygen")
        .output()
        .unwrap();
    std::fs::write(dir.path().join("signing.pem"), &key.stdout).unwrap();
    let (token, hash) = idgate::scim::token::generate();
    let tenant = |id: &str| {
        format!(
            "[[tenants]]\nid = \"{id}\"\n[tenants.saml]\nidp_entity_id = \"https://idp.example.com\"\n\
             idp_sso_url = \"https://idp.example.com/sso\"\n\
             idp_certificate = \"file:{}/config/examples/example-idp.crt\"\n[tenants.scim]\ntoken = \"{hash}\"\n",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let rest = format!(
        "[store]\nurl = \"redis://127.0.0.1:{redis_port}\"\n[identity]\nsigning_key = \"file:{}/signing.pem\"\n{}{}",
        dir.path().display(),
        tenant("load"),
        tenant("bench"),
    );
    // Nothing is proxied here; the upstream address only has to parse.
    let (_idgate, addr, _) =
        start_idgate("127.0.0.1:9".parse().unwrap(), dir.path(), "scim", &rest);
    let cfg_text = std::fs::read_to_string(dir.path().join("scim.toml")).unwrap();
    let cfg = idgate::config::Config::from_toml(&cfg_text, dir.path()).expect("bench config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = idgate::store::Store::open(&cfg.store).unwrap();
        let directory = idgate::directory::Directory::new(store);
        let client: Client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
        let load = format!("http://{addr}/_idgate/scim/load/v2");
        let bench = format!("http://{addr}/_idgate/scim/bench/v2");

        // Warm up connections and code paths.
        for _ in 0..200 {
            call(&client, "GET", &format!("{load}/ServiceProviderConfig"), &token, None).await;
        }
        let (c, t, b) = (client.clone(), token.clone(), load.clone());
        let baseline = rate(clients, creates, move |_| {
            let (c, t, b) = (c.clone(), t.clone(), b.clone());
            async move {
                let (status, _) = call(&c, "GET", &format!("{b}/ServiceProviderConfig"), &t, None).await;
                assert_eq!(status, 200);
            }
        })
        .await;
        let (c, t, b) = (client.clone(), token.clone(), load.clone());
        let create_rate = rate(clients, creates, move |i| {
            let (c, t, b) = (c.clone(), t.clone(), b.clone());
            async move {
                let body = json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": format!("new-{i}@bench.example"),
                    "externalId": format!("ext-{i}"),
                    "name": {"givenName": "New", "familyName": format!("User {i}")},
                    "emails": [{"value": format!("new-{i}@bench.example"), "type": "work", "primary": true}],
                    "active": true,
                });
                let (status, body) = call(&c, "POST", &format!("{b}/Users"), &t, Some(body.to_string())).await;
                assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
            }
        })
        .await;

        fill(&directory, "bench", 0, 1_000).await;
        let small = lookup_latencies(&client, &bench, &token, 1_000, queries).await;
        let started = Instant::now();
        fill(&directory, "bench", 1_000, 100_000).await;
        let filled_in = started.elapsed();
        let large = lookup_latencies(&client, &bench, &token, 100_000, queries).await;

        let (p50s, p99s) = (percentile(&small, 0.5), percentile(&small, 0.99));
        let (p50l, p99l) = (percentile(&large, 0.5), percentile(&large, 0.99));
        println!();
        println!("SCIM on Redis ({clients} clients, {creates} creates, {queries} lookups per size)");
        println!(
            "  creates: {create_rate:>8.0} users/s   (authenticated GET /ServiceProviderConfig in the same run: {baseline:.0}/s; ratio {:.2})",
            create_rate / baseline
        );
        println!("  userName eq,   1,000 users: p50 {p50s:.3} ms  p99 {p99s:.3} ms");
        println!("  userName eq, 100,000 users: p50 {p50l:.3} ms  p99 {p99l:.3} ms");
        println!(
            "  ratio 100k/1k: p50 {:.2}  p99 {:.2}   (target <= 1.5: an index, not a scan)",
            p50l / p50s,
            p99l / p99s
        );
        println!("  (99,000 users written through the library in {:.1} s)", filled_in.as_secs_f64());
    });
}
