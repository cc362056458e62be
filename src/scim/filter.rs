//! SCIM 2.0 filter expressions (RFC 7644 §3.4.2.2): parsing and in-memory evaluation.
//!
//! Evaluation works on the SCIM JSON form of a resource, so list queries, PATCH value paths and
//! tests share one implementation without needing a typed resource model.

use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;

/// Deepest nesting of parentheses, `not (...)` and value-path brackets that [`parse`] accepts.
pub const MAX_DEPTH: usize = 64;

const CORE_URN_PREFIX: &str = "urn:ietf:params:scim:schemas:core:2.0:";

/// An attribute path: optional schema URN, attribute name, optional sub-attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    /// Schema URN the attribute is qualified with, e.g. the enterprise extension URN.
    pub urn: Option<String>,
    /// Attribute name as written (matching is case-insensitive).
    pub attr: String,
    /// Sub-attribute of a complex attribute, as in `name.givenName`.
    pub sub: Option<String>,
}

impl AttrPath {
    /// Parses `userName`, `name.givenName`, `urn:ietf:params:scim:schemas:core:2.0:User:userName`,
    /// `urn:ietf:params:scim:schemas:core:2.0:User:name.givenName`. Errors on empty / invalid chars.
    pub fn parse(text: &str) -> Result<AttrPath, FilterError> {
        Self::parse_at(text, 0)
    }

    /// Lowercased "attr" or "attr.sub" (attribute names are case-insensitive in SCIM): used by callers to
    /// decide which index serves an eq clause, e.g. "username", "emails.value", "externalid", "id", "displayname".
    pub fn key(&self) -> String {
        match &self.sub {
            Some(sub) => format!("{}.{}", self.attr, sub).to_ascii_lowercase(),
            None => self.attr.to_ascii_lowercase(),
        }
    }

    /// `offset` is where `text` starts in the enclosing filter, so errors point into the whole input.
    fn parse_at(text: &str, offset: usize) -> Result<AttrPath, FilterError> {
        if text.is_empty() {
            return Err(syntax(offset, "empty attribute path"));
        }
        let (urn, rest, rest_offset) = if starts_with_ci(text, "urn:") {
            // Attribute names never contain ':', so the URN ends at the last one.
            let Some((urn, rest)) = text.rsplit_once(':') else {
                return Err(syntax(offset, "incomplete schema URN"));
            };
            if urn.len() <= "urn:".len() || urn.chars().any(|c| c.is_whitespace()) {
                return Err(syntax(offset, "invalid schema URN"));
            }
            (Some(urn.to_string()), rest, offset + urn.len() + 1)
        } else {
            (None, text, offset)
        };
        let (attr, sub) = match rest.split_once('.') {
            Some((attr, sub)) => (attr, Some(sub)),
            None => (rest, None),
        };
        validate_name(attr, rest_offset)?;
        if let Some(sub) = sub {
            validate_name(sub, rest_offset + attr.len() + 1)?;
        }
        Ok(AttrPath {
            urn,
            attr: attr.to_string(),
            sub: sub.map(str::to_string),
        })
    }
}

/// A comparison operator (`pr` is [`Filter::Present`] instead, since it takes no value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `eq`: equal.
    Eq,
    /// `ne`: not equal (also true when the attribute is absent).
    Ne,
    /// `co`: contains.
    Co,
    /// `sw`: starts with.
    Sw,
    /// `ew`: ends with.
    Ew,
    /// `gt`: greater than.
    Gt,
    /// `ge`: greater than or equal.
    Ge,
    /// `lt`: less than.
    Lt,
    /// `le`: less than or equal.
    Le,
}

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `path op value`; the value is a string, number, bool or null.
    Compare {
        /// Attribute compared.
        path: AttrPath,
        /// Operator.
        op: CompareOp,
        /// Literal compared against.
        value: Value,
    },
    /// `path pr`.
    Present(AttrPath),
    /// `a and b`.
    And(Box<Filter>, Box<Filter>),
    /// `a or b`.
    Or(Box<Filter>, Box<Filter>),
    /// `not (f)`.
    Not(Box<Filter>),
    /// `emails[type eq "work" and value co "@x"]`. The filter `attr[f].sub op v` parses as
    /// `attr[f and sub op v]`, which means the same; a bare trailing `.sub` exists only in PATCH paths.
    ValuePath {
        /// The multi-valued (or complex) attribute.
        path: AttrPath,
        /// Condition on one element; its paths are relative to the element.
        filter: Box<Filter>,
    },
}

