//! `idgate demo`: one command shows the echo page through the proxy.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn demo_serves_the_echo_page_in_a_browser() {
    let port = support::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args([
            "--log-format",
            "text",
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("IDGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn idgate demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("demo prints the URL to open");
        if let Some(rest) = line.trim().strip_prefix("Open ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    assert_eq!(url, format!("http://127.0.0.1:{port}/"));
    let page = support::get(
        &url,
        &[
            ("accept", "text/html,*/*;q=0.8"),
            ("x-idgate-user-id", "spoof"),
        ],
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("Request as the app received it"), "{html}");
    assert!(html.contains("x-forwarded-for"), "{html}");
    assert!(
        !html.contains("spoof"),
        "a spoofed identity header reached the echo app"
    );
}
