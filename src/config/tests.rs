use std::path::Path;
use std::time::Duration;

use super::*;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml(text, Path::new(env!("CARGO_MANIFEST_DIR")))
}

fn errors(text: &str) -> Vec<String> {
    load(text)
        .expect_err("config should be invalid")
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

const CERT: &str = "file:config/examples/example-idp.crt";

fn tenant(id: &str, extra: &str) -> String {
    format!(
        "[[tenants]]\nid = \"{id}\"\n{extra}\n[tenants.saml]\nidp_entity_id = \"https://idp\"\n\
         idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"{CERT}\"\n"
    )
}

#[test]
fn an_empty_config_takes_every_named_default() {
    let c = load("").unwrap();
    assert_eq!(c.server.listen, defaults::LISTEN.parse().unwrap());
    assert_eq!(
        c.server.admin_listen,
        defaults::ADMIN_LISTEN.parse().unwrap()
    );
    assert_eq!(
        c.server.upstream,
        defaults::UPSTREAM.parse::<http::Uri>().unwrap()
    );
    assert_eq!(c.server.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.server.upstream_timeout, Duration::from_secs(60));
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(25));
    assert!(c.server.trusted_proxies.is_empty());
    assert_eq!(c.store.url, StoreUrl::Memory);
    assert_eq!(c.store.key_prefix, "idgate");
    assert_eq!(c.store.fail_mode, FailMode::Closed);
    assert_eq!(c.session.cookie_name, "idgate_session");
    assert_eq!(c.session.idle_timeout, Duration::from_secs(8 * 3600));
    assert_eq!(c.session.max_lifetime, Duration::from_secs(24 * 3600));
    assert_eq!(c.session.cache_ttl, Duration::from_secs(5));
    assert!(c.identity.signing_key.is_none());
    assert_eq!(c.identity.audience, "legacy-app");
    assert_eq!(c.identity.ttl, Duration::from_secs(60));
    let names: Vec<&str> = c
        .identity
        .headers
        .all()
        .iter()
        .map(|h| h.as_str())
        .collect();
    let expected: Vec<String> = defaults::HEADERS
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .chain(["x-idgate-groups-truncated".into(), "x-idgate-auth".into()])
        .collect();
    assert_eq!(names, expected);
    assert!(c.access.public_paths.is_empty() && c.access.api_paths.is_empty());
    let strip: Vec<&str> = c.access.strip_headers.iter().map(|h| h.as_str()).collect();
    let expected: Vec<String> = defaults::STRIP_HEADERS
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    assert_eq!(strip, expected);
    assert_eq!(
        c.access.login_starts_per_minute,
        defaults::LOGIN_STARTS_PER_MINUTE
    );
    assert!(c.tenants.is_empty());
    assert!(c.default_tenant().is_none());
}

