//! SAML Single Logout end to end (SPEC §8): LogoutRequests from the IdP in the
//! HTTP-Redirect binding (signed over the query octets by the `openssl` CLI) and the
//! HTTP-POST binding (signed by the `xmlsec1` CLI), ending sessions on two idgate
//! processes sharing a real Redis and closing their open WebSockets; refusals of
//! unsigned, badly signed, replayed and misissued requests; and the SP-initiated
//! logout, whose LogoutRequest and the LogoutResponses idgate sends are verified with the
//! SP certificate by the `openssl` CLI.

mod support;

#[path = "support/saml.rs"]
mod saml_support;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use saml_support::*;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const IDP: &str = "https://idp.example.com/metadata";
const ACS: &str = "http://127.0.0.1/_idgate/saml/acme/acs";
const SP: &str = "http://127.0.0.1/_idgate/saml/acme/metadata";
const SLO: &str = "http://127.0.0.1/_idgate/saml/acme/slo";
const IDP_SLO: &str = "https://idp.example.com/slo";
const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
const ECDSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Slo {
    /// Replicas on one Redis (one, on the memory store, without `replicas`).
    nodes: Vec<Idgate>,
    idp: TestIdp,
    sp: TestIdp,
    _redis: Option<RedisServer>,
    _up: TestUpstream,
    _keys: tempfile::TempDir,
}

async fn start(replicas: bool, saml_extra: &str) -> Slo {
    start_trusting(replicas, saml_extra, None).await
}

/// [`start`], with `also_trusted` (a certificate file) next to the IdP's certificate in
/// `idp_certificate`, as during a rollover to a key of another type.
async fn start_trusting(replicas: bool, saml_extra: &str, also_trusted: Option<&Path>) -> Slo {
    let idp = TestIdp::new("slo-idp");
    let sp = TestIdp::new("slo-sp");
    let up = TestUpstream::start().await;
    let redis = replicas.then(RedisServer::start);
    let keys = tempfile::tempdir().unwrap();
    let store = redis
        .as_ref()
        .map(|r| {
            format!(
                "[store]\nurl = \"{}\"\n[identity]\nsigning_key = \"file:{}\"\n",
                r.url(),
                signing_key_file(keys.path(), "EdDSA").display()
            )
        })
        .unwrap_or_default();
    let idp_certificates = keys.path().join("idp-certificates.pem");
    let mut bundle = std::fs::read_to_string(&idp.cert).unwrap();
    if let Some(extra) = also_trusted {
        bundle.push_str(&std::fs::read_to_string(extra).unwrap());
    }
    std::fs::write(&idp_certificates, bundle).unwrap();
    let text = config(
        up.addr,
        "",
        &format!(
            "{store}[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_entity_id = \"{IDP}\"\n\
             idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"file:{}\"\n\
             allow_idp_initiated = true\nsp_key = \"file:{}\"\nsp_certificate = \"file:{}\"\n\
             idp_slo_url = \"{IDP_SLO}\"\n{saml_extra}\n",
            idp_certificates.display(),
            sp.key.display(),
            sp.cert.display(),
        ),
    );
    let nodes: Vec<Idgate> = (0..if replicas { 2 } else { 1 })
        .map(|_| Idgate::start(&text))
        .collect();
    for n in &nodes {
        n.wait_ready().await;
    }
    Slo {
        nodes,
        idp,
        sp,
        _redis: redis,
        _up: up,
        _keys: keys,
    }
}

impl Slo {
    fn url(&self, path: &str) -> String {
        self.nodes[0].url(path)
    }

    /// An IdP-initiated login of `name_id` (user `uid`) on the first replica; returns
    /// the session cookie and the SessionIndex the IdP gave it (the assertion id).
    async fn login(&self, name_id: &str, uid: &str) -> (String, String) {
        let mut spec = ResponseSpec::new(IDP, ACS, SP, None).attr("uid", uid);
        spec.name_id = name_id.into();
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "SAMLResponse",
                &b64(&signed_assertion_response(&spec, &self.idp)),
            )
            .finish();
        let r = send(
            "POST",
            &self.url("/_idgate/saml/acme/acs"),
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await;
        assert_eq!(r.status, 303, "{}", r.text());
        (r.cookie(), spec.assertion_id)
    }