/// Why a filter (or attribute path) could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Invalid syntax; `pos` is the byte offset in the input where the problem was found.
    #[error("invalid filter at position {pos}: {reason}")]
    Syntax {
        /// Byte offset into the input.
        pos: usize,
        /// Human-readable explanation, suitable for the SCIM error `detail`.
        reason: String,
    },
}

fn syntax(pos: usize, reason: impl Into<String>) -> FilterError {
    FilterError::Syntax {
        pos,
        reason: reason.into(),
    }
}

/// Parses a filter expression.
pub fn parse(text: &str) -> Result<Filter, FilterError> {
    let mut parser = Parser {
        src: text,
        pos: 0,
        depth: 0,
    };
    parser.skip_ws();
    if parser.peek().is_none() {
        return Err(parser.err("empty filter"));
    }
    let filter = parser.parse_or()?;
    parser.skip_ws();
    match parser.peek() {
        None => Ok(filter),
        Some(b')') => Err(parser.err("unbalanced ')'")),
        Some(b']') => Err(parser.err("unbalanced ']'")),
        Some(_) => Err(parser.err("unexpected input (expected 'and', 'or' or end of filter)")),
    }
}

/// Whether `urn` is a core schema (`...:core:2.0:User`, `...:Group`, ...), whose attributes live at
/// the top level of a resource rather than under an extension object.
pub fn is_core_urn(urn: &str) -> bool {
    urn.get(CORE_URN_PREFIX.len()..)
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(':'))
        && starts_with_ci(urn, CORE_URN_PREFIX)
}

/// Member `name` of a JSON object, matched case-insensitively as SCIM attribute names are.
pub fn get_ci<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    let obj = value.as_object()?;
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn starts_with_ci(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'$')
}

fn validate_name(name: &str, offset: usize) -> Result<(), FilterError> {
    let mut bytes = name.bytes().enumerate();
    match bytes.next() {
        None => return Err(syntax(offset, "empty attribute name")),
        Some((_, b)) if !b.is_ascii_alphabetic() => {
            return Err(syntax(offset, "attribute name must start with a letter"));
        }
        Some(_) => {}
    }
    match bytes.find(|(_, b)| !is_name_byte(*b)) {
        Some((i, _)) => Err(syntax(offset + i, "invalid character in attribute name")),
        None => Ok(()),
    }
}