#[test]
fn tenant_defaults_follow_the_spec() {
    let c = load(&tenant("acme", "")).unwrap();
    let t = &c.tenants[0];
    assert_eq!(
        c.default_tenant().unwrap().id,
        "acme",
        "a lone tenant is the default"
    );
    assert_eq!(
        t.saml.sp_entity_id,
        "http://localhost:8080/_idgate/saml/acme/metadata"
    );
    assert!(!t.saml.allow_idp_initiated && !t.saml.want_assertions_signed && !t.saml.allow_sha1);
    assert_eq!(t.saml.attributes.user_id, "uid");
    assert_eq!(t.saml.attributes.last_name, "surname");
    assert!(
        t.provisioning.create_groups && t.provisioning.create_users && t.provisioning.link_by_email
    );
    assert_eq!(t.provisioning.default_role, "member");
    match &t.saml.idp {
        IdpSource::Explicit { certificates, .. } => assert_eq!(certificates.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn maestrano_tenants_default_the_sp_entity_id_to_api_id() {
    unsafe { std::env::set_var("IDGATE_TEST_MNO_KEY", "k") };
    let c = load(&format!(
        "{}[tenants.maestrano]\napi_id = \"app-42\"\napi_key = \"env:IDGATE_TEST_MNO_KEY\"\n",
        tenant("mno", "")
    ))
    .unwrap();
    let t = &c.tenants[0];
    assert_eq!(t.saml.sp_entity_id, "app-42");
    let m = t.maestrano.as_ref().unwrap();
    assert_eq!(m.api_key.expose(), "k");
    assert_eq!(m.api_host.as_str(), "https://api-hub.maestrano.com/");
    assert_eq!(m.user_mode, UserMode::Real);
    assert_eq!(m.recheck_fail_mode, RecheckFailMode::Keep);
    assert_eq!(m.billing.mode, BillingMode::None);
    assert_eq!(m.connec_forward_path, "/connec/notifications");
}

#[test]
fn store_urls_parse_by_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let pem = crate::identity::keys::generate_pem(crate::identity::keys::Algorithm::EdDSA).unwrap();
    std::fs::write(dir.path().join("k.pem"), pem).unwrap();
    let with_key = |url: &str| {
        Config::from_toml(
            &format!("[store]\nurl = \"{url}\"\n[identity]\nsigning_key = \"file:k.pem\"\n"),
            dir.path(),
        )
    };
    let c = with_key("redis+cluster://u:p@h1:7000,h2:7001,h3:7002").unwrap();
    assert_eq!(
        c.store.url,
        StoreUrl::Cluster(vec![
            "redis://u:p@h1:7000".into(),
            "redis://u:p@h2:7001".into(),
            "redis://u:p@h3:7002".into()
        ])
    );
    // Debug output (a config in a log line) never shows the password.
    let shown = format!("{:?}", c.store);
    assert!(!shown.contains("u:p"), "{shown}");
    assert!(shown.contains("redis://***@h1:7000"), "{shown}");
    // The URL may be a secret reference, from a file or the environment.
    std::fs::write(
        dir.path().join("redis-url"),
        "redis://:s3cret@redis.example:6379/0\n",
    )
    .unwrap();
    let c = with_key("file:redis-url").unwrap();
    assert_eq!(
        c.store.url,
        StoreUrl::Redis("redis://:s3cret@redis.example:6379/0".into())
    );
    assert!(!format!("{:?}", c.store).contains("s3cret"));
    let errs = errors("[store]\nurl = \"env:IDGATE_TEST_NO_SUCH_VARIABLE\"\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("store.url:") && e.contains("not set")),
        "{errs:?}"
    );
    // A private CA for rediss://, and only there.
    std::fs::write(
        dir.path().join("ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("not-a-cert.pem"), "hello\n").unwrap();
    let with_ca = |url: &str, ca: &str| {
        Config::from_toml(
            &format!(
                "[store]\nurl = \"{url}\"\nca_certificate = \"{ca}\"\n\
                 [identity]\nsigning_key = \"file:k.pem\"\n"
            ),
            dir.path(),
        )
    };
    let c = with_ca("rediss://redis.internal:6380/0", "file:ca.pem").unwrap();
    assert!(c.store.ca_certificate.is_some());
    let c = with_ca("rediss+cluster://h1:7000,h2:7001", "file:ca.pem").unwrap();
    assert!(c.store.ca_certificate.is_some());
    for (url, ca, expected) in [
        (
            "redis://redis.internal:6379/0",
            "file:ca.pem",
            "only to rediss://",
        ),
        (
            "rediss://redis.internal:6380/0#insecure",
            "file:ca.pem",
            "contradicts #insecure",
        ),
        (
            "rediss://redis.internal:6380/0",
            "file:not-a-cert.pem",
            "not a PEM certificate",
        ),
        (
            "rediss://redis.internal:6380/0",
            "file:missing.pem",
            "missing.pem",
        ),
    ] {
        let errs = match with_ca(url, ca) {
            Ok(_) => panic!("accepted {url} with {ca}"),
            Err(e) => e.to_string(),
        };
        assert!(
            errs.contains("store.ca_certificate") && errs.contains(expected),
            "{url} with {ca}: {errs}"
        );
    }
    let c = with_key("rediss://redis.example:6380/1").unwrap();
    assert_eq!(
        c.store.url,
        StoreUrl::Redis("rediss://redis.example:6380/1".into())
    );
    let errs = errors("[store]\nurl = \"redis://127.0.0.1:6379/0\"\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("identity.signing_key: required")),
        "a shared store needs a shared signing key: {errs:?}"
    );
    let errs = errors("[store]\nurl = \"redis+cluster://h1:7000,h2\"\n");
    assert!(
        errs.iter()
            .any(|e| e.contains("cluster node 1 (\"h2\") is not host:port")),
        "{errs:?}"
    );
    let errs = errors("[store]\nurl = \"mysql://x\"\nfail_mode = \"open\"\n");
    assert!(
        errs.iter()
            .any(|e| e.contains("unknown store scheme \"mysql\"")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("store.fail_mode: \"open\" is not one of")),
        "{errs:?}"
    );
}

#[test]
fn redis_passwords_do_not_appear_in_errors() {
    let errs = errors("[store]\nurl = \"redis://:hunter2@\"\n");
    assert!(errs.iter().all(|e| !e.contains("hunter2")), "{errs:?}");
}

#[test]
fn every_kind_of_mistake_is_reported_in_one_pass() {
    let text = format!(
        "[server]\nlisten = \"nowhere\"\npublic_url = \"https://app.example.com/sub\"\n\
         trusted_proxies = [\"10.0.0.0/33\"]\nbogus = 1\n\
         [session]\nidle_timeout = \"48h\"\ncookie_name = \"bad name\"\n\
         [identity.headers]\nuser_id = \"X-Idgate-Email\"\nrole = \"Cookie\"\n\
         [access]\npublic_paths = [\"relative\", \"/a/../b\"]\n\
         strip_headers = [\"X-Ok\", \"bad name\", \"Host\", \"x_forwarded_for\"]\n\
         login_starts_per_minute = 0\n{}{}{}",
        tenant("Bad_Id", "default = true"),
        tenant("two", "default = true\nhosts = [\"a.example\"]"),
        tenant("three", "hosts = [\"A.example\"]"),
    );
    let errs = errors(&text);
    for expected in [
        "server.bogus: unknown key",
        "server.listen: invalid listen address",
        "server.public_url: \"https://app.example.com/sub\" must be a bare origin",
        "server.trusted_proxies[0]:",
        "session.idle_timeout: must not exceed session.max_lifetime",
        "session.cookie_name:",
        "identity.headers.email: same header as identity.headers.user_id",
        "identity.headers.role: \"Cookie\" is a standard HTTP header",
        "access.public_paths[0]: \"relative\" must start with '/'",
        "access.public_paths[1]: \"/a/../b\" must not contain dot segments",
        "access.strip_headers[1]: \"bad name\" is not a valid header name",
        "access.strip_headers[2]: \"Host\" is a standard HTTP header",
        "access.strip_headers[3]: \"x_forwarded_for\" is a standard HTTP header",
        "access.login_starts_per_minute: 0 must be at least 1",
        "tenants[0].id: \"Bad_Id\" must match [a-z0-9-]+",
        "tenants[1].default: more than one default tenant: tenants[0], tenants[1]",
        "tenants[2].hosts[0]: host \"a.example\" is already claimed by tenants[1]",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "missing `{expected}` in {errs:#?}"
        );
    }
}

#[test]
fn idp_settings_must_include_a_signing_certificate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-cert.pem"), "hello").unwrap();
    std::fs::write(dir.path().join("md.xml"), "<EntityDescriptor/>").unwrap();
    let no_cert = "[[tenants]]\nid = \"a\"\n[tenants.saml]\nidp_entity_id = \"x\"\n\
                   idp_sso_url = \"https://idp/sso\"\nidp_certificate = \"file:not-a-cert.pem\"\n\
                   [[tenants]]\nid = \"b\"\n[tenants.saml]\nidp_metadata = \"file:md.xml\"\n\
                   [[tenants]]\nid = \"c\"\n";
    let errs: Vec<String> = Config::from_toml(no_cert, dir.path())
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        errs.iter()
            .any(|e| e.starts_with("tenants[0].saml.idp_certificate: no PEM certificate")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with(
            "tenants[1].saml.idp_metadata: the IdP metadata holds no signing certificate"
        )),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("tenants[2].saml: missing")),
        "{errs:?}"
    );
}

