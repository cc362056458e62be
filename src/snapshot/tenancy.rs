//! The tenant-dependent parts of the request pipeline: which host is whose, each
//! tenant's SAML SP, SCIM and Maestrano endpoints. Part of the [`super::Snapshot`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, IdpSource, ProvisioningConfig};
use crate::directory::Directory;
use crate::limits::Failures;
use crate::saml::metadata::{Freshness, Slot, Slots};
use crate::saml::{SamlTenant, SpState};

/// The tenant-dependent parts of the gateway, built from one config.
pub struct Tenancy {
    /// Lower-cased host (no port) → tenant id.
    pub(crate) hosts: HashMap<String, String>,
    /// Tenants that claim no host.
    pub(crate) hostless: std::collections::HashSet<String>,
    pub(crate) default_tenant: Option<String>,
    /// `/maestrano/` is reserved only when some tenant is a Maestrano tenant, so apps that
    /// own such a path keep it otherwise.
    pub(crate) maestrano_reserved: bool,
    /// Tenant id → `after_logout_url`, where the browser lands after a logout.
    pub after_logout: HashMap<String, String>,
    saml: HashMap<String, SpSource>,
    /// Tenant id → its SP metadata, rendered once: it depends on the config alone.
    sp_metadata: HashMap<String, bytes::Bytes>,
    provisioning: HashMap<String, ProvisioningConfig>,
    pub(crate) scim: crate::scim::Scim,
    maestrano: crate::maestrano::Maestrano,
    /// Per tenant, in id order: where it came from and whether it has SCIM, for the
    /// admin API.
    origins: Vec<(String, &'static str, bool)>,
}

/// A tenant as the admin API describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantSummary {
    /// Tenant id.
    pub id: String,
    /// `config` (the config file) or `devpl` (Maestrano's developer platform).
    pub source: &'static str,
    /// The IdP's metadata: `ok` (configured, or fetched at the last refresh), `stale`
    /// (the last refresh failed; an older copy is in use) or `none` (a metadata URL
    /// never fetched successfully).
    pub saml_metadata: &'static str,
    /// When a metadata URL's document was last had (unix seconds); none for metadata
    /// in the config.
    pub saml_refreshed_at: Option<i64>,
    /// Whether SCIM is served for it.
    pub scim: bool,
}

/// Where a tenant's SP comes from.
enum SpSource {
    /// Built once from the config.
    Fixed(Arc<SamlTenant>),
    /// Built from metadata fetched from a URL, and rebuilt by each refresh that changes
    /// it (see `saml::metadata`).
    Fetched(Slot),
}

