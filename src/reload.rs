//! Configuration reload without a restart (SPEC §10): on `SIGHUP`, and when the config
//! file changes with `[server].watch_config` (checked every [`WATCH_EVERY`], as a
//! mounted ConfigMap changes).
//!
//! [`Reloader::apply`] puts a config in place for both of the things that change it
//! after startup, a reload and Maestrano's developer platform: it builds a new
//! [`crate::snapshot::Snapshot`] through the same [`crate::snapshot::Builder`] that
//! startup used and publishes it with one atomic swap. A request keeps the snapshot it
//! started with. (A setting derived from the config is added to the snapshot, not
//! here.)
//!
//! Keys bound at startup (listeners, store, session cookie and lifetimes, identity
//! header names, the developer platform's credentials, the header strip list and the
//! login-start limit) are compared with the running config: a change is
//! logged as needing a restart and ignored, and the rest of the reload goes ahead.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::audit::{self, ReloadResult};
use crate::config::Config;
use crate::maestrano;
use crate::metrics::Metrics;
use crate::session::Sessions;
use crate::snapshot::{self, Snapshots};

/// How often `watch_config` looks at the file.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

/// Config keys (dotted, top-level table then key; a table alone means all of it) that
/// only a restart changes.
pub const RESTART_ONLY: &[&str] = &[
    "server.listen",
    "server.admin_listen",
    "server.upstream",
    "server.public_url",
    "server.connect_timeout",
    "server.upstream_timeout",
    "server.shutdown_grace",
    "server.trusted_proxies",
    "server.workers",
    "server.max_connections",
    "server.admin_token",
    "server.watch_config",
    "store",
    "session",
    "identity.headers",
    "maestrano_devpl",
    "access.strip_headers",
    "access.login_starts_per_minute",
    "telemetry",
];

/// What a reload came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In use; the restart-only keys that changed and were ignored.
    Applied {
        /// Keys that need a restart.
        ignored: Vec<String>,
    },
    /// Refused; the running config stays. Every error, with its key path.
    Refused(Vec<String>),
}