#[test]
fn scim_tokens_are_kept_only_as_hashes() {
    let hash = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let c = load(&format!(
        "{}[tenants.scim]\ntoken = \"{hash}\"\n",
        tenant("a", "")
    ))
    .unwrap();
    let scim = c.tenants[0].scim.as_ref().unwrap();
    assert_eq!(hex::encode(scim.token_sha256), &hash[7..]);
    assert_eq!(scim.name_order, NameOrder::GivenFamily);
    // A plain token by reference is hashed at load.
    let c = load(&format!(
        "{}[tenants.scim]\ntoken = \"abc\"\n",
        tenant("a", "")
    ))
    .unwrap();
    assert_eq!(
        c.tenants[0].scim.as_ref().unwrap().token_sha256,
        scim.token_sha256
    );
    let errs = errors(&format!(
        "{}[tenants.scim]\ntoken = \"sha256:ABC\"\n",
        tenant("a", "")
    ));
    assert!(
        errs[0].starts_with("tenants[0].scim.token: expected sha256:"),
        "{errs:?}"
    );

    // Previous tokens take the same forms, one error per bad entry, and at most four.
    let c = load(&format!(
        "{}[tenants.scim]\ntoken = \"{hash}\"\nprevious_tokens = [\"abc\", \"{hash}\"]\n",
        tenant("a", "")
    ))
    .unwrap();
    let previous = &c.tenants[0].scim.as_ref().unwrap().previous_token_sha256;
    assert_eq!(previous, &vec![scim.token_sha256, scim.token_sha256]);
    let errs = errors(&format!(
        "{}[tenants.scim]\ntoken = \"{hash}\"\nprevious_tokens = [\"{hash}\", \"sha256:x\"]\n",
        tenant("a", "")
    ));
    assert!(
        errs.len() == 1
            && errs[0].starts_with("tenants[0].scim.previous_tokens[1]: expected sha256:"),
        "{errs:?}"
    );
    let errs = errors(&format!(
        "{}[tenants.scim]\ntoken = \"{hash}\"\nprevious_tokens = [{}]\n",
        tenant("a", ""),
        vec![format!("\"{hash}\""); 5].join(", ")
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("tenants[0].scim.previous_tokens: at most 4")),
        "{errs:?}"
    );
}