    async fn rejections(&self, reason: &str) -> u64 {
        let prefix = format!("idgate_saml_rejections_total{{reason=\"{reason}\"}} ");
        get(&self.nodes[0].admin_url("/metrics"), &[])
            .await
            .text()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |n| n.trim().parse().unwrap())
    }

    /// Sends a redirect-bound logout message (a query string) to the SLO endpoint.
    async fn redirect(&self, query: &str) -> Reply {
        get(
            &self.url(&format!("/_idgate/saml/acme/slo?{query}")),
            &[("accept", "text/html")],
        )
        .await
    }

    /// Sends a POST-bound LogoutRequest (`xml`, signed or not).
    async fn post(&self, xml: &str) -> Reply {
        self.post_field("SAMLRequest", xml).await
    }

    /// Sends `xml` in the HTTP-POST binding as form field `field`.
    async fn post_field(&self, field: &str, xml: &str) -> Reply {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair(field, &b64(xml))
            .append_pair("RelayState", "post-relay")
            .finish();
        send(
            "POST",
            &self.url("/_idgate/saml/acme/slo"),
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await
    }

    /// Expects `reply` to be a refusal counted as `reason`, `before` being the count
    /// before it.
    async fn refused(&self, case: &str, reply: &Reply, reason: &str, before: u64) {
        assert_eq!(reply.status, 403, "{case}: {}", reply.text());
        assert_eq!(
            self.rejections(reason).await,
            before + 1,
            "{case}: not counted as {reason}"
        );
    }
}

/// Whether `cookie` still carries a session (a non-browser request: 200 or 401).
async fn signed_in(node: &Idgate, cookie: &str) -> bool {
    let r = get(&node.url("/x"), &[("cookie", cookie)]).await;
    assert!(r.status == 200 || r.status == 401, "{}", r.status);
    r.status == 200
}

