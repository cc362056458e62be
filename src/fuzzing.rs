//! The bodies of the `cargo fuzz` targets in `fuzz/fuzz_targets/`, one `pub fn` per
//! target taking the fuzzer's bytes. They live in the library so that
//! `tests/fuzz_corpus.rs` replays every committed corpus file through exactly the code
//! the fuzzer ran, on stable Rust, and a crash once found stays fixed. Not an API:
//! nothing but the fuzz targets and that test calls this module.
//!
//! No function here may panic on any input. Where a property is cheap to state it is
//! asserted too, so that a wrong answer is reported like a crash.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine;
use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, header};
use serde_json::{Value, json};

use crate::directory::model::{Email, Group, Membership, User};
use crate::proxy::h1::{self, Decoder, Framing, Parsed, Step};
use crate::scim::resource::{case_exact, group_from_json, group_json, user_from_json, user_json};
use crate::scim::{filter, patch};

const SCIM_BASE: &str = "https://sp.example.com/_idgate/scim/acme/v2";

/// `scim_filter`: the SCIM filter parser, and evaluation of what it parses against a
/// user as SCIM shows it. Property: when the filter matches, every clause that
/// [`filter::Filter::required_eqs`] names holds on its own, since list requests look
/// matches up by such a clause in an index and would otherwise miss some.
pub fn scim_filter(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The handler refuses longer filters before parsing them.
    if text.len() > crate::scim::MAX_FILTER {
        return;
    }
    let _ = filter::AttrPath::parse(text);
    let _ = patch::PatchPath::parse(text);
    let Ok(parsed) = filter::parse(text) else {
        return;
    };
    let doc = scim_user_doc();
    let matched = parsed.matches(doc, &case_exact);
    for (key, value) in parsed.required_eqs() {
        // A key from inside a value path can hold two dots (`emails.name.x`), which
        // no index has and no filter can write.
        let Ok(clause) = filter::parse(&format!("{key} eq {}", Value::String(value.into()))) else {
            continue;
        };
        assert!(
            !matched || clause.matches(doc, &case_exact),
            "{text:?} matches, but its required clause {key} eq {value:?} does not"
        );
    }
}

/// `scim_patch`: a PATCH body parsed as the handler does and applied to a user and to a
/// group, in memory. Properties: a refused PATCH leaves the resource as it was; an
/// accepted one keeps the read-only attributes; and what SCIM then shows, sent back as
/// a PUT, changes nothing.
pub fn scim_patch(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(ops) = crate::scim::parse_patch(&body) else {
        return;
    };

    let (old, groups) = scim_user();
    let group_refs: Vec<&Group> = groups.iter().collect();
    let mut doc = user_json(&old, &group_refs, SCIM_BASE);
    let before = doc.clone();
    match patch::apply(
        &mut doc,
        &ops,
        &["id", "meta", "groups", "schemas"],
        &case_exact,
    ) {
        Err(_) => assert_eq!(doc, before, "a refused PATCH changed the user"),
        Ok(()) => {
            if let Ok(new) = user_from_json(&doc, &old) {
                assert_eq!(
                    (&new.id, &new.memberships, new.created_at, new.version),
                    (&old.id, &old.memberships, old.created_at, old.version),
                    "a PATCH changed what SCIM may not"
                );
                let shown = user_json(&new, &group_refs, SCIM_BASE);
                match user_from_json(&shown, &new) {
                    Ok(again) => assert_eq!(again, new, "a PUT of the user as shown changed it"),
                    Err(e) => panic!("the user as shown is refused as a PUT: {e:?}"),
                }
            }
        }
    }

    let group = &groups[0];
    let members = vec!["u-1".to_owned(), "u-2".to_owned()];
    let mut doc = group_json(group, Some(&members), SCIM_BASE);
    let before = doc.clone();
    match patch::apply(&mut doc, &ops, &["id", "meta", "schemas"], &case_exact) {
        Err(_) => assert_eq!(doc, before, "a refused PATCH changed the group"),
        Ok(()) => {
            if let Ok((new, new_members)) = group_from_json(&doc, group) {
                assert_eq!(
                    (&new.id, new.version),
                    (&group.id, group.version),
                    "a PATCH changed what SCIM may not"
                );
                let shown = group_json(&new, new_members.as_deref(), SCIM_BASE);
                match group_from_json(&shown, &new) {
                    Ok(again) => assert_eq!(
                        again,
                        (new, new_members),
                        "a PUT of the group as shown changed it"
                    ),
                    Err(e) => panic!("the group as shown is refused as a PUT: {e:?}"),
                }
            }
        }
    }
}

