//! Who may reach what, over the REST API: users and their roles and limits, groups and their members,
//! folders of connections, the grants of a connection or a folder to users and groups, and each user's
//! favourite connections.
//!
//! Roles are enforced by extractors ([`Admin`], [`Overseer`], and the auditor's read-only rule inside
//! [`CurrentUser`]); grants by the one SQL predicate of `db::access` that listing, reading, starting and
//! revocation share. Every change that can take access away ends the sessions it revokes in its own
//! transaction; the bridges close them at their next sync (within 2 s).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::api::{ApiJson, PageQuery, page, validate_password};
use crate::auth::{Admin, CurrentUser, Overseer, ROLE_USER, ROLES};
use crate::db::{Change, Folder, Grants, GroupBody, User};
use crate::error::ApiError;
use crate::events::{Event, EventType};
use crate::{AppState, now_unix};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{id}", put(update_user).delete(delete_user))
        .route("/api/v1/groups", get(list_groups).post(create_group))
        .route(
            "/api/v1/groups/{id}",
            get(get_group).put(update_group).delete(delete_group),
        )
        .route("/api/v1/groups/{id}/members", get(get_members).put(set_members))
        .route("/api/v1/folders", get(list_folders).post(create_folder))
        .route("/api/v1/folders/{id}", put(update_folder).delete(delete_folder))
        .route("/api/v1/folders/{id}/grants", get(folder_grants).put(set_folder_grants))
        .route(
            "/api/v1/connections/{id}/grants",
            get(connection_grants).put(set_connection_grants),
        )
        .route(
            "/api/v1/connections/{id}/favourite",
            put(add_favourite).delete(remove_favourite),
        )
}

/// The API's answer to a [`Change`] of the row `what`.
pub fn changed(c: Change, what: &'static str) -> Result<(), ApiError> {
    match c {
        Change::Done => Ok(()),
        Change::NotFound => Err(ApiError::NotFound(what)),
        Change::Refused(reason) => Err(ApiError::bad_request(reason)),
    }
}

/// `Some(v)` when the field is present (`v` may be null), `None` when it is omitted.
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

const PROTOCOLS: [&str; 4] = ["ssh", "vnc", "rdp", crate::workspaces::PROTOCOL];

fn validate_limits(max_sessions: Option<i64>, protocols: &Option<Vec<String>>) -> Result<(), ApiError> {
    if max_sessions.is_some_and(|m| !(1..=1000).contains(&m)) {
        return Err(ApiError::bad_request("max_sessions must be between 1 and 1000"));
    }
    if let Some(p) = protocols.iter().flatten().find(|p| !PROTOCOLS.contains(&p.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown protocol {p:?} (expected ssh, vnc, rdp or container)"
        )));
    }
    Ok(())
}

/// A name shown in lists: 1 to 100 bytes, no control characters.
fn display_name(name: &str, what: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{what} name must have 1 to 100 bytes and no control characters"
        )));
    }
    Ok(name.to_owned())
}

// ---- users

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    #[serde(default)]
    role: Option<String>,
}

/// A user's role and limits; omitted fields are unchanged, `null` limits are removed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserUpdate {
    #[serde(default)]
    role: Option<String>,
    #[serde(default, deserialize_with = "present")]
    max_sessions: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    protocols: Option<Option<Vec<String>>>,
}

fn role(r: Option<&str>) -> Result<&'static str, ApiError> {
    let r = r.unwrap_or(ROLE_USER);
    ROLES
        .into_iter()
        .find(|x| *x == r)
        .ok_or_else(|| ApiError::bad_request("role must be admin, auditor or user"))
}

async fn list_users(State(st): State<AppState>, _: Overseer, Query(q): Query<PageQuery>) -> Result<Response, ApiError> {
    let (users, total) = st.db.list_users(&q.list_query()?).await?;
    Ok(page(users, total))
}

