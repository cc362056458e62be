//! The session record as the store keeps it.

use serde::{Deserialize, Serialize};

/// Why a session was revoked; shown to the user in the 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// The user was deactivated or deprovisioned.
    AccountDeactivated,
    /// The user's company was cancelled.
    CompanyCancelled,
    /// The user was removed from the company.
    RemovedFromCompany,
}

impl RevokeReason {
    /// Machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            RevokeReason::AccountDeactivated => "account_deactivated",
            RevokeReason::CompanyCancelled => "company_cancelled",
            RevokeReason::RemovedFromCompany => "removed_from_company",
        }
    }

    /// What the user is told.
    pub fn message(self) -> &'static str {
        match self {
            RevokeReason::AccountDeactivated => "Your account has been deactivated.",
            RevokeReason::CompanyCancelled => "Your company's account has been cancelled.",
            RevokeReason::RemovedFromCompany => "You have been removed from this company.",
        }
    }
}

/// A login session. Stored under the SHA-256 of its cookie value, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Tenant id.
    pub tenant: String,
    /// Local user id.
    pub user_id: String,
    /// Group the user logged in through.
    pub group_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds: `created_at + max_lifetime`, never extended.
    pub expires_at: i64,
    /// The Maestrano session behind this one, for tenants that re-check it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mno: Option<MnoSession>,
    /// The SAML subject the IdP vouched for, kept so that a Single Logout naming it can
    /// find this session, and so that an SP-initiated logout can name it to the IdP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saml: Option<SamlSubject>,
}

/// The subject of the assertion a session was made from, as SAML Single Logout names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlSubject {
    /// The assertion's NameID value.
    pub name_id: String,
    /// The `SessionIndex` of its AuthnStatement, which lets the IdP end one of several
    /// sessions of the same subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_index: Option<String>,
}

/// Maestrano's session for a login (`mno_session`, `mno_session_recheck`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MnoSession {
    /// The Maestrano uid (the real one, also in virtual mode), asked about at re-check.
    #[serde(default)]
    pub uid: String,
    /// The `mno_session` token, asked about at re-check.
    pub session: String,
    /// Unix seconds after which Maestrano must be asked again (0: at once).
    pub recheck: i64,
}
