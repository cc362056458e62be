//! The domain: tenants' groups (companies) and users, and the lifecycle rules that every
//! protocol (SAML, SCIM, Maestrano) goes through. Nothing here knows about HTTP.
//!
//! When SCIM deactivates a user and when a Maestrano webhook removes one, both end up in
//! the same function here, which updates the record, marks the user's sessions revoked
//! with the reason, and tells every replica to drop what it cached.

pub mod model;

use crate::config::ProvisioningConfig;
use crate::session::model::RevokeReason;
use crate::store::{
    CreateUser, DirectoryStore, Event, EventBus, ReplaceUser, SessionStore, Store, StoreError,
    UserKey,
};
use model::{Group, Membership, User};

/// Errors from directory operations.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such user or group.
    #[error("not found")]
    NotFound,
    /// A unique index is held by another user (the id given).
    #[error("{field} is already used by another user")]
    Taken {
        /// `userName` or `externalId`.
        field: &'static str,
        /// The holder.
        holder: String,
    },
    /// The record kept changing under us (many concurrent writers).
    #[error("too many concurrent updates; try again")]
    Contended,
}

/// Who an IdP says is logging in, in idgate's terms (protocol modules map their
/// attributes to this).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginIdentity {
    /// The IdP's user id.
    pub user_id: String,
    /// Subject NameID, matched against SCIM userNames.
    pub name_id: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Given name.
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
    /// Group id.
    pub group_id: String,
    /// Group name (defaults to the id for a new group).
    pub group_name: Option<String>,
    /// Role in that group (defaults to `default_role`).
    pub role: Option<String>,
}

/// Why a login cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The user or group is blocked.
    #[error("login refused: {}", .0.code())]
    Blocked(RevokeReason),
    /// Unknown group and `create_groups` is off.
    #[error("unknown group and create_groups is off")]
    UnknownGroup,
    /// Unknown user and `create_users` is off.
    #[error("unknown user and create_users is off")]
    UnknownUser,
    /// The directory failed.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

impl From<StoreError> for LoginError {
    fn from(e: StoreError) -> Self {
        LoginError::Directory(DirectoryError::Store(e))
    }
}

/// Compare-and-set attempts before giving up under contention.
const CAS_ATTEMPTS: usize = 16;

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The directory of one deployment (all tenants).
#[derive(Clone)]
pub struct Directory {
    store: Store,
}