/// `cookie`: [`crate::session::find_cookie`] over `Cookie` fields. The first line of the
/// input is a cookie name, each further line one `Cookie` field. Property: a value found
/// lies in one field, in a pair whose name is exactly the one asked for, and holds no
/// `;` and no surrounding whitespace.
pub fn cookie(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let Some(Ok(given)) = lines.next().map(std::str::from_utf8) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(header::COOKIE, v);
        }
    }
    for name in [given, "idgate_session", "__Host-idgate_session"] {
        let Some(value) = crate::session::find_cookie(&headers, name) else {
            continue;
        };
        assert!(!value.contains(';'), "{value:?} holds a ';'");
        assert_eq!(value, value.trim_ascii(), "{value:?} is not trimmed");
        // Where the value lies; an empty one may point just past its field's end.
        let at = value.as_ptr() as usize;
        let in_named_pair = headers
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .filter(|f| (f.as_ptr() as usize..=f.as_ptr() as usize + f.len()).contains(&at))
            .any(|field| {
                let at = at - field.as_ptr() as usize;
                let pair_start = field[..at]
                    .iter()
                    .rposition(|&b| b == b';')
                    .map_or(0, |i| i + 1);
                field[pair_start..at]
                    .trim_ascii_start()
                    .strip_prefix(name.as_bytes())
                    .and_then(|rest| rest.trim_ascii_start().strip_prefix(b"="))
                    .is_some_and(|rest| rest.trim_ascii().is_empty())
            });
        assert!(
            in_named_pair,
            "{value:?} is not the value of a pair named {name:?}"
        );
    }
}

/// `routing_path`: [`crate::gateway::routing_path`] and [`crate::gateway::has_prefix`].
/// The input is a path, or `prefix\npath`. Properties: an accepted path is absolute and
/// holds no dot segment (also before a `;`), backslash or NUL, and is the input itself
/// when nothing was percent-encoded; `has_prefix` covers a path exactly when the
/// prefix's segments begin the path's (a prefix ending in `/` covers what starts with
/// it).
pub fn routing_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (prefix, raw) = text.split_once('\n').unwrap_or(("/_idgate", text));
    if let Ok(path) = crate::gateway::routing_path(raw) {
        assert!(path.starts_with('/'), "{path:?} is not absolute");
        assert!(!path.contains(['\\', '\0']), "{path:?}");
        for seg in path.split('/') {
            let seg = seg.split(';').next().unwrap_or(seg);
            assert!(seg != "." && seg != "..", "{raw:?} gave {path:?}");
        }
        if !raw.contains('%') {
            assert_eq!(path, raw);
        }
        check_has_prefix(&path, prefix);
    }
    check_has_prefix(raw, prefix);
}

fn check_has_prefix(path: &str, prefix: &str) {
    let expected = if prefix == "/" {
        true
    } else if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        let mut have = path.split('/');
        prefix.split('/').all(|p| have.next() == Some(p))
    };
    assert_eq!(
        crate::gateway::has_prefix(path, prefix),
        expected,
        "has_prefix({path:?}, {prefix:?})"
    );
}

/// `h1_framing`: upstream response bytes read as `src/proxy/h1.rs` reads them (response
/// heads, interim responses, then the body by its framing). The first byte chooses a
/// HEAD request (bit 0) and the size of each read (the rest, plus one). Property: the
/// outcome (head, body, error, bytes left unread) is the same as when everything
/// arrives in one read, and a body never holds more bytes than were received.
pub fn h1_framing(data: &[u8]) {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let head_request = control & 1 == 1;
    let read_size = usize::from(control >> 1) + 1;
    let pieces = read_response(bytes, head_request, read_size);
    assert!(pieces.body.len() <= bytes.len());
    // A head longer than the limit is refused only when it arrives in several reads;
    // in one read it was never partial.
    if bytes.len() <= h1::MAX_HEAD {
        let whole = read_response(bytes, head_request, bytes.len().max(1));
        assert_eq!(pieces, whole, "read {read_size} bytes at a time");
    }
}

/// What reading one response yielded.
#[derive(Debug, PartialEq, Eq)]
struct ReadOutcome {
    /// The final head's status, framing and keep-alive, or why none was read.
    head: Result<(u16, Framing, bool), String>,
    body: Vec<u8>,
    /// Why the body failed, if it did.
    body_error: Option<String>,
    /// Received bytes that are part of no message read.
    unread: usize,
}

