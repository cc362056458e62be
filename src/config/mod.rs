//! Typed configuration (SPEC §3) and its validation.
//!
//! Loading is two steps: the TOML is read into the loose [`raw`] layer, then [`validate`]
//! turns it into a [`Config`] while collecting **every** error with its key path. A
//! config that validates has had all its secret references resolved and all its files
//! read, so the rest of the program never meets an unreadable key at run time.

mod raw;
mod secret;
mod validate;
pub(crate) use validate::redact_url;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use secret::{Secret, SecretSource};
pub use validate::listen_addr;

/// Named defaults, one constant each, so the documentation, the example config and the
/// tests can all point at the same value.
pub mod defaults {
    /// `[server].listen`
    pub const LISTEN: &str = "0.0.0.0:8080";
    /// `[server].admin_listen`: loopback, because metrics and readiness are not public.
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
    /// `[server].upstream`: the app in the same pod.
    pub const UPSTREAM: &str = "http://127.0.0.1:3000";
    /// `[server].public_url`
    pub const PUBLIC_URL: &str = "http://localhost:8080";
    /// `[server].connect_timeout`
    pub const CONNECT_TIMEOUT: &str = "2s";
    /// `[server].upstream_timeout`
    pub const UPSTREAM_TIMEOUT: &str = "60s";
    /// `[server].shutdown_grace`: below Kubernetes' default 30 s termination grace.
    pub const SHUTDOWN_GRACE: &str = "25s";
    /// `[server].max_connections`: a sidecar's share of a node. Each open connection
    /// costs a file descriptor (two when it has an upstream connection) and at most about
    /// 16 KiB on average (measured: docs/operations.md, "Capacity"), so 4096 fit in a
    /// 128 MiB memory limit and under the common 65536-fd limit.
    pub const MAX_CONNECTIONS: i64 = 4096;
    /// `[store].url`
    pub const STORE_URL: &str = "memory://";
    /// `[store].key_prefix`
    pub const KEY_PREFIX: &str = "idgate";
    /// `[session].cookie_name`
    pub const COOKIE_NAME: &str = "idgate_session";
    /// `[session].idle_timeout`
    pub const IDLE_TIMEOUT: &str = "8h";
    /// `[session].max_lifetime`
    pub const MAX_LIFETIME: &str = "24h";
    /// `[session].cache_ttl`
    pub const CACHE_TTL: &str = "5s";
    /// `[identity].audience`
    pub const AUDIENCE: &str = "legacy-app";
    /// `[identity].ttl`
    pub const IDENTITY_TTL: &str = "60s";
    /// `[identity.headers]` defaults, in the order user_id, group_id, tenant, email,
    /// name, role, assertion, groups.
    pub const HEADERS: [&str; 8] = [
        "X-Idgate-User-Id",
        "X-Idgate-Group-Id",
        "X-Idgate-Tenant",
        "X-Idgate-Email",
        "X-Idgate-Name",
        "X-Idgate-Role",
        "X-Idgate-Assertion",
        "X-Idgate-Groups",
    ];
    /// How the identity was established (`session` or `bearer`); not configurable.
    pub const AUTH_HEADER: &str = "X-Idgate-Auth";
    /// A group list longer than this many bytes is cut at a whole id (SPEC §9).
    pub const GROUPS_MAX_BYTES: usize = 4096;
    /// `[tenants.saml.attributes]` defaults: Maestrano's attribute names, in the order
    /// user_id, email, first_name, last_name, group_id, group_name, role.
    pub const ATTRIBUTES: [&str; 7] = [
        "uid",
        "email",
        "name",
        "surname",
        "group_uid",
        "group_name",
        "group_role",
    ];
    /// `[tenants.saml].idp_metadata_refresh`: IdPs rotate keys with days of notice, and
    /// an hourly fetch is no load on them.
    pub const IDP_METADATA_REFRESH: &str = "1h";
    /// `[access].strip_headers`: the URL-override and remote-user families (SPEC §7).
    /// Front proxies and frameworks give these meaning (IIS/Symfony rewrite the URL,
    /// Apache's `REMOTE_USER`, oauth2-proxy's and nginx auth_request's user headers), so
    /// a client must never be able to send them to the app.
    pub const STRIP_HEADERS: [&str; 15] = [
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Original-URI",
        "X-Forwarded-Uri",
        "X-Forwarded-Path",
        "X-Remote-User",
        "Remote-User",
        "X-Remote-Email",
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Forwarded-Preferred-Username",
        "X-Forwarded-Groups",
        "X-Auth-Request-User",
        "X-Auth-Request-Email",
        "X-Auth-Request-Groups",
    ];
    /// `[access].login_starts_per_minute`
    pub const LOGIN_STARTS_PER_MINUTE: u32 = 30;
    /// `[tenants.provisioning].default_role`
    pub const DEFAULT_ROLE: &str = "member";
    /// `[tenants.maestrano].api_host`
    pub const MNO_API_HOST: &str = "https://api-hub.maestrano.com";
    /// `[tenants.maestrano].connec_host`
    pub const MNO_CONNEC_HOST: &str = "https://api-connec.maestrano.com";
    /// `[tenants.maestrano].connec_forward_path`
    pub const MNO_CONNEC_FORWARD_PATH: &str = "/connec/notifications";
    /// `[maestrano_devpl].host`
    pub const DEVPL_HOST: &str = "https://developer.maestrano.com";
    /// `[maestrano_devpl].refresh`
    pub const DEVPL_REFRESH: &str = "10m";
    /// `[telemetry].service_name`
    pub const SERVICE_NAME: &str = "idgate";
    /// `[telemetry].sample_ratio`
    pub const SAMPLE_RATIO: f64 = 1.0;
}

