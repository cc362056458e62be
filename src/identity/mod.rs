//! The identity that idgate asserts to the app: plain headers plus a signed JWT, and the
//! JWKS that lets the app verify the JWT.

pub mod keys;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;

use crate::config::{HeaderNames, IdentityConfig, NameOrder, defaults};
use keys::{LoadError, SigningKey};

/// Who the request is from, as the app will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Local user id.
    pub user_id: String,
    /// Group (company) id.
    pub group_id: String,
    /// Tenant id.
    pub tenant: String,
    /// Email, or empty.
    pub email: String,
    /// Given name, or empty.
    pub given_name: String,
    /// Family name, or empty.
    pub family_name: String,
    /// Role in the group.
    pub role: String,
    /// The provisioning client's display name for the user, or empty: the name when
    /// there are no given/family names.
    pub display_name: String,
    /// The session's group first, then the user's other groups sorted, no duplicates
    /// (see [`Identity::group_list`]).
    pub groups: Vec<String>,
}

impl Identity {
    /// The groups as the app sees them: `group_id` first, then `others` sorted, without
    /// duplicates (SPEC §9).
    pub fn group_list<'a>(
        group_id: &str,
        others: impl IntoIterator<Item = &'a str>,
    ) -> Vec<String> {
        let mut rest: Vec<&str> = others.into_iter().filter(|g| *g != group_id).collect();
        rest.sort_unstable();
        rest.dedup();
        std::iter::once(group_id)
            .chain(rest)
            .map(str::to_owned)
            .collect()
    }

    /// The display name, composed in the tenant's order; the email (then the user id)
    /// when the IdP sent no names, so the header is never empty.
    pub fn display_name(&self, order: NameOrder) -> String {
        let (a, b) = match order {
            NameOrder::GivenFamily => (&self.given_name, &self.family_name),
            NameOrder::FamilyGiven => (&self.family_name, &self.given_name),
        };
        let joined = format!("{a} {b}");
        let joined = joined.trim();
        if !joined.is_empty() {
            joined.to_owned()
        } else if !self.display_name.trim().is_empty() {
            self.display_name.trim().to_owned()
        } else if !self.email.is_empty() {
            self.email.clone()
        } else {
            self.user_id.clone()
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'static str,
    aud: &'a str,
    sub: &'a str,
    group_id: &'a str,
    tenant: &'a str,
    email: &'a str,
    name: &'a str,
    given_name: &'a str,
    family_name: &'a str,
    role: &'a str,
    groups: &'a [String],
    iat: i64,
    exp: i64,
    jti: String,
}

/// The comma-separated group list within [`defaults::GROUPS_MAX_BYTES`], cut at a
/// whole id, and how many ids it kept. A `,` inside an id is written `%2C` (and `%`
/// itself `%25`), so that splitting on commas gives back exactly the ids: IdPs send group
/// names as ids ("Sales, EMEA"), and one id must never read as two.
fn bounded_groups(groups: &[String]) -> (String, usize) {
    let mut out = String::new();
    let mut kept = 0;
    for g in groups {
        let escapes = g.bytes().filter(|b| matches!(b, b',' | b'%')).count();
        let extra = g.len() + 2 * escapes + usize::from(kept > 0);
        if out.len() + extra > defaults::GROUPS_MAX_BYTES {
            break;
        }
        if kept > 0 {
            out.push(',');
        }
        if escapes == 0 {
            out.push_str(g);
        } else {
            for c in g.chars() {
                match c {
                    ',' => out.push_str("%2C"),
                    '%' => out.push_str("%25"),
                    c => out.push(c),
                }
            }
        }
        kept += 1;
    }
    (out, kept)
}

/// Claims of a request idgate makes on a company's behalf, with no user (Connec!
/// deliveries): the app can tell it from a user's by the missing `sub`.
#[derive(Serialize)]
struct ServiceClaims<'a> {
    iss: &'static str,
    aud: &'a str,
    tenant: &'a str,
    group_id: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
}

