//! The durable objects on SQL, written once for both engines.

use std::collections::BTreeMap;

use crate::UnixTime;
use crate::directory::{GroupRecord, SourceId, SourceSnapshot, UserRecord};
use crate::store::durable::{
    AcmeAccountRecord, AcmeAccountStatus, ApiClientRecord, AuditRecord, CertificateRecord,
    ClientStatus, CredentialKind, CredentialRecord, Material, NewAuditEvent, OidcClientRecord,
    PermissionRecord, Revocation, RouteRecord, material_context, open_material, seal_material,
};
use crate::store::{SecretKeys, StoreError};

use super::Core;
use super::db::{Arg, Row, Tx, map_err, unique_or};

// ----------------------------------------------------------------- columns

const CREDENTIAL_EXISTS: &str = "SELECT 1 FROM credentials WHERE id = $1";

macro_rules! credential_columns {
    () => {
        "SELECT id, owner, kind, label, lookup, material_type, material, counter, created_at, \
         last_used_at, expires_at FROM credentials"
    };
}

macro_rules! api_client_columns {
    () => {
        "SELECT id, name, status, groups, description, rate_limit_per_minute, created_at, \
         updated_at, version FROM api_clients"
    };
}

macro_rules! oidc_columns {
    () => {
        "SELECT client_id, name, redirect_uris, secret_hash, grant_types, scopes, created_at, \
         version FROM oidc_clients"
    };
}

macro_rules! route_columns {
    () => {
        "SELECT name, definition, created_at, updated_at, version FROM routes"
    };
}

const ACME_ACCOUNT_EXISTS: &str = "SELECT 1 FROM acme_accounts WHERE id = $1";

macro_rules! acme_account_columns {
    () => {
        "SELECT id, key_thumbprint, jwk, contacts, status, eab_key_id, created_at, version \
         FROM acme_accounts"
    };
}

fn not_found(what: &'static str, key: &str) -> StoreError {
    StoreError::NotFound {
        what,
        key: key.to_owned(),
    }
}

fn conflict(what: &'static str, key: &str) -> StoreError {
    StoreError::Conflict {
        what,
        key: key.to_owned(),
    }
}

/// A `u64` the caller gave, as the database's signed 64-bit integer.
fn to_i64(what: &'static str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid {
        what,
        reason: format!("{v} is larger than {}", i64::MAX),
    })
}

/// A stored integer that must not be negative.
fn to_u64(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative ({v})")))
}

