//! Turns the raw config into a [`Config`], gathering every error with its key path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::raw::*;
use super::*;

/// Collects errors; each check records and carries on with a fallback value, so that one
/// run reports everything.
struct Checker<'a> {
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
    base_dir: &'a Path,
}

impl Checker<'_> {
    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, value: Option<&str>, default: &str) -> Duration {
        let text = value.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.err(path, "must be greater than zero");
                Duration::from_secs(1)
            }
            Ok(d) => d,
            Err(e) => {
                self.err(
                    path,
                    format!(
                        "invalid duration {text:?} ({e}); use forms like \"90s\", \"5m\", \"8h\""
                    ),
                );
                Duration::from_secs(1)
            }
        }
    }

    fn socket_addr(&mut self, path: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        listen_addr(text).unwrap_or_else(|message| {
            self.err(path, message);
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn secret(&mut self, path: &str, reference: &str) -> Option<Secret> {
        match Secret::resolve(reference, self.base_dir) {
            Ok(s) => Some(s),
            Err(message) => {
                self.err(path, message);
                None
            }
        }
    }

    fn required_secret(&mut self, path: &str, reference: Option<&str>) -> Option<Secret> {
        match reference {
            Some(r) => self.secret(path, r),
            None => {
                self.err(path, "missing: required");
                None
            }
        }
    }

    /// An absolute http(s) URL.
    fn web_url(&mut self, path: &str, value: &str) -> Option<url::Url> {
        match url::Url::parse(value) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
                Some(u)
            }
            Ok(_) => {
                self.err(
                    path,
                    format!("{value:?} must be an absolute http:// or https:// URL"),
                );
                None
            }
            Err(e) => {
                self.err(path, format!("malformed URL {value:?}: {e}"));
                None
            }
        }
    }

    fn path_prefixes(&mut self, path: &str, values: Option<Vec<String>>) -> Vec<String> {
        let mut out = Vec::new();
        for (i, p) in values.unwrap_or_default().into_iter().enumerate() {
            if !p.starts_with('/') {
                self.err(format!("{path}[{i}]"), format!("{p:?} must start with '/'"));
            } else if p.split('/').any(|seg| seg == "." || seg == "..") {
                self.err(
                    format!("{path}[{i}]"),
                    format!("{p:?} must not contain dot segments"),
                );
            } else {
                out.push(p);
            }
        }
        out
    }

    fn one_of<T: Copy>(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        let Some(v) = value else { return default };
        match choices.iter().find(|(name, _)| *name == v) {
            Some((_, t)) => *t,
            None => {
                let names: Vec<_> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
                self.err(path, format!("{v:?} is not one of {}", names.join(", ")));
                default
            }
        }
    }
}

/// Formats serde_ignored's path in the same `a.b[1].c` form as our other errors.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        P::Map { parent, key } => {
            let p = key_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            key_path(parent)
        }
    }
}

pub(super) fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let fail = |message: String| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message,
        }])
    };
    let de = toml::Deserializer::parse(text).map_err(|e| fail(format!("invalid TOML: {e}")))?;
    let mut unknown = Vec::new();
    let raw: RawConfig = serde_ignored::deserialize(de, |p| unknown.push(key_path(&p)))
        .map_err(|e| fail(format!("invalid config: {e}")))?;
    let mut c = Checker {
        errors: unknown
            .into_iter()
            .map(|path| ConfigError {
                path,
                message: "unknown key".into(),
            })
            .collect(),
        warnings: Vec::new(),
        base_dir,
    };
    let mut config = build(&mut c, raw);
    if c.errors.is_empty() {
        config.warnings = c.warnings;
        Ok(config)
    } else {
        Err(ConfigErrors(c.errors))
    }
}

