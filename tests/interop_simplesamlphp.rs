//! Interoperability with a real IdP: SimpleSAMLphp 1.19 (Debian's `simplesamlphp`),
//! served by `php -S` on 127.0.0.1 from a throw-away config directory, drives idgate
//! through SP-initiated logins with signed, encrypted assertions, through an IdP
//! signing-key rollover that idgate only learns about from refreshed metadata, and
//! through Single Logout in both directions.
//!
//! Logins and rollover (one test):
//! 1. login with a signed AuthnRequest (SimpleSAMLphp validates it) and an encrypted,
//!    signed assertion, which reaches the upstream as ada;
//! 2. the IdP announces its next key (`new_certificate`) and idgate refreshes;
//! 3. the IdP switches keys: the next login works at once;
//! 4. after a refresh without the old key, a response signed with it is refused;
//! 5. a plaintext assertion is refused (`require_encrypted_assertions`).
//!
//! Single Logout (another test), with SimpleSAMLphp's SingleLogoutService towards idgate
//! on HTTP-Redirect, then on HTTP-POST:
//! 1. SP-initiated: `POST /_idgate/logout` → SimpleSAMLphp's SingleLogoutService with a
//!    signed LogoutRequest (`validate.logout`) → its signed LogoutResponse (`sign.logout`)
//!    → `/_idgate/logged-out`; the old cookie is dead and the IdP asks for the password;
//! 2. IdP-initiated: `SingleLogoutService.php?ReturnTo=…` → a signed LogoutRequest to
//!    idgate through the browser (a redirect, or an auto-submitting form) → idgate's signed
//!    LogoutResponse, which SimpleSAMLphp validates → ReturnTo; cookie dead, password asked;
//! 3. with `sign.logout` off, SimpleSAMLphp's unsigned LogoutRequest is refused.
//!
//! Setup (see also tests/fixtures/README.md): `make test` installs `simplesamlphp php-cli
//! php-xml php-mbstring`. The test panics, never skips, when they are missing. Per run it
//! writes into a tempdir:
//! - `config.php` (`baseurlpath` = `http://127.0.0.1:PORT/simplesaml/`, logs, sessions
//!   and caches in the tempdir, `exampleauth` enabled, no secure-only cookies on http),
//! - `authsources.php`: an `exampleauth:UserPass` source with user `ada`,
//! - `metadata/saml20-idp-hosted.php`: the IdP, with keys made by `openssl`,
//! - `metadata/saml20-sp-remote.php`: idgate's tenant `acme` (ACS URL, SingleLogoutService,
//!   its SP certificate as `certData`, `assertion.encryption`, `sign.assertion`,
//!   `validate.authnrequest`, `sign.logout`, `validate.logout`),
//! - `docroot/simplesaml`, a symlink to `/usr/share/simplesamlphp/www`, so that
//!   `php -S 127.0.0.1:PORT -t docroot` serves SimpleSAMLphp under `/simplesaml/` as a
//!   web server would; `SIMPLESAMLPHP_CONFIG_DIR` points at the tempdir.
//!
//! The "browser" is the hyper client of `tests/support` with a cookie jar, redirects and
//! HTML forms (auto-submitting SAML forms included) handled here. The SAMLResponse
//! SimpleSAMLphp posts at login is checked with `xmlsec1` (decrypted with the SP key, its
//! Assertion's signature verified with the IdP certificate), independently of idgate's
//! code; SimpleSAMLphp's own log says that it validated idgate's logout messages.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use support::*;

const SSP_WWW: &str = "/usr/share/simplesamlphp/www";
const USER: &str = "ada";
const PASSWORD: &str = "lovelace";

// ---------------------------------------------------------------------------------------
// Keys.

/// An RSA key pair made with `openssl`.
struct KeyPair {
    key: PathBuf,
    cert: PathBuf,
}

impl KeyPair {
    fn new(dir: &Path, name: &str) -> KeyPair {
        let key = dir.join(format!("{name}.key"));
        let cert = dir.join(format!("{name}.crt"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-sha256",
            "-days",
            "1",
            "-nodes",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
            "-subj",
            &format!("/CN=idgate interop {name}"),
        ]);
        KeyPair { key, cert }
    }

