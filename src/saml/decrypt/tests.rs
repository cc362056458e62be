//! The decryption against ciphertext made here with OpenSSL's encrypting side; the
//! integration tests (tests/saml.rs) use ciphertext from the `xmlsec1` CLI instead.

use std::sync::OnceLock;

use super::*;

fn rsa(slot: &'static OnceLock<PKey<Private>>) -> &'static PKey<Private> {
    slot.get_or_init(|| PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap())
}

fn sp_key() -> &'static PKey<Private> {
    static K: OnceLock<PKey<Private>> = OnceLock::new();
    rsa(&K)
}

fn other_key() -> &'static PKey<Private> {
    static K: OnceLock<PKey<Private>> = OnceLock::new();
    rsa(&K)
}

fn keys(list: &[&PKey<Private>], allow_rsa1_5: bool) -> DecryptionKeys {
    DecryptionKeys {
        keys: list.iter().map(|k| (*k).clone()).collect(),
        allow_rsa1_5,
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn digest_md(uri: Option<&str>) -> &'static MdRef {
    match uri {
        Some(u) if u.ends_with("sha256") => Md::sha256(),
        Some(u) if u.ends_with("sha384") => Md::sha384(),
        Some(u) if u.ends_with("sha512") => Md::sha512(),
        _ => Md::sha1(),
    }
}

/// How the session key is wrapped.
#[derive(Clone, Copy)]
struct Transport {
    algorithm: &'static str,
    digest: Option<&'static str>,
    mgf: Option<&'static str>,
}

const MGF1P: Transport = Transport {
    algorithm: RSA_OAEP_MGF1P,
    digest: None,
    mgf: None,
};

fn wrap(key: &PKey<Private>, t: Transport, session: &[u8]) -> Vec<u8> {
    let mut ctx = PkeyCtx::new(key).unwrap();
    ctx.encrypt_init().unwrap();
    if t.algorithm == RSA_1_5 {
        ctx.set_rsa_padding(Padding::PKCS1).unwrap();
    } else {
        ctx.set_rsa_padding(Padding::PKCS1_OAEP).unwrap();
        ctx.set_rsa_oaep_md(digest_md(t.digest)).unwrap();
        let mgf = if t.algorithm == RSA_OAEP_MGF1P {
            Md::sha1()
        } else {
            digest_md(
                t.mgf
                    .map(|m| m.trim_start_matches("http://www.w3.org/2009/xmlenc11#mgf1")),
            )
        };
        ctx.set_rsa_mgf1_md(mgf).unwrap();
    }
    let mut out = Vec::new();
    ctx.encrypt_to_vec(session, &mut out).unwrap();
    out
}

fn encrypt_content(algorithm: &str, key: &[u8], plain: &[u8]) -> Vec<u8> {
    let (cipher, mode) = content_cipher(algorithm).unwrap();
    match mode {
        ContentMode::Gcm => {
            let iv: [u8; 12] = rand::random();
            let mut tag = [0u8; 16];
            let ct =
                openssl::symm::encrypt_aead(cipher, key, Some(&iv), &[], plain, &mut tag).unwrap();
            [&iv[..], &ct, &tag].concat()
        }
        ContentMode::Cbc => {
            let iv: [u8; 16] = rand::random();
            // XML Encryption padding: arbitrary bytes, then their count.
            let n = 16 - plain.len() % 16;
            let mut padded = plain.to_vec();
            padded.extend(std::iter::repeat_n(0xA5, n - 1));
            padded.push(n as u8);
            let mut c =
                openssl::symm::Crypter::new(cipher, openssl::symm::Mode::Encrypt, key, Some(&iv))
                    .unwrap();
            c.pad(false);
            let mut out = vec![0; padded.len() + 16];
            let mut len = c.update(&padded, &mut out).unwrap();
            len += c.finalize(&mut out[len..]).unwrap();
            out.truncate(len);
            [&iv[..], &out].concat()
        }
    }
}

fn key_len(algorithm: &str) -> usize {
    content_cipher(algorithm).unwrap().0.key_len()
}

fn encrypted_key(t: Transport, wrapped: &[u8]) -> String {
    let digest = t
        .digest
        .map(|d| format!(r#"<ds:DigestMethod xmlns:ds="http://www.w3.org/2000/09/xmldsig#" Algorithm="{d}"/>"#))
        .unwrap_or_default();
    let mgf = t
        .mgf
        .map(|m| {
            format!(
                r#"<xenc11:MGF xmlns:xenc11="http://www.w3.org/2009/xmlenc11#" Algorithm="{m}"/>"#
            )
        })
        .unwrap_or_default();
    format!(
        r#"<xenc:EncryptedKey><xenc:EncryptionMethod Algorithm="{}">{digest}{mgf}</xenc:EncryptionMethod><xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData></xenc:EncryptedKey>"#,
        t.algorithm,
        b64(wrapped)
    )
}

/// The EncryptedData of `plain`, its key wrapped for `to` inside its KeyInfo.
fn encrypted_data(content: &str, t: Transport, to: &PKey<Private>, plain: &str) -> String {
    let mut session = vec![0u8; key_len(content)];
    openssl::rand::rand_bytes(&mut session).unwrap();
    let data = encrypt_content(content, &session, plain.as_bytes());
    format!(
        r#"<xenc:EncryptedData xmlns:xenc="http://www.w3.org/2001/04/xmlenc#" Type="http://www.w3.org/2001/04/xmlenc#Element"><xenc:EncryptionMethod Algorithm="{content}"/><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#">{}</ds:KeyInfo><xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData></xenc:EncryptedData>"#,
        encrypted_key(t, &wrap(to, t, &session)),
        b64(&data)
    )
}

const SIGNATURE: &str = r#"<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo/></ds:Signature>"#;

fn response(encrypted_assertion: &str) -> String {
    format!(
        r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_r"><saml:Issuer>idp</saml:Issuer>{SIGNATURE}<samlp:Status/>{encrypted_assertion}</samlp:Response>"#
    )
}

fn ea(inner: &str) -> String {
    format!("<saml:EncryptedAssertion>{inner}</saml:EncryptedAssertion>")
}

/// An Assertion relying on the Response's `saml` prefix, as xmlsec serializes one.
const PLAIN: &str =
    r#"<saml:Assertion ID="_a1" Version="2.0"><saml:Issuer>idp</saml:Issuer></saml:Assertion>"#;

const GCM128: &str = "http://www.w3.org/2009/xmlenc11#aes128-gcm";
const CBC128: &str = "http://www.w3.org/2001/04/xmlenc#aes128-cbc";

fn transports() -> Vec<Transport> {
    let mut all = vec![
        MGF1P,
        Transport {
            digest: Some("http://www.w3.org/2001/04/xmlenc#sha256"),
            ..MGF1P
        },
    ];
    let digests = [
        None,
        Some("http://www.w3.org/2000/09/xmldsig#sha1"),
        Some("http://www.w3.org/2001/04/xmlenc#sha256"),
        Some("http://www.w3.org/2001/04/xmldsig-more#sha384"),
        Some("http://www.w3.org/2001/04/xmlenc#sha512"),
    ];
    let mgfs = [
        None,
        Some("http://www.w3.org/2009/xmlenc11#mgf1sha1"),
        Some("http://www.w3.org/2009/xmlenc11#mgf1sha256"),
        Some("http://www.w3.org/2009/xmlenc11#mgf1sha384"),
        Some("http://www.w3.org/2009/xmlenc11#mgf1sha512"),
    ];
    for digest in digests {
        for mgf in mgfs {
            all.push(Transport {
                algorithm: RSA_OAEP,
                digest,
                mgf,
            });
        }
    }
    all
}

#[test]
fn every_key_transport_and_content_cipher_round_trips() {
    let k = keys(&[sp_key()], false);
    let mut n = 0;
    for content in CONTENT_ALGORITHMS {
        for t in transports() {
            let xml = response(&ea(&encrypted_data(content, t, sp_key(), PLAIN)));
            let d = decrypt_response(&xml, Some(&k), false).unwrap_or_else(|e| {
                panic!("{content} {} {:?} {:?}: {e}", t.algorithm, t.digest, t.mgf)
            });
            assert_eq!(d.assertion_id, "_a1");
            assert_eq!(d.key_index, 0);
            assert_eq!(d.mode == ContentMode::Cbc, content.contains("cbc"));
            // The plaintext sits verbatim where the EncryptedAssertion was.
            let expected = response(PLAIN);
            assert_eq!(d.xml, expected);
            n += 1;
        }
    }
    assert_eq!(n, 6 * 27);
}

#[test]
fn rsa_1_5_is_refused_unless_allowed() {
    let t = Transport {
        algorithm: RSA_1_5,
        digest: None,
        mgf: None,
    };
    let xml = response(&ea(&encrypted_data(GCM128, t, sp_key(), PLAIN)));
    assert_eq!(
        decrypt_response(&xml, Some(&keys(&[sp_key()], false)), false).unwrap_err(),
        DecryptError::Rsa15Refused
    );
    let d = decrypt_response(&xml, Some(&keys(&[sp_key()], true)), false).unwrap();
    assert_eq!(d.assertion_id, "_a1");
    // A PKCS#1 v1.5 failure looks like any wrong key: no early, distinguishable error.
    let wrong = decrypt_response(&xml, Some(&keys(&[other_key()], true)), false).unwrap_err();
    assert_eq!(wrong, DecryptError::Failed);
}

#[test]
fn previous_keys_are_tried_after_the_current_one() {
    let xml = response(&ea(&encrypted_data(GCM128, MGF1P, other_key(), PLAIN)));
    let d = decrypt_response(&xml, Some(&keys(&[sp_key(), other_key()], false)), false).unwrap();
    assert_eq!(d.key_index, 1);
    assert_eq!(
        decrypt_response(&xml, Some(&keys(&[sp_key()], false)), false).unwrap_err(),
        DecryptError::Failed
    );
    assert_eq!(
        decrypt_response(&xml, None, false).unwrap_err(),
        DecryptError::NoKey
    );
}

/// Replaces the EncryptedData's CipherValue (the second one: the key's comes first).
fn with_data_cipher(xml: &str, edit: impl Fn(Vec<u8>) -> Vec<u8>) -> String {
    let open = "<xenc:CipherValue>";
    let start = xml.rfind(open).unwrap() + open.len();
    let end = start + xml[start..].find("</xenc:CipherValue>").unwrap();
    let data = base64::engine::general_purpose::STANDARD
        .decode(&xml[start..end])
        .unwrap();
    format!("{}{}{}", &xml[..start], b64(&edit(data)), &xml[end..])
}

#[test]
fn altered_ciphertext_of_every_kind_is_a_clean_refusal() {
    let k = keys(&[sp_key()], false);
    for content in [GCM128, CBC128] {
        let xml = response(&ea(&encrypted_data(content, MGF1P, sp_key(), PLAIN)));
        let cases: Vec<(&str, String)> = vec![
            (
                "truncated",
                with_data_cipher(&xml, |d| d[..d.len() - 7].to_vec()),
            ),
            ("only an IV", with_data_cipher(&xml, |d| d[..12].to_vec())),
            ("empty", with_data_cipher(&xml, |_| Vec::new())),
            (
                "last byte flipped (GCM tag, CBC padding)",
                with_data_cipher(&xml, |mut d| {
                    *d.last_mut().unwrap() ^= 0x55;
                    d
                }),
            ),
        ];
        for (name, bad) in cases {
            let e = decrypt_response(&bad, Some(&k), false).unwrap_err();
            assert!(
                matches!(e, DecryptError::Failed | DecryptError::NotAnAssertion(_)),
                "{content} {name}: {e:?}"
            );
        }
        let garbage = xml.replacen("<xenc:CipherValue>", "<xenc:CipherValue>*not base64*", 1);
        assert!(matches!(
            decrypt_response(&garbage, Some(&k), false),
            Err(DecryptError::Malformed(_))
        ));
    }
    // A flipped ciphertext bit in GCM is caught by the tag, whatever the block.
    let xml = response(&ea(&encrypted_data(GCM128, MGF1P, sp_key(), PLAIN)));
    let flipped = with_data_cipher(&xml, |mut d| {
        d[14] ^= 1;
        d
    });
    assert_eq!(
        decrypt_response(&flipped, Some(&k), false).unwrap_err(),
        DecryptError::Failed
    );
}

#[test]
fn unsupported_or_missing_parts_are_refused() {
    let k = keys(&[sp_key()], false);
    let xml = response(&ea(&encrypted_data(GCM128, MGF1P, sp_key(), PLAIN)));
    let des = xml.replace(GCM128, "http://www.w3.org/2001/04/xmlenc#tripledes-cbc");
    assert!(matches!(
        decrypt_response(&des, Some(&k), false),
        Err(DecryptError::Unsupported(_))
    ));
    let md5 = response(&ea(&encrypted_data(
        GCM128,
        Transport {
            algorithm: RSA_OAEP,
            digest: Some("http://www.w3.org/2001/04/xmldsig-more#md5"),
            mgf: None,
        },
        sp_key(),
        PLAIN,
    )));
    assert!(matches!(
        decrypt_response(&md5, Some(&k), false),
        Err(DecryptError::Unsupported(_))
    ));
    let no_key = response(&ea(&format!(
        r#"<xenc:EncryptedData xmlns:xenc="http://www.w3.org/2001/04/xmlenc#"><xenc:EncryptionMethod Algorithm="{GCM128}"/><xenc:CipherData><xenc:CipherValue>AAAA</xenc:CipherValue></xenc:CipherData></xenc:EncryptedData>"#
    )));
    assert!(matches!(
        decrypt_response(&no_key, Some(&k), false),
        Err(DecryptError::Malformed(_))
    ));
    let reference = no_key.replace(
        "<xenc:CipherValue>AAAA</xenc:CipherValue>",
        r#"<xenc:CipherReference URI="https://evil.example/x"/>"#,
    );
    assert!(matches!(
        decrypt_response(&reference, Some(&k), false),
        Err(DecryptError::Unsupported(_))
    ));
    let doctype = format!("<!DOCTYPE r [<!ENTITY e \"x\">]>{xml}");
    assert!(matches!(
        decrypt_response(&doctype, Some(&k), false),
        Err(DecryptError::Malformed(_))
    ));
    assert!(!is_encrypted(&response(PLAIN)).unwrap());
    assert!(is_encrypted(&xml).unwrap());
}

#[test]
fn the_plaintext_must_be_exactly_one_saml_assertion() {
    let k = keys(&[sp_key()], false);
    for plain in [
        "",
        "not xml",
        r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="x"/>"#,
        r#"<x:Assertion xmlns:x="urn:example:other" ID="x"/>"#,
        r#"<undeclared:Assertion ID="x"/>"#,
        r#"<saml:Assertion ID="a"/><saml:Assertion ID="b"/>"#,
        r#"<saml:Assertion ID="a"/>trailing"#,
        r#"<?xml version="1.0"?><saml:Assertion ID="a"/>"#,
        r#"<!DOCTYPE a><saml:Assertion ID="a"/>"#,
        r#"<saml:Assertion Version="2.0"/>"#,
        r#"<saml:Assertion ID="a"></saml:Assertion></samlp:Response><samlp:Response>"#,
    ] {
        let xml = response(&ea(&encrypted_data(GCM128, MGF1P, sp_key(), plain)));
        assert!(
            matches!(
                decrypt_response(&xml, Some(&k), false),
                Err(DecryptError::NotAnAssertion(_))
            ),
            "{plain:?}"
        );
    }
}

#[test]
fn namespaces_of_the_encrypted_assertion_move_onto_the_assertion_only_when_needed() {
    let k = keys(&[sp_key()], false);
    // Declared on the EncryptedAssertion (another prefix than the Response's): the
    // plaintext needs it once the EncryptedAssertion is gone.
    let plain = r#"<s2:Assertion ID="_a1"><s2:Issuer>idp</s2:Issuer></s2:Assertion>"#;
    let xml = response(&format!(
        r#"<saml:EncryptedAssertion xmlns:s2="urn:oasis:names:tc:SAML:2.0:assertion">{}</saml:EncryptedAssertion>"#,
        encrypted_data(GCM128, MGF1P, sp_key(), plain)
    ));
    let d = decrypt_response(&xml, Some(&k), false).unwrap();
    assert!(
        d.xml.contains(r#"<s2:Assertion xmlns:s2="urn:oasis:names:tc:SAML:2.0:assertion" ID="_a1"><s2:Issuer>idp</s2:Issuer></s2:Assertion>"#),
        "{}",
        d.xml
    );
    // An Assertion that declares its own namespaces is inserted byte for byte.
    let own = r#"<s2:Assertion xmlns:s2="urn:oasis:names:tc:SAML:2.0:assertion"   ID="_a1" ><s2:Issuer>idp</s2:Issuer></s2:Assertion>"#;
    let xml = response(&format!(
        r#"<saml:EncryptedAssertion xmlns:s2="urn:oasis:names:tc:SAML:2.0:assertion">{}</saml:EncryptedAssertion>"#,
        encrypted_data(GCM128, MGF1P, sp_key(), &format!("\n {own}\n"))
    ));
    let d = decrypt_response(&xml, Some(&k), false).unwrap();
    assert_eq!(d.xml, response(own));
}

#[test]
fn the_key_may_follow_the_encrypted_data_and_the_root_signature_can_be_dropped() {
    let k = keys(&[sp_key()], false);
    let session = [7u8; 16];
    let data = encrypt_content(GCM128, &session, PLAIN.as_bytes());
    // Shibboleth's layout: the EncryptedKey is a sibling of the EncryptedData.
    let xml = response(&ea(&format!(
        r#"<xenc:EncryptedData xmlns:xenc="http://www.w3.org/2001/04/xmlenc#"><xenc:EncryptionMethod Algorithm="{GCM128}"/><xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData></xenc:EncryptedData><xenc:EncryptedKey xmlns:xenc="http://www.w3.org/2001/04/xmlenc#"><xenc:EncryptionMethod Algorithm="{RSA_OAEP_MGF1P}"/><xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData></xenc:EncryptedKey>"#,
        // Base64 broken into lines, as IdPs send it.
        b64(&data)
            .as_bytes()
            .chunks(8)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("&#13;\n"),
        b64(&wrap(sp_key(), MGF1P, &session)),
    )));
    let d = decrypt_response(&xml, Some(&k), true).unwrap();
    assert_eq!(d.xml, response(PLAIN).replace(SIGNATURE, ""));
}