/// The headers for one identity, built once and reused (their values are
/// reference-counted, so cloning them into a request does not copy).
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// (name, value) pairs, the JWT last.
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
    /// When the JWT in it expires (unix seconds).
    pub expires_at: i64,
}

/// Why an identity could not be turned into headers.
#[derive(Debug, thiserror::Error)]
pub enum HeadersError {
    /// A value cannot be a header value (it holds a control character); the field is
    /// named, never its value. Logins and SCIM refuse such values, so only a record
    /// written some other way gets here.
    #[error("identity field {0} holds a control character")]
    NotAHeaderValue(&'static str),
    /// Signing the JWT failed.
    #[error(transparent)]
    Sign(#[from] LoadError),
}

/// How an identity was established, as `X-Idgate-Auth` tells the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A browser session made by a login.
    Session,
    /// A machine client's bearer JWT from a configured issuer.
    Bearer,
}

impl Via {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Session => "session",
            Via::Bearer => "bearer",
        }
    }
}

/// Builds identity headers under the header names, which are fixed for the process
/// (the gateway strips them by name). The keys, audience and lifetime are
/// configuration that a reload replaces: they are part of the
/// [`crate::snapshot::Snapshot`] and passed in by the caller, which loaded it.
pub struct Signer {
    names: HeaderNames,
}

/// What a reload of `[identity]` replaces.
pub struct SignerKeys {
    key: SigningKey,
    audience: String,
    ttl: Duration,
    jwks: Bytes,
    /// SHA-256 over what the keys were built from, to tell a change from a re-read.
    source: [u8; 32],
}

/// SHA-256 over the `[identity]` settings the keys are built from.
fn keys_source(config: &IdentityConfig) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in config
        .signing_key
        .iter()
        .chain(config.previous_keys.iter())
        .map(|s| s.expose())
    {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(config.audience.as_bytes());
    h.update([0]);
    h.update(config.ttl.as_millis().to_le_bytes());
    h.finalize().into()
}

/// Errors building the signer.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// `[identity].signing_key` could not be used.
    #[error("identity.signing_key: {0}")]
    Key(LoadError),
    /// A `[identity].previous_keys` entry could not be used.
    #[error("identity.previous_keys[{0}]: {1}")]
    Previous(usize, LoadError),
}

impl Signer {
    /// The header names of `[identity.headers]`.
    pub fn new(config: &IdentityConfig) -> Signer {
        // Static names clone without touching a reference count, which matters on the
        // hot path where every forwarded request carries seven of them. The leak is
        // seven short strings, once per process.
        let leak = |n: &http::HeaderName| {
            http::HeaderName::from_static(Box::leak(n.as_str().to_owned().into_boxed_str()))
        };
        let h = &config.headers;
        let names = HeaderNames {
            user_id: leak(&h.user_id),
            group_id: leak(&h.group_id),
            tenant: leak(&h.tenant),
            email: leak(&h.email),
            name: leak(&h.name),
            role: leak(&h.role),
            assertion: leak(&h.assertion),
            groups: leak(&h.groups),
            groups_truncated: leak(&h.groups_truncated),
            auth: leak(&h.auth),
        };
        Signer { names }
    }
}