fn to_json(list: &[String]) -> String {
    // Serialising strings cannot fail.
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

fn from_json(what: &str, text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

impl Core {
    fn err(&self, e: sqlx::Error) -> StoreError {
        map_err(self.engine, e)
    }

    async fn begin(&self) -> Result<Tx, StoreError> {
        self.pools.begin().await.map_err(|e| self.err(e))
    }

    async fn commit(&self, tx: Tx) -> Result<(), StoreError> {
        tx.commit().await.map_err(|e| self.err(e))
    }

    fn keys(&self) -> &SecretKeys {
        &self.keys
    }

    // ------------------------------------------------------------ directory

    pub(super) async fn save_source(
        &self,
        source: &SourceId,
        snapshot: &SourceSnapshot,
    ) -> Result<(), StoreError> {
        let src = source.as_str();
        let mut tx = self.begin().await?;
        // The upsert comes first: it takes the source's row lock
        // (PostgreSQL), so two syncs of one source run one after the other.
        tx.execute(
            "INSERT INTO directory_sources (source, saved_at) VALUES ($1, $2) \
             ON CONFLICT (source) DO UPDATE SET saved_at = excluded.saved_at",
            &[Arg::Text(src), Arg::Int(UnixTime::now().as_secs())],
        )
        .await
        .map_err(|e| self.err(e))?;
        for table in [
            "DELETE FROM directory_users WHERE source = $1",
            "DELETE FROM directory_groups WHERE source = $1",
            "DELETE FROM directory_user_memberships WHERE source = $1",
            "DELETE FROM directory_group_memberships WHERE source = $1",
        ] {
            tx.execute(table, &[Arg::Text(src)])
                .await
                .map_err(|e| self.err(e))?;
        }
        for (position, u) in snapshot.users.iter().enumerate() {
            tx.execute(
                "INSERT INTO directory_users \
                 (source, subject, position, username, email, display_name, disabled) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    Arg::Text(src),
                    Arg::Text(&u.subject),
                    Arg::Int(i64::try_from(position).unwrap_or(i64::MAX)),
                    Arg::OptText(u.username.as_deref()),
                    Arg::OptText(u.email.as_deref()),
                    Arg::OptText(u.display_name.as_deref()),
                    Arg::OptBool(u.disabled),
                ],
            )
            .await
            .map_err(|e| unique_or(self.engine, e, "directory user", &u.subject))?;
        }
        for (position, g) in snapshot.groups.iter().enumerate() {
            tx.execute(
                "INSERT INTO directory_groups (source, name, position, display_name) \
                 VALUES ($1, $2, $3, $4)",
                &[
                    Arg::Text(src),
                    Arg::Text(&g.name),
                    Arg::Int(i64::try_from(position).unwrap_or(i64::MAX)),
                    Arg::OptText(g.display_name.as_deref()),
                ],
            )
            .await
            .map_err(|e| unique_or(self.engine, e, "directory group", &g.name))?;
        }
        // Repeated memberships are harmless: kept once.
        for (subject, group) in &snapshot.user_memberships {
            tx.execute(
                "INSERT INTO directory_user_memberships (source, subject, group_name) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[Arg::Text(src), Arg::Text(subject), Arg::Text(group)],
            )
            .await
            .map_err(|e| self.err(e))?;
        }
        for (child, parent) in &snapshot.group_memberships {
            tx.execute(
                "INSERT INTO directory_group_memberships (source, child, parent) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[Arg::Text(src), Arg::Text(child), Arg::Text(parent)],
            )
            .await
            .map_err(|e| self.err(e))?;
        }
        self.commit(tx).await
    }

    /// Every source, read in one read-only transaction on one connection:
    /// the five tables come from one snapshot, so a `save_source` committed
    /// meanwhile is seen whole or not at all.
    pub(super) async fn load_sources(&self) -> Result<Vec<(SourceId, SourceSnapshot)>, StoreError> {
        let mut tx = self.pools.begin_read().await.map_err(|e| self.err(e))?;
        let snapshots = self.load_sources_in(&mut tx).await?;
        // Read-only: committing only ends the snapshot.
        self.commit(tx).await?;
        Ok(snapshots
            .into_iter()
            .map(|(k, v)| (SourceId::new(k.as_str()), v))
            .collect())
    }

    async fn load_sources_in(
        &self,
        tx: &mut Tx,
    ) -> Result<BTreeMap<String, SourceSnapshot>, StoreError> {
        let sources = tx
            .fetch_all("SELECT source FROM directory_sources ORDER BY source", &[])
            .await
            .map_err(|e| self.err(e))?;
        let mut snapshots: BTreeMap<String, SourceSnapshot> = BTreeMap::new();
        for row in sources {
            snapshots.insert(row.text(0)?, SourceSnapshot::new());
        }
        let users = tx
            .fetch_all(
                "SELECT source, subject, username, email, display_name, disabled \
             FROM directory_users ORDER BY source, position",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        for row in users {
            let source = row.text(0)?;
            let user = user_from_row(&row, 1)?;
            if let Some(s) = snapshots.get_mut(&source) {
                s.users.push(user);
            }
        }
        let groups = tx
            .fetch_all(
                "SELECT source, name, display_name FROM directory_groups ORDER BY source, position",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        for row in groups {
            let source = row.text(0)?;
            let mut group = GroupRecord::new(row.text(1)?);
            group.display_name = row.opt_text(2)?.map(Into::into);
            if let Some(s) = snapshots.get_mut(&source) {
                s.groups.push(group);
            }
        }
        let members = tx
            .fetch_all(
                "SELECT source, subject, group_name FROM directory_user_memberships \
             ORDER BY source, subject, group_name",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        for row in members {
            let source = row.text(0)?;
            if let Some(s) = snapshots.get_mut(&source) {
                s.user_memberships
                    .push((row.text(1)?.into(), row.text(2)?.into()));
            }
        }
        let nested = tx
            .fetch_all(
                "SELECT source, child, parent FROM directory_group_memberships \
             ORDER BY source, child, parent",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        for row in nested {
            let source = row.text(0)?;
            if let Some(s) = snapshots.get_mut(&source) {
                s.group_memberships
                    .push((row.text(1)?.into(), row.text(2)?.into()));
            }
        }
        Ok(snapshots)
    }

    pub(super) async fn delete_source(&self, source: &SourceId) -> Result<bool, StoreError> {
        let src = source.as_str();
        let mut tx = self.begin().await?;
        for table in [
            "DELETE FROM directory_users WHERE source = $1",
            "DELETE FROM directory_groups WHERE source = $1",
            "DELETE FROM directory_user_memberships WHERE source = $1",
            "DELETE FROM directory_group_memberships WHERE source = $1",
        ] {
            tx.execute(table, &[Arg::Text(src)])
                .await
                .map_err(|e| self.err(e))?;
        }
        let n = tx
            .execute(
                "DELETE FROM directory_sources WHERE source = $1",
                &[Arg::Text(src)],
            )
            .await
            .map_err(|e| self.err(e))?;
        self.commit(tx).await?;
        Ok(n > 0)
    }

    pub(super) async fn find_user(
        &self,
        subject: &str,
    ) -> Result<Vec<(SourceId, UserRecord)>, StoreError> {
        let rows = self
            .pools
            .fetch_all(
                "SELECT source, subject, username, email, display_name, disabled \
                 FROM directory_users WHERE subject = $1 ORDER BY source",
                &[Arg::Text(subject)],
            )
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|row| Ok((SourceId::new(row.text(0)?), user_from_row(row, 1)?)))
            .collect()
    }

    // ---------------------------------------------------------- credentials

    pub(super) async fn insert_credential(&self, c: &CredentialRecord) -> Result<(), StoreError> {
        let (tag, bytes) = seal_material(self.keys(), &c.owner, &c.id, c.kind, &c.material)?;
        let result = self
            .pools
            .execute(
                "INSERT INTO credentials (id, owner, kind, label, lookup, material_type, material, \
                 counter, created_at, last_used_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    Arg::Text(&c.id),
                    Arg::Text(&c.owner),
                    Arg::Text(c.kind.as_str()),
                    Arg::Text(&c.label),
                    Arg::OptText(c.lookup.as_deref()),
                    Arg::Text(tag),
                    Arg::Bytes(&bytes),
                    Arg::Int(to_i64("credential counter", c.counter)?),
                    Arg::Int(c.created_at.as_secs()),
                    Arg::OptInt(c.last_used_at.map(UnixTime::as_secs)),
                    Arg::OptInt(c.expires_at.map(UnixTime::as_secs)),
                ],
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => match map_err(self.engine, e) {
                StoreError::AlreadyExists { .. } => {
                    // Which key collided: the id, or the (kind, lookup) pair.
                    if self.exists(CREDENTIAL_EXISTS, &[Arg::Text(&c.id)]).await? {
                        Err(StoreError::AlreadyExists {
                            what: "credential",
                            key: c.id.clone(),
                        })
                    } else {
                        Err(StoreError::AlreadyExists {
                            what: "credential lookup",
                            key: c.lookup.clone().unwrap_or_default(),
                        })
                    }
                }
                other => Err(other),
            },
        }
    }

    /// Whether `sql` (a `SELECT 1 … WHERE <key>`) finds a row, read on the
    /// write side so it sees the write that just missed: it tells a guarded
    /// update that lost (conflict, already done) from one with nothing to
    /// update (not found).
    async fn exists(&self, sql: &str, args: &[Arg<'_>]) -> Result<bool, StoreError> {
        Ok(self
            .pools
            .write_fetch_optional(sql, args)
            .await
            .map_err(|e| self.err(e))?
            .is_some())
    }

    fn credential_from_row(&self, row: &Row) -> Result<CredentialRecord, StoreError> {
        let id = row.text(0)?;
        let kind_name = row.text(2)?;
        let kind = CredentialKind::parse(&kind_name).ok_or_else(|| {
            StoreError::Corrupt(format!("credential {id}: unknown kind `{kind_name}`"))
        })?;
        let tag = row.text(5)?;
        let owner = row.text(1)?;
        let material = open_material(self.keys(), &owner, &id, kind, &tag, row.bytes(6)?)?;
        Ok(CredentialRecord {
            owner,
            kind,
            label: row.text(3)?,
            lookup: row.opt_text(4)?,
            material,
            counter: to_u64("credential counter", row.int(7)?)?,
            created_at: UnixTime::from_secs(row.int(8)?),
            last_used_at: row.opt_int(9)?.map(UnixTime::from_secs),
            expires_at: row.opt_int(10)?.map(UnixTime::from_secs),
            id,
        })
    }

    pub(super) async fn credential(
        &self,
        id: &str,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        let row = self
            .pools
            .fetch_optional(
                concat!(credential_columns!(), " WHERE id = $1"),
                &[Arg::Text(id)],
            )
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| self.credential_from_row(&r)).transpose()
    }

    pub(super) async fn credential_by_lookup(
        &self,
        kind: CredentialKind,
        lookup: &str,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        let row = self
            .pools
            .fetch_optional(
                concat!(credential_columns!(), " WHERE kind = $1 AND lookup = $2"),
                &[Arg::Text(kind.as_str()), Arg::Text(lookup)],
            )
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| self.credential_from_row(&r)).transpose()
    }

    pub(super) async fn credentials_of(
        &self,
        owner: &str,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let rows = self
            .pools
            .fetch_all(
                concat!(
                    credential_columns!(),
                    " WHERE owner = $1 ORDER BY created_at, id"
                ),
                &[Arg::Text(owner)],
            )
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.credential_from_row(r)).collect()
    }

    pub(super) async fn advance_counter(
        &self,
        id: &str,
        expected: u64,
        new: u64,
        used_at: UnixTime,
    ) -> Result<bool, StoreError> {
        let (Ok(expected), new) = (i64::try_from(expected), to_i64("credential counter", new)?)
        else {
            // No stored counter is that large: it cannot match.
            return if self.exists(CREDENTIAL_EXISTS, &[Arg::Text(id)]).await? {
                Ok(false)
            } else {
                Err(not_found("credential", id))
            };
        };
        let n = self
            .pools
            .execute(
                "UPDATE credentials SET counter = $3, last_used_at = $4 \
                 WHERE id = $1 AND counter = $2",
                &[
                    Arg::Text(id),
                    Arg::Int(expected),
                    Arg::Int(new),
                    Arg::Int(used_at.as_secs()),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        if n > 0 {
            Ok(true)
        } else if self.exists(CREDENTIAL_EXISTS, &[Arg::Text(id)]).await? {
            Ok(false)
        } else {
            Err(not_found("credential", id))
        }
    }

    pub(super) async fn replace_material(
        &self,
        id: &str,
        material: &Material,
    ) -> Result<(), StoreError> {
        let row = self
            .pools
            .write_fetch_optional(
                "SELECT kind, owner FROM credentials WHERE id = $1",
                &[Arg::Text(id)],
            )
            .await
            .map_err(|e| self.err(e))?
            .ok_or_else(|| not_found("credential", id))?;
        let kind_name = row.text(0)?;
        let owner = row.text(1)?;
        let kind = CredentialKind::parse(&kind_name).ok_or_else(|| {
            StoreError::Corrupt(format!("credential {id}: unknown kind `{kind_name}`"))
        })?;
        let (tag, bytes) = seal_material(self.keys(), &owner, id, kind, material)?;
        let n = self
            .pools
            .execute(
                "UPDATE credentials SET material_type = $2, material = $3 WHERE id = $1",
                &[Arg::Text(id), Arg::Text(tag), Arg::Bytes(&bytes)],
            )
            .await
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(not_found("credential", id));
        }
        Ok(())
    }

    pub(super) async fn delete_credential(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .pools
            .execute("DELETE FROM credentials WHERE id = $1", &[Arg::Text(id)])
            .await
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    pub(super) async fn rewrap_secrets(&self) -> Result<usize, StoreError> {
        let rows = self
            .pools
            .fetch_all(
                "SELECT id, kind, material, owner FROM credentials WHERE material_type = 'sealed' ORDER BY id",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        let mut rewrapped = 0;
        for row in rows {
            let (id, kind_name, sealed, owner) =
                (row.text(0)?, row.text(1)?, row.bytes(2)?, row.text(3)?);
            if !self.keys().needs_rewrap(&sealed) {
                continue;
            }
            let kind = CredentialKind::parse(&kind_name).ok_or_else(|| {
                StoreError::Corrupt(format!("credential {id}: unknown kind `{kind_name}`"))
            })?;
            let fresh = self
                .keys()
                .rewrap(&sealed, &material_context(&owner, &id, kind))?;
            // Only if nobody replaced the material meanwhile.
            let n = self
                .pools
                .execute(
                    "UPDATE credentials SET material = $3 \
                     WHERE id = $1 AND material_type = 'sealed' AND material = $2",
                    &[Arg::Text(&id), Arg::Bytes(&sealed), Arg::Bytes(&fresh)],
                )
                .await
                .map_err(|e| self.err(e))?;
            rewrapped += usize::try_from(n).unwrap_or(0);
        }
        Ok(rewrapped)
    }

    // ---------------------------------------------------------- API clients

    pub(super) async fn insert_api_client(&self, c: &ApiClientRecord) -> Result<(), StoreError> {
        let groups = to_json(&c.groups);
        let result = self
            .pools
            .execute(
                "INSERT INTO api_clients (id, name, status, groups, description, \
                 rate_limit_per_minute, created_at, updated_at, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1)",
                &[
                    Arg::Text(&c.id),
                    Arg::Text(&c.name),
                    Arg::Text(c.status.as_str()),
                    Arg::Text(&groups),
                    Arg::Text(&c.description),
                    Arg::OptInt(c.rate_limit_per_minute.map(i64::from)),
                    Arg::Int(c.created_at.as_secs()),
                    Arg::Int(c.updated_at.as_secs()),
                ],
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => match map_err(self.engine, e) {
                StoreError::AlreadyExists { .. } => {
                    if self
                        .exists(
                            "SELECT 1 FROM api_clients WHERE id = $1",
                            &[Arg::Text(&c.id)],
                        )
                        .await?
                    {
                        Err(StoreError::AlreadyExists {
                            what: "API client",
                            key: c.id.clone(),
                        })
                    } else {
                        Err(StoreError::AlreadyExists {
                            what: "API client name",
                            key: c.name.clone(),
                        })
                    }
                }
                other => Err(other),
            },
        }
    }

    pub(super) async fn api_client(&self, id: &str) -> Result<Option<ApiClientRecord>, StoreError> {
        let row = self
            .pools
            .fetch_optional(
                concat!(api_client_columns!(), " WHERE id = $1"),
                &[Arg::Text(id)],
            )
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| api_client_from_row(&r)).transpose()
    }

    pub(super) async fn api_clients(&self) -> Result<Vec<ApiClientRecord>, StoreError> {
        let rows = self
            .pools
            .fetch_all(concat!(api_client_columns!(), " ORDER BY id"), &[])
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(api_client_from_row).collect()
    }

    pub(super) async fn update_api_client(&self, c: &ApiClientRecord) -> Result<u64, StoreError> {
        let groups = to_json(&c.groups);
        let Ok(version) = i64::try_from(c.version) else {
            return Err(conflict("API client", &c.id));
        };
        let row = self
            .pools
            .write_fetch_optional(
                "UPDATE api_clients SET name = $3, status = $4, groups = $5, description = $6, \
                 rate_limit_per_minute = $7, created_at = $8, updated_at = $9, version = version + 1 \
                 WHERE id = $1 AND version = $2 RETURNING version",
                &[
                    Arg::Text(&c.id),
                    Arg::Int(version),
                    Arg::Text(&c.name),
                    Arg::Text(c.status.as_str()),
                    Arg::Text(&groups),
                    Arg::Text(&c.description),
                    Arg::OptInt(c.rate_limit_per_minute.map(i64::from)),
                    Arg::Int(c.created_at.as_secs()),
                    Arg::Int(c.updated_at.as_secs()),
                ],
            )
            .await
            .map_err(|e| unique_or(self.engine, e, "API client name", &c.name))?;
        match row {
            Some(row) => to_u64("API client version", row.int(0)?),
            None if self
                .exists(
                    "SELECT 1 FROM api_clients WHERE id = $1",
                    &[Arg::Text(&c.id)],
                )
                .await? =>
            {
                Err(conflict("API client", &c.id))
            }
            None => Err(not_found("API client", &c.id)),
        }
    }

    pub(super) async fn delete_api_client(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        for sql in [
            "DELETE FROM api_client_permissions WHERE client_id = $1",
            "DELETE FROM credentials WHERE owner = $1",
        ] {
            tx.execute(sql, &[Arg::Text(id)])
                .await
                .map_err(|e| self.err(e))?;
        }
        let n = tx
            .execute("DELETE FROM api_clients WHERE id = $1", &[Arg::Text(id)])
            .await
            .map_err(|e| self.err(e))?;
        self.commit(tx).await?;
        Ok(n > 0)
    }

    pub(super) async fn set_permissions(
        &self,
        client: &str,
        permissions: &[PermissionRecord],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        // A write that changes nothing: it says whether the client exists
        // and (PostgreSQL) locks its row until commit, so a concurrent
        // delete waits.
        let exists = tx
            .execute(
                "UPDATE api_clients SET version = version WHERE id = $1",
                &[Arg::Text(client)],
            )
            .await
            .map_err(|e| self.err(e))?;
        if exists == 0 {
            return Err(not_found("API client", client));
        }
        tx.execute(
            "DELETE FROM api_client_permissions WHERE client_id = $1",
            &[Arg::Text(client)],
        )
        .await
        .map_err(|e| self.err(e))?;
        for p in permissions {
            let methods = to_json(&p.methods);
            tx.execute(
                "INSERT INTO api_client_permissions (client_id, route, methods) VALUES ($1, $2, $3)",
                &[Arg::Text(client), Arg::Text(&p.route), Arg::Text(&methods)],
            )
            .await
            .map_err(|e| unique_or(self.engine, e, "permission route", &p.route))?;
        }
        self.commit(tx).await
    }

    pub(super) async fn permissions(
        &self,
        client: &str,
    ) -> Result<Vec<PermissionRecord>, StoreError> {
        let rows = self
            .pools
            .fetch_all(
                "SELECT route, methods FROM api_client_permissions WHERE client_id = $1 ORDER BY route",
                &[Arg::Text(client)],
            )
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(PermissionRecord {
                    route: r.text(0)?,
                    methods: from_json("permission methods", &r.text(1)?)?,
                })
            })
            .collect()
    }

    // --------------------------------------------------------- OIDC clients

    pub(super) async fn insert_oidc_client(&self, c: &OidcClientRecord) -> Result<(), StoreError> {
        let (uris, grants, scopes) = (
            to_json(&c.redirect_uris),
            to_json(&c.grant_types),
            to_json(&c.scopes),
        );
        self.pools
            .execute(
                "INSERT INTO oidc_clients (client_id, name, redirect_uris, secret_hash, grant_types, \
                 scopes, created_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, 1)",
                &[
                    Arg::Text(&c.client_id),
                    Arg::Text(&c.name),
                    Arg::Text(&uris),
                    Arg::OptText(c.secret_hash.as_deref()),
                    Arg::Text(&grants),
                    Arg::Text(&scopes),
                    Arg::Int(c.created_at.as_secs()),
                ],
            )
            .await
            .map_err(|e| unique_or(self.engine, e, "OIDC client", &c.client_id))?;
        Ok(())
    }

    pub(super) async fn oidc_client(
        &self,
        client_id: &str,
    ) -> Result<Option<OidcClientRecord>, StoreError> {
        let row = self
            .pools
            .fetch_optional(
                concat!(oidc_columns!(), " WHERE client_id = $1"),
                &[Arg::Text(client_id)],
            )
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| oidc_from_row(&r)).transpose()
    }

    pub(super) async fn oidc_clients(&self) -> Result<Vec<OidcClientRecord>, StoreError> {
        let rows = self
            .pools
            .fetch_all(concat!(oidc_columns!(), " ORDER BY client_id"), &[])
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(oidc_from_row).collect()
    }

    pub(super) async fn update_oidc_client(&self, c: &OidcClientRecord) -> Result<u64, StoreError> {
        let (uris, grants, scopes) = (
            to_json(&c.redirect_uris),
            to_json(&c.grant_types),
            to_json(&c.scopes),
        );
        let Ok(version) = i64::try_from(c.version) else {
            return Err(conflict("OIDC client", &c.client_id));
        };
        let row = self
            .pools
            .write_fetch_optional(
                "UPDATE oidc_clients SET name = $3, redirect_uris = $4, secret_hash = $5, \
                 grant_types = $6, scopes = $7, created_at = $8, version = version + 1 \
                 WHERE client_id = $1 AND version = $2 RETURNING version",
                &[
                    Arg::Text(&c.client_id),
                    Arg::Int(version),
                    Arg::Text(&c.name),
                    Arg::Text(&uris),
                    Arg::OptText(c.secret_hash.as_deref()),
                    Arg::Text(&grants),
                    Arg::Text(&scopes),
                    Arg::Int(c.created_at.as_secs()),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        match row {
            Some(row) => to_u64("OIDC client version", row.int(0)?),
            None if self
                .exists(
                    "SELECT 1 FROM oidc_clients WHERE client_id = $1",
                    &[Arg::Text(&c.client_id)],
                )
                .await? =>
            {
                Err(conflict("OIDC client", &c.client_id))
            }
            None => Err(not_found("OIDC client", &c.client_id)),
        }
    }

    pub(super) async fn delete_oidc_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let n = self
            .pools
            .execute(
                "DELETE FROM oidc_clients WHERE client_id = $1",
                &[Arg::Text(client_id)],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    // --------------------------------------------------------------- routes

    pub(super) async fn insert_route(&self, r: &RouteRecord) -> Result<(), StoreError> {
        self.pools
            .execute(
                "INSERT INTO routes (name, definition, created_at, updated_at, version) \
                 VALUES ($1, $2, $3, $4, 1)",
                &[
                    Arg::Text(&r.name),
                    Arg::Text(&r.definition),
                    Arg::Int(r.created_at.as_secs()),
                    Arg::Int(r.updated_at.as_secs()),
                ],
            )
            .await
            .map_err(|e| unique_or(self.engine, e, "route", &r.name))?;
        Ok(())
    }

    pub(super) async fn route(&self, name: &str) -> Result<Option<RouteRecord>, StoreError> {
        let row = self
            .pools
            .fetch_optional(
                concat!(route_columns!(), " WHERE name = $1"),
                &[Arg::Text(name)],
            )
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| route_from_row(&r)).transpose()
    }

    pub(super) async fn routes(&self) -> Result<Vec<RouteRecord>, StoreError> {
        let rows = self
            .pools
            .fetch_all(concat!(route_columns!(), " ORDER BY name"), &[])
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(route_from_row).collect()
    }

    pub(super) async fn update_route(&self, r: &RouteRecord) -> Result<u64, StoreError> {
        let Ok(version) = i64::try_from(r.version) else {
            return Err(conflict("route", &r.name));
        };
        let row = self
            .pools
            .write_fetch_optional(
                "UPDATE routes SET definition = $3, updated_at = $4, version = version + 1 \
                 WHERE name = $1 AND version = $2 RETURNING version",
                &[
                    Arg::Text(&r.name),
                    Arg::Int(version),
                    Arg::Text(&r.definition),
                    Arg::Int(r.updated_at.as_secs()),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        match row {
            Some(row) => to_u64("route version", row.int(0)?),
            None if self
                .exists(
                    "SELECT 1 FROM routes WHERE name = $1",
                    &[Arg::Text(&r.name)],
                )
                .await? =>
            {
                Err(conflict("route", &r.name))
            }
            None => Err(not_found("route", &r.name)),
        }
    }

    pub(super) async fn delete_route(&self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .pools
            .execute("DELETE FROM routes WHERE name = $1", &[Arg::Text(name)])
            .await
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    // -------------------------------------------------------- ACME accounts

    pub(super) async fn insert_acme_account(
        &self,
        a: &AcmeAccountRecord,
    ) -> Result<(), StoreError> {
        let contacts = to_json(&a.contacts);
        let result = self
            .pools
            .execute(
                "INSERT INTO acme_accounts (id, key_thumbprint, jwk, contacts, status, eab_key_id, \
                 created_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, 1)",
                &[
                    Arg::Text(&a.id),
                    Arg::Text(&a.key_thumbprint),
                    Arg::Text(&a.jwk),
                    Arg::Text(&contacts),
                    Arg::Text(a.status.as_str()),
                    Arg::OptText(a.eab_key_id.as_deref()),
                    Arg::Int(a.created_at.as_secs()),
                ],
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => match map_err(self.engine, e) {
                StoreError::AlreadyExists { .. } => {
                    // Which key collided: the id, or the key thumbprint.
                    if self
                        .exists(ACME_ACCOUNT_EXISTS, &[Arg::Text(&a.id)])
                        .await?
                    {
                        Err(StoreError::AlreadyExists {
                            what: "ACME account",
                            key: a.id.clone(),
                        })
                    } else {
                        Err(StoreError::AlreadyExists {
                            what: "ACME account key",
                            key: a.key_thumbprint.clone(),
                        })
                    }
                }
                other => Err(other),
            },
        }
    }

    pub(super) async fn acme_account(
        &self,
        id: &str,
    ) -> Result<Option<AcmeAccountRecord>, StoreError> {
        self.acme_account_where(concat!(acme_account_columns!(), " WHERE id = $1"), id)
            .await
    }

    pub(super) async fn acme_account_by_thumbprint(
        &self,
        thumbprint: &str,
    ) -> Result<Option<AcmeAccountRecord>, StoreError> {
        self.acme_account_where(
            concat!(acme_account_columns!(), " WHERE key_thumbprint = $1"),
            thumbprint,
        )
        .await
    }

    /// The one account `sql` (with `key` as `$1`) selects.
    async fn acme_account_where(
        &self,
        sql: &'static str,
        key: &str,
    ) -> Result<Option<AcmeAccountRecord>, StoreError> {
        let row = self
            .pools
            .fetch_optional(sql, &[Arg::Text(key)])
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| acme_account_from_row(&r)).transpose()
    }

    pub(super) async fn update_acme_account(
        &self,
        a: &AcmeAccountRecord,
    ) -> Result<u64, StoreError> {
        let contacts = to_json(&a.contacts);
        let Ok(version) = i64::try_from(a.version) else {
            // No stored version is that large: it cannot match.
            return if self
                .exists(ACME_ACCOUNT_EXISTS, &[Arg::Text(&a.id)])
                .await?
            {
                Err(conflict("ACME account", &a.id))
            } else {
                Err(not_found("ACME account", &a.id))
            };
        };
        // `id`, `eab_key_id` and `created_at` record the creation: never
        // rewritten. The only unique key this can break is the thumbprint.
        let row = self
            .pools
            .write_fetch_optional(
                "UPDATE acme_accounts SET key_thumbprint = $3, jwk = $4, contacts = $5, \
                 status = $6, version = version + 1 \
                 WHERE id = $1 AND version = $2 RETURNING version",
                &[
                    Arg::Text(&a.id),
                    Arg::Int(version),
                    Arg::Text(&a.key_thumbprint),
                    Arg::Text(&a.jwk),
                    Arg::Text(&contacts),
                    Arg::Text(a.status.as_str()),
                ],
            )
            .await
            .map_err(|e| unique_or(self.engine, e, "ACME account key", &a.key_thumbprint))?;
        match row {
            Some(row) => to_u64("ACME account version", row.int(0)?),
            None if self
                .exists(ACME_ACCOUNT_EXISTS, &[Arg::Text(&a.id)])
                .await? =>
            {
                Err(conflict("ACME account", &a.id))
            }
            None => Err(not_found("ACME account", &a.id)),
        }
    }

    // --------------------------------------------------------- certificates

    pub(super) async fn insert_certificate(&self, c: &CertificateRecord) -> Result<(), StoreError> {
        let sans = to_json(&c.sans);
        self.pools
            .execute(
                "INSERT INTO certificates (issuer, serial, subject, sans, profile, not_before, \
                 not_after, requester, der, revoked_at, revocation_reason) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    Arg::Text(&c.issuer),
                    Arg::Text(&c.serial),
                    Arg::Text(&c.subject),
                    Arg::Text(&sans),
                    Arg::Text(&c.profile),
                    Arg::Int(c.not_before.as_secs()),
                    Arg::Int(c.not_after.as_secs()),
                    Arg::OptText(c.requester.as_deref()),
                    Arg::Bytes(&c.der),
                    Arg::OptInt(c.revoked.map(|r| r.at.as_secs())),
                    Arg::OptInt(c.revoked.map(|r| i64::from(r.reason))),
                ],
            )
            .await
            .map_err(|e| unique_or(self.engine, e, "certificate", &c.serial))?;
        Ok(())
    }

    pub(super) async fn certificate(
        &self,
        issuer: &str,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        let row = self
            .pools
            .fetch_optional(
                "SELECT issuer, serial, subject, sans, profile, not_before, not_after, requester, \
                 der, revoked_at, revocation_reason FROM certificates WHERE issuer = $1 AND serial = $2",
                &[Arg::Text(issuer), Arg::Text(serial)],
            )
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| {
            Ok(CertificateRecord {
                issuer: r.text(0)?,
                serial: r.text(1)?,
                subject: r.text(2)?,
                sans: from_json("certificate SANs", &r.text(3)?)?,
                profile: r.text(4)?,
                not_before: UnixTime::from_secs(r.int(5)?),
                not_after: UnixTime::from_secs(r.int(6)?),
                requester: r.opt_text(7)?,
                der: r.bytes(8)?,
                revoked: revocation(r.opt_int(9)?, r.opt_int(10)?)?,
            })
        })
        .transpose()
    }

    pub(super) async fn revoke_certificate(
        &self,
        issuer: &str,
        serial: &str,
        revocation: Revocation,
    ) -> Result<bool, StoreError> {
        let n = self
            .pools
            .execute(
                "UPDATE certificates SET revoked_at = $3, revocation_reason = $4 \
                 WHERE issuer = $1 AND serial = $2 AND revoked_at IS NULL",
                &[
                    Arg::Text(issuer),
                    Arg::Text(serial),
                    Arg::Int(revocation.at.as_secs()),
                    Arg::Int(i64::from(revocation.reason)),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        if n > 0 {
            return Ok(true);
        }
        let exists = self
            .exists(
                "SELECT 1 FROM certificates WHERE issuer = $1 AND serial = $2",
                &[Arg::Text(issuer), Arg::Text(serial)],
            )
            .await?;
        if exists {
            Ok(false)
        } else {
            Err(not_found("certificate", serial))
        }
    }

    pub(super) async fn revoked_certificates(
        &self,
        issuer: &str,
        now: UnixTime,
    ) -> Result<Vec<(String, Revocation)>, StoreError> {
        let rows = self
            .pools
            .fetch_all(
                "SELECT serial, revoked_at, revocation_reason FROM certificates \
                 WHERE issuer = $1 AND revoked_at IS NOT NULL AND not_after > $2 ORDER BY serial",
                &[Arg::Text(issuer), Arg::Int(now.as_secs())],
            )
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if let Some(rev) = revocation(r.opt_int(1)?, r.opt_int(2)?)? {
                out.push((r.text(0)?, rev));
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- audit

    pub(super) async fn append_audit(&self, event: &NewAuditEvent) -> Result<u64, StoreError> {
        let detail = serde_json::to_string(&event.detail).map_err(|e| StoreError::Invalid {
            what: "audit detail",
            reason: e.to_string(),
        })?;
        let mut tx = self.begin().await?;
        if self.engine.is_postgres() {
            // Appends one at a time (per schema), so positions become
            // visible in order: a reader paging with `audit_after` never
            // skips a position that commits later. Readers are not blocked,
            // and no privilege beyond INSERT is needed on the table (so it
            // can be revoked to harden the trail). Released at commit.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.hexon.audit_log'))",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        }
        let row = tx
            .fetch_optional(
                "INSERT INTO audit_log (at, kind, actor, subject, outcome, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
                &[
                    Arg::Int(event.at.as_secs()),
                    Arg::Text(&event.kind),
                    Arg::OptText(event.actor.as_deref()),
                    Arg::OptText(event.subject.as_deref()),
                    Arg::Text(&event.outcome),
                    Arg::Text(&detail),
                ],
            )
            .await
            .map_err(|e| self.err(e))?
            .ok_or_else(|| StoreError::Corrupt("audit insert returned no position".into()))?;
        let seq = to_u64("audit position", row.int(0)?)?;
        self.commit(tx).await?;
        Ok(seq)
    }

    pub(super) async fn audit_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .pools
            .fetch_all(
                "SELECT seq, at, kind, actor, subject, outcome, detail FROM audit_log \
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[Arg::Int(after), Arg::Int(limit)],
            )
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    seq: to_u64("audit position", r.int(0)?)?,
                    event: NewAuditEvent {
                        at: UnixTime::from_secs(r.int(1)?),
                        kind: r.text(2)?,
                        actor: r.opt_text(3)?,
                        subject: r.opt_text(4)?,
                        outcome: r.text(5)?,
                        detail: serde_json::from_str(&r.text(6)?)
                            .map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))?,
                    },
                })
            })
            .collect()
    }
}