impl Tenancy {
    /// Builds every tenant's SP and endpoints from a validated config. Tenants whose
    /// IdP metadata comes from a URL take their slot from `slots`, which the refresh
    /// tasks fill.
    pub fn build(
        config: &Config,
        directory: &Directory,
        failures: &Arc<Failures>,
        slots: &Slots,
    ) -> Result<Tenancy, (String, String)> {
        let mut saml = HashMap::new();
        let mut sp_metadata = HashMap::new();
        for t in &config.tenants {
            let (sp, started_with) = match (&t.saml.idp, slots.get(&t.id)) {
                // A URL tenant's SP is built from the configuration the process started
                // with (see `saml::metadata::Refresher`): its metadata comes from there.
                (IdpSource::Url(_), Some(slot)) => {
                    (SpSource::Fetched(slot.clone()), slot.sp_metadata().cloned())
                }
                (IdpSource::Url(_), None) => {
                    return Err((
                        t.id.clone(),
                        "idp_metadata_url is supported only for tenants of the config file".into(),
                    ));
                }
                _ => (
                    SpSource::Fixed(Arc::new(
                        SamlTenant::new(t, config.acs_url(t)).map_err(|e| (t.id.clone(), e))?,
                    )),
                    None,
                ),
            };
            let xml = match started_with {
                Some(xml) => xml,
                None => crate::saml::sp_metadata_xml(t, &config.acs_url(t))
                    .map(bytes::Bytes::from)
                    .map_err(|e| (t.id.clone(), format!("cannot render SP metadata: {e}")))?,
            };
            sp_metadata.insert(t.id.clone(), xml);
            saml.insert(t.id.clone(), sp);
        }
        let mut hosts = HashMap::new();
        for t in &config.tenants {
            for h in &t.hosts {
                hosts.insert(h.clone(), t.id.clone());
            }
        }
        Ok(Tenancy {
            hostless: config
                .tenants
                .iter()
                .filter(|t| t.hosts.is_empty())
                .map(|t| t.id.clone())
                .collect(),
            hosts,
            default_tenant: config.default_tenant().map(|t| t.id.clone()),
            maestrano_reserved: config.tenants.iter().any(|t| t.maestrano.is_some()),
            after_logout: config
                .tenants
                .iter()
                .filter_map(|t| Some((t.id.clone(), t.saml.after_logout_url.clone()?)))
                .collect(),
            saml,
            sp_metadata,
            provisioning: config
                .tenants
                .iter()
                .map(|t| (t.id.clone(), t.provisioning.clone()))
                .collect(),
            origins: {
                let mut o: Vec<(String, &'static str, bool)> = config
                    .tenants
                    .iter()
                    .map(|t| {
                        let source = if t.from_devpl { "devpl" } else { "config" };
                        (t.id.clone(), source, t.scim.is_some())
                    })
                    .collect();
                o.sort();
                o
            },
            scim: crate::scim::Scim::new(config, directory.clone(), failures.clone()),
            maestrano: crate::maestrano::Maestrano::new(config, directory.clone()),
        })
    }

    /// Tenant ids, sorted.
    pub fn tenant_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.saml.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The SP of `tenant`, if there is such a tenant: loaded once, so a request keeps
    /// the SP it started with even if a metadata refresh replaces it meanwhile.
    pub fn sp(&self, tenant: &str) -> Option<SpState> {
        Some(match self.saml.get(tenant)? {
            SpSource::Fixed(sp) => SpState::Ready(sp.clone()),
            SpSource::Fetched(slot) => match slot.load_full() {
                Some(sp) => SpState::Ready(sp),
                None => SpState::Pending,
            },
        })
    }

    /// `tenant`'s SP metadata XML, if there is such a tenant: available whether or not
    /// its IdP's metadata has been had.
    pub fn sp_metadata(&self, tenant: &str) -> Option<bytes::Bytes> {
        self.sp_metadata.get(tenant).cloned()
    }

    /// `tenant`'s provisioning rules, which a login goes through.
    pub fn provisioning(&self, tenant: &str) -> Option<&ProvisioningConfig> {
        self.provisioning.get(tenant)
    }

    /// Every tenant, in id order, as the admin API lists them.
    pub fn summaries(&self) -> Vec<TenantSummary> {
        self.origins
            .iter()
            .map(|(id, source, scim)| TenantSummary {
                id: id.clone(),
                source,
                saml_metadata: match self.freshness(id).0 {
                    Freshness::Ok => "ok",
                    Freshness::Stale => "stale",
                    Freshness::None => "none",
                },
                saml_refreshed_at: self.freshness(id).1,
                scim: *scim,
            })
            .collect()
    }

    /// How current `tenant`'s IdP metadata is: metadata in the config is always current.
    fn freshness(&self, tenant: &str) -> (Freshness, Option<i64>) {
        match self.saml.get(tenant) {
            Some(SpSource::Fetched(slot)) => slot.freshness(),
            _ => (Freshness::Ok, None),
        }
    }

    /// Whether `tenant` exists.
    pub fn has(&self, tenant: &str) -> bool {
        self.saml.contains_key(tenant)
    }

    /// The Maestrano side of this tenant set (inert when no tenant is a Maestrano one).
    pub fn maestrano(&self) -> &crate::maestrano::Maestrano {
        &self.maestrano
    }

    /// Whether a session of `tenant` counts on a request to `host` (SPEC §7): on a host
    /// that a tenant claims, only that tenant's sessions do; on any other host, the
    /// default tenant's, and those of tenants that claim no host at all (Maestrano's
    /// marketplaces share the app's one host and are told apart by path).
    pub fn serves(&self, host: Option<&str>, tenant: &str) -> bool {
        match host
            .map(crate::gateway::host_name)
            .and_then(|h| self.hosts.get(&h.to_ascii_lowercase()))
        {
            Some(owner) => owner == tenant,
            None => {
                self.default_tenant.as_deref() == Some(tenant) || self.hostless.contains(tenant)
            }
        }
    }

    /// The tenant whose pages (login, logged-out) a request to `host` gets: the one
    /// that claims the host, else the default tenant.
    pub fn tenant_for(&self, host: Option<&str>) -> Option<String> {
        host.map(crate::gateway::host_name)
            .and_then(|h| {
                if h.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.hosts.get(&h.to_ascii_lowercase())
                } else {
                    self.hosts.get(h)
                }
            })
            .or(self.default_tenant.as_ref())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_url_tenant_publishes_the_metadata_of_the_config_its_sp_is_built_from() {
        let config = |entity: &str| {
            let text = format!(
                "[[tenants]]\nid = \"acme\"\n[tenants.saml]\n\
                 idp_metadata_url = \"http://127.0.0.1:9/metadata\"\nsp_entity_id = \"{entity}\"\n"
            );
            Config::from_toml(&text, std::path::Path::new("/")).unwrap()
        };
        let started = config("https://sp.example/started");
        let slots = Slots::new(&started);
        let store = crate::store::Store::open(&started.store).unwrap();
        let directory = Directory::new(store);
        let failures = Failures::new();
        // A reload changes the entity id, but the URL tenant's SP keeps the one it was
        // started with (its refresher builds it from that config): so does its metadata,
        // or an IdP reading it would send assertions for an audience nobody checks.
        let reloaded = config("https://sp.example/reloaded");
        let tenancy = Tenancy::build(&reloaded, &directory, &failures, &slots)
            .unwrap_or_else(|(t, e)| panic!("{t}: {e}"));
        let xml = tenancy.sp_metadata("acme").unwrap();
        let xml = std::str::from_utf8(&xml).unwrap();
        assert!(
            xml.contains("entityID=\"https://sp.example/started\""),
            "{xml}"
        );
        assert!(!xml.contains("reloaded"), "{xml}");
        assert!(tenancy.sp_metadata("other").is_none());
    }
}
