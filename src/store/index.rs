//! The indexes a record holds, and how a write moves them.
//!
//! Both backends keep the same logical indexes; a write computes, here and once, which
//! entries the record gains and loses, and the backend applies that plan atomically
//! with the record itself (a Lua script on Redis, one lock in memory). Keeping the plan
//! out of the backends is what makes their behaviour identical by construction.

use crate::directory::model::{Group, User, index_key};

/// A lookup the directory offers. Unique indexes map a value to one id; the others map
/// a value to a set of ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// Users by the SCIM `userName` they show (`User::scim_user_name`: the client's, the
    /// one a login chose, or the id), case-insensitive. Unique.
    UserName,
    /// Users by SCIM `externalId`, exact. Unique.
    ExternalId,
    /// Users by the SAML user id they log in as, exact. Unique.
    IdpSubject,
    /// Users by any of their email addresses, case-insensitive.
    Email,
    /// Users by SCIM `displayName`, case-insensitive.
    UserDisplayName,
    /// Users that are members of a group (the value is the group id).
    Members,
    /// Groups by `externalId`, exact. Unique.
    GroupExternalId,
    /// Groups by display name, case-insensitive.
    GroupName,
}

impl Index {
    /// Whether one value names at most one record.
    pub fn unique(self) -> bool {
        matches!(
            self,
            Index::UserName | Index::ExternalId | Index::IdpSubject | Index::GroupExternalId
        )
    }

    /// The backend-neutral key of `value` in this index.
    pub fn key(self, value: &str) -> String {
        match self {
            Index::UserName => format!("n:{}", index_key(value)),
            Index::ExternalId => format!("x:{value}"),
            Index::IdpSubject => format!("sub:{value}"),
            Index::Email => format!("em:{}", index_key(value)),
            Index::UserDisplayName => format!("dn:{}", index_key(value)),
            Index::Members => format!("gm:{value}"),
            Index::GroupExternalId => format!("gx:{value}"),
            Index::GroupName => format!("gn:{}", index_key(value)),
        }
    }
}

/// Which listing a record appears in (for SCIM's paged lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Users that SCIM shows: every one not deprovisioned, whoever made it.
    Users,
    /// Groups that SCIM shows (not deprovisioned).
    Groups,
}

impl Listing {
    /// The backend-neutral key of the listing.
    pub fn key(self) -> &'static str {
        match self {
            Listing::Users => "users",
            Listing::Groups => "groups",
        }
    }
}

/// One change to an index, applied with the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOp {
    /// Take a unique key; the write fails if another id holds it.
    Claim(String),
    /// Drop a unique key if this id holds it.
    Release(String),
    /// Add the id to a set.
    Add(String),
    /// Remove the id from a set.
    Remove(String),
    /// Add the id to a listing.
    List(&'static str),
    /// Remove the id from a listing.
    Unlist(&'static str),
}

impl IndexOp {
    /// The key the op touches.
    pub fn key(&self) -> &str {
        match self {
            IndexOp::Claim(k) | IndexOp::Release(k) | IndexOp::Add(k) | IndexOp::Remove(k) => k,
            IndexOp::List(k) | IndexOp::Unlist(k) => k,
        }
    }

    /// One-letter code for the Redis script.
    pub fn code(&self) -> &'static str {
        match self {
            IndexOp::Claim(_) => "c",
            IndexOp::Release(_) => "r",
            IndexOp::Add(_) => "a",
            IndexOp::Remove(_) => "d",
            IndexOp::List(_) => "z",
            IndexOp::Unlist(_) => "y",
        }
    }
}

/// Everything a record is found by.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Entries {
    unique: Vec<String>,
    sets: Vec<String>,
    listed: Option<&'static str>,
}

