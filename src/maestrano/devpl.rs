//! Tenants from Maestrano's developer platform (`[maestrano_devpl]`): one Maestrano
//! tenant per marketplace, read from `GET {host}/api/config/v1/marketplaces` and
//! refreshed in the background.
//!
//! Each marketplace becomes a `[[tenants]]` table added to the configured TOML, and the
//! whole is validated again by the same code as a config file: a marketplace is held to
//! exactly the rules of a configured tenant (certificate required, ids well formed).

use bytes::Bytes;
use http::Method;
use http::header::{self, HeaderValue};
use serde_json::Value;

use crate::config::{Config, DevplConfig};

/// A marketplace name as a tenant id (`[a-z0-9-]+`).
pub fn tenant_id(marketplace: &str) -> String {
    let id: String = marketplace
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    id.trim_matches('-').to_owned()
}

/// Reads the marketplaces.
pub async fn fetch(
    devpl: &DevplConfig,
    http: &super::worker::Client,
) -> Result<Vec<Value>, String> {
    let url = format!(
        "{}/api/config/v1/marketplaces",
        devpl.host.as_str().trim_end_matches('/')
    );
    let headers = vec![
        (
            header::AUTHORIZATION,
            super::worker::basic_auth(devpl.env_key.expose(), devpl.env_secret.expose()),
        ),
        (header::ACCEPT, HeaderValue::from_static("application/json")),
    ];
    // Marketplaces with their certificates: a few KiB each.
    let (status, _, body) =
        super::worker::call(http, Method::GET, &url, headers, Bytes::new(), 8 << 20)
            .await
            .map_err(|e| e.0)?;
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}"));
    }
    let doc: Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))?;
    doc["marketplaces"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("{url}: no marketplaces array"))
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// Values from the platform are data, never secret references: `file:/…` or `env:…`
/// there would make idgate read its own secrets and send them to the marketplace's
/// API host.
fn literal(name: &str, path: &[&str], v: &str) -> Result<String, String> {
    let lower = v.to_ascii_lowercase();
    if lower.starts_with("file:") || lower.starts_with("env:") {
        return Err(format!(
            "marketplace {name}: {} looks like a secret reference; refused",
            path.join(".")
        ));
    }
    Ok(v.to_owned())
}

/// One marketplace as a `[[tenants]]` table, or why it cannot be one.
fn tenant_table(m: &Value) -> Result<(String, toml::Table), String> {
    let name = text(m, &["marketplace"]).ok_or("a marketplace without a name")?;
    let id = tenant_id(name);
    if id.is_empty() {
        return Err(format!("marketplace {name:?} gives no usable tenant id"));
    }
    let need = |path: &[&str]| {
        text(m, path)
            .ok_or_else(|| format!("marketplace {name}: {} is missing", path.join(".")))
            .and_then(|v| literal(name, path, v))
    };
    let idp = need(&["sso", "idp"])?;
    let mut saml = toml::Table::new();
    saml.insert("idp_entity_id".into(), idp.clone().into());
    saml.insert(
        "idp_sso_url".into(),
        format!("{}/api/v1/auth/saml", idp.trim_end_matches('/')).into(),
    );
    saml.insert(
        "idp_certificate".into(),
        need(&["sso", "x509_certificate"])?.into(),
    );
    // Maestrano's IdP key signs with SHA-1.
    saml.insert("allow_sha1".into(), true.into());
    let mut mno = toml::Table::new();
    mno.insert("api_id".into(), need(&["api", "id"])?.into());
    mno.insert("api_key".into(), need(&["api", "key"])?.into());
    if let Some(h) = text(m, &["api", "host"]) {
        mno.insert(
            "api_host".into(),
            literal(name, &["api", "host"], h)?.into(),
        );
    }
    if let Some(h) = text(m, &["connec", "host"]) {
        mno.insert(
            "connec_host".into(),
            literal(name, &["connec", "host"], h)?.into(),
        );
    }
    // The platform spells it both ways; idgate serves its own paths (see
    // /maestrano/metadata), so the value only has to be readable.
    let hooks = m.get("webhooks").or_else(|| m.get("webhook"));
    if hooks.is_some_and(|h| !h.is_object()) {
        return Err(format!("marketplace {name}: webhooks is not an object"));
    }
    let mut t = toml::Table::new();
    t.insert("id".into(), id.clone().into());
    t.insert("saml".into(), saml.into());
    t.insert("maestrano".into(), mno.into());
    Ok((id, t))
}