/// A listen address as `IP:PORT` or `HOST:PORT` (`localhost:8080`, as people write it).
/// A host name is resolved once, here; of its addresses the first IPv4 one is taken,
/// because `localhost` resolves to `::1` first on many systems and a listener on `::1`
/// alone would not answer the `127.0.0.1` that browsers and tools try for it.
pub fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let expected = "expected IP:PORT or HOST:PORT (such as 0.0.0.0:8080 or localhost:8080)";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("invalid listen address {text:?}; {expected}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("invalid listen address {text:?}; {expected}"));
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("listen address {text:?}: cannot resolve {host:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("listen address {text:?}: {host:?} resolves to no address"))
}

fn build(c: &mut Checker<'_>, raw: RawConfig) -> Config {
    let server = server(c, raw.server);
    let store = store(c, raw.store);
    let session = session(c, raw.session);
    let key_given = raw.identity.signing_key.is_some();
    let identity = identity(c, raw.identity);
    if !key_given && store.url != StoreUrl::Memory {
        c.err(
            "identity.signing_key",
            "required when [store].url is not memory://: every replica must sign with the same key",
        );
    }
    let public_paths = c.path_prefixes("access.public_paths", raw.access.public_paths);
    let tenant_ids: Vec<String> = raw.tenants.iter().filter_map(|t| t.id.clone()).collect();
    let rules = access_rules(
        c,
        raw.access.rules.unwrap_or_default(),
        &public_paths,
        &tenant_ids,
        raw.maestrano_devpl.is_some(),
    );
    let access = AccessConfig {
        rules,
        public_paths,
        api_paths: c.path_prefixes("access.api_paths", raw.access.api_paths),
        strip_headers: strip_headers(c, raw.access.strip_headers),
        login_starts_per_minute: login_starts_per_minute(c, raw.access.login_starts_per_minute),
    };
    let tenants = tenants(c, raw.tenants, &server);
    // One (issuer, audience) per deployment: a token made for one tenant must not be
    // valid on another's host because both trust the same issuer.
    let mut seen: HashMap<(&str, &str), &str> = HashMap::new();
    for (i, t) in tenants.iter().enumerate() {
        for (j, b) in t.bearer.iter().enumerate() {
            if let Some(other) = seen.insert((&b.issuer, &b.audience), &t.id)
                && other != t.id
            {
                c.err(
                    format!("tenants[{i}].bearer[{j}].audience"),
                    format!(
                        "tenant {other:?} trusts the same issuer with the same audience: its tokens would be valid here too; give each tenant its own audience"
                    ),
                );
            }
        }
    }
    let maestrano_devpl = raw.maestrano_devpl.map(|d| devpl(c, d));
    let telemetry = telemetry(c, raw.telemetry);
    Config {
        server,
        store,
        session,
        identity,
        access,
        tenants,
        maestrano_devpl,
        telemetry,
        source: super::Source::default(),
        warnings: Vec::new(),
    }
}

/// A `public_url` that browsers cannot follow fails late and silently: the IdP posts to
/// an ACS on `localhost:8080` and the browser ends on a connection error. Warn at start
/// when it is unset or names this machine while idgate listens beyond loopback, and when
/// it is unset while the listener is on another port than the default URL names.
fn public_url_warning(c: &mut Checker<'_>, given: bool, public_url: &url::Url, listen: SocketAddr) {
    let loopback_host = match public_url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.');
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    let consequence = "the IdP sends browsers to ACS URLs derived from it \
        (and SP metadata, cookies and redirects use it); set it to the URL people reach the app at";
    if !listen.ip().is_loopback() && (!given || loopback_host) {
        let what = if given {
            format!(
                "{} names this machine",
                public_url.as_str().trim_end_matches('/')
            )
        } else {
            format!("is unset (default {})", defaults::PUBLIC_URL)
        };
        c.warn(
            "server.public_url",
            format!("{what} while listen is {listen}, which is reachable from other machines: {consequence}"),
        );
    } else if !given && public_url.port_or_known_default() != Some(listen.port()) {
        c.warn(
            "server.public_url",
            format!(
                "is unset (default {}) while listen is {listen}, another port: {consequence}",
                defaults::PUBLIC_URL
            ),
        );
    }
}

/// `[[access.rules]]` (SPEC §9), with `public_paths` put first as public rules: a path
/// an operator made public stays public whatever the rules say. (`api_paths` only
/// change how a missing session is answered, so they are not rules that decide: placed
/// first, `/api` would admit everyone to a stricter `/api/admin` rule after it.)
fn access_rules(
    c: &mut Checker<'_>,
    raw: Vec<RawRule>,
    public_paths: &[String],
    tenant_ids: &[String],
    dynamic_tenants: bool,
) -> crate::access::Rules {
    use crate::access::{PathMatch, Rule};
    let none = || -> Box<[Box<str>]> { Box::new([]) };
    let mut rules: Vec<(String, Rule)> = public_paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                format!("access.public_paths[{i}]"),
                Rule {
                    name: format!("public_paths {p}").into(),
                    path: PathMatch::Prefix(p.as_str().into()),
                    methods: None,
                    tenants: None,
                    public: true,
                    api: false,
                    allow_groups: none(),
                    allow_roles: none(),
                    allow_users: none(),
                },
            )
        })
        .collect();
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("access.rules[{i}]");
        let name = match r.name {
            Some(n)
                if !n.trim().is_empty() && !n.chars().any(char::is_control) && n.len() <= 100 =>
            {
                n
            }
            Some(n) => {
                c.err(
                    format!("{at}.name"),
                    format!("{n:?} must be 1 to 100 printable characters"),
                );
                continue;
            }
            None => {
                c.err(
                    format!("{at}.name"),
                    "missing: every rule has a name, shown in logs and refusals",
                );
                continue;
            }
        };
        let path = match (r.path, r.path_regex) {
            (Some(p), None) => {
                let before = c.errors.len();
                match c.path_prefixes(&format!("{at}.path"), Some(vec![p])).pop() {
                    Some(p) => PathMatch::Prefix(p.into()),
                    None => {
                        // path_prefixes reported it under `…path[0]`; say it plainly.
                        if let Some(e) = c.errors.get_mut(before) {
                            e.path = format!("{at}.path");
                        }
                        continue;
                    }
                }
            }
            (None, Some(re)) => match regex::RegexBuilder::new(&re).size_limit(1 << 20).build() {
                Ok(compiled) => PathMatch::Regex(compiled),
                Err(e) => {
                    c.err(
                        format!("{at}.path_regex"),
                        format!("invalid regex {re:?}: {e}"),
                    );
                    continue;
                }
            },
            (Some(_), Some(_)) => {
                c.err(at.clone(), "set path or path_regex, not both");
                continue;
            }
            (None, None) => {
                c.err(at.clone(), "needs path or path_regex");
                continue;
            }
        };
        let methods = match r.methods {
            None => None,
            Some(ms) if ms.is_empty() => {
                c.err(
                    format!("{at}.methods"),
                    "empty: leave it out to cover every method",
                );
                continue;
            }
            Some(ms) => {
                let mut out = Vec::new();
                for (j, m) in ms.iter().enumerate() {
                    match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                        Ok(method) if !m.is_empty() => out.push(method),
                        _ => c.err(
                            format!("{at}.methods[{j}]"),
                            format!("{m:?} is not an HTTP method"),
                        ),
                    }
                }
                Some(out.into_boxed_slice())
            }
        };
        let tenants = match r.tenants {
            None => None,
            Some(ts) if ts.is_empty() => {
                c.err(
                    format!("{at}.tenants"),
                    "empty: leave it out to cover every tenant",
                );
                continue;
            }
            Some(ts) => {
                for (j, t) in ts.iter().enumerate() {
                    if tenant_ids.contains(t) {
                        continue;
                    }
                    if dynamic_tenants {
                        c.warn(
                            format!("{at}.tenants[{j}]"),
                            format!("{t:?} is not a configured tenant; it may come from Maestrano's developer platform"),
                        );
                    } else {
                        c.err(
                            format!("{at}.tenants[{j}]"),
                            format!("{t:?} is not a configured tenant"),
                        );
                    }
                }
                Some(ts.into_iter().map(String::into_boxed_str).collect())
            }
        };
        let list = |v: Option<Vec<String>>| -> Box<[Box<str>]> {
            v.unwrap_or_default()
                .into_iter()
                .map(String::into_boxed_str)
                .collect()
        };
        let rule = Rule {
            name: name.into(),
            path,
            methods,
            tenants,
            public: r.public.unwrap_or(false),
            api: r.api.unwrap_or(false),
            allow_groups: list(r.allow_groups),
            allow_roles: list(r.allow_roles),
            allow_users: list(r.allow_users),
        };
        let restricts = !(rule.allow_groups.is_empty()
            && rule.allow_roles.is_empty()
            && rule.allow_users.is_empty());
        if rule.public && (restricts || rule.api) {
            c.err(
                at.clone(),
                "a public rule forwards without identity, so it cannot also set api or allow_* lists",
            );
            continue;
        }
        rules.push((at, rule));
    }
    for (j, (at, rule)) in rules.iter().enumerate() {
        if let Some((_, earlier)) = rules[..j].iter().find(|(_, e)| rule.shadowed_by(e)) {
            c.warn(
                at.clone(),
                format!(
                    "rule {:?} never decides: every request it covers is covered by the earlier rule {:?}",
                    rule.name, earlier.name
                ),
            );
        }
    }
    crate::access::Rules::new(rules.into_iter().map(|(_, r)| r).collect())
}

/// `[access].strip_headers`: valid header names, none that HTTP or idgate itself gives
/// meaning to (stripping `Host` or `X-Forwarded-For` would break every request).
fn strip_headers(c: &mut Checker<'_>, raw: Option<Vec<String>>) -> Vec<http::HeaderName> {
    let Some(names) = raw else {
        return defaults::STRIP_HEADERS
            .iter()
            .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
    };
    let mut out = Vec::with_capacity(names.len());
    for (i, text) in names.iter().enumerate() {
        let path = format!("access.strip_headers[{i}]");
        match http::HeaderName::from_bytes(text.as_bytes()) {
            Ok(name) if crate::proxy::headers::is_reserved_by_http(&name) => c.err(
                path,
                format!("{text:?} is a standard HTTP header that requests need"),
            ),
            Ok(name) => out.push(name),
            Err(_) => c.err(path, format!("{text:?} is not a valid header name")),
        }
    }
    out
}