fn now(offset: i64) -> String {
    let t = chrono::Utc::now() + chrono::Duration::seconds(offset);
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn new_id() -> String {
    format!("_lr{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// A LogoutRequest as an IdP writes it; `signature` goes after the Issuer.
fn logout_request(
    id: &str,
    issuer: &str,
    name_id: &str,
    session_index: Option<&str>,
    signature: &str,
) -> String {
    logout_request_to(SLO, id, issuer, name_id, session_index, signature)
}

/// [`logout_request`] addressed to `destination`.
fn logout_request_to(
    destination: &str,
    id: &str,
    issuer: &str,
    name_id: &str,
    session_index: Option<&str>,
    signature: &str,
) -> String {
    logout_request_at(
        destination,
        id,
        &now(0),
        Some(&now(300)),
        issuer,
        name_id,
        session_index,
        signature,
    )
}

/// The same request signed by `key` in the HTTP-POST binding (enveloped signature).
fn post_signed(id: &str, name_id: &str, session_index: Option<&str>, idp: &TestIdp) -> String {
    let xml = logout_request(id, IDP, name_id, session_index, &signature_template(id));
    xmlsec_sign(
        &xml,
        &idp.key,
        &idp.cert,
        "urn:oasis:names:tc:SAML:2.0:protocol:LogoutRequest",
    )
}

fn deflate_b64(xml: &str) -> String {
    let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    d.write_all(xml.as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(d.finish().unwrap())
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The HTTP-Redirect query for `xml` in `field`, signed by the `openssl` CLI with `key`
/// over the octets `field=…&RelayState=…&SigAlg=…` (SAML bindings §3.4.4.1).
fn redirect_query(field: &str, xml: &str, relay: Option<&str>, key: &Path) -> String {
    redirect_query_with(field, xml, relay, key, RSA_SHA256, |sig| sig)
}

/// [`redirect_query`] with `sig_alg`, the signature `openssl dgst -sha256 -sign` made
/// passed through `encode` (ECDSA: from DER to r‖s) before it is base64-encoded.
fn redirect_query_with(
    field: &str,
    xml: &str,
    relay: Option<&str>,
    key: &Path,
    sig_alg: &str,
    encode: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> String {
    let mut signed = format!("{field}={}", enc(&deflate_b64(xml)));
    if let Some(r) = relay {
        signed.push_str(&format!("&RelayState={}", enc(r)));
    }
    signed.push_str(&format!("&SigAlg={}", enc(sig_alg)));
    let dir = tempfile::tempdir().unwrap();
    let (data, sig) = (dir.path().join("data"), dir.path().join("sig"));
    std::fs::write(&data, &signed).unwrap();
    support::openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        &key.display().to_string(),
        "-out",
        &sig.display().to_string(),
        &data.display().to_string(),
    ]);
    let signature =
        base64::engine::general_purpose::STANDARD.encode(encode(std::fs::read(&sig).unwrap()));
    format!("{signed}&Signature={}", enc(&signature))
}

/// Checks a redirect idgate sent to the IdP: it goes to `IDP_SLO`, its signature over
/// the query octets verifies with the SP certificate (`openssl` CLI), and it carries
/// `field`. Returns the inflated message and the query's decoded fields.
fn verified_redirect(
    location: &str,
    field: &str,
    sp: &TestIdp,
) -> (String, std::collections::HashMap<String, String>) {
    assert!(location.starts_with(&format!("{IDP_SLO}?")), "{location}");
    let query = location.split_once('?').unwrap().1;
    let (signed, signature) = query.split_once("&Signature=").expect("a Signature");
    assert!(signed.starts_with(&format!("{field}=")), "{signed}");
    assert!(
        signed.ends_with(&format!("&SigAlg={}", enc(RSA_SHA256))),
        "{signed}"
    );
    let signature: String = url::form_urlencoded::parse(format!("s={signature}").as_bytes())
        .next()
        .unwrap()
        .1
        .into_owned();
    let dir = tempfile::tempdir().unwrap();
    let (data, sig, public) = (
        dir.path().join("data"),
        dir.path().join("sig"),
        dir.path().join("public.pem"),
    );
    std::fs::write(&data, signed).unwrap();
    std::fs::write(
        &sig,
        base64::engine::general_purpose::STANDARD
            .decode(signature)
            .unwrap(),
    )
    .unwrap();
    let p = |x: &Path| x.display().to_string();
    support::openssl(&[
        "x509",
        "-in",
        &p(&sp.cert),
        "-pubkey",
        "-noout",
        "-out",
        &p(&public),
    ]);
    let verified = std::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-verify",
            &p(&public),
            "-signature",
            &p(&sig),
            &p(&data),
        ])
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "openssl refuses idgate's signature: {}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let q: std::collections::HashMap<String, String> = url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let deflated = base64::engine::general_purpose::STANDARD
        .decode(&q[field])
        .unwrap();
    let mut xml = String::new();
    flate2::read::DeflateDecoder::new(&deflated[..])
        .read_to_string(&mut xml)
        .unwrap();
    (xml, q)
}

/// A WebSocket through `node` with `cookie`, checked to echo.
async fn open_ws(node: &Idgate, cookie: &str) -> Ws {
    let mut req = format!("ws://{}/ws", node.public)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket handshake through idgate");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an echo in time")
        .expect("open")
        .expect("a message");
    assert_eq!(got.into_text().unwrap().as_str(), "hello");
    ws
}

/// Waits for the tunnel to close, at most `limit`.
async fn closed(ws: &mut Ws, limit: Duration) {
    let start = Instant::now();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("the tunnel is still open after {limit:?}"),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// An IdP-initiated LogoutRequest sent to one replica ends the session on the other,
/// closes its WebSocket there within a second, and is answered with a LogoutResponse
/// signed by the SP key. A SessionIndex narrows it to that session; without one (here in
/// the HTTP-POST binding) every session of the NameID ends, and no one else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_logout_request_ends_the_session_everywhere_and_closes_its_tunnel() {
    let slo = start(true, "").await;
    let (a, b) = (&slo.nodes[0], &slo.nodes[1]);
    let (first, first_index) = slo.login("ada@example.com", "ada").await;
    let (second, _) = slo.login("ada@example.com", "ada").await;
    let (bob, _) = slo.login("bob@example.com", "bob").await;
    for c in [&first, &second, &bob] {
        assert!(signed_in(b, c).await, "sessions reach the other replica");
    }
    let mut ws = open_ws(b, &first).await;

    let id = new_id();
    let xml = logout_request(&id, IDP, "ada@example.com", Some(&first_index), "");
    let r = slo
        .redirect(&redirect_query(
            "SAMLRequest",
            &xml,
            Some("relay-1"),
            &slo.idp.key,
        ))
        .await;
    let answered = Instant::now();
    assert_eq!(r.status, 302, "{}", r.text());
    closed(&mut ws, Duration::from_secs(3)).await;
    assert!(
        answered.elapsed() < Duration::from_secs(1),
        "the tunnel closed {:?} after the answer",
        answered.elapsed()
    );
    let (response, q) = verified_redirect(
        r.headers["location"].to_str().unwrap(),
        "SAMLResponse",
        &slo.sp,
    );
    assert_eq!(q["RelayState"], "relay-1", "the RelayState goes back");
    assert!(response.contains("LogoutResponse"), "{response}");
    assert!(
        response.contains(&format!("InResponseTo=\"{id}\""))
            && response.contains(&format!("Destination=\"{IDP_SLO}\""))
            && response.contains("urn:oasis:names:tc:SAML:2.0:status:Success")
            && response.contains(&format!("<saml:Issuer>{SP}</saml:Issuer>")),
        "{response}"
    );
    assert!(!signed_in(b, &first).await, "ended on the other replica");
    assert!(!signed_in(a, &first).await, "ended where it was asked");
    assert!(
        signed_in(b, &second).await,
        "another SessionIndex of the same NameID lives on"
    );

    // HTTP-POST, no SessionIndex: every session of the NameID.
    let r = slo
        .post(&post_signed(&new_id(), "ada@example.com", None, &slo.idp))
        .await;
    assert_eq!(r.status, 302, "{}", r.text());
    let (_, q) = verified_redirect(
        r.headers["location"].to_str().unwrap(),
        "SAMLResponse",
        &slo.sp,
    );
    assert_eq!(q["RelayState"], "post-relay");
    assert!(!signed_in(b, &second).await);
    assert!(signed_in(b, &bob).await, "another subject is untouched");
}

/// Unsigned, badly signed, tampered, misissued and replayed LogoutRequests are refused
/// (`slo_signature`, `issuer`, `replay`) and end nothing; one naming a subject with no
/// session is logged as `slo_unknown_session` and still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_forged_replayed_and_unknown_logout_requests() {
    let slo = start(false, "").await;
    let node = &slo.nodes[0];
    let (cookie, index) = slo.login("ada@example.com", "ada").await;
    let xml = |id: &str| logout_request(id, IDP, "ada@example.com", Some(&index), "");

    // Redirect binding without a signature.
    let before = slo.rejections("slo_signature").await;
    let unsigned = format!(
        "SAMLRequest={}&RelayState=x",
        enc(&deflate_b64(&xml(&new_id())))
    );
    let r = slo.redirect(&unsigned).await;
    slo.refused("unsigned redirect", &r, "slo_signature", before)
        .await;

    // Signed by a key that is not the IdP's.
    let stranger = TestIdp::new("stranger");
    let before = slo.rejections("slo_signature").await;
    let r = slo
        .redirect(&redirect_query(
            "SAMLRequest",
            &xml(&new_id()),
            None,
            &stranger.key,
        ))
        .await;
    slo.refused("foreign key", &r, "slo_signature", before)
        .await;

    // Signed by the IdP, then the message swapped for another subject's.
    let good = redirect_query("SAMLRequest", &xml(&new_id()), None, &slo.idp.key);
    let other = logout_request(&new_id(), IDP, "eve@example.com", None, "");
    let (_, rest) = good.split_once('&').unwrap();
    let tampered = format!("SAMLRequest={}&{rest}", enc(&deflate_b64(&other)));
    let before = slo.rejections("slo_signature").await;
    let r = slo.redirect(&tampered).await;
    slo.refused("tampered", &r, "slo_signature", before).await;

    // HTTP-POST without a signature, and with one by a stranger.
    let before = slo.rejections("slo_signature").await;
    let r = slo.post(&xml(&new_id())).await;
    slo.refused("unsigned post", &r, "slo_signature", before)
        .await;
    let before = slo.rejections("slo_signature").await;
    let r = slo
        .post(&post_signed(&new_id(), "ada@example.com", None, &stranger))
        .await;
    slo.refused("post by a stranger", &r, "slo_signature", before)
        .await;

    // Signed by the IdP's key but issued by someone else.
    let before = slo.rejections("issuer").await;
    let r = slo
        .redirect(&redirect_query(
            "SAMLRequest",
            &logout_request(
                &new_id(),
                "https://other-idp.example.com",
                "ada@example.com",
                None,
                "",
            ),
            None,
            &slo.idp.key,
        ))
        .await;
    slo.refused("issuer", &r, "issuer", before).await;
    assert!(
        signed_in(node, &cookie).await,
        "no refused request ended the session"
    );

    // Unknown subject: logged, counted, still answered with a signed LogoutResponse.
    let before = slo.rejections("slo_unknown_session").await;
    let r = slo
        .redirect(&redirect_query(
            "SAMLRequest",
            &logout_request(&new_id(), IDP, "nobody@example.com", None, ""),
            None,
            &slo.idp.key,
        ))
        .await;
    assert_eq!(r.status, 302, "{}", r.text());
    verified_redirect(
        r.headers["location"].to_str().unwrap(),
        "SAMLResponse",
        &slo.sp,
    );
    assert!(node.wait_for_log("slo_unknown_session"), "{}", node.logs());
    assert_eq!(slo.rejections("slo_unknown_session").await, before + 1);

    // A valid request is honoured once; the same request again is a replay.
    let once = redirect_query(
        "SAMLRequest",
        &logout_request(&new_id(), IDP, "ada@example.com", None, ""),
        None,
        &slo.idp.key,
    );
    let r = slo.redirect(&once).await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(!signed_in(node, &cookie).await);
    let (again, _) = slo.login("ada@example.com", "ada").await;
    let before = slo.rejections("replay").await;
    let r = slo.redirect(&once).await;
    slo.refused("replay", &r, "replay", before).await;
    assert!(signed_in(node, &again).await, "a replay ends nothing");
}

