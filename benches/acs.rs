//! `make bench` (`cargo bench --bench acs`): SAML logins per second through the ACS, and
//! against Apache httpd with mod_auth_mellon on the same kind of signed responses.
//!
//! Every idgate login is a complete `POST /_idgate/saml/{tenant}/acs` of an IdP-initiated
//! Response whose Assertion is signed (RSA-SHA256, 2048-bit key): parse, signature check,
//! replay cache, provisioning lookups, a new session in Redis and the `Set-Cookie`. The
//! targets:
//! - **plain**: the signed Assertion as it is;
//! - **encrypted**: the same signed Assertion encrypted to the SP certificate (AES-128-GCM
//!   under RSA-OAEP-MGF1P, a 2048-bit SP key), what Shibboleth IdP 4+ sends by default;
//! - **mellon**: Apache httpd (mpm_event, as many processes as idgate has workers) with
//!   mod_auth_mellon as the SP, configured as its README shows (the SP and IdP
//!   directives in a `<Location>`), the same IdP and the same responses as **plain**
//!   except for its own ACS URL and entity id, posted to its `/mellon/postResponse`; a
//!   login counts when mellon answers 303 with its `mellon-cookie` (signature check by
//!   lasso, replay check, a new session in its shared-memory cache);
//! - **mellon-tuned**: the same with `SSL_CERT_FILE` naming an empty file. Directives in
//!   a `<Location>` are merged for every request, so mellon builds a new lasso server
//!   for every login, and xmlsec's keys manager loads OpenSSL's default CA bundle into
//!   it twice (`X509_STORE_set_default_paths`; about 90 % of mellon's CPU per login in a
//!   `perf` profile on Debian 12). Mellon needs none of those CAs (the IdP's key is
//!   pinned by its metadata), and the directives are refused outside a section, so an
//!   empty bundle is the best an operator can do; idgate is judged against this one.
//! - **base-plain**, when `BENCH_IDGATE_BASELINE` names another idgate binary (say, the
//!   release build of the commit before encrypted assertions): plain logins through it, so
//!   that the change is measured against its predecessor in the same run.
//!
//! Before anything is timed, each target is sent one Response whose signed content was
//! altered after signing, and must refuse it: a target that does not verify would make
//! its figure meaningless.
//!
//! Responses are signed and encrypted beforehand by the `xmlsec1` CLI (not by idgate or
//! mellon), each with its own Assertion ID because both replay caches refuse a second
//! use; that work is outside the timed part. Logins cycle through 100 users, all
//! provisioned in a warm-up pass, so the timed logins are returning users (the steady
//! state). Targets run in interleaved rounds; medians and ratios are taken within the
//! run, because the machine is shared and noisy. The CPU time each login costs the
//! server (from `/proc`: idgate with its Redis, Apache with its children) is printed
//! beside it.
//!
//! Knobs: `BENCH_ROUNDS` (default 3), `BENCH_LOGINS` (per target and round, default 600),
//! `BENCH_CLIENTS` (concurrent keep-alive clients, default 8), `BENCH_TARGETS` (a
//! comma-separated subset of the target names), `BENCH_IDGATE_WORKERS` (see
//! `benches/common`; Apache gets as many processes), `BENCH_IDGATE_BASELINE`.

mod common;
#[path = "../tests/support/saml.rs"]
mod saml;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
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
/// Where Debian's apache2 and libapache2-mod-auth-mellon put the server and its modules.
const APACHE: &str = "/usr/sbin/apache2";
const APACHE_MODULES: &str = "/usr/lib/apache2/modules";
/// mod_auth_mellon's endpoints live under this path (`MellonEndpointPath`).
const MELLON_ENDPOINT: &str = "/mellon";
/// Threads per Apache process: enough that the clients never wait for a free thread, as
/// they never wait for a task in idgate.
const APACHE_THREADS: usize = 16;

