//! Encrypted assertions (XML Encryption 1.1, as SAML 2.0 profiles it): the
//! `saml:EncryptedAssertion` of a Response is decrypted with the SP's keys and the
//! plaintext `saml:Assertion` is put in its place, so that the rest of the ACS (samael's
//! signature verification, the shell checks, audience, replay) judges the result as it
//! would a plaintext response.
//!
//! samael 0.0.22 reads only AES-128-CBC/GCM content and only after verifying the
//! signatures it can see, which for an encrypted assertion is not the order SAML needs; so
//! the EncryptedAssertion is parsed here with quick-xml (no DTD, no entity expansion) and
//! decrypted with OpenSSL. The RustCrypto `rsa` crate is not used for private-key
//! operations: its decryption is not constant-time (RUSTSEC-2023-0071).
//!
//! Nothing decrypted here is trusted: the caller accepts the result only when a
//! signature of the IdP covers it (the Assertion's own, or the Response's around the
//! ciphertext). Every failure is one [`DecryptError`], reported as the reason
//! `decryption`; its text is for the log only.

use base64::Engine;
use openssl::md::{Md, MdRef};
use openssl::pkey::{Id, PKey, Private};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::symm::Cipher;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};

use super::ASSERTION_NS;

const XMLENC_NS: &[u8] = b"http://www.w3.org/2001/04/xmlenc#";
const XMLENC11_NS: &[u8] = b"http://www.w3.org/2009/xmlenc11#";
const DSIG_NS: &[u8] = b"http://www.w3.org/2000/09/xmldsig#";

/// RSA PKCS#1 v1.5 key transport (refused unless the tenant sets `allow_rsa1_5`).
pub const RSA_1_5: &str = "http://www.w3.org/2001/04/xmlenc#rsa-1_5";
/// RSA-OAEP, MGF1 with SHA-1, digest SHA-1 unless a `DigestMethod` says otherwise.
pub const RSA_OAEP_MGF1P: &str = "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p";
/// RSA-OAEP of XML Encryption 1.1: digest and MGF named by child elements.
pub const RSA_OAEP: &str = "http://www.w3.org/2009/xmlenc11#rsa-oaep";

/// Content encryption algorithms, in the order SP metadata advertises them: GCM first
/// (authenticated), then CBC (only safe under a signature).
pub const CONTENT_ALGORITHMS: [&str; 6] = [
    "http://www.w3.org/2009/xmlenc11#aes128-gcm",
    "http://www.w3.org/2009/xmlenc11#aes256-gcm",
    "http://www.w3.org/2009/xmlenc11#aes192-gcm",
    "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
    "http://www.w3.org/2001/04/xmlenc#aes256-cbc",
    "http://www.w3.org/2001/04/xmlenc#aes192-cbc",
];

/// Key transport algorithms advertised in SP metadata (rsa-1_5 never is).
pub const KEY_TRANSPORT_ALGORITHMS: [&str; 2] = [RSA_OAEP, RSA_OAEP_MGF1P];

/// Why an EncryptedAssertion could not be turned into an Assertion. All of them are the
/// reason `decryption`: toward the client a decryption failure must look like any other
/// refusal, so that it cannot serve as an oracle.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecryptError {
    /// The tenant has no `sp_key`, so nothing encrypted can be read.
    #[error("the tenant has no sp_key to decrypt the assertion with")]
    NoKey,
    /// The EncryptedAssertion is not the structure XML Encryption defines.
    #[error("malformed EncryptedAssertion: {0}")]
    Malformed(String),
    /// An algorithm this SP does not implement (or refuses, like CipherReference).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// RSA PKCS#1 v1.5 key transport while `allow_rsa1_5` is off.
    #[error(
        "key transport rsa-1_5 is refused (set allow_rsa1_5 = true only for an IdP that can do nothing else)"
    )]
    Rsa15Refused,
    /// No SP key (current or previous) unwraps an EncryptedKey and decrypts the data
    /// with it: wrong key, tampered or truncated ciphertext, a failed GCM tag.
    #[error("no SP key decrypts the assertion (wrong key, or altered or truncated ciphertext)")]
    Failed,
    /// The plaintext is not exactly one `saml:Assertion` element.
    #[error("the decrypted content is not one saml:Assertion: {0}")]
    NotAnAssertion(String),
}

