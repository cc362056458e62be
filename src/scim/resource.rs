//! Users and groups in their SCIM form (RFC 7643), both ways, and the discovery
//! documents that describe exactly that form.
//!
//! Reading is lenient where real clients differ (attribute names in any case, Entra's
//! `"True"`/`"False"` strings for booleans, read-only attributes sent back) and strict
//! where a wrong guess would store the wrong thing (a userName that is not a string).

use serde_json::{Map, Value, json};

use super::ScimError;
use crate::directory::model::{Email, Group, User};

/// Core schema URNs.
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// Core schema URNs.
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

/// Attributes whose string values compare case-sensitively in filters (RFC 7643
/// `caseExact`): identifiers. Everything else compares case-insensitively.
pub fn case_exact(path_key: &str) -> bool {
    matches!(
        path_key,
        "id" | "externalid" | "members.value" | "groups.value" | "meta.version"
    )
}

/// `meta.version`: a weak ETag of the record's version.
pub fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// An id as one URL path segment. Ids made by logins are the IdP's (group_uid, uid)
/// and may hold any character.
fn segment(id: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'@');
    percent_encoding::utf8_percent_encode(id, SEGMENT).to_string()
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta(kind: &str, location: String, created: i64, updated: i64, version: u64) -> Value {
    json!({
        "resourceType": kind,
        "created": rfc3339(created),
        "lastModified": rfc3339(updated),
        "location": location,
        "version": etag(version),
    })
}

/// A user as SCIM shows it. `groups` are the user's (visible) groups.
///
/// There is no `name.formatted`: it would be derived from the other two, and clients
/// that write a name compare what they get back with what they sent.
pub fn user_json(user: &User, groups: &[&Group], base: &str) -> Value {
    let mut o = Map::new();
    o.insert("schemas".into(), json!([USER_SCHEMA]));
    o.insert("id".into(), json!(user.id));
    if let Some(x) = &user.external_id {
        o.insert("externalId".into(), json!(x));
    }
    // A user that only logins have seen has no client's userName: the one chosen at its
    // first login (or its id) stands in, the value it is indexed and listed by.
    o.insert("userName".into(), json!(user.scim_user_name()));
    let mut name = Map::new();
    if let Some(g) = &user.given_name {
        name.insert("givenName".into(), json!(g));
    }
    if let Some(f) = &user.family_name {
        name.insert("familyName".into(), json!(f));
    }
    if !name.is_empty() {
        o.insert("name".into(), Value::Object(name));
    }
    if let Some(d) = &user.display_name {
        o.insert("displayName".into(), json!(d));
    }
    let emails: Vec<Value> = if user.emails.is_empty() {
        user.email
            .iter()
            .map(|e| json!({"value": e, "primary": true}))
            .collect()
    } else {
        user.emails
            .iter()
            .map(|e| {
                let mut m = json!({"value": e.value, "primary": e.primary});
                if let Some(k) = &e.kind {
                    m["type"] = json!(k);
                }
                m
            })
            .collect()
    };
    if !emails.is_empty() {
        o.insert("emails".into(), Value::Array(emails));
    }
    o.insert("active".into(), json!(user.active));
    let groups: Vec<Value> = groups
        .iter()
        .map(|g| {
            json!({
                "value": g.id,
                "display": g.name,
                "$ref": format!("{base}/Groups/{}", segment(&g.id)),
                "type": "direct",
            })
        })
        .collect();
    o.insert("groups".into(), Value::Array(groups));
    o.insert(
        "meta".into(),
        meta(
            "User",
            format!("{base}/Users/{}", segment(&user.id)),
            user.created_at,
            user.updated_at,
            user.version,
        ),
    );
    Value::Object(o)
}

/// A group as SCIM shows it; `members` None leaves the attribute out (it was excluded
/// and need not be read).
pub fn group_json(group: &Group, members: Option<&[String]>, base: &str) -> Value {
    let mut o = Map::new();
    o.insert("schemas".into(), json!([GROUP_SCHEMA]));
    o.insert("id".into(), json!(group.id));
    if let Some(x) = &group.external_id {
        o.insert("externalId".into(), json!(x));
    }
    o.insert("displayName".into(), json!(group.name));
    if let Some(members) = members {
        let list: Vec<Value> = members
            .iter()
            .map(|id| json!({"value": id, "$ref": format!("{base}/Users/{}", segment(id)), "type": "User"}))
            .collect();
        o.insert("members".into(), Value::Array(list));
    }
    o.insert(
        "meta".into(),
        meta(
            "Group",
            format!("{base}/Groups/{}", segment(&group.id)),
            group.created_at,
            group.updated_at,
            group.version,
        ),
    );
    Value::Object(o)
}