#[test]
fn syntax_errors_are_reported_with_their_location() {
    let errs = errors("[server\nlisten = 1");
    assert!(errs[0].starts_with("invalid TOML"), "{errs:?}");
    let errs = errors("[server]\nlisten = 5\n");
    assert!(
        errs[0].contains("listen") || errs[0].contains("line"),
        "{errs:?}"
    );
}

#[test]
fn access_keys_take_their_values() {
    let c = Config::from_toml(
        "[access]\nstrip_headers = [\"X-Steer\", \"x_steer\"]\nlogin_starts_per_minute = 5\n",
        std::path::Path::new("."),
    )
    .unwrap();
    let strip: Vec<&str> = c.access.strip_headers.iter().map(|h| h.as_str()).collect();
    assert_eq!(strip, ["x-steer", "x_steer"]);
    assert_eq!(c.access.login_starts_per_minute, 5);
    let errs = errors("[access]\nlogin_starts_per_minute = 5000000000\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("access.login_starts_per_minute:")),
        "{errs:?}"
    );
}

/// A PEM key and a certificate for it valid from `from_days` to `to_days` from now.
fn sp_pair(from_days: i64, to_days: i64) -> (String, String) {
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    sp_pair_for(&key, from_days, to_days)
}

fn sp_pair_for(
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
    from_days: i64,
    to_days: i64,
) -> (String, String) {
    use openssl::{asn1::Asn1Time, hash::MessageDigest, x509};
    let mut name = x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "sp").unwrap();
    let name = name.build();
    let mut b = x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    b.set_not_before(&Asn1Time::from_unix(now + from_days * 86_400).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + to_days * 86_400).unwrap())
        .unwrap();
    b.sign(key, MessageDigest::sha256()).unwrap();
    (
        String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        String::from_utf8(b.build().to_pem().unwrap()).unwrap(),
    )
}

fn sp_tenant(dir: &Path, key: &str, cert: &str, extra: &str) -> String {
    std::fs::write(dir.join("sp.key"), key).unwrap();
    std::fs::write(dir.join("sp.crt"), cert).unwrap();
    format!(
        "[server]\npublic_url = \"https://app.example.com\"\n{}sp_key = \"file:{}\"\nsp_certificate = \"file:{}\"\n{extra}\n",
        tenant("acme", ""),
        dir.join("sp.key").display(),
        dir.join("sp.crt").display()
    )
}

#[test]
fn sp_keys_are_checked_against_their_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = sp_pair(-1, 365);
    let c = load(&sp_tenant(dir.path(), &key, &cert, "")).unwrap();
    let saml = &c.tenants[0].saml;
    assert!(saml.sp_key.is_some());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(!saml.require_encrypted_assertions && !saml.allow_rsa1_5);

    // Another key's certificate.
    let (_, other) = sp_pair(-1, 365);
    assert_eq!(
        errors(&sp_tenant(dir.path(), &key, &other, "")),
        ["tenants[0].saml.sp_certificate: the certificate is not for sp_key's public key"]
    );
    // Expired: an error. Expiring within 30 days: a warning naming the key.
    let (key2, expired) = sp_pair(-10, -1);
    let e = errors(&sp_tenant(dir.path(), &key2, &expired, ""));
    assert!(
        e.len() == 1
            && e[0].starts_with("tenants[0].saml.sp_certificate: the certificate expired on"),
        "{e:?}"
    );
    let (key3, soon) = sp_pair(-10, 20);
    let c = load(&sp_tenant(dir.path(), &key3, &soon, "")).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].path, "tenants[0].saml.sp_certificate");
    assert!(
        c.warnings[0].message.contains("within 30 days"),
        "{:?}",
        c.warnings
    );

    // Not a key, a missing half, a bad previous key: all reported with their paths.
    let text = format!(
        "{}sp_key = \"not a key\"\nsp_previous_keys = [\"file:{}\", \"nope\"]\n",
        tenant("acme", ""),
        dir.path().join("sp.key").display()
    );
    assert_eq!(
        errors(&text),
        [
            "tenants[0].saml.sp_key: not a PEM private key",
            "tenants[0].saml.sp_certificate: missing: required with sp_key (it is what SP metadata publishes)",
            "tenants[0].saml.sp_previous_keys[1]: not a PEM private key",
        ]
    );
    assert_eq!(
        errors(&format!(
            "{}require_encrypted_assertions = true\n",
            tenant("acme", "")
        )),
        [
            "tenants[0].saml.require_encrypted_assertions: needs sp_key and sp_certificate: without them no encrypted assertion can be read"
        ]
    );
    // The key never shows in a Debug dump.
    let c = load(&sp_tenant(dir.path(), &key, &cert, "")).unwrap();
    assert!(!format!("{c:?}").contains("PRIVATE KEY"));
}