/// A LogoutResponse as the IdP answers idgate's LogoutRequest `in_response_to`.
fn logout_response(in_response_to: &str) -> String {
    logout_response_with(&new_id(), in_response_to, "")
}

/// [`logout_response`] with ID `id` and `signature` after the Issuer.
fn logout_response_with(id: &str, in_response_to: &str, signature: &str) -> String {
    format!(
        r#"<samlp:LogoutResponse xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{id}" Version="2.0" IssueInstant="{now}" Destination="{SLO}" InResponseTo="{in_response_to}"><saml:Issuer>{IDP}</saml:Issuer>{signature}<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status></samlp:LogoutResponse>"#,
        now = now(0),
    )
}

/// [`logout_response`] with an enveloped signature by `idp` (`xmlsec1`), as the
/// HTTP-POST binding carries it.
fn post_signed_response(in_response_to: &str, idp: &TestIdp) -> String {
    let id = new_id();
    xmlsec_sign(
        &logout_response_with(&id, in_response_to, &signature_template(&id)),
        &idp.key,
        &idp.cert,
        "urn:oasis:names:tc:SAML:2.0:protocol:LogoutResponse",
    )
}

/// `POST /_idgate/logout` ends the session, then sends the browser to the IdP with a
/// LogoutRequest signed by the SP key that names the session's NameID and SessionIndex;
/// the IdP's signed LogoutResponse to it lands on `after_logout_url`, once. An unsigned
/// answer is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sp_initiated_logout_goes_through_the_idp_and_lands_on_after_logout_url() {
    let slo = start(false, "after_logout_url = \"/goodbye\"").await;
    let node = &slo.nodes[0];
    let (cookie, index) = slo.login("ada@example.com", "ada").await;
    let r = send(
        "POST",
        &node.url("/_idgate/logout"),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(
        r.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"),
        "the cookie is cleared"
    );
    assert!(
        !signed_in(node, &cookie).await,
        "ended before the IdP answers"
    );
    let (request, _) = verified_redirect(
        r.headers["location"].to_str().unwrap(),
        "SAMLRequest",
        &slo.sp,
    );
    assert!(request.contains("LogoutRequest"), "{request}");
    assert!(
        request.contains(">ada@example.com</saml:NameID>")
            && request.contains(&format!("<samlp:SessionIndex>{index}</samlp:SessionIndex>"))
            && request.contains(&format!("<saml:Issuer>{SP}</saml:Issuer>"))
            && request.contains(&format!("Destination=\"{IDP_SLO}\"")),
        "{request}"
    );
    let id = request
        .split("ID=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();

    // Unsigned: refused, and the pending logout is not used up by it.
    let before = slo.rejections("slo_signature").await;
    let unsigned = format!("SAMLResponse={}", enc(&deflate_b64(&logout_response(&id))));
    let r = slo.redirect(&unsigned).await;
    slo.refused("unsigned LogoutResponse", &r, "slo_signature", before)
        .await;

    let answer = redirect_query("SAMLResponse", &logout_response(&id), None, &slo.idp.key);
    let r = slo.redirect(&answer).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/goodbye");

    // The same answer again matches no pending logout.
    let before = slo.rejections("unknown_request").await;
    let r = slo.redirect(&answer).await;
    slo.refused("answered twice", &r, "unknown_request", before)
        .await;
}

/// The SOAP back channel: an IdP's LogoutRequest (enveloped signature by `xmlsec1`) in a
/// SOAP envelope ends the subject's sessions and is answered in the same exchange with a
/// LogoutResponse whose XML signature `xmlsec1 --verify` accepts with the SP certificate.
/// An unsigned one is a SOAP Fault counted as `slo_signature`, and ends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soap_back_channel_ends_sessions_and_answers_signed() {
    let slo = start(false, "").await;
    let node = &slo.nodes[0];
    let (cookie, _) = slo.login("ada@example.com", "ada").await;
    let envelope = |request: &str| {
        let request = match request.trim_start().strip_prefix("<?xml") {
            Some(rest) => rest.split_once("?>").unwrap().1.trim().to_owned(),
            None => request.to_owned(),
        };
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>{request}</soap:Body></soap:Envelope>"#
        )
    };
    let soap = |body: String| async move {
        send(
            "POST",
            &node.url("/_idgate/saml/acme/slo/soap"),
            &[
                ("content-type", "text/xml"),
                (
                    "soapaction",
                    "http://www.oasis-open.org/committees/security",
                ),
            ],
            body,
        )
        .await
    };
    let soap_slo = format!("{SLO}/soap");

    // Unsigned: a Fault, nothing ended.
    let before = slo.rejections("slo_signature").await;
    let r = soap(envelope(&logout_request_to(
        &soap_slo,
        &new_id(),
        IDP,
        "ada@example.com",
        None,
        "",
    )))
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("soap:Fault"), "{}", r.text());
    assert_eq!(slo.rejections("slo_signature").await, before + 1);
    assert!(signed_in(node, &cookie).await);

    let id = new_id();
    let request = xmlsec_sign(
        &logout_request_to(
            &soap_slo,
            &id,
            IDP,
            "ada@example.com",
            None,
            &signature_template(&id),
        ),
        &slo.idp.key,
        &slo.idp.cert,
        "urn:oasis:names:tc:SAML:2.0:protocol:LogoutRequest",
    );
    let r = soap(envelope(&request)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!signed_in(node, &cookie).await, "the session ended");
    let answer = r.text();
    assert!(
        answer.contains("soap:Envelope")
            && answer.contains("LogoutResponse")
            && answer.contains(&format!("InResponseTo=\"{id}\""))
            && answer.contains("urn:oasis:names:tc:SAML:2.0:status:Success"),
        "{answer}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("answer.xml");
    std::fs::write(&file, &answer).unwrap();
    let verified = std::process::Command::new("xmlsec1")
        .arg("--verify")
        .arg("--pubkey-cert-pem")
        .arg(&slo.sp.cert)
        .arg("--id-attr:ID")
        .arg("urn:oasis:names:tc:SAML:2.0:protocol:LogoutResponse")
        .arg(&file)
        .output()
        .expect("xmlsec1 is installed by `make test`");
    assert!(
        verified.status.success(),
        "xmlsec1 refuses idgate's signature: {}\n{answer}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

/// With an `sp_key`, SP metadata lists the three SingleLogoutService endpoints; without
/// one it lists none, and `check-config` warns when the IdP offers Single Logout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_lists_the_slo_endpoints_and_check_config_warns_without_sp_key() {
    let slo = start(false, "").await;
    let md = get(&slo.url("/_idgate/saml/acme/metadata"), &[])
        .await
        .text();
    for (binding, location) in [
        ("HTTP-Redirect", SLO.to_owned()),
        ("HTTP-POST", SLO.to_owned()),
        ("SOAP", format!("{SLO}/soap")),
    ] {
        assert!(
            md.contains(&format!(
                "SingleLogoutService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:{binding}\" Location=\"{location}\""
            )),
            "{binding}: {md}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, sp_key: bool| {
        let keys = if sp_key {
            format!(
                "sp_key = \"file:{}\"\nsp_certificate = \"file:{}\"\n",
                slo.sp.key.display(),
                slo.sp.cert.display()
            )
        } else {
            String::new()
        };
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_entity_id = \"{IDP}\"\n\
                 idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"file:{}\"\n\
                 idp_slo_url = \"{IDP_SLO}\"\n{keys}",
                slo.idp.cert.display()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let (code, _, err) = run_cli(
        &["check-config", "--config", &write("bare.toml", false)],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: tenants[0].saml.sp_key") && err.contains("SingleLogoutService"),
        "{err}"
    );
    let (code, _, err) = run_cli(
        &["check-config", "--config", &write("keyed.toml", true)],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("SingleLogoutService"), "{err}");

    let bare = idgate::App::new(
        // On loopback, port 0, like every idgate a test starts.
        idgate::config::Config::from_toml(
            &config(
                slo._up.addr,
                "",
                &std::fs::read_to_string(dir.path().join("bare.toml")).unwrap(),
            ),
            Path::new("/"),
        )
        .unwrap(),
    )
    .unwrap()
    .start()
    .await
    .unwrap();
    let md = get(
        &format!("http://{}/_idgate/saml/acme/metadata", bare.public_addr()),
        &[],
    )
    .await
    .text();
    assert!(!md.contains("SingleLogoutService"), "{md}");
}

/// LogoutRequests past their NotOnOrAfter, issued in the future beyond the allowed clock
/// skew (60 s), or issued too long ago without a NotOnOrAfter (300 s + skew) are refused
/// as `expired` even though the IdP signed them, in both front-channel bindings, and end
/// no session; the same request with current times is honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_logout_requests_are_refused_and_end_nothing() {
    let slo = start(false, "").await;
    let node = &slo.nodes[0];
    let (cookie, index) = slo.login("ada@example.com", "ada").await;
    let at = |issued: i64, until: Option<i64>| {
        logout_request_at(
            SLO,
            &new_id(),
            &now(issued),
            until.map(now).as_deref(),
            IDP,
            "ada@example.com",
            Some(&index),
            "",
        )
    };
    for (case, xml) in [
        ("past its NotOnOrAfter", at(-200, Some(-120))),
        ("issued 10 minutes ahead", at(600, Some(900))),
        ("issued 10 minutes ago, no NotOnOrAfter", at(-600, None)),
    ] {
        let before = slo.rejections("expired").await;
        let r = slo
            .redirect(&redirect_query("SAMLRequest", &xml, None, &slo.idp.key))
            .await;
        slo.refused(case, &r, "expired", before).await;
        assert!(signed_in(node, &cookie).await, "{case}: nothing ended");
    }
    // HTTP-POST: the enveloped signature verifies, the time does not.
    let id = new_id();
    let expired = xmlsec_sign(
        &logout_request_at(
            SLO,
            &id,
            &now(-200),
            Some(&now(-120)),
            IDP,
            "ada@example.com",
            None,
            &signature_template(&id),
        ),
        &slo.idp.key,
        &slo.idp.cert,
        "urn:oasis:names:tc:SAML:2.0:protocol:LogoutRequest",
    );
    let before = slo.rejections("expired").await;
    let r = slo.post(&expired).await;
    slo.refused("expired, HTTP-POST", &r, "expired", before)
        .await;
    assert!(
        node.wait_for_log("\"reason\":\"expired\"") && node.logs().contains("SAML logout rejected"),
        "{}",
        node.logs()
    );
    assert!(signed_in(node, &cookie).await, "nothing ended");

    // Within the skew either way it is honoured.
    let r = slo
        .redirect(&redirect_query(
            "SAMLRequest",
            &at(30, Some(-30)),
            None,
            &slo.idp.key,
        ))
        .await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(!signed_in(node, &cookie).await);
}

/// Turns an ECDSA signature from the DER `SEQUENCE { r, s }` that `openssl dgst -sign`
/// writes into r‖s, each `half` octets, as the ecdsa-sha256 URI defines the signature
/// value (RFC 4051 §3.3, XML Signature 1.1 §6.4.3).
fn der_to_r_s(der: Vec<u8>, half: usize) -> Vec<u8> {
    // 0x30 len 0x02 rlen r 0x02 slen s, with short lengths for P-256.
    assert_eq!(der[0], 0x30, "a DER SEQUENCE: {der:02x?}");
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "a DER INTEGER: {der:02x?}");
        let len = der[at + 1] as usize;
        let int = &der[at + 2..at + 2 + len];
        let int = &int[int.iter().take_while(|b| **b == 0).count()..];
        out.extend(std::iter::repeat_n(0u8, half - int.len()));
        out.extend_from_slice(int);
        at += 2 + len;
    }
    out
}

