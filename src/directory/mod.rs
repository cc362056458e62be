//! The domain: tenants' groups (companies) and users, and the lifecycle rules that every
//! protocol (SAML, SCIM, Maestrano) goes through. Nothing here knows about HTTP.
//!
//! When SCIM deactivates a user and when a Maestrano webhook removes one, both end up in
//! the same function here, which updates the record, marks the user's sessions revoked
//! with the reason, and tells every replica to drop what it cached.
//!
//! The same functions write the audit lines of those changes ([`crate::audit`]): a
//! deactivation, a reactivation, a cancelled company, a removed membership and each
//! session revoked by them. Every function that can make such a change takes `by`,
//! who acts and on which request, so that no protocol can change a user without
//! saying who it was.

pub mod model;

use crate::audit::{self, Origin};
use crate::config::ProvisioningConfig;
use crate::session::model::RevokeReason;
use crate::store::{
    CreateGroup, CreateUser, DirectoryStore, Event, EventBus, Index, Listing, Records,
    ReplaceGroup, ReplaceUser, SessionStore, Store, StoreError, UserKey,
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
    /// A unique index is held by another record (the id given).
    #[error("{field} is already used by another record")]
    Taken {
        /// `userName` or `externalId`.
        field: &'static str,
        /// The holder.
        holder: String,
    },
    /// The record kept changing under us (many concurrent writers).
    #[error("too many concurrent updates; try again")]
    Contended,
    /// The record is not at the version the caller based its change on.
    #[error("the record changed since it was read")]
    VersionMismatch,
    /// A member to add does not exist.
    #[error("no such user: {0}")]
    UnknownMember(String),
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

impl LoginIdentity {
    /// The first field that holds a control character, by name. Every one of them
    /// reaches the app as a header value or a JWT claim, and the gateway never swaps a
    /// value it cannot send for a placeholder, so such an identity cannot log in.
    pub fn control_character_field(&self) -> Option<&'static str> {
        let fields = [
            ("user_id", Some(&self.user_id)),
            ("name_id", self.name_id.as_ref()),
            ("email", self.email.as_ref()),
            ("given_name", self.given_name.as_ref()),
            ("family_name", self.family_name.as_ref()),
            ("group_id", Some(&self.group_id)),
            ("group_name", self.group_name.as_ref()),
            ("role", self.role.as_ref()),
        ];
        fields
            .into_iter()
            .find(|(_, v)| v.is_some_and(|v| has_control_character(v)))
            .map(|(name, _)| name)
    }
}

