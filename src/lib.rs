//! idgate: an identity sidecar. A reverse proxy in front of an app that cannot be
//! changed, doing SAML SSO, provisioning and identity headers on its behalf.
//!
//! [`App`] is the whole product built from a [`config::Config`]; the binary in
//! `main.rs` only parses the command line and calls into it.

pub mod access;
pub mod admin;
pub mod alloc;
pub mod audit;
pub mod config;
pub mod demo;
pub mod directory;
// The fuzz targets' bodies (issue 18), shared with tests/fuzz_corpus.rs; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod identity;
pub mod jobs;
pub mod limits;
pub mod maestrano;
pub mod metrics;
pub mod page;
pub mod proxy;
pub mod reload;
pub mod response;
pub mod saml;
pub mod scim;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod store;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::config::Config;
use crate::gateway::{Gateway, GatewayWorker};
use crate::identity::{Signer, SignerError};
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::session::Sessions;
use crate::snapshot::Snapshots;
use crate::store::{Store, StoreError};

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store could not be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The identity signing keys could not be loaded.
    #[error(transparent)]
    Identity(#[from] SignerError),
    /// A tenant's SAML settings could not be turned into a working SP.
    #[error("tenants.{tenant}.saml: {reason}")]
    Saml {
        /// Tenant id.
        tenant: String,
        /// What failed.
        reason: String,
    },
}

/// Loads a config and checks everything that can be checked before serving: besides
/// [`Config::load`]'s validation, the identity keys parse and every tenant's SAML
/// settings make a working SP (for example, IdP metadata that is not valid XML). Both
/// `check-config` and `serve` use this, so a config `check-config` accepts also starts.
pub fn check_config(path: &std::path::Path) -> Result<Config, config::ConfigErrors> {
    checked(Config::load(path)?)
}

/// [`check_config`] for config text, `file:` references resolving against `base_dir`.
pub fn check_config_text(
    text: &str,
    base_dir: &std::path::Path,
) -> Result<Config, config::ConfigErrors> {
    checked(Config::from_toml(text, base_dir)?)
}

fn checked(mut config: Config) -> Result<Config, config::ConfigErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if config.identity.signing_key.is_some()
        && let Err(e) = identity::SignerKeys::new(&config.identity, false, None)
    {
        let (path, message) = match e {
            SignerError::Key(m) => ("identity.signing_key".to_owned(), m.to_string()),
            SignerError::Previous(i, m) => (format!("identity.previous_keys[{i}]"), m.to_string()),
        };
        errors.push(config::ConfigError { path, message });
    }
    for (i, t) in config.tenants.iter().enumerate() {
        // Metadata from a URL is fetched by `serve`, not here: a check must not depend
        // on the IdP being up, and the URL's form is checked by `Config::load`.
        if matches!(t.saml.idp, config::IdpSource::Url(_)) {
            continue;
        }
        match saml::SamlTenant::new(t, config.acs_url(t)) {
            Ok(sp) if sp.idp_offers_slo() && t.saml.sp_key.is_none() => {
                warnings.push(config::ConfigError {
                    path: format!("tenants[{i}].saml.sp_key"),
                    message: "the IdP offers a SingleLogoutService, but without sp_key no SAML Single Logout is attempted: logout ends the session here only, and the IdP's LogoutRequests are refused".into(),
                });
            }
            Ok(_) => {}
            Err(message) => errors.push(config::ConfigError {
                path: format!("tenants[{i}].saml"),
                message,
            }),
        }
    }
    config.warnings.extend(warnings);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(config::ConfigErrors(errors))
    }
}

/// The product, built from a config and ready to bind.
pub struct App {
    config: Arc<Config>,
    worker: Arc<maestrano::worker::Worker>,
    gateway: Arc<Gateway>,
    admin: Arc<Admin>,
    sessions: Arc<Sessions>,
    directory: directory::Directory,
    draining: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// The SPs of tenants whose IdP metadata comes from a URL.
    metadata_slots: Arc<saml::metadata::Slots>,
    /// The file reloads read (`serve --config`); none for an app built from text.
    config_path: Option<std::path::PathBuf>,
    /// How every snapshot of the config is built (startup's, and each reload's).
    builder: Arc<snapshot::Builder>,
    /// The running snapshot of the config, shared by every component.
    snapshots: Arc<Snapshots>,
}

impl App {
    /// Builds every component. Nothing listens yet.
    pub fn new(config: Config) -> Result<App, StartError> {
        App::build(config, None)
    }

    /// The demo's app: the same, plus the development IdP under `/_idgate/dev-idp/`.
    /// Nothing but `idgate demo` calls this, so `serve` never exposes a dev IdP.
    pub fn with_dev_idp(config: Config, idp: demo::idp::DevIdp) -> Result<App, StartError> {
        App::build(config, Some(Arc::new(idp)))
    }

