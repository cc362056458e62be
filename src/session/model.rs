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
    /// The client's address at login (through the trusted proxies), for the admin
    /// API's session list: an operator telling a user's sessions apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The browser's `User-Agent` at login, cut to [`MAX_USER_AGENT`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// The most of a `User-Agent` a session keeps: enough to tell browsers apart, never a
/// way for a client to make its session record large.
pub const MAX_USER_AGENT: usize = 256;

/// What a login knows besides who signed in, kept with the session it makes.
#[derive(Debug, Clone, Default)]
pub struct LoginDetails {
    /// The Maestrano session behind it, for tenants that re-check it.
    pub mno: Option<MnoSession>,
    /// The SAML subject, for Single Logout.
    pub saml: Option<SamlSubject>,
    /// The client's address.
    pub client: Option<std::net::IpAddr>,
    /// The `User-Agent` header as sent (cut and made printable when stored).
    pub user_agent: Option<String>,
}

/// `ua` as a session keeps it: printable ASCII only (anything else becomes `?`), at
/// most [`MAX_USER_AGENT`] bytes.
pub fn stored_user_agent(ua: &str) -> String {
    ua.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX_USER_AGENT)
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_user_agent_is_printable_and_bounded() {
        assert_eq!(stored_user_agent("Mozilla/5.0 (X11)"), "Mozilla/5.0 (X11)");
        assert_eq!(stored_user_agent("a\u{e9}b\tc\u{7f}"), "a?b?c?");
        let long = "y".repeat(1000);
        assert_eq!(stored_user_agent(&long).len(), MAX_USER_AGENT);
    }
}