/// A ListResponse.
pub fn list_json(total: usize, start_index: usize, resources: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": total,
        "startIndex": start_index,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

/// The member of `obj` named `name`, compared case-insensitively (SCIM attribute names
/// are), also under the core schema's URN prefix.
fn get<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| {
            k.eq_ignore_ascii_case(name)
                || k.rsplit_once(':').is_some_and(|(urn, attr)| {
                    (urn.eq_ignore_ascii_case(USER_SCHEMA)
                        || urn.eq_ignore_ascii_case(GROUP_SCHEMA))
                        && attr.eq_ignore_ascii_case(name)
                })
        })
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

/// A string attribute; empty counts as absent. Every string a client writes becomes an
/// identity value (userName, names, emails, ids) or sits next to one, and identity
/// values travel to the app as headers, so control characters are refused anywhere in
/// them, before any trimming (the value is not echoed back).
fn string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, ScimError> {
    match get(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) if crate::directory::has_control_character(s) => Err(
            ScimError::invalid_value(format!("{name} must not contain control characters")),
        ),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ScimError::invalid_value(format!("{name} must be a string"))),
    }
}

/// A boolean, also as Entra's string form.
fn boolean(v: &Value, name: &str) -> Result<bool, ScimError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(ScimError::invalid_value(format!(
            "{name} must be a boolean"
        ))),
    }
}

fn object<'a>(body: &'a Value, kind: &str) -> Result<&'a Map<String, Value>, ScimError> {
    body.as_object()
        .ok_or_else(|| ScimError::invalid_syntax(format!("a {kind} must be a JSON object")))
}

/// The user that `body` describes, on top of `base`: every attribute a client may write
/// is taken from the body, so an absent one is cleared (PUT semantics; a create starts
/// from an empty base). Read-only attributes in the body are ignored, as RFC 7643
/// asks; memberships are kept.
pub fn user_from_json(body: &Value, base: &User) -> Result<User, ScimError> {
    let o = object(body, "User")?;
    let mut u = base.clone();
    u.user_name = Some(
        string(o, "userName")?.ok_or_else(|| ScimError::invalid_value("userName is required"))?,
    );
    u.external_id = string(o, "externalId")?;
    u.display_name = string(o, "displayName")?;
    match get(o, "name") {
        None => {
            u.given_name = None;
            u.family_name = None;
        }
        Some(Value::Object(name)) => {
            u.given_name = string(name, "givenName")?;
            u.family_name = string(name, "familyName")?;
        }
        Some(_) => return Err(ScimError::invalid_value("name must be an object")),
    }
    let mut emails = Vec::new();
    match get(o, "emails") {
        None => {}
        Some(Value::Array(list)) => {
            for e in list {
                let e = e
                    .as_object()
                    .ok_or_else(|| ScimError::invalid_value("emails must hold objects"))?;
                let Some(value) = string(e, "value")? else {
                    continue; // an entry without an address says nothing
                };
                emails.push(Email {
                    value,
                    kind: string(e, "type")?,
                    primary: get(e, "primary")
                        .map(|p| boolean(p, "emails.primary"))
                        .transpose()?
                        .unwrap_or(false),
                });
            }
        }
        Some(_) => return Err(ScimError::invalid_value("emails must be an array")),
    }
    if emails.iter().filter(|e| e.primary).count() > 1 {
        return Err(ScimError::invalid_value("at most one email may be primary"));
    }
    u.set_emails(emails);
    // Without `active`, the status stays what it was (true for a new user): removing
    // the attribute must not quietly reactivate someone.
    if let Some(v) = get(o, "active") {
        u.active = boolean(v, "active")?;
    }
    Ok(u)
}

/// The group that `body` describes on top of `base`, and its member ids when the body
/// lists them (None: the attribute is absent).
pub fn group_from_json(
    body: &Value,
    base: &Group,
) -> Result<(Group, Option<Vec<String>>), ScimError> {
    let o = object(body, "Group")?;
    let mut g = base.clone();
    g.name = string(o, "displayName")?
        .ok_or_else(|| ScimError::invalid_value("displayName is required"))?;
    g.external_id = string(o, "externalId")?;
    let members = match get(o, "members") {
        None => None,
        Some(Value::Array(list)) if list.len() > super::MAX_MEMBERS => {
            return Err(ScimError::invalid_value(format!(
                "more than {} members in one request",
                super::MAX_MEMBERS
            )));
        }
        Some(Value::Array(list)) => {
            let mut ids = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for m in list {
                let m = m
                    .as_object()
                    .ok_or_else(|| ScimError::invalid_value("members must hold objects"))?;
                let id = string(m, "value")?
                    .ok_or_else(|| ScimError::invalid_value("a member needs a value"))?;
                if seen.insert(id.clone()) {
                    ids.push(id);
                }
            }
            Some(ids)
        }
        Some(_) => return Err(ScimError::invalid_value("members must be an array")),
    };
    Ok((g, members))
}