/// The parts of a running app that a config changes, and the config file behind them.
pub struct Reloader {
    path: Option<PathBuf>,
    /// The config file's config as last applied (without the developer platform's
    /// marketplaces, which are merged into it).
    base: arc_swap::ArcSwap<Config>,
    /// The config the process started with: restart-only keys are compared with it and
    /// taken from it, so they stay what is running whatever a reload reads.
    startup: Arc<Config>,
    /// The developer platform's marketplaces as last applied, merged into every reload.
    markets: Mutex<Option<Vec<serde_json::Value>>>,
    /// What startup built its snapshot with; every later snapshot is built the same way.
    builder: Arc<snapshot::Builder>,
    /// Where the running snapshot is published.
    snapshots: Arc<Snapshots>,
    /// Told of every published snapshot (its caches predate it).
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    /// One reload at a time (a signal during a file-triggered reload waits).
    running: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// The reloader of an app built from `config`.
    pub fn new(
        config: Arc<Config>,
        builder: Arc<snapshot::Builder>,
        snapshots: Arc<Snapshots>,
        sessions: Arc<Sessions>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader {
            path: None,
            startup: config.clone(),
            base: arc_swap::ArcSwap::new(config),
            markets: Mutex::new(None),
            builder,
            snapshots,
            sessions,
            metrics,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Reloads read `path` (the file `serve` was started with).
    pub fn with_path(mut self, path: PathBuf) -> Reloader {
        self.path = Some(path);
        self
    }

    /// The config file's config in use.
    pub fn base(&self) -> Arc<Config> {
        self.base.load_full()
    }

    /// Puts `config` in place: its snapshot (tenancy, access rules, per-tenant session
    /// rules, bearer issuers, identity keys, Maestrano tenants) replaces the running
    /// one at once, and every session is judged again under it at its next request. Fails (changing nothing) when
    /// a tenant's SAML settings do not make a working SP or a key does not load.
    pub fn apply(&self, config: &Config) -> Result<Vec<String>, String> {
        let running = self.snapshots.load_full();
        let next = self
            .builder
            .build(config, Some(&running))
            .map_err(|e| e.to_string())?;
        let ids = next.tenancy.tenant_ids();
        if !Arc::ptr_eq(&next.identity, &running.identity) {
            tracing::info!(kid = %next.identity.kid(), "identity signing keys reloaded");
        }
        let old = self.snapshots.publish(next);
        self.sessions.config_changed(&old);
        Ok(ids)
    }

    /// Applies the developer platform's `markets` on top of the config file's config,
    /// one change at a time with reloads (a reload in between would otherwise be undone
    /// by a merge with the file it replaced).
    pub async fn apply_markets(
        &self,
        markets: Vec<serde_json::Value>,
    ) -> Result<Vec<String>, String> {
        let _one = self.running.lock().await;
        let merged = maestrano::devpl::merged(&self.base(), &markets)?;
        let ids = self.apply(&merged)?;
        *self.markets.lock().unwrap_or_else(|p| p.into_inner()) = Some(markets);
        Ok(ids)
    }

    /// Re-reads the config file, validates it, and applies it; logs, counts and audits
    /// the outcome.
    pub async fn reload(&self, trigger: &'static str) -> Outcome {
        let _one = self.running.lock().await;
        let outcome = self.try_reload();
        match &outcome {
            Outcome::Applied { ignored } => {
                for key in ignored {
                    tracing::warn!(
                        key,
                        trigger,
                        "config reload: this key needs a restart; the running value stays"
                    );
                }
                tracing::info!(trigger, "config reloaded");
            }
            Outcome::Refused(errors) => {
                for e in errors {
                    tracing::error!(trigger, error = %e, "config reload refused; the running config stays");
                }
            }
        }
        // The audit event also counts idgate_config_reloads_total.
        audit::record(
            &self.metrics,
            &audit::Origin::system(),
            audit::Event::ConfigReload {
                result: if matches!(outcome, Outcome::Applied { .. }) {
                    ReloadResult::Ok
                } else {
                    ReloadResult::Error
                },
            },
        );
        outcome
    }

    fn try_reload(&self) -> Outcome {
        let Some(path) = &self.path else {
            return Outcome::Refused(vec![
                "no config file to reload (started without one)".into(),
            ]);
        };
        // Validated alone first, so that its errors name the keys as the file has them.
        let file = match crate::check_config(path) {
            Ok(c) => c,
            Err(errors) => {
                return Outcome::Refused(errors.0.iter().map(ToString::to_string).collect());
            }
        };
        let ignored = changed_restart_only(&self.startup.source.0, &file.source.0);
        let new = match with_running_restart_only(&self.startup.source.0, &file.source.0)
            .map_err(|e| vec![e])
            .and_then(|text| {
                crate::check_config_text(&text, &file.source.1)
                    .map_err(|e| e.0.iter().map(ToString::to_string).collect())
            }) {
            Ok(c) => c,
            Err(errors) => return Outcome::Refused(errors),
        };
        for w in &new.warnings {
            tracing::warn!(key = w.path, "{}", w.message);
        }
        let old = self.base();
        // Tenants whose IdP metadata comes from a URL have refresh tasks from startup;
        // a new one would have none.
        for t in &new.tenants {
            if matches!(t.saml.idp, crate::config::IdpSource::Url(_))
                && self.builder.slots.get(&t.id).is_none()
            {
                return Outcome::Refused(vec![format!(
                    "tenants.{}.saml.idp_metadata_url: a tenant whose metadata comes from a URL can only be added by a restart",
                    t.id
                )]);
            }
        }
        let markets = self
            .markets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let effective = match &markets {
            Some(m) => match maestrano::devpl::merged(&new, m) {
                Ok(c) => c,
                Err(e) => return Outcome::Refused(vec![e]),
            },
            None => new.clone(),
        };
        if let Some(lost) = old.default_tenant().map(|t| t.id.clone())
            && effective.default_tenant().map(|t| t.id.as_str()) != Some(lost.as_str())
        {
            tracing::warn!(
                tenant = lost,
                "config reload: this tenant is no longer the default: requests whose Host names no tenant now get no tenant"
            );
        }
        if let Err(e) = self.apply(&effective) {
            return Outcome::Refused(vec![e]);
        }
        self.base.store(Arc::new(new));
        Outcome::Applied { ignored }
    }

    /// Reloads on every SIGHUP, and on every change of the file with `watch_config`,
    /// until `stop`.
    pub fn spawn(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        #[cfg(unix)]
        {
            let this = self.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let mut hup = match tokio::signal::unix::signal(
                    tokio::signal::unix::SignalKind::hangup(),
                ) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot watch SIGHUP: reload by signal is off");
                        return;
                    }
                };
                loop {
                    tokio::select! {
                        got = hup.recv() => {
                            if got.is_none() {
                                return;
                            }
                            this.reload("sighup").await;
                        }
                        _ = stop.changed() => return,
                    }
                }
            });
        }
        if self.base().server.watch_config
            && let Some(path) = self.path.clone()
        {
            let this = self.clone();
            let mut stop = stop;
            tokio::spawn(async move {
                // A ConfigMap update swaps a symlink: compare contents, not times.
                let mut seen = std::fs::read(&path).ok();
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(WATCH_EVERY) => {}
                        _ = stop.changed() => return,
                    }
                    let now = std::fs::read(&path).ok();
                    if now.is_some() && now != seen {
                        seen = now;
                        this.reload("watch_config").await;
                    }
                }
            });
        }
    }
}

