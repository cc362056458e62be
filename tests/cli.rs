//! The command line: check-config, serve's refusal of bad configs, keygen and token.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::run_cli;

fn manifest_path(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_configs_are_valid() {
    let (code, out, err) = run_cli(
        &[
            "check-config",
            "--config",
            &manifest_path("config/demo.toml"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");

    let key = run_cli(&["keygen"], &[]).1;
    let env = [
        ("IDGATE_SIGNING_KEY", key.as_str()),
        ("MNO_API_KEY", "mno-key"),
        ("MNO_DEVPL_ENV_KEY", "devpl-key"),
        ("MNO_DEVPL_ENV_SECRET", "devpl-secret"),
    ];
    let example = manifest_path("config/idgate.example.toml");
    let (code, out, err) = run_cli(&["check-config", "--config", &example], &env);
    assert_eq!(code, 0, "{out}{err}");
    // IDGATE_CONFIG stands in for --config.
    let mut with_var = env.to_vec();
    with_var.push(("IDGATE_CONFIG", example.as_str()));
    let (code, _, err) = run_cli(&["check-config"], &with_var);
    assert_eq!(code, 0, "{err}");
}

const FIVE_MISTAKES: &str = r#"
[server]
upstream = "not a url"
connect_timeout = "soon"
listne = "0.0.0.0:8080"

[store]
url = "postgres://db"

[[tenants]]
id = "acme"
default = true
[tenants.saml]
idp_entity_id = "https://idp.example.com"
idp_sso_url = "https://idp.example.com/sso"
idp_certificate = "file:/nonexistent/idp.pem"

[[tenants]]
id = "acme"
default = true
[tenants.saml]
idp_entity_id = "https://idp2.example.com"
idp_sso_url = "https://idp2.example.com/sso"
"#;

#[test]
fn check_config_reports_every_error_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, FIVE_MISTAKES).unwrap();
    let (code, _, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{err}");
    for expected in [
        "server.listne: unknown key",
        "server.upstream: malformed upstream URL",
        "server.connect_timeout: invalid duration",
        "store.url: unknown store scheme \"postgres\"",
        "tenants[0].saml.idp_certificate: file not found: /nonexistent/idp.pem",
        "tenants[1].id: duplicate tenant id \"acme\"",
        "tenants[1].default: more than one default tenant",
        "tenants[1].saml.idp_certificate: missing",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    let errors = err.lines().filter(|l| l.contains(": ")).count();
    assert!(errors >= 8, "{err}");
}

#[test]
fn serve_refuses_an_invalid_config_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, FIVE_MISTAKES).unwrap();
    let (code, _, err) = run_cli(&["serve", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 64);
    assert!(err.contains("store.url: unknown store scheme"), "{err}");
    let (code, _, err) = run_cli(&["serve", "--config", "/nonexistent/idgate.toml"], &[]);
    assert_eq!(code, 64);
    assert!(err.contains("cannot read config file"), "{err}");
}

/// Checks a PEM key with OpenSSL, independently of the code that made it.
fn openssl_describes(pem: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["pkey", "-noout", "-text"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed by `make test`");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl rejected the key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn keygen_prints_keys_openssl_accepts() {
    for (alg, expect) in [
        ("EdDSA", "ED25519 Private-Key"),
        ("ES256", "NIST CURVE: P-256"),
        ("RS256", "Private-Key: (2048 bit"),
    ] {
        let (code, pem, err) = run_cli(&["keygen", "--alg", alg], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        let text = openssl_describes(&pem);
        assert!(text.contains(expect), "{alg}: {text}");
    }
    let (default_code, pem, _) = run_cli(&["keygen"], &[]);
    assert_eq!(default_code, 0);
    assert!(openssl_describes(&pem).contains("ED25519"));
    let (code, _, _) = run_cli(&["keygen", "--alg", "HS256"], &[]);
    assert_ne!(code, 0);
}

#[test]
fn token_prints_a_token_and_its_sha256() {
    let (code, out, _) = run_cli(&["token"], &[]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let (token, hash) = (lines[0], lines[1]);
    assert!(token.len() >= 43);
    // Independent digest: coreutils' sha256sum over the token's bytes.
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let digest = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    let hex = digest.split_whitespace().next().unwrap();
    assert_eq!(hash, format!("sha256:{hex}"));
    assert_ne!(run_cli(&["token"], &[]).1, out, "tokens are random");
}

#[test]
fn demo_config_validates_through_the_library_too() {
    // `idgate demo` embeds config/demo.toml; it must build a config with an echo upstream.
    let cfg = idgate::demo::config(None, "127.0.0.1:4000".parse().unwrap()).expect("valid");
    assert_eq!(cfg.access.public_paths, ["/public/"]);
    let (tenant, _idp) = idgate::demo::dev_tenant(&cfg).expect("dev IdP");
    assert_eq!(tenant.id, "demo");
    assert_eq!(cfg.server.upstream.to_string(), "http://127.0.0.1:4000/");
}

#[test]
fn check_config_also_proves_keys_and_saml_settings_usable() {
    let dir = tempfile::tempdir().unwrap();
    // A P-384 key is a PEM private key, but not one idgate can sign with.
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ])
        .output()
        .expect("openssl");
    std::fs::write(dir.path().join("p384.pem"), &out.stdout).unwrap();
    // Metadata that mentions a certificate but is not XML.
    std::fs::write(dir.path().join("md.xml"), "X509Certificate but not XML").unwrap();
    let cfg = dir.path().join("idgate.toml");
    std::fs::write(
        &cfg,
        "[identity]\nsigning_key = \"file:p384.pem\"\n\
         [[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_metadata = \"file:md.xml\"\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check-config", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("identity.signing_key:"), "{err}");
    assert!(
        err.contains("tenants[0].saml: cannot parse IdP metadata"),
        "{err}"
    );
    let (code, _, _) = run_cli(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "serve refuses the same config");
}

/// `openssl req` for an RSA key and a self-signed certificate valid `days` days.
fn sp_pair(dir: &std::path::Path, days: &str) -> (String, String) {
    let key = dir.join("sp.key").display().to_string();
    let cert = dir.join("sp.crt").display().to_string();
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", days,
        ])
        .args(["-keyout", &key, "-out", &cert, "-subj", "/CN=sp"])
        .output()
        .expect("openssl");
    assert!(out.status.success());
    (key, cert)
}

#[test]
fn check_config_warns_before_the_sp_certificate_expires_and_refuses_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = sp_pair(dir.path(), "10");
    let config = |key: &str, cert: &str| {
        let path = dir.path().join("idgate.toml");
        std::fs::write(
            &path,
            format!(
                "[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_entity_id = \"https://idp\"\n\
                 idp_sso_url = \"https://idp.example.com/sso\"\n\
                 idp_certificate = \"file:{}\"\nsp_key = \"file:{key}\"\nsp_certificate = \"file:{cert}\"\n",
                manifest_path("config/examples/example-idp.crt")
            ),
        )
        .unwrap();
        run_cli(
            &["check-config", "--config", &path.display().to_string()],
            &[],
        )
    };
    let (code, out, err) = config(&key, &cert);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: tenants[0].saml.sp_certificate: the certificate expires on")
            && err.contains("within 30 days"),
        "{err}"
    );
    // The IdP's certificate is not the SP key's.
    let (code, _, err) = config(&key, &manifest_path("config/examples/example-idp.crt"));
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "tenants[0].saml.sp_certificate: the certificate is not for sp_key's public key"
        ),
        "{err}"
    );
}

