//! Everything idgate derives from its configuration, built by one function and
//! swapped whole. Startup, a configuration reload and a change of Maestrano's
//! developer-platform marketplaces all go through [`Builder::build`]; the result is
//! published with one atomic store ([`Snapshots::publish`]), so no reader ever sees a
//! tenant from one config next to the access rules of another. A request loads the
//! snapshot once, at its start, and uses that copy to its end.
//!
//! A new config-derived setting goes here: a field of [`Snapshot`] (or of the part a
//! component owns, such as [`crate::session::Settings`]) built in [`Builder::build`],
//! read from the snapshot the request (or background task) loaded. Nothing else has to
//! learn about reloads.

mod tenancy;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use tenancy::{Tenancy, TenantSummary};

use crate::config::{Config, MaestranoConfig};
use crate::directory::Directory;
use crate::identity::SignerKeys;
use crate::limits::Failures;
use crate::saml::metadata::Slots;

/// One configuration's derived state, immutable once built.
pub struct Snapshot {
    /// Hosts, SAML SPs, SCIM and Maestrano endpoints per tenant.
    pub tenancy: Tenancy,
    /// `[[access.rules]]` with `public_paths` first (SPEC §9), compiled.
    pub rules: crate::access::Rules,
    /// `[access].api_paths`: where an unauthenticated request gets 401, not a login.
    pub api_paths: Vec<String>,
    /// How sessions and bearer tokens become identities, per tenant.
    pub sessions: crate::session::Settings,
    /// The identity JWT's signing keys, audience and lifetime.
    pub identity: Arc<SignerKeys>,
    /// Maestrano tenants, for the background jobs and the session re-check.
    pub maestrano: HashMap<String, MaestranoConfig>,
    /// Which publication this is: 0 at startup, one more at each reload. What is
    /// cached from a snapshot (a session's signed identity) is checked against it.
    pub epoch: u64,
}

/// What building a snapshot needs besides the config: the long-lived services that
/// the tenancy's endpoints use, created once at startup.
pub struct Builder {
    /// The directory SCIM and Maestrano endpoints provision into.
    pub directory: Directory,
    /// Failed machine authentications per client; outlives every snapshot.
    pub failures: Arc<Failures>,
    /// Fetched IdP metadata, filled by the refresh tasks of `idp_metadata_url` tenants.
    pub slots: Arc<Slots>,
    /// Whether an ephemeral signing key may be made (the memory store's demo).
    pub ephemeral_key_ok: bool,
}

/// Why a config could not become a snapshot (the config was validated, so these are
/// what validation cannot see: a key that does not load, metadata not fetched).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A tenant's SAML SP could not be built.
    #[error("tenants.{tenant}.saml: {reason}")]
    Saml {
        /// The tenant.
        tenant: String,
        /// Why.
        reason: String,
    },
    /// The identity signing keys could not be loaded.
    #[error("{0}")]
    Identity(#[from] crate::identity::SignerError),
}

impl Builder {
    /// Builds the snapshot of `config`. `previous` (the running snapshot, on a reload)
    /// lends what should survive an unchanged setting: bearer issuers with their
    /// fetched keys, the ephemeral signing key.
    pub fn build(
        &self,
        config: &Config,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, BuildError> {
        let tenancy = Tenancy::build(config, &self.directory, &self.failures, &self.slots)
            .map_err(|(tenant, reason)| BuildError::Saml { tenant, reason })?;
        let identity = match previous {
            Some(p) if p.identity.built_from(&config.identity) => p.identity.clone(),
            _ => Arc::new(SignerKeys::new(
                &config.identity,
                self.ephemeral_key_ok,
                previous.map(|p| &*p.identity),
            )?),
        };
        Ok(Snapshot {
            tenancy,
            rules: config.access.rules.clone(),
            api_paths: config.access.api_paths.clone(),
            sessions: crate::session::Settings::build(config, previous.map(|p| &p.sessions)),
            identity,
            maestrano: config
                .tenants
                .iter()
                .filter_map(|t| Some((t.id.clone(), t.maestrano.clone()?)))
                .collect(),
            epoch: 0,
        })
    }
}

/// The running snapshot, shared by every component that reads configuration.
pub struct Snapshots(ArcSwap<Snapshot>);

impl Snapshots {
    /// Starts with `first` (startup's snapshot).
    pub fn new(first: Snapshot) -> Arc<Snapshots> {
        Arc::new(Snapshots(ArcSwap::from_pointee(first)))
    }

    /// The running snapshot. A request calls this once and keeps the guard; background
    /// work calls it once per unit of work (a job, a re-check).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.0.load()
    }

    /// The running snapshot as an owned `Arc`, for work that outlives a guard's scope.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Makes `next` the running snapshot and returns the one it replaces. Callers
    /// publish one at a time (the reloader's lock).
    pub fn publish(&self, mut next: Snapshot) -> Arc<Snapshot> {
        next.epoch = self.0.load().epoch + 1;
        self.0.swap(Arc::new(next))
    }
}