fn user_from_row(row: &Row, at: usize) -> Result<UserRecord, StoreError> {
    let mut user = UserRecord::new(row.text(at)?);
    user.username = row.opt_text(at + 1)?.map(Into::into);
    user.email = row.opt_text(at + 2)?.map(Into::into);
    user.display_name = row.opt_text(at + 3)?.map(Into::into);
    user.disabled = row.opt_bool(at + 4)?;
    Ok(user)
}

fn api_client_from_row(r: &Row) -> Result<ApiClientRecord, StoreError> {
    let id = r.text(0)?;
    let status_name = r.text(2)?;
    let status = ClientStatus::parse(&status_name).ok_or_else(|| {
        StoreError::Corrupt(format!("API client {id}: unknown status `{status_name}`"))
    })?;
    let rate = r
        .opt_int(5)?
        .map(|v| {
            u32::try_from(v)
                .map_err(|_| StoreError::Corrupt(format!("API client {id}: rate limit {v}")))
        })
        .transpose()?;
    Ok(ApiClientRecord {
        name: r.text(1)?,
        status,
        groups: from_json("API client groups", &r.text(3)?)?,
        description: r.text(4)?,
        rate_limit_per_minute: rate,
        created_at: UnixTime::from_secs(r.int(6)?),
        updated_at: UnixTime::from_secs(r.int(7)?),
        version: to_u64("API client version", r.int(8)?)?,
        id,
    })
}