fn is_delimiter(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\r' | b'\n' | b'(' | b')' | b'[' | b']' | b'"'
    )
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn err(&self, reason: impl Into<String>) -> FilterError {
        syntax(self.pos, reason)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    /// Advances over non-delimiter bytes; delimiters are ASCII, so the slice is on char boundaries.
    fn take_token(&mut self) -> &str {
        let start = self.pos;
        while self.peek().is_some_and(|b| !is_delimiter(b)) {
            self.pos += 1;
        }
        self.src.get(start..self.pos).unwrap_or("")
    }

    /// Consumes `kw` (any case) only as a whole word, so `order pr` is not `or` + `der pr`.
    fn eat_keyword(&mut self, kw: &str) -> bool {
        let bytes = self.src.as_bytes();
        let end = self.pos + kw.len();
        let is_kw = bytes
            .get(self.pos..end)
            .is_some_and(|w| w.eq_ignore_ascii_case(kw.as_bytes()));
        let whole = !bytes
            .get(end)
            .is_some_and(|b| is_name_byte(*b) || matches!(b, b':' | b'.'));
        if is_kw && whole {
            self.pos = end;
        }
        is_kw && whole
    }

    fn parse_or(&mut self) -> Result<Filter, FilterError> {
        self.parse_chain("or", Self::parse_and, Filter::Or)
    }

    fn parse_and(&mut self) -> Result<Filter, FilterError> {
        self.parse_chain("and", Self::parse_unary, Filter::And)
    }

    /// `term *(keyword term)`, collected iteratively so long chains cost no recursion.
    fn parse_chain(
        &mut self,
        keyword: &str,
        term: fn(&mut Self) -> Result<Filter, FilterError>,
        join: fn(Box<Filter>, Box<Filter>) -> Filter,
    ) -> Result<Filter, FilterError> {
        let mut terms = vec![term(self)?];
        loop {
            let save = self.pos;
            self.skip_ws();
            if !self.eat_keyword(keyword) {
                self.pos = save;
                break;
            }
            terms.push(term(self)?);
        }
        combine(terms, join).ok_or_else(|| self.err("empty expression"))
    }

    fn parse_unary(&mut self) -> Result<Filter, FilterError> {
        self.skip_ws();
        match self.peek() {
            None => Err(self.err("expected an expression")),
            Some(b'(') => self.parse_group(b')'),
            Some(_) => {
                let save = self.pos;
                if self.eat_keyword("not") {
                    self.skip_ws();
                    if self.peek() == Some(b'(') {
                        return Ok(Filter::Not(Box::new(self.parse_group(b')')?)));
                    }
                    // Not a `not (...)`: an attribute that happens to be called "not".
                    self.pos = save;
                }
                self.parse_attr_expr()
            }
        }
    }

    /// Parses `( filter )` or `[ filter ]` with the cursor on the opening byte.
    fn parse_group(&mut self, close: u8) -> Result<Filter, FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        self.pos += 1;
        let inner = self.parse_or()?;
        self.skip_ws();
        match self.peek() {
            Some(b) if b == close => self.pos += 1,
            None => return Err(self.err(format!("missing '{}'", close as char))),
            Some(_) => return Err(self.err(format!("expected '{}'", close as char))),
        }
        self.depth -= 1;
        Ok(inner)
    }

    fn parse_attr_expr(&mut self) -> Result<Filter, FilterError> {
        let start = self.pos;
        let text = self.take_token();
        if text.is_empty() {
            return Err(syntax(start, "expected an attribute path"));
        }
        let path = AttrPath::parse_at(text, start)?;
        if self.peek() != Some(b'[') {
            return self.parse_comparison(path);
        }
        if path.sub.is_some() {
            return Err(self.err("a value filter cannot follow a sub-attribute"));
        }
        let inner = self.parse_group(b']')?;
        if self.peek() != Some(b'.') {
            return Ok(Filter::ValuePath {
                path,
                filter: Box::new(inner),
            });
        }
        self.pos += 1;
        let sub_start = self.pos;
        while self.peek().is_some_and(is_name_byte) {
            self.pos += 1;
        }
        let sub = self.src.get(sub_start..self.pos).unwrap_or("");
        validate_name(sub, sub_start)?;
        let sub_path = AttrPath {
            urn: None,
            attr: sub.to_string(),
            sub: None,
        };
        let tail = self.parse_comparison(sub_path)?;
        Ok(Filter::ValuePath {
            path,
            filter: Box::new(Filter::And(Box::new(inner), Box::new(tail))),
        })
    }

    fn parse_comparison(&mut self, path: AttrPath) -> Result<Filter, FilterError> {
        self.skip_ws();
        let start = self.pos;
        let word = self.take_token().to_ascii_lowercase();
        let op = match word.as_str() {
            "pr" => return Ok(Filter::Present(path)),
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "co" => CompareOp::Co,
            "sw" => CompareOp::Sw,
            "ew" => CompareOp::Ew,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            "" => return Err(syntax(start, "expected an operator")),
            other => return Err(syntax(start, format!("unknown operator '{other}'"))),
        };
        let value = self.parse_value()?;
        Ok(Filter::Compare { path, op, value })
    }

    fn parse_value(&mut self) -> Result<Value, FilterError> {
        self.skip_ws();
        if self.peek() == Some(b'"') {
            return self.parse_string();
        }
        let start = self.pos;
        let token = self.take_token();
        match token.to_ascii_lowercase().as_str() {
            "" => Err(syntax(start, "missing comparison value")),
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            "null" => Ok(Value::Null),
            _ if token.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                serde_json::from_str::<serde_json::Number>(token)
                    .map(Value::Number)
                    .map_err(|_| syntax(start, format!("invalid number '{token}'")))
            }
            _ => Err(syntax(
                start,
                format!("invalid value '{token}' (strings must be quoted)"),
            )),
        }
    }

    /// Finds the closing quote, then lets serde_json decode escapes exactly as JSON defines them.
    fn parse_string(&mut self) -> Result<Value, FilterError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let mut end = start + 1;
        loop {
            match bytes.get(end) {
                None => return Err(syntax(start, "unterminated string")),
                Some(b'\\') => end += 2,
                Some(b'"') => break,
                Some(_) => end += 1,
            }
        }
        let literal = self
            .src
            .get(start..=end)
            .ok_or_else(|| syntax(start, "invalid string"))?;
        let text: String = serde_json::from_str(literal)
            .map_err(|e| syntax(start, format!("invalid string literal: {e}")))?;
        self.pos = end + 1;
        Ok(Value::String(text))
    }
}