/// `[server].workers` when unset or 0: the CPUs this process may use (cgroup quota
/// aware), so a pod with a 1-CPU limit gets one worker.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One validation error: the key path (`tenants[1].saml.idp_certificate`) and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, with `[i]` for array elements; empty for file-level errors.
    pub path: String,
    /// Human-readable reason.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in one config, in file order as far as possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[session]`
    pub session: SessionConfig,
    /// `[identity]`
    pub identity: IdentityConfig,
    /// `[access]`
    pub access: AccessConfig,
    /// `[[tenants]]`, in file order.
    pub tenants: Vec<TenantConfig>,
    /// `[maestrano_devpl]`
    pub maestrano_devpl: Option<DevplConfig>,
    /// `[telemetry]`
    pub telemetry: TelemetryConfig,
    /// The TOML this was read from, and the directory `file:` references resolve
    /// against: tenants from Maestrano's developer platform are added to it and the
    /// whole validated again, so they meet exactly the rules of configured ones.
    pub source: Source,
    /// Findings that do not stop idgate but need an operator soon (an SP certificate
    /// close to its expiry): `check-config` prints them, `serve` logs them.
    pub warnings: Vec<ConfigError>,
}

/// The text a config was read from and its directory. Its `Debug` leaves the text out:
/// it may hold inline secrets.
#[derive(Clone, Default)]
pub struct Source(pub String, pub std::path::PathBuf);

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source(*** {} bytes, {:?})", self.0.len(), self.1)
    }
}

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Public listener address.
    pub listen: SocketAddr,
    /// Admin listener address (health, readiness, metrics, JWKS).
    pub admin_listen: SocketAddr,
    /// The app: `http://host:port`, with no path.
    pub upstream: http::Uri,
    /// External base URL, without a trailing slash.
    pub public_url: url::Url,
    /// Upstream TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response headers.
    pub upstream_timeout: Duration,
    /// Drain time after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Peers whose `X-Forwarded-*` headers are kept and appended to.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Threads serving the public listener, each with its own upstream pool.
    pub workers: usize,
    /// Open connections on the public listener beyond which idgate stops accepting.
    pub max_connections: usize,
    /// SHA-256 of the admin API's bearer token; `None` leaves `/admin/` unserved.
    pub admin_token_sha256: Option<[u8; 32]>,
    /// Reload when the config file changes (checked every 5 s), besides on SIGHUP.
    pub watch_config: bool,
}