/// Keeps only what `attributes` asks for, or drops what `excluded` names (RFC 7644
/// §3.4.2.5). `id` and `schemas` are always returned.
pub fn project(resource: &mut Value, attributes: &[String], excluded: &[String]) {
    let Some(o) = resource.as_object_mut() else {
        return;
    };
    let always = |k: &str| k == "id" || k == "schemas";
    let split = |a: &str| -> (String, Option<String>) {
        let a = a.rsplit_once(':').map_or(a, |(_, attr)| attr);
        match a.split_once('.') {
            Some((top, sub)) => (top.to_ascii_lowercase(), Some(sub.to_ascii_lowercase())),
            None => (a.to_ascii_lowercase(), None),
        }
    };
    if !attributes.is_empty() {
        let wanted: Vec<(String, Option<String>)> = attributes.iter().map(|a| split(a)).collect();
        o.retain(|k, v| {
            if always(k) {
                return true;
            }
            let lk = k.to_ascii_lowercase();
            let subs: Vec<&String> = wanted
                .iter()
                .filter(|(top, _)| *top == lk)
                .filter_map(|(_, sub)| sub.as_ref())
                .collect();
            let whole = wanted.iter().any(|(top, sub)| *top == lk && sub.is_none());
            if whole {
                return true;
            }
            if subs.is_empty() {
                return false;
            }
            keep_subs(v, &subs);
            true
        });
    }
    for a in excluded {
        let (top, sub) = split(a);
        if always(&top) {
            continue;
        }
        match sub {
            None => o.retain(|k, _| k.to_ascii_lowercase() != top),
            Some(sub) => {
                for (k, v) in o.iter_mut() {
                    if k.to_ascii_lowercase() == top {
                        drop_sub(v, &sub);
                    }
                }
            }
        }
    }
}

fn keep_subs(v: &mut Value, subs: &[&String]) {
    match v {
        Value::Object(m) => m.retain(|k, _| subs.iter().any(|s| k.eq_ignore_ascii_case(s))),
        Value::Array(items) => items.iter_mut().for_each(|i| keep_subs(i, subs)),
        _ => {}
    }
}

fn drop_sub(v: &mut Value, sub: &str) {
    match v {
        Value::Object(m) => m.retain(|k, _| !k.eq_ignore_ascii_case(sub)),
        Value::Array(items) => items.iter_mut().for_each(|i| drop_sub(i, sub)),
        _ => {}
    }
}

/// `/ServiceProviderConfig`: what this server implements, and nothing more.
pub fn service_provider_config(base: &str, max_results: usize) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": max_results},
        "changePassword": {"supported": false},
        "sort": {"supported": true},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "The tenant's token from `idgate token`, as Authorization: Bearer <token>",
            "primary": true,
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base}/ServiceProviderConfig"),
        },
    })
}

/// `/ResourceTypes`.
pub fn resource_types(base: &str) -> Vec<Value> {
    [
        ("User", "/Users", USER_SCHEMA),
        ("Group", "/Groups", GROUP_SCHEMA),
    ]
    .into_iter()
    .map(|(name, endpoint, schema)| {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": name,
            "name": name,
            "endpoint": endpoint,
            "description": name,
            "schema": schema,
            "schemaExtensions": [],
            "meta": {
                "resourceType": "ResourceType",
                "location": format!("{base}/ResourceTypes/{name}"),
            },
        })
    })
    .collect()
}

fn attr(name: &str, kind: &str, extra: Value) -> Value {
    let mut a = json!({
        "name": name,
        "type": kind,
        "multiValued": false,
        "description": name,
        "required": false,
        "caseExact": false,
        "mutability": "readWrite",
        "returned": "default",
        "uniqueness": "none",
    });
    if let (Some(a), Some(extra)) = (a.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            a.insert(k.clone(), v.clone());
        }
    }
    a
}