/// Joins terms pairwise so a long `a and b and c ...` chain yields a tree of logarithmic depth:
/// evaluation and drop recurse on it, and and/or are associative so the grouping is unobservable.
fn combine(mut terms: Vec<Filter>, join: fn(Box<Filter>, Box<Filter>) -> Filter) -> Option<Filter> {
    while terms.len() > 1 {
        let mut next = Vec::with_capacity(terms.len().div_ceil(2));
        let mut iter = terms.into_iter();
        while let Some(left) = iter.next() {
            match iter.next() {
                Some(right) => next.push(join(Box::new(left), Box::new(right))),
                None => next.push(left),
            }
        }
        terms = next;
    }
    terms.pop()
}

impl Filter {
    /// Evaluates against a resource in its SCIM JSON form. `case_exact(path_key)` tells whether string
    /// comparisons on that attribute are case-sensitive (path_key is AttrPath::key() of the full path, e.g.
    /// "id", "externalid", "emails.value"); all others compare case-insensitively.
    pub fn matches(&self, resource: &Value, case_exact: &dyn Fn(&str) -> bool) -> bool {
        self.eval(resource, None, case_exact)
    }

    /// Evaluates the filter against one element of `parent`, as the inside of `parent[filter]`;
    /// `case_exact` then sees keys qualified by the parent, e.g. "emails.value".
    pub fn matches_element(
        &self,
        element: &Value,
        parent: &AttrPath,
        case_exact: &dyn Fn(&str) -> bool,
    ) -> bool {
        self.eval(element, Some(&parent.key()), case_exact)
    }

    /// An `eq` clause whose match is required for the whole filter to match: the filter itself if it is
    /// `Compare{op: Eq}` with a string value, or found recursively in either side of an `And`; also a
    /// `ValuePath{path: emails, filter: Compare{value eq "x"}}` counts as the key "emails.value".
    /// Returns (path key as in AttrPath::key(), the string value). Never looks inside Or/Not.
    /// Clauses on extension-schema attributes are skipped, as their keys could collide with core ones;
    /// inside a value path the element's `value` is preferred (`emails[type eq "work"].value eq "x"`
    /// gives "emails.value").
    pub fn required_eq(&self) -> Option<(String, &str)> {
        self.required_eqs().into_iter().next()
    }

    /// Every clause [`Filter::required_eq`] could return, left to right except that inside a value
    /// path the element's `value` comes first, so a caller can pick the one it has an index for.
    pub fn required_eqs(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        self.collect_required(None, &mut out);
        out
    }