fn login_starts_per_minute(c: &mut Checker<'_>, raw: Option<i64>) -> u32 {
    let path = "access.login_starts_per_minute";
    match raw {
        None => defaults::LOGIN_STARTS_PER_MINUTE,
        Some(n) if n < 1 => {
            c.err(path, format!("{n} must be at least 1"));
            defaults::LOGIN_STARTS_PER_MINUTE
        }
        Some(n) => u32::try_from(n).unwrap_or_else(|_| {
            c.err(path, format!("{n} is too large"));
            defaults::LOGIN_STARTS_PER_MINUTE
        }),
    }
}

fn server(c: &mut Checker<'_>, raw: RawServer) -> ServerConfig {
    let upstream_text = raw.upstream.as_deref().unwrap_or(defaults::UPSTREAM);
    let upstream = match upstream_text.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => {
            if u.path() != "/" && !u.path().is_empty() || u.query().is_some() {
                c.err(
                    "server.upstream",
                    format!(
                        "{upstream_text:?} must not have a path or query; requests keep their own"
                    ),
                );
            }
            u
        }
        Ok(u) if u.scheme_str() == Some("https") => {
            c.err(
                "server.upstream",
                format!("{upstream_text:?}: https upstreams are not supported; the app is reached over loopback or the pod network with http://"),
            );
            u
        }
        _ => {
            c.err(
                "server.upstream",
                format!("malformed upstream URL {upstream_text:?}; expected http://host:port"),
            );
            http::Uri::from_static("http://127.0.0.1:3000")
        }
    };
    let public_text = raw.public_url.as_deref().unwrap_or(defaults::PUBLIC_URL);
    let public_url = match c.web_url("server.public_url", public_text) {
        Some(u) if u.path() != "/" || u.query().is_some() || u.fragment().is_some() => {
            c.err(
                "server.public_url",
                format!("{public_text:?} must be a bare origin such as https://app.example.com (no path)"),
            );
            u
        }
        Some(u) => u,
        None => url::Url::parse(defaults::PUBLIC_URL).expect("default is a valid URL"),
    };
    let listen = c.socket_addr("server.listen", raw.listen.as_deref(), defaults::LISTEN);
    public_url_warning(c, raw.public_url.is_some(), &public_url, listen);
    let mut trusted_proxies = Vec::new();
    for (i, cidr) in raw.trusted_proxies.unwrap_or_default().iter().enumerate() {
        let parsed = cidr
            .parse::<ipnet::IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net.trunc()),
            Err(_) => c.err(
                format!("server.trusted_proxies[{i}]"),
                format!("{cidr:?} is not a CIDR such as 10.0.0.0/8 or an IP address"),
            ),
        }
    }
    let workers = match raw.workers {
        None | Some(0) => default_workers(),
        Some(n) if (1..=1024).contains(&n) => n as usize,
        Some(n) => {
            c.err(
                "server.workers",
                format!("{n} is not between 0 (automatic) and 1024"),
            );
            1
        }
    };
    let max_connections = match raw.max_connections {
        None => defaults::MAX_CONNECTIONS as usize,
        Some(n) if (1..=1_000_000).contains(&n) => n as usize,
        Some(n) => {
            c.err(
                "server.max_connections",
                format!("{n} is not between 1 and 1000000"),
            );
            defaults::MAX_CONNECTIONS as usize
        }
    };
    let admin_token_sha256 = raw
        .admin_token
        .as_deref()
        .and_then(|t| scim_token(c, "server.admin_token", Some(t)));
    ServerConfig {
        watch_config: raw.watch_config.unwrap_or(false),
        admin_token_sha256,
        workers,
        max_connections,
        listen,
        admin_listen: c.socket_addr(
            "server.admin_listen",
            raw.admin_listen.as_deref(),
            defaults::ADMIN_LISTEN,
        ),
        upstream,
        public_url,
        connect_timeout: c.duration(
            "server.connect_timeout",
            raw.connect_timeout.as_deref(),
            defaults::CONNECT_TIMEOUT,
        ),
        upstream_timeout: c.duration(
            "server.upstream_timeout",
            raw.upstream_timeout.as_deref(),
            defaults::UPSTREAM_TIMEOUT,
        ),
        shutdown_grace: c.duration(
            "server.shutdown_grace",
            raw.shutdown_grace.as_deref(),
            defaults::SHUTDOWN_GRACE,
        ),
        trusted_proxies,
    }
}

fn store(c: &mut Checker<'_>, raw: RawStore) -> StoreConfig {
    let given = raw.url.as_deref().unwrap_or(defaults::STORE_URL);
    // A URL with a password is a secret: like every secret it may be an `env:` or
    // `file:` reference, so that it can live in a Kubernetes Secret, not a ConfigMap.
    let resolved = (given.starts_with("env:") || given.starts_with("file:"))
        .then(|| c.secret("store.url", given));
    let text = match &resolved {
        None => given,
        Some(Some(secret)) => secret.expose().trim(),
        // Already reported; the rest of [store] is still checked.
        Some(None) => "memory://",
    };
    let url = if text == "memory://" {
        StoreUrl::Memory
    } else if text.starts_with("redis://") || text.starts_with("rediss://") {
        match url::Url::parse(text) {
            Ok(u) if u.host().is_some() => StoreUrl::Redis(text.to_owned()),
            _ => {
                c.err(
                    "store.url",
                    format!("malformed Redis URL {:?}", redact_url(text)),
                );
                StoreUrl::Memory
            }
        }
    } else if let Some(rest) = text
        .strip_prefix("redis+cluster://")
        .map(|r| ("redis", r))
        .or_else(|| {
            text.strip_prefix("rediss+cluster://")
                .map(|r| ("rediss", r))
        })
    {
        let (scheme, rest) = rest;
        // Credentials, if any, apply to every node: `redis+cluster://user:pw@h1:7000,h2:7001`.
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), rest),
        };
        let hosts = hosts.trim_end_matches('/');
        let mut nodes = Vec::new();
        for (i, node) in hosts.split(',').enumerate() {
            let ok = node
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if ok {
                nodes.push(format!("{scheme}://{userinfo}{node}"));
            } else {
                c.err(
                    "store.url",
                    format!("cluster node {i} ({node:?}) is not host:port"),
                );
            }
        }
        StoreUrl::Cluster(nodes)
    } else {
        let scheme = text.split("://").next().unwrap_or(text);
        c.err(
            "store.url",
            format!(
                "unknown store scheme {scheme:?}; use memory://, redis://, rediss:// or redis+cluster://"
            ),
        );
        StoreUrl::Memory
    };
    let key_prefix = raw
        .key_prefix
        .unwrap_or_else(|| defaults::KEY_PREFIX.into());
    if key_prefix.is_empty()
        || !key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        c.err(
            "store.key_prefix",
            format!("{key_prefix:?} must be non-empty and use only letters, digits and - _ . :"),
        );
    }
    let fail_mode = c.one_of(
        "store.fail_mode",
        raw.fail_mode.as_deref(),
        FailMode::Closed,
        &[("closed", FailMode::Closed), ("cached", FailMode::Cached)],
    );
    let ca_certificate = raw.ca_certificate.as_deref().and_then(|reference| {
        let tls = match &url {
            StoreUrl::Redis(u) => u.starts_with("rediss://"),
            StoreUrl::Cluster(nodes) => nodes.iter().all(|n| n.starts_with("rediss://")),
            StoreUrl::Memory => false,
        };
        if !tls {
            c.err(
                "store.ca_certificate",
                "applies only to rediss:// and rediss+cluster:// URLs",
            );
            return None;
        }
        if text.ends_with("#insecure") {
            c.err(
                "store.ca_certificate",
                "contradicts #insecure in store.url: verify against this CA, or not at all",
            );
            return None;
        }
        let pem = c.secret("store.ca_certificate", reference)?;
        if !pem.expose().contains("-----BEGIN CERTIFICATE-----") {
            c.err(
                "store.ca_certificate",
                "is not a PEM certificate (-----BEGIN CERTIFICATE-----)",
            );
            return None;
        }
        Some(pem.expose().as_bytes().to_vec())
    });
    StoreConfig {
        url,
        key_prefix,
        fail_mode,
        ca_certificate,
    }
}