/// `/Schemas`: the User and Group attributes this server stores.
pub fn schemas(base: &str) -> Vec<Value> {
    let user = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER_SCHEMA,
        "name": "User",
        "description": "User Account",
        "attributes": [
            attr("userName", "string", json!({"required": true, "uniqueness": "server"})),
            attr("name", "complex", json!({"subAttributes": [
                attr("familyName", "string", json!({})),
                attr("givenName", "string", json!({})),
            ]})),
            attr("displayName", "string", json!({})),
            attr("active", "boolean", json!({})),
            attr("emails", "complex", json!({"multiValued": true, "subAttributes": [
                attr("value", "string", json!({})),
                attr("type", "string", json!({"canonicalValues": ["work", "home", "other"]})),
                attr("primary", "boolean", json!({})),
            ]})),
            attr("groups", "complex", json!({"multiValued": true, "mutability": "readOnly", "subAttributes": [
                attr("value", "string", json!({"mutability": "readOnly", "caseExact": true})),
                attr("$ref", "reference", json!({"mutability": "readOnly", "referenceTypes": ["Group"]})),
                attr("display", "string", json!({"mutability": "readOnly"})),
                attr("type", "string", json!({"mutability": "readOnly", "canonicalValues": ["direct"]})),
            ]})),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{USER_SCHEMA}")},
    });
    let group = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": GROUP_SCHEMA,
        "name": "Group",
        "description": "Group (company)",
        "attributes": [
            attr("displayName", "string", json!({"required": true})),
            attr("members", "complex", json!({"multiValued": true, "subAttributes": [
                attr("value", "string", json!({"mutability": "immutable", "caseExact": true})),
                attr("$ref", "reference", json!({"mutability": "immutable", "referenceTypes": ["User"]})),
                attr("type", "string", json!({"mutability": "immutable", "canonicalValues": ["User"]})),
            ]})),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{GROUP_SCHEMA}")},
    });
    vec![user, group]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_string_booleans_and_case_insensitive_names_are_read() {
        let body = json!({
            "UserName": "ann@x.com",
            "ACTIVE": "False",
            "name": {"GivenName": "Ann"},
            "emails": [{"value": "ann@x.com", "type": "work", "primary": "True"}],
            "groups": [{"value": "ignored"}],
            "id": "ignored-too",
        });
        let base = User::new("u1", 0);
        let u = user_from_json(&body, &base).unwrap();
        assert_eq!(u.id, "u1");
        assert_eq!(u.user_name.as_deref(), Some("ann@x.com"));
        assert!(!u.active);
        assert_eq!(u.given_name.as_deref(), Some("Ann"));
        assert_eq!(u.email.as_deref(), Some("ann@x.com"));
        assert!(u.memberships.is_empty());
    }

    #[test]
    fn absent_attributes_are_cleared_and_bad_types_refused() {
        let mut base = User::new("u1", 0);
        base.given_name = Some("Old".into());
        base.display_name = Some("Old".into());
        let u = user_from_json(&json!({"userName": "a"}), &base).unwrap();
        assert_eq!((u.given_name, u.display_name), (None, None));
        assert!(u.active, "a new user is active");
        for bad in [
            json!({}),
            json!({"userName": 7}),
            json!({"userName": "a", "active": "maybe"}),
            json!({"userName": "a", "emails": "x"}),
            json!([1]),
        ] {
            assert!(user_from_json(&bad, &base).is_err(), "{bad}");
        }
    }

    #[test]
    fn projection_keeps_asked_attributes_and_always_the_id() {
        let u = User::new("u1", 0);
        let mut v = user_json(&u, &[], "https://x/v2");
        project(&mut v, &["userName".into()], &[]);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "schemas", "userName"]);

        let g = Group::new("g1", "Acme", 0);
        let mut v = group_json(&g, Some(&["u1".into()]), "https://x/v2");
        project(&mut v, &[], &["members".into()]);
        assert!(v.get("members").is_none());
        assert_eq!(v["displayName"], "Acme");
    }

    #[test]
    fn names_are_shown_as_stored_and_absent_active_keeps_the_status() {
        let mut u = User::new("u1", 0);
        u.given_name = Some("Ann".into());
        u.active = false;
        let v = user_json(&u, &[], "b");
        assert_eq!(v["name"], json!({"givenName": "Ann"}));
        assert_eq!(v["meta"]["version"], "W/\"1\"");
        let back = user_from_json(&json!({"userName": "a"}), &u).unwrap();
        assert!(!back.active, "a body without active does not reactivate");
    }
}