    fn collect_required<'s>(&'s self, parent: Option<&str>, out: &mut Vec<(String, &'s str)>) {
        match self {
            Filter::Compare {
                path,
                op: CompareOp::Eq,
                value: Value::String(text),
            } if path.urn.as_deref().is_none_or(is_core_urn) => {
                out.push((scoped_key(parent, path), text.as_str()));
            }
            Filter::And(left, right) => {
                left.collect_required(parent, out);
                right.collect_required(parent, out);
            }
            Filter::ValuePath { path, filter }
                if parent.is_none()
                    && path.sub.is_none()
                    && path.urn.as_deref().is_none_or(is_core_urn) =>
            {
                let parent = path.key();
                let start = out.len();
                filter.collect_required(Some(&parent), out);
                // The element's `value` is what indexes hold (emails.value, members.value), so
                // `emails[type eq "work"].value eq "x"` should offer it before emails.type.
                let value_key = format!("{parent}.value");
                if let Some(tail) = out.get_mut(start..) {
                    tail.sort_by_key(|(key, _)| *key != value_key);
                }
            }
            _ => {}
        }
    }

    fn eval(&self, res: &Value, parent: Option<&str>, case_exact: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Filter::Compare { path, op, value } => {
                eval_compare(res, path, *op, value, &scoped_key(parent, path), case_exact)
            }
            Filter::Present(path) => resolve(res, path).into_iter().any(is_present),
            Filter::And(left, right) => {
                left.eval(res, parent, case_exact) && right.eval(res, parent, case_exact)
            }
            Filter::Or(left, right) => {
                left.eval(res, parent, case_exact) || right.eval(res, parent, case_exact)
            }
            Filter::Not(inner) => !inner.eval(res, parent, case_exact),
            Filter::ValuePath { path, filter } => {
                let key = scoped_key(parent, path);
                resolve(res, path).into_iter().any(|v| match v {
                    Value::Array(items) => items
                        .iter()
                        .any(|item| filter.eval(item, Some(&key), case_exact)),
                    other => filter.eval(other, Some(&key), case_exact),
                })
            }
        }
    }
}

fn scoped_key(parent: Option<&str>, path: &AttrPath) -> String {
    match parent {
        Some(parent) => format!("{parent}.{}", path.key()),
        None => path.key(),
    }
}

/// The values `path` denotes; with a sub-attribute, one per element of a multi-valued parent.
fn resolve<'a>(res: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let base = match path.urn.as_deref() {
        Some(urn) if !is_core_urn(urn) => get_ci(res, urn),
        _ => Some(res),
    };
    let Some(value) = base.and_then(|b| get_ci(b, &path.attr)) else {
        return Vec::new();
    };
    match (&path.sub, value) {
        (None, _) => vec![value],
        (Some(sub), Value::Array(items)) => items.iter().filter_map(|i| get_ci(i, sub)).collect(),
        (Some(sub), other) => get_ci(other, sub).into_iter().collect(),
    }
}

fn is_present(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => items.iter().any(is_present),
        Value::Object(members) => !members.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

/// Candidates for a comparison, flagged when they are the implicit `value` of a complex element
/// (`emails eq "x"` compares each email's `value`).
fn candidates<'a>(value: &'a Value, out: &mut Vec<(&'a Value, bool)>) {
    let mut push = |v: &'a Value| match v {
        Value::Object(_) => out.extend(get_ci(v, "value").map(|inner| (inner, true))),
        other => out.push((other, false)),
    };
    match value {
        Value::Array(items) => items.iter().for_each(&mut push),
        other => push(other),
    }
}

fn eval_compare(
    res: &Value,
    path: &AttrPath,
    op: CompareOp,
    want: &Value,
    key: &str,
    case_exact: &dyn Fn(&str) -> bool,
) -> bool {
    if op == CompareOp::Ne {
        return !eval_compare(res, path, CompareOp::Eq, want, key, case_exact);
    }
    let mut found = Vec::new();
    for value in resolve(res, path) {
        candidates(value, &mut found);
    }
    if want.is_null() {
        return op == CompareOp::Eq && found.iter().all(|(v, _)| v.is_null());
    }
    let exact = case_exact(key);
    let exact_implicit = path.sub.is_none() && case_exact(&format!("{key}.value"));
    found.iter().any(|(have, implicit)| {
        let exact = if *implicit { exact_implicit } else { exact };
        compare_one(have, op, want, exact)
    })
}