#[test]
fn an_ec_sp_key_is_accepted_but_cannot_be_required_to_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let ec =
        openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap();
    let (key, cert) = sp_pair_for(&ec, -1, 365);
    assert!(load(&sp_tenant(dir.path(), &key, &cert, "")).is_ok());
    assert_eq!(
        errors(&sp_tenant(
            dir.path(),
            &key,
            &cert,
            "require_encrypted_assertions = true"
        )),
        [
            "tenants[0].saml.require_encrypted_assertions: needs an RSA sp_key: assertions are encrypted to RSA keys (RSA-OAEP), an EC key decrypts nothing"
        ]
    );
}

fn url_tenant(saml: &str) -> String {
    format!("[[tenants]]\nid = \"u\"\n[tenants.saml]\n{saml}\n")
}

#[test]
fn idp_metadata_url_takes_its_defaults_and_stands_alone() {
    let c = load(&url_tenant(
        "idp_metadata_url = \"https://idp.example.com/metadata\"",
    ))
    .unwrap();
    match &c.tenants[0].saml.idp {
        IdpSource::Url(m) => {
            assert_eq!(m.url.as_str(), "https://idp.example.com/metadata");
            assert_eq!(
                m.refresh,
                humantime::parse_duration(defaults::IDP_METADATA_REFRESH).unwrap()
            );
            assert_eq!(m.refresh, Duration::from_secs(3600));
            assert!(m.signer.is_none());
        }
        other => panic!("{other:?}"),
    }
    // Loopback may be plain http (a sidecar IdP, tests); a signer makes any http fine.
    for host in ["127.0.0.1:8000", "[::1]", "localhost"] {
        let c = load(&url_tenant(&format!(
            "idp_metadata_url = \"http://{host}/md\"\nidp_metadata_refresh = \"5s\""
        )))
        .unwrap();
        assert!(
            matches!(&c.tenants[0].saml.idp, IdpSource::Url(m) if m.refresh == Duration::from_secs(5))
        );
    }
    let c = load(&url_tenant(&format!(
        "idp_metadata_url = \"http://idp.example.com/md\"\nidp_metadata_signer = \"{CERT}\""
    )))
    .unwrap();
    assert!(
        matches!(&c.tenants[0].saml.idp, IdpSource::Url(m) if m.signer.as_ref().is_some_and(|s| s.len() == 1))
    );
}

#[test]
fn signed_requests_need_an_sp_key_and_name_id_formats_are_named() {
    let errs = errors(&tenant("acme", "").replace(
        "idp_certificate",
        "sign_requests = true\nname_id_format = \"email\"\nidp_certificate",
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("tenants[0].saml.sign_requests:") && e.contains("sp_key")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("tenants[0].saml.name_id_format:") && e.contains("\"email\"")),
        "{errs:?}"
    );
    let c = load(&tenant("acme", "").replace(
        "idp_certificate",
        "name_id_format = \"transient\"\nidp_certificate",
    ))
    .unwrap();
    let saml = &c.tenants[0].saml;
    assert!(!saml.sign_requests, "no sp_key, nothing to sign with");
    assert_eq!(
        saml.name_id_format,
        "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
    );
}

