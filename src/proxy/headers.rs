//! Header hygiene: identity-header stripping, hop-by-hop removal (RFC 9110 §7.6.1),
//! cookie filtering and `X-Forwarded-*`.
//!
//! Everything here works on a `HeaderMap` and allocates only when it has something to
//! change, because it runs on every proxied request.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Lower-cases a header name and folds `_` into `-`. Some servers (CGI, Rack, PHP) turn
/// `-` into `_` when they expose headers, so `X_Idgate_User_Id` reaches the app as the
/// same variable as `X-Idgate-User-Id` (oauth2-proxy CVE-2025-64484).
pub fn fold_name(name: &str) -> String {
    name.bytes().map(|b| char::from(fold_byte(b))).collect()
}

#[inline]
fn fold_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// `a` equals the already-folded `folded` after folding. Compared from the end: the
/// names that get here share prefixes (`x-forwarded-`), not suffixes.
#[inline]
fn eq_folded(a: &str, folded: &str) -> bool {
    a.len() == folded.len()
        && a.bytes()
            .rev()
            .zip(folded.bytes().rev())
            .all(|(x, y)| fold_byte(x) == y)
}

/// Headers that HTTP itself gives meaning to; an identity header must not reuse one,
/// or stripping it would break the request.
pub fn is_reserved_by_http(name: &HeaderName) -> bool {
    const RESERVED: &[&str] = &[
        "host",
        "cookie",
        "authorization",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "keep-alive",
        "proxy-connection",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "forwarded",
    ];
    let folded = fold_name(name.as_str());
    RESERVED.contains(&folded.as_str())
}

/// The prefix that idgate owns outright: any client header starting with it is dropped,
/// even names idgate does not set today, so adding a header later is never a hole.
const OWNED_PREFIX: &str = "x-idgate-";

/// Decides which client-sent headers idgate must remove before forwarding.
#[derive(Debug, Clone)]
pub struct IdentityHeaderPolicy {
    /// Folded configured names outside the owned prefix.
    extra: Vec<String>,
}

impl IdentityHeaderPolicy {
    /// Builds the policy from the configured identity header names.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a HeaderName>) -> Self {
        let mut extra: Vec<String> = names
            .into_iter()
            .map(|n| fold_name(n.as_str()))
            .filter(|n| !n.starts_with(OWNED_PREFIX))
            .collect();
        extra.sort();
        extra.dedup();
        IdentityHeaderPolicy { extra }
    }

    /// Whether a header name (any case, `_` or `-`) is one that idgate sets.
    pub fn is_protected(&self, name: &str) -> bool {
        (name.len() >= OWNED_PREFIX.len() && eq_folded(&name[..OWNED_PREFIX.len()], OWNED_PREFIX))
            || self.extra.iter().any(|e| eq_folded(name, e))
    }

    /// Removes every protected header, all occurrences. Returns the removed names, for
    /// the debug log; the values are never returned, so they cannot be logged.
    pub fn strip(&self, headers: &mut HeaderMap) -> Vec<HeaderName> {
        let mut removed = Vec::new();
        for name in headers.keys() {
            if self.is_protected(name.as_str()) {
                removed.push(name.clone());
            }
        }
        for name in &removed {
            headers.remove(name);
        }
        removed
    }

    /// A `Connection` header that names a protected header is refused: a hop that honours
    /// it would delete the identity header that idgate adds (the "Connection trick").
    pub fn connection_names_protected<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        connection_tokens(headers).find(|t| self.is_protected(t))
    }
}

