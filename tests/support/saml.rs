//! SAML responses for tests, signed by the `xmlsec1` CLI (see tests/fixtures/README.md).
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// An IdP signing key and certificate, made with `openssl` for this test.
pub struct TestIdp {
    /// Where key and certificate live (removed on drop).
    _dir: tempfile::TempDir,
    /// `idp.key`
    pub key: PathBuf,
    /// `idp.crt`
    pub cert: PathBuf,
}

impl TestIdp {
    /// Makes a fresh RSA-2048 key and self-signed certificate.
    pub fn new(cn: &str) -> TestIdp {
        TestIdp::with_bits(cn, 2048)
    }

    /// Makes a fresh RSA key of `bits` (Maestrano's IdP signs with RSA-1024).
    pub fn with_bits(cn: &str, bits: u32) -> TestIdp {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("idp.key");
        let cert = dir.path().join("idp.crt");
        let (k, c) = (key.display().to_string(), cert.display().to_string());
        super::openssl(&[
            "req",
            "-x509",
            "-newkey",
            &format!("rsa:{bits}"),
            "-sha256",
            "-days",
            "1",
            "-nodes",
            "-keyout",
            &k,
            "-out",
            &c,
            "-subj",
            &format!("/CN={cn}"),
        ]);
        TestIdp {
            _dir: dir,
            key,
            cert,
        }
    }
}

/// What goes into a response.
#[derive(Clone)]
pub struct ResponseSpec {
    pub issuer: String,
    pub destination: String,
    pub recipient: String,
    pub audience: String,
    pub in_response_to: Option<String>,
    pub name_id: String,
    pub attributes: Vec<(String, String)>,
    pub assertion_id: String,
    /// Seconds from now for NotBefore / NotOnOrAfter.
    pub not_before: i64,
    pub not_on_or_after: i64,
    pub status: String,
}

/// The config of tenant `acme`, whose SAML IdP is `idp_entity_id` signing with the
/// certificate(s) in `cert`, plus `saml_extra` lines under `[tenants.saml]`.
pub fn acme_tenant(idp_entity_id: &str, cert: &Path, saml_extra: &str) -> String {
    format!(
        "[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_entity_id = \"{idp_entity_id}\"\n\
         idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"file:{}\"\n{saml_extra}\n",
        cert.display()
    )
}

impl ResponseSpec {
    /// A valid response for `acs` / `audience` from `issuer`.
    pub fn new(issuer: &str, acs: &str, audience: &str, in_response_to: Option<&str>) -> Self {
        ResponseSpec {
            issuer: issuer.into(),
            destination: acs.into(),
            recipient: acs.into(),
            audience: audience.into(),
            in_response_to: in_response_to.map(Into::into),
            name_id: "ada@example.com".into(),
            attributes: vec![
                ("uid".into(), "idp-user-1".into()),
                ("email".into(), "ada@example.com".into()),
                ("name".into(), "Ada".into()),
                ("surname".into(), "Lovelace".into()),
                ("group_uid".into(), "grp-1".into()),
                ("group_name".into(), "Analytical Engines".into()),
                ("group_role".into(), "Admin".into()),
            ],
            assertion_id: format!("_a{}", rand_hex()),
            not_before: -30,
            not_on_or_after: 300,
            status: "urn:oasis:names:tc:SAML:2.0:status:Success".into(),
        }
    }

    /// Replaces (or adds) an attribute; the result is a new assertion (new id).
    pub fn attr(mut self, name: &str, value: &str) -> Self {
        self.attributes.retain(|(n, _)| n != name);
        self.attributes.push((name.into(), value.into()));
        self.fresh()
    }

    /// The same content as a new assertion (new id), so it is not a replay.
    pub fn fresh(mut self) -> Self {
        self.assertion_id = format!("_a{}", rand_hex());
        self
    }
}