/// `new` with every restart-only key ([`RESTART_ONLY`]) set as in `running` (or left
/// out where it is), so that nothing derived from one (the SP entity ids and ACS URLs
/// from `public_url`, say) changes by a reload either.
fn with_running_restart_only(running: &str, new: &str) -> Result<String, String> {
    let running: toml::Table = running.parse().map_err(|e| format!("{e}"))?;
    let mut new: toml::Table = new.parse().map_err(|e| format!("{e}"))?;
    for key in RESTART_ONLY {
        let (table, leaf) = match key.split_once('.') {
            Some((t, l)) => (t, Some(l)),
            None => (*key, None),
        };
        match leaf {
            None => match running.get(table) {
                Some(v) => {
                    new.insert(table.to_owned(), v.clone());
                }
                None => {
                    new.remove(table);
                }
            },
            Some(leaf) => {
                let was = running.get(table).and_then(|t| t.get(leaf)).cloned();
                let entry = new
                    .entry(table.to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let Some(t) = entry.as_table_mut() {
                    match was {
                        Some(v) => {
                            t.insert(leaf.to_owned(), v);
                        }
                        None => {
                            t.remove(leaf);
                        }
                    }
                }
            }
        }
    }
    toml::to_string(&new).map_err(|e| e.to_string())
}

/// The restart-only keys whose values differ between two config texts.
fn changed_restart_only(old: &str, new: &str) -> Vec<String> {
    let parse = |t: &str| t.parse::<toml::Table>().unwrap_or_default();
    let (old, new) = (parse(old), parse(new));
    let get = |doc: &toml::Table, key: &str| -> Option<toml::Value> {
        let mut parts = key.split('.');
        let mut v = doc.get(parts.next()?)?;
        for p in parts {
            v = v.get(p)?;
        }
        Some(v.clone())
    };
    RESTART_ONLY
        .iter()
        .filter(|k| get(&old, k) != get(&new, k))
        .map(|k| (*k).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_take_the_running_values() {
        let running = "[server]\npublic_url = \"https://a\"\n[store]\nurl = \"memory://\"\n";
        let new = "[server]\npublic_url = \"https://b\"\nwatch_config = true\n[access]\npublic_paths = [\"/x\"]\n[session]\nidle_timeout = \"1h\"\n";
        let kept: toml::Table = with_running_restart_only(running, new)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(kept["server"]["public_url"].as_str(), Some("https://a"));
        assert!(kept["server"].get("watch_config").is_none());
        assert_eq!(kept["store"]["url"].as_str(), Some("memory://"));
        assert!(kept.get("session").is_none());
        assert_eq!(kept["access"]["public_paths"][0].as_str(), Some("/x"));
    }

    #[test]
    fn restart_only_keys_are_found_by_value_not_by_spelling() {
        let old = "[server]\nlisten = \"0.0.0.0:8080\"\n[store]\nurl = \"memory://\"\n[access]\npublic_paths = [\"/a\"]\n";
        assert!(changed_restart_only(old, old).is_empty());
        let same_other_spelling = "[access]\npublic_paths = [ \"/a\" ]\n[server]\nlisten = '0.0.0.0:8080'\n[store]\nurl = \"memory://\"\n";
        assert!(changed_restart_only(old, same_other_spelling).is_empty());
        let moved = old
            .replace("8080", "9000")
            .replace("memory://", "redis://r");
        assert_eq!(
            changed_restart_only(old, &moved),
            vec!["server.listen".to_owned(), "store".to_owned()]
        );
        // Reloadable keys are not reported.
        let rules = old.replace("\"/a\"", "\"/b\"");
        assert!(changed_restart_only(old, &rules).is_empty());
        // Tracing is set up once, before the first request.
        let traced = format!("{old}[telemetry]\notlp_endpoint = \"http://c:4318\"\n");
        assert_eq!(
            changed_restart_only(old, &traced),
            vec!["telemetry".to_owned()]
        );
    }
}
