//! SAML Single Logout (SAML profiles §4.4): the IdP's LogoutRequest in the HTTP-Redirect
//! and HTTP-POST bindings, the LogoutResponse answering it, and the LogoutRequest an
//! SP-initiated logout sends (with the LogoutResponse that comes back for it).
//!
//! Nothing here is read before its signature has been checked: a redirect-bound message
//! is verified over the query octets as they travelled, before it is even inflated, and
//! a POST-bound one is reduced by xmlsec to the content the IdP signed, like a login
//! response. A logout message ends sessions, so an unsigned one is never honoured.

use std::io::Read;
use std::time::Duration;

use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Public};
use samael::crypto::CryptoProvider;

use super::{MAX_SKEW, SamlTenant};
use crate::store::{EphemeralStore, Store, StoreError};

/// A LogoutRequest or LogoutResponse is a few hundred bytes; an inflated message larger
/// than this is refused before it can use memory (a deflate bomb).
const MAX_INFLATED: u64 = 256 * 1024;

/// How long a LogoutRequest may take to arrive when it has no NotOnOrAfter, and how
/// long its ID is remembered against replay (longer than it can be accepted).
const MAX_ISSUE_DELAY: Duration = Duration::from_secs(300);
const REPLAY_TTL: Duration = Duration::from_secs(900);

/// How long an SP-initiated logout may take at the IdP before its LogoutResponse is no
/// longer matched.
pub const LOGOUT_PENDING_TTL: Duration = Duration::from_secs(600);

const PROTOCOL_NS: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const ASSERTION_NS: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";

const RSA_SHA1: &str = "http://www.w3.org/2000/09/xmldsig#rsa-sha1";
const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
const RSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384";
const RSA_SHA512: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512";
const ECDSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256";

/// Why a logout message was refused. Each has a stable code for logs and
/// `idgate_saml_rejections_total`.
#[derive(Debug, thiserror::Error)]
pub enum SloError {
    /// Unsigned, or a signature that does not verify with the IdP's certificates.
    #[error("logout message signature refused: {0}")]
    Signature(String),
    /// Not a readable LogoutRequest / LogoutResponse.
    #[error("malformed logout message: {0}")]
    Malformed(String),
    /// The Issuer is not the tenant's IdP.
    #[error("logout message issuer {0:?} is not the IdP")]
    Issuer(String),
    /// The Destination is not this SP's SLO endpoint.
    #[error("logout message destination {0:?} is not this SLO endpoint")]
    Destination(String),
    /// Past its NotOnOrAfter, or issued too long ago.
    #[error("logout message expired")]
    Expired,
    /// The LogoutRequest ID was seen before.
    #[error("LogoutRequest {0} was already used (replay)")]
    Replay(String),
    /// A LogoutResponse to no logout this SP started (or one already answered).
    #[error("LogoutResponse InResponseTo is not a pending logout of this tenant")]
    UnknownRequest,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SloError {
    /// Metric label / log code.
    pub fn code(&self) -> &'static str {
        match self {
            SloError::Signature(_) => "slo_signature",
            SloError::Malformed(_) => "malformed",
            SloError::Issuer(_) => "issuer",
            SloError::Destination(_) => "destination",
            SloError::Expired => "expired",
            SloError::Replay(_) => "replay",
            SloError::UnknownRequest => "unknown_request",
            SloError::Store(_) => "store_unavailable",
        }
    }
}