/// Hides a password in a URL before it goes into an error message.
pub(crate) fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ if text.contains('@') => "<URL with credentials>".into(),
        _ => text.into(),
    }
}

fn session(c: &mut Checker<'_>, raw: RawSession) -> SessionConfig {
    let cookie_name = raw
        .cookie_name
        .unwrap_or_else(|| defaults::COOKIE_NAME.into());
    if cookie_name.is_empty()
        || !cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        c.err(
            "session.cookie_name",
            format!("{cookie_name:?} must use only letters, digits, '_' and '-'"),
        );
    }
    let idle_timeout = c.duration(
        "session.idle_timeout",
        raw.idle_timeout.as_deref(),
        defaults::IDLE_TIMEOUT,
    );
    let max_lifetime = c.duration(
        "session.max_lifetime",
        raw.max_lifetime.as_deref(),
        defaults::MAX_LIFETIME,
    );
    if idle_timeout > max_lifetime {
        c.err(
            "session.idle_timeout",
            "must not exceed session.max_lifetime",
        );
    }
    SessionConfig {
        cookie_name,
        idle_timeout,
        max_lifetime,
        cache_ttl: c.duration(
            "session.cache_ttl",
            raw.cache_ttl.as_deref(),
            defaults::CACHE_TTL,
        ),
    }
}

fn is_private_key_pem(text: &str) -> bool {
    text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----")
}

fn identity(c: &mut Checker<'_>, raw: RawIdentity) -> IdentityConfig {
    let signing_key = raw.signing_key.as_deref().and_then(|r| {
        let s = c.secret("identity.signing_key", r)?;
        if !is_private_key_pem(s.expose()) {
            c.err("identity.signing_key", "not a PEM private key");
        }
        Some(s)
    });
    let mut previous_keys = Vec::new();
    for (i, r) in raw.previous_keys.unwrap_or_default().iter().enumerate() {
        let path = format!("identity.previous_keys[{i}]");
        if let Some(s) = c.secret(&path, r) {
            if !(is_private_key_pem(s.expose()) || s.expose().contains("PUBLIC KEY-----")) {
                c.err(path, "not a PEM key");
            }
            previous_keys.push(s);
        }
    }
    let audience = raw.audience.unwrap_or_else(|| defaults::AUDIENCE.into());
    if audience.is_empty() {
        c.err("identity.audience", "must not be empty");
    }
    let h = raw.headers;
    let given = [
        ("user_id", h.user_id),
        ("group_id", h.group_id),
        ("tenant", h.tenant),
        ("email", h.email),
        ("name", h.name),
        ("role", h.role),
        ("assertion", h.assertion),
        ("groups", h.groups),
    ];
    let mut names = Vec::with_capacity(8);
    let mut seen = HashMap::new();
    for ((key, value), default) in given.into_iter().zip(defaults::HEADERS) {
        let path = format!("identity.headers.{key}");
        let text = value.unwrap_or_else(|| default.into());
        let name = match http::HeaderName::from_bytes(text.as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                c.err(&path, format!("{text:?} is not a valid header name"));
                http::HeaderName::from_static("x-idgate-invalid")
            }
        };
        let folded = crate::proxy::headers::fold_name(name.as_str());
        if let Some(other) = seen.insert(folded, key) {
            c.err(&path, format!("same header as identity.headers.{other}"));
        }
        if crate::proxy::headers::is_reserved_by_http(&name) {
            c.err(
                &path,
                format!("{text:?} is a standard HTTP header and cannot carry identity"),
            );
        }
        names.push(name);
    }
    let mut it = names.into_iter();
    let mut next = || it.next().expect("eight names");
    let (user_id, group_id, tenant, email, name, role, assertion, groups) = (
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
    );
    // Derived from the configured name so that a renamed groups header keeps its
    // companion beside it; a name too long to extend is reported with the groups key.
    let groups_truncated = http::HeaderName::from_bytes(format!("{groups}-truncated").as_bytes())
        .unwrap_or_else(|_| {
            c.err(
                "identity.headers.groups",
                "too long to derive its -Truncated header from",
            );
            http::HeaderName::from_static("x-idgate-groups-truncated")
        });
    let auth = http::HeaderName::from_static("x-idgate-auth");
    for (derived, what) in [
        (
            &groups_truncated,
            "the groups header's -Truncated companion",
        ),
        (&auth, defaults::AUTH_HEADER),
    ] {
        let folded = crate::proxy::headers::fold_name(derived.as_str());
        if let Some(other) = seen.get(&folded) {
            c.err(
                format!("identity.headers.{other}"),
                format!("same header as {what}"),
            );
        }
    }
    let headers = HeaderNames {
        user_id,
        group_id,
        tenant,
        email,
        name,
        role,
        assertion,
        groups,
        groups_truncated,
        auth,
    };
    IdentityConfig {
        signing_key,
        audience,
        ttl: c.duration("identity.ttl", raw.ttl.as_deref(), defaults::IDENTITY_TTL),
        previous_keys,
        headers,
    }
}