impl ServerConfig {
    /// Whether cookies must be `Secure` (and `__Host-` prefixed): the public URL is https.
    pub fn is_https(&self) -> bool {
        self.public_url.scheme() == "https"
    }
}

/// Which store backs sessions and the directory. Its `Debug` hides passwords.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// In-process; one replica only.
    Memory,
    /// Standalone Redis, `redis://` or `rediss://`; the URL as given.
    Redis(String),
    /// Redis Cluster seed nodes, as `redis://host:port` (or `rediss://`) URLs.
    Cluster(Vec<String>),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("Memory"),
            StoreUrl::Redis(url) => f.debug_tuple("Redis").field(&redacted(url)).finish(),
            StoreUrl::Cluster(nodes) => f
                .debug_tuple("Cluster")
                .field(&nodes.iter().map(|n| redacted(n)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// A Redis URL with its user information (`user:password@`) replaced.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None if url.contains('@') => "<URL with credentials>".into(),
        None => url.to_owned(),
    }
}

/// What to do while the store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Refuse requests that need the store (503).
    Closed,
    /// Keep serving sessions already cached, up to `cache_ttl`.
    Cached,
}

/// `[store]`
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Backend.
    pub url: StoreUrl,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Behaviour while the store is down.
    pub fail_mode: FailMode,
    /// PEM of the CA(s) that a `rediss://` server's certificate must chain to, in place of
    /// the public web PKI roots (for Redis behind a private CA).
    pub ca_certificate: Option<Vec<u8>>,
}

/// `[session]`
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Cookie name (gets the `__Host-` prefix when `public_url` is https).
    pub cookie_name: String,
    /// Sliding idle timeout.
    pub idle_timeout: Duration,
    /// Absolute lifetime.
    pub max_lifetime: Duration,
    /// Bound on staleness of the in-process cache.
    pub cache_ttl: Duration,
}

/// The header names idgate sets on forwarded requests (`[identity.headers]`).
#[derive(Debug, Clone)]
pub struct HeaderNames {
    /// Local user id.
    pub user_id: http::HeaderName,
    /// Group (company) id.
    pub group_id: http::HeaderName,
    /// Tenant id.
    pub tenant: http::HeaderName,
    /// Email.
    pub email: http::HeaderName,
    /// Display name.
    pub name: http::HeaderName,
    /// Role.
    pub role: http::HeaderName,
    /// Signed JWT.
    pub assertion: http::HeaderName,
    /// The session's group, then the user's other groups, comma-separated.
    pub groups: http::HeaderName,
    /// `groups` + `-Truncated`: set when the group list was cut.
    pub groups_truncated: http::HeaderName,
    /// [`defaults::AUTH_HEADER`].
    pub auth: http::HeaderName,
}

impl HeaderNames {
    /// Every identity header: the eight configurable ones in [`defaults::HEADERS`]
    /// order, then the two derived ones. All are stripped from client requests.
    pub fn all(&self) -> [&http::HeaderName; 10] {
        [
            &self.user_id,
            &self.group_id,
            &self.tenant,
            &self.email,
            &self.name,
            &self.role,
            &self.assertion,
            &self.groups,
            &self.groups_truncated,
            &self.auth,
        ]
    }
}

/// `[identity]`
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// PEM private key; `None` means an ephemeral key (memory store only).
    pub signing_key: Option<Secret>,
    /// JWT `aud`.
    pub audience: String,
    /// JWT lifetime.
    pub ttl: Duration,
    /// Older keys still published in the JWKS.
    pub previous_keys: Vec<Secret>,
    /// Header names.
    pub headers: HeaderNames,
}