fn compare_one(have: &Value, op: CompareOp, want: &Value, exact: bool) -> bool {
    match (have, want) {
        (Value::String(have), Value::String(want)) => compare_str(have, op, want, exact),
        (Value::Number(have), Value::Number(want)) => {
            let ordering = match (have.as_i64(), want.as_i64()) {
                (Some(h), Some(w)) => Some(h.cmp(&w)),
                _ => have
                    .as_f64()
                    .zip(want.as_f64())
                    .and_then(|(h, w)| h.partial_cmp(&w)),
            };
            ordering.is_some_and(|o| ordering_matches(o, op))
        }
        (Value::Bool(have), Value::Bool(want)) => op == CompareOp::Eq && have == want,
        // Entra sends booleans as the strings "True"/"False", and stores end up holding them.
        (Value::String(have), Value::Bool(want)) => {
            op == CompareOp::Eq && have.eq_ignore_ascii_case(if *want { "true" } else { "false" })
        }
        _ => false,
    }
}

fn compare_str(have: &str, op: CompareOp, want: &str, exact: bool) -> bool {
    let (have, want): (Cow<str>, Cow<str>) = if exact {
        (have.into(), want.into())
    } else {
        (have.to_lowercase().into(), want.to_lowercase().into())
    };
    match op {
        CompareOp::Eq => have == want,
        CompareOp::Ne => have != want,
        CompareOp::Co => have.contains(want.as_ref()),
        CompareOp::Sw => have.starts_with(want.as_ref()),
        CompareOp::Ew => have.ends_with(want.as_ref()),
        _ => ordering_matches(have.cmp(&want), op),
    }
}

