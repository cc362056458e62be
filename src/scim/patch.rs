//! SCIM 2.0 PATCH (RFC 7644 §3.5.2) applied to a resource's JSON form, including the request
//! shapes Okta and Microsoft Entra ID actually send, which stretch the RFC in a few places.

use super::filter::{self, AttrPath, CompareOp, Filter};
use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

const PATCH_OP_URN: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ENTERPRISE_USER_URN: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// The `op` of one PATCH operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchOpKind {
    /// `add`.
    Add,
    /// `replace`.
    Replace,
    /// `remove`.
    Remove,
}

/// A parsed PATCH path: `attr`, `attr.sub`, `attr[filter]`, `attr[filter].sub`, with optional URN prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    /// The attribute, with its sub-attribute only when there is no filter.
    pub attr: AttrPath,
    /// Value filter selecting elements of a multi-valued attribute.
    pub filter: Option<Filter>,
    /// Sub-attribute after the filter, as in `emails[type eq "work"].value`.
    pub sub_after_filter: Option<String>,
}

/// One operation of a PATCH request.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOp {
    /// What to do.
    pub op: PatchOpKind,
    /// Target; `None` means the resource itself.
    pub path: Option<PatchPath>,
    /// Operand, exactly as sent (an explicit JSON null is kept as `Some(Null)`).
    pub value: Option<Value>,
}

/// Why a PATCH request was rejected; each maps to a SCIM 400 `scimType`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// Malformed body or op → SCIM 400 scimType invalidSyntax
    #[error("invalid PATCH request: {0}")]
    InvalidSyntax(String),
    /// Bad path (unparseable) → 400 invalidPath
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// Bad value (wrong type, missing value for add/replace) → 400 invalidValue
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A value-filter path matched nothing for replace/remove → 400 noTarget
    #[error("no target: {0}")]
    NoTarget(String),
    /// Attempt to modify a read-only attribute → 400 mutability
    #[error("mutability: {0}")]
    Mutability(String),
}

impl PatchError {
    /// SCIM scimType string for the error response ("invalidSyntax", "invalidPath", "invalidValue", "noTarget", "mutability").
    pub fn scim_type(&self) -> &'static str {
        match self {
            PatchError::InvalidSyntax(_) => "invalidSyntax",
            PatchError::InvalidPath(_) => "invalidPath",
            PatchError::InvalidValue(_) => "invalidValue",
            PatchError::NoTarget(_) => "noTarget",
            PatchError::Mutability(_) => "mutability",
        }
    }
}

impl PatchPath {
    /// Parses a PATCH `path` attribute value.
    pub fn parse(text: &str) -> Result<PatchPath, PatchError> {
        let text = text.trim();
        let bad = |e: filter::FilterError| PatchError::InvalidPath(format!("'{text}': {e}"));
        let Some((head, rest)) = text.split_once('[') else {
            return Ok(PatchPath {
                attr: AttrPath::parse(text).map_err(bad)?,
                filter: None,
                sub_after_filter: None,
            });
        };
        // The filter may contain ']' inside string literals, but the suffix after it cannot.
        let Some((inner, tail)) = rest.rsplit_once(']') else {
            return Err(PatchError::InvalidPath(format!("'{text}': missing ']'")));
        };
        let attr = AttrPath::parse(head.trim_end()).map_err(bad)?;
        if attr.sub.is_some() {
            return Err(PatchError::InvalidPath(format!(
                "'{text}': a value filter cannot follow a sub-attribute"
            )));
        }
        let sub_after_filter = match tail.strip_prefix('.') {
            None if tail.is_empty() => None,
            Some(sub) if AttrPath::parse(sub).is_ok_and(|p| p.urn.is_none() && p.sub.is_none()) => {
                Some(sub.to_string())
            }
            _ => {
                return Err(PatchError::InvalidPath(format!(
                    "'{text}': expected '.subAttribute' or nothing after ']'"
                )));
            }
        };
        Ok(PatchPath {
            attr,
            filter: Some(filter::parse(inner).map_err(bad)?),
            sub_after_filter,
        })
    }
}

/// Parses a PatchOp request body: `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[...]}`.
/// Accept the key "Operations" case-insensitively ("operations" too); schemas optional-but-if-present must contain PatchOp URN;
/// op names case-insensitively ("Add", "Replace", "Remove", "add"...). Empty Operations → InvalidSyntax.
pub fn parse(body: &Value) -> Result<Vec<PatchOp>, PatchError> {
    let syntax = |m: &str| PatchError::InvalidSyntax(m.to_string());
    if !body.is_object() {
        return Err(syntax("body must be a JSON object"));
    }
    if let Some(schemas) = filter::get_ci(body, "schemas") {
        let listed = schemas.as_array().is_some_and(|list| {
            list.iter().any(|s| {
                s.as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(PATCH_OP_URN))
            })
        });
        if !listed {
            return Err(syntax("schemas must contain the PatchOp message URN"));
        }
    }
    let ops = filter::get_ci(body, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| syntax("Operations must be an array"))?;
    if ops.is_empty() {
        return Err(syntax("Operations is empty"));
    }
    ops.iter()
        .enumerate()
        .map(|(i, op)| parse_op(i, op))
        .collect()
}

