//! `make bench` (`cargo bench --bench acs`): SAML logins per second through the ACS.
//!
//! Every login is a complete `POST /_idgate/saml/{tenant}/acs` of an IdP-initiated
//! Response whose Assertion is signed (RSA-SHA256, 2048-bit key): parse, signature check,
//! replay cache, provisioning lookups, a new session in Redis and the `Set-Cookie`. Two
//! forms of the same Response are measured:
//! - **plain**: the signed Assertion as it is;
//! - **encrypted**: the same signed Assertion encrypted to the SP certificate (AES-128-GCM
//!   under RSA-OAEP-MGF1P, a 2048-bit SP key), what Shibboleth IdP 4+ sends by default;
//! - **base-plain**, when `BENCH_IDGATE_BASELINE` names another idgate binary (say, the
//!   release build of the commit before encrypted assertions): plain logins through it, so
//!   that the change is measured against its predecessor in the same run.
//!
//! Responses are signed and encrypted beforehand by the `xmlsec1` CLI (not by idgate),
//! each with its own Assertion ID because the replay cache refuses a second use; that work
//! is outside the timed part. Logins cycle through 100 users, all provisioned in a warm-up
//! pass, so the timed logins are returning users (the steady state). Targets run in
//! interleaved rounds; medians and ratios are taken within the run, because the machine is
//! shared and noisy.
//!
//! Knobs: `BENCH_ROUNDS` (default 3), `BENCH_LOGINS` (per target and round, default 600),
//! `BENCH_CLIENTS` (concurrent keep-alive clients, default 8), `BENCH_IDGATE_BASELINE`.

mod common;
#[path = "../tests/support/saml.rs"]
mod saml;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

const USERS: usize = 100;
const IDP_ENTITY: &str = "https://idp.bench.example/metadata";

/// `openssl` with `args`, for the SAML fixtures module (it calls `super::openssl`).
fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed by `make bench`");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One idgate under test and the tenant whose ACS it is measured on.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    tenant: &'static str,
    encrypted: bool,
    _proc: Arc<Proc>,
}

impl Target {
    fn acs(&self) -> String {
        format!("http://{}/_idgate/saml/{}/acs", self.addr, self.tenant)
    }
}

/// `count` ready-to-post form bodies for `target`, made on every core with xmlsec1.
fn responses(
    target: &Target,
    count: usize,
    offset: usize,
    idp: &saml::TestIdp,
    sp_cert: &Path,
) -> Vec<Bytes> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let acs = target.acs();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let acs = acs.clone();
                scope.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|i| {
                            let user = (offset + i) % USERS;
                            let mut spec =
                                saml::ResponseSpec::new(IDP_ENTITY, &acs, &audience(&acs), None)
                                    .attr("uid", &format!("bench-user-{user}"))
                                    .attr("email", &format!("user{user}@bench.example"));
                            spec.name_id = format!("user{user}@bench.example");
                            // Made minutes before they are posted; the default 5 minutes
                            // would be too tight for a long run.
                            spec.not_on_or_after = 3600;
                            let xml = if target.encrypted {
                                let assertion = saml::signed_assertion(&spec, idp);
                                let enc = saml::encrypt_assertion(
                                    &assertion,
                                    sp_cert,
                                    &saml::Encryption::mgf1p(saml::AES128_GCM),
                                );
                                saml::response_around(&spec, &enc)
                            } else {
                                saml::signed_assertion_response(&spec, idp)
                            };
                            // Base64's own three specials are all a form body must escape.
                            let b64 = saml::b64(&xml)
                                .replace('+', "%2B")
                                .replace('/', "%2F")
                                .replace('=', "%3D");
                            let body = format!("SAMLResponse={b64}");
                            (i, Bytes::from(body))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, Bytes)> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, b)| b).collect()
    })
}

/// The SP entity id idgate derives for a tenant: the metadata URL next to its ACS.
fn audience(acs: &str) -> String {
    acs.replace("/acs", "/metadata")
}