    /// The certificate's base64 body, as metadata carries it.
    fn cert_body(&self) -> String {
        std::fs::read_to_string(&self.cert)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// SimpleSAMLphp.

/// What SimpleSAMLphp is told about idgate's tenant.
#[derive(Clone)]
struct SpSide {
    entity_id: String,
    acs: String,
    cert_body: String,
    /// idgate's SLO endpoint (`/_idgate/saml/acme/slo`).
    slo: String,
    /// The SingleLogoutService binding SimpleSAMLphp uses towards idgate: HTTP-POST when
    /// set, HTTP-Redirect otherwise.
    slo_post: bool,
    /// `sign.logout`: whether SimpleSAMLphp signs the logout messages it sends idgate.
    sign_logout: bool,
}

/// A running SimpleSAMLphp IdP (`php -S`), killed by its PID on drop.
struct SimpleSamlPhp {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for SimpleSamlPhp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails the test (never skips it) when php or SimpleSAMLphp is missing.
fn require_simplesamlphp() {
    let hint = "run `make test`, which installs simplesamlphp php-cli php-xml php-mbstring";
    let out = Command::new("php")
        .args([
            "-r",
            "exit(extension_loaded('dom') && extension_loaded('mbstring') && \
             extension_loaded('openssl') ? 0 : 3);",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run php ({e}): {hint}"));
    assert!(
        out.status.success(),
        "php lacks dom, mbstring or openssl ({}): {hint}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sso = Path::new(SSP_WWW).join("saml2/idp/SSOService.php");
    assert!(sso.is_file(), "no SimpleSAMLphp at {SSP_WWW}: {hint}");
}

impl SimpleSamlPhp {
    /// Writes the config for `sp`, signing with `signing`, and starts `php -S`.
    fn start(sp: &SpSide, signing: &KeyPair) -> SimpleSamlPhp {
        require_simplesamlphp();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for sub in ["metadata", "docroot", "sessions", "tmp", "log", "data"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(SSP_WWW, d.join("docroot/simplesaml")).unwrap();
        std::fs::write(
            d.join("authsources.php"),
            format!(
                "<?php\n$config = [\n  'example-userpass' => [\n    'exampleauth:UserPass',\n    \
                 '{USER}:{PASSWORD}' => [\n      'uid' => ['ada'],\n      \
                 'email' => ['ada@example.com'],\n      'name' => ['Ada'],\n      \
                 'surname' => ['Lovelace'],\n      'group_uid' => ['analytical-engines'],\n    \
                 ],\n  ],\n];\n"
            ),
        )
        .unwrap();
        write_sp_remote(d, sp, true);
        let mut last = String::new();
        let mut dir = Some(dir);
        for _ in 0..4 {
            let port = free_port();
            let d = dir.take().unwrap();
            write_config(d.path(), port);
            write_idp_hosted(d.path(), signing, signing, None);
            let log = std::fs::File::create(d.path().join("log/php-server.log")).unwrap();
            // No opcode cache: it would serve a rewritten metadata file from its cache
            // for up to `opcache.revalidate_freq` seconds.
            let child = Command::new("php")
                .args([
                    "-d",
                    "opcache.enable=0",
                    "-S",
                    &format!("127.0.0.1:{port}"),
                    "-t",
                ])
                .arg(d.path().join("docroot"))
                .env("SIMPLESAMLPHP_CONFIG_DIR", d.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start php -S: {e}"));
            let mut ssp = SimpleSamlPhp {
                child,
                port,
                dir: d,
            };
            match ssp.wait_up() {
                Ok(()) => return ssp,
                Err(e) => {
                    // Most likely another process took the port first: try another.
                    last = e;
                    let _ = ssp.child.kill();
                    let _ = ssp.child.wait();
                    dir = Some(std::mem::replace(
                        &mut ssp.dir,
                        tempfile::tempdir().unwrap(),
                    ));
                }
            }
        }
        panic!("SimpleSAMLphp did not start: {last}");
    }

    /// Rewrites what SimpleSAMLphp knows of idgate, encrypting assertions or not.
    fn set_sp(&self, sp: &SpSide, encrypt: bool) {
        write_sp_remote(self.dir.path(), sp, encrypt);
    }

    /// Rewrites the hosted IdP (see [`write_idp_hosted`]).
    fn set_keys(&self, signing: &KeyPair, published: &KeyPair, next: Option<&KeyPair>) {
        write_idp_hosted(self.dir.path(), signing, published, next);
    }

    fn wait_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("php -S exited ({status}):\n{}", self.logs()));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Still running a moment later: the listener is ours.
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(format!("php -S exited ({status}):\n{}", self.logs()));
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("php -S did not listen:\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/simplesaml{path}", self.port)
    }

    fn metadata_url(&self) -> String {
        self.url("/saml2/idp/metadata.php")
    }

    /// The php server's output and SimpleSAMLphp's own log.
    fn logs(&self) -> String {
        let read = |p: &str| std::fs::read_to_string(self.dir.path().join(p)).unwrap_or_default();
        format!(
            "--- php -S:\n{}\n--- simplesamlphp.log:\n{}",
            read("log/php-server.log"),
            read("log/simplesamlphp.log")
        )
    }
}

/// `metadata/saml20-sp-remote.php`: idgate's tenant as SimpleSAMLphp sees it. Its
/// SingleLogoutService is idgate's SLO endpoint; `validate.logout` makes SimpleSAMLphp check
/// idgate's LogoutRequests and LogoutResponses against `certData`, and `sign.logout` makes
/// it sign its own (idgate honours no unsigned logout message).
fn write_sp_remote(dir: &Path, sp: &SpSide, encrypt: bool) {
    let path = dir.join("metadata/saml20-sp-remote.php");
    let tmp = path.with_extension("tmp");
    let binding = if sp.slo_post {
        "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
    } else {
        "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
    };
    std::fs::write(
        &tmp,
        format!(
            "<?php\n$metadata['{entity}'] = [\n  'AssertionConsumerService' => '{acs}',\n  \
             'SingleLogoutService' => [['Binding' => '{binding}', 'Location' => '{slo}']],\n  \
             'NameIDFormat' => 'urn:oasis:names:tc:SAML:2.0:nameid-format:persistent',\n  \
             'simplesaml.nameidattribute' => 'uid',\n  \
             'certData' => '{cert}',\n  'sign.assertion' => true,\n  \
             'assertion.encryption' => {encrypt},\n  'validate.authnrequest' => true,\n  \
             'sign.logout' => {sign_logout},\n  'validate.logout' => true,\n  \
             'signature.algorithm' => 'http://www.w3.org/2001/04/xmldsig-more#rsa-sha256',\n];\n",
            entity = sp.entity_id,
            acs = sp.acs,
            slo = sp.slo,
            cert = sp.cert_body,
            sign_logout = sp.sign_logout,
        ),
    )
    .unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// SimpleSAMLphp's `config.php` for `dir`, serving on `port`.
fn write_config(dir: &Path, port: u16) {
    let d = dir.display();
    std::fs::write(
        dir.join("config.php"),
            format!(
                "<?php\n$config = [\n  'baseurlpath' => 'http://127.0.0.1:{port}/simplesaml/',\n  \
                 'certdir' => '{d}/',\n  'loggingdir' => '{d}/log/',\n  'datadir' => '{d}/data/',\n  \
                 'tempdir' => '{d}/tmp',\n  'metadatadir' => '{d}/metadata/',\n  \
                 'secretsalt' => 'idgate-interop-test-salt',\n  \
                 'auth.adminpassword' => 'idgate-interop-unused',\n  \
                 'technicalcontact_name' => 'idgate tests',\n  \
                 'technicalcontact_email' => 'na@example.org',\n  'timezone' => 'UTC',\n  \
                 'admin.checkforupdates' => false,\n  'showerrors' => true,\n  \
                 'errorreporting' => false,\n  \
                 'logging.level' => SimpleSAML\\Logger::DEBUG,\n  'logging.handler' => 'file',\n  \
                 'logging.logfile' => 'simplesamlphp.log',\n  'enable.saml20-idp' => true,\n  \
                 'module.enable' => ['exampleauth' => true, 'core' => true, 'saml' => true],\n  \
                 'store.type' => 'phpsession',\n  'session.phpsession.savepath' => '{d}/sessions',\n  \
                 'session.cookie.secure' => false,\n  'session.cookie.samesite' => null,\n  \
                 'language.cookie.secure' => false,\n  'production' => true,\n];\n"
            ),
        )
        .unwrap();
}

/// Rewrites the hosted IdP: it signs with `signing`'s private key, publishes
/// `published`'s certificate as its signing certificate, and `next` as
/// `new_certificate` (the announced next key of a rollover).
fn write_idp_hosted(dir: &Path, signing: &KeyPair, published: &KeyPair, next: Option<&KeyPair>) {
    let next = next
        .map(|k| format!("  'new_certificate' => '{}',\n", k.cert.display()))
        .unwrap_or_default();
    let path = dir.join("metadata/saml20-idp-hosted.php");
    let tmp = path.with_extension("tmp");
    std::fs::write(
            &tmp,
            format!(
                "<?php\n$metadata['__DYNAMIC:1__'] = [\n  'host' => '__DEFAULT__',\n  \
                 'privatekey' => '{}',\n  'certificate' => '{}',\n{next}  \
                 'auth' => 'example-userpass',\n  \
                 'signature.algorithm' => 'http://www.w3.org/2001/04/xmldsig-more#rsa-sha256',\n  \
                 'attributes.NameFormat' => 'urn:oasis:names:tc:SAML:2.0:attrname-format:basic',\n];\n",
                signing.key.display(),
                published.cert.display()
            ),
        )
        .unwrap();
    std::fs::rename(tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------
// A browser: cookies per host:port, redirects and HTML forms.

#[derive(Default)]
struct Browser {
    jar: HashMap<String, BTreeMap<String, String>>,
}

fn origin_key(url: &url::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    )
}

impl Browser {
    async fn request(
        &mut self,
        method: &str,
        url: &str,
        form: Option<&[(String, String)]>,
    ) -> Reply {
        let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("bad URL {url}: {e}"));
        let key = origin_key(&parsed);
        let cookie = self
            .jar
            .get(&key)
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        let mut headers = vec![
            ("accept", "text/html,application/xhtml+xml"),
            ("sec-fetch-mode", "navigate"),
        ];
        if !cookie.is_empty() {
            headers.push(("cookie", &cookie));
        }
        let body = match form {
            Some(fields) => {
                headers.push(("content-type", "application/x-www-form-urlencoded"));
                let mut s = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in fields {
                    s.append_pair(k, v);
                }
                s.finish()
            }
            None => String::new(),
        };
        let reply = send(method, url, &headers, body).await;
        let jar = self.jar.entry(key).or_default();
        for set in reply.headers.get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let Some((name, value)) = set.split(';').next().and_then(|nv| nv.split_once('='))
            else {
                continue;
            };
            let lower = set.to_ascii_lowercase();
            let gone = value.is_empty()
                || value == "deleted"
                || lower.contains("max-age=0")
                || lower.contains("expires=thu, 01 jan 1970");
            if gone {
                jar.remove(name.trim());
            } else {
                jar.insert(name.trim().to_owned(), value.to_owned());
            }
        }
        reply
    }

    /// Sends a request and follows redirects (a 30x after a POST becomes a GET, as
    /// browsers do); returns the final URL and answer.
    async fn navigate(
        &mut self,
        method: &str,
        url: &str,
        form: Option<&[(String, String)]>,
        trail: &mut Vec<String>,
    ) -> (String, Reply) {
        let mut url = url.to_owned();
        let mut reply = self.request(method, &url, form).await;
        trail.push(format!("{method} {url} -> {}", reply.status));
        for _ in 0..10 {
            if !reply.status.is_redirection() {
                return (url, reply);
            }
            let location = reply.headers["location"].to_str().unwrap();
            url = url::Url::parse(&url)
                .unwrap()
                .join(location)
                .unwrap()
                .to_string();
            reply = self.request("GET", &url, None).await;
            trail.push(format!("GET {url} -> {}", reply.status));
        }
        panic!("too many redirects: {trail:#?}");
    }
}

impl Browser {
    /// [`Browser::navigate`], then posts every auto-submitting SAML form (one with a
    /// `SAMLRequest` or `SAMLResponse` field: the HTTP-POST binding) as a browser's
    /// script would, following redirects after each. Returns the final URL and answer,
    /// and each posted message as (form action, field, decoded XML).
    async fn follow(
        &mut self,
        method: &str,
        url: &str,
        form: Option<&[(String, String)]>,
        trail: &mut Vec<String>,
    ) -> (String, Reply, Vec<(String, String, String)>) {
        let (mut url, mut reply) = self.navigate(method, url, form, trail).await;
        let mut posted = Vec::new();
        for _ in 0..10 {
            if reply.status != 200 {
                break;
            }
            let Some(next) = first_form(&url, &reply.text()) else {
                break;
            };
            let Some((field, message)) = next
                .fields
                .iter()
                .find(|(k, _)| k == "SAMLRequest" || k == "SAMLResponse")
                .cloned()
            else {
                break;
            };
            let xml = String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(message.trim())
                    .expect("a posted SAML message is base64"),
            )
            .expect("a posted SAML message is UTF-8");
            posted.push((next.action.clone(), field, xml));
            (url, reply) = self
                .navigate("POST", &next.action, Some(&next.fields), trail)
                .await;
        }
        (url, reply, posted)
    }
}

/// One HTML form: its absolute action URL and its named inputs.
struct Form {
    action: String,
    fields: Vec<(String, String)>,
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#039;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#x3D;", "=")
        .replace("&amp;", "&")
}

/// The attributes of the tag that starts at `tag` (`<input …>`).
fn attributes(tag: &str) -> HashMap<String, String> {
    let end = tag.find('>').unwrap_or(tag.len());
    let mut rest = &tag[..end];
    rest = rest.trim_start_matches(|c: char| c != ' ' && c != '\n' && c != '\t');
    let mut out = HashMap::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        if rest.is_empty() {
            return out;
        }
        let name_end = rest
            .find(|c: char| c == '=' || c.is_whitespace() || c == '/')
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        rest = rest[name_end..].trim_start();
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (value, tail) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let close = after[1..].find(q).map(|i| i + 1).unwrap_or(after.len());
                    (&after[1..close], &after[(close + 1).min(after.len())..])
                }
                _ => {
                    let stop = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..stop], &after[stop..])
                }
            };
            out.insert(name, html_unescape(value));
            rest = tail;
        } else {
            out.insert(name, String::new());
        }
    }
}