async fn create_user(
    State(st): State<AppState>,
    Admin(me): Admin,
    ApiJson(b): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let username = b.username.trim();
    if username.is_empty()
        || username.len() > 64
        || !username.chars().all(|c| c.is_alphanumeric() || "._-@".contains(c))
    {
        return Err(ApiError::bad_request(
            "username must be 1 to 64 letters, digits or ._-@",
        ));
    }
    validate_password(&b.password)?;
    let role = role(b.role.as_deref())?;
    if st.db.user_with_hash(username).await?.is_some() {
        return Err(ApiError::Conflict("username already exists".into()));
    }
    let user = User {
        id: uuid::Uuid::new_v4().to_string(),
        username: username.into(),
        role: role.into(),
        created_at: now_unix(),
        max_sessions: None,
        protocols: None,
        mfa_enabled: false,
        provider_id: None,
    };
    st.db
        .insert_user(
            &user.id,
            &user.username,
            &st.passwords.hash(b.password).await?,
            role,
            user.created_at,
        )
        .await?;
    tracing::info!(user_id = %user.id, role, admin = %me.user.id, "User created");
    st.events.emit(
        Event::new(EventType::UserCreated)
            .by(&me)
            .user(&user.id)
            .detail("username", &user.username)
            .detail("role", role),
    );
    Ok((StatusCode::CREATED, Json(user)))
}

async fn update_user(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UserUpdate>,
) -> Result<Json<User>, ApiError> {
    let mut u = st.db.user(&id).await?.ok_or(ApiError::NotFound("user"))?;
    let before = serde_json::to_value(&u).unwrap_or(Value::Null);
    if let Some(r) = b.role.as_deref() {
        let r = role(Some(r))?;
        if id == me.user.id && r != u.role {
            return Err(ApiError::bad_request("you cannot change your own role"));
        }
        u.role = r.into();
    }
    if let Some(m) = b.max_sessions {
        u.max_sessions = m;
    }
    if let Some(p) = b.protocols {
        u.protocols = p;
    }
    validate_limits(u.max_sessions, &u.protocols)?;
    if !st.db.update_user(&u, now_unix()).await? {
        return Err(ApiError::NotFound("user"));
    }
    tracing::info!(user_id = %u.id, role = %u.role, admin = %me.user.id, "User updated");
    st.events.emit(
        Event::new(EventType::UserUpdated)
            .by(&me)
            .user(&u.id)
            .detail("username", &u.username)
            .change(&before, &serde_json::to_value(&u).unwrap_or(Value::Null)),
    );
    Ok(Json(u))
}

async fn delete_user(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if id == me.user.id {
        return Err(ApiError::bad_request("you cannot delete yourself"));
    }
    let before = st.db.user(&id).await?;
    if st.db.delete_user(&id, now_unix()).await? {
        tracing::info!(user_id = %id, admin = %me.user.id, "User deleted");
        st.events.emit(
            Event::new(EventType::UserDeleted)
                .by(&me)
                .user(&id)
                .detail("before", before),
        );
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("user"))
    }
}

// ---- groups

/// What events record of a group.
fn group_value(g: &GroupBody) -> Value {
    json!({ "name": g.name, "max_sessions": g.max_sessions, "protocols": g.protocols, "recording": g.recording })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupInput {
    name: String,
    /// Concurrent sessions of each member (the strictest of a user's limits applies).
    #[serde(default)]
    max_sessions: Option<i64>,
    /// The protocols members may use (`null`: any).
    #[serde(default)]
    protocols: Option<Vec<String>>,
    /// Members' sessions are recorded at least so: `on` or `keystrokes` (`null` or `off`: the connection
    /// decides alone).
    #[serde(default)]
    recording: Option<String>,
}

impl GroupInput {
    fn body(self) -> Result<GroupBody, ApiError> {
        validate_limits(self.max_sessions, &self.protocols)?;
        let recording = match self.recording.as_deref() {
            None | Some("off") => None,
            Some(r) => match portico_proto::control::RecordingPolicy::parse(r) {
                Some(p) => Some(p.as_str().to_owned()),
                None => return Err(ApiError::bad_request("recording must be off, on or keystrokes")),
            },
        };
        Ok(GroupBody {
            name: display_name(&self.name, "group")?,
            max_sessions: self.max_sessions,
            protocols: self.protocols,
            recording,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Members {
    user_ids: Vec<String>,
}

async fn list_groups(
    State(st): State<AppState>,
    _: Overseer,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let (groups, total) = st.db.list_groups(&q.list_query()?).await?;
    Ok(page(groups, total))
}

async fn create_group(
    State(st): State<AppState>,
    Admin(me): Admin,
    ApiJson(b): ApiJson<GroupInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = b.body()?;
    let id = uuid::Uuid::new_v4().to_string();
    if !st.db.create_group(&id, &body, now_unix()).await? {
        return Err(ApiError::Conflict("a group with this name exists".into()));
    }
    tracing::info!(group_id = %id, name = ?body.name, admin = %me.user.id, "Group created");
    st.events.emit(
        Event::new(EventType::GroupCreated)
            .by(&me)
            .detail("group_id", &id)
            .detail("after", group_value(&body)),
    );
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "name": body.name }))))
}

