//! The OpenAPI 3.1 document served at `/api/openapi.json`, written by hand next to the handlers in `api.rs`.

use serde_json::{Value, json};

fn body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn ok(desc: &str, schema: Option<&str>) -> Value {
    match schema {
        Some(s) => {
            json!({ "description": desc, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{s}") } } } })
        }
        None => json!({ "description": desc }),
    }
}

fn errors() -> Value {
    json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn op(summary: &str, req: Option<&str>, code: &str, resp: Option<&str>) -> Value {
    let mut o = json!({ "summary": summary, "responses": { code: ok(summary, resp), "default": errors() } });
    if let Some(r) = req {
        o["requestBody"] = body(r);
    }
    o
}

fn query_param(name: &str, schema: Value, desc: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": schema, "description": desc })
}

/// A list endpoint's `filters`, then `limit` and `offset`, and its total in `X-Total-Count`.
fn with_paging(mut o: Value, filters: Vec<Value>) -> Value {
    let mut params = filters;
    params.push(query_param(
        "limit",
        json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 }),
        "rows per page",
    ));
    params.push(query_param(
        "offset",
        json!({ "type": "integer", "minimum": 0, "default": 0 }),
        "rows to skip",
    ));
    o["parameters"] = Value::Array(params);
    o["responses"]["200"]["headers"] =
        json!({ "X-Total-Count": { "schema": { "type": "integer" }, "description": "how many match in all" } });
    o
}

/// A list endpoint's search and paging parameters, and its total in `X-Total-Count`.
fn paged(o: Value) -> Value {
    with_paging(
        o,
        vec![
            query_param(
                "q",
                json!({ "type": "string", "maxLength": 200 }),
                "a substring, case-insensitive",
            ),
            query_param(
                "folder_id",
                json!({ "type": "string" }),
                "connections: that folder and everything below it",
            ),
        ],
    )
}

/// The recording list's filters and paging, and its total in `X-Total-Count`.
fn recordings_list(o: Value) -> Value {
    let mut o = with_paging(
        o,
        vec![
            query_param("user_id", json!({ "type": "string" }), "the session's user"),
            query_param("connection_id", json!({ "type": "string" }), "the session's connection"),
            query_param(
                "q",
                json!({ "type": "string", "maxLength": 200 }),
                "a substring of the user's or the connection's name, case-insensitive",
            ),
            query_param(
                "since",
                json!({ "type": "integer" }),
                "began at or after (unix seconds)",
            ),
            query_param("until", json!({ "type": "integer" }), "began before (unix seconds)"),
        ],
    );
    o["responses"]["200"]["content"] = json!({ "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Recording" } } } });
    o
}

/// The event list's filters and paging, its total in `X-Total-Count`, and its items.
fn events_list(mut o: Value) -> Value {
    let param = |name: &str, schema: Value, desc: &str| json!({ "name": name, "in": "query", "required": false, "schema": schema, "description": desc });
    o["parameters"] = json!([
        param(
            "type",
            json!({ "type": "string" }),
            "event types, comma-separated (any of them)"
        ),
        param(
            "user_id",
            json!({ "type": "string" }),
            "events about this user or caused by them"
        ),
        param(
            "connection_id",
            json!({ "type": "string" }),
            "events about this connection"
        ),
        param("session_id", json!({ "type": "string" }), "events about this session"),
        param("since", json!({ "type": "integer" }), "unix milliseconds, inclusive"),
        param("until", json!({ "type": "integer" }), "unix milliseconds, exclusive"),
        param(
            "limit",
            json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 }),
            "rows per page"
        ),
        param(
            "offset",
            json!({ "type": "integer", "minimum": 0, "maximum": 1000000, "default": 0 }),
            "rows to skip"
        ),
    ]);
    o["responses"]["200"]["headers"] =
        json!({ "X-Total-Count": { "schema": { "type": "integer" }, "description": "how many match in all" } });
    o["responses"]["200"]["content"] = json!({ "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Event" } } } });
    o
}

/// The connection list's own parameters on top of [`paged`]'s, and its items.
fn connection_list(o: Value) -> Value {
    let mut o = paged(o);
    let param = |name: &str, schema: Value, desc: &str| json!({ "name": name, "in": "query", "required": false, "schema": schema, "description": desc });
    if let Some(params) = o["parameters"].as_array_mut() {
        params.extend([
            param(
                "sort",
                json!({ "enum": ["name", "recent", "last_used"], "default": "name" }),
                "name: by folder, then by name; recent: the caller's favourites first, then the connections they used most recently, then by folder and name; last_used: the connections the caller used most recently first, then by folder and name",
            ),
            param(
                "favourite",
                json!({ "type": "boolean", "default": false }),
                "only the caller's favourites",
            ),
            param(
                "used",
                json!({ "type": "boolean", "default": false }),
                "only the connections the caller has started a session on (with sort=last_used&limit=8: the caller's recent connections that they may still use)",
            ),
        ]);
    }
    o["responses"]["200"]["content"] = json!({ "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/ListedConnection" } } } });
    o
}