/// `openssl` with `args`, for the SAML fixtures module (it calls `super::openssl`).
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed by `make bench`");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One SP under test: where its ACS is, the entity id it expects as the Audience, and
/// how its Responses are made.
struct Target {
    name: &'static str,
    acs: String,
    audience: String,
    encrypted: bool,
    /// The name of the session cookie a successful login sets, when checked.
    cookie: Option<&'static str>,
    /// The processes whose CPU time a login costs: the server, and Redis behind idgate.
    pids: Vec<u32>,
    _proc: Arc<Proc>,
}

/// One Response for `target` logging in `user`, as xmlsec1 signs (and encrypts) it.
fn response(target: &Target, user: usize, idp: &saml::TestIdp, sp_cert: &Path) -> String {
    let mut spec = saml::ResponseSpec::new(IDP_ENTITY, &target.acs, &target.audience, None)
        .attr("uid", &format!("bench-user-{user}"))
        .attr("email", &format!("user{user}@bench.example"));
    spec.name_id = format!("user{user}@bench.example");
    // Made minutes before they are posted; the default 5 minutes would be too tight for
    // a long run.
    spec.not_on_or_after = 3600;
    if target.encrypted {
        let assertion = saml::signed_assertion(&spec, idp);
        let enc = saml::encrypt_assertion(
            &assertion,
            sp_cert,
            &saml::Encryption::mgf1p(saml::AES128_GCM),
        );
        saml::response_around(&spec, &enc)
    } else {
        saml::signed_assertion_response(&spec, idp)
    }
}

/// The HTTP-POST binding's form body for `xml`.
fn form(xml: &str) -> Bytes {
    // Base64's own three specials are all a form body must escape.
    let b64 = saml::b64(xml)
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    Bytes::from(format!("SAMLResponse={b64}"))
}

/// `count` ready-to-post form bodies for `target`, made on every core with xmlsec1.
fn responses(target: &Target, count: usize, idp: &saml::TestIdp, sp_cert: &Path) -> Vec<Bytes> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|i| (i, form(&response(target, i % USERS, idp, sp_cert))))
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

/// One POST of `body` to `target`'s ACS: the status, and the Set-Cookie headers.
async fn post(client: &Client, target: &Target, body: Bytes) -> (u16, Vec<String>, Bytes) {
    let req = hyper::Request::post(&target.acs)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(body))
        .unwrap();
    let resp = client.request(req).await.expect("ACS answers");
    let status = resp.status().as_u16();
    let cookies = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    (status, cookies, text)
}