/// The first `<form>` of a page (with the inputs up to its `</form>`).
fn first_form(page_url: &str, html: &str) -> Option<Form> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<form")?;
    let end = lower[start..]
        .find("</form>")
        .map_or(html.len(), |i| start + i);
    let attrs = attributes(&html[start..]);
    let action = url::Url::parse(page_url)
        .unwrap()
        .join(attrs.get("action").map(String::as_str).unwrap_or(""))
        .unwrap()
        .to_string();
    let mut fields = Vec::new();
    let mut at = start;
    while let Some(i) = lower[at..end].find("<input") {
        let a = attributes(&html[at + i..]);
        if let Some(name) = a.get("name") {
            fields.push((name.clone(), a.get("value").cloned().unwrap_or_default()));
        }
        at += i + 6;
    }
    Some(Form { action, fields })
}

// ---------------------------------------------------------------------------------------
// The login.

/// What a login through SimpleSAMLphp ended with.
struct Login {
    /// The SAMLResponse SimpleSAMLphp posted, decoded.
    response_xml: String,
    /// idgate's answer to that POST.
    acs_reply: Reply,
    browser: Browser,
    trail: Vec<String>,
}

/// A fresh browser opens `path` on idgate and logs in at SimpleSAMLphp as ada; stops at
/// idgate's answer to the posted SAMLResponse.
async fn login(idgate: &Idgate, ssp: &SimpleSamlPhp, path: &str) -> Login {
    login_in(Browser::default(), idgate, ssp, path).await
}

