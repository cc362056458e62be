//! The config file as written: every value in its wire form (strings for durations,
//! URLs and secret references), every key optional.
//!
//! Keeping this layer loose lets one pass of validation report *every* mistake with its
//! key path, instead of stopping at the first value serde cannot convert. Unknown keys
//! are collected by `serde_ignored` for the same reason (`deny_unknown_fields` would
//! stop at the first one).

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub access: RawAccess,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    pub maestrano_devpl: Option<RawDevpl>,
    #[serde(default)]
    pub telemetry: RawTelemetry,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
    pub public_url: Option<String>,
    pub connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub workers: Option<i64>,
    pub max_connections: Option<i64>,
    pub admin_token: Option<String>,
    pub watch_config: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawStore {
    pub url: Option<String>,
    pub ca_certificate: Option<String>,
    pub key_prefix: Option<String>,
    pub fail_mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawSession {
    pub cookie_name: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_lifetime: Option<String>,
    pub cache_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawIdentity {
    pub signing_key: Option<String>,
    pub audience: Option<String>,
    pub ttl: Option<String>,
    pub previous_keys: Option<Vec<String>>,
    #[serde(default)]
    pub headers: RawHeaders,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawHeaders {
    pub user_id: Option<String>,
    pub group_id: Option<String>,
    pub tenant: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub role: Option<String>,
    pub assertion: Option<String>,
    pub groups: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAccess {
    pub rules: Option<Vec<RawRule>>,
    pub public_paths: Option<Vec<String>>,
    pub api_paths: Option<Vec<String>>,
    pub strip_headers: Option<Vec<String>>,
    pub login_starts_per_minute: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRule {
    pub name: Option<String>,
    pub path: Option<String>,
    pub path_regex: Option<String>,
    pub methods: Option<Vec<String>>,
    pub tenants: Option<Vec<String>>,
    pub public: Option<bool>,
    pub api: Option<bool>,
    pub allow_groups: Option<Vec<String>>,
    pub allow_roles: Option<Vec<String>>,
    pub allow_users: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTenant {
    pub id: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub default: Option<bool>,
    pub saml: Option<RawSaml>,
    #[serde(default)]
    pub provisioning: RawProvisioning,
    pub scim: Option<RawScim>,
    pub maestrano: Option<RawMaestrano>,
    pub bearer: Option<Vec<RawBearer>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawBearer {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks: Option<String>,
    pub ca_certificate: Option<String>,
    pub algorithms: Option<Vec<String>>,
    pub user_claim: Option<String>,
    pub group_claim: Option<String>,
    pub email_claim: Option<String>,
    pub role_claim: Option<String>,
    pub name_claim: Option<String>,
    pub forward_authorization: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawSaml {
    pub idp_entity_id: Option<String>,
    pub idp_sso_url: Option<String>,
    pub idp_certificate: Option<String>,
    pub idp_metadata: Option<String>,
    pub idp_metadata_url: Option<String>,
    pub idp_metadata_refresh: Option<String>,
    pub idp_metadata_signer: Option<String>,
    pub sp_entity_id: Option<String>,
    pub idp_slo_url: Option<String>,
    pub after_logout_url: Option<String>,
    pub allow_idp_initiated: Option<bool>,
    pub want_assertions_signed: Option<bool>,
    pub allow_sha1: Option<bool>,
    pub sp_key: Option<String>,
    pub sp_certificate: Option<String>,
    pub sp_previous_keys: Option<Vec<String>>,
    pub require_encrypted_assertions: Option<bool>,
    pub allow_rsa1_5: Option<bool>,
    pub sign_requests: Option<bool>,
    pub name_id_format: Option<String>,
    #[serde(default)]
    pub attributes: RawAttributes,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAttributes {
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub group_id: Option<String>,
    pub group_name: Option<String>,
    pub role: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawProvisioning {
    pub create_groups: Option<bool>,
    pub create_users: Option<bool>,
    pub link_by_email: Option<bool>,
    pub default_role: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawScim {
    pub token: Option<String>,
    pub previous_tokens: Option<Vec<String>>,
    pub name_order: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawMaestrano {
    pub api_id: Option<String>,
    pub api_key: Option<String>,
    pub api_host: Option<String>,
    pub connec_host: Option<String>,
    pub session_recheck: Option<bool>,
    pub recheck_fail_mode: Option<String>,
    pub user_mode: Option<String>,
    pub connec_forward_path: Option<String>,
    #[serde(default)]
    pub billing: RawBilling,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawBilling {
    pub mode: Option<String>,
    pub price_cents: Option<i64>,
    pub currency: Option<String>,
    pub period: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawDevpl {
    pub host: Option<String>,
    pub env_key: Option<String>,
    pub env_secret: Option<String>,
    pub refresh: Option<String>,
}
