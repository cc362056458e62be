//! Access rules (SPEC §9): which requests go through without identity, which get 401
//! rather than a login redirect, and which identities a path admits.
//!
//! The rules are compiled once when the config loads: prefixes compare by whole
//! segments, regexes are built once, methods and tenants are short slices. Deciding a
//! request walks the list and allocates nothing, and it reads only what the cached
//! session already holds, so the hot path makes no store round trip for it.

use std::sync::Arc;

use http::Method;

use crate::gateway::has_prefix;

/// Where a rule applies, by path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// A path prefix matched by whole segments (`/admin` covers `/admin/x`, not
    /// `/administrator`).
    Prefix(Box<str>),
    /// A regex on the decoded path (the one routing uses), compiled once.
    Regex(regex::Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => has_prefix(path, p),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// One `[[access.rules]]` entry, compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Shown in logs and in the 403 answer, so that a refusal can be traced to its rule.
    pub name: Arc<str>,
    /// The paths it covers.
    pub path: PathMatch,
    /// The methods it covers; `None` covers all.
    pub methods: Option<Box<[Method]>>,
    /// The tenants it covers; `None` covers all, and a request with no tenant too.
    pub tenants: Option<Box<[Box<str>]>>,
    /// Forwarded without identity, like `public_paths`.
    pub public: bool,
    /// No session means 401 JSON rather than a login redirect, like `api_paths`.
    pub api: bool,
    /// Any of these: the session's group or a group the user is a member of.
    pub allow_groups: Box<[Box<str>]>,
    /// Any of these: the user's role in the session's group.
    pub allow_roles: Box<[Box<str>]>,
    /// Any of these user ids.
    pub allow_users: Box<[Box<str>]>,
}

/// What the rules look at in an identity, borrowed from the cached session so that a
/// decision costs no allocation.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The local user id.
    pub user_id: &'a str,
    /// The session's group (company).
    pub group_id: &'a str,
    /// The user's role in that group.
    pub role: &'a str,
    /// Every group the user is a member of (the session's first).
    pub groups: &'a [String],
}

impl Rule {
    /// Whether the rule covers this request. `tenant` is the tenant the request is
    /// judged for (the session's, or the one its host names).
    pub fn covers(&self, method: &Method, path: &str, tenant: Option<&str>) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m == method))
            && self
                .tenants
                .as_ref()
                .is_none_or(|ts| tenant.is_some_and(|t| ts.iter().any(|x| x.as_ref() == t)))
            && self.path.matches(path)
    }

    /// Whether `subject` may pass. A rule with no `allow_*` list admits anyone signed
    /// in; otherwise one match in any list is enough.
    pub fn admits(&self, subject: &Subject<'_>) -> bool {
        if self.allow_groups.is_empty()
            && self.allow_roles.is_empty()
            && self.allow_users.is_empty()
        {
            return true;
        }
        let in_list = |list: &[Box<str>], v: &str| list.iter().any(|x| x.as_ref() == v);
        in_list(&self.allow_users, subject.user_id)
            || in_list(&self.allow_roles, subject.role)
            || in_list(&self.allow_groups, subject.group_id)
            || subject
                .groups
                .iter()
                .any(|g| in_list(&self.allow_groups, g))
    }

    /// Whether every request this rule covers, `earlier` covers too, so that this one
    /// can never decide (reported by `check-config` as a warning). Conservative: a
    /// regex is only known to be covered by a prefix of `/`.
    pub fn shadowed_by(&self, earlier: &Rule) -> bool {
        let paths = match (&earlier.path, &self.path) {
            (PathMatch::Prefix(e), PathMatch::Prefix(s)) => has_prefix(s, e),
            (PathMatch::Prefix(e), PathMatch::Regex(_)) => e.as_ref() == "/",
            (PathMatch::Regex(e), PathMatch::Regex(s)) => e.as_str() == s.as_str(),
            (PathMatch::Regex(_), PathMatch::Prefix(_)) => false,
        };
        let methods = match (&earlier.methods, &self.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(e), Some(s)) => s.iter().all(|m| e.contains(m)),
        };
        let tenants = match (&earlier.tenants, &self.tenants) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(e), Some(s)) => s.iter().all(|t| e.contains(t)),
        };
        paths && methods && tenants
    }
}

/// The rules in config order; the first that covers a request decides.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Box<[Rule]>,
    tenant_scoped: bool,
}

impl Rules {
    /// Compiles `rules` (already validated) into the matcher.
    pub fn new(rules: Vec<Rule>) -> Rules {
        let tenant_scoped = rules.iter().any(|r| r.tenants.is_some());
        Rules {
            rules: rules.into_boxed_slice(),
            tenant_scoped,
        }
    }