    fn build(config: Config, dev_idp: Option<Arc<demo::idp::DevIdp>>) -> Result<App, StartError> {
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(&config.store)?.with_metrics(metrics.clone());
        let signer = Arc::new(Signer::new(&config.identity));
        let directory = directory::Directory::new(store.clone());
        let failures = limits::Failures::new();
        let metadata_slots = saml::metadata::Slots::new(&config);
        let builder = Arc::new(snapshot::Builder {
            directory: directory.clone(),
            failures: failures.clone(),
            slots: metadata_slots.clone(),
            ephemeral_key_ok: store.is_memory(),
        });
        let snapshots = Snapshots::new(builder.build(&config, None).map_err(|e| match e {
            snapshot::BuildError::Saml { tenant, reason } => StartError::Saml { tenant, reason },
            snapshot::BuildError::Identity(e) => StartError::Identity(e),
        })?);
        tracing::info!(kid = %snapshots.load().identity.kid(), "identity signing key loaded");
        let sessions = Arc::new(Sessions::new(
            &config,
            store.clone(),
            signer.clone(),
            snapshots.clone(),
        ));
        let recheck = maestrano::recheck::Recheck::new(&config, store.clone(), snapshots.clone());
        if let Some(r) = &recheck {
            sessions.set_recheck(r.clone());
        }
        let draining = Arc::new(AtomicBool::new(false));
        let gateway = Arc::new(Gateway::new(
            &config,
            metrics.clone(),
            sessions.clone(),
            directory.clone(),
            snapshots.clone(),
            failures,
            dev_idp,
        ));
        metrics.watch_tunnels(gateway.tunnels().clone());
        let worker = Arc::new(maestrano::worker::Worker::new(
            &config,
            store.clone(),
            signer.clone(),
            snapshots.clone(),
        ));
        let api = config.server.admin_token_sha256.map(|token| {
            admin::api::Api::new(
                token,
                snapshots.clone(),
                sessions.clone(),
                directory.clone(),
            )
        });
        let admin = Arc::new(Admin::new(
            store.clone(),
            metrics.clone(),
            draining.clone(),
            snapshots.clone(),
            api,
        ));
        Ok(App {
            config: Arc::new(config),
            worker,
            gateway,
            admin,
            sessions,
            directory,
            draining,
            metrics,
            metadata_slots,
            config_path: None,
            builder,
            snapshots,
        })
    }

    /// Reload from `path` on SIGHUP (and on change, with `[server].watch_config`).
    pub fn reload_from(mut self, path: std::path::PathBuf) -> App {
        self.config_path = Some(path);
        self
    }

    /// The session layer: what login flows call `create_session` on.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The directory over this app's store.
    pub fn directory(&self) -> &directory::Directory {
        &self.directory
    }