/// [`login`] in browser `b`, which must have no session at SimpleSAMLphp (it is asked for
/// the password).
async fn login_in(mut b: Browser, idgate: &Idgate, ssp: &SimpleSamlPhp, path: &str) -> Login {
    let mut trail = Vec::new();
    let (page_url, page) = b.navigate("GET", &idgate.url(path), None, &mut trail).await;
    let sso_prefix = ssp.url("/saml2/idp/SSOService.php?");
    assert!(
        trail
            .iter()
            .any(|t| t.contains(&sso_prefix) && t.contains("Signature=")),
        "the browser went to SimpleSAMLphp's SSO with a signed AuthnRequest: {trail:#?}"
    );
    let ctx = |trail: &Vec<String>, page: &Reply| {
        format!(
            "trail: {trail:#?}\npage: {}\nSimpleSAMLphp: {}\nidgate: {}",
            page.text(),
            ssp.logs(),
            idgate.logs()
        )
    };
    assert_eq!(page.status, 200, "{}", ctx(&trail, &page));
    let login_form = first_form(&page_url, &page.text())
        .unwrap_or_else(|| panic!("no login form: {}", ctx(&trail, &page)));
    assert!(
        login_form.fields.iter().any(|(k, _)| k == "username"),
        "the UserPass login form: {}",
        ctx(&trail, &page)
    );
    let fields: Vec<(String, String)> = login_form
        .fields
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "username" => (k, USER.to_owned()),
            "password" => (k, PASSWORD.to_owned()),
            _ => (k, v),
        })
        .collect();
    let (post_url, post_page) = b
        .navigate("POST", &login_form.action, Some(&fields), &mut trail)
        .await;
    assert_eq!(post_page.status, 200, "{}", ctx(&trail, &post_page));
    let form = first_form(&post_url, &post_page.text())
        .unwrap_or_else(|| panic!("no SAMLResponse form: {}", ctx(&trail, &post_page)));
    let saml_response = form
        .fields
        .iter()
        .find(|(k, _)| k == "SAMLResponse")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no SAMLResponse: {}", ctx(&trail, &post_page)));
    let response_xml = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(saml_response.trim())
            .expect("SAMLResponse is base64"),
    )
    .expect("SAMLResponse is UTF-8");
    assert_eq!(
        form.action,
        idgate.url("/_idgate/saml/acme/acs"),
        "SimpleSAMLphp posts to idgate's ACS"
    );
    // The browser posts the auto-submitting form to idgate's ACS (no redirect following:
    // the 303 and its cookie are what is checked).
    let acs_reply = b.request("POST", &form.action, Some(&form.fields)).await;
    trail.push(format!("POST {} -> {}", form.action, acs_reply.status));
    Login {
        response_xml,
        acs_reply,
        browser: b,
        trail,
    }
}