#[test]
fn idp_metadata_url_mistakes_are_reported_with_their_keys() {
    let cases = [
        (
            "idp_metadata_url = \"http://idp.example.com/md\"",
            "tenants[0].saml.idp_metadata_url: must be https",
        ),
        (
            "idp_metadata_url = \"ftp://idp.example.com/md\"",
            "tenants[0].saml.idp_metadata_url: \"ftp://idp.example.com/md\" must be an absolute",
        ),
        (
            "idp_metadata_url = \"https://idp/md\"\nidp_metadata_refresh = \"4s\"",
            "tenants[0].saml.idp_metadata_refresh: must be at least 5s",
        ),
        (
            "idp_metadata_url = \"https://idp/md\"\nidp_metadata_refresh = \"soon\"",
            "tenants[0].saml.idp_metadata_refresh: invalid duration",
        ),
        (
            "idp_metadata_url = \"https://idp/md\"\nidp_metadata_signer = \"file:Cargo.toml\"",
            "tenants[0].saml.idp_metadata_signer: no PEM certificate",
        ),
        (
            "idp_metadata_url = \"https://idp/md\"\nidp_metadata_signer = \"env:IDGATE_NO_SUCH_VAR\"",
            "tenants[0].saml.idp_metadata_signer:",
        ),
        (
            "idp_metadata_url = \"https://idp/md\"\nidp_metadata = \"file:config/examples/example-idp.crt\"",
            "tenants[0].saml.idp_metadata_url: give one of",
        ),
        (
            &format!("idp_metadata_url = \"https://idp/md\"\nidp_certificate = \"{CERT}\""),
            "tenants[0].saml.idp_metadata_url: give one of",
        ),
        (
            "idp_entity_id = \"x\"\nidp_sso_url = \"https://idp/sso\"\n\
             idp_certificate = \"file:config/examples/example-idp.crt\"\nidp_metadata_refresh = \"1h\"",
            "tenants[0].saml.idp_metadata_refresh: only meaningful with idp_metadata_url",
        ),
        (
            &format!(
                "idp_entity_id = \"x\"\nidp_sso_url = \"https://idp/sso\"\n\
                 idp_certificate = \"{CERT}\"\nidp_metadata_signer = \"{CERT}\""
            ),
            "tenants[0].saml.idp_metadata_signer: only meaningful with idp_metadata_url",
        ),
    ];
    for (saml, expected) in cases {
        let errs = errors(&url_tenant(saml));
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "missing `{expected}` in {errs:#?}"
        );
    }
    // Several mistakes in one tenant are all reported in one pass.
    let errs = errors(&url_tenant(
        "idp_metadata_url = \"http://idp.example.com/md\"\nidp_metadata_refresh = \"1s\"",
    ));
    assert!(errs.len() >= 2, "{errs:#?}");
}

#[test]
fn after_logout_url_is_a_same_origin_path_or_an_absolute_url() {
    for ok in ["/", "/bye?x=1", "https://www.example.com/bye"] {
        let t = format!("{}after_logout_url = \"{ok}\"\n", tenant("acme", ""));
        let c = load(&t).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        assert_eq!(c.tenants[0].saml.after_logout_url.as_deref(), Some(ok));
    }
    assert_eq!(
        load(&tenant("acme", "")).unwrap().tenants[0]
            .saml
            .after_logout_url,
        None
    );
    // Browsers read `//host` and `/\host` as another origin.
    for bad in [
        "//evil.example/x",
        "/\\\\evil.example",
        "bye",
        "javascript:alert(1)",
    ] {
        let t = format!("{}after_logout_url = \"{bad}\"\n", tenant("acme", ""));
        let e = errors(&t);
        assert!(
            e.iter()
                .any(|m| m.contains("tenants[0].saml.after_logout_url")),
            "{bad}: {e:?}"
        );
    }
}

fn public_url_warnings(server: &str) -> Vec<String> {
    load(&format!("[server]\n{server}"))
        .unwrap()
        .warnings
        .iter()
        .filter(|w| w.path == "server.public_url")
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_public_url_browsers_cannot_reach_is_warned_about() {
    // Unset, listening beyond loopback: the default names localhost.
    let w = public_url_warnings("");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("is unset") && w[0].contains("0.0.0.0:8080"),
        "{w:?}"
    );
    // Set to this machine while listening beyond loopback.
    for url in [
        "http://localhost:8080",
        "http://127.0.0.1:8080",
        "http://app.localhost:8080",
    ] {
        let w = public_url_warnings(&format!(
            "public_url = \"{url}\"\nlisten = \"0.0.0.0:8080\"\n"
        ));
        assert_eq!(w.len(), 1, "{url}: {w:?}");
        assert!(w[0].contains("names this machine"), "{w:?}");
    }
    // Unset, on loopback but another port than the default URL's.
    let w = public_url_warnings("listen = \"127.0.0.1:9000\"\n");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("another port"), "{w:?}");
    // Nothing to say: a real public URL, or the loopback default as the demo runs it.
    assert!(public_url_warnings("public_url = \"https://app.example.com\"\n").is_empty());
    assert!(public_url_warnings("listen = \"127.0.0.1:8080\"\n").is_empty());
    assert!(public_url_warnings("listen = \"localhost:8080\"\n").is_empty());
}

