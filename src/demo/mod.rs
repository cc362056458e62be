//! `idgate demo`: the product on its embedded defaults, with everything it needs built in
//! (an in-memory store and an echo app as the upstream), so one command shows it working.

pub mod echo;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, ConfigErrors};
use crate::{App, StartError};

/// The demo's config, shipped as `config/demo.toml` and embedded here so the binary
/// alone can run the demo.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The embedded config did not validate (a build defect; a test guards it).
    #[error("embedded demo config is invalid:\n{0}")]
    Config(#[from] ConfigErrors),
    /// The echo app could not listen.
    #[error("cannot start the echo app: {0}")]
    Echo(std::io::Error),
    /// The proxy could not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// The demo config with the proxy on `listen` (default from `config/demo.toml`) and the
/// upstream pointing at `upstream`.
pub fn config(listen: Option<SocketAddr>, upstream: SocketAddr) -> Result<Config, ConfigErrors> {
    let mut config = Config::from_toml(DEMO_CONFIG, Path::new("."))?;
    if let Some(listen) = listen {
        config.server.listen = listen;
        if let Ok(url) = url::Url::parse(&format!("http://{listen}")) {
            config.server.public_url = url;
        }
    }
    config.server.upstream = format!("http://{upstream}")
        .parse()
        .expect("a socket address forms a valid URI");
    Ok(config)
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(listen: Option<SocketAddr>) -> Result<(), DemoError> {
    let echo = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(DemoError::Echo)?;
    let echo_addr = echo.local_addr().map_err(DemoError::Echo)?;
    let (stop_echo, stop_rx) = watch::channel(false);
    let echo_task = tokio::spawn(crate::server::serve(
        echo,
        Arc::new(echo::Echo),
        stop_rx,
        std::time::Duration::from_secs(1),
    ));
    let config = config(listen, echo_addr)?;
    let running = App::new(config)?.start().await?;
    println!();
    println!("  idgate demo is running.");
    println!(
        "  Open http://{}/ in a browser to see the request as the app receives it.",
        running.public_addr()
    );
    println!(
        "  Admin: http://{}/metrics   Stop: Ctrl-C",
        running.admin_addr()
    );
    println!();
    running.run_until_signal().await;
    let _ = stop_echo.send(true);
    let _ = echo_task.await;
    Ok(())
}