/// The content cipher family, which decides how much a signature must cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    /// AES-GCM: the ciphertext is authenticated.
    Gcm,
    /// AES-CBC: malleable, so only a signature makes the plaintext trustworthy.
    Cbc,
}

/// The SP keys an assertion may be encrypted to, the current one first.
pub struct DecryptionKeys {
    keys: Vec<PKey<Private>>,
    allow_rsa1_5: bool,
}

impl DecryptionKeys {
    /// Reads PEM private keys (already validated by the config).
    pub fn from_pems<'a>(
        pems: impl IntoIterator<Item = &'a str>,
        allow_rsa1_5: bool,
    ) -> Result<DecryptionKeys, String> {
        let keys = pems
            .into_iter()
            .enumerate()
            .map(|(i, pem)| {
                PKey::private_key_from_pem(pem.as_bytes())
                    .map_err(|e| format!("SP key {i} cannot be read: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DecryptionKeys { keys, allow_rsa1_5 })
    }
}

/// A Response whose EncryptedAssertion has been replaced by its plaintext.
#[derive(Debug)]
pub struct Decrypted {
    /// The Response XML with the decrypted Assertion in place.
    pub xml: String,
    /// The decrypted Assertion's `ID`.
    pub assertion_id: String,
    /// How the content was encrypted.
    pub mode: ContentMode,
    /// Which key decrypted it: 0 is `sp_key`, `n` is `sp_previous_keys[n - 1]` (logged,
    /// so an operator sees when the previous keys are no longer needed).
    pub key_index: usize,
}

/// Byte spans and facts about the Response gathered in one pass.
#[derive(Debug, Default)]
struct Located {
    /// `[start, end)` of the `saml:EncryptedAssertion` child of the root.
    span: Option<(usize, usize)>,
    /// `[start, end)` of each `ds:Signature` child of the root (removed when asked).
    root_signatures: Vec<(usize, usize)>,
    /// Namespace declarations on the root element: (prefix, uri); "" is the default.
    root_ns: Vec<(String, String)>,
    /// Declarations on the EncryptedAssertion and the elements inside it down to
    /// EncryptedData: the context the plaintext was encrypted in.
    context_ns: Vec<(String, String)>,
    data: EncryptedParts,
}

/// The parts of the EncryptedAssertion needed to decrypt it.
#[derive(Debug, Default)]
struct EncryptedParts {
    data_algorithm: Option<String>,
    data_cipher: String,
    data_seen: usize,
    keys: Vec<EncryptedKey>,
}

#[derive(Debug, Default, Clone)]
struct EncryptedKey {
    algorithm: Option<String>,
    digest: Option<String>,
    mgf: Option<String>,
    oaep_params: String,
    cipher: String,
}

/// Whether the Response holds a `saml:EncryptedAssertion` as a child of its root. The
/// shell check has already made sure there is exactly one assertion of either kind.
pub fn is_encrypted(xml: &str) -> Result<bool, DecryptError> {
    Ok(locate(xml)?.span.is_some())
}

/// Decrypts the EncryptedAssertion of `xml` and returns the Response with the plaintext
/// Assertion in its place; `drop_root_signature` also removes the Response's own
/// `ds:Signature` (which the caller has verified over the ciphertext, and which can no
/// longer verify once the ciphertext is gone).
pub fn decrypt_response(
    xml: &str,
    keys: Option<&DecryptionKeys>,
    drop_root_signature: bool,
) -> Result<Decrypted, DecryptError> {
    let keys = keys.ok_or(DecryptError::NoKey)?;
    let located = locate(xml)?;
    let (start, end) = located
        .span
        .ok_or_else(|| DecryptError::Malformed("no EncryptedAssertion in the Response".into()))?;
    let parts = &located.data;
    if parts.data_seen != 1 {
        return Err(DecryptError::Malformed(format!(
            "{} EncryptedData elements; exactly one is expected",
            parts.data_seen
        )));
    }
    let algorithm = parts
        .data_algorithm
        .as_deref()
        .ok_or_else(|| DecryptError::Malformed("EncryptedData has no EncryptionMethod".into()))?;
    let (cipher, mode) = content_cipher(algorithm)?;
    let data = base64_decode(&parts.data_cipher, "EncryptedData CipherValue")?;
    if parts.keys.is_empty() {
        return Err(DecryptError::Malformed("no EncryptedKey".into()));
    }
    let mut refused_rsa15 = false;
    let mut last_not_assertion = None;
    for ek in &parts.keys {
        let transport = ek.algorithm.as_deref().ok_or_else(|| {
            DecryptError::Malformed("EncryptedKey has no EncryptionMethod".into())
        })?;
        let transport = KeyTransport::parse(transport, ek)?;
        if matches!(transport, KeyTransport::Rsa15) && !keys.allow_rsa1_5 {
            refused_rsa15 = true;
            continue;
        }
        let wrapped = base64_decode(&ek.cipher, "EncryptedKey CipherValue")?;
        let label = base64_decode(&ek.oaep_params, "OAEPparams")?;
        for (key_index, key) in keys.keys.iter().enumerate() {
            let Some(session) = unwrap_key(key, &transport, &wrapped, &label, cipher.key_len())
            else {
                continue;
            };
            let Some(plain) = decrypt_content(cipher, mode, &session, &data) else {
                continue;
            };
            match assertion_root(&plain, &located) {
                Ok((text, assertion_id)) => {
                    let mut out = String::with_capacity(xml.len() + text.len());
                    let mut cursor = 0;
                    let mut cuts: Vec<(usize, usize, Option<&str>)> =
                        vec![(start, end, Some(&text))];
                    if drop_root_signature {
                        cuts.extend(located.root_signatures.iter().map(|&(s, e)| (s, e, None)));
                    }
                    cuts.sort_by_key(|c| c.0);
                    for (s, e, with) in cuts {
                        out.push_str(&xml[cursor..s]);
                        out.push_str(with.unwrap_or(""));
                        cursor = e;
                    }
                    out.push_str(&xml[cursor..]);
                    return Ok(Decrypted {
                        xml: out,
                        assertion_id,
                        mode,
                        key_index,
                    });
                }
                // A PKCS#1 v1.5 unwrap never fails visibly (see unwrap_key), so a
                // wrong key shows up here; keep trying the others.
                Err(e) => last_not_assertion = Some(e),
            }
        }
    }
    if let Some(e) = last_not_assertion {
        return Err(e);
    }
    if refused_rsa15 {
        return Err(DecryptError::Rsa15Refused);
    }
    Err(DecryptError::Failed)
}

fn content_cipher(algorithm: &str) -> Result<(Cipher, ContentMode), DecryptError> {
    Ok(match algorithm {
        "http://www.w3.org/2009/xmlenc11#aes128-gcm" => (Cipher::aes_128_gcm(), ContentMode::Gcm),
        "http://www.w3.org/2009/xmlenc11#aes192-gcm" => (Cipher::aes_192_gcm(), ContentMode::Gcm),
        "http://www.w3.org/2009/xmlenc11#aes256-gcm" => (Cipher::aes_256_gcm(), ContentMode::Gcm),
        "http://www.w3.org/2001/04/xmlenc#aes128-cbc" => (Cipher::aes_128_cbc(), ContentMode::Cbc),
        "http://www.w3.org/2001/04/xmlenc#aes192-cbc" => (Cipher::aes_192_cbc(), ContentMode::Cbc),
        "http://www.w3.org/2001/04/xmlenc#aes256-cbc" => (Cipher::aes_256_cbc(), ContentMode::Cbc),
        other => {
            return Err(DecryptError::Unsupported(format!(
                "content encryption {other}"
            )));
        }
    })
}

enum KeyTransport {
    Rsa15,
    Oaep {
        digest: &'static MdRef,
        mgf: &'static MdRef,
    },
}

impl KeyTransport {
    fn parse(algorithm: &str, ek: &EncryptedKey) -> Result<KeyTransport, DecryptError> {
        let digest = match ek.digest.as_deref() {
            None | Some("http://www.w3.org/2000/09/xmldsig#sha1") => Md::sha1(),
            Some("http://www.w3.org/2001/04/xmlenc#sha256") => Md::sha256(),
            Some("http://www.w3.org/2001/04/xmldsig-more#sha384") => Md::sha384(),
            Some("http://www.w3.org/2001/04/xmlenc#sha512") => Md::sha512(),
            Some(other) => {
                return Err(DecryptError::Unsupported(format!("OAEP digest {other}")));
            }
        };
        match algorithm {
            RSA_1_5 => Ok(KeyTransport::Rsa15),
            // mgf1p fixes the mask generation to MGF1 with SHA-1, whatever the digest.
            RSA_OAEP_MGF1P => Ok(KeyTransport::Oaep {
                digest,
                mgf: Md::sha1(),
            }),
            RSA_OAEP => {
                let mgf = match ek.mgf.as_deref() {
                    None | Some("http://www.w3.org/2009/xmlenc11#mgf1sha1") => Md::sha1(),
                    Some("http://www.w3.org/2009/xmlenc11#mgf1sha224") => Md::sha224(),
                    Some("http://www.w3.org/2009/xmlenc11#mgf1sha256") => Md::sha256(),
                    Some("http://www.w3.org/2009/xmlenc11#mgf1sha384") => Md::sha384(),
                    Some("http://www.w3.org/2009/xmlenc11#mgf1sha512") => Md::sha512(),
                    Some(other) => {
                        return Err(DecryptError::Unsupported(format!("OAEP MGF {other}")));
                    }
                };
                Ok(KeyTransport::Oaep { digest, mgf })
            }
            other => Err(DecryptError::Unsupported(format!("key transport {other}"))),
        }
    }
}

/// The session key, or None when this SP key does not unwrap it.
fn unwrap_key(
    key: &PKey<Private>,
    transport: &KeyTransport,
    wrapped: &[u8],
    label: &[u8],
    key_len: usize,
) -> Option<Vec<u8>> {
    // Only RSA keys transport keys; an EC sp_key (kept for signing) unwraps nothing.
    if key.id() != Id::RSA {
        return None;
    }
    let mut ctx = PkeyCtx::new(key).ok()?;
    ctx.decrypt_init().ok()?;
    let mut out = Vec::new();
    match transport {
        KeyTransport::Rsa15 => {
            ctx.set_rsa_padding(Padding::PKCS1).ok()?;
            let ok = ctx.decrypt_to_vec(wrapped, &mut out).is_ok() && out.len() == key_len;
            // Bleichenbacher: a padding failure must not be told apart from a wrong key
            // further on, so it continues with a random key (RFC 3218 §2.3.2); the
            // content decryption then fails like any other.
            if !ok {
                out = vec![0; key_len];
                openssl::rand::rand_bytes(&mut out).ok()?;
            }
            Some(out)
        }
        KeyTransport::Oaep { digest, mgf } => {
            ctx.set_rsa_padding(Padding::PKCS1_OAEP).ok()?;
            ctx.set_rsa_oaep_md(digest).ok()?;
            ctx.set_rsa_mgf1_md(mgf).ok()?;
            if !label.is_empty() {
                ctx.set_rsa_oaep_label(label).ok()?;
            }
            ctx.decrypt_to_vec(wrapped, &mut out).ok()?;
            (out.len() == key_len).then_some(out)
        }
    }
}

/// The plaintext, or None when the key does not fit the data.
fn decrypt_content(cipher: Cipher, mode: ContentMode, key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    match mode {
        ContentMode::Gcm => {
            // XML Encryption 1.1 §5.2.4: a 96-bit IV before the ciphertext, the 128-bit
            // tag after it.
            const IV: usize = 12;
            const TAG: usize = 16;
            if data.len() < IV + TAG {
                return None;
            }
            let (iv, rest) = data.split_at(IV);
            let (ct, tag) = rest.split_at(rest.len() - TAG);
            openssl::symm::decrypt_aead(cipher, key, Some(iv), &[], ct, tag).ok()
        }
        ContentMode::Cbc => {
            const BLOCK: usize = 16;
            if data.len() < 2 * BLOCK || !data.len().is_multiple_of(BLOCK) {
                return None;
            }
            let (iv, ct) = data.split_at(BLOCK);
            let mut crypter =
                openssl::symm::Crypter::new(cipher, openssl::symm::Mode::Decrypt, key, Some(iv))
                    .ok()?;
            // XML Encryption pads with arbitrary bytes and a final length byte, not
            // PKCS#7, so OpenSSL's own padding check would refuse valid input.
            crypter.pad(false);
            let mut out = vec![0; ct.len() + BLOCK];
            let mut n = crypter.update(ct, &mut out).ok()?;
            n += crypter.finalize(&mut out[n..]).ok()?;
            out.truncate(n);
            let pad = usize::from(*out.last()?);
            if pad == 0 || pad > BLOCK || pad > out.len() {
                return None;
            }
            out.truncate(out.len() - pad);
            Some(out)
        }
    }
}

fn base64_decode(text: &str, what: &str) -> Result<Vec<u8>, DecryptError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| DecryptError::Malformed(format!("{what} is not base64")))
}

/// Checks that `plain` is exactly one `saml:Assertion` element (namespace resolved as it
/// would be in place) and returns the text to insert and the Assertion's ID. The text is
/// the plaintext as decrypted, so its signature still verifies; only when the Assertion
/// relies on a namespace declared on the EncryptedAssertion (which disappears with it)
/// does that declaration move onto the Assertion's start tag.
fn assertion_root(plain: &[u8], located: &Located) -> Result<(String, String), DecryptError> {
    let bad = |m: &str| DecryptError::NotAnAssertion(m.to_owned());
    let text = std::str::from_utf8(plain)
        .map_err(|_| bad("not UTF-8"))?
        .trim();
    let mut reader = quick_xml::Reader::from_str(text);
    let mut depth = 0usize;
    let mut roots = 0usize;
    // Offset, name, declarations and ID of the top-level element.
    let mut root: Option<(usize, StartFacts)> = None;
    // Prefixes the plaintext uses ("" for the default namespace), and those it declares
    // somewhere itself.
    let mut used: Vec<String> = Vec::new();
    let mut declared: Vec<String> = Vec::new();
    loop {
        let before = reader.buffer_position() as usize;
        let event = reader
            .read_event()
            .map_err(|e| bad(&format!("not well-formed: {e}")))?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let (name, decls, id) = start_facts(e).map_err(|m| bad(&m))?;
                declared.extend(decls.iter().map(|(p, _)| p.clone()));
                used.extend(prefixes_used(e, &name));
                if depth == 0 {
                    roots += 1;
                    root = Some((before, (name, decls, id)));
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(ref t) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => {
                return Err(bad("text outside the element"));
            }
            Event::Eof => break,
            Event::DocType(_) | Event::Decl(_) | Event::PI(_) => {
                return Err(bad("a declaration, DOCTYPE or processing instruction"));
            }
            Event::GeneralRef(_) | Event::CData(_) | Event::Comment(_) if depth == 0 => {
                return Err(bad("content outside the element"));
            }
            _ => {}
        }
    }
    if roots != 1 || depth != 0 {
        return Err(bad(&format!("{roots} top-level elements")));
    }
    let (offset, (name, own, id)) = root.ok_or_else(|| bad("no element"))?;
    let (prefix, local) = match name.split_once(':') {
        Some((p, l)) => (p, l),
        None => ("", name.as_str()),
    };
    if local != "Assertion" {
        return Err(bad(&format!("the element is {name}")));
    }
    let lookup = |decls: &[(String, String)]| {
        decls
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, u)| u.clone())
    };
    let uri = lookup(&own)
        .or_else(|| lookup(&located.context_ns))
        .or_else(|| lookup(&located.root_ns));
    if uri.as_deref().map(str::as_bytes) != Some(ASSERTION_NS) {
        return Err(bad(&format!(
            "{name} is not in the SAML assertion namespace"
        )));
    }
    let id = id.ok_or_else(|| bad("the Assertion has no ID"))?;
    // Declarations the plaintext relies on from the EncryptedAssertion, which is about
    // to go: prefixes it uses but never declares, which the Response does not declare
    // the same. Anything else (xenc, ds of the ciphertext) stays out.
    let missing: String = located
        .context_ns
        .iter()
        .filter(|(p, u)| {
            used.contains(p)
                && !declared.contains(p)
                && !located.root_ns.iter().any(|(q, v)| q == p && v == u)
        })
        .map(|(p, u)| {
            let u = quick_xml::escape::escape(u.as_str());
            if p.is_empty() {
                format!(" xmlns=\"{u}\"")
            } else {
                format!(" xmlns:{p}=\"{u}\"")
            }
        })
        .collect();
    let mut out = String::with_capacity(text.len() + missing.len());
    let name_end = offset + 1 + name.len();
    out.push_str(&text[..name_end]);
    out.push_str(&missing);
    out.push_str(&text[name_end..]);
    Ok((out, id))
}

