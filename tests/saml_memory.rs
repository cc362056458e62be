//! What a SAML login leaves behind in the C libraries' heap: nothing.
//!
//! Verifying a signature goes through samael, xmlsec and libxml2, whose allocations
//! are C `malloc`s that no Rust leak check sees. Here Rust allocates through mimalloc
//! (as the idgate binary does), so glibc's own heap statistics (`mallinfo2`) count
//! only what the C libraries hold. This test is alone in its binary so that no other
//! test allocates meanwhile.
//!
//! It was written for a leak of about 2.3 KB per login found by the 10-minute soak:
//! samael's default reduction moved a signed Assertion to the document root through
//! libxml's `Document::set_root_element`, which drops the detached Response element
//! that libxml2 hands back for the caller to free.

mod support;

#[path = "support/saml.rs"]
mod saml_support;

use idgate::config::Config;
use saml_support::*;
use support::*;

#[global_allocator]
static RUST_HEAP: idgate::alloc::Mimalloc = idgate::alloc::Mimalloc;

const IDP: &str = "https://idp.example.com/metadata";
const ACS: &str = "http://127.0.0.1/_idgate/saml/acme/acs";
const SP: &str = "http://127.0.0.1/_idgate/saml/acme/metadata";

/// Bytes the C heap (glibc malloc: libxml2, xmlsec, OpenSSL) holds now, in all arenas.
fn c_heap() -> i64 {
    // SAFETY: mallinfo2 only reads glibc's allocator statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as i64
}

/// Logins per response shape after the warm-up; at the old 2.3 KB each the growth
/// would be about 180 KB, against a bound of 64 bytes a login.
const LOGINS: usize = 80;

/// glibc keeps freed chunks in per-thread caches that `mallinfo2` still counts as in
/// use, and tokio's blocking threads come and go; with the caches off the count is
/// exact. The tunable is read at process start, so the test runs itself again.
const TUNABLES: &str = "glibc.malloc.tcache_count=0";

#[test]
fn saml_logins_leave_nothing_in_the_c_heap() {
    if std::env::var("GLIBC_TUNABLES").as_deref() == Ok(TUNABLES) {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(logins());
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "saml_logins_leave_nothing_in_the_c_heap",
            "--nocapture",
        ])
        .env("GLIBC_TUNABLES", TUNABLES)
        .output()
        .expect("the test binary runs itself");
    let log = String::from_utf8_lossy(&out.stderr);
    eprintln!("{log}");
    assert!(out.status.success(), "{log}");
    assert_eq!(
        log.matches("per login)").count(),
        3,
        "every response shape was measured"
    );
}

async fn logins() {
    let idp = TestIdp::new("test-idp");
    let up = TestUpstream::start().await;
    let text = config(
        up.addr,
        "",
        &acme_tenant(IDP, &idp.cert, "allow_idp_initiated = true"),
    );
    let app = idgate::App::new(Config::from_toml(&text, std::path::Path::new("/")).unwrap())
        .expect("app")
        .start()
        .await
        .unwrap();
    let acs = format!("http://{}/_idgate/saml/acme/acs", app.public_addr());

    type Shape = fn(&ResponseSpec, &TestIdp) -> String;
    let shapes: [(&str, Shape); 3] = [
        ("signed Assertion", signed_assertion_response),
        ("signed Response", signed_response),
        (
            "signed Response and Assertion",
            signed_response_and_assertion,
        ),
    ];
    for (shape, sign) in shapes {
        // Signed ahead, so that xmlsec1's time is not between the measurements.
        let responses: Vec<String> = (0..LOGINS + 10)
            .map(|i| {
                let spec = ResponseSpec::new(IDP, ACS, SP, None)
                    .attr("uid", &format!("idp-user-{i}"))
                    .attr("email", &format!("user{i}@example.com"));
                sign(&spec, &idp)
            })
            .collect();
        let mut before = 0;
        for (i, xml) in responses.iter().enumerate() {
            if i == 10 {
                // The first logins fill what libxml2 and xmlsec keep for good
                // (dictionaries, the key manager, xmlsec's transform registry).
                before = c_heap();
            }
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("SAMLResponse", &b64(xml));
            let r = send(
                "POST",
                &acs,
                &[("content-type", "application/x-www-form-urlencoded")],
                form.finish(),
            )
            .await;
            assert_eq!(r.status, 303, "{shape} login {i}: {}", r.text());
        }
        let grown = c_heap() - before;
        let per_login = grown / LOGINS as i64;
        eprintln!(
            "{shape}: C heap {before} -> {} bytes ({per_login} per login)",
            before + grown
        );
        assert!(
            per_login < 64,
            "{shape}: the C heap grew by {grown} bytes over {LOGINS} logins \
             ({per_login} per login)"
        );
    }
}