/// How a logout message reached the SLO endpoint.
pub enum Binding<'a> {
    /// HTTP-Redirect: the raw query string, as it travelled.
    Redirect(&'a str),
    /// HTTP-POST: the decoded form fields `SAMLRequest`/`SAMLResponse` and `RelayState`.
    Post {
        /// The base64 message.
        message: &'a str,
        /// `RelayState`, if any.
        relay_state: Option<&'a str>,
    },
    /// SOAP (back channel): the SOAP envelope as posted.
    Soap(&'a str),
}

/// A verified logout message from the IdP.
#[derive(Debug)]
pub enum Incoming {
    /// The IdP asks to end sessions.
    Request(LogoutRequest),
    /// The IdP answers a logout this SP started.
    Response(LogoutResponse),
}

/// A verified, fresh, first-seen LogoutRequest.
#[derive(Debug)]
pub struct LogoutRequest {
    /// Its ID, which the LogoutResponse answers.
    pub id: String,
    /// The subject whose sessions end.
    pub name_id: String,
    /// When present, only the sessions with one of these indexes end.
    pub session_indexes: Vec<String>,
    /// Sent back unchanged with the LogoutResponse.
    pub relay_state: Option<String>,
}

/// A verified LogoutResponse to a logout this SP started.
#[derive(Debug)]
pub struct LogoutResponse {
    /// The top-level StatusCode.
    pub status: String,
    /// Where the browser goes now (`after_logout_url` or the logged-out page), as kept
    /// when the logout started.
    pub land_on: String,
}

impl LogoutResponse {
    /// Whether the IdP says it ended its session too.
    pub fn success(&self) -> bool {
        self.status == SUCCESS
    }
}

/// The parts of a logout message this module reads, from signed content only.
#[derive(Debug, Default)]
struct Parsed {
    root: String,
    id: Option<String>,
    issue_instant: Option<String>,
    not_on_or_after: Option<String>,
    destination: Option<String>,
    in_response_to: Option<String>,
    issuer: Option<String>,
    name_id: Option<String>,
    session_indexes: Vec<String>,
    status: Option<String>,
}

impl SamlTenant {
    /// Whether this tenant takes part in Single Logout: it has an `sp_key` to sign its
    /// answers with and knows the IdP's SingleLogoutService.
    pub fn slo_enabled(&self) -> bool {
        self.logout_signer.is_some() && self.idp_slo_url.is_some()
    }

    /// Whether the IdP has a SingleLogoutService (`idp_slo_url`, or in its metadata).
    pub fn idp_offers_slo(&self) -> bool {
        self.idp_slo_url.is_some()
    }

    /// Whether this tenant answers the SOAP back channel, which needs only the SP key
    /// (the answer goes back in the same exchange, not to the IdP's endpoint).
    pub fn soap_slo_enabled(&self) -> bool {
        self.logout_signer.is_some()
    }

    /// This SP's SLO endpoint (`/_idgate/saml/{tenant}/slo`), the Destination the IdP
    /// addresses logout messages to.
    pub fn slo_endpoint(&self) -> &str {
        &self.slo_endpoint
    }

    /// Verifies a logout message that reached the SLO endpoint and returns what it
    /// asks for. A LogoutRequest's ID is used up here (replay), and a LogoutResponse's
    /// pending logout is taken.
    pub async fn receive_logout(
        &self,
        store: &Store,
        binding: Binding<'_>,
    ) -> Result<Incoming, SloError> {
        let destination = match binding {
            Binding::Soap(_) => format!("{}/soap", self.slo_endpoint),
            _ => self.slo_endpoint.clone(),
        };
        let (xml, relay_state) = match binding {
            Binding::Redirect(query) => self.verify_redirect(query)?,
            Binding::Post {
                message,
                relay_state,
            } => {
                let xml = base64::engine::general_purpose::STANDARD
                    .decode(strip_whitespace(message))
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| SloError::Malformed("not base64 UTF-8".into()))?;
                (self.verify_xml(&xml)?, relay_state.map(str::to_owned))
            }
            // xmlsec hands back the signed element alone, so the envelope around it
            // is never read.
            Binding::Soap(envelope) => (self.verify_xml(envelope)?, None),
        };
        let m = parse(&xml)?;
        let issuer = m.issuer.clone().unwrap_or_default();
        if self
            .idp_entity_id
            .as_deref()
            .is_some_and(|idp| idp != issuer.trim())
        {
            return Err(SloError::Issuer(issuer));
        }
        if let Some(d) = m.destination.as_deref().filter(|d| *d != destination) {
            return Err(SloError::Destination(d.to_owned()));
        }
        let now = chrono::Utc::now();
        let skew = chrono::Duration::seconds(MAX_SKEW.as_secs() as i64);
        let time = |t: &Option<String>| -> Result<Option<chrono::DateTime<chrono::Utc>>, SloError> {
            t.as_deref()
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|_| SloError::Malformed(format!("bad time {t:?}")))
                })
                .transpose()
        };
        let issued =
            time(&m.issue_instant)?.ok_or_else(|| SloError::Malformed("no IssueInstant".into()))?;
        if issued > now + skew {
            return Err(SloError::Expired);
        }
        match m.root.as_str() {
            "LogoutRequest" => {
                let expires = match time(&m.not_on_or_after)? {
                    Some(t) => t,
                    None => issued + chrono::Duration::seconds(MAX_ISSUE_DELAY.as_secs() as i64),
                };
                if now > expires + skew {
                    return Err(SloError::Expired);
                }
                let id = m.id.ok_or_else(|| SloError::Malformed("no ID".into()))?;
                let name_id = m
                    .name_id
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| SloError::Malformed("no NameID".into()))?;
                if !store
                    .put_once(
                        &format!("saml:{}:logout-request:{id}", self.tenant),
                        "1",
                        REPLAY_TTL,
                    )
                    .await?
                {
                    return Err(SloError::Replay(id));
                }
                Ok(Incoming::Request(LogoutRequest {
                    id,
                    name_id,
                    session_indexes: m
                        .session_indexes
                        .into_iter()
                        .map(|s| s.trim().to_owned())
                        .collect(),
                    relay_state,
                }))
            }
            "LogoutResponse" => {
                let in_response_to = m.in_response_to.ok_or(SloError::UnknownRequest)?;
                let land_on = store
                    .take(&self.logout_pending_key(&in_response_to))
                    .await?
                    .ok_or(SloError::UnknownRequest)?;
                Ok(Incoming::Response(LogoutResponse {
                    status: m.status.unwrap_or_default(),
                    land_on,
                }))
            }
            other => Err(SloError::Malformed(format!(
                "a {other} at the SLO endpoint"
            ))),
        }
    }

    fn logout_pending_key(&self, id: &str) -> String {
        format!("saml:{}:logout-pending:{id}", self.tenant)
    }

    /// The redirect to the IdP's SingleLogoutService answering `request`: a
    /// LogoutResponse with status Success (also when no session was found: the subject
    /// has none here, which is what the IdP asked for), signed with the SP key.
    pub fn logout_response_redirect(&self, request: &LogoutRequest) -> Result<String, String> {
        let (Some(signer), Some(slo)) = (&self.logout_signer, &self.idp_slo_url) else {
            return Err("Single Logout needs sp_key and the IdP's SLO endpoint".into());
        };
        let destination = self.idp_slo_response_url.as_deref().unwrap_or(slo);
        let xml = format!(
            r#"<samlp:LogoutResponse xmlns:samlp="{PROTOCOL_NS}" xmlns:saml="{ASSERTION_NS}" ID="{id}" Version="2.0" IssueInstant="{now}" Destination="{dest}" InResponseTo="{irt}"><saml:Issuer>{issuer}</saml:Issuer><samlp:Status><samlp:StatusCode Value="{SUCCESS}"/></samlp:Status></samlp:LogoutResponse>"#,
            id = new_id(),
            now = now_instant(),
            dest = escape(destination),
            irt = escape(&request.id),
            issuer = escape(&self.entity_id),
        );
        redirect_url(
            destination,
            "SAMLResponse",
            &xml,
            request.relay_state.as_deref(),
            signer,
        )
    }

    /// The SOAP envelope answering a back-channel `request`: a LogoutResponse with an
    /// enveloped XML signature by the SP key (SOAP has no query to sign), status Success
    /// as for the redirect answer.
    pub fn soap_logout_response(&self, request: &LogoutRequest) -> Result<String, String> {
        let Some(signer) = &self.logout_signer else {
            return Err("Single Logout needs sp_key".into());
        };
        let id = new_id();
        let key_info = self
            .sp_certificate
            .as_deref()
            .map(|pem| {
                format!(
                    "<ds:KeyInfo><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>",
                    super::cert_base64(pem)
                )
            })
            .unwrap_or_default();
        let template = format!(
            r##"<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo><ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/><ds:SignatureMethod Algorithm="{alg}"/><ds:Reference URI="#{id}"><ds:Transforms><ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/><ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms><ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><ds:DigestValue></ds:DigestValue></ds:Reference></ds:SignedInfo><ds:SignatureValue></ds:SignatureValue>{key_info}</ds:Signature>"##,
            alg = signer.algorithm(),
        );
        let xml = format!(
            r#"<samlp:LogoutResponse xmlns:samlp="{PROTOCOL_NS}" xmlns:saml="{ASSERTION_NS}" ID="{id}" Version="2.0" IssueInstant="{now}" InResponseTo="{irt}"><saml:Issuer>{issuer}</saml:Issuer>{template}<samlp:Status><samlp:StatusCode Value="{SUCCESS}"/></samlp:Status></samlp:LogoutResponse>"#,
            now = now_instant(),
            irt = escape(&request.id),
            issuer = escape(&self.entity_id),
        );
        let der = signer.key_der().map_err(|e| e.to_string())?;
        let signed = samael::crypto::Crypto::sign_xml(&xml, &der)
            .map_err(|e| format!("cannot sign the LogoutResponse: {e}"))?;
        // libxml writes an XML declaration, which cannot stand inside the envelope.
        let body = match signed.trim_start().strip_prefix("<?xml") {
            Some(rest) => rest.split_once("?>").map_or("", |(_, b)| b).trim(),
            None => signed.trim(),
        };
        Ok(format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>{body}</soap:Body></soap:Envelope>"#
        ))
    }

    /// Starts an SP-initiated Single Logout of a session about `name_id`: the redirect
    /// to the IdP with a signed LogoutRequest. Its ID is kept with `land_on`, where the
    /// browser goes when the IdP's LogoutResponse comes back.
    pub async fn logout_request_redirect(
        &self,
        store: &Store,
        name_id: &str,
        session_index: Option<&str>,
        land_on: &str,
    ) -> Result<String, String> {
        let (Some(signer), Some(slo)) = (&self.logout_signer, &self.idp_slo_url) else {
            return Err("Single Logout needs sp_key and the IdP's SLO endpoint".into());
        };
        let id = new_id();
        let session_index = session_index
            .map(|s| format!("<samlp:SessionIndex>{}</samlp:SessionIndex>", escape(s)))
            .unwrap_or_default();
        let xml = format!(
            r#"<samlp:LogoutRequest xmlns:samlp="{PROTOCOL_NS}" xmlns:saml="{ASSERTION_NS}" ID="{id}" Version="2.0" IssueInstant="{now}" Destination="{dest}"><saml:Issuer>{issuer}</saml:Issuer><saml:NameID>{name_id}</saml:NameID>{session_index}</samlp:LogoutRequest>"#,
            now = now_instant(),
            dest = escape(slo),
            issuer = escape(&self.entity_id),
            name_id = escape(name_id),
        );
        store
            .put_once(&self.logout_pending_key(&id), land_on, LOGOUT_PENDING_TTL)
            .await
            .map_err(|e| e.to_string())?;
        redirect_url(slo, "SAMLRequest", &xml, None, signer)
    }

    /// The IdP's signing keys, as public keys for redirect signatures.
    fn idp_public_keys(&self) -> Vec<PKey<Public>> {
        self.sp
            .idp_signing_certs()
            .ok()
            .flatten()
            .unwrap_or_default()
            .iter()
            .filter_map(|c| openssl::x509::X509::from_der(c.der_data()).ok())
            .filter_map(|x| x.public_key().ok())
            .collect()
    }

    /// HTTP-Redirect (SAML bindings §3.4.4.1): the signature covers
    /// `SAMLRequest=…&RelayState=…&SigAlg=…` exactly as those octets arrived, so the
    /// query is cut apart, not decoded and re-encoded. Returns the inflated XML and the
    /// RelayState.
    fn verify_redirect(&self, query: &str) -> Result<(String, Option<String>), SloError> {
        let raw = |name: &str| -> Result<Option<&str>, SloError> {
            let mut found = query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v);
            let first = found.next();
            if found.next().is_some() {
                return Err(SloError::Malformed(format!("{name} given twice")));
            }
            Ok(first)
        };
        let decode = |v: &str| -> String {
            url::form_urlencoded::parse(format!("v={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let (field, message) = match (raw("SAMLRequest")?, raw("SAMLResponse")?) {
            (Some(m), None) => ("SAMLRequest", m),
            (None, Some(m)) => ("SAMLResponse", m),
            _ => {
                return Err(SloError::Malformed(
                    "exactly one of SAMLRequest and SAMLResponse is needed".into(),
                ));
            }
        };
        let relay = raw("RelayState")?;
        let (Some(sig_alg), Some(signature)) = (raw("SigAlg")?, raw("Signature")?) else {
            return Err(SloError::Signature("no SigAlg or Signature".into()));
        };
        let mut signed = format!("{field}={message}");
        if let Some(r) = relay {
            signed.push_str("&RelayState=");
            signed.push_str(r);
        }
        signed.push_str("&SigAlg=");
        signed.push_str(sig_alg);
        let algorithm = decode(sig_alg);
        let digest = match algorithm.as_str() {
            RSA_SHA256 | ECDSA_SHA256 => MessageDigest::sha256(),
            RSA_SHA384 => MessageDigest::sha384(),
            RSA_SHA512 => MessageDigest::sha512(),
            RSA_SHA1 if self.allow_sha1 => MessageDigest::sha1(),
            other => {
                let hint = if other == RSA_SHA1 {
                    " (SHA-1 is accepted only when the tenant sets allow_sha1 = true)"
                } else {
                    ""
                };
                return Err(SloError::Signature(format!(
                    "signature algorithm {other} is not accepted{hint}"
                )));
            }
        };
        let ec = algorithm == ECDSA_SHA256;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(strip_whitespace(&decode(signature)))
            .map_err(|_| SloError::Signature("Signature is not base64".into()))?;
        let verified = self.idp_public_keys().iter().any(|key| {
            let wanted = if ec { Id::EC } else { Id::RSA };
            key.id() == wanted && verify(key, digest, signed.as_bytes(), &signature, ec)
        });
        if !verified {
            return Err(SloError::Signature(
                "the redirect signature does not verify with the IdP's certificates".into(),
            ));
        }
        let deflated = base64::engine::general_purpose::STANDARD
            .decode(strip_whitespace(&decode(message)))
            .map_err(|_| SloError::Malformed(format!("{field} is not base64")))?;
        let mut xml = String::new();
        flate2::read::DeflateDecoder::new(&deflated[..])
            .take(MAX_INFLATED)
            .read_to_string(&mut xml)
            .map_err(|e| SloError::Malformed(format!("{field} does not inflate: {e}")))?;
        Ok((xml, relay.map(decode)))
    }

    /// HTTP-POST and SOAP: an enveloped XML signature over the message, verified by
    /// xmlsec; only the content it covers is returned.
    fn verify_xml(&self, xml: &str) -> Result<String, SloError> {
        self.check_algorithms(xml)
            .map_err(|e| SloError::Signature(e.to_string()))?;
        self.reduce_to_idp_signed(xml)
            .map_err(|e| SloError::Signature(format!("no valid IdP signature: {e}")))
    }
}