#[test]
fn listen_addresses_take_host_names() {
    let c =
        load("[server]\nlisten = \"localhost:8080\"\nadmin_listen = \"localhost:9091\"\n").unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.server.admin_listen, "127.0.0.1:9091".parse().unwrap());
    assert_eq!(listen_addr("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
    for bad in [
        "localhost",
        "localhost:http",
        ":8080",
        "no-such-host.invalid:8080",
        "1.2.3.4:99999",
    ] {
        let e = errors(&format!("[server]\nlisten = \"{bad}\"\n"));
        assert!(
            e[0].starts_with("server.listen: ") && e[0].contains(bad),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn access_rules_are_checked_with_their_key_paths() {
    let e = errors(&format!(
        "[[access.rules]]\npath = \"/a\"\n\
         [[access.rules]]\nname = \"both\"\npath = \"/a\"\npath_regex = \"^/a\"\n\
         [[access.rules]]\nname = \"neither\"\n\
         [[access.rules]]\nname = \"bad re\"\npath_regex = \"^/(a\"\n\
         [[access.rules]]\nname = \"bad path\"\npath = \"/a/../b\"\n\
         [[access.rules]]\nname = \"bad method\"\npath = \"/a\"\nmethods = [\"GET\", \"NOT A METHOD\"]\n\
         [[access.rules]]\nname = \"who\"\npath = \"/a\"\ntenants = [\"nobody\"]\n\
         [[access.rules]]\nname = \"contradiction\"\npath = \"/a\"\npublic = true\nallow_groups = [\"g\"]\n\
         {}",
        tenant("acme", "")
    ));
    for expected in [
        "access.rules[0].name: missing",
        "access.rules[1]: set path or path_regex, not both",
        "access.rules[2]: needs path or path_regex",
        "access.rules[3].path_regex: invalid regex",
        "access.rules[4].path: \"/a/../b\" must not contain dot segments",
        "access.rules[5].methods[1]: \"NOT A METHOD\" is not an HTTP method",
        "access.rules[6].tenants[0]: \"nobody\" is not a configured tenant",
        "access.rules[7]: a public rule forwards without identity",
    ] {
        assert!(
            e.iter().any(|m| m.starts_with(expected)),
            "missing {expected:?} in {e:#?}"
        );
    }
}

#[test]
fn access_rules_that_can_never_decide_are_warned_about() {
    let c = load(&format!(
        "[access]\npublic_paths = [\"/static\"]\n\
         [[access.rules]]\nname = \"everyone\"\npath = \"/\"\n\
         [[access.rules]]\nname = \"admins\"\npath = \"/admin\"\nallow_groups = [\"g-admins\"]\n\
         [[access.rules]]\nname = \"assets\"\npath = \"/static/x\"\n\
         {}",
        tenant("acme", "")
    ))
    .unwrap();
    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().any(
            |w| w.starts_with("access.rules[1]: rule \"admins\" never decides")
                && w.contains("\"everyone\"")
        ),
        "{warnings:#?}"
    );
    assert!(
        warnings.iter().any(
            |w| w.starts_with("access.rules[2]: rule \"assets\" never decides")
                && w.contains("public_paths /static")
        ),
        "{warnings:#?}"
    );
    let rules: Vec<&str> = c.access.rules.iter().map(|r| &*r.name).collect();
    assert_eq!(
        rules,
        ["public_paths /static", "everyone", "admins", "assets"]
    );
}

/// A tenant with one `[[tenants.bearer]]` table holding `body`.
fn bearer_tenant(body: &str) -> String {
    format!(
        "{}[[tenants.bearer]]\nissuer = \"https://login.example.com/\"\n{body}\n",
        tenant("acme", "")
    )
}

const STATIC_JWKS: &str = r#"jwks = "file:tests/fixtures/bearer/example-jwks.json""#;

#[test]
fn bearer_issuers_take_their_defaults_and_accept_only_asymmetric_algorithms() {
    let c = load(&bearer_tenant(&format!(
        "audience = \"api://app\"\n{STATIC_JWKS}"
    )))
    .unwrap();
    let b = &c.tenants[0].bearer[0];
    assert_eq!(b.issuer, "https://login.example.com/");
    assert_eq!(b.user_claim, "sub");
    assert_eq!(b.email_claim, "email");
    assert_eq!(b.name_claim, "name");
    assert_eq!(b.group_claim, None);
    assert!(!b.forward_authorization);
    use jsonwebtoken::Algorithm::*;
    assert_eq!(b.algorithms, vec![RS256, ES256, EdDSA]);
    assert!(matches!(&b.keys, JwksSource::Static(set) if set.keys.len() == 1));

    for alg in ["HS256", "none", "HS512", "rs256"] {
        let errs = errors(&bearer_tenant(&format!(
            "audience = \"a\"\n{STATIC_JWKS}\nalgorithms = [\"{alg}\"]"
        )));
        assert!(
            errs.iter()
                .any(|e| e.contains("tenants[0].bearer[0].algorithms[0]")
                    && e.contains("never none or HMAC")),
            "{alg}: {errs:?}"
        );
    }
}

#[test]
fn bearer_issuers_need_an_audience_and_exactly_one_key_source() {
    let errs = errors(&bearer_tenant(STATIC_JWKS));
    assert!(
        errs.iter().any(|e| e.contains("bearer[0].audience")),
        "{errs:?}"
    );
    let errs = errors(&bearer_tenant("audience = \"a\""));
    assert!(
        errs.iter().any(|e| e.contains("bearer[0].jwks_url")),
        "{errs:?}"
    );
    let errs = errors(&bearer_tenant(&format!(
        "audience = \"a\"\n{STATIC_JWKS}\njwks_url = \"https://login.example.com/jwks\""
    )));
    assert!(errs.iter().any(|e| e.contains("not both")), "{errs:?}");
    let errs = errors(&bearer_tenant(
        "audience = \"a\"\njwks = \"file:config/examples/example-idp.crt\"",
    ));
    assert!(
        errs.iter().any(|e| e.contains("not a JWKS document")),
        "{errs:?}"
    );
    let errs = errors(&format!(
        "{}[[tenants.bearer]]\nissuer = \"https://login.example.com/\"\naudience = \"a\"\n{STATIC_JWKS}\n",
        bearer_tenant(&format!("audience = \"a\"\n{STATIC_JWKS}"))
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("bearer[1].issuer") && e.contains("already")),
        "{errs:?}"
    );
}

#[test]
fn two_tenants_cannot_trust_one_issuer_for_one_audience() {
    let issuer = |aud: &str| {
        format!(
            "[[tenants.bearer]]\nissuer = \"https://login.example.com/\"\naudience = \"{aud}\"\n{STATIC_JWKS}\n"
        )
    };
    let text = format!(
        "{}{}{}{}",
        tenant("acme", "hosts = [\"a.example\"]"),
        issuer("api://app"),
        tenant("beta", "hosts = [\"b.example\"]"),
        issuer("api://app")
    );
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("tenants[1].bearer[0].audience") && e.contains("\"acme\"")),
        "{errs:?}"
    );
    let text = format!(
        "{}{}{}{}",
        tenant("acme", "hosts = [\"a.example\"]"),
        issuer("api://acme"),
        tenant("beta", "hosts = [\"b.example\"]"),
        issuer("api://beta")
    );
    load(&text).unwrap();
}

#[test]
fn a_plain_http_jwks_url_is_a_warning_unless_it_is_loopback() {
    let c = load(&bearer_tenant(
        "audience = \"a\"\njwks_url = \"http://login.example.com/jwks\"",
    ))
    .unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.path == "tenants[0].bearer[0].jwks_url" && w.message.contains("https")),
        "{:?}",
        c.warnings
    );
    let c = load(&bearer_tenant(
        "audience = \"a\"\njwks_url = \"http://127.0.0.1:9000/jwks\"",
    ))
    .unwrap();
    assert!(
        !c.warnings.iter().any(|w| w.path.contains("bearer")),
        "{:?}",
        c.warnings
    );
    let errs = errors(&bearer_tenant(&format!(
        "audience = \"a\"\njwks_url = \"http://127.0.0.1:9000/jwks\"\nca_certificate = \"{CERT}\""
    )));
    assert!(
        errs.iter()
            .any(|e| e.contains("ca_certificate") && e.contains("https")),
        "{errs:?}"
    );
}