    /// The rule that decides this request, if any.
    pub fn decide(&self, method: &Method, path: &str, tenant: Option<&str>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.covers(method, path, tenant))
    }

    /// Whether any rule names tenants: only then does a decision need the tenant, which
    /// costs a host lookup before the session is known.
    pub fn tenant_scoped(&self) -> bool {
        self.tenant_scoped
    }

    /// Whether there are no rules at all (the common, free case).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules in order.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, path: PathMatch) -> Rule {
        Rule {
            name: name.into(),
            path,
            methods: None,
            tenants: None,
            public: false,
            api: false,
            allow_groups: Box::new([]),
            allow_roles: Box::new([]),
            allow_users: Box::new([]),
        }
    }

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.into())
    }

    fn subject<'a>(groups: &'a [String]) -> Subject<'a> {
        Subject {
            user_id: "u-1",
            group_id: "g-acme",
            role: "Member",
            groups,
        }
    }

    #[test]
    fn the_first_covering_rule_decides_by_segment_method_and_tenant() {
        let mut admin = rule("admins", prefix("/admin"));
        admin.allow_groups = Box::new(["g-admins".into()]);
        let mut reports = rule(
            "reports",
            PathMatch::Regex(regex::Regex::new("^/api/v[0-9]+/reports$").unwrap()),
        );
        reports.methods = Some(Box::new([Method::GET]));
        reports.tenants = Some(Box::new(["acme".into()]));
        let rules = Rules::new(vec![admin, reports, rule("all", prefix("/"))]);
        let name = |m: &Method, p: &str, t: Option<&str>| {
            rules.decide(m, p, t).map(|r| r.name.to_string())
        };
        assert_eq!(
            name(&Method::GET, "/admin", None).as_deref(),
            Some("admins")
        );
        assert_eq!(
            name(&Method::POST, "/admin/users", None).as_deref(),
            Some("admins")
        );
        assert_eq!(
            name(&Method::GET, "/administrator", None).as_deref(),
            Some("all")
        );
        assert_eq!(
            name(&Method::GET, "/api/v2/reports", Some("acme")).as_deref(),
            Some("reports")
        );
        assert_eq!(
            name(&Method::POST, "/api/v2/reports", Some("acme")).as_deref(),
            Some("all")
        );
        assert_eq!(
            name(&Method::GET, "/api/v2/reports", Some("beta")).as_deref(),
            Some("all")
        );
        assert_eq!(
            name(&Method::GET, "/api/v2/reports", None).as_deref(),
            Some("all")
        );
        assert_eq!(
            name(&Method::GET, "/api/v2/reports/x", Some("acme")).as_deref(),
            Some("all")
        );
        assert!(rules.tenant_scoped());
    }

    #[test]
    fn allow_lists_admit_any_one_match() {
        let open = rule("open", prefix("/"));
        assert!(open.admits(&subject(&[])));
        let mut r = rule("r", prefix("/"));
        r.allow_groups = Box::new(["g-admins".into()]);
        assert!(!r.admits(&subject(&[])));
        assert!(r.admits(&subject(&["g-ops".into(), "g-admins".into()])));
        r.allow_roles = Box::new(["Member".into()]);
        assert!(r.admits(&subject(&[])));
        let mut u = rule("u", prefix("/"));
        u.allow_users = Box::new(["u-2".into()]);
        assert!(!u.admits(&subject(&[])));
        u.allow_groups = Box::new(["g-acme".into()]);
        assert!(u.admits(&subject(&[])), "the session's own group counts");
    }

    #[test]
    fn shadowing_is_found_only_when_certain() {
        let all = rule("all", prefix("/"));
        let admin = rule("admin", prefix("/admin"));
        let admin_x = rule("admin-x", prefix("/admin/x"));
        let re = rule(
            "re",
            PathMatch::Regex(regex::Regex::new("^/admin").unwrap()),
        );
        assert!(admin.shadowed_by(&all));
        assert!(admin_x.shadowed_by(&admin));
        assert!(!admin.shadowed_by(&admin_x));
        assert!(re.shadowed_by(&all));
        assert!(!re.shadowed_by(&admin));
        assert!(!admin.shadowed_by(&re));
        let mut get_admin = rule("get", prefix("/admin"));
        get_admin.methods = Some(Box::new([Method::GET]));
        assert!(!admin.shadowed_by(&get_admin));
        assert!(get_admin.shadowed_by(&admin));
        let mut acme = rule("acme", prefix("/admin"));
        acme.tenants = Some(Box::new(["acme".into()]));
        assert!(!admin.shadowed_by(&acme));
        assert!(acme.shadowed_by(&admin));
    }
}