fn tenants(c: &mut Checker<'_>, raw: Vec<RawTenant>, server: &ServerConfig) -> Vec<TenantConfig> {
    let mut out = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut hosts: HashMap<String, usize> = HashMap::new();
    let mut defaults_seen = Vec::new();
    for (i, t) in raw.into_iter().enumerate() {
        let p = format!("tenants[{i}]");
        let id = match t.id {
            Some(id) if is_tenant_id(&id) => id,
            Some(id) => {
                c.err(format!("{p}.id"), format!("{id:?} must match [a-z0-9-]+"));
                id
            }
            None => {
                c.err(format!("{p}.id"), "missing: required");
                String::new()
            }
        };
        if !id.is_empty()
            && let Some(first) = ids.insert(id.clone(), i)
        {
            c.err(
                format!("{p}.id"),
                format!("duplicate tenant id {id:?} (also tenants[{first}])"),
            );
        }
        let mut tenant_hosts = Vec::new();
        for (j, h) in t.hosts.unwrap_or_default().into_iter().enumerate() {
            let host = h.to_ascii_lowercase();
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                c.err(
                    format!("{p}.hosts[{j}]"),
                    format!("{h:?} is not a host name"),
                );
                continue;
            }
            if let Some(first) = hosts.insert(host.clone(), i)
                && first != i
            {
                c.err(
                    format!("{p}.hosts[{j}]"),
                    format!("host {host:?} is already claimed by tenants[{first}]"),
                );
            }
            tenant_hosts.push(host);
        }
        let default = t.default.unwrap_or(false);
        if default {
            defaults_seen.push(i);
        }
        let maestrano = t.maestrano.map(|m| maestrano(c, &p, m));
        let saml = match t.saml {
            Some(s) => saml(c, &p, s, &id, server, maestrano.as_ref()),
            None => {
                c.err(
                    format!("{p}.saml"),
                    "missing: a tenant needs its IdP signing certificate ([tenants.saml] with idp_certificate or idp_metadata)",
                );
                None
            }
        };
        let pr = t.provisioning;
        let provisioning = ProvisioningConfig {
            create_groups: pr.create_groups.unwrap_or(true),
            create_users: pr.create_users.unwrap_or(true),
            link_by_email: pr.link_by_email.unwrap_or(true),
            default_role: pr
                .default_role
                .unwrap_or_else(|| defaults::DEFAULT_ROLE.into()),
        };
        let scim = t.scim.map(|s| scim(c, &p, s)).and_then(|s| s);
        let bearer = bearer_issuers(c, &p, t.bearer.unwrap_or_default());
        if let Some(saml) = saml {
            out.push(TenantConfig {
                id,
                hosts: tenant_hosts,
                default,
                saml,
                provisioning,
                scim,
                maestrano,
                bearer,
                from_devpl: false,
            });
        }
    }
    if defaults_seen.len() > 1 {
        let list: Vec<_> = defaults_seen
            .iter()
            .map(|i| format!("tenants[{i}]"))
            .collect();
        c.err(
            format!("tenants[{}].default", defaults_seen[1]),
            format!("more than one default tenant: {}", list.join(", ")),
        );
    }
    out
}

fn is_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn pem_certificates(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(len) = rest[start..].find("-----END CERTIFICATE-----") else {
            break;
        };
        let end = start + len + "-----END CERTIFICATE-----".len();
        out.push(rest[start..end].to_owned());
        rest = &rest[end..];
    }
    out
}

fn saml(
    c: &mut Checker<'_>,
    p: &str,
    raw: RawSaml,
    tenant_id: &str,
    server: &ServerConfig,
    maestrano: Option<&MaestranoConfig>,
) -> Option<SamlConfig> {
    let p = format!("{p}.saml");
    let explicit =
        raw.idp_entity_id.is_some() || raw.idp_sso_url.is_some() || raw.idp_certificate.is_some();
    let idp = match (&raw.idp_metadata, explicit) {
        _ if raw.idp_metadata_url.is_some() => {
            metadata_url(c, &p, &raw, explicit).map(IdpSource::Url)
        }
        (Some(_), true) => {
            c.err(
                format!("{p}.idp_metadata"),
                "give either idp_metadata or idp_entity_id + idp_sso_url + idp_certificate, not both",
            );
            None
        }
        (Some(reference), false) => {
            let path = format!("{p}.idp_metadata");
            c.secret(&path, reference).and_then(|s| {
                if !s.expose().contains("X509Certificate") {
                    c.err(path, "the IdP metadata holds no signing certificate (X509Certificate); unsigned responses would be accepted");
                    None
                } else {
                    Some(IdpSource::Metadata(s.expose().to_owned()))
                }
            })
        }
        (None, _) => {
            let entity_id = raw.idp_entity_id.clone().filter(|s| !s.is_empty());
            if entity_id.is_none() {
                c.err(
                    format!("{p}.idp_entity_id"),
                    "missing: required without idp_metadata",
                );
            }
            let sso_url = match &raw.idp_sso_url {
                Some(u) => c.web_url(&format!("{p}.idp_sso_url"), u),
                None => {
                    c.err(
                        format!("{p}.idp_sso_url"),
                        "missing: required without idp_metadata",
                    );
                    None
                }
            };
            let certs = match &raw.idp_certificate {
                Some(r) => {
                    let path = format!("{p}.idp_certificate");
                    c.secret(&path, r).and_then(|s| {
                        let certs = pem_certificates(s.expose());
                        if certs.is_empty() {
                            c.err(
                                path,
                                "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
                            );
                            None
                        } else {
                            Some(certs)
                        }
                    })
                }
                None => {
                    c.err(
                        format!("{p}.idp_certificate"),
                        "missing: the IdP signing certificate is required; without it forged responses would be accepted",
                    );
                    None
                }
            };
            match (entity_id, sso_url, certs) {
                (Some(entity_id), Some(sso_url), Some(certificates)) => Some(IdpSource::Explicit {
                    entity_id,
                    sso_url,
                    certificates,
                }),
                _ => None,
            }
        }
    };
    let (sp_key, sp_previous_keys) = sp_keys(c, &p, &raw);
    if raw.idp_metadata_url.is_none() {
        for (key, given) in [
            ("idp_metadata_refresh", raw.idp_metadata_refresh.is_some()),
            ("idp_metadata_signer", raw.idp_metadata_signer.is_some()),
        ] {
            if given {
                c.err(
                    format!("{p}.{key}"),
                    "only meaningful with idp_metadata_url",
                );
            }
        }
    }
    let sp_entity_id = raw.sp_entity_id.unwrap_or_else(|| match maestrano {
        Some(m) => m.api_id.clone(),
        None => format!(
            "{}/_idgate/saml/{tenant_id}/metadata",
            server.public_url.as_str().trim_end_matches('/')
        ),
    });
    let idp_slo_url = raw
        .idp_slo_url
        .as_deref()
        .and_then(|u| c.web_url(&format!("{p}.idp_slo_url"), u));
    let after_logout_url = raw.after_logout_url.and_then(|u| {
        let path = format!("{p}.after_logout_url");
        if u.starts_with('/') {
            // `//host` and `/\host` are read by browsers as another origin.
            if u.starts_with("//") || u.starts_with("/\\") || u.chars().any(char::is_control) {
                c.err(
                    path,
                    format!("{u:?} must be a same-origin path or an absolute URL"),
                );
                None
            } else {
                Some(u)
            }
        } else {
            c.web_url(&path, &u).map(String::from)
        }
    });
    let a = raw.attributes;
    let [d_uid, d_email, d_first, d_last, d_gid, d_gname, d_role] = defaults::ATTRIBUTES;
    let attributes = AttributeMap {
        user_id: a.user_id.unwrap_or_else(|| d_uid.into()),
        email: a.email.unwrap_or_else(|| d_email.into()),
        first_name: a.first_name.unwrap_or_else(|| d_first.into()),
        last_name: a.last_name.unwrap_or_else(|| d_last.into()),
        group_id: a.group_id.unwrap_or_else(|| d_gid.into()),
        group_name: a.group_name.unwrap_or_else(|| d_gname.into()),
        role: a.role.unwrap_or_else(|| d_role.into()),
    };
    let require_encrypted_assertions = raw.require_encrypted_assertions.unwrap_or(false);
    if require_encrypted_assertions && sp_key.is_none() {
        c.err(
            format!("{p}.require_encrypted_assertions"),
            "needs sp_key and sp_certificate: without them no encrypted assertion can be read",
        );
    }
    let rsa = |pem: &str| {
        openssl::pkey::PKey::private_key_from_pem(pem.as_bytes())
            .is_ok_and(|k| k.id() == openssl::pkey::Id::RSA)
    };
    if require_encrypted_assertions
        && let Some(k) = &sp_key
        && !rsa(k.key.expose())
    {
        c.err(
            format!("{p}.require_encrypted_assertions"),
            "needs an RSA sp_key: assertions are encrypted to RSA keys (RSA-OAEP), an EC key decrypts nothing",
        );
    }
    let sign_requests = raw.sign_requests.unwrap_or(sp_key.is_some());
    if sign_requests && sp_key.is_none() {
        c.err(
            format!("{p}.sign_requests"),
            "needs sp_key and sp_certificate: requests are signed with the SP key",
        );
    }
    let name_id_format = match raw.name_id_format.as_deref().unwrap_or("persistent") {
        "persistent" => "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
        "transient" => "urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
        "emailAddress" => "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
        "unspecified" => "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
        other => {
            c.err(
                format!("{p}.name_id_format"),
                format!(
                    "{other:?} is not one of \"persistent\", \"transient\", \"emailAddress\", \"unspecified\""
                ),
            );
            "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
        }
    };
    Some(SamlConfig {
        idp: idp?,
        sign_requests,
        name_id_format: name_id_format.to_owned(),
        sp_entity_id,
        idp_slo_url,
        after_logout_url,
        allow_idp_initiated: raw.allow_idp_initiated.unwrap_or(false),
        want_assertions_signed: raw.want_assertions_signed.unwrap_or(false),
        allow_sha1: raw.allow_sha1.unwrap_or(false),
        sp_key,
        sp_previous_keys,
        require_encrypted_assertions,
        allow_rsa1_5: raw.allow_rsa1_5.unwrap_or(false),
        attributes,
    })
}