/// The namespace prefixes a start tag uses: its own, its attributes', and those in an
/// `xsi:type` value (a QName that names a schema type by prefix).
fn prefixes_used(e: &BytesStart<'_>, name: &str) -> Vec<String> {
    let prefix = |q: &str| q.split_once(':').map_or("", |(p, _)| p).to_owned();
    let mut out = vec![prefix(name)];
    for a in e.attributes().flatten() {
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        if key == "xmlns" || key.starts_with("xmlns:") {
            continue;
        }
        if key.contains(':') {
            out.push(prefix(&key));
        }
        if key.ends_with(":type")
            && let Ok(v) = a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
        {
            out.push(prefix(v.trim()));
        }
    }
    out
}

type StartFacts = (String, Vec<(String, String)>, Option<String>);

/// The qualified name, namespace declarations and `ID` of a start tag.
fn start_facts(e: &BytesStart<'_>) -> Result<StartFacts, String> {
    let name = std::str::from_utf8(e.name().as_ref())
        .map_err(|_| "a name that is not UTF-8".to_owned())?
        .to_owned();
    let mut decls = Vec::new();
    let mut id = None;
    for a in e.attributes() {
        let a = a.map_err(|e| format!("bad attribute: {e}"))?;
        let key = a.key.as_ref();
        let value = || {
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map(|v| v.into_owned())
                .map_err(|e| format!("bad attribute value: {e}"))
        };
        if key == b"xmlns" {
            decls.push((String::new(), value()?));
        } else if let Some(p) = key.strip_prefix(b"xmlns:") {
            let p = std::str::from_utf8(p).map_err(|_| "bad prefix".to_owned())?;
            decls.push((p.to_owned(), value()?));
        } else if key == b"ID" {
            id = Some(value()?);
        }
    }
    Ok((name, decls, id))
}