    /// Keeps the tenant set in step with Maestrano's developer platform: fetched now,
    /// then every `refresh`. A failed refresh keeps the last good set.
    fn refresh_tenants(&self, reloader: Arc<reload::Reloader>, mut stop: watch::Receiver<bool>) {
        let Some(devpl) = self.config.maestrano_devpl.clone() else {
            return;
        };
        tokio::spawn(async move {
            let http = maestrano::worker::client();
            let mut applied: Option<Vec<serde_json::Value>> = None;
            loop {
                match maestrano::devpl::fetch(&devpl, &http).await {
                    Ok(markets) if applied.as_ref() == Some(&markets) => {}
                    Ok(markets) => match reloader.apply_markets(markets.clone()).await {
                        Ok(ids) => {
                            applied = Some(markets);
                            tracing::info!(tenants = ?ids, "tenants updated from Maestrano's developer platform");
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the developer platform's marketplaces do not make a valid config; keeping the last good set");
                        }
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "cannot refresh tenants from Maestrano's developer platform; keeping the last good set");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(devpl.refresh) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }

    /// Binds both listeners and starts serving.
    pub async fn start(self) -> Result<Running, StartError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let public = bind(self.config.server.listen).await?;
        let admin = bind(self.config.server.admin_listen).await?;
        let public_addr = public.local_addr().map_err(|source| StartError::Bind {
            addr: self.config.server.listen,
            source,
        })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            addr: self.config.server.admin_listen,
            source,
        })?;
        self.sessions.start();
        let (jobs_tx, jobs_rx) = watch::channel(false);
        self.worker.clone().start(jobs_rx.clone());
        saml::metadata::Refresher::spawn_all(
            &self.config,
            &self.metadata_slots,
            self.directory.store(),
            &self.metrics,
            &jobs_rx,
        );
        let mut reloader = reload::Reloader::new(
            self.config.clone(),
            self.builder.clone(),
            self.snapshots.clone(),
            self.sessions.clone(),
            self.metrics.clone(),
        );
        if let Some(path) = &self.config_path {
            reloader = reloader.with_path(path.clone());
        }
        let reloader = Arc::new(reloader);
        reloader.spawn(jobs_rx.clone());
        if self.config.maestrano_devpl.is_some() {
            self.refresh_tenants(reloader.clone(), jobs_rx);
        }
        let grace = self.config.server.shutdown_grace;
        let (public_tx, public_rx) = watch::channel(false);
        let (admin_tx, admin_rx) = watch::channel(false);
        let workers = self.config.server.workers;
        let gateway = self.gateway;
        let tunnels = gateway.tunnels().clone();
        let server_config = self.config.server.clone();
        let strip = Arc::new(crate::proxy::headers::StripList::new(
            &self.config.access.strip_headers,
        ));
        let connections = server::ConnectionLimit::new(self.config.server.max_connections);
        self.metrics.watch_connections(connections.clone());
        raise_fd_limit(self.config.server.max_connections);
        let public_task = tokio::spawn(server::serve_workers(
            public,
            workers,
            move |_| {
                Arc::new(GatewayWorker::new(
                    gateway.clone(),
                    Upstream::new(&server_config, strip.clone()),
                ))
            },
            public_rx,
            grace,
            tunnels,
            connections,
        ));
        // The admin listener outlives the drain, so probes keep answering (503) while
        // the public side finishes its requests.
        let admin_task = tokio::spawn(server::serve(
            admin,
            self.admin,
            admin_rx,
            Duration::from_secs(1),
        ));
        tracing::info!(
            public = %public_addr,
            admin = %admin_addr,
            upstream = %self.config.server.upstream,
            workers,
            "idgate listening"
        );
        log_endpoints(&self.config);
        Ok(Running {
            jobs_tx,
            public_addr,
            admin_addr,
            draining: self.draining,
            public_tx,
            admin_tx,
            public_task,
            admin_task,
            reloader,
        })
    }
}

/// A started app.
pub struct Running {
    jobs_tx: watch::Sender<bool>,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    draining: Arc<AtomicBool>,
    public_tx: watch::Sender<bool>,
    admin_tx: watch::Sender<bool>,
    public_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    reloader: Arc<reload::Reloader>,
}

impl Running {
    /// Reloads the config file now, as `SIGHUP` does (for an app embedded in another
    /// process, where a signal would reach its host too).
    pub async fn reload(&self) -> reload::Outcome {
        self.reloader.reload("call").await
    }

    /// Where the public listener is bound (useful with port 0).
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// Where the admin listener is bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Stops accepting, drains in-flight requests within the grace period, then stops
    /// the admin listener.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::Relaxed);
        let _ = self.jobs_tx.send(true);
        let _ = self.public_tx.send(true);
        if let Err(e) = self.public_task.await {
            tracing::error!(error = %e, "public listener task failed");
        }
        let _ = self.admin_tx.send(true);
        if let Err(e) = self.admin_task.await {
            tracing::error!(error = %e, "admin listener task failed");
        }
        tracing::info!("idgate stopped");
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        shutdown_signal().await;
        tracing::info!("shutdown signal received; draining");
        self.shutdown().await;
    }
}

/// Raises the soft limit on open files to the hard one (as nginx's
/// `worker_rlimit_nofile` would; the soft limit is often 1024 while the hard one is much
/// higher), and warns when `max_connections` cannot fit under it: each client connection
/// may hold an upstream connection too, and Redis, the config and the logs need a few.
fn raise_fd_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let needed = max_connections as u64 * 2 + 64;
    if limit.rlim_cur < needed {
        tracing::warn!(
            max_connections,
            open_files_limit = limit.rlim_cur,
            needed,
            "the open-files limit is below what max_connections may need: connections beyond it fail to be accepted; raise the limit or lower [server].max_connections"
        );
    }
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM; only SIGINT stops idgate");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Tells the operator, per tenant, the URLs to paste into the IdP and the SCIM client:
/// the first thing anyone connecting an IdP needs, and the place where a wrong
/// `public_url` shows before a browser ends on a connection error.
fn log_endpoints(config: &Config) {
    let root = config.server.public_url.as_str().trim_end_matches('/');
    for tenant in &config.tenants {
        let scim = tenant
            .scim
            .as_ref()
            .map(|_| format!("{root}/_idgate/scim/{}/v2", tenant.id));
        tracing::info!(
            tenant = %tenant.id,
            sp_metadata = %format!("{root}/_idgate/saml/{}/metadata", tenant.id),
            acs = %config.acs_url(tenant),
            scim = scim.as_deref().unwrap_or("off"),
            "tenant endpoints"
        );
    }
}
