//! The demo tour in a real browser: headless Chromium driven through chromedriver
//! (Debian packages `chromium` and `chromium-driver`, which `make test` installs), against
//! a real `idgate demo` process. Every step is a screenshot under `target/screenshots/`
//! for a person to look at, and every page must fit 1280 px without a horizontal scrollbar.
//! Without Chromium or chromedriver the test fails with the reason; it never skips.

mod support;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;

/// The width every page must fit without scrolling sideways.
const DESKTOP: (u32, u32) = (1280, 900);
/// A phone (an iPhone 12-15's CSS viewport).
const PHONE: (u32, u32) = (390, 844);

/// A private chromedriver on a free 127.0.0.1 port, stopped (by PID) on drop.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let port = support::free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromedriver ({e}): the browser tests need the Debian packages \
                     chromium and chromium-driver (`make test` installs them)"
                )
            });
        let mut driver = ChromeDriver { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited at start ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on 127.0.0.1:{port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    async fn browser(&self) -> Client {
        let mut options = serde_json::json!({
            "args": [
                "--headless=new",
                // The tests run as root in a container, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--hide-scrollbars",
                format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
            ]
        });
        if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = "/usr/bin/chromium".into();
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|e| {
                panic!("chromedriver could not start Chromium (Debian package chromium): {e}")
            })
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The browser and the numbered screenshots of the walk.
struct Tour {
    browser: Client,
    dir: PathBuf,
    shots: Vec<String>,
}

impl Tour {
    /// Screenshots the whole current page as `NN-name.png` and fails if it scrolls
    /// sideways, naming the elements that stick out.
    async fn shot(&mut self, name: &str) {
        let file = format!("{:02}-{name}.png", self.shots.len() + 1);
        let url = self.browser.current_url().await.expect("url");
        let measured = self
            .browser
            .execute(
                "const d = document.documentElement;
                 const wide = [...document.querySelectorAll('body *')]
                   .filter(e => e.getBoundingClientRect().right > d.clientWidth + 0.5 ||
                                (e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1))
                   .slice(0, 8)
                   .map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
                        (e.className ? '.' + e.className : '') +
                        ' right=' + Math.round(e.getBoundingClientRect().right));
                 return [d.scrollWidth, d.clientWidth, d.scrollHeight,
                         window.outerHeight - window.innerHeight, wide];",
                vec![],
            )
            .await
            .expect("measure the page");
        let (scroll, client, height, chrome) = (
            measured[0].as_i64().unwrap(),
            measured[1].as_i64().unwrap(),
            measured[2].as_u64().unwrap(),
            measured[3].as_u64().unwrap(),
        );
        let png = self.full_height(height + chrome, None).await;
        std::fs::write(self.dir.join(&file), png).expect("write screenshot");
        self.shots.push(file.clone());
        assert!(
            scroll <= client,
            "{file}: {url} scrolls sideways ({scroll} px of content in {client} px): {}",
            measured[4]
        );
    }

    /// A screenshot of the page, or of the element `css`, taken with the window as tall
    /// as the page (`height` px), since WebDriver pictures only what the viewport shows.
    async fn full_height(&self, height: u64, css: Option<&str>) -> Vec<u8> {
        let (width, normal_height) = self.browser.get_window_size().await.expect("size");
        self.browser
            .set_window_size(width as u32, height.clamp(normal_height, 6000) as u32)
            .await
            .expect("resize");
        let png = match css {
            Some(css) => self.wait_for(css).await.screenshot().await,
            None => self.browser.screenshot().await,
        }
        .expect("screenshot");
        self.browser
            .set_window_size(width as u32, normal_height as u32)
            .await
            .expect("resize");
        png
    }

    /// Screenshots one element of the page as `NN-name.png`, for a step that is about
    /// one part of a page already pictured whole.
    async fn shot_of(&mut self, css: &str, name: &str) {
        let file = format!("{:02}-{name}.png", self.shots.len() + 1);
        let height = self
            .browser
            .execute(
                "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight;",
                vec![],
            )
            .await
            .expect("measure the page")
            .as_u64()
            .unwrap();
        let png = self.full_height(height, Some(css)).await;
        std::fs::write(self.dir.join(&file), png).expect("write screenshot");
        self.shots.push(file);
    }

    async fn text(&self, css: &str) -> String {
        match self.browser.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.expect("element text"),
            Err(e) => panic!("no {css} ({e}) on:\n{}", self.page().await),
        }
    }

    /// The page's visible text, for assertions and failure messages.
    async fn page(&self) -> String {
        match self.browser.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(e) => format!("(no body: {e})"),
        }
    }

    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => panic!(
                "{css} did not appear ({e}); at {:?}:\n{}",
                self.browser.current_url().await.map(|u| u.to_string()),
                self.page().await
            ),
        }
    }

    async fn click(&self, css: &str) {
        self.wait_for(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Picks `who` on the dev IdP's user picker and waits for the echo page.
    async fn sign_in_as(&self, who: &str) -> Duration {
        let started = Instant::now();
        self.click(&format!("#as-{who}")).await;
        self.wait_for("#who-user").await;
        started.elapsed()
    }

    /// The browser's cookies for this site, as a `Cookie` header.
    async fn cookie_header(&self) -> String {
        self.browser
            .get_all_cookies()
            .await
            .expect("cookies")
            .iter()
            .map(|c| format!("{}={}", c.name(), c.value()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    // Old screenshots would pass for this run's.
    for entry in std::fs::read_dir(&dir)
        .expect("read target/screenshots")
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "png") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    dir
}

/// Runs a command exactly as the page shows it, as a person pasting it would.
fn run_pasted(command: &str) -> serde_json::Value {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .expect("run sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{command}\nexited {}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{command}\nanswered non-JSON ({e}): {stdout}"))
}

/// Reloads until the page holds `needle` or `within` has passed; the time it took.
async fn reload_until(tour: &Tour, needle: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    loop {
        tour.browser.refresh().await.expect("reload");
        if tour.page().await.contains(needle) {
            return Some(started.elapsed());
        }
        if started.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_demo_tour_in_chromium() {
    let driver = ChromeDriver::start();
    let demo = support::demo::Demo::start();
    let mut tour = Tour {
        browser: driver.browser().await,
        dir: screenshot_dir(),
        shots: Vec::new(),
    };
    // Whatever happens, end the WebDriver session so chromedriver stops its Chromium.
    let walked = std::panic::AssertUnwindSafe(walk(&mut tour, &demo))
        .catch_unwind()
        .await;
    let _ = tour.browser.clone().close().await;
    println!("screenshots in {}: {:?}", tour.dir.display(), tour.shots);
    if let Err(panic) = walked {
        std::panic::resume_unwind(panic);
    }
}

async fn walk(tour: &mut Tour, demo: &support::demo::Demo) {
    let base = &demo.base;
    tour.browser
        .set_window_size(DESKTOP.0, DESKTOP.1)
        .await
        .expect("window size");

    // 1. The app needs a login: the browser lands on the dev IdP's user picker.
    tour.browser
        .goto(&format!("{base}/"))
        .await
        .expect("open the demo");
    tour.wait_for("#as-ada").await;
    let picker = tour.page().await;
    for who in [
        "Ada Lovelace",
        "Charles Babbage",
        "Grace Hopper",
        "Someone else",
    ] {
        assert!(picker.contains(who), "{picker}");
    }
    tour.shot("dev-idp-picker").await;

    // 2. Signed in, the echo page says who this is, shows the verified JWT's claims and
    //    explains which headers idgate added.
    let took = tour.sign_in_as("ada").await;
    println!("login as ada: {took:?}");
    assert_eq!(tour.text("#who-user").await, "ada");
    assert_eq!(tour.text("#who-tenant").await, "demo");
    assert_eq!(tour.text("#who-group").await, "analytical-engines");
    assert_eq!(tour.text("#who-role").await, "Admin");
    let status = tour.text("#jwt-status").await;
    assert!(status.starts_with("verified (EdDSA"), "{status}");
    let claims: serde_json::Value =
        serde_json::from_str(&tour.text("#jwt-claims").await).expect("claims are pretty JSON");
    assert_eq!(claims["sub"], "ada");
    assert_eq!(claims["tenant"], "demo");
    assert_eq!(claims["group_id"], "analytical-engines");
    assert_eq!(claims["iss"], "idgate");
    let legend = tour.text("#legend").await;
    assert!(
        legend.contains("Highlighted rows were set by idgate"),
        "{legend}"
    );
    // The highlighted rows are exactly the headers idgate set.
    let highlighted: Vec<String> = {
        let mut names = Vec::new();
        for row in tour
            .browser
            .find_all(Locator::Css("#request tr.idgate th"))
            .await
            .expect("rows")
        {
            names.push(row.text().await.expect("row"));
        }
        names
    };
    for name in [
        "x-idgate-user-id",
        "x-idgate-tenant",
        "x-idgate-assertion",
        "x-forwarded-for",
        "x-request-id",
    ] {
        assert!(highlighted.iter().any(|h| h == name), "{highlighted:?}");
    }
    for plain in tour
        .browser
        .find_all(Locator::Css("#request tr:not(.idgate) th"))
        .await
        .expect("rows")
    {
        let name = plain.text().await.expect("row");
        assert!(
            !name.starts_with("x-idgate-"),
            "{name} is idgate's but not highlighted"
        );
    }
    tour.shot("echo-page-ada").await;

    // 3. The same page on a phone: nothing wider than the screen.
    tour.browser
        .set_window_size(PHONE.0, PHONE.1)
        .await
        .expect("phone size");
    tour.browser.refresh().await.expect("reload");
    tour.wait_for("#who-user").await;
    tour.shot("echo-page-phone").await;
    tour.browser
        .set_window_size(DESKTOP.0, DESKTOP.1)
        .await
        .expect("window size");
    tour.browser.refresh().await.expect("reload");
    tour.wait_for("#who-user").await;

    // 4. "Log out" ends the session: the signed-out page, and the old cookie is worth
    //    nothing any more.
    let ada_cookies = tour.cookie_header().await;
    tour.click("#logout").await;
    tour.wait_for("a[href*='/login']").await;
    let url = tour.browser.current_url().await.expect("url");
    assert_eq!(url.path(), "/_idgate/logged-out");
    let page = tour.page().await.to_lowercase();
    assert!(page.contains("signed out"), "{page}");
    tour.shot("logged-out").await;
    let r = support::get(
        &format!("{base}/_idgate/session"),
        &[("cookie", &ada_cookies)],
    )
    .await;
    assert_eq!(
        r.status,
        401,
        "the session outlived its logout: {}",
        r.text()
    );

    // 5. "Sign in again" leads back through the picker to the echo page.
    tour.click("a[href*='/login']").await;
    tour.wait_for("#as-ada").await;
    tour.sign_in_as("ada").await;
    assert_eq!(tour.text("#who-user").await, "ada");
    tour.shot("signed-in-again").await;

    // 5b. /_idgate/logout typed in the address bar asks first (no bare 403), and the
    //     session lives until the button is pressed.
    let typed_cookies = tour.cookie_header().await;
    tour.browser
        .goto(&format!("{base}/_idgate/logout"))
        .await
        .expect("typed logout");
    tour.wait_for("form[action='/_idgate/logout'] button").await;
    let page = tour.page().await;
    assert!(page.contains("Log out?"), "{page}");
    tour.shot("logout-confirmation").await;
    let r = support::get(
        &format!("{base}/_idgate/session"),
        &[("cookie", &typed_cookies)],
    )
    .await;
    assert_eq!(r.status, 200, "asking must not log out: {}", r.text());
    tour.click("form[action='/_idgate/logout'] button").await;
    tour.wait_for("a[href*='/login']").await;
    let url = tour.browser.current_url().await.expect("url");
    assert_eq!(url.path(), "/_idgate/logged-out");
    let r = support::get(
        &format!("{base}/_idgate/session"),
        &[("cookie", &typed_cookies)],
    )
    .await;
    assert_eq!(r.status, 401, "the confirmed logout ended the session");
    tour.click("a[href*='/login']").await;
    tour.wait_for("#as-ada").await;
    tour.sign_in_as("ada").await;
    assert_eq!(tour.text("#who-user").await, "ada");

    // 6. "Sign in as someone else" logs out, then offers the picker.
    let ada_cookies = tour.cookie_header().await;
    tour.click("#switch-user").await;
    tour.wait_for("#as-grace").await;
    let r = support::get(
        &format!("{base}/_idgate/session"),
        &[("cookie", &ada_cookies)],
    )
    .await;
    assert_eq!(
        r.status,
        401,
        "switching user left the old session alive: {}",
        r.text()
    );
    tour.shot("switch-user-picker").await;
    tour.sign_in_as("grace").await;
    assert_eq!(tour.text("#who-user").await, "grace");
    assert_eq!(tour.text("#who-group").await, "navy");
    tour.shot("echo-page-grace").await;

    // 7. The deactivation curl, copied from the page and run as pasted: the reloaded page
    //    is the deactivated page within a second.
    let deactivate = tour.text("#curl-deactivate").await;
    let reactivate = tour.text("#curl-reactivate").await;
    assert!(deactivate.contains(&demo.scim_token), "{deactivate}");
    assert!(
        deactivate.contains(&format!("{}/Users/grace", demo.scim_base)),
        "{deactivate}"
    );
    tour.shot_of("#scim", "scim-curls").await;
    let user = run_pasted(&deactivate);
    assert_eq!(user["id"], "grace", "{user}");
    assert_eq!(user["active"], false, "{user}");
    let took = reload_until(tour, "deactivated", Duration::from_secs(1))
        .await
        .unwrap_or_else(|| panic!("no deactivated page within a second after the curl"));
    println!("deactivated page after {took:?}");
    tour.shot("deactivated").await;

    // 8. The reactivation curl brings grace back.
    let user = run_pasted(&reactivate);
    assert_eq!(user["active"], true, "{user}");
    tour.browser.refresh().await.expect("reload");
    // The revoked session counts as ended now that grace is active again (SPEC §10):
    // the reload goes to the login, which is the dev IdP's picker, not the 403.
    tour.wait_for("#as-grace").await;
    tour.shot("reactivated-reload").await;
    tour.sign_in_as("grace").await;
    assert_eq!(tour.text("#who-user").await, "grace");
    tour.shot("reactivated-signed-in").await;

    // 9. A public path reaches the app without identity, even for a signed-in browser,
    //    and the page says so.
    tour.browser
        .goto(&format!("{base}/public/hello"))
        .await
        .expect("public path");
    let page = tour.page().await;
    assert!(
        page.contains("No one is signed in on this request"),
        "{page}"
    );
    assert!(!page.contains("x-idgate-user-id"), "{page}");
    tour.shot("public-path").await;
}