fn ordering_matches(ordering: Ordering, op: CompareOp) -> bool {
    match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Ne => ordering != Ordering::Equal,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Ge => ordering != Ordering::Less,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Le => ordering != Ordering::Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EXT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    fn ci(_: &str) -> bool {
        false
    }

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", EXT],
            "id": "2819c223-7f76-453a-919d-413861904646",
            "externalId": "abc",
            "userName": "John@Example.com",
            "displayName": "",
            "name": {"givenName": "John", "familyName": "Smith"},
            "emails": [
                {"type": "work", "value": "john@example.com", "primary": true},
                {"type": "home", "value": "jsmith@home.net"}
            ],
            "phoneNumbers": [],
            "nickName": null,
            "active": "True",
            "loginCount": 42,
            "meta": {"lastModified": "2024-05-01T10:00:00Z"},
            EXT: {"employeeNumber": "701984"}
        })
    }

    /// One filter per line, prefixed `+` (must match `resource`) or `-` (must not).
    fn check_table(table: &str, resource: &Value, case_exact: &dyn Fn(&str) -> bool) {
        for line in table.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (expected, filter) = line.split_at(1);
            let parsed = parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
            assert_eq!(
                parsed.matches(resource, case_exact),
                expected == "+",
                "{line}"
            );
        }
    }

    fn path(attr: &str) -> AttrPath {
        AttrPath::parse(attr).unwrap()
    }

    fn eq(attr: &str, value: &str) -> Filter {
        let (path, op, value) = (path(attr), CompareOp::Eq, json!(value));
        Filter::Compare { path, op, value }
    }

    #[test]
    fn attr_paths_parse_with_urn_and_sub_attribute() {
        let p = path("urn:ietf:params:scim:schemas:core:2.0:User:name.givenName");
        let urn = "urn:ietf:params:scim:schemas:core:2.0:User";
        assert_eq!(p.urn.as_deref(), Some(urn));
        assert_eq!(
            (p.attr.as_str(), p.sub.as_deref()),
            ("name", Some("givenName"))
        );
        assert_eq!(
            (p.key(), path("userName").key()),
            ("name.givenname".into(), "username".into())
        );
        for bad in [
            "", "1abc", "a b", "a.b.c", "urn:x", "foo:bar", "a.", "é", "a]",
        ] {
            assert!(AttrPath::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn comparison_operators_on_strings_numbers_booleans_and_dates() {
        let table = r#"
            + userName eq "john@example.com"
            - userName eq "john@example.org"
            + userName ne "john@example.org"
            - userName ne "JOHN@example.com"
            + userName co "@EXAMPLE"
            - userName co "@other"
            + userName sw "john"
            - userName sw "example"
            + userName ew ".com"
            - userName ew ".org"
            + name.familyName gt "Doe"
            - name.familyName gt "Zed"
            + name.familyName ge "smith"
            - name.familyName ge "t"
            + name.familyName lt "T"
            - name.familyName lt "Smith"
            + name.familyName le "Smith"
            - name.familyName le "A"
            + loginCount eq 42
            + loginCount gt 41.5
            + loginCount le 42
            - loginCount lt 42
            - loginCount eq "42"
            - loginCount co 4
            + meta.lastModified gt "2024-01-01T00:00:00Z"
            - meta.lastModified lt "2024-05-01T10:00:00Z"
        "#;
        check_table(table, &user(), &ci);
    }

    #[test]
    fn booleans_null_ne_and_present() {
        // "active" holds Entra's string "True": it still compares as a boolean, with eq/ne only.
        let table = r#"
            + active eq true
            - active eq false
            + active ne false
            - active gt false
            + nickName eq null
            + title eq null
            - userName eq null
            + userName ne null
            + title ne "x"
            + userName pr
            + emails pr
            + name pr
            + emails.type pr
            - emails.display pr
            - displayName pr
            - phoneNumbers pr
            - nickName pr
            - title pr
        "#;
        check_table(table, &user(), &ci);
    }

    #[test]
    fn precedence_grouping_and_not() {
        let f = parse("a eq \"1\" or b eq \"2\" and c eq \"3\"").unwrap();
        let and = Filter::And(Box::new(eq("b", "2")), Box::new(eq("c", "3")));
        assert_eq!(f, Filter::Or(Box::new(eq("a", "1")), Box::new(and)));
        check_table(
            "+a eq \"1\" or b eq \"2\" and c eq \"3\"",
            &json!({"a": "1"}),
            &ci,
        );
        check_table(
            "-(a eq \"1\" or b eq \"2\") and c eq \"3\"",
            &json!({"a": "1"}),
            &ci,
        );
        let table = r#"
            + not (userName eq "x") and not(emails[type eq "other"])
            - NOT ( userName pr )
            + userName pr AND (title pr OR	name.givenName eq "john")
            - userName pr and (title pr or name.givenName eq "jim")
        "#;
        check_table(table, &user(), &ci);
    }

    #[test]
    fn multi_valued_attributes_and_value_paths() {
        let table = r#"
            + emails eq "jsmith@home.net"
            + emails.value eq "JOHN@example.com"
            + emails.type eq "home"
            - emails.type eq "other"
            + emails co "home"
            - emails.value ew ".org"
            + emails[type eq "work" and value co "@example.com"]
            - emails[type eq "home" and value co "@example.com"]
            + emails[not (type eq "work")]
            + name[givenName eq "john"]
            + emails[type eq "work"].value eq "john@example.com"
            - emails[type eq "work"].value eq "jsmith@home.net"
            + emails[type eq "home"].value pr
            + urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J"
            + urn:ietf:params:scim:schemas:core:2.0:User:name.givenName eq "John"
            + urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "701984"
            - urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:userName pr
            - urn:example:other:employeeNumber pr
        "#;
        check_table(table, &user(), &ci);
        let group = json!({"members": [{"value": "abc"}, {"value": "def"}], "tags": ["a", "b"]});
        check_table(
            "+members[value eq \"abc\"]\n-members[value eq \"x\"]\n+tags eq \"B\"",
            &group,
            &ci,
        );
    }

    #[test]
    fn value_path_followed_by_sub_attribute_parses_as_a_conjunction() {
        let f = parse("emails[type eq \"work\"].value eq \"john@example.com\"").unwrap();
        let inner = Filter::And(
            Box::new(eq("type", "work")),
            Box::new(eq("value", "john@example.com")),
        );
        assert_eq!(
            f,
            Filter::ValuePath {
                path: path("emails"),
                filter: Box::new(inner)
            }
        );
    }

    #[test]
    fn names_keywords_and_values_are_case_insensitive_unless_case_exact() {
        check_table(
            "+USERNAME EQ \"JOHN@EXAMPLE.COM\"\n+Emails.Value Eq \"JOHN@example.com\"",
            &user(),
            &ci,
        );
        let exact = |key: &str| matches!(key, "id" | "externalid" | "emails.value");
        let table = r#"
            + externalId eq "abc"
            - externalId eq "ABC"
            - emails.value eq "JOHN@example.com"
            - emails[value eq "JOHN@example.com"]
            - emails eq "JOHN@example.com"
            + userName eq "john@example.com"
        "#;
        check_table(table, &user(), &exact);
    }

    #[test]
    fn real_world_idp_filters() {
        let table = r#"
            + userName eq "john@example.com"
            + externalId eq "abc"
            + id eq "2819c223-7f76-453a-919d-413861904646"
            + emails[type eq "work"].value eq "john@example.com"
        "#;
        check_table(table, &user(), &ci);
        let group = json!({"displayName": "Group One", "id": "x"});
        check_table(
            "+displayName eq \"Group One\"\n+id eq \"x\"\n-id eq \"y\"",
            &group,
            &ci,
        );
        let escaped = json!({"displayName": "a\"b\\cé"});
        check_table(r#"+displayName eq "a\"b\\c\u00e9""#, &escaped, &ci);
    }

    #[test]
    fn syntax_errors_report_positions() {
        let cases = [
            ("", 0),
            ("userName", 8),
            ("userName eq", 11),
            ("userName xx \"a\"", 9),
            ("userName eq \"a\" foo", 16),
            ("userName eq \"a", 12),
            ("userName eq a", 12),
            ("userName eq 1x", 12),
            ("(userName pr", 12),
            ("userName pr)", 11),
            ("emails[type pr", 14),
            ("emails[type pr]]", 15),
            ("userName pr and", 15),
            ("not userName pr", 4),
            ("us$er.x!y pr", 7),
            ("name.givenName[value pr]", 14),
            ("a eq \"\\q\"", 5),
        ];
        for (filter, expected) in cases {
            let err = parse(filter).map(|f| format!("{f:?}"));
            assert!(
                matches!(err, Err(FilterError::Syntax { pos, .. }) if pos == expected),
                "{filter}: {err:?}"
            );
        }
        let message = parse("userName zz \"x\"").unwrap_err().to_string();
        assert!(
            message.contains("position 9") && message.contains("zz"),
            "{message}"
        );
    }

    #[test]
    fn nesting_is_bounded_and_long_chains_stay_shallow() {
        let nested = |open: &str, n: usize| format!("{}a pr{}", open.repeat(n), ")".repeat(n));
        assert!(parse(&nested("(", MAX_DEPTH)).is_ok());
        assert!(parse(&nested("(", MAX_DEPTH + 1)).is_err());
        assert!(parse(&nested("not(", 100_000)).is_err());
        assert!(parse(&"a[".repeat(100_000)).is_err());
        let f = parse(&vec!["a eq \"1\""; 20_000].join(" and ")).unwrap();
        assert!(f.matches(&json!({"a": "1"}), &ci) && !f.matches(&json!({"a": "2"}), &ci));
    }

    #[test]
    fn required_eq_only_from_mandatory_clauses() {
        let req = |f: &str| {
            parse(f)
                .unwrap()
                .required_eq()
                .map(|(k, v)| format!("{k}={v}"))
        };
        let cases = [
            ("UserName eq \"a\"", Some("username=a")),
            (
                "active eq true and (title pr and externalId eq \"e\")",
                Some("externalid=e"),
            ),
            ("userName eq \"a\" or id eq \"b\"", None),
            ("not (id eq \"b\")", None),
            ("userName ne \"a\"", None),
            ("emails[value eq \"x@y\"]", Some("emails.value=x@y")),
            ("members[value eq \"abc\"]", Some("members.value=abc")),
            (&format!("{EXT}:employeeNumber eq \"1\""), None),
        ];
        for (filter, expected) in cases {
            assert_eq!(req(filter).as_deref(), expected, "{filter}");
        }
        let f = parse("emails[type eq \"work\"].value eq \"x\"").unwrap();
        let keys: Vec<_> = f.required_eqs().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["emails.value", "emails.type"]);
        assert_eq!(f.required_eq(), Some(("emails.value".to_string(), "x")));
    }
}