/// `[access]`
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// `[[access.rules]]` compiled, `public_paths` first as public rules (SPEC §9).
    pub rules: crate::access::Rules,
    /// Path prefixes forwarded without a session.
    pub public_paths: Vec<String>,
    /// Path prefixes that get 401 JSON rather than a login redirect.
    pub api_paths: Vec<String>,
    /// Header names removed from every request, in any spelling.
    pub strip_headers: Vec<http::HeaderName>,
    /// Login starts allowed per client address and tenant per minute (also the burst).
    pub login_starts_per_minute: u32,
}

/// Where the IdP's settings come from.
#[derive(Debug, Clone)]
pub enum IdpSource {
    /// `idp_entity_id` + `idp_sso_url` + `idp_certificate`.
    Explicit {
        /// IdP entity id (expected Issuer).
        entity_id: String,
        /// SSO endpoint (HTTP-Redirect binding).
        sso_url: url::Url,
        /// PEM certificates; several for rollover.
        certificates: Vec<String>,
    },
    /// `idp_metadata`: the metadata XML, read from its reference.
    Metadata(String),
    /// `idp_metadata_url`: fetched at start and refreshed in the background, so the
    /// IdP's certificates can roll over without a config change.
    Url(MetadataUrl),
}

/// Where and how a tenant's IdP metadata is fetched (`idp_metadata_url` and its keys).
#[derive(Debug, Clone)]
pub struct MetadataUrl {
    /// https, or http for a loopback host or signed metadata.
    pub url: url::Url,
    /// The longest time between two fetches; the metadata's `validUntil` and
    /// `cacheDuration` shorten it.
    pub refresh: Duration,
    /// PEM certificates the metadata's own signature must verify with, when set.
    pub signer: Option<Vec<String>>,
}

/// SAML attribute names mapped to idgate fields.
#[derive(Debug, Clone)]
pub struct AttributeMap {
    /// → user id
    pub user_id: String,
    /// → email
    pub email: String,
    /// → given name
    pub first_name: String,
    /// → family name
    pub last_name: String,
    /// → group id
    pub group_id: String,
    /// → group name
    pub group_name: String,
    /// → role
    pub role: String,
}

/// `[tenants.saml]`
#[derive(Debug, Clone)]
pub struct SamlConfig {
    /// IdP settings.
    pub idp: IdpSource,
    /// Our entity id (AuthnRequest Issuer, expected Audience).
    pub sp_entity_id: String,
    /// The IdP's SAML SingleLogoutService (HTTP-Redirect); from the IdP metadata when
    /// unset. Used only with `sp_key`, which signs the logout messages.
    pub idp_slo_url: Option<url::Url>,
    /// Where the browser lands after a logout (a same-origin path or an absolute URL);
    /// `/_idgate/logged-out` when unset.
    pub after_logout_url: Option<String>,
    /// Accept unsolicited responses.
    pub allow_idp_initiated: bool,
    /// Require the Assertion itself to be signed.
    pub want_assertions_signed: bool,
    /// Accept SHA-1 signatures (legacy IdPs).
    pub allow_sha1: bool,
    /// The SP's own key and certificate (`sp_key`, `sp_certificate`): what IdPs encrypt
    /// assertions to. None: encrypted assertions cannot be read and are refused.
    pub sp_key: Option<SpKeyPair>,
    /// `sp_previous_keys`: older SP private keys (PEM) still tried for decryption, so
    /// that an IdP that has not yet fetched the new metadata keeps working.
    pub sp_previous_keys: Vec<Secret>,
    /// Refuse a plaintext assertion (reason `unencrypted`).
    pub require_encrypted_assertions: bool,
    /// Accept RSA PKCS#1 v1.5 key transport, which is open to padding-oracle attacks
    /// (Bleichenbacher); only for IdPs that can do nothing else.
    pub allow_rsa1_5: bool,
    /// `sign_requests`: AuthnRequests go out signed with `sp_key` (default: whenever
    /// there is one).
    pub sign_requests: bool,
    /// `name_id_format`, as the URN the AuthnRequest's NameIDPolicy asks for.
    pub name_id_format: String,
    /// Attribute mapping.
    pub attributes: AttributeMap,
}

