//! Maestrano marketplaces: the paths, metadata, account webhooks and login mapping that
//! Maestrano's SDKs (maestrano-ruby, -rails, -php) gave an app, served by idgate so the
//! app itself needs no change.
//!
//! The SSO itself is the tenant's ordinary SAML flow (`saml`), reached under
//! Maestrano's paths; this module adds what is Maestrano's own: the `virtual` user mode,
//! the `mno_session` values kept with the session, HTTP Basic with `api_id:api_key`,
//! and the webhooks, which go through the same directory functions as SCIM.

pub mod devpl;
pub mod recheck;
pub mod routes;
pub mod worker;

use std::collections::HashMap;

use base64::Engine;
use http::header::{self, HeaderMap, HeaderValue};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::audit::Origin;
use crate::config::{Config, IdpSource, MaestranoConfig, UserMode};
use crate::directory::{Directory, DirectoryError, LoginIdentity};
use crate::session::model::MnoSession;
use crate::store::{DirectoryStore, UserKey};

/// Most entities one Connec! notification may carry (each becomes a job).
pub const MAX_CONNEC_ENTITIES: usize = 10_000;

/// Largest Connec! notification accepted (they batch many entities).
pub const CONNEC_MAX_BODY: usize = 16 << 20;

/// What a `/maestrano/…` path asks for. The tenant is an optional last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /maestrano/metadata[/{tenant}]`
    Metadata,
    /// `GET /maestrano/auth/saml/init[/{tenant}]`
    Init,
    /// `POST /maestrano/auth/saml/consume[/{tenant}]`
    Consume,
    /// `DELETE /maestrano/account/groups/{group_id}[/{tenant}]`
    GroupCancelled {
        /// Maestrano group uid.
        group: &'a str,
    },
    /// `DELETE /maestrano/account/groups/{group_id}/users/{user_id}[/{tenant}]`
    UserRemoved {
        /// Maestrano group uid.
        group: &'a str,
        /// Maestrano user uid (the real one, also in virtual mode).
        user: &'a str,
    },
    /// `POST /maestrano/connec/notifications[/{tenant}]`
    ConnecNotifications,
}

/// Parses a path under `/maestrano/` into the route and the tenant segment, if any.
pub fn route(path: &str) -> Option<(Route<'_>, Option<&str>)> {
    let rest = path.strip_prefix("/maestrano/")?;
    let segs: Vec<&str> = rest.split('/').collect();
    let (route, used) = match segs.as_slice() {
        ["metadata", ..] => (Route::Metadata, 1),
        ["auth", "saml", "init", ..] => (Route::Init, 3),
        ["auth", "saml", "consume", ..] => (Route::Consume, 3),
        ["account", "groups", group, "users", user, ..]
            if !group.is_empty() && !user.is_empty() =>
        {
            (Route::UserRemoved { group, user }, 5)
        }
        ["account", "groups", group, ..] if !group.is_empty() => {
            (Route::GroupCancelled { group }, 3)
        }
        ["connec", "notifications", ..] => (Route::ConnecNotifications, 2),
        _ => return None,
    };
    match &segs[used..] {
        [] | [""] => Some((route, None)),
        [t] => Some((route, Some(*t).filter(|t| !t.is_empty()))),
        _ => None,
    }
}

/// One Maestrano tenant, as its endpoints need it.
struct Tenant {
    config: MaestranoConfig,
    /// SHA-256 of `api_id:api_key`: Basic credentials are compared as digests, in
    /// constant time, and the key itself is not kept.
    credentials: [u8; 32],
    idp_url: String,
    idp_certificate: Option<String>,
}

/// The Maestrano side of every Maestrano tenant.
pub struct Maestrano {
    tenants: HashMap<String, Tenant>,
    default_tenant: Option<String>,
    public_url: String,
    directory: Directory,
}

/// Why a webhook or metadata request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such Maestrano tenant (or none by default).
    UnknownTenant,
    /// Missing or wrong `api_id:api_key`.
    BadCredentials,
}

fn credentials_digest(id: &str, key: &str) -> [u8; 32] {
    Sha256::digest(format!("{id}:{key}").as_bytes()).into()
}