fn verify(key: &PKey<Public>, digest: MessageDigest, data: &[u8], sig: &[u8], ec: bool) -> bool {
    // A redirect-bound ECDSA signature is r‖s, as in XML signatures; OpenSSL wants DER.
    let der;
    let sig = if ec {
        let half = sig.len() / 2;
        if sig.is_empty() || !sig.len().is_multiple_of(2) {
            return false;
        }
        let parts = (
            openssl::bn::BigNum::from_slice(&sig[..half]),
            openssl::bn::BigNum::from_slice(&sig[half..]),
        );
        let (Ok(r), Ok(s)) = parts else {
            return false;
        };
        match openssl::ecdsa::EcdsaSig::from_private_components(r, s).and_then(|s| s.to_der()) {
            Ok(d) => {
                der = d;
                &der[..]
            }
            Err(_) => return false,
        }
    } else {
        sig
    };
    openssl::sign::Verifier::new(digest, key)
        .and_then(|mut v| {
            v.update(data)?;
            v.verify(sig)
        })
        .unwrap_or(false)
}

fn strip_whitespace(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_whitespace()).collect()
}

fn new_id() -> String {
    format!("_{}", hex::encode(rand::random::<[u8; 16]>()))
}

fn now_instant() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// `destination?field=…[&RelayState=…]`, deflated and signed for HTTP-Redirect.
fn redirect_url(
    destination: &str,
    field: &str,
    xml: &str,
    relay_state: Option<&str>,
    signer: &super::RedirectSigner,
) -> Result<String, String> {
    use std::io::Write;
    let mut deflater =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    deflater
        .write_all(xml.as_bytes())
        .map_err(|e| e.to_string())?;
    let deflated = deflater.finish().map_err(|e| e.to_string())?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(deflated);
    let mut url = url::Url::parse(destination).map_err(|e| e.to_string())?;
    let mut query: String = url.query().map(|q| format!("{q}&")).unwrap_or_default();
    query.push_str(field);
    query.push('=');
    query.extend(url::form_urlencoded::byte_serialize(encoded.as_bytes()));
    if let Some(r) = relay_state {
        query.push_str("&RelayState=");
        query.extend(url::form_urlencoded::byte_serialize(r.as_bytes()));
    }
    url.set_query(Some(&query));
    signer
        .sign(&mut url)
        .map_err(|e| format!("cannot sign the logout message: {e}"))?;
    Ok(url.to_string())
}