/// How long before its expiry an SP certificate gets a warning: long enough to publish
/// new metadata and let every IdP fetch it.
const SP_CERT_WARN_DAYS: u32 = 30;

/// `sp_key`, `sp_certificate` and `sp_previous_keys`: each key a PEM private key (RSA or
/// EC), the certificate a PEM certificate for that very key and not expired.
fn sp_keys(c: &mut Checker<'_>, p: &str, raw: &RawSaml) -> (Option<SpKeyPair>, Vec<Secret>) {
    let key_path = format!("{p}.sp_key");
    let cert_path = format!("{p}.sp_certificate");
    let key = raw.sp_key.as_deref().and_then(|r| {
        let s = c.secret(&key_path, r)?;
        match sp_private_key(s.expose()) {
            Ok(k) => Some((s, k)),
            Err(m) => {
                c.err(&key_path, m);
                None
            }
        }
    });
    let cert = raw.sp_certificate.as_deref().and_then(|r| {
        let s = c.secret(&cert_path, r)?;
        match openssl::x509::X509::from_pem(s.expose().as_bytes()) {
            Ok(x) => Some((s.expose().to_owned(), x)),
            Err(_) => {
                c.err(
                    &cert_path,
                    "not a PEM certificate (-----BEGIN CERTIFICATE-----)",
                );
                None
            }
        }
    });
    match (&raw.sp_key, &raw.sp_certificate) {
        (Some(_), None) => c.err(
            &cert_path,
            "missing: required with sp_key (it is what SP metadata publishes)",
        ),
        (None, Some(_)) => c.err(&key_path, "missing: required with sp_certificate"),
        _ => {}
    }
    if let Some((_, x)) = &cert {
        let before = |days: u32| {
            openssl::asn1::Asn1Time::days_from_now(days)
                .and_then(|t| x.not_after().compare(&t))
                .is_ok_and(|o| o == std::cmp::Ordering::Less)
        };
        let not_after = x.not_after();
        if before(0) {
            c.err(
                &cert_path,
                format!("the certificate expired on {not_after}"),
            );
        } else if before(SP_CERT_WARN_DAYS) {
            c.warn(
                &cert_path,
                format!(
                    "the certificate expires on {not_after}, within {SP_CERT_WARN_DAYS} days: publish a new one (keep the old key in sp_previous_keys)"
                ),
            );
        }
    }
    let mut previous = Vec::new();
    for (i, r) in raw.sp_previous_keys.iter().flatten().enumerate() {
        let path = format!("{p}.sp_previous_keys[{i}]");
        if let Some(s) = c.secret(&path, r) {
            match sp_private_key(s.expose()) {
                Ok(_) => previous.push(s),
                Err(m) => c.err(path, m),
            }
        }
    }
    let pair = match (key, cert) {
        (Some((key, k)), Some((certificate, x))) => {
            let matches = x.public_key().is_ok_and(|public| public.public_eq(&k));
            if matches {
                Some(SpKeyPair { key, certificate })
            } else {
                c.err(&cert_path, "the certificate is not for sp_key's public key");
                None
            }
        }
        _ => None,
    };
    (pair, previous)
}

/// A PEM private key that can serve as an SP key: RSA or EC.
fn sp_private_key(pem: &str) -> Result<openssl::pkey::PKey<openssl::pkey::Private>, &'static str> {
    if !is_private_key_pem(pem) {
        return Err("not a PEM private key");
    }
    let key = openssl::pkey::PKey::private_key_from_pem(pem.as_bytes())
        .map_err(|_| "cannot read the PEM private key (encrypted keys are not supported)")?;
    match key.id() {
        openssl::pkey::Id::RSA | openssl::pkey::Id::EC => Ok(key),
        _ => Err("an SP key must be RSA or EC"),
    }
}

/// The shortest `idp_metadata_refresh`: more often is load on the IdP for nothing.
const MIN_METADATA_REFRESH: Duration = Duration::from_secs(5);

