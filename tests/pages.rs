//! The pages idgate shows people (SPEC §10): every refusal and error a browser meets says
//! what happened in plain words, offers the next step as a same-origin link or button,
//! keeps the reference id, loads nothing from anywhere, and escapes what it shows. A
//! `GET /_idgate/logout` typed in the address bar asks before logging out.
//!
//! Every scenario runs a real `idgate serve` process on a private `redis-server`; the test
//! provisions users and makes sessions through the library on the same Redis, as a login
//! would, and logs in through the ACS with responses signed by `xmlsec1`.

mod support;

#[path = "support/saml.rs"]
mod saml_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use idgate::config::Config;
use idgate::directory::Directory;
use idgate::identity::Signer;
use idgate::session::Sessions;
use idgate::store::Store;
use support::*;

const IDP: &str = "https://idp.example.com/metadata";
const ACS: &str = "http://127.0.0.1/_idgate/saml/acme/acs";
const SP: &str = "http://127.0.0.1/_idgate/saml/acme/metadata";
const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

/// One deployment: an idgate process, its Redis and upstream, and the library side of
/// the same config for provisioning and sessions.
struct Site {
    idgate: Idgate,
    idp: saml_support::TestIdp,
    dir: Directory,
    sessions: Arc<Sessions>,
    redis: RedisServer,
    _up: TestUpstream,
    _keys: tempfile::TempDir,
}

/// `server` adds lines to `[server]`, `rest` goes before the tenant, `saml` into its
/// `[tenants.saml]`.
async fn site(server: &str, rest: &str, saml: &str) -> Site {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = signing_key_file(keys.path(), "EdDSA");
    let idp = saml_support::TestIdp::new("pages-idp");
    let text = config(
        up.addr,
        server,
        &format!(
            "[store]\nurl = \"{}\"\n{rest}\n[identity]\nsigning_key = \"file:{}\"\n\
             [[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_entity_id = \"{IDP}\"\n\
             idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"file:{}\"\n\
             allow_idp_initiated = true\n{saml}\n",
            redis.url(),
            key.display(),
            idp.cert.display()
        ),
    );
    let cfg = Config::from_toml(&text, std::path::Path::new("/")).expect("valid config");
    let store = Store::open(&cfg.store).expect("store");
    let signer = Arc::new(Signer::new(&cfg.identity, false).expect("signer"));
    let idgate = Idgate::start(&text);
    idgate.wait_ready().await;
    Site {
        idgate,
        idp,
        dir: Directory::new(store.clone()),
        sessions: Arc::new(Sessions::new(&cfg, store, signer)),
        redis,
        _up: up,
        _keys: keys,
    }
}

impl Site {
    fn url(&self, path: &str) -> String {
        self.idgate.url(path)
    }

    /// A session for `user` of `group`, made as a login makes it.
    async fn login(&self, user: &str, group: &str) -> String {
        provision(&self.dir, "acme", user, group).await;
        let new = self
            .sessions
            .create_session("acme", user, group)
            .await
            .expect("session");
        cookie_for(&self.sessions, &new)
    }

    /// Posts a signed IdP-initiated response for `spec` to the ACS, as a browser would.
    async fn post_acs(&self, xml: &str) -> Reply {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("SAMLResponse", &saml_support::b64(xml))
            .finish();
        send(
            "POST",
            &self.url("/_idgate/saml/acme/acs"),
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                HTML,
            ],
            body,
        )
        .await
    }

    async fn session_status(&self, cookie: &str) -> u16 {
        get(&self.url("/_idgate/session"), &[("cookie", cookie)])
            .await
            .status
            .as_u16()
    }
}

/// The confirmation page's form, as (method, action).
fn form_of(page: &str) -> Option<(String, String)> {
    let start = page.find("<form")?;
    let tag = &page[start..start + page[start..].find('>')?];
    let attr = |name: &str| {
        let marker = format!("{name}=\"");
        let s = tag.find(&marker)? + marker.len();
        Some(tag[s..s + tag[s..].find('"')?].to_owned())
    };
    Some((attr("method")?, attr("action")?))
}

// ---------------------------------------------------------------------------------------
// Logout from the address bar.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_or_cross_site_logout_link_asks_first_and_keeps_the_session() {
    let s = site("", "", "").await;
    let cookie = s.login("u-1", "g-1").await;
    for (what, extra) in [
        ("typed, no Sec-Fetch-Site", None),
        ("typed, Sec-Fetch-Site: none", Some(("sec-fetch-site", "none"))),
        ("a cross-site link", Some(("sec-fetch-site", "cross-site"))),
        ("a same-site link", Some(("sec-fetch-site", "same-site"))),
        (
            "a foreign Referer",
            Some(("referer", "http://evil.example/page")),
        ),
    ] {
        let mut headers = vec![("cookie", cookie.as_str()), HTML];
        headers.extend(extra);
        let r = get(&s.url("/_idgate/logout"), &headers).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let page = r.text();
        assert_eq!(
            form_of(&page),
            Some(("post".to_owned(), "/_idgate/logout".to_owned())),
            "{what}: {page}"
        );
        assert!(page.contains("Log out</button>"), "{what}: {page}");
        assert!(
            r.headers.get("set-cookie").is_none(),
            "{what}: the cookie is kept"
        );
        assert_eq!(
            s.session_status(&cookie).await,
            200,
            "{what}: the session still works"
        );
    }
}