/// `AA:BB:…`: SHA-1 of the certificate's DER, as the SDKs published it.
fn fingerprint(pem: &str) -> Option<String> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let digest = sha1::Sha1::digest(&der);
    Some(
        digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

impl Maestrano {
    /// The Maestrano tenants of a validated config (none: every route answers 404).
    pub fn new(config: &Config, directory: Directory) -> Maestrano {
        let tenants: HashMap<String, Tenant> = config
            .tenants
            .iter()
            .filter_map(|t| {
                let m = t.maestrano.clone()?;
                let (idp_url, idp_certificate) = match &t.saml.idp {
                    IdpSource::Explicit {
                        sso_url,
                        certificates,
                        ..
                    } => (sso_url.to_string(), certificates.first().cloned()),
                    IdpSource::Metadata(_) | IdpSource::Url(_) => (String::new(), None),
                };
                Some((
                    t.id.clone(),
                    Tenant {
                        credentials: credentials_digest(&m.api_id, m.api_key.expose()),
                        config: m,
                        idp_url,
                        idp_certificate,
                    },
                ))
            })
            .collect();
        let default_tenant = config
            .default_tenant()
            .map(|t| t.id.clone())
            .filter(|id| tenants.contains_key(id));
        Maestrano {
            tenants,
            default_tenant,
            public_url: config
                .server
                .public_url
                .as_str()
                .trim_end_matches('/')
                .to_owned(),
            directory,
        }
    }

    /// Whether any tenant is a Maestrano tenant (then `/maestrano/` is reserved).
    pub fn any(&self) -> bool {
        !self.tenants.is_empty()
    }

    /// The Maestrano tenant a path names, or the default one.
    pub fn tenant_id<'a>(&'a self, named: Option<&'a str>) -> Option<&'a str> {
        match named {
            Some(t) => self.tenants.contains_key(t).then_some(t),
            None => self.default_tenant.as_deref(),
        }
    }

    /// Whether `tenant` is a Maestrano tenant.
    pub fn is_maestrano(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// Checks HTTP Basic `api_id:api_key` for the tenant.
    pub fn authenticate(&self, tenant: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        let t = self.tenants.get(tenant).ok_or(Refusal::UnknownTenant)?;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, b64) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("basic").then_some(b64.trim())
            })
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .map(|raw| <[u8; 32]>::from(Sha256::digest(&raw)));
        match given {
            Some(d) if bool::from(d.ct_eq(&t.credentials)) => Ok(()),
            _ => Err(Refusal::BadCredentials),
        }
    }

    /// `GET /maestrano/metadata[/{tenant}]`: what the SDKs served, with idgate's own
    /// paths for this tenant. Never a secret.
    pub fn metadata(&self, tenant: &str) -> Option<Value> {
        let t = self.tenants.get(tenant)?;
        let m = &t.config;
        let suffix = format!("/{tenant}");
        Some(json!({
            "environment": "production",
            "app": {"host": self.public_url},
            "api": {
                "id": m.api_id,
                "host": m.api_host.as_str().trim_end_matches('/'),
                "base": "/api/v1/",
                "lang": "idgate",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "sso": {
                "enabled": true,
                "slo_enabled": false,
                "creation_mode": match m.user_mode { UserMode::Real => "real", UserMode::Virtual => "virtual" },
                "init_path": format!("/maestrano/auth/saml/init{suffix}"),
                "consume_path": format!("/maestrano/auth/saml/consume{suffix}"),
                "idm": self.public_url,
                "idp": t.idp_url,
                "name_id_format": "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
                "x509_fingerprint": t.idp_certificate.as_deref().and_then(fingerprint),
                "x509_certificate": t.idp_certificate,
            },
            "connec": {
                "enabled": true,
                "host": m.connec_host.as_str().trim_end_matches('/'),
            },
            "webhook": {
                "account": {
                    "groups_path": format!("/maestrano/account/groups/:id{suffix}"),
                    "group_users_path": format!("/maestrano/account/groups/:group_id/users/:id{suffix}"),
                },
                "connec": {
                    "notifications_path": format!("/maestrano/connec/notifications{suffix}"),
                },
            },
        }))
    }

    /// The local user id for a Maestrano uid in `group`: the uid itself, or
    /// `<uid>.<group_uid>` in virtual mode (one local user per company membership).
    pub fn local_uid(&self, tenant: &str, uid: &str, group: &str) -> String {
        match self.tenants.get(tenant).map(|t| t.config.user_mode) {
            Some(UserMode::Virtual) => format!("{uid}.{group}"),
            _ => uid.to_owned(),
        }
    }

    /// Adapts a login's identity to the tenant's user mode, and returns the Maestrano
    /// session values to keep with the idgate session. `attributes` are every
    /// attribute of the assertion (first values, as sent). A virtual identity value
    /// holding a control character is refused: the error names the attribute.
    pub fn map_login(
        &self,
        tenant: &str,
        who: &mut LoginIdentity,
        attributes: &HashMap<String, String>,
    ) -> Result<Option<MnoSession>, &'static str> {
        let Some(t) = self.tenants.get(tenant) else {
            return Ok(None);
        };
        let uid = who.user_id.clone();
        if t.config.user_mode == UserMode::Virtual {
            virtual_identity(who, attributes)?;
        }
        let Some(session) = attributes.get("mno_session") else {
            return Ok(None);
        };
        let recheck = attributes
            .get("mno_session_recheck")
            .and_then(|r| chrono::DateTime::parse_from_rfc3339(r.trim()).ok())
            .map_or(0, |t| t.timestamp());
        Ok(Some(MnoSession {
            uid,
            session: session.trim().to_owned(),
            recheck,
        }))
    }

    /// Queues a reconciliation of the company's recurring bill, when the tenant bills.
    pub async fn billing_changed(&self, tenant: &str, group: &str) -> Result<(), DirectoryError> {
        let bills = self
            .tenants
            .get(tenant)
            .is_some_and(|t| t.config.billing.mode != crate::config::BillingMode::None);
        if bills {
            worker::Worker::enqueue_bill(self.directory.store(), tenant, group).await?;
        }
        Ok(())
    }

    /// `DELETE /maestrano/account/groups/{group}`: the company cancelled. Its members
    /// are blocked on every replica, and its recurring bill is cancelled. Unknown or
    /// already cancelled groups are fine.
    pub async fn group_cancelled(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        group: &str,
    ) -> Result<(), DirectoryError> {
        match self.directory.cancel_group(by, tenant, group).await {
            Ok(()) | Err(DirectoryError::NotFound) => {}
            Err(e) => return Err(e),
        }
        // Not queued means not billed correctly: the webhook fails, and Maestrano retries.
        self.billing_changed(tenant, group).await
    }

    /// `POST /maestrano/connec/notifications`: every entity becomes one durable
    /// delivery to the app. The whole notification is checked before any of it is
    /// queued, so a refused one can be resent as it is.
    pub async fn connec_notification(&self, tenant: &str, body: &[u8]) -> Result<usize, String> {
        let doc: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let collections = doc
            .as_object()
            .ok_or("the body must be an object of entity collections")?;
        let mut deliveries = Vec::new();
        for (entity, list) in collections {
            let list = list
                .as_array()
                .ok_or_else(|| format!("{entity} must be an array of entities"))?;
            for e in list {
                let group = e["group_id"]
                    .as_str()
                    .filter(|g| !g.is_empty())
                    .ok_or_else(|| format!("an entity of {entity} has no group_id"))?;
                // Both travel as header values to the app.
                if HeaderValue::from_str(group).is_err() || HeaderValue::from_str(entity).is_err() {
                    return Err(format!(
                        "{entity}: a group_id or entity name is not header-safe"
                    ));
                }
                if deliveries.len() >= MAX_CONNEC_ENTITIES {
                    return Err(format!(
                        "more than {MAX_CONNEC_ENTITIES} entities in one notification"
                    ));
                }
                let connec_id = match &e["id"] {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(ids) => ids
                        .iter()
                        .find(|i| i["provider"] == "connec")
                        .and_then(|i| i["id"].as_str())
                        .map(str::to_owned),
                    _ => None,
                };
                deliveries.push(worker::ConnecDelivery {
                    tenant: tenant.to_owned(),
                    group: group.to_owned(),
                    entity: entity.clone(),
                    connec_id,
                    body: e.clone(),
                });
            }
        }
        for d in &deliveries {
            let job = serde_json::to_string(d).map_err(|e| e.to_string())?;
            crate::store::JobQueue::enqueue(self.directory.store(), worker::CONNEC_QUEUE, &job)
                .await
                .map_err(|e| format!("store: {e}"))?;
        }
        Ok(deliveries.len())
    }

    /// `DELETE /maestrano/account/groups/{group}/users/{user}`: the user left the
    /// company; once they belong to no active company, they are deactivated.
    pub async fn user_removed(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        group: &str,
        uid: &str,
    ) -> Result<(), DirectoryError> {
        let local = self.local_uid(tenant, uid, group);
        let store = self.directory.store();
        let id = match store.find_user(tenant, UserKey::IdpSubject, &local).await? {
            Some(id) => id,
            None => match self.directory.user(tenant, &local).await? {
                Some(u) => u.id,
                None => return Ok(()),
            },
        };
        match self
            .directory
            .remove_membership(by, tenant, &id, group)
            .await
        {
            Ok(()) | Err(DirectoryError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let Some(user) = self.directory.user(tenant, &id).await? else {
            return Ok(());
        };
        let ids: Vec<String> = user
            .memberships
            .iter()
            .map(|m| m.group_id.clone())
            .collect();
        let groups = store.get_groups(tenant, &ids).await?;
        if user.active && !groups.iter().any(|g| g.active) {
            self.directory.deactivate_user(by, tenant, &id).await?;
        }
        self.billing_changed(tenant, group).await
    }
}

/// A virtual user's identity (one local user per company membership): Maestrano's
/// `virtual_uid` and `virtual_email`, or `<uid>.<group_uid>`. Those values become the
/// user id and email the app sees, so they are held to the rule the SAML layer applies
/// to mapped attributes: a control character anywhere, before trimming, refuses the
/// login (the error names the attribute). The composed id is made of values the SAML
/// layer has already checked.
fn virtual_identity(
    who: &mut LoginIdentity,
    attributes: &HashMap<String, String>,
) -> Result<(), &'static str> {
    let value = |name: &'static str| -> Result<Option<String>, &'static str> {
        match attributes.get(name) {
            Some(v) if crate::directory::has_control_character(v) => Err(name),
            Some(v) => Ok(Some(v.trim().to_owned()).filter(|v| !v.is_empty())),
            None => Ok(None),
        }
    };
    let virtual_uid = value("virtual_uid")?;
    let virtual_email = value("virtual_email")?;
    who.user_id = virtual_uid.unwrap_or_else(|| format!("{}.{}", who.user_id, who.group_id));
    if virtual_email.is_some() {
        who.email = virtual_email;
    }
    // The NameID is the real uid, shared by every virtual user of one person.
    who.name_id = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_identities_carry_no_control_characters() {
        let who = LoginIdentity {
            user_id: "usr-1".into(),
            group_id: "cld-1".into(),
            name_id: Some("usr-1".into()),
            ..LoginIdentity::default()
        };
        let attrs = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let mut composed = who.clone();
        virtual_identity(&mut composed, &attrs(&[])).unwrap();
        assert_eq!(composed.user_id, "usr-1.cld-1");
        assert_eq!(composed.name_id, None);
        let mut given = who.clone();
        virtual_identity(
            &mut given,
            &attrs(&[("virtual_uid", " v-1 "), ("virtual_email", "v@x.com")]),
        )
        .unwrap();
        assert_eq!(
            (given.user_id.as_str(), given.email.as_deref()),
            ("v-1", Some("v@x.com"))
        );
        for bad in ["v-1\n", "v\r1", "\u{7f}v-1", "v\u{0}1"] {
            for name in ["virtual_uid", "virtual_email"] {
                let mut w = who.clone();
                assert_eq!(
                    virtual_identity(&mut w, &attrs(&[(name, bad)])),
                    Err(name),
                    "{name} {bad:?}"
                );
                assert_eq!(w.control_character_field(), None, "nothing half-mapped");
            }
        }
    }

    #[test]
    fn routes_with_and_without_a_tenant() {
        assert_eq!(route("/maestrano/metadata"), Some((Route::Metadata, None)));
        assert_eq!(
            route("/maestrano/metadata/acme"),
            Some((Route::Metadata, Some("acme")))
        );
        assert_eq!(
            route("/maestrano/auth/saml/consume/acme"),
            Some((Route::Consume, Some("acme")))
        );
        assert_eq!(
            route("/maestrano/account/groups/cld-1"),
            Some((Route::GroupCancelled { group: "cld-1" }, None))
        );
        assert_eq!(
            route("/maestrano/account/groups/cld-1/acme"),
            Some((Route::GroupCancelled { group: "cld-1" }, Some("acme")))
        );
        assert_eq!(
            route("/maestrano/account/groups/cld-1/users/usr-2/acme"),
            Some((
                Route::UserRemoved {
                    group: "cld-1",
                    user: "usr-2"
                },
                Some("acme")
            ))
        );
        assert_eq!(
            route("/maestrano/connec/notifications/"),
            Some((Route::ConnecNotifications, None))
        );
        assert_eq!(route("/maestrano/account/groups/"), None);
        assert_eq!(route("/maestrano/metadata/a/b"), None);
        assert_eq!(route("/maestrano/elsewhere"), None);
    }

    #[test]
    fn fingerprints_are_sha1_of_the_der_in_colon_hex() {
        // Independent value: `openssl x509 -noout -fingerprint -sha1` on the example cert.
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/examples/example-idp.crt"
        ))
        .unwrap();
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/examples/example-idp.crt"
            ))
            .output()
            .expect("openssl is installed by make deps");
        let text = String::from_utf8_lossy(&out.stdout);
        let expected = text.trim().rsplit('=').next().unwrap();
        assert_eq!(fingerprint(&pem).as_deref(), Some(expected));
    }
}