/// Whether `value` holds a character that no HTTP field value may carry: C0 controls
/// other than tab (CR, LF and NUL among them) and DEL. These are exactly the bytes
/// `http::HeaderValue` refuses, so a value without them is always a header value.
pub fn has_control_character(value: &str) -> bool {
    value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
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

/// Store record (with the tenant id appended) saying that the users of a tenant stored
/// before every user was listed have been listed and named (see
/// [`Directory::list_every_user`]).
const EVERY_USER_LISTED: &str = "directory:every-user-listed:v1:";

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
        match self.store.create_group(tenant, &fresh).await? {
            CreateGroup::Created => Ok((fresh, true)),
            CreateGroup::Exists(existing) => Ok((existing, false)),
            CreateGroup::ExternalIdTaken(holder) => Err(DirectoryError::Taken {
                field: "externalId",
                holder,
            }),
        }
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
            CreateUser::SubjectTaken(holder) => Err(DirectoryError::Taken {
                field: "idpSubject",
                holder,
            }),
        }
    }

    /// Applies `change` to a user with compare-and-set, retrying on concurrent writes.
    /// Returns the stored (old, new) pair, or None when `change` made no difference.
    pub async fn update_user(
        &self,
        by: &Origin<'_>,
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
            match self.replace_user(by, tenant, &old, new).await {
                Ok(new) => return Ok(Some((old, new))),
                Err(DirectoryError::VersionMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(DirectoryError::Contended)
    }

    /// Stores `new` in place of `old` if `old` is still the stored version (else
    /// [`DirectoryError::VersionMismatch`]), then applies the lifecycle rules of the
    /// change: every replica drops the old record, and a user who lost access (was
    /// deactivated, deprovisioned or removed from a group) has their sessions revoked
    /// with the reason. Every protocol's user writes end here.
    pub async fn replace_user(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        old: &User,
        mut new: User,
    ) -> Result<User, DirectoryError> {
        new.id.clone_from(&old.id);
        new.version = old.version + 1;
        new.updated_at = now();
        let mut renames = 0;
        loop {
            match self.store.replace_user(tenant, old, &new).await? {
                // A userName idgate chose (or the id standing in for one, on a user
                // stored before every user held one) that someone else holds now: the
                // user gets another one rather than a write refused for a name no
                // client asked for.
                ReplaceUser::UserNameTaken(_) if !new.client_managed() && renames < 3 => {
                    renames += 1;
                    let name = self
                        .free_user_name(tenant, &new.id, &[new.email.as_deref()])
                        .await?;
                    tracing::info!(tenant, user = %new.id, "the userName a login chose for a user is taken; choosing another");
                    new.login_name = Some(name);
                }
                other => break self.replaced(by, tenant, old, new, other).await,
            }
        }
    }

    /// The rest of [`Directory::replace_user`], once the store answered.
    async fn replaced(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        old: &User,
        new: User,
        outcome: ReplaceUser,
    ) -> Result<User, DirectoryError> {
        match outcome {
            ReplaceUser::Replaced => {}
            ReplaceUser::Conflict => return Err(DirectoryError::VersionMismatch),
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
            ReplaceUser::SubjectTaken(holder) => {
                return Err(DirectoryError::Taken {
                    field: "idpSubject",
                    holder,
                });
            }
        }
        self.publish(Event::User {
            tenant: tenant.into(),
            id: new.id.clone(),
        })
        .await;
        // Written once the change is stored, before the sessions it revokes: a failed
        // revocation (retried by the client) must not leave the change unrecorded.
        let had_account = old.active && !old.deprovisioned;
        let has_account = new.active && !new.deprovisioned;
        if had_account != has_account {
            let (tenant, user) = (tenant, new.id.as_str());
            audit::record(
                self.store.metrics(),
                by,
                if has_account {
                    audit::Event::UserActivated { tenant, user }
                } else {
                    audit::Event::UserDeactivated { tenant, user }
                },
            );
        }
        let left: Vec<&str> = old
            .memberships
            .iter()
            .filter(|m| new.role_in(&m.group_id).is_none())
            .map(|m| m.group_id.as_str())
            .collect();
        for group in &left {
            audit::record(
                self.store.metrics(),
                by,
                audit::Event::MembershipRemoved {
                    tenant,
                    user: &new.id,
                    group,
                },
            );
        }
        let lost_account = (old.active && !new.active) || (!old.deprovisioned && new.deprovisioned);
        if lost_account {
            self.revoke_sessions(by, tenant, &new.id, RevokeReason::AccountDeactivated, None)
                .await?;
        } else {
            for left in left {
                self.revoke_sessions(
                    by,
                    tenant,
                    &new.id,
                    RevokeReason::RemovedFromCompany,
                    Some(left),
                )
                .await?;
            }
        }
        Ok(new)
    }

    /// Marks the sessions of a user who is blocked revoked again. The write that
    /// blocked them revoked them already; this repairs the case where that revocation
    /// failed after the write (the store went away in between) and the client retried.
    pub async fn enforce_block(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        user: &User,
    ) -> Result<(), DirectoryError> {
        if !user.active || user.deprovisioned {
            self.revoke_sessions(by, tenant, &user.id, RevokeReason::AccountDeactivated, None)
                .await?;
        }
        Ok(())
    }

    /// Applies `change` to a group with compare-and-set.
    pub async fn update_group(
        &self,
        by: &Origin<'_>,
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
            match self.replace_group(by, tenant, &old, new).await {
                Ok(new) => return Ok(Some(new)),
                Err(DirectoryError::VersionMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(DirectoryError::Contended)
    }

    /// Stores `new` in place of `old` if `old` is still the stored version. A cancelled
    /// group blocks its members on every replica through the group's status, which the
    /// access gate checks on every request.
    pub async fn replace_group(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        old: &Group,
        mut new: Group,
    ) -> Result<Group, DirectoryError> {
        new.id.clone_from(&old.id);
        new.version = old.version + 1;
        new.updated_at = now();
        match self.store.replace_group(tenant, old, &new).await? {
            ReplaceGroup::Replaced => {}
            ReplaceGroup::Conflict => return Err(DirectoryError::VersionMismatch),
            ReplaceGroup::ExternalIdTaken(holder) => {
                return Err(DirectoryError::Taken {
                    field: "externalId",
                    holder,
                });
            }
        }
        self.publish(Event::Group {
            tenant: tenant.into(),
            id: new.id.clone(),
        })
        .await;
        if old.active && !new.active {
            audit::record(
                self.store.metrics(),
                by,
                audit::Event::CompanyCancelled {
                    tenant,
                    group: &new.id,
                },
            );
            // The gate already refuses members through the group's status; marking
            // their sessions keeps them refused (with the reason) even if the group
            // comes back.
            for member in self.store.find(tenant, Index::Members, &new.id).await? {
                self.revoke_sessions(
                    by,
                    tenant,
                    &member,
                    RevokeReason::CompanyCancelled,
                    Some(&new.id),
                )
                .await?;
            }
        }
        Ok(new)
    }

    /// Adds (or changes the role of) a membership.
    pub async fn set_membership(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        user_id: &str,
        group_id: &str,
        role: &str,
    ) -> Result<(), DirectoryError> {
        self.update_user(by, tenant, user_id, |u| {
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
    pub async fn deactivate_user(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        id: &str,
    ) -> Result<(), DirectoryError> {
        self.update_user(by, tenant, id, |u| u.active = false)
            .await?;
        Ok(())
    }

    /// Reactivates a user. Sessions revoked by the deactivation count as ended from
    /// then on, on every replica (the gate reads the user's status through the caches
    /// this change invalidates): the person is sent to the login, not to the 403.
    pub async fn reactivate_user(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        id: &str,
    ) -> Result<(), DirectoryError> {
        self.update_user(by, tenant, id, |u| {
            u.active = true;
            u.deprovisioned = false;
        })
        .await
        .map(|_| ())
    }

    /// Removes a user from a group: their sessions are revoked with that reason.
    pub async fn remove_membership(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        user_id: &str,
        group_id: &str,
    ) -> Result<(), DirectoryError> {
        self.update_user(by, tenant, user_id, |u| {
            u.memberships.retain(|m| m.group_id != group_id)
        })
        .await?;
        Ok(())
    }

    /// Cancels a group: every member is blocked at once, on every replica.
    pub async fn cancel_group(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        id: &str,
    ) -> Result<(), DirectoryError> {
        self.update_group(by, tenant, id, |g| g.active = false)
            .await?;
        Ok(())
    }

    /// Reopens a cancelled group. Its members' sessions revoked by the cancellation
    /// count as ended from then on, on every replica, as after a user's reactivation.
    pub async fn reactivate_group(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        id: &str,
    ) -> Result<(), DirectoryError> {
        self.update_group(by, tenant, id, |g| g.active = true)
            .await?;
        Ok(())
    }

    /// Provisioning of a user by a client that names them (SCIM `POST /Users`).
    /// `desired` carries the client's attributes (its id is ignored). Looks for, in
    /// order: the user holding `userName`, the one holding `externalId`, the one who
    /// logs in (SAML) with the client's `externalId` as uid, and, with `link_by_email`,
    /// the one user holding the primary email.
    /// - A deprovisioned user found by `userName` or `externalId` is restored, with its
    ///   id. Found only by email or uid, it is not the same person: a new user is made.
    /// - A user no client manages yet (a login made it: its userName is the one idgate
    ///   chose, see [`User::scim_user_name`]) is adopted, found by that userName as by
    ///   the rest, so that deprovisioning it later cuts off the person who logs in.
    /// - An active client-managed user holding the userName or externalId is a conflict;
    ///   one that merely shares the email or uid does not stop a new user.
    pub async fn provision_user(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        rules: &ProvisioningConfig,
        desired: &User,
    ) -> Result<User, DirectoryError> {
        for _ in 0..CAS_ATTEMPTS {
            let mut lookups: Vec<(UserKey, &String, &'static str)> = Vec::new();
            if let Some(v) = &desired.user_name {
                lookups.push((UserKey::UserName, v, "userName"));
            }
            if let Some(v) = &desired.external_id {
                lookups.push((UserKey::ExternalId, v, "externalId"));
                lookups.push((UserKey::IdpSubject, v, "uid"));
            }
            if rules.link_by_email
                && let Some(v) = &desired.email
            {
                lookups.push((UserKey::Email, v, "email"));
            }
            let mut found = None;
            for (key, value, how) in lookups {
                let Some(id) = self.store.find_user(tenant, key, value).await? else {
                    continue;
                };
                let Some(old) = self.store.get_user(tenant, &id).await? else {
                    continue;
                };
                let named = how == "userName" || how == "externalId";
                let managed = old.client_managed();
                if old.deprovisioned {
                    if named {
                        found = Some((old, "restored"));
                        break;
                    }
                } else if !managed {
                    found = Some((old, "adopted"));
                    break;
                } else if named {
                    return Err(DirectoryError::Taken {
                        field: how,
                        holder: id,
                    });
                }
            }
            let Some((old, how)) = found else {
                let mut user = desired.clone();
                user.id = uuid::Uuid::new_v4().to_string();
                user.idp_subject = None;
                user.deprovisioned = false;
                user.version = 1;
                user.created_at = now();
                user.updated_at = user.created_at;
                self.create_user(tenant, &user).await?;
                return Ok(user);
            };
            let mut new = old.clone();
            new.user_name.clone_from(&desired.user_name);
            if desired.external_id.is_some() {
                new.external_id.clone_from(&desired.external_id);
            }
            if !desired.emails.is_empty() {
                new.set_emails(desired.emails.clone());
            }
            new.given_name.clone_from(&desired.given_name);
            new.family_name.clone_from(&desired.family_name);
            new.display_name.clone_from(&desired.display_name);
            new.active = desired.active;
            new.deprovisioned = false;
            match self.replace_user(by, tenant, &old, new).await {
                Ok(user) => {
                    tracing::info!(tenant, user = %user.id, how, "provisioned an existing user");
                    return Ok(user);
                }
                Err(DirectoryError::VersionMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(DirectoryError::Contended)
    }

    /// Provisioning of a group by a client (SCIM `POST /Groups`). The group's id is the
    /// client's `externalId` when it gives one, so that a SAML login naming that group
    /// id lands in the same company; otherwise a new UUID. A deprovisioned group with
    /// that id is restored, and an active one that no client manages yet (made by a SAML
    /// login) is adopted; any other is a conflict. A group cancelled some other way (a
    /// marketplace webhook) is not reopened by a client. Returns the group and whether
    /// it existed before (the caller then sets its members to exactly the requested ones).
    pub async fn provision_group(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        desired: &Group,
    ) -> Result<(Group, bool), DirectoryError> {
        for _ in 0..CAS_ATTEMPTS {
            let mut existing = None;
            if let Some(ext) = &desired.external_id {
                existing = match self
                    .store
                    .find(tenant, Index::GroupExternalId, ext)
                    .await?
                    .pop()
                {
                    Some(id) => Some(id),
                    None => self.store.get_group(tenant, ext).await?.map(|g| g.id),
                };
            }
            let Some(id) = existing else {
                let mut group = desired.clone();
                group.id = desired
                    .external_id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                group.version = 1;
                group.created_at = now();
                group.updated_at = group.created_at;
                group.deprovisioned = false;
                match self.store.create_group(tenant, &group).await? {
                    CreateGroup::Created => return Ok((group, false)),
                    CreateGroup::Exists(_) => continue,
                    CreateGroup::ExternalIdTaken(holder) => {
                        return Err(DirectoryError::Taken {
                            field: "externalId",
                            holder,
                        });
                    }
                }
            };
            let Some(old) = self.store.get_group(tenant, &id).await? else {
                continue;
            };
            let adoptable = old.external_id.is_none() && old.active;
            if !old.deprovisioned && !adoptable {
                return Err(DirectoryError::Taken {
                    field: "externalId",
                    holder: id,
                });
            }
            let mut new = old.clone();
            new.name.clone_from(&desired.name);
            new.external_id.clone_from(&desired.external_id);
            new.active = true;
            new.deprovisioned = false;
            match self.replace_group(by, tenant, &old, new).await {
                Ok(g) => return Ok((g, true)),
                Err(DirectoryError::VersionMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(DirectoryError::Contended)
    }

    /// Whether every user to add as a member exists (and is not deprovisioned), in one
    /// round trip: callers check before their first write, so a refused change leaves
    /// nothing half done.
    pub async fn check_members(&self, tenant: &str, ids: &[String]) -> Result<(), DirectoryError> {
        let known: std::collections::HashSet<String> = self
            .store
            .get_users(tenant, ids)
            .await?
            .into_iter()
            .filter(|u| !u.deprovisioned)
            .map(|u| u.id)
            .collect();
        match ids.iter().find(|id| !known.contains(*id)) {
            Some(missing) => Err(DirectoryError::UnknownMember(missing.clone())),
            None => Ok(()),
        }
    }

    /// Changes a group's members: `add` join with `role` (or keep their role), `remove`
    /// leave (their sessions are revoked). The users to add have passed
    /// [`Directory::check_members`]; one that vanished since is reported as unknown.
    pub async fn change_members(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        group_id: &str,
        add: &[String],
        remove: &[String],
        role: &str,
    ) -> Result<(), DirectoryError> {
        for id in add {
            self.update_user(by, tenant, id, |u| {
                if u.role_in(group_id).is_none() {
                    u.memberships.push(Membership {
                        group_id: group_id.to_owned(),
                        role: role.to_owned(),
                    });
                }
            })
            .await
            .map_err(|e| match e {
                DirectoryError::NotFound => DirectoryError::UnknownMember(id.clone()),
                other => other,
            })?;
        }
        for id in remove {
            match self.remove_membership(by, tenant, id, group_id).await {
                Ok(()) | Err(DirectoryError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The ids of a group's members, in id order.
    pub async fn members(
        &self,
        tenant: &str,
        group_id: &str,
    ) -> Result<Vec<String>, DirectoryError> {
        Ok(self.store.find(tenant, Index::Members, group_id).await?)
    }

    /// A page of a listing: ids and the listing's size.
    pub async fn list(
        &self,
        tenant: &str,
        listing: Listing,
        start: usize,
        count: usize,
    ) -> Result<(Vec<String>, usize), DirectoryError> {
        Ok(self.store.list(tenant, listing, start, count).await?)
    }

    /// Just-in-time provisioning for a login. Creates the group on first sight (one
    /// group per id, whatever the concurrency), then finds the user by, in order: the IdP
    /// user id linked earlier (externalId, or the id itself), the SCIM userName equal to
    /// the NameID or email, and, with `link_by_email`, the one user holding that email
    /// (user migration). Unknown users are created. Names, email and the role for this
    /// group are refreshed. Returns the local user id.
    pub async fn login(
        &self,
        by: &Origin<'_>,
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
                user.idp_subject = Some(who.user_id.clone());
                user.email = who.email.clone();
                user.given_name = who.given_name.clone();
                user.family_name = who.family_name.clone();
                user.memberships.push(Membership {
                    group_id: who.group_id.clone(),
                    role: role.clone(),
                });
                let mut made = None;
                for _ in 0..CAS_ATTEMPTS {
                    // The userName SCIM will show: what Okta and Entra most likely
                    // call the person too (their userName is usually the email, and
                    // the NameID when it is not opaque).
                    user.login_name = Some(
                        self.free_user_name(
                            tenant,
                            &user.id,
                            &[who.email.as_deref(), who.name_id.as_deref()],
                        )
                        .await?,
                    );
                    match self.store.create_user(tenant, &user).await? {
                        CreateUser::Created => return Ok(user.id),
                        // A concurrent first login of the same user won: use theirs.
                        CreateUser::IdTaken
                        | CreateUser::ExternalIdTaken(_)
                        | CreateUser::SubjectTaken(_) => {
                            made = Some(
                                self.match_user(tenant, rules, who)
                                    .await?
                                    .ok_or(LoginError::UnknownUser)?,
                            );
                            break;
                        }
                        // The name was taken since it was chosen (never a reason to
                        // log in as its holder): choose again.
                        CreateUser::UserNameTaken(_) => {}
                    }
                }
                made.ok_or(DirectoryError::Contended)?
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
        self.update_user(by, tenant, &found, move |u| {
            if u.idp_subject.is_none() {
                u.idp_subject = Some(idp_id.clone());
            }
            if let Some(email) = &fresh.email {
                u.set_primary_email(email);
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
            .find_user(tenant, UserKey::IdpSubject, &who.user_id)
            .await?
        {
            return Ok(Some(id));
        }
        // Every other match must be a user not yet linked to a different IdP identity:
        // otherwise a second IdP account with the same email (or a uid equal to a local
        // id) would be logged in as the first.
        let linkable = |u: &User| u.idp_subject.as_ref().is_none_or(|s| *s == who.user_id);
        let mut candidates = Vec::new();
        // A provisioning client whose externalId is the id the IdP also sends as uid
        // (Entra's object id, say), then a local id equal to the uid.
        if let Some(id) = self
            .store
            .find_user(tenant, UserKey::ExternalId, &who.user_id)
            .await?
        {
            candidates.push(id);
        }
        candidates.push(who.user_id.clone());
        for id in candidates {
            if let Some(u) = self.store.get_user(tenant, &id).await?
                && linkable(&u)
            {
                return Ok(Some(u.id));
            }
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

    /// A userName for a user that no client manages, free in the tenant: the first of
    /// `candidates` that no other user shows, else the user's id if free, else a new
    /// UUID (a name nobody can hold yet).
    async fn free_user_name(
        &self,
        tenant: &str,
        id: &str,
        candidates: &[Option<&str>],
    ) -> Result<String, StoreError> {
        let names = candidates
            .iter()
            .flatten()
            .copied()
            .filter(|c| !c.trim().is_empty())
            .chain(std::iter::once(id));
        for name in names {
            match self
                .store
                .find_user(tenant, UserKey::UserName, name)
                .await?
            {
                Some(holder) if holder != id => {}
                _ => return Ok(name.to_owned()),
            }
        }
        Ok(uuid::Uuid::new_v4().to_string())
    }

    /// Lists and names the users of `tenant` that were stored before every user was
    /// listed (SPEC §10: SCIM sees every user the same way). Such a user, made by a
    /// login, is neither in the SCIM listing nor in the userName index; it is
    /// rewritten once through the one write path, which puts it in both, with the
    /// userName a login would give it now (its email, else its id). Runs once per
    /// tenant and store: a record in the store says it is done, so a later call costs
    /// one read. Returns how many users it rewrote.
    pub async fn list_every_user(&self, tenant: &str) -> Result<usize, DirectoryError> {
        let mark = format!("{EVERY_USER_LISTED}{tenant}");
        if self.store.get_record(&mark).await?.is_some() {
            return Ok(0);
        }
        let ids = self.store.user_ids(tenant).await?;
        let mut rewritten = 0;
        for chunk in ids.chunks(500) {
            for user in self.store.get_users(tenant, chunk).await? {
                if user.deprovisioned || user.client_managed() || user.login_name.is_some() {
                    continue;
                }
                let name = self
                    .free_user_name(tenant, &user.id, &[user.email.as_deref()])
                    .await?;
                let named = self
                    .update_user(&Origin::system(), tenant, &user.id, |u| {
                        if !u.client_managed() && u.login_name.is_none() {
                            u.login_name = Some(name.clone());
                        }
                    })
                    .await;
                match named {
                    Ok(Some(_)) => rewritten += 1,
                    Ok(None) | Err(DirectoryError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.store.set_record(&mark, "done").await?;
        Ok(rewritten)
    }

    /// Marks the user's sessions revoked and tells every replica to drop them.
    async fn revoke_sessions(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        user_id: &str,
        reason: RevokeReason,
        group: Option<&str>,
    ) -> Result<(), DirectoryError> {
        let hashes = self
            .store
            .revoke_user_sessions(tenant, user_id, reason, group)
            .await?;
        for hash in hashes {
            audit::record(
                self.store.metrics(),
                by,
                audit::Event::SessionRevoked {
                    tenant,
                    user: user_id,
                    session: &hash,
                    reason: Some(reason),
                },
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_exactly_what_no_header_value_carries() {
        for b in 0u8..=0x7f {
            let s = format!("a{}b", b as char);
            assert_eq!(
                has_control_character(&s),
                http::HeaderValue::from_str(&s).is_err(),
                "byte {b:#04x}"
            );
        }
        assert!(!has_control_character("Zoë\tÅsa"));
        let who = LoginIdentity {
            user_id: "u".into(),
            group_id: "g".into(),
            role: Some("admin\n".into()),
            ..LoginIdentity::default()
        };
        assert_eq!(who.control_character_field(), Some("role"));
    }
}