/// Reads the parts of a LogoutRequest or LogoutResponse that matter here. Elements are
/// matched by namespace and local name; a DOCTYPE is refused outright.
fn parse(xml: &str) -> Result<Parsed, SloError> {
    use quick_xml::events::Event;
    let malformed = |m: &str| SloError::Malformed(m.to_owned());
    let mut reader = quick_xml::NsReader::from_str(xml);
    let mut out = Parsed::default();
    // Local names of the open elements, in the SAML namespaces only ("" otherwise).
    let mut path: Vec<&'static str> = Vec::new();
    let mut text: Option<String> = None;
    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| malformed(&format!("not XML: {e}")))?;
        let ns = match ns {
            quick_xml::name::ResolveResult::Bound(n) => n.as_ref().to_vec(),
            _ => Vec::new(),
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let local = e.local_name();
                let attr = |name: &str| -> Option<String> {
                    e.try_get_attribute(name).ok().flatten().and_then(|a| {
                        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .ok()
                            .map(|v| v.into_owned())
                    })
                };
                let in_protocol = ns == PROTOCOL_NS.as_bytes();
                let in_assertion = ns == ASSERTION_NS.as_bytes();
                let part: &'static str = match (path.as_slice(), local.as_ref()) {
                    ([], b"LogoutRequest" | b"LogoutResponse") if in_protocol => {
                        out.root = if local.as_ref() == b"LogoutRequest" {
                            "LogoutRequest".into()
                        } else {
                            "LogoutResponse".into()
                        };
                        out.id = attr("ID");
                        out.issue_instant = attr("IssueInstant");
                        out.not_on_or_after = attr("NotOnOrAfter");
                        out.destination = attr("Destination");
                        out.in_response_to = attr("InResponseTo");
                        "root"
                    }
                    ([], _) => return Err(malformed("not a LogoutRequest or LogoutResponse")),
                    (["root"], b"Issuer") if in_assertion => "Issuer",
                    (["root"], b"NameID") if in_assertion => "NameID",
                    (["root"], b"EncryptedID") => {
                        return Err(malformed("encrypted NameIDs are not supported"));
                    }
                    (["root"], b"SessionIndex") if in_protocol => "SessionIndex",
                    (["root"], b"Status") if in_protocol => "Status",
                    (["root", "Status"], b"StatusCode") if in_protocol => {
                        if out.status.is_none() {
                            out.status = attr("Value");
                        }
                        ""
                    }
                    _ => "",
                };
                if matches!(event, Event::Start(_)) {
                    if matches!(part, "Issuer" | "NameID" | "SessionIndex") {
                        text = Some(String::new());
                    }
                    path.push(part);
                } else if matches!(part, "Issuer" | "NameID" | "SessionIndex") {
                    store_text(&mut out, part, String::new());
                }
            }
            Event::End(_) => {
                if let Some(part) = path.pop()
                    && let Some(t) =
                        text.take_if(|_| matches!(part, "Issuer" | "NameID" | "SessionIndex"))
                {
                    store_text(&mut out, part, t);
                }
            }
            Event::Text(ref t) if text.is_some() => {
                let t = t
                    .xml10_content()
                    .map_err(|e| malformed(&format!("bad text: {e}")))?;
                if let Some(buf) = text.as_mut() {
                    buf.push_str(&t);
                }
            }
            Event::CData(ref t) if text.is_some() => {
                let t = t
                    .decode()
                    .map_err(|e| malformed(&format!("bad text: {e}")))?;
                if let Some(buf) = text.as_mut() {
                    buf.push_str(&t);
                }
            }
            Event::GeneralRef(ref r) if text.is_some() => {
                let c = r
                    .resolve_char_ref()
                    .map_err(|e| malformed(&format!("bad reference: {e}")))?;
                let s = match c {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r
                            .decode()
                            .map_err(|e| malformed(&format!("bad reference: {e}")))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| malformed("an entity reference"))?
                            .to_owned()
                    }
                };
                if let Some(buf) = text.as_mut() {
                    buf.push_str(&s);
                }
            }
            Event::DocType(_) => return Err(malformed("a DOCTYPE in a logout message")),
            Event::Eof => break,
            _ => {}
        }
    }
    if out.root.is_empty() || !path.is_empty() {
        return Err(malformed("not one LogoutRequest or LogoutResponse"));
    }
    Ok(out)
}