/// An SP private key with its certificate, checked at load to belong together.
#[derive(Debug, Clone)]
pub struct SpKeyPair {
    /// The private key, PEM (RSA or EC).
    pub key: Secret,
    /// The certificate, PEM, as published in SP metadata.
    pub certificate: String,
}

/// `[tenants.provisioning]`
#[derive(Debug, Clone)]
pub struct ProvisioningConfig {
    /// Create unknown groups on login.
    pub create_groups: bool,
    /// Create unknown users on login.
    pub create_users: bool,
    /// Link an unknown user id to the one user with the same email.
    pub link_by_email: bool,
    /// Role when the IdP sends none.
    pub default_role: String,
}

/// How the display name is composed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameOrder {
    /// "Given Family"
    GivenFamily,
    /// "Family Given"
    FamilyGiven,
}

/// `[tenants.scim]`
#[derive(Debug, Clone)]
pub struct ScimConfig {
    /// SHA-256 of the bearer token. Only the hash is kept, so a plain token given by
    /// reference is hashed at load and compared in constant time as a hash.
    pub token_sha256: [u8; 32],
    /// Hashes of tokens still accepted while an IdP moves to the new one, so a token
    /// can be rotated without a window of 401s.
    pub previous_token_sha256: Vec<[u8; 32]>,
    /// Display-name composition.
    pub name_order: NameOrder,
}

/// Maestrano `recheck_fail_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecheckFailMode {
    /// Keep the session while Maestrano is unreachable.
    Keep,
    /// End the session while Maestrano is unreachable.
    Logout,
}

/// Maestrano `user_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserMode {
    /// Local user id = Maestrano uid.
    Real,
    /// Local user id = `<uid>.<group_uid>`.
    Virtual,
}

/// Maestrano billing mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingMode {
    /// No billing.
    None,
    /// One recurring bill per group.
    Flat,
    /// One recurring bill per user.
    PerUser,
}

/// `[tenants.maestrano.billing]`
#[derive(Debug, Clone)]
pub struct BillingConfig {
    /// Mode.
    pub mode: BillingMode,
    /// Price in cents.
    pub price_cents: u64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Maestrano period name (Day, Week, SemiMonth, Month, Year).
    pub period: String,
    /// Bill description.
    pub description: String,
}

/// `[tenants.maestrano]`
#[derive(Debug, Clone)]
pub struct MaestranoConfig {
    /// API id (also the SP entity id by default).
    pub api_id: String,
    /// API key.
    pub api_key: Secret,
    /// Maestrano API base URL.
    pub api_host: url::Url,
    /// Connec! base URL.
    pub connec_host: url::Url,
    /// Re-check the Maestrano session.
    pub session_recheck: bool,
    /// What an unreachable Maestrano means.
    pub recheck_fail_mode: RecheckFailMode,
    /// Local user id form.
    pub user_mode: UserMode,
    /// Upstream path for Connec! notifications.
    pub connec_forward_path: String,
    /// Billing.
    pub billing: BillingConfig,
}

/// One `[[tenants]]` entry.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// `[a-z0-9-]+`
    pub id: String,
    /// Lower-cased host names that resolve to this tenant.
    pub hosts: Vec<String>,
    /// Serves requests whose Host matches no tenant.
    pub default: bool,
    /// SAML.
    pub saml: SamlConfig,
    /// Provisioning rules.
    pub provisioning: ProvisioningConfig,
    /// SCIM, when enabled.
    pub scim: Option<ScimConfig>,
    /// Maestrano, when this is a Maestrano tenant.
    pub maestrano: Option<MaestranoConfig>,
    /// Issuers whose JWTs machine clients may present instead of a session.
    pub bearer: Vec<BearerConfig>,
    /// Added by Maestrano's developer platform rather than written in the config file.
    pub from_devpl: bool,
}