/// An IdP signing HTTP-Redirect LogoutRequests with ECDSA (P-256, ecdsa-sha256; key,
/// certificate and signature made by the `openssl` CLI, the signature turned into r‖s)
/// is honoured. The DER signature `openssl` writes is not the binding's format and is
/// refused, as is an ECDSA signature by a key idgate does not trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecdsa_signed_redirect_logout_request_is_honoured() {
    let ec = tempfile::tempdir().unwrap();
    let make = |name: &str| {
        let (key, cert) = (
            ec.path().join(format!("{name}.key")),
            ec.path().join(format!("{name}.crt")),
        );
        support::openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-sha256",
            "-days",
            "1",
            "-nodes",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
            "-subj",
            &format!("/CN={name}"),
        ]);
        (key, cert)
    };
    let (ec_key, ec_cert) = make("slo-idp-ec");
    let (stranger_key, _) = make("stranger-ec");
    let slo = start_trusting(false, "", Some(&ec_cert)).await;
    let node = &slo.nodes[0];
    let (cookie, index) = slo.login("ada@example.com", "ada").await;
    let xml = || logout_request(&new_id(), IDP, "ada@example.com", Some(&index), "");

    let before = slo.rejections("slo_signature").await;
    let der = redirect_query_with("SAMLRequest", &xml(), None, &ec_key, ECDSA_SHA256, |der| {
        der
    });
    let r = slo.redirect(&der).await;
    slo.refused("DER instead of r||s", &r, "slo_signature", before)
        .await;
    let before = slo.rejections("slo_signature").await;
    let r = slo
        .redirect(&redirect_query_with(
            "SAMLRequest",
            &xml(),
            None,
            &stranger_key,
            ECDSA_SHA256,
            |der| der_to_r_s(der, 32),
        ))
        .await;
    slo.refused("an untrusted EC key", &r, "slo_signature", before)
        .await;
    assert!(signed_in(node, &cookie).await, "nothing ended");

    let r = slo
        .redirect(&redirect_query_with(
            "SAMLRequest",
            &xml(),
            Some("ec-relay"),
            &ec_key,
            ECDSA_SHA256,
            |der| der_to_r_s(der, 32),
        ))
        .await;
    assert_eq!(r.status, 302, "{}\n{}", r.text(), node.logs());
    let (response, q) = verified_redirect(
        r.headers["location"].to_str().unwrap(),
        "SAMLResponse",
        &slo.sp,
    );
    assert_eq!(q["RelayState"], "ec-relay");
    assert!(response.contains("status:Success"), "{response}");
    assert!(!signed_in(node, &cookie).await, "the session ended");
}