/// `idp_metadata_url` and its keys. Only the form is checked here: the document is
/// fetched when idgate starts, so that `check-config` does not depend on the IdP being up.
fn metadata_url(
    c: &mut Checker<'_>,
    p: &str,
    raw: &RawSaml,
    explicit: bool,
) -> Option<MetadataUrl> {
    let path = format!("{p}.idp_metadata_url");
    let mut ok = true;
    if raw.idp_metadata.is_some() || explicit {
        c.err(
            &path,
            "give one of idp_metadata_url, idp_metadata, or idp_entity_id + idp_sso_url + idp_certificate",
        );
        ok = false;
    }
    let signer = match &raw.idp_metadata_signer {
        Some(r) => {
            let spath = format!("{p}.idp_metadata_signer");
            let certs = c.secret(&spath, r).map(|s| pem_certificates(s.expose()));
            match certs {
                Some(certs) if !certs.is_empty() => Some(certs),
                Some(_) => {
                    c.err(
                        spath,
                        "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
                    );
                    ok = false;
                    None
                }
                None => {
                    ok = false;
                    None
                }
            }
        }
        None => None,
    };
    let url = raw
        .idp_metadata_url
        .as_deref()
        .and_then(|u| c.web_url(&path, u));
    if let Some(u) = &url
        && u.scheme() == "http"
        && !is_loopback(u)
        && raw.idp_metadata_signer.is_none()
    {
        c.err(
            &path,
            "must be https: over plain http anyone on the way could substitute their own certificates (http is accepted for a loopback host, or with idp_metadata_signer)",
        );
        ok = false;
    }
    let rpath = format!("{p}.idp_metadata_refresh");
    let refresh = c.duration(
        &rpath,
        raw.idp_metadata_refresh.as_deref(),
        defaults::IDP_METADATA_REFRESH,
    );
    if refresh < MIN_METADATA_REFRESH {
        c.err(rpath, "must be at least 5s");
        ok = false;
    }
    let url = url?;
    ok.then_some(MetadataUrl {
        url,
        refresh,
        signer,
    })
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The algorithms `[[tenants.bearer]].algorithms` may name: asymmetric only. HMAC would
/// let anyone holding the issuer's public key mint tokens, and `none` signs nothing.
const BEARER_ALGORITHMS: &[(&str, jsonwebtoken::Algorithm)] = {
    use jsonwebtoken::Algorithm::*;
    &[
        ("RS256", RS256),
        ("RS384", RS384),
        ("RS512", RS512),
        ("PS256", PS256),
        ("PS384", PS384),
        ("PS512", PS512),
        ("ES256", ES256),
        ("ES384", ES384),
        ("EdDSA", EdDSA),
    ]
};

/// Claim names: a JSON key, kept short and printable so that logs can name it.
fn claim_name(
    c: &mut Checker<'_>,
    path: String,
    value: Option<String>,
    default: Option<&str>,
) -> Option<String> {
    match value {
        Some(v) if !v.is_empty() && v.len() <= 128 && !v.chars().any(char::is_control) => Some(v),
        Some(v) => {
            c.err(path, format!("{v:?} is not a claim name"));
            default.map(str::to_owned)
        }
        None => default.map(str::to_owned),
    }
}

fn bearer_issuers(c: &mut Checker<'_>, p: &str, raw: Vec<RawBearer>) -> Vec<BearerConfig> {
    let mut out: Vec<BearerConfig> = Vec::new();
    for (i, b) in raw.into_iter().enumerate() {
        let p = format!("{p}.bearer[{i}]");
        let issuer = match b.issuer {
            Some(s) if !s.is_empty() => s,
            _ => {
                c.err(
                    format!("{p}.issuer"),
                    "missing: the exact `iss` of the tokens",
                );
                continue;
            }
        };
        if let Some(first) = out.iter().position(|o| o.issuer == issuer) {
            c.err(
                format!("{p}.issuer"),
                format!("{issuer:?} is already configured for this tenant (bearer[{first}])"),
            );
        }
        let audience = match b.audience {
            Some(s) if !s.is_empty() => s,
            _ => {
                c.err(
                    format!("{p}.audience"),
                    "missing: tokens for other audiences must not be accepted here",
                );
                String::new()
            }
        };
        let keys = match (b.jwks_url, b.jwks) {
            (Some(_), Some(_)) => {
                c.err(format!("{p}.jwks"), "give jwks_url or jwks, not both");
                None
            }
            (None, None) => {
                c.err(format!("{p}.jwks_url"), "missing: jwks_url or jwks is required");
                None
            }
            (Some(u), None) => c.web_url(&format!("{p}.jwks_url"), &u).and_then(|url| {
                if url.scheme() == "http" && !is_loopback(&url) {
                    c.warn(
                        format!("{p}.jwks_url"),
                        "is plain http: anyone on the path can substitute keys and mint tokens; use https",
                    );
                }
                let ca_certificate = match b.ca_certificate.as_deref() {
                    None => None,
                    Some(_) if url.scheme() != "https" => {
                        c.err(format!("{p}.ca_certificate"), "applies only to an https jwks_url");
                        None
                    }
                    Some(reference) => {
                        let pem = c.secret(&format!("{p}.ca_certificate"), reference)?;
                        if !pem.expose().contains("-----BEGIN CERTIFICATE-----") {
                            c.err(
                                format!("{p}.ca_certificate"),
                                "is not a PEM certificate (-----BEGIN CERTIFICATE-----)",
                            );
                            return None;
                        }
                        Some(pem.expose().as_bytes().to_vec())
                    }
                };
                Some(JwksSource::Url { url, ca_certificate })
            }),
            (None, Some(reference)) => {
                if b.ca_certificate.is_some() {
                    c.err(format!("{p}.ca_certificate"), "applies only to jwks_url");
                }
                let doc = c.secret(&format!("{p}.jwks"), &reference);
                doc.and_then(|doc| match serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(doc.expose()) {
                    Ok(set) if set.keys.is_empty() => {
                        c.err(format!("{p}.jwks"), "holds no keys");
                        None
                    }
                    Ok(set) => {
                        for (k, jwk) in set.keys.iter().enumerate() {
                            if let Err(e) = jsonwebtoken::DecodingKey::from_jwk(jwk) {
                                c.err(format!("{p}.jwks"), format!("key {k} is not usable: {e}"));
                            }
                        }
                        Some(JwksSource::Static(set))
                    }
                    Err(e) => {
                        c.err(format!("{p}.jwks"), format!("is not a JWKS document: {e}"));
                        None
                    }
                })
            }
        };
        let mut algorithms = Vec::new();
        for (j, a) in b
            .algorithms
            .unwrap_or_else(|| vec!["RS256".into(), "ES256".into(), "EdDSA".into()])
            .iter()
            .enumerate()
        {
            match BEARER_ALGORITHMS.iter().find(|(n, _)| n == a) {
                Some((_, alg)) => algorithms.push(*alg),
                None => c.err(
                    format!("{p}.algorithms[{j}]"),
                    format!(
                        "{a:?} is not accepted: one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (never none or HMAC)"
                    ),
                ),
            }
        }
        if algorithms.is_empty() {
            c.err(format!("{p}.algorithms"), "names no usable algorithm");
        }
        let user_claim = claim_name(c, format!("{p}.user_claim"), b.user_claim, Some("sub"));
        let group_claim = claim_name(c, format!("{p}.group_claim"), b.group_claim, None);
        let email_claim = claim_name(c, format!("{p}.email_claim"), b.email_claim, Some("email"));
        let role_claim = claim_name(c, format!("{p}.role_claim"), b.role_claim, None);
        let name_claim = claim_name(c, format!("{p}.name_claim"), b.name_claim, Some("name"));
        if let Some(keys) = keys {
            out.push(BearerConfig {
                issuer,
                audience,
                keys,
                algorithms,
                user_claim: user_claim.unwrap_or_default(),
                group_claim,
                email_claim: email_claim.unwrap_or_default(),
                role_claim,
                name_claim: name_claim.unwrap_or_default(),
                forward_authorization: b.forward_authorization.unwrap_or(false),
            });
        }
    }
    out
}

/// Tokens kept acceptable during a rotation: enough for one rotation in flight per IdP
/// connection, few enough that a forgotten list stays short.
const MAX_PREVIOUS_SCIM_TOKENS: usize = 4;

fn scim(c: &mut Checker<'_>, p: &str, raw: RawScim) -> Option<ScimConfig> {
    let path = format!("{p}.scim.token");
    let token_sha256 = scim_token(c, &path, raw.token.as_deref());
    let previous = raw.previous_tokens.unwrap_or_default();
    if previous.len() > MAX_PREVIOUS_SCIM_TOKENS {
        c.err(
            format!("{p}.scim.previous_tokens"),
            format!("at most {MAX_PREVIOUS_SCIM_TOKENS}: remove the tokens the IdP no longer uses"),
        );
    }
    let previous_token_sha256: Vec<[u8; 32]> = previous
        .iter()
        .enumerate()
        .filter_map(|(i, t)| scim_token(c, &format!("{p}.scim.previous_tokens[{i}]"), Some(t)))
        .collect();
    let name_order = c.one_of(
        &format!("{p}.scim.name_order"),
        raw.name_order.as_deref(),
        NameOrder::GivenFamily,
        &[
            ("given_family", NameOrder::GivenFamily),
            ("family_given", NameOrder::FamilyGiven),
        ],
    );
    Some(ScimConfig {
        token_sha256: token_sha256?,
        previous_token_sha256,
        name_order,
    })
}

/// A SCIM token's SHA-256, from its `sha256:` form or a secret holding the token.
fn scim_token(c: &mut Checker<'_>, path: &str, token: Option<&str>) -> Option<[u8; 32]> {
    match token {
        Some(t) if t.starts_with("sha256:") => {
            let hex_part = &t["sha256:".len()..];
            let mut out = [0u8; 32];
            if hex_part.len() == 64
                && hex_part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && hex::decode_to_slice(hex_part, &mut out).is_ok()
            {
                Some(out)
            } else {
                c.err(
                    path,
                    "expected sha256: followed by 64 lowercase hex digits (see `idgate token`)",
                );
                None
            }
        }
        Some(t) => c
            .secret(path, t)
            .map(|s| crate::scim::token::digest(s.expose())),
        None => {
            c.err(
                path,
                "missing: required to enable SCIM (see `idgate token`)",
            );
            None
        }
    }
}

fn maestrano(c: &mut Checker<'_>, p: &str, raw: RawMaestrano) -> MaestranoConfig {
    let p = format!("{p}.maestrano");
    let api_id = raw.api_id.unwrap_or_default();
    if api_id.is_empty() {
        c.err(format!("{p}.api_id"), "missing: required");
    }
    let api_key = c
        .required_secret(&format!("{p}.api_key"), raw.api_key.as_deref())
        .unwrap_or_else(|| Secret::generated(String::new()));
    let mut url_or_default = |key: &str, value: Option<String>, default: &str| {
        let text = value.unwrap_or_else(|| default.into());
        c.web_url(&format!("{p}.{key}"), &text)
            .unwrap_or_else(|| url::Url::parse(default).expect("default is a valid URL"))
    };
    let api_host = url_or_default("api_host", raw.api_host, defaults::MNO_API_HOST);
    let connec_host = url_or_default("connec_host", raw.connec_host, defaults::MNO_CONNEC_HOST);
    let connec_forward_path = raw
        .connec_forward_path
        .unwrap_or_else(|| defaults::MNO_CONNEC_FORWARD_PATH.into());
    if !connec_forward_path.starts_with('/') {
        c.err(format!("{p}.connec_forward_path"), "must start with '/'");
    }
    let b = raw.billing;
    let mode = c.one_of(
        &format!("{p}.billing.mode"),
        b.mode.as_deref(),
        BillingMode::None,
        &[
            ("none", BillingMode::None),
            ("flat", BillingMode::Flat),
            ("per_user", BillingMode::PerUser),
        ],
    );
    let price_cents = match b.price_cents.unwrap_or(0) {
        n if n >= 0 => n as u64,
        n => {
            c.err(
                format!("{p}.billing.price_cents"),
                format!("{n} must not be negative"),
            );
            0
        }
    };
    let currency = b.currency.unwrap_or_else(|| "USD".into());
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        c.err(
            format!("{p}.billing.currency"),
            format!("{currency:?} is not an ISO 4217 code such as \"USD\""),
        );
    }
    let period = b.period.unwrap_or_else(|| "Month".into());
    if !["Day", "Week", "SemiMonth", "Month", "Year"].contains(&period.as_str()) {
        c.err(
            format!("{p}.billing.period"),
            format!("{period:?} is not one of Day, Week, SemiMonth, Month, Year"),
        );
    }
    MaestranoConfig {
        api_id,
        api_key,
        api_host,
        connec_host,
        session_recheck: raw.session_recheck.unwrap_or(true),
        recheck_fail_mode: c.one_of(
            &format!("{p}.recheck_fail_mode"),
            raw.recheck_fail_mode.as_deref(),
            RecheckFailMode::Keep,
            &[
                ("keep", RecheckFailMode::Keep),
                ("logout", RecheckFailMode::Logout),
            ],
        ),
        user_mode: c.one_of(
            &format!("{p}.user_mode"),
            raw.user_mode.as_deref(),
            UserMode::Real,
            &[("real", UserMode::Real), ("virtual", UserMode::Virtual)],
        ),
        connec_forward_path,
        billing: BillingConfig {
            mode,
            price_cents,
            currency,
            period,
            description: b.description.unwrap_or_else(|| "Subscription".into()),
        },
    }
}