fn oidc_from_row(r: &Row) -> Result<OidcClientRecord, StoreError> {
    Ok(OidcClientRecord {
        client_id: r.text(0)?,
        name: r.text(1)?,
        redirect_uris: from_json("OIDC redirect URIs", &r.text(2)?)?,
        secret_hash: r.opt_text(3)?,
        grant_types: from_json("OIDC grant types", &r.text(4)?)?,
        scopes: from_json("OIDC scopes", &r.text(5)?)?,
        created_at: UnixTime::from_secs(r.int(6)?),
        version: to_u64("OIDC client version", r.int(7)?)?,
    })
}

fn route_from_row(r: &Row) -> Result<RouteRecord, StoreError> {
    Ok(RouteRecord {
        name: r.text(0)?,
        definition: r.text(1)?,
        created_at: UnixTime::from_secs(r.int(2)?),
        updated_at: UnixTime::from_secs(r.int(3)?),
        version: to_u64("route version", r.int(4)?)?,
    })
}

fn acme_account_from_row(r: &Row) -> Result<AcmeAccountRecord, StoreError> {
    let id = r.text(0)?;
    let status_name = r.text(4)?;
    let status = AcmeAccountStatus::parse(&status_name).ok_or_else(|| {
        StoreError::Corrupt(format!("ACME account {id}: unknown status `{status_name}`"))
    })?;
    Ok(AcmeAccountRecord {
        key_thumbprint: r.text(1)?,
        jwk: r.text(2)?,
        contacts: from_json("ACME account contacts", &r.text(3)?)?,
        status,
        eab_key_id: r.opt_text(5)?,
        created_at: UnixTime::from_secs(r.int(6)?),
        version: to_u64("ACME account version", r.int(7)?)?,
        id,
    })
}

fn revocation(at: Option<i64>, reason: Option<i64>) -> Result<Option<Revocation>, StoreError> {
    match (at, reason) {
        (Some(at), Some(reason)) => Ok(Some(Revocation {
            at: UnixTime::from_secs(at),
            reason: u8::try_from(reason)
                .map_err(|_| StoreError::Corrupt(format!("revocation reason {reason}")))?,
        })),
        (None, None) => Ok(None),
        _ => Err(StoreError::Corrupt(
            "revocation time and reason must be set together".into(),
        )),
    }
}