impl Slo {
    /// `POST /_idgate/logout` with `cookie`; the ID of the LogoutRequest idgate sent the
    /// IdP (checked signed by the SP key).
    async fn sp_logout(&self, cookie: &str) -> String {
        let r = send(
            "POST",
            &self.nodes[0].url("/_idgate/logout"),
            &[("cookie", cookie)],
            "",
        )
        .await;
        assert_eq!(r.status, 302, "{}", r.text());
        let (request, _) = verified_redirect(
            r.headers["location"].to_str().unwrap(),
            "SAMLRequest",
            &self.sp,
        );
        request
            .split("ID=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned()
    }
}

/// The IdP may answer idgate's LogoutRequest in the HTTP-POST binding: a LogoutResponse
/// with an enveloped signature (`xmlsec1`) lands the browser on `/_idgate/logged-out`
/// (no `after_logout_url`). Unsigned, signed by a stranger, or altered after signing, it
/// is refused as `slo_signature` and does not use up the pending logout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_response_on_http_post_is_verified_by_its_xml_signature() {
    let slo = start(false, "").await;
    let node = &slo.nodes[0];
    let (cookie, _) = slo.login("ada@example.com", "ada").await;
    let id = slo.sp_logout(&cookie).await;
    assert!(!signed_in(node, &cookie).await);

