//! The directory's records: groups (companies) and users, as the store keeps them.

use serde::{Deserialize, Serialize};

/// A group: the company (or Maestrano group) that users belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The IdP's group id (`group_uid`), also the SCIM `id`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// False once cancelled: its members are blocked.
    pub active: bool,
    /// SCIM `externalId` (the provisioning client's own id for the group).
    #[serde(default)]
    pub external_id: Option<String>,
    /// Deprovisioned by SCIM DELETE: cancelled, kept, hidden from SCIM.
    #[serde(default)]
    pub deprovisioned: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Bumped on every change; compare-and-set key for updates.
    pub version: u64,
}

/// A user's membership in a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Group id.
    pub group_id: String,
    /// Role in that group.
    pub role: String,
}

/// One of a user's email addresses, in SCIM's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// The address.
    pub value: String,
    /// `work`, `home`, `other`…
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Whether this is the primary address.
    #[serde(default)]
    pub primary: bool,
}

/// A user. Users are never erased: deactivation and deprovisioning are flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Local user id (what the app sees as `X-Idgate-User-Id`).
    pub id: String,
    /// SCIM `userName` as a provisioning client gave it (unique per tenant,
    /// case-insensitive). None for a user no client manages yet: see
    /// [`User::scim_user_name`] for what SCIM shows then.
    #[serde(default)]
    pub user_name: Option<String>,
    /// The userName idgate chose for a user that a login made (SAML, or Maestrano's
    /// SSO): the email of that first login, else its NameID. Shown and indexed as the
    /// userName until a client gives one (and adopts the user). Never changed by later
    /// logins, so that what a client matched on stays put.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_name: Option<String>,
    /// SCIM `externalId`: the provisioning client's id for the user (unique per
    /// tenant). Only SCIM writes it.
    #[serde(default)]
    pub external_id: Option<String>,
    /// The SAML user id (`uid`) this user logs in as, linked at the first login (unique
    /// per tenant). Only logins write it: a provisioning client's `externalId` is often
    /// a different id for the same person, and must not break the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_subject: Option<String>,
    /// The primary email address (identity headers, login matching).
    #[serde(default)]
    pub email: Option<String>,
    /// Every address SCIM gave, as given; `email` is the primary (or first) of them.
    /// Empty for users that only SAML has seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<Email>,
    /// SCIM `displayName`, used for the name header when there are no given/family names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Given name.
    #[serde(default)]
    pub given_name: Option<String>,
    /// Family name.
    #[serde(default)]
    pub family_name: Option<String>,
    /// False while deactivated: the user is blocked.
    pub active: bool,
    /// Deprovisioned by SCIM DELETE: kept, but hidden from SCIM.
    #[serde(default)]
    pub deprovisioned: bool,
    /// Group memberships.
    #[serde(default)]
    pub memberships: Vec<Membership>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Bumped on every change; compare-and-set key for updates.
    pub version: u64,
}

impl User {
    /// A new active user with no names, email or memberships.
    pub fn new(id: impl Into<String>, now: i64) -> User {
        User {
            id: id.into(),
            user_name: None,
            login_name: None,
            external_id: None,
            idp_subject: None,
            email: None,
            emails: Vec::new(),
            display_name: None,
            given_name: None,
            family_name: None,
            active: true,
            deprovisioned: false,
            memberships: Vec::new(),
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    /// The userName SCIM shows, lists and finds the user by: the client's, else the one
    /// chosen at the first login, else the id. Every user of a tenant has one, held in
    /// the unique userName index, so that GET by id, the list and every filter agree
    /// (SPEC §10).
    pub fn scim_user_name(&self) -> &str {
        self.user_name
            .as_deref()
            .or(self.login_name.as_deref())
            .unwrap_or(&self.id)
    }

    /// Whether a provisioning client manages the user (gave its userName). A user that
    /// only logins have seen is adopted by the first client that names it.
    pub fn client_managed(&self) -> bool {
        self.user_name.is_some()
    }

    /// Sets the primary address, as a login from the IdP reports it: the SCIM list keeps
    /// its other entries, and the primary entry (or the only one) takes the new value.
    pub fn set_primary_email(&mut self, email: &str) {
        if self.email.as_deref() == Some(email) {
            return;
        }
        if !self.emails.is_empty() {
            let at = self.emails.iter().position(|e| e.primary).unwrap_or(0);
            if let Some(entry) = self.emails.get_mut(at) {
                entry.value = email.to_owned();
            }
        }
        self.email = Some(email.to_owned());
    }

    /// Replaces the SCIM email list; the primary entry (else the first) becomes `email`.
    pub fn set_emails(&mut self, emails: Vec<Email>) {
        self.email = emails
            .iter()
            .find(|e| e.primary)
            .or(emails.first())
            .map(|e| e.value.clone());
        self.emails = emails;
    }

    /// Every distinct address of the user, case-folded, for the email index.
    pub fn email_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .email
            .iter()
            .chain(self.emails.iter().map(|e| &e.value))
            .map(|e| index_key(e))
            .filter(|k| !k.is_empty())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The role in `group_id`, if a member.
    pub fn role_in(&self, group_id: &str) -> Option<&str> {
        self.memberships
            .iter()
            .find(|m| m.group_id == group_id)
            .map(|m| m.role.as_str())
    }
}

impl Group {
    /// A new active group.
    pub fn new(id: impl Into<String>, name: impl Into<String>, now: i64) -> Group {
        Group {
            id: id.into(),
            name: name.into(),
            active: true,
            external_id: None,
            deprovisioned: false,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }
}

/// Index keys are case-folded so that lookups are case-insensitive while records keep
/// the case they were given.
pub fn index_key(value: &str) -> String {
    value.trim().to_lowercase()
}