impl SignerKeys {
    /// Loads the signing key (or makes an ephemeral one when `ephemeral_ok` and none is
    /// configured) and the previous keys. `running`: the keys in use (on a reload),
    /// whose key is kept when the config names none (the ephemeral one).
    pub fn new(
        config: &IdentityConfig,
        ephemeral_ok: bool,
        running: Option<&SignerKeys>,
    ) -> Result<SignerKeys, SignerError> {
        let key = match (&config.signing_key, running.map(|r| &r.key)) {
            (Some(secret), _) => SigningKey::from_pem(secret.expose()).map_err(SignerError::Key)?,
            (None, Some(running)) => running.clone(),
            (None, None) => {
                // Validation guarantees this only happens with the memory store.
                debug_assert!(ephemeral_ok);
                tracing::warn!(
                    "no [identity].signing_key: using an ephemeral EdDSA key; JWTs change key at every restart"
                );
                let pem = keys::generate_pem(keys::Algorithm::EdDSA)
                    .map_err(|e| SignerError::Key(LoadError::from_display(e)))?;
                SigningKey::from_pem(&pem).map_err(SignerError::Key)?
            }
        };
        let mut jwks = vec![key.jwk.clone()];
        for (i, prev) in config.previous_keys.iter().enumerate() {
            let jwk = keys::public_jwk(prev.expose()).map_err(|e| SignerError::Previous(i, e))?;
            if !jwks.iter().any(|k| k.common.key_id == jwk.common.key_id) {
                jwks.push(jwk);
            }
        }
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": jwks }))
            .expect("JWKS serializes")
            .into();
        Ok(SignerKeys {
            key,
            audience: config.audience.clone(),
            ttl: config.ttl,
            jwks,
            source: keys_source(config),
        })
    }
}

impl SignerKeys {
    /// Whether these keys are what `config` would build (so a reload keeps them, and
    /// with them an ephemeral key).
    pub fn built_from(&self, config: &IdentityConfig) -> bool {
        self.source == keys_source(config)
    }

    /// The JWKS document, pre-serialized.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// The current key's id.
    pub fn kid(&self) -> &str {
        &self.key.kid
    }

    /// JWT lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

impl Signer {
    /// Signs `identity` at `now` and builds its headers. Every value must be a header
    /// value as it is: one that is not makes an error, never a stand-in, because a
    /// shared stand-in would let different users reach the app as one.
    pub fn headers(
        &self,
        keys: &SignerKeys,
        identity: &Identity,
        order: NameOrder,
        now: i64,
    ) -> Result<IdentityHeaders, HeadersError> {
        self.headers_via(keys, identity, order, now, Via::Session)
    }

    /// [`Signer::headers`] for an identity established `via` a session or a bearer
    /// token: the app can tell the two apart by `X-Idgate-Auth`.
    pub fn headers_via(
        &self,
        keys: &SignerKeys,
        identity: &Identity,
        order: NameOrder,
        now: i64,
        via: Via,
    ) -> Result<IdentityHeaders, HeadersError> {
        let name = identity.display_name(order);
        // The JWT carries these too (JSON would escape them, but the app would still
        // see a value that no header could carry), so they are checked before signing.
        let fields = [
            ("user_id", &identity.user_id),
            ("group_id", &identity.group_id),
            ("tenant", &identity.tenant),
            ("email", &identity.email),
            ("given_name", &identity.given_name),
            ("family_name", &identity.family_name),
            ("display_name", &identity.display_name),
            ("role", &identity.role),
        ];
        if let Some((field, _)) = fields
            .iter()
            .find(|(_, v)| crate::directory::has_control_character(v))
        {
            return Err(HeadersError::NotAHeaderValue(field));
        }
        if identity
            .groups
            .iter()
            .any(|g| crate::directory::has_control_character(g))
        {
            return Err(HeadersError::NotAHeaderValue("groups"));
        }
        let (group_header, kept) = bounded_groups(&identity.groups);
        let groups = &identity.groups[..kept];
        let exp = now + keys.ttl.as_secs() as i64;
        let jti = {
            let bytes: [u8; 16] = rand::random();
            hex::encode(bytes)
        };
        let token = keys.key.sign(&Claims {
            iss: "idgate",
            aud: &keys.audience,
            sub: &identity.user_id,
            group_id: &identity.group_id,
            tenant: &identity.tenant,
            email: &identity.email,
            name: &name,
            given_name: &identity.given_name,
            family_name: &identity.family_name,
            role: &identity.role,
            groups,
            iat: now,
            exp,
            jti,
        })?;
        // UTF-8 passes as obs-text bytes; the values were checked above, so this only
        // fails if the two notions of a control character ever drift apart.
        let value = |field: &'static str, s: &str| {
            HeaderValue::from_bytes(s.as_bytes()).map_err(|_| HeadersError::NotAHeaderValue(field))
        };
        let n = &self.names;
        let mut headers = vec![
            (n.user_id.clone(), value("user_id", &identity.user_id)?),
            (n.group_id.clone(), value("group_id", &identity.group_id)?),
            (n.tenant.clone(), value("tenant", &identity.tenant)?),
            (n.email.clone(), value("email", &identity.email)?),
            (n.name.clone(), value("name", &name)?),
            (n.role.clone(), value("role", &identity.role)?),
            (n.groups.clone(), value("groups", &group_header)?),
        ];
        if kept < identity.groups.len() {
            headers.push((n.groups_truncated.clone(), HeaderValue::from_static("true")));
        }
        headers.push((n.auth.clone(), HeaderValue::from_static(via.as_str())));
        headers.push((
            n.assertion.clone(),
            HeaderValue::from_str(&token).map_err(LoadError::from_display)?,
        ));
        Ok(IdentityHeaders {
            headers,
            expires_at: exp,
        })
    }
}