#[test]
fn check_config_checks_only_the_form_of_an_idp_metadata_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("url.toml");
    // Nothing listens on port 9 of loopback: check-config must not try to fetch.
    std::fs::write(
        &path,
        "[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_metadata_url = \"http://127.0.0.1:9/metadata\"\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(
        &path,
        "[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_metadata_url = \"http://idp.example.com/metadata\"\n\
         idp_metadata_refresh = \"1s\"\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{err}");
    for expected in [
        "tenants[0].saml.idp_metadata_url: must be https",
        "tenants[0].saml.idp_metadata_refresh: must be at least 5s",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn check_config_warns_when_browsers_could_not_reach_the_acs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idgate.toml");
    let check = |server: &str| {
        std::fs::write(
            &path,
            format!("[server]\n{server}\n{}", support::tenant_toml("acme")),
        )
        .unwrap();
        run_cli(&["check-config", "--config", path.to_str().unwrap()], &[])
    };
    // The shipped defaults: listening on every interface, public_url unset.
    let (code, _, err) = check("");
    assert_eq!(code, 0, "a warning, not an error: {err}");
    assert!(
        err.contains("warning: server.public_url: is unset (default http://localhost:8080) while listen is 0.0.0.0:8080"),
        "{err}"
    );
    let (code, _, err) = check("listen = \"0.0.0.0:8080\"\npublic_url = \"http://localhost:8080\"");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: server.public_url: http://localhost:8080 names this machine"),
        "{err}"
    );
    // A host name in listen, and a public URL people reach: nothing to warn about.
    let (code, _, err) =
        check("listen = \"localhost:8080\"\npublic_url = \"https://app.example.com\"");
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[tokio::test]
async fn serve_logs_where_each_tenant_is_and_listens_on_a_host_name() {
    let up = support::TestUpstream::start().await;
    let (_, token_hash) = {
        let (code, out, err) = run_cli(&["token"], &[]);
        assert_eq!(code, 0, "{err}");
        let mut lines = out.lines().map(str::to_owned);
        (lines.next().unwrap(), lines.next().unwrap())
    };
    let config = format!(
        "[server]\nlisten = \"localhost:0\"\nadmin_listen = \"localhost:0\"\n\
         upstream = \"http://{}\"\npublic_url = \"https://app.example.com\"\n{}[tenants.scim]\ntoken = \"{token_hash}\"\n{}",
        up.addr,
        support::tenant_toml("acme"),
        support::tenant_toml("beta"),
    );
    let idgate = support::Idgate::start(&config);
    assert!(idgate.public.ip().is_loopback(), "{}", idgate.public);
    // Logged right after "idgate listening", in config order.
    assert!(
        idgate.wait_for_log("_idgate/saml/beta/acs"),
        "{}",
        idgate.logs()
    );
    let endpoints: Vec<serde_json::Value> = idgate
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "tenant endpoints")
        .collect();
    assert_eq!(endpoints.len(), 2, "{}", idgate.logs());
    let acme = endpoints.iter().find(|v| v["tenant"] == "acme").unwrap();
    assert_eq!(
        acme["sp_metadata"],
        "https://app.example.com/_idgate/saml/acme/metadata"
    );
    assert_eq!(acme["acs"], "https://app.example.com/_idgate/saml/acme/acs");
    assert_eq!(acme["scim"], "https://app.example.com/_idgate/scim/acme/v2");
    let beta = endpoints.iter().find(|v| v["tenant"] == "beta").unwrap();
    assert_eq!(beta["scim"], "off");
}
