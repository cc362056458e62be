//! The verification examples in docs/examples, run against a real idgate: each language's
//! program must accept the JWT idgate forwarded and refuse tampered or foreign tokens.
//! `make test` installs the interpreters (python3 with PyJWT, node, ruby).

mod support;

use std::process::Command;

use idgate::config::Config;
use support::*;

const EXAMPLES: [(&str, &str); 3] = [
    ("python3", "docs/examples/verify.py"),
    ("node", "docs/examples/verify.js"),
    ("ruby", "docs/examples/verify.rb"),
];

fn run(interpreter: &str, script: &str, token: &str, jwks: &str, audience: &str) -> (bool, String) {
    let out = Command::new(interpreter)
        .arg(format!("{}/{script}", env!("CARGO_MANIFEST_DIR")))
        .arg(token)
        .env("IDGATE_JWKS_URL", jwks)
        .env("IDGATE_AUDIENCE", audience)
        .output()
        .unwrap_or_else(|e| panic!("{interpreter} is not installed (run `make test`): {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn tamper(token: &str) -> String {
    // Change the payload (the user id) and keep the signature.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1])
            .unwrap(),
    )
    .unwrap();
    claims["sub"] = "admin".into();
    let forged = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        serde_json::to_vec(&claims).unwrap(),
    );
    format!("{}.{forged}.{}", parts[0], parts[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_verifies_every_algorithm_and_refuses_forgeries() {
    let keys = tempfile::tempdir().unwrap();
    for alg in ["EdDSA", "ES256", "RS256"] {
        let up = TestUpstream::start().await;
        let key = signing_key_file(keys.path(), alg);
        let text = config(
            up.addr,
            "",
            &format!(
                "[identity]\nsigning_key = \"file:{}\"\n{}",
                key.display(),
                tenant_toml("acme")
            ),
        );
        let app =
            idgate::App::new(Config::from_toml(&text, std::path::Path::new("/")).unwrap()).unwrap();
        provision(app.directory(), "acme", "u-42", "g-42").await;
        let session = app
            .sessions()
            .create_session("acme", "u-42", "g-42")
            .await
            .unwrap();
        let cookie = cookie_for(app.sessions(), &session);
        let running = app.start().await.unwrap();
        let echo = get(
            &format!("http://{}/page", running.public_addr()),
            &[("cookie", &cookie)],
        )
        .await
        .json();
        let token = received(&echo, "x-idgate-assertion")
            .pop()
            .expect("JWT forwarded");
        let jwks = format!("http://{}/.well-known/jwks.json", running.admin_addr());

        tokio::task::block_in_place(|| {
            for (interpreter, script) in EXAMPLES {
                let (ok, out) = run(interpreter, script, &token, &jwks, "legacy-app");
                assert!(ok, "{interpreter} {alg}: rejected a valid token: {out}");
                let claims: serde_json::Value = serde_json::from_str(out.trim())
                    .unwrap_or_else(|e| panic!("{interpreter}: not JSON ({e}): {out}"));
                assert_eq!(claims["sub"], "u-42", "{interpreter} {alg}");
                assert_eq!(claims["group_id"], "g-42");

                let (ok, out) = run(interpreter, script, &tamper(&token), &jwks, "legacy-app");
                assert!(!ok, "{interpreter} {alg}: accepted a tampered token: {out}");
                let (ok, out) = run(interpreter, script, &token, &jwks, "another-app");
                assert!(
                    !ok,
                    "{interpreter} {alg}: accepted a token for another audience: {out}"
                );
            }
        });
        running.shutdown().await;
    }
}
