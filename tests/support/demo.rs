//! `idgate demo` as a person runs it: the real binary on a free port, and what it prints
//! at start (the URL to open, the SCIM base URL and the token made for this run).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `idgate demo`, stopped (by PID) on drop.
pub struct Demo {
    child: Child,
    /// The URL it says to open, without the trailing `/`.
    pub base: String,
    /// The printed SCIM base URL.
    pub scim_base: String,
    /// The printed SCIM token.
    pub scim_token: String,
    /// Everything it printed up to the end of the start-up text.
    pub printed: String,
}

impl Demo {
    /// Starts `idgate demo --listen 127.0.0.1:{free port}` and reads its start-up text.
    /// Panics with what it printed if that text does not come within 30 s.
    pub fn start() -> Demo {
        let port = super::free_port();
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
        let mut demo = Demo {
            child,
            base: String::new(),
            scim_base: String::new(),
            scim_token: String::new(),
            printed: String::new(),
        };
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
                panic!(
                    "idgate demo did not finish its start-up text:\n{}",
                    demo.printed
                );
            };
            demo.printed.push_str(&line);
            demo.printed.push('\n');
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "Open") {
                demo.base = words[i + 1].trim_end_matches('/').to_owned();
            }
            if let Some(url) = line.trim().strip_prefix("SCIM base URL:") {
                demo.scim_base = url.trim().to_owned();
            }
            if let Some(rest) = line.trim().strip_prefix("SCIM token:") {
                demo.scim_token = rest.split_whitespace().next().unwrap_or_default().into();
            }
            if line.contains("Stop: Ctrl-C") {
                break;
            }
        }
        assert_eq!(
            demo.base,
            format!("http://127.0.0.1:{port}"),
            "{}",
            demo.printed
        );
        demo
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