    let stranger = TestIdp::new("stranger");
    let good = post_signed_response(&id, &slo.idp);
    assert!(
        good.contains("urn:oasis:names:tc:SAML:2.0:status:Success"),
        "{good}"
    );
    let altered = good.replace(
        "urn:oasis:names:tc:SAML:2.0:status:Success",
        "urn:oasis:names:tc:SAML:2.0:status:Requester",
    );
    for (case, xml) in [
        ("unsigned", logout_response(&id)),
        ("signed by a stranger", post_signed_response(&id, &stranger)),
        ("altered after signing", altered),
    ] {
        let before = slo.rejections("slo_signature").await;
        let r = slo.post_field("SAMLResponse", &xml).await;
        slo.refused(case, &r, "slo_signature", before).await;
    }
    assert!(
        node.wait_for_log("\"reason\":\"slo_signature\""),
        "{}",
        node.logs()
    );

    let r = slo.post_field("SAMLResponse", &good).await;
    assert_eq!(r.status, 303, "{}\n{}", r.text(), node.logs());
    assert_eq!(r.headers["location"], "/_idgate/logged-out");
    assert!(
        !node.logs().contains("did not confirm the Single Logout"),
        "{}",
        node.logs()
    );
    let before = slo.rejections("unknown_request").await;
    let r = slo.post_field("SAMLResponse", &good).await;
    slo.refused("answered twice", &r, "unknown_request", before)
        .await;
}