async fn get_group(State(st): State<AppState>, _: Overseer, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let g = st.db.group(&id).await?.ok_or(ApiError::NotFound("group"))?;
    let mut v = serde_json::to_value(&g).map_err(|e| ApiError::Internal(e.into()))?;
    v["user_ids"] = json!(st.db.members(&id).await?);
    Ok(Json(v))
}

async fn update_group(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<GroupInput>,
) -> Result<StatusCode, ApiError> {
    let body = b.body()?;
    let before = st.db.group(&id).await?;
    changed(st.db.update_group(&id, &body).await?, "group")?;
    tracing::info!(group_id = %id, admin = %me.user.id, "Group updated");
    let before = before.map_or(Value::Null, |g| {
        group_value(&GroupBody {
            name: g.name,
            max_sessions: g.max_sessions,
            protocols: g.protocols,
            recording: g.recording,
        })
    });
    st.events.emit(
        Event::new(EventType::GroupUpdated)
            .by(&me)
            .detail("group_id", &id)
            .change(&before, &group_value(&body)),
    );
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_group(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let before = st.db.group(&id).await?;
    if !st.db.delete_group(&id, now_unix()).await? {
        return Err(ApiError::NotFound("group"));
    }
    tracing::info!(group_id = %id, admin = %me.user.id, "Group deleted");
    st.events.emit(
        Event::new(EventType::GroupDeleted)
            .by(&me)
            .detail("group_id", &id)
            .detail("before", before),
    );
    Ok(StatusCode::NO_CONTENT)
}

async fn get_members(State(st): State<AppState>, _: Overseer, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    st.db.group(&id).await?.ok_or(ApiError::NotFound("group"))?;
    Ok(Json(json!({ "user_ids": st.db.members(&id).await? })))
}

/// Replace a group's members (at most 10,000); removed members' sessions that only this group allowed end.
async fn set_members(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<Members>,
) -> Result<StatusCode, ApiError> {
    if b.user_ids.len() > 10_000 {
        return Err(ApiError::bad_request("at most 10000 members"));
    }
    let before = st.db.members(&id).await?;
    changed(st.db.set_members(&id, &b.user_ids, now_unix()).await?, "group")?;
    tracing::info!(group_id = %id, members = b.user_ids.len(), admin = %me.user.id, "Group members set");
    let after = st.db.members(&id).await?;
    st.events.emit(
        Event::new(EventType::GroupMembersChanged)
            .by(&me)
            .detail("group_id", &id)
            .detail(
                "added",
                after.iter().filter(|u| !before.contains(u)).collect::<Vec<_>>(),
            )
            .detail(
                "removed",
                before.iter().filter(|u| !after.contains(u)).collect::<Vec<_>>(),
            ),
    );
    Ok(StatusCode::NO_CONTENT)
}

// ---- folders

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FolderInput {
    name: String,
    #[serde(default)]
    parent_id: Option<String>,
}

/// Every folder (the tree is small next to the connections: an admin page shows it whole).
async fn list_folders(State(st): State<AppState>, _: Overseer) -> Result<Json<Vec<Folder>>, ApiError> {
    Ok(Json(st.db.list_folders().await?))
}

async fn create_folder(
    State(st): State<AppState>,
    Admin(me): Admin,
    ApiJson(b): ApiJson<FolderInput>,
) -> Result<(StatusCode, Json<Folder>), ApiError> {
    let f = Folder {
        id: uuid::Uuid::new_v4().to_string(),
        name: display_name(&b.name, "folder")?,
        parent_id: b.parent_id,
        created_at: now_unix(),
    };
    changed(st.db.create_folder(&f).await?, "folder")?;
    tracing::info!(folder_id = %f.id, admin = %me.user.id, "Folder created");
    st.events.emit(
        Event::new(EventType::FolderCreated)
            .by(&me)
            .detail("folder_id", &f.id)
            .detail("after", json!({ "name": f.name, "parent_id": f.parent_id })),
    );
    Ok((StatusCode::CREATED, Json(f)))
}

async fn update_folder(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<FolderInput>,
) -> Result<StatusCode, ApiError> {
    let name = display_name(&b.name, "folder")?;
    let before = st.db.folder(&id).await?;
    changed(
        st.db
            .update_folder(&id, &name, b.parent_id.as_deref(), now_unix())
            .await?,
        "folder",
    )?;
    tracing::info!(folder_id = %id, admin = %me.user.id, "Folder updated");
    let before = before.map_or(Value::Null, |f| json!({ "name": f.name, "parent_id": f.parent_id }));
    st.events.emit(
        Event::new(EventType::FolderUpdated)
            .by(&me)
            .detail("folder_id", &id)
            .change(&before, &json!({ "name": name, "parent_id": b.parent_id })),
    );
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_folder(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let before = st.db.folder(&id).await?;
    match st.db.delete_folder(&id).await? {
        Change::Refused(reason) => return Err(ApiError::Conflict(reason)),
        other => changed(other, "folder")?,
    }
    tracing::info!(folder_id = %id, admin = %me.user.id, "Folder deleted");
    st.events.emit(
        Event::new(EventType::FolderDeleted)
            .by(&me)
            .detail("folder_id", &id)
            .detail(
                "before",
                before.map(|f| json!({ "name": f.name, "parent_id": f.parent_id })),
            ),
    );
    Ok(StatusCode::NO_CONTENT)
}

// ---- grants

async fn grants_of(st: &AppState, kind: &'static str, id: &str) -> Result<Json<Grants>, ApiError> {
    let exists = match kind {
        "folder" => st.db.folder(id).await?.is_some(),
        _ => st.db.connection(id).await?.is_some(),
    };
    if !exists {
        return Err(ApiError::NotFound(if kind == "folder" {
            "folder"
        } else {
            "connection"
        }));
    }
    Ok(Json(st.db.grants(kind, id).await?))
}

async fn set_grants_of(
    st: &AppState,
    me: &crate::auth::CurrentUser,
    kind: &'static str,
    id: &str,
    g: Grants,
) -> Result<StatusCode, ApiError> {
    if g.user_ids.len() + g.group_ids.len() > 10_000 {
        return Err(ApiError::bad_request("at most 10000 grants"));
    }
    let what = if kind == "folder" { "folder" } else { "connection" };
    let before = st.db.grants(kind, id).await?;
    changed(st.db.set_grants(kind, id, &g, now_unix()).await?, what)?;
    tracing::info!(object = kind, object_id = %id, users = g.user_ids.len(), groups = g.group_ids.len(), admin = %me.user.id, "Grants set");
    let after = st.db.grants(kind, id).await?;
    let mut ev = Event::new(EventType::GrantsChanged)
        .by(me)
        .detail("object", kind)
        .detail("object_id", id)
        .detail("before", &before)
        .detail("after", &after);
    if kind != "folder" {
        ev = ev.connection(id);
    }
    st.events.emit(ev);
    Ok(StatusCode::NO_CONTENT)
}

async fn folder_grants(
    State(st): State<AppState>,
    _: Overseer,
    Path(id): Path<String>,
) -> Result<Json<Grants>, ApiError> {
    grants_of(&st, "folder", &id).await
}

/// Replace a folder's grants (they cover its subfolders); sessions no longer allowed end.
async fn set_folder_grants(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
    ApiJson(g): ApiJson<Grants>,
) -> Result<StatusCode, ApiError> {
    set_grants_of(&st, &me, "folder", &id, g).await
}

async fn connection_grants(
    State(st): State<AppState>,
    _: Overseer,
    Path(id): Path<String>,
) -> Result<Json<Grants>, ApiError> {
    grants_of(&st, "connection", &id).await
}

/// Replace a connection's grants; sessions no longer allowed end.
async fn set_connection_grants(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
    ApiJson(g): ApiJson<Grants>,
) -> Result<StatusCode, ApiError> {
    set_grants_of(&st, &me, "connection", &id, g).await
}

// ---- favourites

/// Make a connection one of the caller's favourites or not (both idempotent); one the caller may not use
/// is "not found", like one that never existed.
async fn favourite(st: &AppState, me: &CurrentUser, id: &str, on: bool) -> Result<StatusCode, ApiError> {
    if !st.db.set_favourite(&me.user.id, me.viewer(), id, on).await? {
        return Err(ApiError::NotFound("connection"));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn add_favourite(
    State(st): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    favourite(&st, &me, &id, true).await
}

async fn remove_favourite(
    State(st): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    favourite(&st, &me, &id, false).await
}
