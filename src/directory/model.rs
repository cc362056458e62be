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

/// A user. Users are never erased: deactivation and deprovisioning are flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Local user id (what the app sees as `X-Idgate-User-Id`).
    pub id: String,
    /// SCIM `userName` (unique per tenant, case-insensitive).
    #[serde(default)]
    pub user_name: Option<String>,
    /// SCIM `externalId` or the IdP's user id (unique per tenant).
    #[serde(default)]
    pub external_id: Option<String>,
    /// Email address.
    #[serde(default)]
    pub email: Option<String>,
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
            external_id: None,
            email: None,
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