pub fn document() -> Value {
    let id = json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }]);
    let with_id = |mut v: Value| {
        v["parameters"] = id.clone();
        v
    };
    let with_share = |mut v: Value| {
        v["parameters"] = json!([
            { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } },
            { "name": "share_id", "in": "path", "required": true, "schema": { "type": "string" } }
        ]);
        v
    };
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Portico API", "version": "1",
                  "description": "Cookie sessions need the X-CSRF-Token header on state-changing requests; API keys use Authorization: Bearer pk_... and need none." },
        "components": {
            "securitySchemes": {
                "cookie": { "type": "apiKey", "in": "cookie", "name": "portico_session" },
                "apiKey": { "type": "http", "scheme": "bearer" }
            },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "Login": { "type": "object", "required": ["username", "password"], "properties": { "username": { "type": "string" }, "password": { "type": "string" } } },
                "User": { "type": "object", "properties": { "id": { "type": "string" }, "username": { "type": "string" }, "role": { "enum": ["admin", "auditor", "user"] }, "created_at": { "type": "integer" },
                    "max_sessions": { "type": ["integer", "null"], "description": "the user's own limit of concurrent sessions" }, "protocols": { "type": ["array", "null"], "items": { "type": "string" } },
                    "mfa_enabled": { "type": "boolean" },
                    "provider_id": { "type": ["string", "null"], "description": "the identity provider the user comes from; null: a local account" } } },
                "UserUpdate": { "type": "object", "description": "omitted: unchanged; null limits: removed; changing the role ends the sessions it no longer allows", "properties": {
                    "role": { "enum": ["admin", "auditor", "user"] }, "max_sessions": { "type": ["integer", "null"], "minimum": 1, "maximum": 1000 },
                    "protocols": { "type": ["array", "null"], "items": { "enum": ["ssh", "vnc", "rdp", "container"] } } } },
                "GroupInput": { "type": "object", "required": ["name"], "properties": { "name": { "type": "string", "maxLength": 100 },
                    "max_sessions": { "type": ["integer", "null"], "minimum": 1, "maximum": 1000, "description": "concurrent sessions of each member; the strictest of a user's limits applies" },
                    "protocols": { "type": ["array", "null"], "items": { "enum": ["ssh", "vnc", "rdp", "container"] }, "description": "null: any" } } },
                "Group": { "type": "object", "properties": { "id": { "type": "string" }, "name": { "type": "string" }, "max_sessions": { "type": ["integer", "null"] },
                    "protocols": { "type": ["array", "null"], "items": { "type": "string" } }, "members": { "type": "integer" }, "created_at": { "type": "integer" } } },
                "Members": { "type": "object", "required": ["user_ids"], "properties": { "user_ids": { "type": "array", "items": { "type": "string" } } } },
                "FolderInput": { "type": "object", "required": ["name"], "properties": { "name": { "type": "string", "maxLength": 100 }, "parent_id": { "type": ["string", "null"] } } },
                "Folder": { "type": "object", "properties": { "id": { "type": "string" }, "name": { "type": "string" }, "parent_id": { "type": ["string", "null"] }, "created_at": { "type": "integer" } } },
                "Grants": { "type": "object", "description": "who may use a connection, or a folder and everything below it", "properties": {
                    "user_ids": { "type": "array", "items": { "type": "string" } }, "group_ids": { "type": "array", "items": { "type": "string" } } } },
                "Me": { "type": "object", "properties": { "user": { "$ref": "#/components/schemas/User" }, "csrf_token": { "type": ["string", "null"] },
                    "mfa_enrolment_required": { "type": "boolean", "description": "this login may only set up two-factor authentication (its role requires it) until it confirms a code" } } },
                "MfaChallenge": { "type": "object", "description": "the password was right; the account has a second factor: send a code with this token to /api/v1/auth/login/mfa within 5 minutes (5 wrong codes end it)", "properties": {
                    "mfa_required": { "const": true }, "mfa_token": { "type": "string" } } },
                "MfaSecondStep": { "type": "object", "required": ["mfa_token"], "description": "exactly one of code and recovery_code", "properties": {
                    "mfa_token": { "type": "string" }, "code": { "type": "string", "description": "6 digits (TOTP, 30 s steps, one step of drift accepted); each code works once" },
                    "recovery_code": { "type": "string", "description": "one of the 10 recovery codes; each works once" } } },
                "MfaEnrolment": { "type": "object", "properties": { "secret": { "type": "string", "description": "base32" }, "otpauth_uri": { "type": "string" }, "qr_svg": { "type": "string", "description": "the otpauth URI as a QR code (SVG)" } } },
                "MfaConfirm": { "type": "object", "required": ["code"], "properties": { "code": { "type": "string" } } },
                "RecoveryCodes": { "type": "object", "properties": { "recovery_codes": { "type": "array", "items": { "type": "string" }, "description": "shown once" } } },
                "Settings": { "type": "object", "properties": { "mfa_required_roles": { "type": "array", "items": { "enum": ["admin", "auditor", "user"] } },
                    "local_login_admins_only": { "type": "boolean", "description": "only admins may log in with a local password; turning it on ends other local accounts' logins" } } },
                "OidcSettings": { "type": "object", "required": ["issuer", "client_id"], "additionalProperties": false, "properties": {
                    "issuer": { "type": "string", "description": "https (plain http on loopback only); discovery at {issuer}/.well-known/openid-configuration" },
                    "client_id": { "type": "string" }, "scopes": { "type": "array", "items": { "type": "string" }, "default": ["profile", "email", "groups"] },
                    "groups_claim": { "type": "string", "default": "groups" }, "username_claim": { "type": "string", "default": "preferred_username" },
                    "ca_pem": { "type": ["string", "null"] } } },
                "LdapSettings": { "type": "object", "required": ["url", "bind_dn", "user_base"], "properties": {
                    "url": { "type": "string", "description": "ldaps://host[:port], or ldap://host[:port] with starttls" }, "starttls": { "type": "boolean" },
                    "ca_pem": { "type": ["string", "null"] }, "bind_dn": { "type": "string", "description": "template with {username}" },
                    "user_base": { "type": "string" }, "user_filter": { "type": "string", "default": "(uid={username})" },
                    "username_attribute": { "type": "string" }, "display_name_attribute": { "type": "string" },
                    "group_base": { "type": ["string", "null"] }, "group_filter": { "type": "string", "default": "(member={dn})" },
                    "group_name_attribute": { "type": "string", "default": "cn" } } },
                "Mapping": { "type": "object", "properties": {
                    "groups": { "type": "object", "additionalProperties": { "type": "string" }, "description": "provider group -> Portico group name; empty: same names" },
                    "roles": { "type": "object", "additionalProperties": { "enum": ["admin", "auditor", "user"] }, "description": "provider group -> role; the strongest wins" } } },
                "IdentityProviderInput": { "type": "object", "required": ["kind", "name"], "properties": {
                    "kind": { "enum": ["oidc", "ldap"] }, "name": { "type": "string" }, "enabled": { "type": "boolean", "default": true },
                    "oidc": { "$ref": "#/components/schemas/OidcSettings" }, "client_secret": { "type": "string", "writeOnly": true, "description": "omitted on update: kept" },
                    "ldap": { "$ref": "#/components/schemas/LdapSettings" }, "mapping": { "$ref": "#/components/schemas/Mapping" } } },
                "IdentityProvider": { "type": "object", "properties": {
                    "id": { "type": "string" }, "kind": { "enum": ["oidc", "ldap"] }, "name": { "type": "string" }, "enabled": { "type": "boolean" },
                    "oidc": { "$ref": "#/components/schemas/OidcSettings" }, "ldap": { "$ref": "#/components/schemas/LdapSettings" },
                    "mapping": { "$ref": "#/components/schemas/Mapping" }, "has_client_secret": { "type": "boolean" },
                    "redirect_uri": { "type": "string", "description": "oidc: the redirect URI to register at the provider" },
                    "users": { "type": "integer" }, "created_at": { "type": "integer" } } },
                "NewUser": { "type": "object", "required": ["username", "password"], "properties": { "username": { "type": "string" }, "password": { "type": "string", "minLength": 8 }, "role": { "enum": ["admin", "auditor", "user"] } } },
                "PasswordChange": { "type": "object", "required": ["current_password", "new_password"], "properties": { "current_password": { "type": "string" }, "new_password": { "type": "string" } } },
                "NewApiKey": { "type": "object", "required": ["name"], "properties": {
                    "name": { "type": "string" },
                    "scope": { "enum": ["read", "sessions", "admin"], "default": "sessions", "description": "read: GET only; sessions: reads and starting/ending sessions; admin: everything the user may do, including minting keys" },
                    "expires_in_days": { "type": "integer", "minimum": 1, "maximum": 3650, "default": 90 } } },
                "ApiKeyCreated": { "type": "object", "properties": { "id": { "type": "string" }, "name": { "type": "string" }, "key": { "type": "string", "description": "shown once" }, "scope": { "type": "string" }, "expires_at": { "type": "integer", "description": "unix seconds" } } },
                "ConnectionInput": { "type": "object", "required": ["protocol"], "description": "ssh, vnc, rdp: host required; container: settings.workspace required, no host, port or credentials", "properties": {
                    "name": { "type": "string" }, "protocol": { "enum": ["ssh", "vnc", "rdp", "container"] }, "host": { "type": "string" },
                    "port": { "type": "integer", "minimum": 1, "maximum": 65535 }, "username": { "type": "string" },
                    "password": { "type": "string", "writeOnly": true }, "private_key": { "type": "string", "writeOnly": true },
                    "host_key_fingerprint": { "type": ["string", "null"], "description": "SSH host key or RDP certificate: SHA256:<base64> (or 64 hex digits); omitted = unchanged, null or empty = trust on first use" },
                    "clear_password": { "type": "boolean" }, "clear_private_key": { "type": "boolean" },
                    "folder_id": { "type": ["string", "null"], "description": "omitted: unchanged (update) or the top level (create); null: the top level" },
                    "settings": { "$ref": "#/components/schemas/ConnectionSettings" } } },
                "ConnectionSettings": { "type": "object", "additionalProperties": false, "description": "omitted keys take their defaults", "properties": {
                    "domain": { "type": ["string", "null"], "description": "RDP" },
                    "security": { "enum": ["auto", "tls", "nla"], "default": "auto", "description": "RDP" },
                    "width": { "type": ["integer", "null"], "minimum": 200, "maximum": 8192, "description": "RDP fixed desktop size, with height; null = the browser's size" },
                    "height": { "type": ["integer", "null"], "minimum": 200, "maximum": 8192 },
                    "color_depth": { "enum": [16, 24, 32], "default": 32, "description": "RDP" },
                    "clipboard_up": { "type": "boolean", "default": true, "description": "browser to remote" },
                    "clipboard_down": { "type": "boolean", "default": true, "description": "remote to browser" },
                    "ask_credentials": { "type": "boolean", "default": false, "description": "ask the user at every connection; never stored" },
                    "danger_accept_any_certificate": { "type": "boolean", "default": false, "description": "RDP: accept any server certificate (allows a man in the middle)" },
                    "h264": { "type": "boolean", "default": false, "description": "RDP: the graphics pipeline with the server's H.264 passed through when the browser decodes it (off by default: xrdp 0.9 failed some session starts when it was announced); false: bitmap updates only" },
                    "workspace": { "oneOf": [{ "type": "null" }, { "$ref": "#/components/schemas/WorkspaceSpec" }], "description": "protocol container" },
                    "files": { "enum": ["none", "download", "upload", "both"], "default": "none", "description": "SSH: file transfer through SFTP on the session's connection, enforced by the bridge (upload includes creating folders and deleting)" },
                    "files_max_mb": { "type": "integer", "minimum": 1, "maximum": 1048576, "default": 1024, "description": "the largest file one transfer may move, in MiB" },
                    "locale": { "type": ["string", "null"], "example": "de_DE.UTF-8", "description": "SSH: LANG asked for the shell (where the server accepts it, e.g. AcceptEnv LANG LC_*); null = C.UTF-8" },
                    "recording": { "enum": ["off", "on", "keystrokes"], "default": "off", "description": "record the sessions (the user sees a REC mark): on records what the bridge sends the browser; keystrokes adds the user's keystrokes, pointer and typed text (never credentials or the clipboard). A bridge without recording storage refuses such sessions (recording_unavailable)" } } },
                "Recording": { "type": "object", "properties": {
                    "id": { "type": "string", "description": "the session's id" }, "user_id": { "type": "string" }, "username": { "type": "string", "description": "at the time of the session" },
                    "connection_id": { "type": "string" }, "connection_name": { "type": "string", "description": "at the time of the session" },
                    "protocol": { "enum": ["ssh", "vnc", "rdp", "container"] }, "input": { "type": "boolean", "description": "keystrokes recorded" },
                    "bridge_id": { "type": "string" }, "created_at": { "type": "integer" }, "ended_at": { "type": ["integer", "null"] },
                    "completed_at": { "type": ["integer", "null"], "description": "when the bridge reported the end, the recording written and synced; null while live, or when its bridge died (cut short)" },
                    "stored": { "type": ["object", "null"], "description": "(single recording only) the file, checked chunk by chunk; null when this webapp has no recording storage or the file is gone", "properties": {
                        "bytes": { "type": "integer" }, "intact": { "type": "boolean", "description": "every chunk's hash checks and it ends with a whole chunk" },
                        "playable_bytes": { "type": "integer", "description": "bytes of whole checked chunks (less than bytes when cut short, e.g. its bridge died)" },
                        "duration_ms": { "type": "integer" }, "records": { "type": "integer" }, "problem": { "type": ["string", "null"] },
                        "keyframes": { "type": "array", "items": { "type": "object", "properties": { "at_ms": { "type": "integer" }, "offset": { "type": "integer" }, "prev": { "type": "string", "description": "hex SHA-256 of the chain before this chunk" } } } } } } } },
                "WorkspaceSpec": { "type": "object", "required": ["image"], "additionalProperties": false, "description": "an image serving a VNC desktop on vnc_port with the password in VNC_PASSWORD; a fresh container per session", "properties": {
                    "image": { "type": "string", "example": "portico/workspace:latest" },
                    "cpu_millis": { "type": "integer", "minimum": 100, "maximum": 64000, "default": 1000, "description": "thousandths of a core" },
                    "memory_mb": { "type": "integer", "minimum": 128, "maximum": 262144, "default": 512, "description": "no swap on top" },
                    "pids_limit": { "type": "integer", "minimum": 16, "maximum": 65536, "default": 256 },
                    "vnc_port": { "type": "integer", "default": 5901 },
                    "geometry": { "type": ["string", "null"], "example": "1280x720" },
                    "warm": { "type": "integer", "minimum": 0, "maximum": 32, "default": 0, "description": "warm pool: containers of this spec each healthy agent keeps started for this connection, so a launch takes one at once; never reused (each ends with its session and is replaced)" },
                    "audio": { "type": "boolean", "default": true, "description": "sound: the bridge plays the image's audio server (port 4714, after the session's password) in the browser as Opus" } } },
                "Agent": { "type": "object", "properties": {
                    "id": { "type": ["string", "null"], "description": "null for a name that only ever had refused registrations" }, "name": { "type": "string" },
                    "state": { "enum": ["healthy", "down", "failed"], "description": "down: three heartbeats missed; failed: a name whose registrations were all refused (last_error); refusals never change a registered agent" },
                    "networks": { "type": "array", "description": "the subnets its containers are on, as the agent declared them; a container address outside them is refused", "items": { "type": "object", "properties": {
                        "name": { "type": "string" }, "subnet": { "type": "string" }, "gateway": { "type": ["string", "null"] } } } },
                    "spares": { "type": "object", "description": "its warm pool: unclaimed containers started ahead of launches", "properties": { "ready": { "type": "integer" }, "starting": { "type": "integer" } } },
                    "refused": { "type": ["object", "null"], "description": "the latest refused registration under this name (wrong token, or another identity trying to take the name)", "properties": {
                        "reason": { "type": "string" }, "remote_addr": { "type": "string" }, "attempts": { "type": "integer" },
                        "first_at": { "type": "integer" }, "last_at": { "type": "integer" } } },
                    "last_error": { "type": ["string", "null"] }, "remote_addr": { "type": "string" }, "docker_version": { "type": "string" },
                    "cores": { "type": "integer" }, "memory_mb": { "type": "integer" }, "running": { "type": "integer" },
                    "created_at": { "type": "integer" }, "registered_at": { "type": ["integer", "null"] }, "last_heartbeat_at": { "type": ["integer", "null"] } } },
                "Workspace": { "type": "object", "description": "a workspace session's container (never its password)", "properties": {
                    "agent_id": { "type": "string" }, "state": { "enum": ["starting", "ready", "failed", "lost", "removed"] },
                    "container_id": { "type": ["string", "null"] }, "host": { "type": ["string", "null"] }, "port": { "type": ["integer", "null"] },
                    "error": { "type": ["string", "null"] }, "memory_mb": { "type": "integer" }, "cpu_millis": { "type": "integer" },
                    "created_at": { "type": "integer" }, "ready_at": { "type": ["integer", "null"] }, "removed_at": { "type": ["integer", "null"] } } },
                "Connection": { "type": "object", "properties": {
                    "id": { "type": "string" }, "name": { "type": "string" }, "protocol": { "type": "string" }, "host": { "type": "string" },
                    "port": { "type": "integer" }, "username": { "type": "string" }, "has_password": { "type": "boolean" },
                    "has_private_key": { "type": "boolean" }, "host_key_fingerprint": { "type": ["string", "null"] },
                    "settings": { "$ref": "#/components/schemas/ConnectionSettings" },
                    "folder_id": { "type": ["string", "null"] }, "folder_path": { "type": ["string", "null"], "description": "the folders above it, top first: \"Site A / Floor 1\"" },
                    "created_at": { "type": "integer" }, "updated_at": { "type": "integer" } } },
                "ListedConnection": { "description": "a connection in the caller's list", "allOf": [{ "$ref": "#/components/schemas/Connection" }, { "type": "object", "properties": {
                    "favourite": { "type": "boolean", "description": "one of the caller's favourites" },
                    "last_used_at": { "type": ["integer", "null"], "description": "when the caller last started a session on it (unix seconds); null: never" } } }] },
                "NewSession": { "type": "object", "required": ["connection_id"], "properties": { "connection_id": { "type": "string" }, "cols": { "type": "integer" }, "rows": { "type": "integer" } } },
                "SessionCreated": { "type": "object", "properties": {
                    "session_id": { "type": "string" }, "token": { "type": "string", "description": "one-time, valid 60 s" },
                    "ws_url": { "type": "string", "description": "the bridge's websocket; a session assigned to a bridge names its route (/bridge/v1/at/{route}/ws), which the load balancer sends to that bridge only" }, "connect_url": { "type": "string", "description": "embed page with the session id, the token and the bridge route in the fragment; the page connects to the configured bridge origin only (a ws parameter is ignored)" },
                    "expires_at": { "type": "integer" } } },
                "Session": { "type": "object", "properties": {
                    "id": { "type": "string" }, "user_id": { "type": "string" }, "connection_id": { "type": "string" },
                    "state": { "enum": ["pending", "active", "ended"] }, "created_at": { "type": "integer" },
                    "ended_at": { "type": ["integer", "null"] }, "end_reason": { "type": ["string", "null"], "description": "a lost workspace's reason starts with \"lost:\"" },
                    "workspace": { "$ref": "#/components/schemas/Workspace" } } },
                "Event": { "type": "object", "description": "something an operator or auditor asks about; never holds a secret", "properties": {
                    "id": { "type": "string" }, "at": { "type": "integer", "description": "unix milliseconds" },
                    "type": { "type": "string", "description": "one of /api/v1/events/types (a newer webapp may add types)" },
                    "actor_id": { "type": ["string", "null"], "description": "the user who caused it (null: nobody logged in, or the system)" },
                    "client_addr": { "type": ["string", "null"], "description": "the client address of the request that caused it" },
                    "user_id": { "type": ["string", "null"], "description": "the user it is about" },
                    "connection_id": { "type": ["string", "null"] }, "session_id": { "type": ["string", "null"] },
                    "details": { "type": "object", "description": "depends on the type: e.g. method and username of logins, before and after (changed fields only) of changes, reason, bytes_to_browser, bytes_from_browser and duration_secs of session_closed" } } },
                "EventTypes": { "type": "object", "properties": {
                    "types": { "type": "array", "items": { "enum": crate::events::EventType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>() } },
                    "retention_days": { "type": "integer", "description": "how long events stay in the database; 0: none are stored (they are only forwarded)" } } },
                "Health": { "type": "object", "properties": { "ok": { "type": "boolean" } } }
            }
        },
        "security": [{ "cookie": [] }, { "apiKey": [] }],
        "paths": {
            "/api/__healthcheck": { "get": op("readiness: a database round trip; 503 within 0.8 s when the database is down or slow, 503 at once while shutting down", None, "200", Some("Health")) },
            "/api/__livez": { "get": op("liveness: the process serves requests (no database)", None, "200", Some("Health")) },
            "/api/v1/auth/login": { "post": op("log in; sets the session cookie (Me), or, for an account with two-factor authentication, answers an MfaChallenge without a cookie", Some("Login"), "200", Some("Me")) },
            "/api/v1/auth/login/mfa": { "post": op("the second step of a login: a TOTP code or a recovery code; sets the session cookie", Some("MfaSecondStep"), "200", Some("Me")) },
            "/api/v1/auth/mfa/enrol": { "post": op("start setting up two-factor authentication: a new secret as a QR code (409 when it is on already)", None, "200", Some("MfaEnrolment")) },
            "/api/v1/auth/mfa/confirm": { "post": op("confirm with a first code: two-factor authentication is on; returns the recovery codes once", Some("MfaConfirm"), "200", Some("RecoveryCodes")) },
            "/api/v1/users/{id}/mfa": { "delete": with_id(op("remove a user's second factor and recovery codes (admin)", None, "204", None)) },
            "/api/v1/settings": {
                "get": op("settings shared by every webapp (admin, auditor)", None, "200", Some("Settings")),
                "put": op("set them (admin): the roles that must log in with a second factor, local logins for admins only; omitted fields unchanged", Some("Settings"), "200", Some("Settings"))
            },
            "/api/v1/identity-providers": {
                "get": op("identity providers, secrets never shown (admin, auditor)", None, "200", None),
                "post": op("add an OIDC provider or an LDAP directory (admin); 409 when the name exists", Some("IdentityProviderInput"), "201", Some("IdentityProvider"))
            },
            "/api/v1/identity-providers/{id}": {
                "get": with_id(op("an identity provider (admin, auditor)", None, "200", Some("IdentityProvider"))),
                "put": with_id(op("change a provider; the client secret is kept when omitted (admin)", Some("IdentityProviderInput"), "200", Some("IdentityProvider"))),
                "delete": with_id(op("delete a provider and its users, ending their sessions (admin)", None, "204", None))
            },
            "/api/v1/auth/providers": { "get": op("login page: enabled OIDC providers (id, name, login_url) and whether a directory takes passwords (public)", None, "200", None) },
            "/api/v1/auth/oidc/{id}/login": { "get": with_id(op("start an OIDC login: 303 to the provider with state, nonce and PKCE; ?next=/local/path (public)", None, "303", None)) },
            "/api/v1/auth/oidc/callback": { "get": op("the provider's redirect back: 303 to next with a login session, or to /?sso_error=reason (public)", None, "303", None) },
            "/api/v1/auth/logout": { "post": op("log out", None, "200", None) },
            "/api/v1/auth/me": { "get": op("current user and csrf token", None, "200", Some("Me")) },
            "/api/v1/auth/password": { "post": op("change own password", Some("PasswordChange"), "200", None) },
            "/api/v1/users": { "get": paged(op("list users, searched by name (admin, auditor)", None, "200", None)), "post": op("create a user (admin)", Some("NewUser"), "201", Some("User")) },
            "/api/v1/users/{id}": {
                "put": with_id(op("set a user's role and limits (admin)", Some("UserUpdate"), "200", Some("User"))),
                "delete": with_id(op("delete a user (admin)", None, "204", None))
            },
            "/api/v1/groups": { "get": paged(op("list groups (admin, auditor)", None, "200", None)), "post": op("create a group (admin); 409 when the name exists", Some("GroupInput"), "201", None) },
            "/api/v1/groups/{id}": {
                "get": with_id(op("a group with its members' ids (admin, auditor)", None, "200", Some("Group"))),
                "put": with_id(op("rename a group, set its limits (admin)", Some("GroupInput"), "204", None)),
                "delete": with_id(op("delete a group and its grants; sessions only it allowed end (admin)", None, "204", None))
            },
            "/api/v1/groups/{id}/members": {
                "get": with_id(op("a group's members (admin, auditor)", None, "200", Some("Members"))),
                "put": with_id(op("replace a group's members; removed members' sessions it alone allowed end within 2 s (admin)", Some("Members"), "204", None))
            },
            "/api/v1/folders": { "get": op("every folder (admin, auditor)", None, "200", None), "post": op("create a folder, under parent_id if given (admin)", Some("FolderInput"), "201", Some("Folder")) },
            "/api/v1/folders/{id}": {
                "put": with_id(op("rename or move a folder (not below itself); sessions it no longer allows end (admin)", Some("FolderInput"), "204", None)),
                "delete": with_id(op("delete an empty folder and its grants; 409 when not empty (admin)", None, "204", None))
            },
            "/api/v1/folders/{id}/grants": {
                "get": with_id(op("who may use the folder and everything below it (admin, auditor)", None, "200", Some("Grants"))),
                "put": with_id(op("replace the folder's grants; sessions no longer allowed end within 2 s (admin)", Some("Grants"), "204", None))
            },
            "/api/v1/connections/{id}/grants": {
                "get": with_id(op("who may use the connection (admin, auditor)", None, "200", Some("Grants"))),
                "put": with_id(op("replace the connection's grants; sessions no longer allowed end within 2 s (admin)", Some("Grants"), "204", None))
            },
            "/api/v1/api-keys": { "get": op("list own api keys", None, "200", None), "post": op("create an api key", Some("NewApiKey"), "201", Some("ApiKeyCreated")) },
            "/api/v1/api-keys/{id}": { "delete": with_id(op("delete an api key", None, "204", None)) },
            "/api/v1/connections": {
                "get": connection_list(op("the connections the caller may use (admins and auditors: all), grouped by folder then by name (see sort), each with whether it is one of the caller's favourites and when the caller last used it; q searches names, hosts and folder names; folder_id: that folder and everything below it (secrets never returned)", None, "200", None)),
                "post": op("create a connection (admin)", Some("ConnectionInput"), "201", Some("Connection"))
            },
            "/api/v1/connections/{id}": {
                "get": with_id(op("get a connection; one not granted to the caller is 404, like one that does not exist", None, "200", Some("Connection"))),
                "put": with_id(op("update a connection (admin); empty secrets keep the stored ones", Some("ConnectionInput"), "200", Some("Connection"))),
                "delete": with_id(op("delete a connection (admin)", None, "204", None))
            },
            "/api/v1/connections/{id}/favourite": {
                "put": with_id(op("make the connection one of the caller's favourites (idempotent); one not granted to the caller is 404, like one that does not exist", None, "204", None)),
                "delete": with_id(op("remove it from the caller's favourites (idempotent); 404 as for put", None, "204", None))
            },
            "/api/v1/sessions": {
                "get": op("list live sessions (own; all for admins and auditors)", None, "200", None),
                "post": op("start a session: one-time token, websocket url and embeddable connect url; for a workspace also schedules its container (503 when no healthy agent has room)", Some("NewSession"), "201", Some("SessionCreated"))
            },
            "/api/v1/workspace-images": { "get": op("the image catalog: each image (name, size_mb, its org.portico.* and org.opencontainers.image.* labels) a healthy agent's engine holds, with the agents holding it; launches are placed only on those (admin)", None, "200", None) },
            "/api/v1/agents": { "get": op("docker agents with their state (healthy, draining, down, failed), capacity, networks and refused registrations (admin)", None, "200", None) },
            "/api/v1/agents/{id}/drain": {
                "post": with_id(op("drain an agent: no new workspaces are placed on it; its live ones run to their end (admin)", None, "204", None)),
                "delete": with_id(op("take a drained agent back: it gets new workspaces again (admin)", None, "204", None))
            },
            "/api/v1/agents/{id}": { "delete": with_id(op("remove an agent: its live workspaces fail and their sessions end, and its name is free for the next agent identity that registers it (admin)", None, "204", None)) },
            "/api/v1/bridges": { "get": op("registered bridges with their state (healthy, draining, down, stopped, revoked), route and sessions: each registration is an identity with its own credential (admin)", None, "200", None) },
            "/api/v1/bridges/{id}/drain": { "post": with_id(op("drain a bridge: no new sessions are assigned to it and it refuses new tokens; its live sessions run to their end, or until deadline_secs (optional body {\"deadline_secs\": N}), then it stops; a second call changes the deadline (admin)", None, "204", None)) },
            "/api/v1/bridges/{id}": { "delete": with_id(op("revoke a bridge: its credential stops working and its sessions end; ?forget=true removes a revoked bridge so its name may register again (admin)", None, "204", None)) },
            "/api/v1/sessions/{id}": {
                "get": with_id(op("get a session", None, "200", Some("Session"))),
                "delete": with_id(op("end a session; the bridge closes it within 2 s", None, "204", None))
            },
            "/api/v1/sessions/{id}/shares": {
                "get": with_id(op("the session's shares (revoked and expired ones too) and its viewers now (the owner, admins, auditors)", None, "200", None)),
                "post": with_id(op("share a live session with a user (user_id or username), a group (group_id) or as a link (link: true; the answer's link_url holds its secret, shown once), view or control, for expires_in_secs (60 s to a week, default an hour); the connection's policy (settings.sharing) bounds the mode (the owner or an admin; an audited event)", None, "201", None)),
                "delete": with_id(op("stop sharing: revoke every share of the session; its viewers are closed within 2 s (share_revoked)", None, "204", None))
            },
            "/api/v1/sessions/{id}/shares/{share_id}": {
                "patch": with_share(op("switch a share between view and control (body {\"mode\": ...}); its viewers follow within a heartbeat", None, "200", None)),
                "delete": with_share(op("revoke one share; its viewers are closed within 2 s", None, "204", None))
            },
            "/api/v1/shared": { "get": op("live sessions shared with the caller, directly or through one of their groups", None, "200", None) },
            "/api/v1/join": { "post": op("join a shared session as a viewer: by share_id (a share naming the caller or their group), by link (a link share's secret), or an administrator by session_id (shadowing, as the connection's settings.shadowing allows; the owner is told); the answer is a viewer token (60 s, used once) and the websocket url of the bridge holding the session; 409 when the share was revoked or expired, the session ended, or 16 viewers are attached", None, "201", None) },
            "/api/v1/recordings": { "get": recordings_list(op("session recordings, newest first: search by user, connection, name and time (admin, auditor; other users list only their own that the connection let owners play; an audited event)", None, "200", None)) },
            "/api/v1/recordings/{id}": {
                "get": with_id(op("a recording with its stored file checked: size, duration, keyframes, intact (admin, auditor, or its owner where the connection lets owners play them; 403 for anyone else, whatever the id); 409 when it fails its integrity check", None, "200", Some("Recording"))),
                "delete": with_id(op("delete a recording, row and file (admin; an audited event)", None, "204", None))
            },
            "/api/v1/recordings/{id}/file": { "get": with_id(op("the recording as stored (docs/protocol.md \"Recording format\"), with byte ranges (admin, auditor; reading it is an audited event)", None, "200", None)) },
            "/api/v1/recordings/{id}/asciicast": { "get": with_id(op("an SSH recording as asciicast v2, checked; one cut short is exported up to its last whole chunk (X-Portico-Recording-Intact: false); 409 when it fails its integrity check (admin, auditor)", None, "200", None)) },
            "/api/v1/events": { "get": events_list(op("stored events, newest first, filtered and paged (admin, auditor)", None, "200", None)) },
            "/api/v1/events/types": { "get": op("every event type, and the retention of stored events (admin, auditor)", None, "200", Some("EventTypes")) }
        }
    })
}