/// [`h1::Conn::exchange`] and [`h1::BodyReader`] over bytes that arrive `read_size` at
/// a time, with the same loops around the same parser and decoder.
fn read_response(input: &[u8], head_request: bool, read_size: usize) -> ReadOutcome {
    let mut reads = input.chunks(read_size);
    let mut buf = BytesMut::new();
    let failed = |e: h1::H1Error| ReadOutcome {
        head: Err(e.to_string()),
        body: Vec::new(),
        body_error: None,
        unread: 0,
    };
    let mut interim = 0;
    let mut received = false;
    let head = loop {
        match h1::parse_head(&mut buf, head_request) {
            Err(e) => return failed(e),
            Ok(Some(Parsed::Final(head))) => break head,
            Ok(Some(Parsed::Interim)) => {
                interim += 1;
                if interim > h1::MAX_INTERIM {
                    return failed(h1::H1Error::Invalid("too many interim (1xx) responses"));
                }
                continue;
            }
            Ok(None) => {}
        }
        match reads.next() {
            Some(read) => {
                buf.extend_from_slice(read);
                received = true;
            }
            None if received => return failed(h1::H1Error::Truncated),
            None => return failed(h1::H1Error::ClosedBeforeResponse),
        }
    };
    if head.keep_alive {
        assert_ne!(
            head.framing,
            Framing::Close,
            "a read-to-close body kept alive"
        );
    }
    let mut decoder = Decoder::new(head.framing);
    let mut body = Vec::new();
    let body_error = loop {
        match decoder.step(&mut buf) {
            Ok(Step::Data(bytes)) => body.extend_from_slice(&bytes),
            Ok(Step::End) => break None,
            Ok(Step::More) => match reads.next() {
                Some(read) => buf.extend_from_slice(read),
                None if decoder.reads_until_close() => break None,
                None => break Some(h1::H1Error::Truncated.to_string()),
            },
            Err(e) => break Some(e.to_string()),
        }
    };
    if body_error.is_none()
        && let Framing::Length(n) = head.framing
    {
        assert_eq!(
            body.len() as u64,
            n,
            "a Content-Length body of another length"
        );
    }
    ReadOutcome {
        head: Ok((head.status.as_u16(), head.framing, head.keep_alive)),
        body,
        body_error,
        unread: buf.len() + reads.map(<[u8]>::len).sum::<usize>(),
    }
}

/// `saml_response`: a posted `SAMLResponse` through everything the ACS does before it
/// verifies a signature (`SamlTenant::check_unverified`): base64, the
/// signature algorithm check, the Response shell check, and for an EncryptedAssertion
/// in an unsigned Response its decryption with the SP key in `fuzz/fixtures/`. Input
/// starting with `<` is the XML (base64-encoded here, so that the fuzzer works on the
/// XML); anything else is the form value as posted.
pub fn saml_response(data: &[u8]) {
    let form: Cow<'_, str> = if data.first() == Some(&b'<') {
        Cow::Owned(base64::engine::general_purpose::STANDARD.encode(data))
    } else {
        match std::str::from_utf8(data) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => return,
        }
    };
    let _ = saml_sp().check_unverified(&form);
}

/// The SP that [`saml_response`] posts to (see `fuzz/fixtures/README.md`).
fn saml_sp() -> &'static crate::saml::SamlTenant {
    static SP: OnceLock<crate::saml::SamlTenant> = OnceLock::new();
    SP.get_or_init(|| {
        let text = "[server]\npublic_url = \"https://sp.example.com\"\n\
             [[tenants]]\nid = \"fuzz\"\n[tenants.saml]\n\
             idp_entity_id = \"https://idp.example.com/metadata\"\n\
             idp_sso_url = \"https://idp.example.com/sso\"\n\
             idp_certificate = \"file:config/examples/example-idp.crt\"\n\
             sp_key = \"file:fuzz/fixtures/saml-sp.key\"\n\
             sp_certificate = \"file:fuzz/fixtures/saml-sp.crt\"\n\
             allow_rsa1_5 = true\n";
        let config = crate::config::Config::from_toml(text, &source_dir())
            .unwrap_or_else(|e| panic!("the fuzz SP's config: {e}"));
        let tenant = &config.tenants[0];
        crate::saml::SamlTenant::new(tenant, config.acs_url(tenant))
            .unwrap_or_else(|e| panic!("the fuzz SP: {e}"))
    })
}

/// `config`: config text through `check-config`'s validation
/// ([`crate::check_config_text`]), `file:` references resolving against `config/`.
/// Inputs whose references could block or exhaust memory (a `file:` that is not a
/// small regular file, such as `/dev/zero`) or resolve a host name over the network
/// (a listen address that is neither an IP address nor `localhost`) are skipped: a
/// config is the operator's, and the fuzzer must not hang or send DNS queries.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = source_dir().join("config");
    if let Ok(table) = text.parse::<toml::Table>()
        && !harmless_config(&table, &base)
    {
        return;
    }
    if let Err(errors) = crate::check_config_text(text, &base) {
        assert!(!errors.0.is_empty(), "a config refused without a reason");
    }
}