fn devpl(c: &mut Checker<'_>, raw: RawDevpl) -> DevplConfig {
    let host_text = raw.host.unwrap_or_else(|| defaults::DEVPL_HOST.into());
    let host = c
        .web_url("maestrano_devpl.host", &host_text)
        .unwrap_or_else(|| url::Url::parse(defaults::DEVPL_HOST).expect("default is a valid URL"));
    let env_key = c
        .required_secret("maestrano_devpl.env_key", raw.env_key.as_deref())
        .unwrap_or_else(|| Secret::generated(String::new()));
    let env_secret = c
        .required_secret("maestrano_devpl.env_secret", raw.env_secret.as_deref())
        .unwrap_or_else(|| Secret::generated(String::new()));
    DevplConfig {
        host,
        env_key,
        env_secret,
        refresh: c.duration(
            "maestrano_devpl.refresh",
            raw.refresh.as_deref(),
            defaults::DEVPL_REFRESH,
        ),
    }
}

fn telemetry(c: &mut Checker<'_>, raw: RawTelemetry) -> TelemetryConfig {
    let otlp_endpoint = raw.otlp_endpoint.and_then(|text| {
        let url = c.web_url("telemetry.otlp_endpoint", &text)?;
        // A base URL: `/v1/traces` is appended, so a query or fragment would end up in
        // the middle of the path, and credentials in it would reach every log of it.
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            c.err(
                "telemetry.otlp_endpoint",
                "must be a base URL without user info, query or fragment (spans go to {otlp_endpoint}/v1/traces)",
            );
            return None;
        }
        Some(url)
    });
    let service_name = raw
        .service_name
        .unwrap_or_else(|| defaults::SERVICE_NAME.into());
    if service_name.trim().is_empty() {
        c.err("telemetry.service_name", "must not be empty");
    }
    let sample_ratio = match raw.sample_ratio {
        None => defaults::SAMPLE_RATIO,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            c.err(
                "telemetry.sample_ratio",
                format!("{r} is not between 0.0 and 1.0"),
            );
            defaults::SAMPLE_RATIO
        }
    };
    TelemetryConfig {
        otlp_endpoint,
        service_name,
        sample_ratio,
    }
}