/// Where things are in a Response, and the EncryptedAssertion's parts, in one pass.
fn locate(xml: &str) -> Result<Located, DecryptError> {
    let malformed = |m: String| DecryptError::Malformed(m);
    let mut reader = quick_xml::NsReader::from_str(xml);
    let mut out = Located::default();
    // (namespace, local name) of each open element, the root first.
    let mut path: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    // Depth of the EncryptedAssertion (1) while inside it.
    let mut in_ea = false;
    // Open root-level Signature: its start offset.
    let mut signature_start: Option<usize> = None;
    let mut ea_start = 0usize;
    loop {
        let before = reader.buffer_position() as usize;
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| malformed(format!("not well-formed XML: {e}")))?;
        let ns = match ns {
            ResolveResult::Bound(Namespace(n)) => n.to_vec(),
            _ => Vec::new(),
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let local = e.local_name().as_ref().to_vec();
                let depth = path.len();
                if depth == 0 {
                    out.root_ns = start_facts(e).map_err(malformed)?.1;
                }
                if depth == 1 && ns == ASSERTION_NS && local == b"EncryptedAssertion" {
                    if out.span.is_some() {
                        return Err(malformed("more than one EncryptedAssertion".into()));
                    }
                    in_ea = true;
                    ea_start = before;
                }
                if depth == 1 && ns == DSIG_NS && local == b"Signature" {
                    signature_start = Some(before);
                }
                if in_ea {
                    read_encrypted(&mut out, &path, &ns, &local, e)?;
                }
                if matches!(event, Event::Start(_)) {
                    path.push((ns, local));
                } else {
                    // An empty element ends where it starts.
                    let end = reader.buffer_position() as usize;
                    if depth == 1 && in_ea {
                        in_ea = false;
                        out.span = Some((ea_start, end));
                    }
                    if depth == 1 && signature_start.is_some() {
                        out.root_signatures.push((before, end));
                        signature_start = None;
                    }
                }
            }
            Event::End(_) => {
                path.pop();
                if path.len() == 1 {
                    let end = reader.buffer_position() as usize;
                    if in_ea {
                        in_ea = false;
                        out.span = Some((ea_start, end));
                    }
                    if let Some(s) = signature_start.take() {
                        out.root_signatures.push((s, end));
                    }
                }
            }
            Event::Text(ref t) if in_ea => {
                let text = t
                    .xml10_content()
                    .map_err(|e| malformed(format!("bad text: {e}")))?;
                push_cipher_text(&mut out.data, &path, &text);
            }
            Event::GeneralRef(ref r) if in_ea => {
                // Some IdPs break base64 lines with `&#xD;`; nothing else belongs there.
                match r.resolve_char_ref() {
                    Ok(Some(c)) if c.is_ascii_whitespace() => {}
                    _ => {
                        return Err(malformed(
                            "a reference inside the EncryptedAssertion".into(),
                        ));
                    }
                }
            }
            Event::DocType(_) => return Err(malformed("a DOCTYPE in the Response".into())),
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

fn is(el: &(Vec<u8>, Vec<u8>), ns: &[u8], local: &[u8]) -> bool {
    el.0 == ns && el.1 == local
}

/// Records what an element inside the EncryptedAssertion contributes. `path` holds the
/// open ancestors (the root and the EncryptedAssertion first).
fn read_encrypted(
    out: &mut Located,
    path: &[(Vec<u8>, Vec<u8>)],
    ns: &[u8],
    local: &[u8],
    e: &BytesStart<'_>,
) -> Result<(), DecryptError> {
    let malformed = |m: String| DecryptError::Malformed(m);
    let inner = &path[path.len().min(1)..];
    let parent = inner.last();
    let algorithm = || -> Result<Option<String>, DecryptError> {
        e.try_get_attribute("Algorithm")
            .map_err(|e| malformed(format!("bad Algorithm: {e}")))?
            .map(|a| {
                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map(|v| v.into_owned())
                    .map_err(|e| malformed(format!("bad Algorithm: {e}")))
            })
            .transpose()
    };
    // The plaintext was encrypted in the context of the EncryptedAssertion and the
    // EncryptedData; their declarations are what it may rely on.
    let own_level =
        inner.is_empty() || (inner.len() == 1 && ns == XMLENC_NS && local == b"EncryptedData");
    if own_level {
        let decls = start_facts(e).map_err(malformed)?.1;
        for d in decls {
            out.context_ns.retain(|(p, _)| *p != d.0);
            out.context_ns.push(d);
        }
    }
    let in_key = inner.iter().any(|el| is(el, XMLENC_NS, b"EncryptedKey"));
    let data = &mut out.data;
    match (ns, local) {
        (XMLENC_NS, b"EncryptedData") => {
            if inner.len() != 1 {
                return Err(malformed("EncryptedData out of place".into()));
            }
            data.data_seen += 1;
        }
        (XMLENC_NS, b"EncryptedKey") => data.keys.push(EncryptedKey::default()),
        (XMLENC_NS, b"EncryptionMethod") => {
            let alg = algorithm()?;
            match parent {
                Some(p) if is(p, XMLENC_NS, b"EncryptedKey") => {
                    if let Some(k) = data.keys.last_mut() {
                        k.algorithm = alg;
                    }
                }
                Some(p) if is(p, XMLENC_NS, b"EncryptedData") && inner.len() == 2 => {
                    data.data_algorithm = alg;
                }
                _ => {}
            }
        }
        (DSIG_NS, b"DigestMethod") | (XMLENC11_NS, b"MGF")
            if in_key && parent.is_some_and(|p| is(p, XMLENC_NS, b"EncryptionMethod")) =>
        {
            let alg = algorithm()?;
            if let Some(k) = data.keys.last_mut() {
                if local == b"MGF" {
                    k.mgf = alg;
                } else {
                    k.digest = alg;
                }
            }
        }
        (XMLENC_NS, b"CipherReference") => {
            return Err(DecryptError::Unsupported(
                "CipherReference (the ciphertext must be inline)".into(),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Appends text to the CipherValue (or OAEPparams) it belongs to.
fn push_cipher_text(data: &mut EncryptedParts, path: &[(Vec<u8>, Vec<u8>)], text: &str) {
    let Some(last) = path.last() else { return };
    let in_key = path.iter().any(|el| is(el, XMLENC_NS, b"EncryptedKey"));
    if is(last, XMLENC_NS, b"CipherValue") {
        if in_key {
            if let Some(k) = data.keys.last_mut() {
                k.cipher.push_str(text);
            }
        } else if path.len() == 5 {
            // Response / EncryptedAssertion / EncryptedData / CipherData / CipherValue
            data.data_cipher.push_str(text);
        }
    } else if is(last, XMLENC_NS, b"OAEPparams")
        && in_key
        && let Some(k) = data.keys.last_mut()
    {
        k.oaep_params.push_str(text);
    }
}

#[cfg(test)]
mod tests;