/// `[[tenants.bearer]]`: an issuer of JWTs that machine clients present as
/// `Authorization: Bearer` (SPEC §9).
#[derive(Debug, Clone)]
pub struct BearerConfig {
    /// The exact `iss` a token must carry; also how a token finds its issuer.
    pub issuer: String,
    /// A value the token's `aud` must hold.
    pub audience: String,
    /// Where the issuer's public keys come from.
    pub keys: JwksSource,
    /// Signature algorithms accepted: asymmetric ones only, so a public key can never
    /// be used as an HMAC secret, and never `none`.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// The claim naming the user (default `sub`).
    pub user_claim: String,
    /// The claim naming the group, if any.
    pub group_claim: Option<String>,
    /// The claim holding the email (default `email`).
    pub email_claim: String,
    /// The claim holding the role, if any (else the tenant's default role).
    pub role_claim: Option<String>,
    /// The claim holding the display name (default `name`).
    pub name_claim: String,
    /// Pass the client's `Authorization` header to the app.
    pub forward_authorization: bool,
}

/// Where a bearer issuer's keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// Fetched (and refetched) over HTTP(S).
    Url {
        /// The JWKS document's URL.
        url: url::Url,
        /// A private CA to verify the issuer's TLS certificate against (PEM), in place
        /// of the public roots.
        ca_certificate: Option<Vec<u8>>,
    },
    /// A JWKS document read once at load (`jwks = "file:…"`).
    Static(jsonwebtoken::jwk::JwkSet),
}

/// `[maestrano_devpl]`
#[derive(Debug, Clone)]
pub struct DevplConfig {
    /// Developer platform URL.
    pub host: url::Url,
    /// Environment key.
    pub env_key: Secret,
    /// Environment secret.
    pub env_secret: Secret,
    /// Refresh interval.
    pub refresh: Duration,
}

/// `[telemetry]`: OpenTelemetry tracing (SPEC §10).
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The collector's base URL (spans go to `{otlp_endpoint}/v1/traces`); `None` turns
    /// tracing off.
    pub otlp_endpoint: Option<url::Url>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces (those without a sampled incoming parent) that are recorded,
    /// 0.0 to 1.0.
    pub sample_ratio: f64,
}

impl TelemetryConfig {
    /// Where spans are POSTed: the endpoint's path with `/v1/traces` appended.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_ref()?;
        Some(format!("{}/v1/traces", base.as_str().trim_end_matches('/')))
    }
}

impl Config {
    /// Where the tenant's IdP posts SAML responses: Maestrano's consume path for a
    /// Maestrano tenant (what its dev platform is configured with), else idgate's own.
    pub fn acs_url(&self, tenant: &TenantConfig) -> String {
        let root = self.server.public_url.as_str().trim_end_matches('/');
        if tenant.maestrano.is_some() {
            format!("{root}/maestrano/auth/saml/consume/{}", tenant.id)
        } else {
            format!("{root}/_idgate/saml/{}/acs", tenant.id)
        }
    }

    /// Reads and validates a config file. Relative `file:` references resolve against
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read config file {}: {e}", path.display()),
            }])
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Config::from_toml(&text, base)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let mut config = validate::from_toml(text, base_dir)?;
        config.source = Source(text.to_owned(), base_dir.to_owned());
        Ok(config)
    }

    /// The tenant that serves requests matching no host: the one marked `default`, or
    /// the only one.
    pub fn default_tenant(&self) -> Option<&TenantConfig> {
        match self.tenants.as_slice() {
            [only] => Some(only),
            many => many.iter().find(|t| t.default),
        }
    }
}

#[cfg(test)]
mod tests;