/// Posts every body with `clients` concurrent clients; returns logins per second.
async fn run(client: &Client, target: &Target, bodies: Vec<Bytes>, clients: usize) -> f64 {
    let bodies = Arc::new(std::sync::Mutex::new(bodies));
    let count = bodies.lock().unwrap().len();
    let url = target.acs();
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, bodies, url) = (client.clone(), bodies.clone(), url.clone());
            tokio::spawn(async move {
                loop {
                    let Some(body) = bodies.lock().unwrap().pop() else {
                        return;
                    };
                    let req = hyper::Request::post(&url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(Full::new(body))
                        .unwrap();
                    let resp = client.request(req).await.expect("ACS answers");
                    let (status, headers) = (resp.status(), resp.headers().clone());
                    let text = resp.into_body().collect().await.unwrap().to_bytes();
                    // A refused login would make the figure meaningless: stop loudly.
                    assert!(
                        (status == 302 || status == 303) && headers.contains_key("set-cookie"),
                        "login refused: {status} {}",
                        String::from_utf8_lossy(&text)
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rounds = env_or("BENCH_ROUNDS", 3) as usize;
    let logins = env_or("BENCH_LOGINS", 600) as usize;
    let clients = env_or("BENCH_CLIENTS", 8) as usize;
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let idp = saml::TestIdp::new("bench-idp");
    let sp_key = dir.path().join("sp.key");
    let sp_cert = dir.path().join("sp.crt");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-sha256",
        "-days",
        "2",
        "-nodes",
        "-keyout",
        &sp_key.display().to_string(),
        "-out",
        &sp_cert.display().to_string(),
        "-subj",
        "/CN=bench-sp",
    ]);
    // The ACS redirects after a login; no request reaches the upstream.
    let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tenant = |id: &str, extra: &str| {
        format!(
            "[[tenants]]\nid = \"{id}\"\n[tenants.saml]\nidp_entity_id = \"{IDP_ENTITY}\"\n\
             idp_sso_url = \"https://idp.bench.example/sso\"\nidp_certificate = \"file:{}\"\n\
             allow_idp_initiated = true\nwant_assertions_signed = true\n{extra}",
            idp.cert.display()
        )
    };
    let key = std::process::Command::new(env!("CARGO_BIN_EXE_idgate"))
        .arg("keygen")
        .output()
        .expect("idgate keygen");
    let signing_key = dir.path().join("signing.pem");
    std::fs::write(&signing_key, &key.stdout).unwrap();
    let common = |port: u16| {
        format!(
            "public_url = \"http://127.0.0.1:{port}\"\n[store]\nurl = \"redis://127.0.0.1:{redis_port}/\"\nkey_prefix = \"acs{port}\"\n\
             [identity]\nsigning_key = \"file:{}\"\n",
            signing_key.display()
        )
    };
    // start_idgate_bin picks the listen port itself; public_url must name it, so the
    // config is written for a port chosen here and passed through `rest`.
    let start = |bin: &str, name: &str, rest: &dyn Fn(u16) -> String| -> (Proc, SocketAddr) {
        let port = free_port();
        let (proc, addr, _) = start_idgate_on(bin, port, upstream, dir.path(), name, &rest(port));
        (proc, addr)
    };
    let current = env!("CARGO_BIN_EXE_idgate");
    let (proc, addr) = start(current, "current", &|port| {
        common(port)
            + &tenant("plain", "")
            + &tenant(
                "enc",
                &format!(
                    "sp_key = \"file:{}\"\nsp_certificate = \"file:{}\"\n",
                    sp_key.display(),
                    sp_cert.display()
                ),
            )
    });
    let proc = Arc::new(proc);
    let mut targets = vec![
        Target {
            name: "plain",
            addr,
            tenant: "plain",
            encrypted: false,
            _proc: proc.clone(),
        },
        Target {
            name: "encrypted",
            addr,
            tenant: "enc",
            encrypted: true,
            _proc: proc.clone(),
        },
    ];
    if let Ok(bin) = std::env::var("BENCH_IDGATE_BASELINE") {
        let (proc, addr) = start(&bin, "baseline", &|port| {
            common(port) + &tenant("plain", "")
        });
        targets.push(Target {
            name: "base-plain",
            addr,
            tenant: "plain",
            encrypted: false,
            _proc: Arc::new(proc),
        });
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();

    eprintln!(
        "signing {} responses with xmlsec1 …",
        targets.len() * (USERS + rounds * logins)
    );
    let made = Instant::now();
    let warmup: Vec<Vec<Bytes>> = targets
        .iter()
        .map(|t| responses(t, USERS, 0, &idp, &sp_cert))
        .collect();
    let timed: Vec<Vec<Vec<Bytes>>> = (0..rounds)
        .map(|_| {
            targets
                .iter()
                .map(|t| responses(t, logins, 0, &idp, &sp_cert))
                .collect()
        })
        .collect();
    eprintln!("… in {:.0} s", made.elapsed().as_secs_f64());

    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    rt.block_on(async {
        for (t, bodies) in targets.iter().zip(warmup) {
            run(&client, t, bodies, clients).await;
        }
        for (round, per_target) in timed.into_iter().enumerate() {
            for (i, (t, bodies)) in targets.iter().zip(per_target).enumerate() {
                let rate = run(&client, t, bodies, clients).await;
                eprintln!("round {round} {:<11} {rate:8.0} logins/s", t.name);
                rates[i].push(rate);
            }
        }
    });

    println!("\nACS logins/s, median of {rounds} rounds of {logins} logins, {clients} clients:");
    let medians: Vec<f64> = rates.iter().map(|r| median(r.clone())).collect();
    for (t, m) in targets.iter().zip(&medians) {
        println!("  {:<11} {m:8.0}", t.name);
    }
    println!("  encrypted/plain    {:.2}x", medians[1] / medians[0]);
    if targets.len() > 2 {
        println!("  plain/base-plain   {:.2}x", medians[0] / medians[2]);
    }
}