impl Signer {
    /// Tenant, group and JWT headers (configured names) for a request idgate makes for
    /// a company rather than a user.
    pub fn service_headers(
        &self,
        keys: &SignerKeys,
        tenant: &str,
        group_id: &str,
        now: i64,
    ) -> Result<Vec<(http::HeaderName, HeaderValue)>, LoadError> {
        let token = keys.key.sign(&ServiceClaims {
            iss: "idgate",
            aud: &keys.audience,
            tenant,
            group_id,
            iat: now,
            exp: now + keys.ttl.as_secs() as i64,
            jti: hex::encode(rand::random::<[u8; 16]>()),
        })?;
        let value = |s: &str| HeaderValue::from_str(s).map_err(LoadError::from_display);
        let n = &self.names;
        Ok(vec![
            (n.tenant.clone(), value(tenant)?),
            (n.group_id.clone(), value(group_id)?),
            (n.assertion.clone(), value(&token)?),
        ])
    }
}

/// Shared handle.
pub type SharedSigner = Arc<Signer>;

/// The JWKS, cacheable for a few minutes (keys rotate with a previous-key overlap).
pub fn jwks_response(keys: &SignerKeys) -> http::Response<crate::response::Body> {
    let mut resp = http::Response::new(crate::response::full(keys.jwks()));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(user_id: &str, given_name: &str) -> Identity {
        Identity {
            user_id: user_id.into(),
            group_id: "g".into(),
            tenant: "acme".into(),
            email: String::new(),
            given_name: given_name.into(),
            family_name: "Lee".into(),
            role: "member".into(),
            display_name: String::new(),
            groups: vec!["g".into()],
        }
    }

    #[test]
    fn groups_go_first_the_sessions_then_the_rest_sorted_and_bounded() {
        assert_eq!(
            Identity::group_list("g-2", ["g-3", "g-2", "g-1", "g-3"]),
            ["g-2", "g-1", "g-3"]
        );
        let config = crate::config::Config::from_toml("", std::path::Path::new("/")).unwrap();
        let signer = Signer::new(&config.identity);
        let keys = SignerKeys::new(&config.identity, true, None).unwrap();
        let header = |h: &IdentityHeaders, name: &str| {
            h.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        let mut id = identity("u-1", "Ada");
        id.groups = Identity::group_list("g", ["b", "a"]);
        let h = signer
            .headers(&keys, &id, NameOrder::GivenFamily, 1_000)
            .unwrap();
        assert_eq!(header(&h, "x-idgate-groups").as_deref(), Some("g,a,b"));
        assert_eq!(header(&h, "x-idgate-groups-truncated"), None);
        assert_eq!(header(&h, "x-idgate-auth").as_deref(), Some("session"));
        assert_eq!(
            h.headers.last().unwrap().0,
            "x-idgate-assertion",
            "the JWT stays last"
        );

        // 100 ids of 50 bytes: 5,100 bytes with commas. Cut at the last whole id that
        // fits in 4 KiB, flagged, and the JWT claim is the same list.
        let many: Vec<String> = (0..100)
            .map(|i| format!("{i:03}{}", "x".repeat(47)))
            .collect();
        id.groups = Identity::group_list("g", many.iter().map(String::as_str));
        let h = signer
            .headers(&keys, &id, NameOrder::GivenFamily, 1_000)
            .unwrap();
        let value = header(&h, "x-idgate-groups").unwrap();
        assert!(
            value.len() <= 4096 && value.len() > 4096 - 51,
            "{}",
            value.len()
        );
        let kept: Vec<&str> = value.split(',').collect();
        assert_eq!(kept[0], "g");
        assert!(kept[1..].iter().all(|g| g.len() == 50), "only whole ids");
        assert_eq!(
            header(&h, "x-idgate-groups-truncated").as_deref(),
            Some("true")
        );
        let jwt = header(&h, "x-idgate-assertion").unwrap();
        let payload = jwt.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        let claim: Vec<&str> = claims["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(claim, kept);
    }

    #[test]
    fn a_comma_inside_a_group_id_cannot_split_it_in_the_groups_header() {
        // An IdP may send group names ("Sales, EMEA"): split on commas as documented,
        // the header must still give back exactly the ids, never an extra one.
        let config = crate::config::Config::from_toml("", std::path::Path::new("/")).unwrap();
        let signer = Signer::new(&config.identity);
        let keys = SignerKeys::new(&config.identity, true, None).unwrap();
        let mut id = identity("u-1", "Ada");
        id.group_id = "Sales, EMEA".into();
        id.groups = Identity::group_list(&id.group_id, ["admins", "100%", "a%2Cb"]);
        let h = signer
            .headers(&keys, &id, NameOrder::GivenFamily, 1_000)
            .unwrap();
        let value = h
            .headers
            .iter()
            .find(|(n, _)| n == "x-idgate-groups")
            .map(|(_, v)| v.to_str().unwrap().to_owned())
            .unwrap();
        assert_eq!(value, "Sales%2C EMEA,100%25,a%252Cb,admins");
        let decoded: Vec<String> = value
            .split(',')
            .map(|g| {
                percent_encoding::percent_decode_str(g)
                    .decode_utf8()
                    .unwrap()
                    .into_owned()
            })
            .collect();
        assert_eq!(decoded, id.groups);
        // The group-id header and the JWT carry the id as it is.
        let group = h.headers.iter().find(|(n, _)| n == "x-idgate-group-id");
        assert_eq!(group.unwrap().1, "Sales, EMEA");
    }

    #[test]
    fn a_value_that_is_no_header_refuses_the_identity_instead_of_a_stand_in() {
        let config = crate::config::Config::from_toml("", std::path::Path::new("/")).unwrap();
        let signer = Signer::new(&config.identity);
        let keys = SignerKeys::new(&config.identity, true, None).unwrap();
        let order = NameOrder::GivenFamily;
        let ok = signer
            .headers(&keys, &identity("u1", "Ann\tB"), order, 0)
            .unwrap();
        assert_eq!(ok.headers[4].1, "Ann\tB Lee");
        for (who, field) in [
            (identity("u\n1", "Ann"), "user_id"),
            (identity("u1", "Ann\r"), "given_name"),
            (identity("u1", "\u{7f}Ann"), "given_name"),
            (identity("u1\u{0}", "Ann"), "user_id"),
        ] {
            assert!(
                matches!(
                    signer.headers(&keys, &who, order, 0),
                    Err(HeadersError::NotAHeaderValue(f)) if f == field
                ),
                "{who:?}"
            );
        }
    }
}