fn parse_op(index: usize, raw: &Value) -> Result<PatchOp, PatchError> {
    let name = filter::get_ci(raw, "op")
        .and_then(Value::as_str)
        .ok_or_else(|| PatchError::InvalidSyntax(format!("Operations[{index}].op is missing")))?;
    let op = match name.to_ascii_lowercase().as_str() {
        "add" => PatchOpKind::Add,
        "replace" => PatchOpKind::Replace,
        "remove" => PatchOpKind::Remove,
        _ => {
            return Err(PatchError::InvalidSyntax(format!(
                "Operations[{index}]: unknown op '{name}'"
            )));
        }
    };
    let path = match filter::get_ci(raw, "path") {
        None | Some(Value::Null) => None,
        // Some clients send "" to mean "no path".
        Some(Value::String(p)) if p.trim().is_empty() => None,
        Some(Value::String(p)) => Some(PatchPath::parse(p)?),
        Some(_) => {
            return Err(PatchError::InvalidPath(format!(
                "Operations[{index}].path must be a string"
            )));
        }
    };
    let op = PatchOp {
        op,
        path,
        value: filter::get_ci(raw, "value").cloned(),
    };
    check_operands(&op)?;
    Ok(op)
}

fn check_operands(op: &PatchOp) -> Result<(), PatchError> {
    match (op.op, &op.path, &op.value) {
        (PatchOpKind::Remove, None, _) => {
            Err(PatchError::NoTarget("remove requires a path".into()))
        }
        (PatchOpKind::Add | PatchOpKind::Replace, _, None) => Err(PatchError::InvalidValue(
            "add and replace require a value".into(),
        )),
        (PatchOpKind::Add | PatchOpKind::Replace, None, Some(v)) if !v.is_object() => Err(
            PatchError::InvalidValue("without a path, the value must be an object".into()),
        ),
        _ => Ok(()),
    }
}

/// Applies ops in order to `resource` (the resource's SCIM JSON). `read_only` lists lowercased top-level attribute
/// names that must not be changed (e.g. ["id","meta","groups","schemas"]) → Mutability. `case_exact` as in filter::Filter::matches.
/// Atomic: on error `resource` is left unchanged (work on a clone).
///
/// Setting a read-only attribute to its current value is allowed, because Okta echoes `id` back in
/// path-less replaces. The `schemas` list is not maintained here: a caller that lets PATCH create an
/// extension object should add its URN itself.
pub fn apply(
    resource: &mut Value,
    ops: &[PatchOp],
    read_only: &[&str],
    case_exact: &dyn Fn(&str) -> bool,
) -> Result<(), PatchError> {
    if !resource.is_object() {
        return Err(PatchError::InvalidValue(
            "resource is not a JSON object".into(),
        ));
    }
    let mut work = resource.clone();
    for op in ops {
        check_operands(op)?;
        match (&op.path, &op.value) {
            (None, Some(value)) => apply_members(&mut work, op.op, value, case_exact)?,
            (Some(path), Some(value)) if op.op != PatchOpKind::Remove => {
                set_path(&mut work, op.op, path, value, true, case_exact)?;
            }
            (Some(path), value) => remove_path(&mut work, path, value.as_ref(), case_exact)?,
            (None, None) => {}
        }
    }
    // Comparing final states catches every route to a read-only attribute (paths, path-less
    // values, URN-qualified keys) in one place, and lets unchanged echoes through.
    for name in read_only {
        if filter::get_ci(resource, name) != filter::get_ci(&work, name) {
            return Err(PatchError::Mutability(format!("'{name}' is read-only")));
        }
    }
    *resource = work;
    Ok(())
}

/// Path-less add/replace: each member of `value` is applied as if it were the path.
fn apply_members(
    work: &mut Value,
    kind: PatchOpKind,
    value: &Value,
    case_exact: &dyn Fn(&str) -> bool,
) -> Result<(), PatchError> {
    let members = value.as_object().ok_or_else(|| {
        PatchError::InvalidValue("without a path, the value must be an object".into())
    })?;
    for (key, member) in members {
        // Clients copy the resource's `schemas` into the value; it is not an attribute to set.
        if key.eq_ignore_ascii_case("schemas") {
            continue;
        }
        // Full path syntax, since some clients put `emails[type eq "work"].value` keys here too.
        let path = PatchPath::parse(key)?;
        set_path(work, kind, &path, member, true, case_exact)?;
    }
    Ok(())
}