fn store_text(out: &mut Parsed, part: &str, text: String) {
    match part {
        "Issuer" => out.issuer = Some(text),
        "NameID" => out.name_id = Some(text),
        _ => out.session_indexes.push(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logout_requests_are_read_by_namespace() {
        let m = parse(&format!(
            r#"<samlp:LogoutRequest xmlns:samlp="{PROTOCOL_NS}" xmlns:saml="{ASSERTION_NS}" ID="_a" IssueInstant="2026-01-01T00:00:00Z"><saml:Issuer>idp</saml:Issuer><saml:NameID Format="x">ada&amp;co</saml:NameID><samlp:SessionIndex>s1</samlp:SessionIndex><samlp:SessionIndex>s2</samlp:SessionIndex></samlp:LogoutRequest>"#
        ))
        .unwrap();
        assert_eq!(m.root, "LogoutRequest");
        assert_eq!(m.id.as_deref(), Some("_a"));
        assert_eq!(m.issuer.as_deref(), Some("idp"));
        assert_eq!(m.name_id.as_deref(), Some("ada&co"));
        assert_eq!(m.session_indexes, ["s1", "s2"]);
        // Look-alikes in another namespace are not read.
        let m = parse(&format!(
            r#"<samlp:LogoutRequest xmlns:samlp="{PROTOCOL_NS}" xmlns:x="urn:x" ID="_a"><x:NameID>evil</x:NameID></samlp:LogoutRequest>"#
        ))
        .unwrap();
        assert_eq!(m.name_id, None);
        assert!(parse("<x/>").is_err());
        assert!(parse("<!DOCTYPE x><x/>").is_err());
    }

    #[test]
    fn logout_responses_carry_their_status() {
        let m = parse(&format!(
            r#"<samlp:LogoutResponse xmlns:samlp="{PROTOCOL_NS}" InResponseTo="_r"><samlp:Status><samlp:StatusCode Value="{SUCCESS}"/></samlp:Status></samlp:LogoutResponse>"#
        ))
        .unwrap();
        assert_eq!(m.in_response_to.as_deref(), Some("_r"));
        assert_eq!(m.status.as_deref(), Some(SUCCESS));
    }
}