/// The comma-separated tokens of every `Connection` header, trimmed.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Framing and hop-by-hop field names. Their `-` spellings are handled by hyper and
/// [`remove_hop_by_hop`]; a `_` spelling (`Transfer_Encoding`) means nothing to idgate or
/// hyper but becomes `HTTP_TRANSFER_ENCODING` to a CGI, Rack or PHP app, or is merged
/// with the real field by a server that folds `_` into `-`, so it is dropped too.
const FRAMING: [&str; 9] = [
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Bit `n` is set when some [`FRAMING`] name is `n` bytes long.
const FRAMING_LENGTHS: u128 = lengths_of(&FRAMING);

/// Bit `n` is set when some name is `n` bytes long (names of 128 bytes or more share
/// bit 127, as in [`length_bit`]): most header names are ruled out by one bit test.
const fn lengths_of(names: &[&str]) -> u128 {
    let mut lengths = 0u128;
    let mut i = 0;
    while i < names.len() {
        let len = names[i].len();
        lengths |= 1u128 << if len < 127 { len } else { 127 };
        i += 1;
    }
    lengths
}

/// Request header names that never reach the app, whoever sends them:
/// `[access].strip_headers` in any spelling, and `_` spellings of framing and hop-by-hop
/// fields.
#[derive(Debug, Clone)]
pub struct StripList {
    /// Folded configured names, shortest first: the names of one length are one slice.
    names: Vec<Box<str>>,
    /// Bit `n` is set when some configured name is `n` bytes long (names of 128 bytes or
    /// more share bit 127): most request headers are ruled out by one bit test.
    lengths: u128,
    /// `by_length[n]`: where the names `n` bytes long lie in `names` (every request
    /// header is looked up here, so no search).
    by_length: Box<[(u32, u32)]>,
}

impl StripList {
    /// Builds the list from `[access].strip_headers`.
    pub fn new(configured: &[HeaderName]) -> StripList {
        let mut names: Vec<Box<str>> = configured
            .iter()
            .map(|n| fold_name(n.as_str()).into_boxed_str())
            .collect();
        names.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        names.dedup();
        let lengths = names.iter().fold(0u128, |m, n| m | length_bit(n.len()));
        let longest = names.last().map_or(0, |n| n.len());
        let by_length = (0..=longest)
            .map(|len| {
                let start = names.partition_point(|n| n.len() < len);
                let end = names.partition_point(|n| n.len() <= len);
                (start as u32, end as u32)
            })
            .collect();
        StripList {
            names,
            lengths,
            by_length,
        }
    }

    /// Whether a request header of this name must be removed.
    #[inline]
    pub fn matches(&self, name: &str) -> bool {
        (self.lengths & length_bit(name.len()) != 0
            && self
                .of_length(name.len())
                .iter()
                .any(|n| eq_folded(name, n)))
            || (FRAMING_LENGTHS & length_bit(name.len()) != 0
                && name.as_bytes().contains(&b'_')
                && FRAMING.iter().any(|f| eq_folded(name, f)))
    }

    /// The configured names `len` bytes long.
    #[inline]
    fn of_length(&self, len: usize) -> &[Box<str>] {
        match self.by_length.get(len) {
            Some(&(start, end)) => &self.names[start as usize..end as usize],
            None => &[],
        }
    }

    /// Removes every matching header, all occurrences, in one pass over the names; it
    /// allocates only when something matches. Returns how many names were removed.
    pub fn strip(&self, headers: &mut HeaderMap) -> usize {
        if !headers.keys().any(|n| self.matches(n.as_str())) {
            return 0;
        }
        let found: Vec<HeaderName> = headers
            .keys()
            .filter(|n| self.matches(n.as_str()))
            .cloned()
            .collect();
        for name in &found {
            tracing::debug!(header = %name, "stripped client-sent header that steers the app");
            headers.remove(name);
        }
        found.len()
    }
}

#[inline]
fn length_bit(len: usize) -> u128 {
    1u128 << len.min(127)
}

/// Fixed hop-by-hop fields (RFC 9110 §7.6.1), besides those named in `Connection`.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    // Request trailers are dropped (see `NoTrailers`), so announcing them is dropped too.
    header::TRAILER,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// If the message asks for a WebSocket upgrade, the `Upgrade` value to keep. Only
/// `websocket` is tunnelled: an `h2c` (or any other) upgrade would open a raw channel
/// whose later requests never pass the gateway's checks.
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    let value = headers.get(header::UPGRADE)?;
    let websocket = value.to_str().is_ok_and(|v| {
        v.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
    });
    (wants && websocket).then(|| value.clone())
}

/// Removes hop-by-hop headers. When `upgrade` is given, `Connection: upgrade` and that
/// `Upgrade` value are put back, since the upgrade handshake must cross the proxy.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    // Most messages carry none of these: one pass over the names (cheap comparisons of
    // known names) saves six hashed removals per message.
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        if let Some(proto) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto);
        }
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(proto) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
}