#[test]
fn telemetry_is_off_without_an_endpoint_and_checks_its_keys() {
    let c = load("").unwrap();
    assert!(c.telemetry.otlp_endpoint.is_none());
    assert_eq!(c.telemetry.traces_url(), None);
    assert_eq!(c.telemetry.service_name, defaults::SERVICE_NAME);
    assert_eq!(c.telemetry.sample_ratio, defaults::SAMPLE_RATIO);

    let c = load("[telemetry]\notlp_endpoint = \"http://collector:4318/\"\nsample_ratio = 0\n")
        .unwrap();
    assert_eq!(
        c.telemetry.traces_url().as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(c.telemetry.sample_ratio, 0.0);
    let c = load("[telemetry]\notlp_endpoint = \"https://otel.example.com/otlp\"\n").unwrap();
    assert_eq!(
        c.telemetry.traces_url().as_deref(),
        Some("https://otel.example.com/otlp/v1/traces")
    );

    let e = errors(
        "[telemetry]\notlp_endpoint = \"grpc://collector:4317\"\nsample_ratio = 1.5\n\
         service_name = \" \"\n",
    );
    assert!(
        e.iter().any(|e| e.starts_with("telemetry.otlp_endpoint: ")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.starts_with("telemetry.sample_ratio: ")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.starts_with("telemetry.service_name: ")),
        "{e:?}"
    );
    for bad in [
        "http://collector:4318/?x=1",
        "http://u:p@collector:4318",
        "collector:4318",
    ] {
        let e = errors(&format!("[telemetry]\notlp_endpoint = \"{bad}\"\n"));
        assert!(
            e.iter().any(|e| e.starts_with("telemetry.otlp_endpoint: ")),
            "{bad}: {e:?}"
        );
    }
    let e = errors("[telemetry]\nsample_ratio = -0.1\nno_such_key = 1\n");
    assert!(e.iter().any(|e| e.starts_with("telemetry.sample_ratio: ")));
    assert!(e.iter().any(|e| e == "telemetry.no_such_key: unknown key"));
}