/// The whole URN when `path` names a schema rather than an attribute in one.
fn schema_urn_of(work: &Value, path: &PatchPath) -> Option<String> {
    let urn = path.attr.urn.as_deref()?;
    if path.filter.is_some() || path.attr.sub.is_some() {
        return None;
    }
    let full = format!("{urn}:{}", path.attr.attr);
    let listed = filter::get_ci(work, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter()
                .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(&full)))
        });
    let is_schema = listed
        || full.eq_ignore_ascii_case(ENTERPRISE_USER_URN)
        || filter::is_core_urn(&full)
        || filter::get_ci(work, &full).is_some_and(Value::is_object);
    is_schema.then_some(full)
}

/// The object holding `attr`'s attributes: the resource, or its extension object for `attr.urn`.
fn container<'v>(
    work: &'v mut Value,
    attr: &AttrPath,
    create: bool,
) -> Result<Option<&'v mut Map<String, Value>>, PatchError> {
    let Some(root) = work.as_object_mut() else {
        return Err(PatchError::InvalidValue(
            "resource is not a JSON object".into(),
        ));
    };
    let urn = match attr.urn.as_deref() {
        Some(urn) if !filter::is_core_urn(urn) => urn,
        _ => return Ok(Some(root)),
    };
    if existing_key(root, urn).is_none() && create {
        root.insert(urn.to_string(), Value::Object(Map::new()));
    }
    match get_mut_ci(root, urn) {
        None => Ok(None),
        Some(Value::Object(ext)) => Ok(Some(ext)),
        Some(_) => Err(PatchError::InvalidValue(format!(
            "'{urn}' is not an object"
        ))),
    }
}

fn set_path(
    work: &mut Value,
    kind: PatchOpKind,
    path: &PatchPath,
    value: &Value,
    allow_schema: bool,
    case_exact: &dyn Fn(&str) -> bool,
) -> Result<(), PatchError> {
    // RFC 7643 §2.5: null means unassigned, so replacing with null removes and adding null adds nothing.
    if value.is_null() {
        return match kind {
            PatchOpKind::Add => Ok(()),
            _ => remove_path(work, path, None, case_exact),
        };
    }
    if let Some(urn) = schema_urn_of(work, path).filter(|_| allow_schema) {
        return set_schema_object(work, kind, &urn, value, case_exact);
    }
    let Some(obj) = container(work, &path.attr, true)? else {
        return Ok(());
    };
    let name = path.attr.attr.as_str();
    match (&path.filter, &path.attr.sub) {
        (Some(filter), _) => set_filtered(obj, kind, path, filter, value, case_exact),
        (None, Some(sub)) => set_sub(obj, name, sub, value),
        (None, None) => {
            let exact = case_exact(&format!("{}.value", path.attr.key()));
            set_attr(obj, kind, name, value, exact);
            Ok(())
        }
    }
}

/// `{"urn:...:enterprise:2.0:User": {...}}` as a path-less member, or that URN as the path.
fn set_schema_object(
    work: &mut Value,
    kind: PatchOpKind,
    urn: &str,
    value: &Value,
    case_exact: &dyn Fn(&str) -> bool,
) -> Result<(), PatchError> {
    let members = value.as_object().ok_or_else(|| {
        PatchError::InvalidValue(format!("the value for '{urn}' must be an object"))
    })?;
    let core = filter::is_core_urn(urn);
    for (key, member) in members {
        let mut attr = AttrPath::parse(key)
            .map_err(|e| PatchError::InvalidPath(format!("'{urn}' member '{key}': {e}")))?;
        if !core {
            attr.urn = Some(urn.to_string());
        }
        let path = PatchPath {
            attr,
            filter: None,
            sub_after_filter: None,
        };
        set_path(work, kind, &path, member, false, case_exact)?;
    }
    Ok(())
}

fn set_attr(
    obj: &mut Map<String, Value>,
    kind: PatchOpKind,
    name: &str,
    value: &Value,
    exact: bool,
) {
    match (get_mut_ci(obj, name), value) {
        (Some(Value::Array(items)), _) if kind == PatchOpKind::Add => {
            add_unique(items, value, exact)
        }
        // RFC 7644 §3.5.2.1/3: both add and replace merge into a complex attribute.
        (Some(Value::Object(current)), Value::Object(new)) => merge(current, new),
        (Some(slot), _) => *slot = value.clone(),
        (None, _) => {
            obj.insert(name.to_string(), value.clone());
        }
    }
}

fn set_sub(
    obj: &mut Map<String, Value>,
    name: &str,
    sub: &str,
    value: &Value,
) -> Result<(), PatchError> {
    let fresh = || Value::Object(Map::from_iter([(sub.to_string(), value.clone())]));
    match get_mut_ci(obj, name) {
        Some(Value::Object(parent)) => set_ci(parent, sub, value.clone()),
        Some(Value::Array(items)) if items.is_empty() => items.push(fresh()),
        // No filter on a multi-valued parent selects every element.
        Some(Value::Array(items)) => items
            .iter_mut()
            .filter_map(Value::as_object_mut)
            .for_each(|item| set_ci(item, sub, value.clone())),
        Some(slot @ Value::Null) => *slot = fresh(),
        Some(_) => {
            return Err(PatchError::InvalidPath(format!(
                "'{name}' is not a complex attribute"
            )));
        }
        None => {
            obj.insert(name.to_string(), fresh());
        }
    }
    Ok(())
}

