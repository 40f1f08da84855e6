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

pub fn document() -> Value {
    let id = json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }]);
    let with_id = |mut v: Value| {
        v["parameters"] = id.clone();
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
                "User": { "type": "object", "properties": { "id": { "type": "string" }, "username": { "type": "string" }, "role": { "enum": ["admin", "user"] }, "created_at": { "type": "integer" } } },
                "Me": { "type": "object", "properties": { "user": { "$ref": "#/components/schemas/User" }, "csrf_token": { "type": ["string", "null"] } } },
                "NewUser": { "type": "object", "required": ["username", "password"], "properties": { "username": { "type": "string" }, "password": { "type": "string", "minLength": 8 }, "role": { "enum": ["admin", "user"] } } },
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
                    "workspace": { "oneOf": [{ "type": "null" }, { "$ref": "#/components/schemas/WorkspaceSpec" }], "description": "protocol container" } } },
                "WorkspaceSpec": { "type": "object", "required": ["image"], "additionalProperties": false, "description": "an image serving a VNC desktop on vnc_port with the password in VNC_PASSWORD; a fresh container per session", "properties": {
                    "image": { "type": "string", "example": "portico/workspace:latest" },
                    "cpu_millis": { "type": "integer", "minimum": 100, "maximum": 64000, "default": 1000, "description": "thousandths of a core" },
                    "memory_mb": { "type": "integer", "minimum": 128, "maximum": 262144, "default": 512, "description": "no swap on top" },
                    "pids_limit": { "type": "integer", "minimum": 16, "maximum": 65536, "default": 256 },
                    "vnc_port": { "type": "integer", "default": 5901 },
                    "geometry": { "type": ["string", "null"], "example": "1280x720" } } },
                "Agent": { "type": "object", "properties": {
                    "id": { "type": ["string", "null"], "description": "null for a name that only ever had refused registrations" }, "name": { "type": "string" },
                    "state": { "enum": ["healthy", "down", "failed"], "description": "down: three heartbeats missed; failed: a name whose registrations were all refused (last_error); refusals never change a registered agent" },
                    "networks": { "type": "array", "description": "the subnets its containers are on, as the agent declared them; a container address outside them is refused", "items": { "type": "object", "properties": {
                        "name": { "type": "string" }, "subnet": { "type": "string" }, "gateway": { "type": ["string", "null"] } } } },
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
                    "created_at": { "type": "integer" }, "updated_at": { "type": "integer" } } },
                "NewSession": { "type": "object", "required": ["connection_id"], "properties": { "connection_id": { "type": "string" }, "cols": { "type": "integer" }, "rows": { "type": "integer" } } },
                "SessionCreated": { "type": "object", "properties": {
                    "session_id": { "type": "string" }, "token": { "type": "string", "description": "one-time, valid 60 s" },
                    "ws_url": { "type": "string" }, "connect_url": { "type": "string", "description": "embed page with the session id and token in the fragment; the page connects to the configured bridge only (a ws parameter is ignored)" },
                    "expires_at": { "type": "integer" } } },
                "Session": { "type": "object", "properties": {
                    "id": { "type": "string" }, "user_id": { "type": "string" }, "connection_id": { "type": "string" },
                    "state": { "enum": ["pending", "active", "ended"] }, "created_at": { "type": "integer" },
                    "ended_at": { "type": ["integer", "null"] }, "end_reason": { "type": ["string", "null"], "description": "a lost workspace's reason starts with \"lost:\"" },
                    "workspace": { "$ref": "#/components/schemas/Workspace" } } },
                "Health": { "type": "object", "properties": { "ok": { "type": "boolean" } } }
            }
        },
        "security": [{ "cookie": [] }, { "apiKey": [] }],
        "paths": {
            "/api/__healthcheck": { "get": op("health including a database round trip (503 when the database is down)", None, "200", Some("Health")) },
            "/api/v1/auth/login": { "post": op("log in; sets the session cookie", Some("Login"), "200", Some("Me")) },
            "/api/v1/auth/logout": { "post": op("log out", None, "200", None) },
            "/api/v1/auth/me": { "get": op("current user and csrf token", None, "200", Some("Me")) },
            "/api/v1/auth/password": { "post": op("change own password", Some("PasswordChange"), "200", None) },
            "/api/v1/users": { "get": op("list users (admin)", None, "200", None), "post": op("create a user (admin)", Some("NewUser"), "201", Some("User")) },
            "/api/v1/users/{id}": { "delete": with_id(op("delete a user (admin)", None, "204", None)) },
            "/api/v1/api-keys": { "get": op("list own api keys", None, "200", None), "post": op("create an api key", Some("NewApiKey"), "201", Some("ApiKeyCreated")) },
            "/api/v1/api-keys/{id}": { "delete": with_id(op("delete an api key", None, "204", None)) },
            "/api/v1/connections": {
                "get": op("list connections (secrets never returned)", None, "200", None),
                "post": op("create a connection (admin)", Some("ConnectionInput"), "201", Some("Connection"))
            },
            "/api/v1/connections/{id}": {
                "get": with_id(op("get a connection", None, "200", Some("Connection"))),
                "put": with_id(op("update a connection (admin); empty secrets keep the stored ones", Some("ConnectionInput"), "200", Some("Connection"))),
                "delete": with_id(op("delete a connection (admin)", None, "204", None))
            },
            "/api/v1/sessions": {
                "get": op("list live sessions (own; all for admins)", None, "200", None),
                "post": op("start a session: one-time token, websocket url and embeddable connect url; for a workspace also schedules its container (503 when no healthy agent has room)", Some("NewSession"), "201", Some("SessionCreated"))
            },
            "/api/v1/agents": { "get": op("docker agents with their state, capacity, networks and refused registrations (admin)", None, "200", None) },
            "/api/v1/agents/{id}": { "delete": with_id(op("remove an agent: its live workspaces fail and their sessions end, and its name is free for the next agent identity that registers it (admin)", None, "204", None)) },
            "/api/v1/bridges": { "get": op("registered bridges: each registration is an identity with its own credential (admin)", None, "200", None) },
            "/api/v1/bridges/{id}": { "delete": with_id(op("revoke a bridge: its credential stops working and its sessions end; ?forget=true removes a revoked bridge so its name may register again (admin)", None, "204", None)) },
            "/api/v1/sessions/{id}": {
                "get": with_id(op("get a session", None, "200", Some("Session"))),
                "delete": with_id(op("end a session; the bridge closes it within 2 s", None, "204", None))
            }
        }
    })
}