/// Posts every body with `clients` concurrent clients; returns logins per second.
async fn run(client: &Client, target: &Arc<Target>, bodies: Vec<Bytes>, clients: usize) -> f64 {
    let bodies = Arc::new(std::sync::Mutex::new(bodies));
    let count = bodies.lock().unwrap().len();
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, bodies, target) = (client.clone(), bodies.clone(), target.clone());
            tokio::spawn(async move {
                loop {
                    let Some(body) = bodies.lock().unwrap().pop() else {
                        return;
                    };
                    let (status, cookies, text) = post(&client, &target, body).await;
                    let named = match target.cookie {
                        Some(name) => cookies.iter().any(|c| c.starts_with(&format!("{name}="))),
                        None => !cookies.is_empty(),
                    };
                    // A refused login would make the figure meaningless: stop loudly.
                    assert!(
                        (status == 302 || status == 303) && named,
                        "{}: login refused: {status} {cookies:?} {}",
                        target.name,
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
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The base64 body of a PEM certificate, as metadata carries it.
fn pem_body(cert: &Path) -> String {
    std::fs::read_to_string(cert)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

/// SAML metadata's `KeyDescriptor` for signing with `cert`.
fn key_descriptor(cert: &Path) -> String {
    format!(
        r#"<KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></KeyDescriptor>"#,
        pem_body(cert)
    )
}

/// Apache httpd with mod_auth_mellon on a free loopback port, configured from files in
/// `dir/name`: the bench IdP's metadata (its signing certificate), the SP's own
/// metadata, key and certificate (the same SP key as idgate's encrypted tenant), and a
/// protected location. `workers` processes of `APACHE_THREADS` threads (mpm_event).
/// `tuned` gives it an empty default CA bundle (see the module doc). Returns the
/// server, its ACS URL and its entity id.
fn start_mellon(
    dir: &Path,
    name: &str,
    tuned: bool,
    idp: &saml::TestIdp,
    sp_key: &Path,
    sp_cert: &Path,
    workers: usize,
) -> (Proc, String, String) {
    for needed in [
        APACHE.to_owned(),
        format!("{APACHE_MODULES}/mod_auth_mellon.so"),
    ] {
        assert!(
            Path::new(&needed).exists(),
            "{needed} is missing: `make bench` installs apache2 and libapache2-mod-auth-mellon"
        );
    }
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}{MELLON_ENDPOINT}");
    let (acs, entity) = (format!("{base}/postResponse"), format!("{base}/metadata"));
    let d = dir.join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("no-cas.pem"), "").unwrap();
    std::fs::copy(sp_key, d.join("sp.key")).unwrap();
    std::fs::copy(sp_cert, d.join("sp.crt")).unwrap();
    let md = r#"xmlns="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#""#;
    let protocol = "urn:oasis:names:tc:SAML:2.0:protocol";
    std::fs::write(
        d.join("idp.xml"),
        format!(
            r#"<EntityDescriptor {md} entityID="{IDP_ENTITY}"><IDPSSODescriptor protocolSupportEnumeration="{protocol}">{}<SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp.bench.example/sso"/></IDPSSODescriptor></EntityDescriptor>"#,
            key_descriptor(&idp.cert)
        ),
    )
    .unwrap();
    // WantAssertionsSigned, as idgate's tenants are configured.
    std::fs::write(
        d.join("sp.xml"),
        format!(
            r#"<EntityDescriptor {md} entityID="{entity}"><SPSSODescriptor AuthnRequestsSigned="true" WantAssertionsSigned="true" protocolSupportEnumeration="{protocol}">{}<AssertionConsumerService index="0" isDefault="true" Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="{acs}"/></SPSSODescriptor></EntityDescriptor>"#,
            key_descriptor(sp_cert)
        ),
    )
    .unwrap();
    // Apache refuses to serve as root; its children then run as www-data and read the
    // keys and metadata (mellon loads them on the first request), so they own the files.
    let root = is_root();
    let user = if root {
        "User www-data\nGroup www-data\n"
    } else {
        ""
    };
    let p = d.display();
    let modules: String = [
        ("mpm_event_module", "mod_mpm_event.so"),
        ("authn_core_module", "mod_authn_core.so"),
        ("authz_core_module", "mod_authz_core.so"),
        ("authz_user_module", "mod_authz_user.so"),
        ("auth_mellon_module", "mod_auth_mellon.so"),
    ]
    .iter()
    .map(|(name, file)| format!("LoadModule {name} {APACHE_MODULES}/{file}\n"))
    .collect();
    // The processes are all started at once and never stopped for being idle, so no
    // round pays for Apache growing or shrinking its pool; logging is off (warn), as for
    // idgate. Mellon keeps its default session cache of 100 entries: like idgate's
    // Redis, it holds the sessions of the 100 returning users.
    let threads = workers * APACHE_THREADS;
    let conf = format!(
        "ServerRoot {p}\nServerName 127.0.0.1\nListen 127.0.0.1:{port}\n\
         PidFile {p}/httpd.pid\nErrorLog {p}/error.log\nLogLevel warn\n{modules}{user}\
         StartServers {workers}\nServerLimit {workers}\nThreadsPerChild {APACHE_THREADS}\n\
         MaxRequestWorkers {threads}\nMinSpareThreads {APACHE_THREADS}\nMaxSpareThreads {threads}\n\
         KeepAlive On\nMaxKeepAliveRequests 0\nMutex file:{p} default\n\
         MellonCacheSize 100\nMellonLockFile {p}/mellon.lock\n\
         <Location />\n  MellonEndpointPath {MELLON_ENDPOINT}\n\
           MellonSPPrivateKeyFile {p}/sp.key\n  MellonSPCertFile {p}/sp.crt\n\
           MellonSPMetadataFile {p}/sp.xml\n  MellonIdPMetadataFile {p}/idp.xml\n\
           MellonDefaultLoginPath /app\n</Location>\n\
         <Location /app>\n  AuthType Mellon\n  MellonEnable auth\n  Require valid-user\n</Location>\n"
    );
    let conf_path = d.join("httpd.conf");
    std::fs::write(&conf_path, conf).unwrap();
    if root {
        // The temp dir is private (0700); www-data must pass through it to its own dir.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        let ok = Command::new("chown")
            .args(["-R", "www-data:www-data"])
            .arg(&d)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown www-data {p}");
    }
    let mut cmd = Command::new(APACHE);
    if tuned {
        cmd.env("SSL_CERT_FILE", d.join("no-cas.pem"));
    }
    let child = cmd
        .arg("-f")
        .arg(&conf_path)
        .args(["-D", "FOREGROUND"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start apache2");
    // SIGTERM to the parent, which ends its children; SIGKILL would orphan them.
    let proc = Proc::gentle(child);
    wait_for_port(format!("127.0.0.1:{port}").parse().unwrap(), "apache2");
    (proc, acs, entity)
}

fn main() {
    let rounds = env_or("BENCH_ROUNDS", 3).max(1) as usize;
    let logins = env_or("BENCH_LOGINS", 600) as usize;
    let clients = env_or("BENCH_CLIENTS", 8) as usize;
    let only: Option<Vec<String>> = std::env::var("BENCH_TARGETS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));
    let dir = tempfile::tempdir().unwrap();
    let (redis, redis_port) = start_redis(dir.path());
    let redis_pid = redis.pid();
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
    let key = Command::new(env!("CARGO_BIN_EXE_idgate"))
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
    // start_idgate_on is given the listen port: public_url must name it, so the config is
    // written for a port chosen here and passed through `rest`.
    let start = |bin: &str, name: &str, rest: &dyn Fn(u16) -> String| -> (Proc, SocketAddr) {
        let port = free_port();
        let (proc, addr, _) = start_idgate_on(bin, port, upstream, dir.path(), name, &rest(port));
        (proc, addr)
    };
    let idgate_target =
        |name: &'static str, addr: SocketAddr, tenant: &str, encrypted: bool, proc: &Arc<Proc>| {
            let acs = format!("http://{addr}/_idgate/saml/{tenant}/acs");
            Arc::new(Target {
                name,
                audience: audience(&acs),
                acs,
                encrypted,
                cookie: None,
                pids: vec![proc.pid(), redis_pid],
                _proc: proc.clone(),
            })
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
        idgate_target("plain", addr, "plain", false, &proc),
        idgate_target("encrypted", addr, "enc", true, &proc),
    ];
    for (name, tuned) in [("mellon", false), ("mellon-tuned", true)] {
        if !wanted(name) {
            continue;
        }
        let (proc, acs, entity) = start_mellon(
            dir.path(),
            name,
            tuned,
            &idp,
            &sp_key,
            &sp_cert,
            idgate_workers(),
        );
        targets.push(Arc::new(Target {
            name,
            acs,
            audience: entity,
            encrypted: false,
            cookie: Some("mellon-cookie"),
            pids: vec![proc.pid()],
            _proc: Arc::new(proc),
        }));
    }
    if let Ok(bin) = std::env::var("BENCH_IDGATE_BASELINE") {
        let (proc, addr) = start(&bin, "baseline", &|port| {
            common(port) + &tenant("plain", "")
        });
        targets.push(idgate_target(
            "base-plain",
            addr,
            "plain",
            false,
            &Arc::new(proc),
        ));
    }
    targets.retain(|t| wanted(t.name));
    assert!(
        !targets.is_empty(),
        "BENCH_TARGETS names none of the targets"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();

    // Every target must refuse a Response altered after signing (here the signed uid).
    rt.block_on(async {
        for t in &targets {
            let xml = response(t, 0, &idp, &sp_cert);
            let tampered = if t.encrypted {
                // The signed Assertion is inside the ciphertext (the last CipherValue, after
                // the wrapped key's): alter a byte of it.
                let at = xml.rfind("<xenc:CipherValue>").expect("ciphertext") + 40;
                let mut bytes = xml.into_bytes();
                bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
                String::from_utf8(bytes).unwrap()
            } else {
                xml.replacen("bench-user-0<", "bench-user-1<", 1)
            };
            let (status, cookies, _) = post(&client, t, form(&tampered)).await;
            assert!(
                (400..500).contains(&status),
                "{}: a tampered Response was not refused: {status} {cookies:?}",
                t.name
            );
            eprintln!("{}: a tampered Response is refused ({status})", t.name);
        }
    });

    eprintln!(
        "signing {} responses with xmlsec1 …",
        targets.len() * (USERS + rounds * logins)
    );
    let made = Instant::now();
    let warmup: Vec<Vec<Bytes>> = targets
        .iter()
        .map(|t| responses(t, USERS, &idp, &sp_cert))
        .collect();
    let timed: Vec<Vec<Vec<Bytes>>> = (0..rounds)
        .map(|_| {
            targets
                .iter()
                .map(|t| responses(t, logins, &idp, &sp_cert))
                .collect()
        })
        .collect();
    eprintln!("… in {:.0} s", made.elapsed().as_secs_f64());

    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut cpu_ms: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    rt.block_on(async {
        for (t, bodies) in targets.iter().zip(warmup) {
            run(&client, t, bodies, clients).await;
        }
        for (round, per_target) in timed.into_iter().enumerate() {
            for (i, (t, bodies)) in targets.iter().zip(per_target).enumerate() {
                let n = bodies.len().max(1) as f64;
                let cpu_now = || -> Option<u64> { t.pids.iter().map(|p| cpu_micros(*p)).sum() };
                let cpu_before = cpu_now();
                let rate = run(&client, t, bodies, clients).await;
                let cpu = match (cpu_before, cpu_now()) {
                    (Some(b), Some(a)) => a.saturating_sub(b) as f64 / 1000.0 / n,
                    _ => f64::NAN,
                };
                eprintln!(
                    "round {round} {:<12} {rate:8.0} logins/s  cpu {cpu:6.2} ms/login",
                    t.name
                );
                rates[i].push(rate);
                cpu_ms[i].push(cpu);
            }
        }
    });

    println!("\nACS logins/s, median of {rounds} rounds of {logins} logins, {clients} clients:");
    println!(
        "  {:<12} {:>8} {:>14}",
        "target", "logins/s", "cpu ms/login"
    );
    let medians: Vec<f64> = rates.iter().map(|r| median(r.clone())).collect();
    for ((t, m), cpu) in targets.iter().zip(&medians).zip(&cpu_ms) {
        println!("  {:<12} {m:8.0} {:>14.2}", t.name, median(cpu.clone()));
    }
    let index = |name: &str| targets.iter().position(|t| t.name == name);
    // The ratio of the medians, and the median of the ratios within each round (which
    // pairs measurements taken close together, so it moves less with the machine's load).
    let ratio = |label: &str, a: &str, b: &str, note: &str| {
        let (Some(a), Some(b)) = (index(a), index(b)) else {
            return;
        };
        let per_round = median(rates[a].iter().zip(&rates[b]).map(|(x, y)| x / y).collect());
        println!(
            "ratio {label} {:.2}x  (per round {per_round:.2}x; {:.0} vs {:.0} logins/s; cpu/login {:.2}x){note}",
            medians[a] / medians[b],
            medians[a],
            medians[b],
            median(cpu_ms[a].clone()) / median(cpu_ms[b].clone()),
        );
    };
    ratio("encrypted/plain", "encrypted", "plain", "");
    ratio(
        "idgate-plain/mellon",
        "plain",
        "mellon",
        "   (mellon as its README configures it)",
    );
    ratio(
        "idgate-plain/mellon-tuned",
        "plain",
        "mellon-tuned",
        "   (mellon without the per-login CA bundle load; target >= 2.00x)",
    );
    ratio(
        "plain/base-plain",
        "plain",
        "base-plain",
        "   (this build against BENCH_IDGATE_BASELINE)",
    );
}