/// The configured TOML plus one tenant per marketplace, validated as a whole. A
/// marketplace that cannot be a tenant, or whose id a configured tenant has, is left
/// out with a log line; the others still come in. An empty list is refused (a platform
/// answering with nothing is more likely broken than emptied).
pub fn merged(base: &Config, marketplaces: &[Value]) -> Result<Config, String> {
    if marketplaces.is_empty() {
        return Err("the developer platform lists no marketplace".into());
    }
    let (text, dir) = (&base.source.0, &base.source.1);
    let mut doc: toml::Table = text.parse().map_err(|e| format!("the config: {e}"))?;
    let mut tenants = match doc.remove("tenants") {
        Some(toml::Value::Array(a)) => a,
        None => Vec::new(),
        Some(_) => return Err("the config's tenants is not an array".into()),
    };
    // A config with one tenant makes it the default; keep it so once marketplaces join.
    if let [toml::Value::Table(only)] = tenants.as_mut_slice()
        && !only.contains_key("default")
    {
        only.insert("default".into(), true.into());
    }
    let render = |tenants: &[toml::Value]| -> Result<String, String> {
        let mut d = doc.clone();
        d.insert("tenants".into(), toml::Value::Array(tenants.to_vec()));
        toml::to_string(&d).map_err(|e| e.to_string())
    };
    let mut taken: Vec<String> = base.tenants.iter().map(|t| t.id.clone()).collect();
    for m in marketplaces {
        match tenant_table(m) {
            Ok((id, _)) if taken.contains(&id) => {
                tracing::error!(tenant = %id, "a marketplace has the id of a configured tenant: left out");
            }
            Ok((id, table)) => {
                // Checked on top of what is accepted so far, so one bad marketplace
                // does not keep out the rest.
                let mut trial = tenants.clone();
                trial.push(toml::Value::Table(table));
                match Config::from_toml(&render(&trial)?, dir) {
                    Ok(_) => {
                        taken.push(id);
                        tenants = trial;
                    }
                    Err(e) => {
                        tracing::error!(tenant = %id, error = %e, "a marketplace is not a valid tenant: left out")
                    }
                }
            }
            Err(reason) => tracing::error!(reason, "a marketplace is not a valid tenant: left out"),
        }
    }
    let mut merged = Config::from_toml(&render(&tenants)?, dir).map_err(|e| e.to_string())?;
    for t in &mut merged.tenants {
        t.from_devpl = !base.tenants.iter().any(|b| b.id == t.id);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marketplace_names_become_tenant_ids() {
        assert_eq!(tenant_id("maestrano"), "maestrano");
        assert_eq!(tenant_id("My Market.io"), "my-market-io");
        assert_eq!(tenant_id("--"), "");
    }

    #[test]
    fn a_marketplace_needs_its_certificate_and_credentials() {
        let m = serde_json::json!({"marketplace": "m", "api": {"id": "a", "key": "k"}, "sso": {"idp": "https://idp"}});
        assert!(tenant_table(&m).unwrap_err().contains("x509_certificate"));
        let m = serde_json::json!({"marketplace": "m", "webhook": 3, "api": {"id": "a", "key": "k"}, "sso": {"idp": "https://idp", "x509_certificate": "x"}});
        assert!(tenant_table(&m).unwrap_err().contains("webhooks"));
        for (path, value) in [
            ("key", "file:/etc/idgate/signing.pem"),
            ("key", "ENV:SECRET"),
        ] {
            let m = serde_json::json!({"marketplace": "m", "api": {"id": "a", path: value}, "sso": {"idp": "https://idp", "x509_certificate": "x"}});
            assert!(
                tenant_table(&m).unwrap_err().contains("secret reference"),
                "{value}"
            );
        }
        let m = serde_json::json!({"marketplace": "m", "api": {"id": "a", "key": "k"}, "sso": {"idp": "https://idp", "x509_certificate": "file:/etc/passwd"}});
        assert!(tenant_table(&m).unwrap_err().contains("secret reference"));
    }
}