/// Runs `xmlsec1` with `args`; its success and output.
fn xmlsec1(args: &[&str]) -> (bool, String) {
    let out = Command::new("xmlsec1")
        .args(args)
        .output()
        .expect("xmlsec1 is installed by `make test`");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Checks, with xmlsec1 alone, that `response_xml` holds an EncryptedAssertion (and no
/// plaintext Assertion) that the SP key decrypts into an Assertion signed by `idp`.
fn assert_encrypted_and_signed_by(response_xml: &str, sp: &KeyPair, idp: &KeyPair) {
    assert!(
        response_xml.contains(":EncryptedAssertion")
            || response_xml.contains("<EncryptedAssertion"),
        "the assertion is encrypted: {response_xml}"
    );
    assert!(
        !response_xml.contains(":Assertion ") && !response_xml.contains("<Assertion "),
        "no plaintext assertion: {response_xml}"
    );
    let dir = tempfile::tempdir().unwrap();
    let enc = dir.path().join("response.xml");
    let dec = dir.path().join("decrypted.xml");
    std::fs::write(&enc, response_xml).unwrap();
    // SimpleSAMLphp signs the Response around the EncryptedAssertion too.
    let (ok, out) = xmlsec1(&[
        "--verify",
        "--pubkey-cert-pem",
        &idp.cert.display().to_string(),
        "--id-attr:ID",
        "urn:oasis:names:tc:SAML:2.0:protocol:Response",
        &enc.display().to_string(),
    ]);
    assert!(
        ok,
        "the Response's signature verifies with {:?}: {out}",
        idp.cert
    );
    let (ok, out) = xmlsec1(&[
        "--decrypt",
        "--privkey-pem",
        &sp.key.display().to_string(),
        "--output",
        &dec.display().to_string(),
        &enc.display().to_string(),
    ]);
    assert!(ok, "xmlsec1 decrypts the assertion with the SP key: {out}");
    let decrypted = std::fs::read_to_string(&dec).unwrap();
    // The Assertion on its own (it declares its namespaces), so that the Response's own
    // signature, if any, does not stand in the way of verifying the Assertion's.
    let start = decrypted
        .find("<saml:Assertion")
        .unwrap_or_else(|| panic!("an Assertion inside: {decrypted}"));
    let end = decrypted
        .find("</saml:Assertion>")
        .expect("the Assertion ends")
        + "</saml:Assertion>".len();
    let assertion = &decrypted[start..end];
    assert!(
        assertion.contains("<ds:Signature"),
        "the assertion is signed: {assertion}"
    );
    let only = dir.path().join("assertion.xml");
    std::fs::write(&only, assertion).unwrap();
    let (ok, out) = xmlsec1(&[
        "--verify",
        "--pubkey-cert-pem",
        &idp.cert.display().to_string(),
        "--id-attr:ID",
        "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
        &only.display().to_string(),
    ]);
    assert!(
        ok,
        "the assertion's signature verifies with {:?}: {out}",
        idp.cert
    );
}

/// `idgate_saml_metadata_refreshes_total{tenant="acme",result="ok"}`.
async fn refreshes_ok(idgate: &Idgate) -> u64 {
    get(&idgate.admin_url("/metrics"), &[])
        .await
        .text()
        .lines()
        .find(|l| {
            l.starts_with("idgate_saml_metadata_refreshes_total{")
                && l.contains("result=\"ok\"")
                && l.contains("tenant=\"acme\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Waits until idgate has fetched the IdP metadata `n` more times since `since`
/// (refreshes come every 5 s here).
async fn refreshed(idgate: &Idgate, since: u64, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = refreshes_ok(idgate).await;
        if now >= since + n {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "idgate did not refresh the IdP metadata ({now} ok refreshes):\n{}",
            idgate.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A successful login: 303 to the page asked for, whose request reaches the upstream
/// with ada's identity.
async fn assert_logged_in(idgate: &Idgate, ssp: &SimpleSamlPhp, l: &mut Login, path: &str) {
    let r = &l.acs_reply;
    assert_eq!(
        r.status,
        303,
        "idgate accepts SimpleSAMLphp's response: {}\ntrail: {:#?}\nidgate:\n{}\nSimpleSAMLphp:\n{}",
        r.text(),
        l.trail,
        idgate.logs(),
        ssp.logs()
    );
    assert_eq!(r.headers["location"], path);
    let mut trail = Vec::new();
    let (_, page) = l
        .browser
        .navigate("GET", &idgate.url(path), None, &mut trail)
        .await;
    assert_eq!(page.status, 200, "{trail:#?} {}", page.text());
    let echo = page.json();
    assert_eq!(echo["uri"], path, "{echo}");
    assert_eq!(received(&echo, "x-idgate-user-id"), ["ada"]);
    assert_eq!(received(&echo, "x-idgate-group-id"), ["analytical-engines"]);
    assert_eq!(received(&echo, "x-idgate-email"), ["ada@example.com"]);
    assert_eq!(received(&echo, "x-idgate-name"), ["Ada Lovelace"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simplesamlphp_logs_in_with_encrypted_signed_assertions_and_rolls_its_key_over() {
    let started = Instant::now();
    let keys = tempfile::tempdir().unwrap();
    let sp = KeyPair::new(keys.path(), "sp");
    let idp_old = KeyPair::new(keys.path(), "idp-old");
    let idp_new = KeyPair::new(keys.path(), "idp-new");

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let side = SpSide {
        entity_id: format!("{base}/_idgate/saml/acme/metadata"),
        acs: format!("{base}/_idgate/saml/acme/acs"),
        cert_body: sp.cert_body(),
        slo: format!("{base}/_idgate/saml/acme/slo"),
        slo_post: false,
        sign_logout: true,
    };
    let ssp = SimpleSamlPhp::start(&side, &idp_old);
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\n\
         upstream = \"http://{}\"\npublic_url = \"{base}\"\n\n\
         [[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_metadata_url = \"{}\"\n\
         idp_metadata_refresh = \"5s\"\nsp_key = \"file:{}\"\nsp_certificate = \"file:{}\"\n\
         require_encrypted_assertions = true\n",
        up.addr,
        ssp.metadata_url(),
        sp.key.display(),
        sp.cert.display()
    ));
    idgate.wait_ready().await;
    let mut count = refreshed(&idgate, 0, 1).await;

    // 1. SP-initiated login: signed AuthnRequest, encrypted and signed assertion.
    let mut first = login(&idgate, &ssp, "/reports?y=1").await;
    assert_encrypted_and_signed_by(&first.response_xml, &sp, &idp_old);
    assert!(
        ssp.logs().contains("Validation with key #0 succeeded."),
        "SimpleSAMLphp checked the AuthnRequest's signature with idgate's certificate:\n{}",
        ssp.logs()
    );
    assert_logged_in(&idgate, &ssp, &mut first, "/reports?y=1").await;
    eprintln!("first login done after {:?}", started.elapsed());

    // 2. The IdP announces its next key in its metadata; idgate picks it up.
    ssp.set_keys(&idp_old, &idp_old, Some(&idp_new));
    let published = get(&ssp.metadata_url(), &[]).await.text();
    assert!(
        published.contains(&idp_old.cert_body()) && published.contains(&idp_new.cert_body()),
        "SimpleSAMLphp publishes both keys: {published}"
    );
    count = refreshed(&idgate, count, 2).await;

    // 3. The IdP switches to the new key: logins work at once, without waiting for a
    //    refresh, since the announced key is already trusted.
    ssp.set_keys(&idp_new, &idp_new, None);
    let mut second = login(&idgate, &ssp, "/after-rollover").await;
    assert_encrypted_and_signed_by(&second.response_xml, &sp, &idp_new);
    assert_logged_in(&idgate, &ssp, &mut second, "/after-rollover").await;
    eprintln!("login after the switch done after {:?}", started.elapsed());

    // 4. Once idgate has read metadata that lists only the new key, a response signed
    //    with the retired key is refused (an IdP node left on the old key).
    refreshed(&idgate, count, 2).await;
    ssp.set_keys(&idp_old, &idp_new, None);
    let third = login(&idgate, &ssp, "/stale-key").await;
    assert_encrypted_and_signed_by(&third.response_xml, &sp, &idp_old);
    assert_eq!(
        third.acs_reply.status,
        403,
        "a response signed by a key the metadata no longer lists: {}\n{}",
        third.acs_reply.text(),
        idgate.logs()
    );
    assert!(third.acs_reply.headers.get("set-cookie").is_none());
    assert!(
        idgate.wait_for_log("\"reason\":\"signature\""),
        "refused for its signature:\n{}",
        idgate.logs()
    );

    // 5. With `require_encrypted_assertions`, the same IdP sending its (correctly signed)
    //    assertion in plaintext is refused.
    ssp.set_keys(&idp_new, &idp_new, None);
    ssp.set_sp(&side, false);
    let plain = login(&idgate, &ssp, "/plaintext").await;
    assert!(
        plain.response_xml.contains("<saml:Assertion")
            && !plain.response_xml.contains("EncryptedAssertion"),
        "SimpleSAMLphp sent a plaintext assertion: {}",
        plain.response_xml
    );
    assert_eq!(
        plain.acs_reply.status,
        403,
        "{}\n{}",
        plain.acs_reply.text(),
        idgate.logs()
    );
    assert!(
        idgate.wait_for_log("\"reason\":\"unencrypted\""),
        "refused as unencrypted:\n{}",
        idgate.logs()
    );
    eprintln!("whole scenario took {:?}", started.elapsed());
}

/// Whether `cookie` still carries an idgate session (a non-browser request: 200, or 401
/// without a session).
async fn signed_in(idgate: &Idgate, cookie: &str) -> bool {
    let r = get(&idgate.url("/whoami"), &[("cookie", cookie)]).await;
    assert!(r.status == 200 || r.status == 401, "{}", r.status);
    r.status == 200
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `idgate_saml_rejections_total{reason=…}`.
async fn rejections(idgate: &Idgate, reason: &str) -> u64 {
    let prefix = format!("idgate_saml_rejections_total{{reason=\"{reason}\"}} ");
    get(&idgate.admin_url("/metrics"), &[])
        .await
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// How often SimpleSAMLphp has logged `needle` so far.
fn ssp_count(ssp: &SimpleSamlPhp, needle: &str) -> usize {
    ssp.logs().matches(needle).count()
}

/// Single Logout both ways with SimpleSAMLphp, once with each binding SimpleSAMLphp can
/// use towards idgate's SLO endpoint (HTTP-Redirect, then HTTP-POST):
/// 1. SP-initiated: `POST /_idgate/logout` sends the browser to SimpleSAMLphp's
///    SingleLogoutService with a LogoutRequest signed by the SP key, which SimpleSAMLphp
///    validates against idgate's certificate (`validate.logout`); SimpleSAMLphp ends its
///    session and answers with a signed LogoutResponse that lands the browser on
///    `/_idgate/logged-out`. The old session cookie no longer works, and a new login at
///    the IdP asks for the password again.
/// 2. IdP-initiated: `SingleLogoutService.php?ReturnTo=…` at SimpleSAMLphp sends idgate a
///    signed LogoutRequest through the browser; idgate ends the session and answers with a
///    signed LogoutResponse that SimpleSAMLphp validates and counts as a successful logout
///    of idgate, then the browser reaches ReturnTo. Again the cookie is dead and the IdP
///    asks for the password.
///
/// Then, with `sign.logout` off, SimpleSAMLphp's unsigned LogoutRequest is refused
/// (`slo_signature`) and the session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simplesamlphp_single_logout_from_idgate_and_from_the_idp() {
    let started = Instant::now();
    let keys = tempfile::tempdir().unwrap();
    let sp = KeyPair::new(keys.path(), "sp");
    let idp = KeyPair::new(keys.path(), "idp");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let side = SpSide {
        entity_id: format!("{base}/_idgate/saml/acme/metadata"),
        acs: format!("{base}/_idgate/saml/acme/acs"),
        cert_body: sp.cert_body(),
        slo: format!("{base}/_idgate/saml/acme/slo"),
        slo_post: false,
        sign_logout: true,
    };
    let ssp = SimpleSamlPhp::start(&side, &idp);
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\n\
         upstream = \"http://{}\"\npublic_url = \"{base}\"\n\n\
         [[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_metadata_url = \"{}\"\n\
         sp_key = \"file:{}\"\nsp_certificate = \"file:{}\"\n",
        up.addr,
        ssp.metadata_url(),
        sp.key.display(),
        sp.cert.display()
    ));
    idgate.wait_ready().await;
    refreshed(&idgate, 0, 1).await;
    let idp_slo = ssp.url("/saml2/idp/SingleLogoutService.php");
    let ctx = |trail: &Vec<String>, page: &Reply| {
        format!(
            "trail: {trail:#?}\npage: {}\nSimpleSAMLphp: {}\nidgate: {}",
            page.text(),
            ssp.logs(),
            idgate.logs()
        )
    };
    let validated = "Validation with key #0 succeeded.";

    for post in [false, true] {
        let binding = if post { "HTTP-POST" } else { "HTTP-Redirect" };
        ssp.set_sp(
            &SpSide {
                slo_post: post,
                ..side.clone()
            },
            true,
        );
        let path = format!("/sp-logout-{}", binding.to_ascii_lowercase());
        let mut first = login(&idgate, &ssp, &path).await;
        assert_logged_in(&idgate, &ssp, &mut first, &path).await;
        let cookie = first.acs_reply.cookie();
        assert!(signed_in(&idgate, &cookie).await);

        // 1. SP-initiated.
        let checks_before = ssp_count(&ssp, validated);
        let mut trail = Vec::new();
        let (url, page, posted) = first
            .browser
            .follow(
                "POST",
                &idgate.url("/_idgate/logout"),
                Some(&[]),
                &mut trail,
            )
            .await;
        let ctx1 = ctx(&trail, &page);
        assert_eq!(url, idgate.url("/_idgate/logged-out"), "{binding}: {ctx1}");
        assert_eq!(page.status, 200, "{binding}: {ctx1}");
        assert!(page.text().contains("Signed out"), "{binding}: {ctx1}");
        assert!(
            trail
                .iter()
                .any(|t| t.starts_with(&format!("GET {idp_slo}?SAMLRequest="))
                    && t.contains("&Signature=")),
            "{binding}: the browser took a signed LogoutRequest to SimpleSAMLphp: {ctx1}"
        );
        assert!(
            ssp.logs().contains(&format!(
                "Received SAML 2.0 LogoutRequest from: '{}'",
                side.entity_id
            )),
            "{binding}: SimpleSAMLphp accepted idgate's LogoutRequest: {ctx1}"
        );
        assert!(
            ssp_count(&ssp, validated) > checks_before,
            "{binding}: SimpleSAMLphp checked its signature with idgate's certificate: {ctx1}"
        );
        if post {
            assert!(
                matches!(posted.as_slice(), [(action, field, xml)]
                    if *action == side.slo && field == "SAMLResponse"
                        && xml.contains("LogoutResponse") && xml.contains("<ds:Signature")),
                "{binding}: SimpleSAMLphp posted a signed LogoutResponse to idgate: {posted:#?} {ctx1}"
            );
        } else {
            assert!(posted.is_empty(), "{binding}: {posted:#?}");
            assert!(
                trail.iter().any(
                    |t| t.starts_with(&format!("GET {}?SAMLResponse=", side.slo))
                        && t.contains("&Signature=")
                        && t.ends_with("-> 303 See Other")
                ),
                "{binding}: SimpleSAMLphp's signed LogoutResponse came back to idgate: {ctx1}"
            );
        }
        assert!(
            !idgate.logs().contains("did not confirm the Single Logout")
                && !idgate.logs().contains("SAML logout rejected"),
            "{binding}: idgate took SimpleSAMLphp's LogoutResponse as a success: {ctx1}"
        );
        assert!(
            !signed_in(&idgate, &cookie).await,
            "{binding}: the session cookie no longer works"
        );
        // The IdP's session is gone too: login_in asserts that it asks for the password.
        let path = format!("/idp-logout-{}", binding.to_ascii_lowercase());
        let mut second = login_in(first.browser, &idgate, &ssp, &path).await;
        assert_logged_in(&idgate, &ssp, &mut second, &path).await;
        let cookie = second.acs_reply.cookie();
        assert!(signed_in(&idgate, &cookie).await);

        // 2. IdP-initiated.
        let checks_before = ssp_count(&ssp, validated);
        let logged_out_of = format!("Logged out of 'saml:{}'", side.entity_id);
        let done_before = ssp_count(&ssp, &logged_out_of);
        let return_to = ssp.url("/logout.php");
        let mut trail = Vec::new();
        let (url, page, posted) = second
            .browser
            .follow(
                "GET",
                &format!("{idp_slo}?ReturnTo={}", enc(&return_to)),
                None,
                &mut trail,
            )
            .await;
        let ctx2 = ctx(&trail, &page);
        assert_eq!(url, return_to, "{binding}: {ctx2}");
        assert_eq!(page.status, 200, "{binding}: {ctx2}");
        if post {
            assert!(
                matches!(posted.as_slice(), [(action, field, xml)]
                    if *action == side.slo && field == "SAMLRequest"
                        && xml.contains("LogoutRequest") && xml.contains("<ds:Signature")),
                "{binding}: SimpleSAMLphp posted a signed LogoutRequest to idgate: {posted:#?} {ctx2}"
            );
            assert!(
                trail
                    .iter()
                    .any(|t| *t == format!("POST {} -> 302 Found", side.slo)),
                "{binding}: {ctx2}"
            );
        } else {
            assert!(posted.is_empty(), "{binding}: {posted:#?}");
            assert!(
                trail
                    .iter()
                    .any(|t| t.starts_with(&format!("GET {}?SAMLRequest=", side.slo))
                        && t.contains("&Signature=")
                        && t.ends_with("-> 302 Found")),
                "{binding}: SimpleSAMLphp sent idgate a signed LogoutRequest: {ctx2}"
            );
        }
        assert!(
            trail
                .iter()
                .any(|t| t.starts_with(&format!("GET {idp_slo}?SAMLResponse="))
                    && t.contains("&Signature=")),
            "{binding}: idgate answered with a signed LogoutResponse: {ctx2}"
        );
        assert!(
            ssp_count(&ssp, validated) > checks_before
                && ssp_count(&ssp, &logged_out_of) == done_before + 1
                && !ssp.logs().contains("Error received from"),
            "{binding}: SimpleSAMLphp validated idgate's LogoutResponse and logged idgate out: {ctx2}"
        );
        assert!(
            idgate.logs().contains("\"actor\":\"idp\""),
            "{binding}: idgate logged the IdP's logout: {ctx2}"
        );
        assert!(
            !signed_in(&idgate, &cookie).await,
            "{binding}: the session cookie no longer works"
        );
        let path = format!("/after-idp-logout-{}", binding.to_ascii_lowercase());
        let mut third = login_in(second.browser, &idgate, &ssp, &path).await;
        assert_logged_in(&idgate, &ssp, &mut third, &path).await;
        eprintln!("{binding} done after {:?}", started.elapsed());
    }

    // 3. SimpleSAMLphp without `sign.logout` sends its LogoutRequest unsigned: refused, and
    //    nothing ends.
    ssp.set_sp(
        &SpSide {
            sign_logout: false,
            ..side.clone()
        },
        true,
    );
    let mut l = login(&idgate, &ssp, "/unsigned").await;
    assert_logged_in(&idgate, &ssp, &mut l, "/unsigned").await;
    let cookie = l.acs_reply.cookie();
    let before = rejections(&idgate, "slo_signature").await;
    let mut trail = Vec::new();
    let (url, page, _) = l
        .browser
        .follow(
            "GET",
            &format!("{idp_slo}?ReturnTo={}", enc(&ssp.url("/logout.php"))),
            None,
            &mut trail,
        )
        .await;
    let ctx3 = ctx(&trail, &page);
    assert!(
        url.starts_with(&format!("{}?SAMLRequest=", side.slo)) && !url.contains("Signature="),
        "SimpleSAMLphp sent an unsigned LogoutRequest: {ctx3}"
    );
    assert_eq!(page.status, 403, "{ctx3}");
    assert_eq!(
        rejections(&idgate, "slo_signature").await,
        before + 1,
        "{ctx3}"
    );
    assert!(
        idgate.wait_for_log("\"reason\":\"slo_signature\""),
        "{ctx3}"
    );
    assert!(
        signed_in(&idgate, &cookie).await,
        "an unsigned LogoutRequest ends no session"
    );
    eprintln!("whole scenario took {:?}", started.elapsed());
}