impl Entries {
    /// A user's entries.
    pub fn of_user(user: &User) -> Entries {
        let mut e = Entries::default();
        e.unique.push(Index::UserName.key(user.scim_user_name()));
        if let Some(x) = &user.external_id {
            e.unique.push(Index::ExternalId.key(x));
        }
        if let Some(s) = &user.idp_subject {
            e.unique.push(Index::IdpSubject.key(s));
        }
        for email in user.email_keys() {
            e.sets.push(Index::Email.key(&email));
        }
        if let Some(d) = user
            .display_name
            .as_deref()
            .filter(|d| !d.trim().is_empty())
        {
            e.sets.push(Index::UserDisplayName.key(d));
        }
        // A deprovisioned user is nobody's member any more (the memberships are kept
        // for a restore). Every other user is listed, whoever made it: SCIM sees every
        // user of its tenant the same way (SPEC §10).
        if !user.deprovisioned {
            for m in &user.memberships {
                e.sets.push(Index::Members.key(&m.group_id));
            }
            e.listed = Some(Listing::Users.key());
        }
        e.sets.sort();
        e.sets.dedup();
        e
    }

    /// A group's entries.
    pub fn of_group(group: &Group) -> Entries {
        let mut e = Entries::default();
        if let Some(x) = &group.external_id {
            e.unique.push(Index::GroupExternalId.key(x));
        }
        if !group.name.trim().is_empty() {
            e.sets.push(Index::GroupName.key(&group.name));
        }
        if !group.deprovisioned {
            e.listed = Some(Listing::Groups.key());
        }
        e
    }

    /// The ops that take a record from `old` entries (None: a new record) to these.
    /// Unchanged unique keys are claimed again, which is harmless and keeps the check
    /// that nobody else took them.
    pub fn plan_from(&self, old: Option<&Entries>) -> Vec<IndexOp> {
        let empty = Entries::default();
        let old = old.unwrap_or(&empty);
        let mut ops = Vec::new();
        for k in &old.unique {
            if !self.unique.contains(k) {
                ops.push(IndexOp::Release(k.clone()));
            }
        }
        for k in &self.unique {
            ops.push(IndexOp::Claim(k.clone()));
        }
        for k in &old.sets {
            if !self.sets.contains(k) {
                ops.push(IndexOp::Remove(k.clone()));
            }
        }
        for k in &self.sets {
            if !old.sets.contains(k) {
                ops.push(IndexOp::Add(k.clone()));
            }
        }
        match (old.listed, self.listed) {
            (Some(l), None) => ops.push(IndexOp::Unlist(l)),
            (_, Some(l)) => ops.push(IndexOp::List(l)),
            (None, None) => {}
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::model::{Email, Membership};

    #[test]
    fn a_rename_moves_the_unique_key_and_keeps_the_rest() {
        let mut old = User::new("u1", 0);
        old.user_name = Some("Ann@X.com".into());
        old.memberships.push(Membership {
            group_id: "g1".into(),
            role: "member".into(),
        });
        let mut new = old.clone();
        new.user_name = Some("ann2@x.com".into());
        new.memberships.clear();
        let ops = Entries::of_user(&new).plan_from(Some(&Entries::of_user(&old)));
        assert_eq!(
            ops,
            vec![
                IndexOp::Release("n:ann@x.com".into()),
                IndexOp::Claim("n:ann2@x.com".into()),
                IndexOp::Remove("gm:g1".into()),
                IndexOp::List("users"),
            ]
        );
    }

    #[test]
    fn every_email_is_indexed_once_case_folded() {
        let mut u = User::new("u1", 0);
        u.set_emails(vec![
            Email {
                value: "A@x.com".into(),
                kind: Some("work".into()),
                primary: true,
            },
            Email {
                value: "b@x.com".into(),
                kind: None,
                primary: false,
            },
        ]);
        let e = Entries::of_user(&u);
        assert_eq!(e.sets, vec!["em:a@x.com".to_owned(), "em:b@x.com".into()]);
        assert_eq!(u.email.as_deref(), Some("A@x.com"));
    }

    #[test]
    fn deprovisioned_records_leave_the_listing_but_keep_their_keys() {
        let mut g = Group::new("g1", "Acme", 0);
        g.external_id = Some("ext".into());
        let mut gone = g.clone();
        gone.deprovisioned = true;
        let ops = Entries::of_group(&gone).plan_from(Some(&Entries::of_group(&g)));
        assert!(ops.contains(&IndexOp::Unlist("groups")));
        assert!(ops.contains(&IndexOp::Claim("gx:ext".into())));
        assert!(!ops.iter().any(|o| matches!(o, IndexOp::Release(_))));
    }
}