fn harmless_config(table: &toml::Table, base: &Path) -> bool {
    fn harmless(v: &toml::Value, base: &Path) -> bool {
        match v {
            toml::Value::String(s) => s.strip_prefix("file:").is_none_or(|p| {
                std::fs::metadata(base.join(p)).is_ok_and(|m| m.is_file() && m.len() < 1 << 20)
            }),
            toml::Value::Array(items) => items.iter().all(|i| harmless(i, base)),
            toml::Value::Table(t) => t.values().all(|i| harmless(i, base)),
            _ => true,
        }
    }
    let local_listen = |key: &str| {
        table
            .get("server")
            .and_then(|s| s.get(key))
            .and_then(toml::Value::as_str)
            .is_none_or(|a| {
                a.parse::<std::net::SocketAddr>().is_ok() || a.starts_with("localhost:")
            })
    };
    local_listen("listen")
        && local_listen("admin_listen")
        && table.values().all(|v| harmless(v, base))
}

/// The checkout idgate was built from, where the fixtures are.
fn source_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A user with every attribute SCIM shows set, and the groups it belongs to.
fn scim_user() -> (User, Vec<Group>) {
    let mut user = User::new("u-1", 1_700_000_000);
    user.user_name = Some("ada@example.com".into());
    user.external_id = Some("ext-1".into());
    user.display_name = Some("Ada Lovelace".into());
    user.given_name = Some("Ada".into());
    user.family_name = Some("Lovelace".into());
    user.set_emails(vec![
        Email {
            value: "ada@example.com".into(),
            kind: Some("work".into()),
            primary: true,
        },
        Email {
            value: "ada@home.example".into(),
            kind: Some("home".into()),
            primary: false,
        },
    ]);
    user.memberships = vec![Membership {
        group_id: "g-1".into(),
        role: "Admin".into(),
    }];
    let group = Group {
        id: "g-1".into(),
        name: "Acme".into(),
        active: true,
        external_id: Some("ext-g".into()),
        deprovisioned: false,
        created_at: 1_700_000_000,
        updated_at: 1_700_000_000,
        version: 3,
    };
    (user, vec![group])
}

/// [`scim_user`] as SCIM shows it, with an enterprise extension for filters to reach.
fn scim_user_doc() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let (user, groups) = scim_user();
        let refs: Vec<&Group> = groups.iter().collect();
        let mut doc = user_json(&user, &refs, SCIM_BASE);
        doc["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"] =
            json!({"employeeNumber": "42", "manager": {"value": "u-0"}});
        doc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(target: &str, name: &str) -> Vec<u8> {
        std::fs::read(source_dir().join("fuzz/corpus").join(target).join(name)).unwrap()
    }

    /// A harness that stopped at its first check would fuzz nothing behind it: the
    /// seeds must reach the end of what each target covers.
    #[test]
    fn the_saml_seeds_reach_decryption_and_the_shell_of_the_plaintext() {
        for name in ["plain.xml", "encrypted-gcm.xml", "encrypted-cbc-rsa15.xml"] {
            let form =
                base64::engine::general_purpose::STANDARD.encode(seed("saml_response", name));
            if let Err(e) = saml_sp().check_unverified(&form) {
                panic!("{name}: {e}");
            }
        }
        let plain_b64 = String::from_utf8(seed("saml_response", "plain.b64")).unwrap();
        assert!(saml_sp().check_unverified(&plain_b64).is_ok());
        let sha1 = base64::engine::general_purpose::STANDARD
            .encode(seed("saml_response", "sha1-refused.xml"));
        assert_eq!(
            saml_sp().check_unverified(&sha1).map_err(|e| e.code()),
            Err("signature")
        );
    }

    #[test]
    fn the_config_seeds_reach_the_saml_check() {
        let text = String::from_utf8(seed("config", "tenant-sp-key.toml")).unwrap();
        let base = source_dir().join("config");
        let table = text.parse::<toml::Table>().unwrap();
        assert!(harmless_config(&table, &base));
        let config = crate::check_config_text(&text, &base).unwrap();
        assert!(config.tenants[0].saml.sp_key.is_some());
        // What the target skips: reads that never end, and name lookups.
        for skipped in [
            "[identity]\nsigning_key = \"file:/dev/zero\"",
            "[server]\nlisten = \"example.com:80\"",
        ] {
            assert!(
                !harmless_config(&skipped.parse().unwrap(), &base),
                "{skipped}"
            );
        }
    }
}