/// Removes idgate's own session cookie (plain and `__Host-` forms) from `Cookie`, and
/// joins several `Cookie` fields into one, as an HTTP/1.1 hop expects (RFC 9113 §8.2.3).
pub fn strip_cookie(headers: &mut HeaderMap, cookie_name: &str) {
    // The session cookie (plain or `__Host-`), and the short-lived login cookie beside it.
    let ours = |pair: &[u8]| {
        let name = pair
            .split(|&b| b == b'=')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let base = name.strip_suffix(b"_login").unwrap_or(name);
        base.strip_prefix(b"__Host-").unwrap_or(base) == cookie_name.as_bytes()
    };
    // One look first: most requests carry a single field, and either none of ours
    // (nothing to do) or only ours (remove the field); neither needs rebuilding.
    let (mut fields, mut found, mut others) = (0, false, false);
    for value in headers.get_all(header::COOKIE) {
        fields += 1;
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            if ours(pair) {
                found = true;
            } else {
                others = true;
            }
        }
    }
    if fields == 0 || (fields == 1 && !found) {
        return;
    }
    if !others {
        headers.remove(header::COOKIE);
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() || ours(pair) {
                continue;
            }
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(pair);
        }
    }
    // `insert` replaces every field at once.
    match HeaderValue::from_bytes(&joined) {
        Ok(v) => {
            headers.insert(header::COOKIE, v);
        }
        Err(_) => {
            headers.remove(header::COOKIE);
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Folded names of the headers that carry a client's address, scheme or the path and
/// port it used: apps and frameworks believe them (Rails' `remote_ip`, Spring's
/// `ForwardedHeaderFilter`, Cloudflare- or Akamai-aware code), so only a trusted proxy
/// may set them (SPEC §7).
const CLIENT_ADDRESS_HEADERS: [&str; 12] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
];

/// Bit `n` is set when some [`CLIENT_ADDRESS_HEADERS`] name is `n` bytes long.
const CLIENT_ADDRESS_LENGTHS: u128 = lengths_of(&CLIENT_ADDRESS_HEADERS);

/// The `X-Forwarded-*` fields idgate sets on a request. They travel beside the request's
/// header map, as the identity headers do, and are written after it: inserting them
/// would cost three hashed inserts per request. [`set_forwarded`] leaves no field of
/// these names in the map, so none is sent twice.
pub struct Forwarded(smallvec::SmallVec<[(HeaderName, HeaderValue); 3]>);

impl Forwarded {
    fn new() -> Forwarded {
        Forwarded(smallvec::SmallVec::new())
    }

    fn push(&mut self, name: HeaderName, value: HeaderValue) {
        self.0.push((name, value));
    }

    /// The fields to add, in the order they are written.
    pub fn fields(&self) -> &[(HeaderName, HeaderValue)] {
        &self.0
    }
}

/// The `X-Forwarded-For/-Proto/-Host` to send. From a trusted proxy the existing values
/// are kept (and the peer appended to the chain); from anyone else they are replaced,
/// and the other client-address headers (`Forwarded`, `X-Real-IP`, `X-Forwarded-Port`,
/// …, see `CLIENT_ADDRESS_HEADERS`) dropped in every spelling, so the app never
/// believes a client about its own address. What is returned replaces its namesakes,
/// which are removed from `headers`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    trusted: bool,
    proto: &'static str,
    host: Option<HeaderValue>,
) -> Forwarded {
    let mut out = Forwarded::new();
    if trusted {
        let peer_text = peer.to_string();
        let prior: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let chain = if prior.is_empty() {
            peer_text
        } else {
            format!("{}, {peer_text}", prior.join(", "))
        };
        // Visible ASCII throughout (what `to_str` let through, and an address), so this
        // does not fail; were it to, the prior chain would stay as it came.
        if let Ok(v) = HeaderValue::from_str(&chain) {
            headers.remove(&X_FORWARDED_FOR);
            out.push(X_FORWARDED_FOR, v);
        }
    } else {
        // Every spelling of the client-address headers (`X_Forwarded_For` reaches a CGI
        // or Rack app as the same variable) is dropped before idgate sets its own.
        let is_spoofable = |n: &HeaderName| {
            CLIENT_ADDRESS_LENGTHS & length_bit(n.as_str().len()) != 0
                && CLIENT_ADDRESS_HEADERS
                    .iter()
                    .any(|c| eq_folded(n.as_str(), c))
        };
        if headers.keys().any(is_spoofable) {
            let names: Vec<HeaderName> = headers
                .keys()
                .filter(|n| is_spoofable(n))
                .cloned()
                .collect();
            for n in names {
                headers.remove(n);
            }
        }
        out.push(X_FORWARDED_FOR, peer_value(peer));
    }
    // Untrusted, the map holds none of these now; trusted, one that is there is kept.
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        out.push(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(h) = host
        && !(trusted && headers.contains_key(&X_FORWARDED_HOST))
    {
        out.push(X_FORWARDED_HOST, h);
    }
    out
}

thread_local! {
    /// The last peer address and its header form: a sidecar sees few distinct peers
    /// (the ingress, the kubelet), so this saves formatting and an allocation almost
    /// every time.
    static LAST_PEER: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

fn peer_value(peer: IpAddr) -> HeaderValue {
    LAST_PEER.with(|cell| {
        let mut last = cell.borrow_mut();
        if let Some((ip, v)) = last.as_ref()
            && *ip == peer
        {
            return v.clone();
        }
        let v = HeaderValue::from_str(&peer.to_string()).expect("an IP address is header text");
        *last = Some((peer, v.clone()));
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> IdentityHeaderPolicy {
        let names = [
            HeaderName::from_static("x-idgate-user-id"),
            HeaderName::from_static("x-remote-user"),
        ];
        IdentityHeaderPolicy::new(names.iter())
    }

    #[test]
    fn protected_names_match_in_any_case_and_with_underscores() {
        let p = policy();
        for name in [
            "x-idgate-user-id",
            "X-IDGATE-USER-ID",
            "x_idgate_user_id",
            "X_Idgate-Anything",
            "x-remote-user",
            "X_REMOTE_USER",
        ] {
            assert!(p.is_protected(name), "{name}");
        }
        for name in ["x-idgate", "x-remote-users", "remote-user", "x-request-id"] {
            assert!(!p.is_protected(name), "{name}");
        }
    }

    #[test]
    fn strip_removes_every_occurrence_and_reports_names_only() {
        let p = policy();
        let mut h = HeaderMap::new();
        h.append("x-idgate-user-id", HeaderValue::from_static("a"));
        h.append("x-idgate-user-id", HeaderValue::from_static("b"));
        h.append("x_remote_user", HeaderValue::from_static("c"));
        h.append("accept", HeaderValue::from_static("*/*"));
        let removed = p.strip(&mut h);
        assert_eq!(removed.len(), 2);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn connection_naming_a_protected_header_is_detected() {
        let p = policy();
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X_Idgate_Tenant"),
        );
        assert_eq!(p.connection_names_protected(&h), Some("X_Idgate_Tenant"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(p.connection_names_protected(&h), None);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_survives_hop_by_hop_removal() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let up = upgrade_request(&h);
        remove_hop_by_hop(&mut h, up);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn session_cookie_is_removed_and_others_joined() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; idgate_session=secret"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-idgate_session=x;b=2"),
        );
        strip_cookie(&mut h, "idgate_session");
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2");

        let mut only = HeaderMap::new();
        only.insert(header::COOKIE, HeaderValue::from_static("idgate_session=s"));
        strip_cookie(&mut only, "idgate_session");
        assert!(!only.contains_key(header::COOKIE));

        let mut lookalike = HeaderMap::new();
        lookalike.insert(
            header::COOKIE,
            HeaderValue::from_static("idgate_session_x=1"),
        );
        strip_cookie(&mut lookalike, "idgate_session");
        assert_eq!(lookalike[header::COOKIE], "idgate_session_x=1");

        // Two fields (HTTP/2 sends one per cookie) are joined even with none of ours,
        // since an HTTP/1.1 hop expects one; the login cookie goes too.
        let mut split = HeaderMap::new();
        split.append(header::COOKIE, HeaderValue::from_static("a=1"));
        split.append(header::COOKIE, HeaderValue::from_static(" b=2 ;"));
        let mut with_login = split.clone();
        strip_cookie(&mut split, "idgate_session");
        assert_eq!(split.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(split[header::COOKIE], "a=1; b=2");
        with_login.append(
            header::COOKIE,
            HeaderValue::from_static("idgate_session_login=z"),
        );
        strip_cookie(&mut with_login, "idgate_session");
        assert_eq!(with_login[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn forwarded_headers_are_replaced_for_untrusted_and_appended_for_trusted() {
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        let mut untrusted = h.clone();
        let added = set_forwarded(
            &mut untrusted,
            peer,
            false,
            "http",
            Some(HeaderValue::from_static("a.example")),
        );
        assert!(
            !untrusted.contains_key("x-forwarded-for"),
            "sent once, from `added`"
        );
        apply(&mut untrusted, &added);
        assert_eq!(untrusted["x-forwarded-for"], "10.1.2.3");
        assert_eq!(untrusted["x-forwarded-proto"], "http");
        assert_eq!(untrusted["x-forwarded-host"], "a.example");
        assert!(!untrusted.contains_key("forwarded"));

        let added = set_forwarded(
            &mut h,
            peer,
            true,
            "http",
            Some(HeaderValue::from_static("a.example")),
        );
        let names: Vec<&str> = added.fields().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["x-forwarded-for", "x-forwarded-host"],
            "the client's proto is kept"
        );
        assert!(
            !h.contains_key("x-forwarded-for"),
            "sent once, from `added`"
        );
        apply(&mut h, &added);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 1);
    }

    /// What the app receives: the map, then the fields idgate adds.
    fn apply(h: &mut HeaderMap, added: &Forwarded) {
        for (name, value) in added.fields() {
            h.append(name.clone(), value.clone());
        }
    }

    #[test]
    fn strip_list_matches_configured_names_in_any_spelling_and_underscored_framing() {
        let list = StripList::new(&[
            HeaderName::from_static("x-original-url"),
            HeaderName::from_static("remote-user"),
        ]);
        for name in [
            "x-original-url",
            "x_original_url",
            "remote_user",
            "transfer_encoding",
            "content_length",
            "keep_alive",
            "proxy_connection",
        ] {
            assert!(list.matches(name), "{name}");
        }
        // The `-` framing names are hyper's and remove_hop_by_hop's to handle; lookalikes
        // and longer names are someone else's.
        for name in [
            "content-length",
            "transfer-encoding",
            "host",
            "connection",
            "x-original-urls",
            "remote-user-x",
            "x-remote-user",
            "content_length_x",
        ] {
            assert!(!list.matches(name), "{name}");
        }
        // The default list: names of one length share a slice, each is found in it,
        // and idgate's own neighbours of the same lengths are not.
        let defaults: Vec<HeaderName> = crate::config::defaults::STRIP_HEADERS
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
            .collect();
        let list = StripList::new(&defaults);
        for name in crate::config::defaults::STRIP_HEADERS {
            assert!(list.matches(name), "{name}");
            assert!(
                list.matches(&name.to_ascii_lowercase().replace('-', "_")),
                "{name}"
            );
        }
        for name in [
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-request-id",
        ] {
            assert!(!list.matches(name), "{name}");
        }
        let long = "x".repeat(300);
        assert!(!list.matches(&long));
        let long_list = StripList::new(&[HeaderName::from_bytes(long.as_bytes()).unwrap()]);
        assert!(long_list.matches(&long));
        assert!(!long_list.matches(&"x".repeat(200)));
    }

    #[test]
    fn strip_list_removes_every_occurrence_and_keeps_the_rest() {
        let list = StripList::new(&[HeaderName::from_static("x-remote-user")]);
        let mut h = HeaderMap::new();
        h.append("x-remote-user", HeaderValue::from_static("a"));
        h.append("x-remote-user", HeaderValue::from_static("b"));
        h.append("x_remote_user", HeaderValue::from_static("c"));
        h.append("transfer_encoding", HeaderValue::from_static("chunked"));
        h.append("content-length", HeaderValue::from_static("5"));
        assert_eq!(list.strip(&mut h), 3);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-length"));
        assert_eq!(list.strip(&mut h), 0);
    }

    #[test]
    fn client_address_family_is_kept_only_from_trusted_peers() {
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let mut h = HeaderMap::new();
        for name in [
            "x-forwarded-port",
            "x_forwarded_prefix",
            "x-forwarded-server",
            "x-real-ip",
            "true-client-ip",
            "cf_connecting_ip",
            "x-cluster-client-ip",
        ] {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static("6.6.6.6"),
            );
        }
        let mut trusted = h.clone();
        let added = set_forwarded(&mut h, peer, false, "http", None);
        apply(&mut h, &added);
        assert_eq!(h.len(), 2, "{h:?}");
        let added = set_forwarded(&mut trusted, peer, true, "http", None);
        apply(&mut trusted, &added);
        assert_eq!(trusted.len(), 9, "{trusted:?}");
    }
}