fn set_filtered(
    obj: &mut Map<String, Value>,
    kind: PatchOpKind,
    path: &PatchPath,
    filter: &Filter,
    value: &Value,
    case_exact: &dyn Fn(&str) -> bool,
) -> Result<(), PatchError> {
    let name = path.attr.attr.as_str();
    let sub = path.sub_after_filter.as_deref();
    let new_fields = match (sub, value) {
        (Some(_), _) => None,
        (None, Value::Object(fields)) => Some(fields),
        (None, _) => {
            return Err(PatchError::InvalidValue(format!(
                "the value for a filtered '{name}' path must be an object"
            )));
        }
    };
    let mut matched = 0;
    if let Some(Value::Array(items)) = get_mut_ci(obj, name) {
        for item in items.iter_mut() {
            if !filter.matches_element(item, &path.attr, case_exact) {
                continue;
            }
            let Some(fields) = item.as_object_mut() else {
                continue;
            };
            matched += 1;
            match (sub, new_fields) {
                (Some(sub), _) => set_ci(fields, sub, value.clone()),
                (None, Some(new)) => merge(fields, new),
                (None, None) => {}
            }
        }
    }
    if matched > 0 {
        return Ok(());
    }
    // Entra and Okta send `replace emails[type eq "work"].value` for users without a work email;
    // noTarget would make every such sync fail, so create the element the filter describes.
    if let (Some(sub), Some((field, want))) = (sub, simple_eq(filter)) {
        let element = Map::from_iter([
            (field.to_string(), want.clone()),
            (sub.to_string(), value.clone()),
        ]);
        match get_mut_ci(obj, name) {
            Some(Value::Array(items)) => items.push(Value::Object(element)),
            Some(slot @ Value::Null) => *slot = Value::Array(vec![Value::Object(element)]),
            Some(_) => {
                return Err(PatchError::InvalidPath(format!(
                    "'{name}' is not multi-valued"
                )));
            }
            None => {
                obj.insert(name.to_string(), Value::Array(vec![Value::Object(element)]));
            }
        }
        return Ok(());
    }
    let verb = if kind == PatchOpKind::Add {
        "add"
    } else {
        "replace"
    };
    Err(PatchError::NoTarget(format!(
        "{verb}: no element of '{name}' matches the filter"
    )))
}

/// `field eq value` on a plain sub-attribute: the only filter precise enough to build an element from.
fn simple_eq(filter: &Filter) -> Option<(&str, &Value)> {
    match filter {
        Filter::Compare {
            path:
                AttrPath {
                    urn: None,
                    attr,
                    sub: None,
                },
            op: CompareOp::Eq,
            value,
        } if !value.is_null() => Some((attr.as_str(), value)),
        _ => None,
    }
}

fn remove_path(
    work: &mut Value,
    path: &PatchPath,
    value: Option<&Value>,
    case_exact: &dyn Fn(&str) -> bool,
) -> Result<(), PatchError> {
    if let Some(urn) = schema_urn_of(work, path) {
        if filter::is_core_urn(&urn) {
            return Err(PatchError::InvalidPath(format!(
                "cannot remove the core schema '{urn}'"
            )));
        }
        if let Some(root) = work.as_object_mut() {
            remove_ci(root, &urn);
        }
        return Ok(());
    }
    let Some(obj) = container(work, &path.attr, false)? else {
        return Ok(());
    };
    let name = path.attr.attr.as_str();
    let exact = case_exact(&format!("{}.value", path.attr.key()));
    // Removing with no match is not an error: IdPs retry removes, and the end state is what they asked for.
    let emptied = match (&path.filter, &path.attr.sub, get_mut_ci(obj, name)) {
        (_, _, None) => false,
        (Some(filter), _, Some(Value::Array(items))) => match path.sub_after_filter.as_deref() {
            None => {
                items.retain(|item| !filter.matches_element(item, &path.attr, case_exact));
                items.is_empty()
            }
            Some(sub) => {
                for item in items.iter_mut() {
                    if filter.matches_element(item, &path.attr, case_exact)
                        && let Some(fields) = item.as_object_mut()
                    {
                        remove_ci(fields, sub);
                    }
                }
                false
            }
        },
        (Some(_), _, Some(_)) => false,
        (None, Some(sub), Some(Value::Object(fields))) => {
            remove_ci(fields, sub);
            false
        }
        (None, Some(sub), Some(Value::Array(items))) => {
            items
                .iter_mut()
                .filter_map(Value::as_object_mut)
                .for_each(|item| {
                    remove_ci(item, sub);
                });
            false
        }
        (None, Some(_), Some(_)) => false,
        // Entra removes group members as `"path":"members","value":[{"value":"id"}]`, meaning
        // only those elements, not the whole attribute.
        (None, None, Some(Value::Array(items))) if value.is_some_and(|v| !v.is_null()) => {
            let given: Vec<&Value> = match value {
                Some(Value::Array(list)) => list.iter().collect(),
                other => other.into_iter().collect(),
            };
            // Keyed, not pairwise: a group may hold many members and the request name
            // many of them.
            let keys: HashSet<String> = given.iter().filter_map(|g| value_key(g, exact)).collect();
            let unkeyed: Vec<&&Value> = given
                .iter()
                .filter(|g| value_key(g, exact).is_none())
                .collect();
            items.retain(|item| {
                !(value_key(item, exact).is_some_and(|k| keys.contains(&k))
                    || unkeyed.iter().any(|g| same_value(item, g, exact)))
            });
            items.is_empty()
        }
        (None, None, Some(_)) => true,
    };
    // RFC 7644 §3.5.2.2: a multi-valued attribute left with no values is unassigned.
    if emptied {
        remove_ci(obj, name);
    }
    Ok(())
}

