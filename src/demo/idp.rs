//! The demo's development IdP, under `/_idgate/dev-idp/`. It exists only in `idgate demo`
//! (the gateway has no route to it otherwise). It shows a form for the identity to log
//! in as, then signs a real SAML response with a key made at start and posts it to the
//! ACS, so a demo login goes through exactly the validation a production IdP's does.

use std::io::Read;

use base64::Engine;
use samael::crypto::{Crypto, CryptoProvider};
use samael::idp::{CertificateParams, IdentityProvider, KeyType, Rsa};

use crate::response::escape_html;

/// The dev IdP's entity id.
pub const ENTITY_ID: &str = "urn:idgate:dev-idp";

/// The attributes the dev IdP sends, as (SAML attribute name, form label); the names are
/// the demo tenant's attribute mapping.
const FIELDS: [(&str, &str); 7] = [
    ("uid", "User id"),
    ("name", "First name"),
    ("surname", "Last name"),
    ("email", "Email"),
    ("group_uid", "Group (company) id"),
    ("group_name", "Group name"),
    ("group_role", "Role"),
];

/// A ready-made person on the picker, with a value for each of [`FIELDS`].
struct Person {
    values: [&'static str; 7],
}

/// Two companies, and two people in one of them, so switching user shows both a
/// different role and a different company.
const PEOPLE: [Person; 3] = [
    Person {
        values: [
            "ada",
            "Ada",
            "Lovelace",
            "ada@example.com",
            "analytical-engines",
            "Analytical Engines Ltd",
            "Admin",
        ],
    },
    Person {
        values: [
            "charles",
            "Charles",
            "Babbage",
            "charles@example.com",
            "analytical-engines",
            "Analytical Engines Ltd",
            "Member",
        ],
    },
    Person {
        values: [
            "grace",
            "Grace",
            "Hopper",
            "grace@example.com",
            "navy",
            "US Navy",
            "Admin",
        ],
    },
];

/// Inline, so the picker needs nothing from outside; readable on a phone.
const PICKER_STYLE: &str = "\
*{box-sizing:border-box}
body{margin:0;background:#f6f8fa;color:#1f2328;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}
main{max-width:40rem;margin:0 auto;padding:1rem}
h1{font-size:1.5rem;margin:.5rem 0}
h2{font-size:1.1rem;margin:0 0 .5rem}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:1rem 1.25rem;margin:1rem 0}
form.person{display:flex;flex-wrap:wrap;gap:.25rem .75rem;align-items:center;margin:.6rem 0}
form.person span{font-size:.9rem;color:#59636e;overflow-wrap:anywhere}
form.other label{display:block;margin:.4rem 0;font-size:.9rem}
form.other input{display:block;width:100%;font:inherit;padding:.3rem .5rem;border:1px solid #d0d7de;border-radius:6px}
button{font:inherit;padding:.4rem .9rem;border-radius:6px;border:1px solid #0969da;background:#0969da;color:#fff;cursor:pointer}
";

/// A signing key and certificate made at start.
pub struct DevIdp {
    key_der: Vec<u8>,
    cert_b64: String,
    /// The certificate as PEM, for the demo tenant's `idp_certificate`.
    pub cert_pem: String,
    acs_url: String,
    audience: String,
}

/// Why the dev IdP could not do its job.
#[derive(Debug, thiserror::Error)]
#[error("dev IdP: {0}")]
pub struct DevIdpError(pub String);

fn fail(e: impl std::fmt::Display) -> DevIdpError {
    DevIdpError(e.to_string())
}

impl DevIdp {
    /// Makes a fresh RSA-2048 key and a self-signed certificate for the SP at
    /// `acs_url` / `audience`.
    pub fn new(acs_url: String, audience: String) -> Result<DevIdp, DevIdpError> {
        let idp = IdentityProvider::generate_new(KeyType::Rsa(Rsa::Rsa2048)).map_err(fail)?;
        let cert = idp
            .create_certificate(&CertificateParams {
                common_name: "idgate dev IdP",
                issuer_name: "idgate dev IdP",
                days_until_expiration: 30,
            })
            .map_err(fail)?;
        let cert_b64 = base64::engine::general_purpose::STANDARD.encode(cert.der_data());
        let wrapped: Vec<String> = cert_b64
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let cert_pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            wrapped.join("\n")
        );
        Ok(DevIdp {
            key_der: idp.export_private_key_der().map_err(fail)?,
            cert_b64,
            cert_pem,
            acs_url,
            audience,
        })
    }

    /// The user picker for an AuthnRequest (HTTP-Redirect binding): one button per
    /// ready-made person, and a form for anyone else. Each carries the AuthnRequest's id
    /// and RelayState along, so every choice completes the same login.
    pub fn form(&self, saml_request: Option<&str>, relay_state: Option<&str>) -> String {
        let request_id = saml_request.and_then(request_id).unwrap_or_default();
        let carried = format!(
            "<input type=\"hidden\" name=\"request_id\" value=\"{}\">\
             <input type=\"hidden\" name=\"relay_state\" value=\"{}\">",
            escape_html(&request_id),
            escape_html(relay_state.unwrap_or_default()),
        );
        let people: String = PEOPLE
            .iter()
            .map(|p| {
                let hidden: String = FIELDS
                    .iter()
                    .zip(p.values)
                    .map(|((name, _), value)| {
                        format!(
                            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                            escape_html(value)
                        )
                    })
                    .collect();
                let [uid, first, last, email, _, group_name, role] = p.values;
                format!(
                    "<form method=\"post\" action=\"/_idgate/dev-idp/sso\" class=\"person\">{carried}{hidden}\
                     <button type=\"submit\" id=\"as-{uid}\">Sign in as {first} {last}</button>\
                     <span><code>{uid}</code> · {email} · {role} at {group_name}</span></form>",
                    uid = escape_html(uid),
                    first = escape_html(first),
                    last = escape_html(last),
                    email = escape_html(email),
                    role = escape_html(role),
                    group_name = escape_html(group_name),
                )
            })
            .collect();
        let fields: String = FIELDS
            .iter()
            .map(|(name, label)| {
                let required = if matches!(*name, "uid" | "group_uid") {
                    " required"
                } else {
                    ""
                };
                format!(
                    "<label>{label}<input name=\"{name}\" autocomplete=\"off\"{required}></label>"
                )
            })
            .collect();
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>idgate dev IdP: who are you?</title><style>{PICKER_STYLE}</style></head>\
             <body><main><h1>idgate development IdP</h1>\
             <p>Demo only: this stands in for your company's identity provider (Okta, Entra \
             ID, …). Pick who to sign in as. It signs a real SAML response with a key made at \
             start, and idgate checks it like any IdP's.</p>\
             <section>{people}</section>\
             <section><h2>Someone else</h2>\
             <form method=\"post\" action=\"/_idgate/dev-idp/sso\" class=\"other\">{carried}{fields}\
             <p><button type=\"submit\" id=\"as-other\">Sign in</button></p></form></section>\
             </main></body></html>\n",
        )
    }

    /// Signs a response for the submitted form and returns the auto-posting page that
    /// carries it to the ACS.
    pub fn respond(&self, form: &[(String, String)]) -> Result<String, DevIdpError> {
        let get = |k: &str| {
            form.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let request_id = get("request_id");
        if !request_id.is_empty() && !is_xml_id(request_id) {
            return Err(DevIdpError("malformed request id".into()));
        }
        let now = chrono::Utc::now();
        let ts = |d: i64| {
            (now + chrono::Duration::seconds(d)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        let id = |p: &str| format!("_{p}{}", hex::encode(rand::random::<[u8; 16]>()));
        let (response_id, assertion_id) = (id("r"), id("a"));
        let irt = if request_id.is_empty() {
            String::new()
        } else {
            format!(" InResponseTo=\"{request_id}\"")
        };
        let x = escape_html;
        let attributes: String = ["uid", "email", "name", "surname", "group_uid", "group_name", "group_role"]
            .iter()
            .filter(|n| !get(n).is_empty())
            .map(|n| {
                format!(
                    "<saml:Attribute Name=\"{n}\"><saml:AttributeValue>{}</saml:AttributeValue></saml:Attribute>",
                    x(get(n))
                )
            })
            .collect();
        let signature = format!(
            "<ds:Signature xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\"><ds:SignedInfo>\
             <ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/>\
             <ds:SignatureMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256\"/>\
             <ds:Reference URI=\"#{assertion_id}\"><ds:Transforms>\
             <ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/>\
             <ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/></ds:Transforms>\
             <ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\"/>\
             <ds:DigestValue></ds:DigestValue></ds:Reference></ds:SignedInfo>\
             <ds:SignatureValue></ds:SignatureValue><ds:KeyInfo><ds:X509Data>\
             <ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></ds:Signature>",
            self.cert_b64
        );
        let xml = format!(
            "<samlp:Response xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" \
             xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"{response_id}\" Version=\"2.0\" \
             IssueInstant=\"{now}\" Destination=\"{acs}\"{irt}><saml:Issuer>{ENTITY_ID}</saml:Issuer>\
             <samlp:Status><samlp:StatusCode Value=\"urn:oasis:names:tc:SAML:2.0:status:Success\"/></samlp:Status>\
             <saml:Assertion ID=\"{assertion_id}\" Version=\"2.0\" IssueInstant=\"{now}\">\
             <saml:Issuer>{ENTITY_ID}</saml:Issuer>{signature}<saml:Subject>\
             <saml:NameID Format=\"urn:oasis:names:tc:SAML:2.0:nameid-format:persistent\">{uid}</saml:NameID>\
             <saml:SubjectConfirmation Method=\"urn:oasis:names:tc:SAML:2.0:cm:bearer\">\
             <saml:SubjectConfirmationData{irt} NotOnOrAfter=\"{until}\" Recipient=\"{acs}\"/>\
             </saml:SubjectConfirmation></saml:Subject>\
             <saml:Conditions NotBefore=\"{before}\" NotOnOrAfter=\"{until}\"><saml:AudienceRestriction>\
             <saml:Audience>{audience}</saml:Audience></saml:AudienceRestriction></saml:Conditions>\
             <saml:AuthnStatement AuthnInstant=\"{now}\"><saml:AuthnContext><saml:AuthnContextClassRef>\
             urn:oasis:names:tc:SAML:2.0:ac:classes:unspecified</saml:AuthnContextClassRef></saml:AuthnContext>\
             </saml:AuthnStatement><saml:AttributeStatement>{attributes}</saml:AttributeStatement>\
             </saml:Assertion></samlp:Response>",
            now = ts(0),
            before = ts(-30),
            until = ts(300),
            acs = x(&self.acs_url),
            audience = x(&self.audience),
            uid = x(get("uid")),
        );
        let signed = Crypto::sign_xml(xml.as_bytes(), &self.key_der).map_err(fail)?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(signed.as_bytes());
        Ok(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Signing in…</title></head>\
             <body onload=\"document.forms[0].submit()\"><form method=\"post\" action=\"{}\">\
             <input type=\"hidden\" name=\"SAMLResponse\" value=\"{encoded}\">\
             <input type=\"hidden\" name=\"RelayState\" value=\"{}\">\
             <noscript><button type=\"submit\">Continue</button></noscript></form></body></html>\n",
            x(&self.acs_url),
            x(get("relay_state")),
        ))
    }
}

fn is_xml_id(s: &str) -> bool {
    s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The ID of a deflated, base64 AuthnRequest.
fn request_id(saml_request: &str) -> Option<String> {
    let deflated = base64::engine::general_purpose::STANDARD
        .decode(saml_request)
        .ok()?;
    let mut xml = String::new();
    flate2::read::DeflateDecoder::new(&deflated[..])
        .take(64 * 1024)
        .read_to_string(&mut xml)
        .ok()?;
    let start = xml.find(" ID=\"")? + 5;
    let id = &xml[start..start + xml[start..].find('"')?];
    is_xml_id(id).then(|| id.to_owned())
}
