//! docs/configuration.md against config/idgate.example.toml and the code, so that the
//! three cannot drift apart:
//! - every key the example sets, or shows commented out, has a row in the doc, and every
//!   row of the doc is a key of the example;
//! - every documented key is one the config parser accepts (not an "unknown key");
//! - every default the doc states as a TOML value is the one the code applies (the
//!   `idgate::config::defaults` constants, and what a config that leaves the key out
//!   loads as);
//! - every key the doc calls required is reported missing when left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use idgate::config::{
    BillingMode, Config, ConfigError, FailMode, IdpSource, NameOrder, RecheckFailMode, StoreUrl,
    UserMode, default_workers, defaults,
};
use toml::Value;

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(manifest(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// `[a.b]` or `[[a]]` at the start of a line (a comment may follow): `a.b` or `a`.
fn section_header(line: &str) -> Option<String> {
    let t = line.trim_start();
    let rest = t.strip_prefix("[[").or_else(|| t.strip_prefix('['))?;
    let end = rest.find(']')?;
    let name = rest[..end].trim();
    (!name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'))
    .then(|| name.to_owned())
}

/// `key = value` (or, with `commented`, `# key = value`): the key and the value text.
fn key_line(line: &str, commented: bool) -> Option<(String, String)> {
    let mut t = line.trim_start();
    if commented {
        t = t.strip_prefix('#')?.trim_start();
    } else if t.starts_with('#') {
        return None;
    }
    let end = t
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(t.len());
    let (key, rest) = t.split_at(end);
    let value = rest.trim_start().strip_prefix('=')?;
    if key.is_empty() || value.starts_with('=') {
        return None;
    }
    Some((key.to_owned(), value.trim().to_owned()))
}

/// What the example holds, read line by line: key path → value, for keys that are set
/// (`active`) and keys shown commented out (`commented`).
struct Example {
    active: BTreeMap<String, Value>,
    commented: BTreeMap<String, Value>,
}

fn parse_value(path: &str, text: &str) -> Value {
    let t: toml::Table = format!("v = {text}")
        .parse()
        .unwrap_or_else(|e| panic!("example value of {path} is not TOML: {text}: {e}"));
    t["v"].clone()
}

fn example() -> Example {
    let text = read("config/idgate.example.toml");
    let mut section = String::new();
    let mut active = BTreeMap::new();
    let mut commented = BTreeMap::new();
    for line in text.lines() {
        if let Some(s) = section_header(line) {
            section = s;
            continue;
        }
        for (is_commented, map) in [(false, &mut active), (true, &mut commented)] {
            if let Some((key, value)) = key_line(line, is_commented) {
                let path = if section.is_empty() {
                    key
                } else {
                    format!("{section}.{key}")
                };
                let value = parse_value(&path, &value);
                map.insert(path, value);
            }
        }
    }
    Example { active, commented }
}

/// Every leaf key path of a parsed TOML document; arrays of tables (`[[tenants]]`)
/// contribute their tables' keys under the array's name.
fn leaf_paths(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) => leaf_paths(&path, t, out),
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_table) => {
                for item in items {
                    leaf_paths(&path, item.as_table().unwrap(), out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

/// One row of a key table in the doc.
struct DocRow {
    default: String,
}

/// The doc's rows: `## \`[section]\`` headings, then `| \`key\` | default | meaning |`.
fn doc_rows() -> BTreeMap<String, DocRow> {
    let text = read("docs/configuration.md");
    let mut section: Option<String> = None;
    let mut rows = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            section = line
                .find('`')
                .and_then(|start| section_header(&line[start + 1..]));
            continue;
        }
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let section = section.as_ref().unwrap_or_else(|| {
            panic!(
                "docs/configuration.md:{}: key row outside a `[section]` heading",
                n + 1
            )
        });
        let cells: Vec<&str> = rest.split('|').collect();
        assert!(
            cells.len() >= 3,
            "docs/configuration.md:{}: a key row needs key, default and meaning",
            n + 1
        );
        let key = cells[0].trim().trim_end_matches('`');
        let path = format!("{section}.{key}");
        let row = DocRow {
            default: cells[1].trim().to_owned(),
        };
        assert!(
            rows.insert(path.clone(), row).is_none(),
            "docs/configuration.md:{}: {path} is documented twice",
            n + 1
        );
    }
    assert!(
        !rows.is_empty(),
        "no key rows found in docs/configuration.md"
    );
    rows
}

fn list(set: &BTreeSet<&String>) -> String {
    set.iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn every_example_key_is_documented_and_every_documented_key_is_in_the_example() {
    let ex = example();
    // The line reader must see exactly the keys a TOML parser sees, or its list of
    // commented keys could not be trusted either.
    let parsed: toml::Table = read("config/idgate.example.toml")
        .parse()
        .expect("the example is valid TOML");
    let mut by_toml = BTreeSet::new();
    leaf_paths("", &parsed, &mut by_toml);
    let by_lines: BTreeSet<String> = ex.active.keys().cloned().collect();
    assert_eq!(
        by_lines, by_toml,
        "the line reader and the TOML parser disagree on the example's keys"
    );

    let in_example: BTreeSet<String> = ex
        .active
        .keys()
        .chain(ex.commented.keys())
        .cloned()
        .collect();
    let in_doc: BTreeSet<String> = doc_rows().into_keys().collect();
    let undocumented: BTreeSet<_> = in_example.difference(&in_doc).collect();
    let not_in_example: BTreeSet<_> = in_doc.difference(&in_example).collect();
    assert!(
        undocumented.is_empty() && not_in_example.is_empty(),
        "in config/idgate.example.toml but not in docs/configuration.md: [{}]\n\
         in docs/configuration.md but not in config/idgate.example.toml: [{}]",
        list(&undocumented),
        list(&not_in_example)
    );
    println!(
        "{} keys, {} of them shown commented out in the example, all documented",
        in_example.len(),
        ex.commented.len()
    );
}

/// Sets `path` (dotted; `tenants` is the array of tenant tables) in a TOML document.
fn set_path(root: &mut toml::Table, path: &str, value: Value) {
    let parts: Vec<&str> = path.split('.').collect();
    let mut table = root;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        // Arrays of tables: `[[tenants]]` and `[[access.rules]]`.
        let array = (i == 0 && *part == "tenants")
            || (i == 1 && parts[0] == "access" && *part == "rules")
            || (i == 1 && parts[0] == "tenants" && *part == "bearer");
        if array {
            let items = table
                .entry(*part)
                .or_insert_with(|| Value::Array(vec![Value::Table(toml::Table::new())]));
            table = items.as_array_mut().unwrap()[0].as_table_mut().unwrap();
        } else {
            table = table
                .entry(*part)
                .or_insert_with(|| Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap();
        }
    }
    table.insert(parts[parts.len() - 1].to_owned(), value);
}

/// Removes `path` from a TOML document; false if it was not there.
fn remove_path(root: &mut toml::Table, path: &str) -> bool {
    let parts: Vec<&str> = path.split('.').collect();
    let mut table = root;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let next = match table.get_mut(*part) {
            // Arrays of tables (`[[tenants]]`, `[[access.rules]]`): the first one.
            Some(Value::Array(items)) if i < 2 => items.first_mut().and_then(Value::as_table_mut),
            Some(Value::Table(t)) => Some(t),
            _ => None,
        };
        match next {
            Some(t) => table = t,
            None => return false,
        }
    }
    table.remove(parts[parts.len() - 1]).is_some()
}

/// The path idgate's errors use for a doc key path (`tenants.saml.x` → `tenants[0].saml.x`).
fn error_path(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("access.rules.") {
        return format!("access.rules[0].{rest}");
    }
    if let Some(rest) = path.strip_prefix("tenants.bearer.") {
        return format!("tenants[0].bearer[0].{rest}");
    }
    match path.strip_prefix("tenants.") {
        Some(rest) => format!("tenants[0].{rest}"),
        None => path.to_owned(),
    }
}

fn load(doc: &toml::Table) -> Result<Config, Vec<ConfigError>> {
    let text = toml::to_string(doc).expect("serializes");
    Config::from_toml(&text, &manifest("config")).map_err(|e| e.0)
}

#[test]
fn every_documented_key_is_one_idgate_accepts() {
    let ex = example();
    let mut problems = Vec::new();
    let mut check = |path: &str, value: Value| -> bool {
        let mut doc = toml::Table::new();
        set_path(&mut doc, path, value);
        match load(&doc) {
            Ok(_) => true,
            Err(errors) => {
                if let Some(e) = errors.iter().find(|e| e.path.is_empty()) {
                    problems.push(format!("{path}: cannot be judged: {e}"));
                }
                !errors.iter().any(|e| e.message == "unknown key")
            }
        }
    };
    // The check can fail: a key idgate does not have is reported.
    assert!(
        !check("server.no_such_key", Value::Integer(1)),
        "an unknown key must be reported"
    );
    assert!(
        !check("tenants.saml.no_such_key", Value::Boolean(true)),
        "an unknown key must be reported"
    );
    let mut unknown = Vec::new();
    for path in doc_rows().keys() {
        let value = ex
            .active
            .get(path)
            .or_else(|| ex.commented.get(path))
            .cloned()
            .unwrap_or_else(|| panic!("{path} is documented but not in the example"));
        if !check(path, value) {
            unknown.push(path.clone());
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        unknown.is_empty(),
        "documented keys that idgate reports as unknown: {unknown:?}"
    );
}

/// A config that sets every required key and nothing else, so everything else takes its
/// default. Relative `file:` paths resolve against config/.
const MINIMAL: &str = r#"
[[access.rules]]
name = "r"
path = "/r"
[[tenants]]
id = "t"
[tenants.saml]
idp_entity_id = "https://idp.example.com/metadata"
idp_sso_url = "https://idp.example.com/sso"
idp_certificate = "file:examples/example-idp.crt"
[tenants.scim]
token = "plain-token"
[[tenants.bearer]]
issuer = "https://login.example.com/"
audience = "api://app"
jwks = "file:../tests/fixtures/bearer/example-jwks.json"
[tenants.maestrano]
api_id = "app-1"
api_key = "key"
[maestrano_devpl]
env_key = "k"
env_secret = "s"
"#;

fn minimal() -> toml::Table {
    MINIMAL.parse().expect("MINIMAL is TOML")
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// key path → the default the code applies, as the TOML value the doc must state.
fn code_defaults() -> BTreeMap<&'static str, Value> {
    let c = load(&minimal()).unwrap_or_else(|e| panic!("the minimal config must load: {e:?}"));
    let t = &c.tenants[0];
    let m = t.maestrano.as_ref().expect("maestrano tenant");
    let scim = t.scim.as_ref().expect("scim");
    let devpl = c.maestrano_devpl.as_ref().expect("maestrano_devpl");
    let rule = c.access.rules.iter().next().expect("MINIMAL's access rule");
    let bearer = t.bearer.first().expect("MINIMAL's bearer issuer");
    assert!(
        c.telemetry.otlp_endpoint.is_none(),
        "tracing is off by default"
    );
    let dur = |constant: &str, applied: Duration| {
        assert_eq!(
            humantime::parse_duration(constant).unwrap(),
            applied,
            "the constant {constant:?} is not what the config applies"
        );
        s(constant)
    };
    let same = |constant: &str, applied: &str| {
        assert_eq!(
            constant.trim_end_matches('/'),
            applied.trim_end_matches('/'),
            "the constant is not what the config applies"
        );
        s(constant)
    };
    let empty = |applied: bool| {
        assert!(applied, "an empty list is not what the config applies");
        Value::Array(Vec::new())
    };
    assert_eq!(c.server.workers, default_workers());
    assert_eq!(c.store.url, StoreUrl::Memory);
    let [
        h_uid,
        h_gid,
        h_tenant,
        h_email,
        h_name,
        h_role,
        h_assertion,
        h_groups,
    ] = defaults::HEADERS;
    for (constant, applied) in defaults::HEADERS.iter().zip(c.identity.headers.all()) {
        assert!(applied.as_str().eq_ignore_ascii_case(constant));
    }
    let [a_uid, a_email, a_first, a_last, a_gid, a_gname, a_role] = defaults::ATTRIBUTES;
    let a = &t.saml.attributes;
    // The metadata-URL keys apply only to a tenant that uses the URL.
    let metadata_refresh = {
        let mut doc = minimal();
        for key in ["idp_entity_id", "idp_sso_url", "idp_certificate"] {
            assert!(remove_path(&mut doc, &format!("tenants.saml.{key}")));
        }
        set_path(
            &mut doc,
            "tenants.saml.idp_metadata_url",
            s("https://idp.example.com/metadata"),
        );
        let c = load(&doc).unwrap_or_else(|e| panic!("a metadata-URL tenant must load: {e:?}"));
        match &c.tenants[0].saml.idp {
            IdpSource::Url(m) => m.refresh,
            other => panic!("not a metadata-URL tenant: {other:?}"),
        }
    };
    BTreeMap::from([
        (
            "server.listen",
            same(defaults::LISTEN, &c.server.listen.to_string()),
        ),
        (
            "server.admin_listen",
            same(defaults::ADMIN_LISTEN, &c.server.admin_listen.to_string()),
        ),
        (
            "server.upstream",
            same(defaults::UPSTREAM, &c.server.upstream.to_string()),
        ),
        (
            "server.public_url",
            same(defaults::PUBLIC_URL, c.server.public_url.as_str()),
        ),
        (
            "server.connect_timeout",
            dur(defaults::CONNECT_TIMEOUT, c.server.connect_timeout),
        ),
        (
            "server.upstream_timeout",
            dur(defaults::UPSTREAM_TIMEOUT, c.server.upstream_timeout),
        ),
        (
            "server.shutdown_grace",
            dur(defaults::SHUTDOWN_GRACE, c.server.shutdown_grace),
        ),
        (
            "server.trusted_proxies",
            empty(c.server.trusted_proxies.is_empty()),
        ),
        ("server.watch_config", Value::Boolean(c.server.watch_config)),
        // 0 = automatic, which the assertion on default_workers() above shows is applied.
        ("server.workers", Value::Integer(0)),
        (
            "server.max_connections",
            Value::Integer({
                assert_eq!(c.server.max_connections as i64, defaults::MAX_CONNECTIONS);
                defaults::MAX_CONNECTIONS
            }),
        ),
        ("store.url", s(defaults::STORE_URL)),
        (
            "store.key_prefix",
            same(defaults::KEY_PREFIX, &c.store.key_prefix),
        ),
        (
            "store.fail_mode",
            s(match c.store.fail_mode {
                FailMode::Closed => "closed",
                FailMode::Cached => "cached",
            }),
        ),
        (
            "session.cookie_name",
            same(defaults::COOKIE_NAME, &c.session.cookie_name),
        ),
        (
            "session.idle_timeout",
            dur(defaults::IDLE_TIMEOUT, c.session.idle_timeout),
        ),
        (
            "session.max_lifetime",
            dur(defaults::MAX_LIFETIME, c.session.max_lifetime),
        ),
        (
            "session.cache_ttl",
            dur(defaults::CACHE_TTL, c.session.cache_ttl),
        ),
        (
            "identity.audience",
            same(defaults::AUDIENCE, &c.identity.audience),
        ),
        ("identity.ttl", dur(defaults::IDENTITY_TTL, c.identity.ttl)),
        (
            "identity.previous_keys",
            empty(c.identity.previous_keys.is_empty()),
        ),
        ("identity.headers.user_id", s(h_uid)),
        ("identity.headers.group_id", s(h_gid)),
        ("identity.headers.tenant", s(h_tenant)),
        ("identity.headers.email", s(h_email)),
        ("identity.headers.name", s(h_name)),
        ("identity.headers.role", s(h_role)),
        ("identity.headers.assertion", s(h_assertion)),
        ("identity.headers.groups", s(h_groups)),
        (
            "access.public_paths",
            empty(c.access.public_paths.is_empty()),
        ),
        ("access.api_paths", empty(c.access.api_paths.is_empty())),
        ("access.rules.public", Value::Boolean(rule.public)),
        ("access.rules.api", Value::Boolean(rule.api)),
        (
            "access.rules.allow_groups",
            empty(rule.allow_groups.is_empty()),
        ),
        (
            "access.rules.allow_roles",
            empty(rule.allow_roles.is_empty()),
        ),
        (
            "access.rules.allow_users",
            empty(rule.allow_users.is_empty()),
        ),
        (
            "access.login_starts_per_minute",
            Value::Integer(i64::from(c.access.login_starts_per_minute)),
        ),
        ("tenants.hosts", empty(t.hosts.is_empty())),
        ("tenants.default", Value::Boolean(t.default)),
        (
            "tenants.saml.allow_idp_initiated",
            Value::Boolean(t.saml.allow_idp_initiated),
        ),
        (
            "tenants.saml.want_assertions_signed",
            Value::Boolean(t.saml.want_assertions_signed),
        ),
        ("tenants.saml.allow_sha1", Value::Boolean(t.saml.allow_sha1)),
        (
            "tenants.saml.sp_previous_keys",
            empty(t.saml.sp_previous_keys.is_empty()),
        ),
        (
            "tenants.saml.require_encrypted_assertions",
            Value::Boolean(t.saml.require_encrypted_assertions),
        ),
        (
            "tenants.saml.allow_rsa1_5",
            Value::Boolean(t.saml.allow_rsa1_5),
        ),
        (
            "tenants.saml.name_id_format",
            // Applied as its URN; the key takes the format's short name.
            Value::String(
                t.saml
                    .name_id_format
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ),
        ),
        (
            "tenants.saml.idp_metadata_refresh",
            dur(defaults::IDP_METADATA_REFRESH, metadata_refresh),
        ),
        ("tenants.saml.attributes.user_id", same(a_uid, &a.user_id)),
        ("tenants.saml.attributes.email", same(a_email, &a.email)),
        (
            "tenants.saml.attributes.first_name",
            same(a_first, &a.first_name),
        ),
        (
            "tenants.saml.attributes.last_name",
            same(a_last, &a.last_name),
        ),
        ("tenants.saml.attributes.group_id", same(a_gid, &a.group_id)),
        (
            "tenants.saml.attributes.group_name",
            same(a_gname, &a.group_name),
        ),
        ("tenants.saml.attributes.role", same(a_role, &a.role)),
        (
            "tenants.provisioning.create_groups",
            Value::Boolean(t.provisioning.create_groups),
        ),
        (
            "tenants.provisioning.create_users",
            Value::Boolean(t.provisioning.create_users),
        ),
        (
            "tenants.provisioning.link_by_email",
            Value::Boolean(t.provisioning.link_by_email),
        ),
        (
            "tenants.provisioning.default_role",
            same(defaults::DEFAULT_ROLE, &t.provisioning.default_role),
        ),
        (
            "tenants.scim.previous_tokens",
            empty(scim.previous_token_sha256.is_empty()),
        ),
        (
            "tenants.scim.name_order",
            s(match scim.name_order {
                NameOrder::GivenFamily => "given_family",
                NameOrder::FamilyGiven => "family_given",
            }),
        ),
        (
            "tenants.maestrano.api_host",
            same(defaults::MNO_API_HOST, m.api_host.as_str()),
        ),
        (
            "tenants.maestrano.connec_host",
            same(defaults::MNO_CONNEC_HOST, m.connec_host.as_str()),
        ),
        (
            "tenants.maestrano.session_recheck",
            Value::Boolean(m.session_recheck),
        ),
        (
            "tenants.maestrano.recheck_fail_mode",
            s(match m.recheck_fail_mode {
                RecheckFailMode::Keep => "keep",
                RecheckFailMode::Logout => "logout",
            }),
        ),
        (
            "tenants.maestrano.user_mode",
            s(match m.user_mode {
                UserMode::Real => "real",
                UserMode::Virtual => "virtual",
            }),
        ),
        (
            "tenants.maestrano.connec_forward_path",
            same(defaults::MNO_CONNEC_FORWARD_PATH, &m.connec_forward_path),
        ),
        (
            "tenants.maestrano.billing.mode",
            s(match m.billing.mode {
                BillingMode::None => "none",
                BillingMode::Flat => "flat",
                BillingMode::PerUser => "per_user",
            }),
        ),
        (
            "tenants.maestrano.billing.price_cents",
            Value::Integer(m.billing.price_cents as i64),
        ),
        ("tenants.maestrano.billing.currency", s(&m.billing.currency)),
        ("tenants.maestrano.billing.period", s(&m.billing.period)),
        (
            "tenants.maestrano.billing.description",
            s(&m.billing.description),
        ),
        (
            "tenants.bearer.algorithms",
            Value::Array(
                bearer
                    .algorithms
                    .iter()
                    .map(|a| s(&format!("{a:?}")))
                    .collect(),
            ),
        ),
        ("tenants.bearer.user_claim", s(&bearer.user_claim)),
        ("tenants.bearer.email_claim", s(&bearer.email_claim)),
        ("tenants.bearer.name_claim", s(&bearer.name_claim)),
        (
            "tenants.bearer.forward_authorization",
            Value::Boolean(bearer.forward_authorization),
        ),
        (
            "maestrano_devpl.host",
            same(defaults::DEVPL_HOST, devpl.host.as_str()),
        ),
        (
            "maestrano_devpl.refresh",
            dur(defaults::DEVPL_REFRESH, devpl.refresh),
        ),
        (
            "telemetry.service_name",
            same(defaults::SERVICE_NAME, &c.telemetry.service_name),
        ),
        ("telemetry.sample_ratio", {
            assert_eq!(c.telemetry.sample_ratio, defaults::SAMPLE_RATIO);
            Value::Float(defaults::SAMPLE_RATIO)
        }),
    ])
}

/// A default cell that is exactly one TOML value in code font.
fn literal_default(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then_some(inner)
}

#[test]
fn documented_defaults_are_the_ones_the_code_applies() {
    let rows = doc_rows();
    let code = code_defaults();
    let mut problems = Vec::new();
    for (path, row) in &rows {
        let Some(lit) = literal_default(&row.default) else {
            continue;
        };
        let documented = parse_value(path, lit);
        match code.get(path.as_str()) {
            None => problems.push(format!(
                "{path}: the doc states the default {lit}, which this test cannot check; add the code's default to code_defaults()"
            )),
            Some(applied) if *applied != documented => problems.push(format!(
                "{path}: the doc says the default is {lit}, the code applies {applied}"
            )),
            Some(_) => {}
        }
    }
    for (path, applied) in &code {
        match rows.get(*path) {
            None => problems.push(format!(
                "{path}: has a default ({applied}) but no row in the doc"
            )),
            Some(row) if literal_default(&row.default).is_none() => problems.push(format!(
                "{path}: the doc's default is {:?}; state the value the code applies: `{applied}`",
                row.default
            )),
            Some(_) => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!("{} documented defaults match the code", code.len());
}

#[test]
fn keys_documented_as_required_are_required() {
    let required: Vec<String> = doc_rows()
        .into_iter()
        .filter(|(_, row)| row.default.starts_with("required"))
        .map(|(path, _)| path)
        .collect();
    assert!(!required.is_empty());
    load(&minimal()).unwrap_or_else(|e| panic!("the minimal config must load: {e:?}"));
    let mut problems = Vec::new();
    for path in &required {
        let mut doc = minimal();
        if !remove_path(&mut doc, path) {
            problems.push(format!(
                "{path}: documented as required, but MINIMAL (every required key, nothing else) does not set it"
            ));
            continue;
        }
        let want = error_path(path);
        match load(&doc) {
            Ok(_) => problems.push(format!(
                "{path}: documented as required, but a config without it loads"
            )),
            Err(errors) => {
                if !errors
                    .iter()
                    .any(|e| e.path == want && e.message.starts_with("missing"))
                {
                    problems.push(format!(
                        "{path}: documented as required, but leaving it out does not report {want} missing: {errors:?}"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!("required: {}", required.join(", "));
}

#[test]
fn the_default_strip_headers_list_is_the_documented_one() {
    let expected: Vec<&str> = defaults::STRIP_HEADERS.to_vec();
    let doc = read("docs/configuration.md");
    let para = doc
        .split("The default `strip_headers`:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("docs/configuration.md lists the default strip_headers");
    let documented: Vec<&str> = para.split('`').skip(1).step_by(2).collect();
    assert_eq!(documented, expected, "docs/configuration.md");
    let example = example();
    let shown = example
        .commented
        .get("access.strip_headers")
        .or_else(|| example.active.get("access.strip_headers"))
        .expect("the example shows access.strip_headers");
    let shown: Vec<&str> = shown
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(shown, expected, "config/idgate.example.toml");
}