/// The comparable form of an element's value (its `value`, or itself), when it is a
/// string: what duplicate checks index by.
fn value_key(v: &Value, exact: bool) -> Option<String> {
    let inner = if v.is_object() {
        filter::get_ci(v, "value")?
    } else {
        v
    };
    let s = inner.as_str()?;
    Some(if exact {
        s.to_owned()
    } else {
        s.to_lowercase()
    })
}

/// Appends the values in `value` that the array does not already hold. Existing
/// elements are indexed by value first, so adding k members to a group of n costs
/// about n + k, not n × k.
fn add_unique(items: &mut Vec<Value>, value: &Value, exact: bool) {
    let new: Vec<&Value> = match value {
        Value::Array(list) => list.iter().collect(),
        single => vec![single],
    };
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(k) = value_key(item, exact) {
            by_key.entry(k).or_default().push(i);
        }
    }
    for candidate in new {
        if candidate.is_null() {
            continue;
        }
        let duplicate = match value_key(candidate, exact) {
            Some(k) => by_key.get(&k).is_some_and(|at| {
                at.iter()
                    .filter_map(|&i| items.get(i))
                    .any(|item| !types_differ(item, candidate))
            }),
            None => items
                .iter()
                .any(|item| same_value(item, candidate, exact) && !types_differ(item, candidate)),
        };
        if !duplicate {
            if let Some(k) = value_key(candidate, exact) {
                by_key.entry(k).or_default().push(items.len());
            }
            items.push(candidate.clone());
        }
    }
}

/// Whether two elements of a multi-valued attribute denote the same value: IdPs send members as
/// `{"value": id}` while the stored element may also carry `display`, `$ref`, `type`.
fn same_value(item: &Value, given: &Value, exact: bool) -> bool {
    if item == given {
        return true;
    }
    let item_value = if item.is_object() {
        filter::get_ci(item, "value")
    } else {
        Some(item)
    };
    let given_value = if given.is_object() {
        filter::get_ci(given, "value")
    } else {
        Some(given)
    };
    match (item_value, given_value) {
        (Some(Value::String(a)), Some(Value::String(b))) if !exact => {
            a.to_lowercase() == b.to_lowercase()
        }
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// A work and a home email with the same address are distinct elements.
fn types_differ(a: &Value, b: &Value) -> bool {
    let kind = |v: &Value| {
        filter::get_ci(v, "type")
            .and_then(Value::as_str)
            .map(str::to_lowercase)
    };
    matches!((kind(a), kind(b)), (Some(x), Some(y)) if x != y)
}

fn merge(current: &mut Map<String, Value>, new: &Map<String, Value>) {
    for (key, value) in new {
        if value.is_null() {
            remove_ci(current, key);
        } else {
            set_ci(current, key, value.clone());
        }
    }
}

fn existing_key(obj: &Map<String, Value>, name: &str) -> Option<String> {
    if obj.contains_key(name) {
        return Some(name.to_string());
    }
    obj.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()
}

fn get_mut_ci<'m>(obj: &'m mut Map<String, Value>, name: &str) -> Option<&'m mut Value> {
    let key = existing_key(obj, name)?;
    obj.get_mut(&key)
}

/// Writes under the existing spelling of `name` so a resource never holds `userName` and `username`.
fn set_ci(obj: &mut Map<String, Value>, name: &str, value: Value) {
    let key = existing_key(obj, name).unwrap_or_else(|| name.to_string());
    obj.insert(key, value);
}