fn rand_hex() -> String {
    let bytes: [u8; 12] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ts(offset: i64) -> String {
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(offset.max(0) as u64)
        - std::time::Duration::from_secs((-offset).max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Escapes text for XML; control characters become character references, as an IdP
/// must write them (a literal CR would be read back as LF, and NUL cannot be written).
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c if c.is_control() && c != '\t' => out.push_str(&format!("&#{};", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The signature template xmlsec1 fills in (RSA-SHA256, SHA-256 digest).
pub fn signature_template(reference: &str) -> String {
    signature_template_with(
        reference,
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        "http://www.w3.org/2001/04/xmlenc#sha256",
    )
}

/// The signature template with the given signature and digest algorithms.
pub fn signature_template_with(reference: &str, signature: &str, digest: &str) -> String {
    format!(
        r##"<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo><ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/><ds:SignatureMethod Algorithm="{signature}"/><ds:Reference URI="#{reference}"><ds:Transforms><ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/><ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms><ds:DigestMethod Algorithm="{digest}"/><ds:DigestValue></ds:DigestValue></ds:Reference></ds:SignedInfo><ds:SignatureValue></ds:SignatureValue><ds:KeyInfo><ds:X509Data><ds:X509Certificate></ds:X509Certificate></ds:X509Data></ds:KeyInfo></ds:Signature>"##
    )
}

/// A Response whose Assertion is signed with RSA-SHA1 and a SHA-1 digest (legacy IdPs).
pub fn sha1_signed_assertion_response(s: &ResponseSpec, idp: &TestIdp) -> String {
    let sig = signature_template_with(
        &s.assertion_id,
        "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
        "http://www.w3.org/2000/09/xmldsig#sha1",
    );
    let doc = response_xml(s, &format!("_r{}", rand_hex()), "", &assertion_xml(s, &sig));
    xmlsec_sign(&doc, &idp.key, &idp.cert, ASSERTION)
}

/// The Assertion element; `signature` is placed after its Issuer.
pub fn assertion_xml(s: &ResponseSpec, signature: &str) -> String {
    let irt = s
        .in_response_to
        .as_ref()
        .map(|i| format!(r#" InResponseTo="{i}""#))
        .unwrap_or_default();
    let attrs: String = s
        .attributes
        .iter()
        .map(|(n, v)| {
            format!(
                r#"<saml:Attribute Name="{}" NameFormat="urn:oasis:names:tc:SAML:2.0:attrname-format:basic"><saml:AttributeValue>{}</saml:AttributeValue></saml:Attribute>"#,
                xml_escape(n),
                xml_escape(v)
            )
        })
        .collect();
    format!(
        r#"<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{id}" Version="2.0" IssueInstant="{now}"><saml:Issuer>{issuer}</saml:Issuer>{signature}<saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress">{name_id}</saml:NameID><saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer"><saml:SubjectConfirmationData{irt} NotOnOrAfter="{nooa}" Recipient="{recipient}"/></saml:SubjectConfirmation></saml:Subject><saml:Conditions NotBefore="{nb}" NotOnOrAfter="{nooa}">{audience}</saml:Conditions><saml:AuthnStatement AuthnInstant="{now}" SessionIndex="{id}"><saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement><saml:AttributeStatement>{attrs}</saml:AttributeStatement></saml:Assertion>"#,
        id = s.assertion_id,
        now = ts(0),
        issuer = xml_escape(&s.issuer),
        name_id = xml_escape(&s.name_id),
        nooa = ts(s.not_on_or_after),
        nb = ts(s.not_before),
        recipient = xml_escape(&s.recipient),
        // An empty audience leaves the AudienceRestriction out altogether.
        audience = if s.audience.is_empty() {
            String::new()
        } else {
            format!(
                "<saml:AudienceRestriction><saml:Audience>{}</saml:Audience></saml:AudienceRestriction>",
                xml_escape(&s.audience)
            )
        },
    )
}

/// The Response element around `assertion`, with `signature` after its Issuer.
pub fn response_xml(
    s: &ResponseSpec,
    response_id: &str,
    signature: &str,
    assertion: &str,
) -> String {
    let irt = s
        .in_response_to
        .as_ref()
        .map(|i| format!(r#" InResponseTo="{i}""#))
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{response_id}" Version="2.0" IssueInstant="{now}" Destination="{dest}"{irt}><saml:Issuer>{issuer}</saml:Issuer>{signature}<samlp:Status><samlp:StatusCode Value="{status}"/></samlp:Status>{assertion}</samlp:Response>"#,
        now = ts(0),
        dest = xml_escape(&s.destination),
        issuer = xml_escape(&s.issuer),
        status = s.status,
    )
}

/// Runs `xmlsec1 --sign` on `xml`, with IDs of `id_element` registered.
pub fn xmlsec_sign(xml: &str, key: &Path, cert: &Path, id_element: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("unsigned.xml");
    let output = dir.path().join("signed.xml");
    std::fs::write(&input, xml).unwrap();
    let out = Command::new("xmlsec1")
        .arg("--sign")
        .arg("--privkey-pem")
        .arg(format!("{},{}", key.display(), cert.display()))
        .arg("--id-attr:ID")
        .arg(id_element)
        .arg("--output")
        .arg(&output)
        .arg(&input)
        .output()
        .expect("xmlsec1 is installed by `make test`");
    assert!(
        out.status.success(),
        "xmlsec1 failed: {}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(output).unwrap()
}

const ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion:Assertion";
const RESPONSE: &str = "urn:oasis:names:tc:SAML:2.0:protocol:Response";

/// A Response whose Assertion is signed by `idp`.
pub fn signed_assertion_response(s: &ResponseSpec, idp: &TestIdp) -> String {
    let assertion = assertion_xml(s, &signature_template(&s.assertion_id));
    let doc = response_xml(s, &format!("_r{}", rand_hex()), "", &assertion);
    xmlsec_sign(&doc, &idp.key, &idp.cert, ASSERTION)
}

/// As [`signed_assertion_response`], with typed values (`xsi:type="xs:string"`) and the
/// `xs` and `xsi` prefixes declared only on the Response root. Exclusive C14N carries
/// `xsi` into the signed Assertion (an attribute name uses it) but not `xs`, which only
/// an attribute value names: what the signature covers leaves `xs` undeclared.
pub fn typed_signed_assertion_response(s: &ResponseSpec, idp: &TestIdp) -> String {
    let assertion = assertion_xml(s, &signature_template(&s.assertion_id)).replace(
        "<saml:AttributeValue>",
        r#"<saml:AttributeValue xsi:type="xs:string">"#,
    );
    let doc = response_xml(s, &format!("_r{}", rand_hex()), "", &assertion).replacen(
        "<samlp:Response ",
        r#"<samlp:Response xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" "#,
        1,
    );
    xmlsec_sign(&doc, &idp.key, &idp.cert, ASSERTION)
}

/// The Assertion of `s` alone, signed by `idp` (its own signature covers it wherever
/// it is placed: exclusive C14N carries only the namespaces it uses).
pub fn signed_assertion(s: &ResponseSpec, idp: &TestIdp) -> String {
    let signed = xmlsec_sign(
        &assertion_xml(s, &signature_template(&s.assertion_id)),
        &idp.key,
        &idp.cert,
        ASSERTION,
    );
    let start = signed.find("<saml:Assertion").expect("signed assertion");
    signed[start..].trim_end().to_owned()
}

/// The unsigned Response around a signed Assertion, as anyone on the way may rewrite
/// it: the signature does not cover a byte of it.
#[derive(Clone)]
pub struct Shell {
    /// `Destination`, when present.
    pub destination: Option<String>,
    /// The Response's own `Issuer`, when present.
    pub issuer: Option<String>,
    /// The whole `samlp:Status` element.
    pub status: String,
    /// Markup before the signed Assertion (forged assertions, comments, extensions).
    pub before: String,
    /// Markup after it.
    pub after: String,
}

impl Shell {
    /// The shell an honest IdP would send for `s`.
    pub fn of(s: &ResponseSpec) -> Shell {
        Shell {
            destination: Some(s.destination.clone()),
            issuer: Some(s.issuer.clone()),
            status: format!(
                r#"<samlp:Status><samlp:StatusCode Value="{}"/></samlp:Status>"#,
                s.status
            ),
            before: String::new(),
            after: String::new(),
        }
    }
}

/// A Response built from `shell` around `assertion` (from [`signed_assertion`]).
pub fn shell_response(s: &ResponseSpec, shell: &Shell, assertion: &str) -> String {
    let irt = s
        .in_response_to
        .as_ref()
        .map(|i| format!(r#" InResponseTo="{i}""#))
        .unwrap_or_default();
    let dest = shell
        .destination
        .as_ref()
        .map(|d| format!(r#" Destination="{}""#, xml_escape(d)))
        .unwrap_or_default();
    let issuer = shell
        .issuer
        .as_ref()
        .map(|i| format!("<saml:Issuer>{}</saml:Issuer>", xml_escape(i)))
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_r{rid}" Version="2.0" IssueInstant="{now}"{dest}{irt}>{issuer}{status}{before}{assertion}{after}</samlp:Response>"#,
        rid = rand_hex(),
        now = ts(0),
        status = shell.status,
        before = shell.before,
        after = shell.after,
    )
}

/// A Response signed as a whole by `idp`, its Assertion unsigned.
pub fn signed_response(s: &ResponseSpec, idp: &TestIdp) -> String {
    let rid = format!("_r{}", rand_hex());
    let assertion = assertion_xml(s, "");
    let doc = response_xml(s, &rid, &signature_template(&rid), &assertion);
    xmlsec_sign(&doc, &idp.key, &idp.cert, RESPONSE)
}

/// A signed Response around an Assertion signed itself, as ADFS or Okta send it when
/// set to sign both.
pub fn signed_response_and_assertion(s: &ResponseSpec, idp: &TestIdp) -> String {
    signed_response_around(s, idp, &signed_assertion(s, idp))
}

/// A Response with nothing signed.
pub fn unsigned_response(s: &ResponseSpec) -> String {
    response_xml(s, &format!("_r{}", rand_hex()), "", &assertion_xml(s, ""))
}

/// Base64 for the HTTP-POST binding.
pub fn b64(xml: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, xml.as_bytes())
}

/// How an assertion is encrypted: the content cipher and the key transport, as XML
/// Encryption URIs (see tests/fixtures/README.md for the commands behind each).
#[derive(Clone, Copy, Debug)]
pub struct Encryption {
    /// `xmlenc11#aes128-gcm`, `xmlenc#aes256-cbc`, …
    pub content: &'static str,
    /// `xmlenc#rsa-oaep-mgf1p`, `xmlenc11#rsa-oaep` or `xmlenc#rsa-1_5`.
    pub transport: &'static str,
    /// The OAEP `DigestMethod`, when one is written.
    pub digest: Option<&'static str>,
    /// The `xenc11:MGF`, when one is written.
    pub mgf: Option<&'static str>,
}

pub const AES128_GCM: &str = "http://www.w3.org/2009/xmlenc11#aes128-gcm";
pub const AES192_GCM: &str = "http://www.w3.org/2009/xmlenc11#aes192-gcm";
pub const AES256_GCM: &str = "http://www.w3.org/2009/xmlenc11#aes256-gcm";
pub const AES128_CBC: &str = "http://www.w3.org/2001/04/xmlenc#aes128-cbc";
pub const AES192_CBC: &str = "http://www.w3.org/2001/04/xmlenc#aes192-cbc";
pub const AES256_CBC: &str = "http://www.w3.org/2001/04/xmlenc#aes256-cbc";
pub const RSA_OAEP_MGF1P: &str = "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p";
pub const RSA_OAEP: &str = "http://www.w3.org/2009/xmlenc11#rsa-oaep";
pub const RSA_1_5: &str = "http://www.w3.org/2001/04/xmlenc#rsa-1_5";

/// Digest URIs of XML Signature / Encryption, by OpenSSL digest name.
pub fn digest_uri(name: &str) -> &'static str {
    match name {
        "sha1" => "http://www.w3.org/2000/09/xmldsig#sha1",
        "sha256" => "http://www.w3.org/2001/04/xmlenc#sha256",
        "sha384" => "http://www.w3.org/2001/04/xmldsig-more#sha384",
        "sha512" => "http://www.w3.org/2001/04/xmlenc#sha512",
        other => panic!("no digest {other}"),
    }
}

/// The MGF1 URI of XML Encryption 1.1 for an OpenSSL digest name.
pub fn mgf_uri(name: &str) -> &'static str {
    match name {
        "sha1" => "http://www.w3.org/2009/xmlenc11#mgf1sha1",
        "sha256" => "http://www.w3.org/2009/xmlenc11#mgf1sha256",
        "sha384" => "http://www.w3.org/2009/xmlenc11#mgf1sha384",
        "sha512" => "http://www.w3.org/2009/xmlenc11#mgf1sha512",
        other => panic!("no MGF {other}"),
    }
}

fn openssl_digest_name(uri: Option<&str>) -> &'static str {
    let uri = uri.unwrap_or_default();
    ["sha256", "sha384", "sha512"]
        .into_iter()
        .find(|d| uri.ends_with(d))
        .unwrap_or("sha1")
}

impl Encryption {
    /// `content` with RSA-OAEP-MGF1P (SHA-1), what xmlsec1 and most IdPs write.
    pub fn mgf1p(content: &'static str) -> Encryption {
        Encryption {
            content,
            transport: RSA_OAEP_MGF1P,
            digest: None,
            mgf: None,
        }
    }

    /// `content` with XML Encryption 1.1 RSA-OAEP, the given digest and MGF1 digest.
    pub fn oaep(content: &'static str, digest: &str, mgf: &str) -> Encryption {
        Encryption {
            content,
            transport: RSA_OAEP,
            digest: Some(digest_uri(digest)),
            mgf: Some(mgf_uri(mgf)),
        }
    }

    fn key_bits(&self) -> usize {
        if self.content.contains("128") {
            128
        } else if self.content.contains("192") {
            192
        } else {
            256
        }
    }
}

/// `assertion` (an Assertion element, signed or not) encrypted to the certificate
/// `cert`, as the `saml:EncryptedAssertion` element an IdP puts in its Response.
///
/// xmlsec1 1.2 writes rsa-oaep-mgf1p (SHA-1 only) and rsa-1_5 itself. It knows neither
/// XML Encryption 1.1's rsa-oaep nor other OAEP digests, so for those it encrypts the
/// content under a session key read from a file (`--aeskey`), and `openssl pkeyutl`
/// wraps that key with the OAEP parameters named in the EncryptedKey.
pub fn encrypt_assertion(assertion: &str, cert: &Path, e: &Encryption) -> String {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("assertion.xml");
    let template = dir.path().join("template.xml");
    let output = dir.path().join("encrypted.xml");
    std::fs::write(&data, assertion).unwrap();
    let xmlsec_wraps =
        e.transport == RSA_1_5 || (e.transport == RSA_OAEP_MGF1P && e.digest.is_none());
    let key_info = if xmlsec_wraps {
        format!(
            r#"<xenc:EncryptedKey><xenc:EncryptionMethod Algorithm="{}"/><xenc:CipherData><xenc:CipherValue/></xenc:CipherData></xenc:EncryptedKey>"#,
            e.transport
        )
    } else {
        "<ds:KeyName>session</ds:KeyName>".to_owned()
    };
    std::fs::write(
        &template,
        format!(
            r#"<xenc:EncryptedData xmlns:xenc="http://www.w3.org/2001/04/xmlenc#" Type="http://www.w3.org/2001/04/xmlenc#Element"><xenc:EncryptionMethod Algorithm="{}"/><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#">{key_info}</ds:KeyInfo><xenc:CipherData><xenc:CipherValue/></xenc:CipherData></xenc:EncryptedData>"#,
            e.content
        ),
    )
    .unwrap();
    let mut cmd = Command::new("xmlsec1");
    cmd.arg("--encrypt");
    let session = dir.path().join("session.bin");
    if xmlsec_wraps {
        cmd.arg("--pubkey-cert-pem")
            .arg(cert)
            .arg("--session-key")
            .arg(format!("aes-{}", e.key_bits()));
    } else {
        super::openssl(&[
            "rand",
            "-out",
            &session.display().to_string(),
            &(e.key_bits() / 8).to_string(),
        ]);
        cmd.arg("--aeskey:session").arg(&session);
    }
    let out = cmd
        .arg("--xml-data")
        .arg(&data)
        .arg("--output")
        .arg(&output)
        .arg(&template)
        .output()
        .expect("xmlsec1 is installed by `make test`");
    assert!(
        out.status.success(),
        "xmlsec1 --encrypt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut encrypted = std::fs::read_to_string(&output).unwrap();
    if let Some(start) = encrypted.find("<xenc:EncryptedData") {
        encrypted.drain(..start);
    }
    if !xmlsec_wraps {
        let wrapped = dir.path().join("session.wrapped");
        let digest = openssl_digest_name(e.digest);
        let mgf = if e.transport == RSA_OAEP_MGF1P {
            "sha1"
        } else {
            openssl_digest_name(e.mgf)
        };
        super::openssl(&[
            "pkeyutl",
            "-encrypt",
            "-certin",
            "-inkey",
            &cert.display().to_string(),
            "-in",
            &session.display().to_string(),
            "-out",
            &wrapped.display().to_string(),
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &format!("rsa_oaep_md:{digest}"),
            "-pkeyopt",
            &format!("rsa_mgf1_md:{mgf}"),
        ]);
        let wrapped = std::fs::read(&wrapped).unwrap();
        let params = e
            .digest
            .map(|d| format!(r#"<ds:DigestMethod Algorithm="{d}"/>"#))
            .unwrap_or_default()
            + &e
                .mgf
                .map(|m| format!(r#"<xenc11:MGF xmlns:xenc11="http://www.w3.org/2009/xmlenc11#" Algorithm="{m}"/>"#))
                .unwrap_or_default();
        let key = format!(
            r#"<xenc:EncryptedKey><xenc:EncryptionMethod Algorithm="{}">{params}</xenc:EncryptionMethod><xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData></xenc:EncryptedKey>"#,
            e.transport,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, wrapped)
        );
        encrypted = encrypted.replace("<ds:KeyName>session</ds:KeyName>", &key);
    }
    format!(
        "<saml:EncryptedAssertion>{}</saml:EncryptedAssertion>",
        encrypted.trim_end()
    )
}

/// A Response signed as a whole by `idp` around `encrypted` (an EncryptedAssertion):
/// the signature covers the ciphertext.
pub fn signed_response_around(s: &ResponseSpec, idp: &TestIdp, encrypted: &str) -> String {
    let rid = format!("_r{}", rand_hex());
    let doc = response_xml(s, &rid, &signature_template(&rid), encrypted);
    xmlsec_sign(&doc, &idp.key, &idp.cert, RESPONSE)
}

/// An unsigned Response around `encrypted`, as an honest IdP would shape it.
pub fn response_around(s: &ResponseSpec, encrypted: &str) -> String {
    shell_response(s, &Shell::of(s), encrypted)
}

/// A LogoutRequest as an IdP writes it, to `destination`, issued at `issue_instant`,
/// valid until `not_on_or_after` (no NotOnOrAfter attribute when `None`); `signature`
/// goes after the Issuer (a [`signature_template`] to sign it with [`xmlsec_sign`]).
#[allow(clippy::too_many_arguments)]
pub fn logout_request_at(
    destination: &str,
    id: &str,
    issue_instant: &str,
    not_on_or_after: Option<&str>,
    issuer: &str,
    name_id: &str,
    session_index: Option<&str>,
    signature: &str,
) -> String {
    let index = session_index
        .map(|s| format!("<samlp:SessionIndex>{s}</samlp:SessionIndex>"))
        .unwrap_or_default();
    let until = not_on_or_after
        .map(|t| format!(" NotOnOrAfter=\"{t}\""))
        .unwrap_or_default();
    format!(
        r#"<samlp:LogoutRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{id}" Version="2.0" IssueInstant="{issue_instant}" Destination="{destination}"{until}><saml:Issuer>{issuer}</saml:Issuer>{signature}<saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress">{name_id}</saml:NameID>{index}</samlp:LogoutRequest>"#,
    )
}
