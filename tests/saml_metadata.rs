//! IdP metadata from a URL (`idp_metadata_url`), end to end: a local HTTP server plays
//! the IdP's metadata endpoint, responses are signed by the `xmlsec1` CLI, and idgate
//! runs in process against it. Each scenario changes what the endpoint serves and
//! watches which signing keys idgate trusts afterwards.

mod support;

#[path = "support/saml.rs"]
mod saml_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idgate::config::Config;
use saml_support::*;
use support::*;

const IDP: &str = "https://idp.example.com/metadata";
const ACS: &str = "http://127.0.0.1/_idgate/saml/acme/acs";
const SP: &str = "http://127.0.0.1/_idgate/saml/acme/metadata";
const METADATA_ELEMENT: &str = "urn:oasis:names:tc:SAML:2.0:metadata:EntityDescriptor";

/// The base64 body of a PEM certificate file.
fn cert_body(idp: &TestIdp) -> String {
    std::fs::read_to_string(&idp.cert)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

/// IdP metadata listing `signing` as signing certificates; `attrs` go on the root
/// element (validUntil, cacheDuration). `cacheDuration="PT1S"` unless `attrs` sets one,
/// so that idgate fetches again every second.
fn metadata(signing: &[&TestIdp], attrs: &str) -> String {
    metadata_with(signing, attrs, "")
}

fn metadata_with(signing: &[&TestIdp], attrs: &str, signature: &str) -> String {
    let keys: String = signing
        .iter()
        .map(|idp| {
            format!(
                r#"<md:KeyDescriptor use="signing"><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"#,
                cert_body(idp)
            )
        })
        .collect();
    let cache = if attrs.contains("cacheDuration") {
        ""
    } else {
        r#" cacheDuration="PT1S""#
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" ID="_md1" entityID="{IDP}"{cache}{attrs}>{signature}<md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">{keys}<md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp.example.com/sso"/></md:IDPSSODescriptor></md:EntityDescriptor>"#
    )
}

/// The metadata signed as a whole (enveloped signature on the root) by `signer`.
fn signed_metadata(signing: &[&TestIdp], signer: &TestIdp) -> String {
    xmlsec_sign(
        &metadata_with(signing, "", &signature_template("_md1")),
        &signer.key,
        &signer.cert,
        METADATA_ELEMENT,
    )
}

/// The IdP's metadata endpoint: answers whatever the test last told it to.
struct MetadataServer {
    answer: Arc<Mutex<(u16, String)>>,
    recorder: Recorder,
}

impl MetadataServer {
    async fn start(xml: String) -> MetadataServer {
        let answer = Arc::new(Mutex::new((200, xml)));
        let a = answer.clone();
        let recorder = Recorder::start(move |_| {
            let (status, body) = a.lock().unwrap().clone();
            (
                status,
                vec![("content-type".into(), "application/samlmetadata+xml".into())],
                body,
            )
        })
        .await;
        MetadataServer { answer, recorder }
    }

    fn serve(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn url(&self) -> String {
        format!("{}/metadata", self.recorder.url())
    }
}

/// idgate with one tenant, `acme`, whose IdP metadata comes from `url`. IdP-initiated
/// logins are allowed, so each check is one POST.
async fn start(url: &str, saml_extra: &str, extra: &str) -> (idgate::Running, TestUpstream) {
    let up = TestUpstream::start().await;
    let text = config(
        up.addr,
        "",
        &format!(
            "{extra}\n[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_metadata_url = \"{url}\"\n\
             idp_metadata_refresh = \"5s\"\nallow_idp_initiated = true\n{saml_extra}\n"
        ),
    );
    let app = idgate::App::new(Config::from_toml(&text, std::path::Path::new("/")).unwrap())
        .expect("app");
    (app.start().await.unwrap(), up)
}

/// Posts an unsolicited response signed by `idp`; the status idgate answers.
async fn login_signed_by(app: &idgate::Running, idp: &TestIdp) -> u16 {
    let spec = ResponseSpec::new(IDP, ACS, SP, None);
    let xml = signed_assertion_response(&spec, idp);
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("SAMLResponse", &b64(&xml));
    send(
        "POST",
        &format!("http://{}/_idgate/saml/acme/acs", app.public_addr()),
        &[("content-type", "application/x-www-form-urlencoded")],
        form.finish(),
    )
    .await
    .status
    .as_u16()
}

/// Polls `check` for up to 15 s (idgate refreshes every second here).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// `idgate_saml_metadata_refreshes_total{tenant="acme",result}`.
async fn refreshes(app: &idgate::Running, result: &str) -> u64 {
    let text = get(&format!("http://{}/metrics", app.admin_addr()), &[])
        .await
        .text();
    text.lines()
        .find(|l| {
            l.starts_with("idgate_saml_metadata_refreshes_total{")
                && l.contains(&format!("result=\"{result}\""))
                && l.contains("tenant=\"acme\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

async fn login_page(app: &idgate::Running) -> Reply {
    get(
        &format!("http://{}/_idgate/saml/acme/login", app.public_addr()),
        &[("accept", "text/html")],
    )
    .await
}

#[tokio::test]
async fn login_works_with_url_metadata_and_follows_a_certificate_rollover() {
    let old = TestIdp::new("idp-2025");
    let new = TestIdp::new("idp-2026");
    let server = MetadataServer::start(metadata(&[&old], "")).await;
    let (app, _up_app) = start(&server.url(), "", "").await;
    eventually("the metadata is fetched", || async {
        refreshes(&app, "ok").await > 0
    })
    .await;
    assert_eq!(
        login_page(&app).await.status,
        302,
        "SP-initiated login starts"
    );
    assert_eq!(login_signed_by(&app, &old).await, 303);
    assert_eq!(
        login_signed_by(&app, &new).await,
        403,
        "a key the metadata does not list is not trusted"
    );

    // The IdP announces its next key: both are accepted at once.
    server.serve(200, metadata(&[&old, &new], ""));
    eventually("the new key is trusted", || async {
        login_signed_by(&app, &new).await == 303
    })
    .await;
    assert_eq!(
        login_signed_by(&app, &old).await,
        303,
        "the old key still is"
    );

    // The old key is retired: responses it signs are refused from then on.
    server.serve(200, metadata(&[&new], ""));
    eventually("the old key is no longer trusted", || async {
        login_signed_by(&app, &old).await == 403
    })
    .await;
    assert_eq!(login_signed_by(&app, &new).await, 303);
    app.shutdown().await;
}

#[tokio::test]
async fn refused_documents_keep_the_last_good_copy() {
    let good = TestIdp::new("idp-good");
    let intruder = TestIdp::new("idp-intruder");
    let server = MetadataServer::start(metadata(&[&good], "")).await;
    let admin_token = format!(
        "admin_token = \"sha256:{}\"",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"metadata-admin"))
    );
    let (app, _up_app) = start(&server.url(), "", &admin_token).await;
    eventually("the metadata is fetched", || async {
        refreshes(&app, "ok").await > 0
    })
    .await;
    assert_eq!(login_signed_by(&app, &good).await, 303);
    // The admin API says the metadata is current, and since when.
    let metadata_state = || async {
        let r = get(
            &format!("http://{}/admin/v1/tenants", app.admin_addr()),
            &[("authorization", "Bearer metadata-admin")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["tenants"][0]["saml"].clone()
    };
    let fresh = metadata_state().await;
    assert_eq!(fresh["metadata"], "ok", "{fresh}");
    let had_at = fresh["refreshed_at"].as_i64().expect("refreshed_at");
    assert!((idgate::directory::now() - had_at).abs() < 30, "{fresh}");
    let mut stale_since = None;

    let past =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(60));
    let padding = format!("<!--{}-->", "x".repeat(1 << 20));
    let cases = [
        ("error", 500, "IdP down for maintenance".to_owned()),
        (
            "expired",
            200,
            metadata(&[&intruder], &format!(r#" validUntil="{past}""#)),
        ),
        (
            "invalid",
            200,
            metadata(&[&intruder], "").replace(
                "</md:EntityDescriptor>",
                &format!("{padding}</md:EntityDescriptor>"),
            ),
        ),
        (
            "invalid",
            200,
            metadata(&[&intruder], "").replacen(
                "<md:EntityDescriptor",
                "<!DOCTYPE md:EntityDescriptor [<!ENTITY x \"y\">]><md:EntityDescriptor",
                1,
            ),
        ),
    ];
    for (result, status, body) in cases {
        let before = refreshes(&app, result).await;
        server.serve(status, body);
        eventually(&format!("a refresh counted as {result}"), || async {
            refreshes(&app, result).await > before
        })
        .await;
        assert_eq!(
            login_signed_by(&app, &good).await,
            303,
            "after a refresh refused as {result}, the last good copy is still used"
        );
        assert_eq!(
            login_signed_by(&app, &intruder).await,
            403,
            "a refused document's certificates are never trusted ({result})"
        );
        // Stale since the last good copy (which a refresh between the reading above
        // and the first bad document may have renewed), and no later.
        let state = metadata_state().await;
        assert_eq!(state["metadata"], "stale", "after {result}: {state}");
        let at = state["refreshed_at"].as_i64().expect("refreshed_at");
        assert!(at >= had_at, "after {result}: {state}");
        let last_good = *stale_since.get_or_insert(at);
        assert_eq!(at, last_good, "after {result}: {state}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn metadata_must_carry_the_signers_signature() {
    let federation = TestIdp::new("federation");
    let forger = TestIdp::new("forger");
    let good = TestIdp::new("idp-good");
    let intruder = TestIdp::new("idp-intruder");
    let server = MetadataServer::start(signed_metadata(&[&good], &federation)).await;
    // Plain http to a non-loopback name would be allowed too, with a signer; the
    // recorder listens on loopback anyway.
    let (app, _up_app) = start(
        &server.url(),
        &format!(
            "idp_metadata_signer = \"file:{}\"",
            federation.cert.display()
        ),
        "",
    )
    .await;
    eventually("the signed metadata is taken", || async {
        refreshes(&app, "ok").await > 0
    })
    .await;
    assert_eq!(login_signed_by(&app, &good).await, 303);

    for (what, body) in [
        (
            "signed by another key",
            signed_metadata(&[&intruder], &forger),
        ),
        ("unsigned", metadata(&[&intruder], "")),
        (
            "signed, then altered",
            signed_metadata(&[&good], &federation)
                .replace(&cert_body(&good), &cert_body(&intruder)),
        ),
    ] {
        let before = refreshes(&app, "signature").await;
        server.serve(200, body);
        eventually(&format!("metadata {what} refused"), || async {
            refreshes(&app, "signature").await > before
        })
        .await;
        assert_eq!(login_signed_by(&app, &good).await, 303, "{what}");
        assert_eq!(login_signed_by(&app, &intruder).await, 403, "{what}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_replica_started_while_the_url_is_down_uses_the_stored_copy() {
    let idp = TestIdp::new("idp");
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\nurl = \"{}\"\n[identity]\nsigning_key = \"file:{}\"\n",
        redis.url(),
        signing_key_file(keys.path(), "EdDSA").display()
    );
    let server = MetadataServer::start(metadata(&[&idp], "")).await;
    let (first, _up_first) = start(&server.url(), "", &store).await;
    eventually("the first replica fetched the metadata", || async {
        refreshes(&first, "ok").await > 0
    })
    .await;
    first.shutdown().await;

    server.serve(503, "down".into());
    let (second, _up_second) = start(&server.url(), "", &store).await;
    eventually(
        "the second replica serves logins from the stored copy",
        || async { login_signed_by(&second, &idp).await == 303 },
    )
    .await;
    eventually("the failed fetch is counted", || async {
        refreshes(&second, "error").await > 0
    })
    .await;
    assert_eq!(
        refreshes(&second, "ok").await,
        0,
        "the URL was down all along"
    );
    second.shutdown().await;

    // Without a store that holds a copy, the tenant cannot serve logins yet, and says so.
    let (alone, _up_alone) = start(&server.url(), "", "").await;
    eventually("the failed fetch is counted", || async {
        refreshes(&alone, "error").await > 0
    })
    .await;
    let page = login_page(&alone).await;
    assert_eq!(page.status, 503);
    assert!(
        page.text().contains("Sign-in is not available yet"),
        "{}",
        page.text()
    );
    assert_eq!(login_signed_by(&alone, &idp).await, 503);
    // The SP's own metadata needs nothing from the IdP, and an IdP admin often needs it
    // first (to create the application whose metadata URL idgate is then given).
    let sp_metadata = get(
        &format!("http://{}/_idgate/saml/acme/metadata", alone.public_addr()),
        &[],
    )
    .await;
    assert_eq!(sp_metadata.status, 200, "{}", sp_metadata.text());
    assert_eq!(
        sp_metadata.headers["content-type"],
        "application/samlmetadata+xml"
    );
    let text = sp_metadata.text();
    assert!(text.contains(&format!("entityID=\"{SP}\"")), "{text}");
    assert!(text.contains(&format!("Location=\"{ACS}\"")), "{text}");
    // Rendered once per configuration: a validUntil would go stale while it is served.
    assert!(!text.contains("validUntil"), "{text}");

    // When the IdP comes back, so do logins.
    server.serve(200, metadata(&[&idp], ""));
    eventually("logins work once the IdP is back", || async {
        login_signed_by(&alone, &idp).await == 303
    })
    .await;
    alone.shutdown().await;
}

// Multi-threaded: the log waits block their thread, and the metadata server must keep
// answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_logs_why_it_keeps_the_last_good_copy() {
    let idp = TestIdp::new("idp");
    let server = MetadataServer::start(metadata(&[&idp], "")).await;
    let up = TestUpstream::start().await;
    let gate = Idgate::start(&config(
        up.addr,
        "",
        &format!(
            "[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_metadata_url = \"{}\"\n\
             idp_metadata_refresh = \"5s\"\n",
            server.url()
        ),
    ));
    assert!(
        gate.wait_for_log("IdP metadata refreshed"),
        "{}",
        gate.logs()
    );
    server.serve(500, "oops".into());
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if gate.logs().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    assert!(wait_for("keeping the last good copy"), "{}", gate.logs());
    assert!(gate.logs().contains("answered 500"), "{}", gate.logs());
    let past =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(60));
    server.serve(200, metadata(&[&idp], &format!(r#" validUntil="{past}""#)));
    assert!(wait_for("expired at"), "{}", gate.logs());
    assert_eq!(
        get(&gate.url("/_idgate/saml/acme/login"), &[]).await.status,
        302,
        "logins still start with the last good copy"
    );
}