impl Directory {
    /// Over a store.
    pub fn new(store: Store) -> Directory {
        Directory { store }
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Reads a user.
    pub async fn user(&self, tenant: &str, id: &str) -> Result<Option<User>, DirectoryError> {
        Ok(self.store.get_user(tenant, id).await?)
    }

    /// Reads a group.
    pub async fn group(&self, tenant: &str, id: &str) -> Result<Option<Group>, DirectoryError> {
        Ok(self.store.get_group(tenant, id).await?)
    }

    /// The group with this id, created with `name` if it does not exist yet. Of
    /// concurrent first logins from one group, exactly one creates it; the others get
    /// that record.
    pub async fn ensure_group(
        &self,
        tenant: &str,
        id: &str,
        name: &str,
    ) -> Result<(Group, bool), DirectoryError> {
        let fresh = Group::new(id, name, now());
        Ok(match self.store.create_group(tenant, &fresh).await? {
            None => (fresh, true),
            Some(existing) => (existing, false),
        })
    }

    /// Stores a new user.
    pub async fn create_user(&self, tenant: &str, user: &User) -> Result<(), DirectoryError> {
        match self.store.create_user(tenant, user).await? {
            CreateUser::Created => Ok(()),
            CreateUser::IdTaken => Err(DirectoryError::Taken {
                field: "id",
                holder: user.id.clone(),
            }),
            CreateUser::UserNameTaken(holder) => Err(DirectoryError::Taken {
                field: "userName",
                holder,
            }),
            CreateUser::ExternalIdTaken(holder) => Err(DirectoryError::Taken {
                field: "externalId",
                holder,
            }),
        }
    }

    /// Applies `change` to a user with compare-and-set, retrying on concurrent writes.
    /// Returns the stored (old, new) pair, or None when `change` made no difference.
    pub async fn update_user(
        &self,
        tenant: &str,
        id: &str,
        change: impl Fn(&mut User),
    ) -> Result<Option<(User, User)>, DirectoryError> {
        for _ in 0..CAS_ATTEMPTS {
            let old = self
                .store
                .get_user(tenant, id)
                .await?
                .ok_or(DirectoryError::NotFound)?;
            let mut new = old.clone();
            change(&mut new);
            if new == old {
                return Ok(None);
            }
            new.version = old.version + 1;
            new.updated_at = now();
            match self.store.replace_user(tenant, &old, &new).await? {
                ReplaceUser::Replaced => {
                    self.publish(Event::User {
                        tenant: tenant.into(),
                        id: id.into(),
                    })
                    .await;
                    return Ok(Some((old, new)));
                }
                ReplaceUser::Conflict => continue,
                ReplaceUser::UserNameTaken(holder) => {
                    return Err(DirectoryError::Taken {
                        field: "userName",
                        holder,
                    });
                }
                ReplaceUser::ExternalIdTaken(holder) => {
                    return Err(DirectoryError::Taken {
                        field: "externalId",
                        holder,
                    });
                }
            }
        }
        Err(DirectoryError::Contended)
    }

    /// Applies `change` to a group with compare-and-set.
    pub async fn update_group(
        &self,
        tenant: &str,
        id: &str,
        change: impl Fn(&mut Group),
    ) -> Result<Option<Group>, DirectoryError> {
        for _ in 0..CAS_ATTEMPTS {
            let old = self
                .store
                .get_group(tenant, id)
                .await?
                .ok_or(DirectoryError::NotFound)?;
            let mut new = old.clone();
            change(&mut new);
            if new == old {
                return Ok(None);
            }
            new.version = old.version + 1;
            new.updated_at = now();
            if self.store.replace_group(tenant, &new, old.version).await? {
                self.publish(Event::Group {
                    tenant: tenant.into(),
                    id: id.into(),
                })
                .await;
                return Ok(Some(new));
            }
        }
        Err(DirectoryError::Contended)
    }

    /// Adds (or changes the role of) a membership.
    pub async fn set_membership(
        &self,
        tenant: &str,
        user_id: &str,
        group_id: &str,
        role: &str,
    ) -> Result<(), DirectoryError> {
        self.update_user(tenant, user_id, |u| {
            match u.memberships.iter_mut().find(|m| m.group_id == group_id) {
                Some(m) => m.role = role.to_owned(),
                None => u.memberships.push(Membership {
                    group_id: group_id.to_owned(),
                    role: role.to_owned(),
                }),
            }
        })
        .await
        .map(|_| ())
    }

    /// Deactivates a user: blocked at once on every replica, sessions kept and marked
    /// with the reason. The record is never erased.
    pub async fn deactivate_user(&self, tenant: &str, id: &str) -> Result<(), DirectoryError> {
        self.update_user(tenant, id, |u| u.active = false).await?;
        self.revoke_sessions(tenant, id, RevokeReason::AccountDeactivated)
            .await
    }

    /// Reactivates a user. Sessions revoked earlier stay revoked: they log in again.
    pub async fn reactivate_user(&self, tenant: &str, id: &str) -> Result<(), DirectoryError> {
        self.update_user(tenant, id, |u| {
            u.active = true;
            u.deprovisioned = false;
        })
        .await
        .map(|_| ())
    }

    /// Removes a user from a group: their sessions are revoked with that reason.
    pub async fn remove_membership(
        &self,
        tenant: &str,
        user_id: &str,
        group_id: &str,
    ) -> Result<(), DirectoryError> {
        self.update_user(tenant, user_id, |u| {
            u.memberships.retain(|m| m.group_id != group_id)
        })
        .await?;
        self.revoke_sessions(tenant, user_id, RevokeReason::RemovedFromCompany)
            .await
    }

    /// Cancels a group: every member is blocked at once, on every replica.
    pub async fn cancel_group(&self, tenant: &str, id: &str) -> Result<(), DirectoryError> {
        self.update_group(tenant, id, |g| g.active = false).await?;
        Ok(())
    }

    /// Just-in-time provisioning for a login. Creates the group on first sight (one
    /// group per id, whatever the concurrency), then finds the user by, in order: the IdP
    /// user id linked earlier (externalId, or the id itself), the SCIM userName equal to
    /// the NameID or email, and, with `link_by_email`, the one user holding that email
    /// (user migration). Unknown users are created. Names, email and the role for this
    /// group are refreshed. Returns the local user id.
    pub async fn login(
        &self,
        tenant: &str,
        rules: &ProvisioningConfig,
        who: &LoginIdentity,
    ) -> Result<String, LoginError> {
        let group = match self.store.get_group(tenant, &who.group_id).await? {
            Some(g) => g,
            None if rules.create_groups => {
                let name = who.group_name.as_deref().unwrap_or(&who.group_id);
                self.ensure_group(tenant, &who.group_id, name).await?.0
            }
            None => return Err(LoginError::UnknownGroup),
        };
        if !group.active {
            return Err(LoginError::Blocked(RevokeReason::CompanyCancelled));
        }
        let role = who
            .role
            .clone()
            .unwrap_or_else(|| rules.default_role.clone());
        let found = match self.match_user(tenant, rules, who).await? {
            Some(id) => id,
            None if rules.create_users => {
                let mut user = User::new(&who.user_id, now());
                user.external_id = Some(who.user_id.clone());
                user.email = who.email.clone();
                user.given_name = who.given_name.clone();
                user.family_name = who.family_name.clone();
                user.memberships.push(Membership {
                    group_id: who.group_id.clone(),
                    role: role.clone(),
                });
                match self.store.create_user(tenant, &user).await? {
                    CreateUser::Created => return Ok(user.id),
                    // A concurrent first login of the same user won: use theirs.
                    CreateUser::IdTaken | CreateUser::ExternalIdTaken(_) => self
                        .match_user(tenant, rules, who)
                        .await?
                        .ok_or(LoginError::UnknownUser)?,
                    CreateUser::UserNameTaken(holder) => holder,
                }
            }
            None => return Err(LoginError::UnknownUser),
        };
        let user = self
            .store
            .get_user(tenant, &found)
            .await?
            .ok_or(LoginError::UnknownUser)?;
        if !user.active || user.deprovisioned {
            return Err(LoginError::Blocked(RevokeReason::AccountDeactivated));
        }
        let idp_id = who.user_id.clone();
        let fresh = who.clone();
        let group_id = who.group_id.clone();
        self.update_user(tenant, &found, move |u| {
            if u.external_id.is_none() && u.id != idp_id {
                u.external_id = Some(idp_id.clone());
            }
            if fresh.email.is_some() {
                u.email = fresh.email.clone();
            }
            if fresh.given_name.is_some() {
                u.given_name = fresh.given_name.clone();
            }
            if fresh.family_name.is_some() {
                u.family_name = fresh.family_name.clone();
            }
            match u.memberships.iter_mut().find(|m| m.group_id == group_id) {
                Some(m) => m.role = role.clone(),
                None => u.memberships.push(Membership {
                    group_id: group_id.clone(),
                    role: role.clone(),
                }),
            }
        })
        .await?;
        Ok(found)
    }

    async fn match_user(
        &self,
        tenant: &str,
        rules: &ProvisioningConfig,
        who: &LoginIdentity,
    ) -> Result<Option<String>, StoreError> {
        if let Some(id) = self
            .store
            .find_user(tenant, UserKey::ExternalId, &who.user_id)
            .await?
        {
            return Ok(Some(id));
        }
        // Every other match must be a user not yet linked to a different IdP identity:
        // otherwise a second IdP account with the same email (or a uid equal to a local
        // id) would be logged in as the first.
        let linkable = |u: &User| u.external_id.as_ref().is_none_or(|e| *e == who.user_id);
        if let Some(u) = self.store.get_user(tenant, &who.user_id).await?
            && linkable(&u)
        {
            return Ok(Some(u.id));
        }
        for candidate in [&who.name_id, &who.email].into_iter().flatten() {
            if let Some(id) = self
                .store
                .find_user(tenant, UserKey::UserName, candidate)
                .await?
                && let Some(u) = self.store.get_user(tenant, &id).await?
                && linkable(&u)
            {
                return Ok(Some(id));
            }
        }
        if rules.link_by_email
            && let Some(email) = &who.email
            && let Some(id) = self.store.find_user(tenant, UserKey::Email, email).await?
            && let Some(u) = self.store.get_user(tenant, &id).await?
            && linkable(&u)
        {
            return Ok(Some(id));
        }
        Ok(None)
    }

    /// Marks the user's sessions revoked and tells every replica to drop them.
    async fn revoke_sessions(
        &self,
        tenant: &str,
        user_id: &str,
        reason: RevokeReason,
    ) -> Result<(), DirectoryError> {
        let hashes = self
            .store
            .revoke_user_sessions(tenant, user_id, reason)
            .await?;
        for hash in hashes {
            self.publish(Event::Session { hash }).await;
        }
        Ok(())
    }

    async fn publish(&self, event: Event) {
        // The write is done; a lost event only delays other replicas until their cache
        // entries expire (`[session].cache_ttl`), so it is logged, not fatal.
        if let Err(e) = self.store.publish(&event).await {
            tracing::warn!(error = %e, "cannot publish invalidation; replicas catch up within cache_ttl");
        }
    }
}