fn remove_ci(obj: &mut Map<String, Value>, name: &str) -> Option<Value> {
    let key = existing_key(obj, name)?;
    obj.remove(&key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const READ_ONLY: &[&str] = &["id", "meta", "groups", "schemas"];
    const EXT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    const CORE: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

    fn exact(key: &str) -> bool {
        matches!(key, "id" | "externalid" | "members.value")
    }

    fn body(operations: Value) -> Value {
        json!({"schemas": [PATCH_OP_URN], "Operations": operations})
    }

    /// Parses and applies `request` to a copy of `before`: the result, or the error's scimType
    /// after checking that the failed request changed nothing.
    fn run(before: &Value, request: Value) -> Result<Value, &'static str> {
        let mut resource = before.clone();
        match parse(&request).and_then(|ops| apply(&mut resource, &ops, READ_ONLY, &exact)) {
            Ok(()) => Ok(resource),
            Err(e) => {
                assert_eq!(&resource, before, "{e} left a partial change");
                Err(e.scim_type())
            }
        }
    }

    #[test]
    fn parse_accepts_idp_spellings_and_rejects_malformed_bodies() {
        let request = json!({"operations": [{"OP": "Replace", "Path": "active", "Value": false},
                                            {"op": "remove", "path": "members[value eq \"u1\"]"}]});
        let parsed = parse(&request).unwrap();
        let kinds: Vec<_> = parsed.iter().map(|op| op.op).collect();
        assert_eq!(kinds, [PatchOpKind::Replace, PatchOpKind::Remove]);
        assert_eq!(
            parsed[0].path.as_ref().map(|p| p.attr.key()).as_deref(),
            Some("active")
        );
        assert!(parsed[1].path.as_ref().is_some_and(|p| p.filter.is_some()));
        let rejected = [
            (json!([]), "invalidSyntax"),
            (json!({"Operations": []}), "invalidSyntax"),
            (
                json!({"schemas": ["urn:x"], "Operations": [{"op": "add", "value": {}}]}),
                "invalidSyntax",
            ),
            (
                body(json!([{"op": "move", "path": "a", "value": 1}])),
                "invalidSyntax",
            ),
            (body(json!([{"path": "a", "value": 1}])), "invalidSyntax"),
            (body(json!([{"op": "add", "path": "a"}])), "invalidValue"),
            (body(json!([{"op": "add", "value": "x"}])), "invalidValue"),
            (body(json!([{"op": "remove"}])), "noTarget"),
            (
                body(json!([{"op": "add", "path": "emails[type eq]", "value": 1}])),
                "invalidPath",
            ),
            (
                body(json!([{"op": "add", "path": "a b", "value": 1}])),
                "invalidPath",
            ),
            (
                body(json!([{"op": "add", "path": 7, "value": 1}])),
                "invalidPath",
            ),
        ];
        for (request, scim_type) in rejected {
            assert_eq!(
                parse(&request).map_err(|e| e.scim_type()).err(),
                Some(scim_type),
                "{request}"
            );
        }
    }

    #[test]
    fn patch_paths_parse_filters_and_trailing_sub_attributes() {
        let p = PatchPath::parse("emails[type eq \"work\"].value").unwrap();
        assert_eq!(
            (p.attr.key(), p.sub_after_filter.as_deref()),
            ("emails".into(), Some("value"))
        );
        assert!(
            p.filter
                .is_some_and(|f| f.matches(&json!({"type": "WORK"}), &|_| false))
        );
        let q = PatchPath::parse("members[value eq \"a]b\"]").unwrap();
        assert!(
            q.filter
                .is_some_and(|f| f.matches(&json!({"value": "a]b"}), &|_| false))
        );
        for bad in [
            "e[type eq \"w\"",
            "e[type eq \"w\"]x",
            "name.x[a pr]",
            "[a pr]",
            "e[a pr].b.c",
        ] {
            let err = PatchPath::parse(bad).map_err(|e| e.scim_type());
            assert_eq!(err, Err("invalidPath"), "{bad}");
        }
    }

    #[test]
    fn okta_deactivate_with_pathless_replace() {
        let request = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                             "Operations":[{"op":"replace","value":{"active":false}}]});
        let user = json!({"id": "u-1", "userName": "ann", "active": true});
        let expected = json!({"id": "u-1", "userName": "ann", "active": false});
        assert_eq!(run(&user, request), Ok(expected));
    }

    #[test]
    fn entra_default_update_is_lenient_and_idempotent() {
        let request = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[
            {"op":"Replace","path":"active","value":"False"},
            {"op":"Add","path":"name.givenName","value":"Ann"},
            {"op":"Replace","path":"emails[type eq \"work\"].value","value":"ann@x.com"}]});
        let user = json!({"id": "u-1", "active": true, "name": {"familyName": "Lee"},
                          "emails": [{"type": "home", "value": "ann@home.net"}]});
        // "False" stays a string for the caller to convert; the missing work email is created.
        let expected = json!({"id": "u-1", "active": "False",
                              "name": {"familyName": "Lee", "givenName": "Ann"},
                              "emails": [{"type": "home", "value": "ann@home.net"},
                                         {"type": "work", "value": "ann@x.com"}]});
        assert_eq!(run(&user, request.clone()), Ok(expected.clone()));
        assert_eq!(
            run(&expected, request),
            Ok(expected.clone()),
            "replay adds no second email"
        );
    }

    #[test]
    fn filtered_replace_merges_or_reports_no_target() {
        let user = json!({"emails": [{"type": "home", "value": "a@h", "primary": true}]});
        let merge = body(
            json!([{"op":"replace","path":"emails[type eq \"home\"]","value":{"value":"b@h"}}]),
        );
        let merged = json!({"emails": [{"type": "home", "value": "b@h", "primary": true}]});
        assert_eq!(run(&user, merge), Ok(merged));
        // Only a single `eq` describes an element well enough to create it.
        let compound = "emails[type eq \"work\" and primary eq true].value";
        let request = body(json!([{"op":"replace","path":compound,"value":"a"}]));
        assert_eq!(run(&user, request), Err("noTarget"));
        let whole =
            body(json!([{"op":"replace","path":"emails[type eq \"work\"]","value":{"value":"a"}}]));
        assert_eq!(run(&user, whole), Err("noTarget"));
        let not_object =
            body(json!([{"op":"replace","path":"emails[type eq \"home\"]","value":"a"}]));
        assert_eq!(run(&user, not_object), Err("invalidValue"));
    }

    #[test]
    fn entra_group_members_add_and_remove_by_value_list() {
        let group =
            json!({"id": "g1", "members": [{"value": "u1", "display": "Ann"}, {"value": "u2"}]});
        let add =
            body(json!([{"op":"Add","path":"members","value":[{"value":"u3"},{"value":"u1"}]}]));
        let added = json!({"id": "g1",
                           "members": [{"value": "u1", "display": "Ann"}, {"value": "u2"}, {"value": "u3"}]});
        assert_eq!(run(&group, add), Ok(added.clone()));
        let remove =
            body(json!([{"op":"Remove","path":"members","value":[{"value":"u1"},{"value":"u3"}]}]));
        assert_eq!(
            run(&added, remove),
            Ok(json!({"id": "g1", "members": [{"value": "u2"}]}))
        );
        let by_filter = body(json!([{"op":"Remove","path":"members[value eq \"u2\"]"}]));
        let filtered = json!({"id": "g1", "members": [{"value": "u1", "display": "Ann"}]});
        assert_eq!(run(&group, by_filter), Ok(filtered));
        // A multi-valued attribute left empty is unassigned.
        let remove_both =
            body(json!([{"op":"remove","path":"members","value":[{"value":"u1"},{"value":"u2"}]}]));
        assert_eq!(run(&group, remove_both), Ok(json!({"id": "g1"})));
        let remove_all = body(json!([{"op":"remove","path":"members"}]));
        assert_eq!(run(&group, remove_all), Ok(json!({"id": "g1"})));
    }

    #[test]
    fn okta_group_remove_by_filter_and_rename_with_echoed_id() {
        let group = json!({"id": "g1", "displayName": "Old", "members": [{"value": "u1"}, {"value": "u2"}]});
        let remove = body(json!([{"op":"remove","path":"members[value eq \"u1\"]"}]));
        let removed = json!({"id": "g1", "displayName": "Old", "members": [{"value": "u2"}]});
        assert_eq!(run(&group, remove.clone()), Ok(removed.clone()));
        assert_eq!(
            run(&removed, remove),
            Ok(removed.clone()),
            "a retried remove succeeds"
        );
        // Member ids are case-exact (see `exact`), so "U2" names nobody.
        let other_case = body(json!([{"op":"remove","path":"members[value eq \"U2\"]"}]));
        assert_eq!(run(&removed, other_case), Ok(removed.clone()));
        let rename = body(json!([{"op":"replace","value":{"id":"g1","displayName":"New"}}]));
        let renamed = json!({"id": "g1", "displayName": "New", "members": [{"value": "u2"}]});
        assert_eq!(run(&removed, rename), Ok(renamed));
    }

    #[test]
    fn pathless_values_with_dotted_urn_and_schema_keys() {
        let user =
            json!({"schemas": [CORE], "id": "u-1", "name": {"givenName": "X", "middleName": "M"}});
        let request = body(json!([{"op":"Replace","value":{
            "name.givenName": "A", "name.familyName": "B", "schemas": ["ignored"],
            "urn:ietf:params:scim:schemas:core:2.0:User:userName": "a@b",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D"}}}]));
        let expected = json!({"schemas": [CORE], "id": "u-1", "userName": "a@b",
                              "name": {"givenName": "A", "middleName": "M", "familyName": "B"},
                              EXT: {"department": "R&D"}});
        assert_eq!(run(&user, request), Ok(expected.clone()));
        let request = body(json!([
            {"op":"add","path":format!("{EXT}:manager"),"value":"m1"},
            {"op":"replace","path":EXT,"value":{"costCenter":"7"}}]));
        let extended = run(&expected, request).unwrap();
        let ext = json!({"department": "R&D", "manager": "m1", "costCenter": "7"});
        assert_eq!(extended[EXT], ext);
        let removed = run(&extended, body(json!([{"op":"remove","path":EXT}]))).unwrap();
        assert!(
            removed.get(EXT).is_none() && removed["userName"] == "a@b",
            "{removed}"
        );
    }

    #[test]
    fn add_merges_complex_values_and_appends_unique_elements() {
        let user = json!({"userName": "ann", "name": {"givenName": "Ann"},
                          "emails": [{"type": "home", "value": "ann@home.net"}]});
        let request = body(json!([
            {"op":"add","path":"emails","value":{"type":"work","value":"Ann@Home.net"}},
            {"op":"add","path":"emails","value":[{"type":"home","value":"ANN@home.net"}]},
            {"op":"add","value":{"NAME":{"familyName":"Lee"},"USERNAME":"new","title":"Dr"}},
            {"op":"add","path":"nickName","value":null},
            {"op":"add","path":"addresses[type eq \"work\"].locality","value":"Oslo"}]));
        let expected = json!({"userName": "new", "title": "Dr",
                              "name": {"givenName": "Ann", "familyName": "Lee"},
                              "emails": [{"type": "home", "value": "ann@home.net"},
                                         {"type": "work", "value": "Ann@Home.net"}],
                              "addresses": [{"type": "work", "locality": "Oslo"}]});
        assert_eq!(run(&user, request), Ok(expected));
    }

    #[test]
    fn replace_sets_arrays_wholesale_and_null_unassigns() {
        let user = json!({"title": "Dr", "name": {"givenName": "Ann"},
                          "emails": [{"value": "a@x"}, {"value": "b@x"}]});
        let request = body(json!([
            {"op":"replace","path":"emails","value":[{"value":"c@x"}]},
            {"op":"replace","path":"title","value":null},
            {"op":"replace","value":{"name":{"familyName":"Lee"}}},
            {"op":"replace","path":"name.middleName","value":"M"},
            {"op":"replace","path":CORE,"value":{"nickName":"N"}}]));
        let expected = json!({"emails": [{"value": "c@x"}], "nickName": "N",
                              "name": {"givenName": "Ann", "familyName": "Lee", "middleName": "M"}});
        assert_eq!(run(&user, request), Ok(expected));
        let not_complex = body(json!([{"op":"replace","path":"title.x","value":"M"}]));
        assert_eq!(run(&user, not_complex), Err("invalidPath"));
    }

    #[test]
    fn remove_attributes_sub_attributes_and_filtered_sub_attributes() {
        let user = json!({"title": "Dr", "name": {"givenName": "Ann", "familyName": "Lee"},
                          "emails": [{"type": "home", "value": "a@h", "primary": true}]});
        let request = body(json!([{"op":"remove","path":"name.givenName"},
                                  {"op":"remove","path":"emails[type eq \"home\"].primary"},
                                  {"op":"remove","path":"TITLE"},
                                  {"op":"remove","path":"nosuch"},
                                  {"op":"remove","path":"emails[type eq \"other\"]"}]));
        let expected =
            json!({"name": {"familyName": "Lee"}, "emails": [{"type": "home", "value": "a@h"}]});
        assert_eq!(run(&user, request), Ok(expected));
    }

    #[test]
    fn read_only_attributes_allow_echoes_but_not_changes() {
        let user =
            json!({"id": "u-1", "active": true, "meta": {"lastModified": "2024-01-01T00:00:00Z"}});
        let echo = body(json!([{"op":"replace","value":{"id":"u-1","active":false}}]));
        assert_eq!(
            run(&user, echo).map(|u| u["active"].clone()),
            Ok(json!(false))
        );
        for op in [
            json!({"op":"replace","value":{"id":"other"}}),
            json!({"op":"replace","path":"id","value":"other"}),
            json!({"op":"remove","path":"meta"}),
            json!({"op":"replace","path":"meta.lastModified","value":"2030-01-01T00:00:00Z"}),
            json!({"op":"add","path":"groups","value":[{"value":"g"}]}),
        ] {
            assert_eq!(run(&user, body(json!([op]))), Err("mutability"), "{op}");
        }
    }

    #[test]
    fn failing_op_in_the_middle_leaves_resource_unchanged() {
        let group = json!({"id": "g1", "displayName": "Old", "members": [{"value": "u1"}]});
        // A non-eq filter cannot describe a new element, so the middle op has no target.
        let request = body(json!([{"op":"replace","path":"displayName","value":"New"},
                                  {"op":"replace","path":"members[value sw \"x\"].display","value":"D"},
                                  {"op":"remove","path":"members"}]));
        let mut resource = group.clone();
        let err = apply(&mut resource, &parse(&request).unwrap(), READ_ONLY, &exact);
        assert_eq!(err.map_err(|e| e.scim_type()), Err("noTarget"));
        assert_eq!(resource, group);
    }
}
