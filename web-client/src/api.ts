// The Portico REST API (see /api/openapi.json). Errors carry the server's message.

export interface User { id: string; username: string; role: 'admin' | 'user'; created_at: number }
export interface Me { user: User; csrf_token: string | null }
export interface Connection {
  id: string; name: string; protocol: 'ssh' | 'vnc' | 'rdp' | 'container'; host: string; port: number; username: string;
  has_password: boolean; has_private_key: boolean; host_key_fingerprint: string | null; settings: ConnectionSettings;
  created_at: number; updated_at: number;
}
/** Protocol settings (see proto/src/control.rs `ConnectionSettings`). */
export interface ConnectionSettings {
  domain: string | null; security: 'auto' | 'tls' | 'nla'; width: number | null; height: number | null;
  color_depth: number; clipboard_up: boolean; clipboard_down: boolean; ask_credentials: boolean;
  danger_accept_any_certificate: boolean;
  workspace?: WorkspaceSpec | null;
}
/** A container workspace's image and limits (proto/src/control.rs `WorkspaceSpec`). */
export interface WorkspaceSpec {
  image: string; cpu_millis: number; memory_mb: number; pids_limit: number; vnc_port?: number; geometry?: string | null;
}
/** A Docker agent as `GET /api/v1/agents` lists it. */
export interface Agent {
  id: string | null; name: string; state: 'healthy' | 'down' | 'failed'; last_error: string | null; remote_addr: string;
  docker_version: string; cores: number; memory_mb: number; running: number; last_heartbeat_at: number | null;
  networks: { name: string; subnet: string; gateway?: string | null }[];
  /** The latest refused registration under this name (never changes the agent). */
  refused: { reason: string; remote_addr: string; attempts: number; first_at: number; last_at: number } | null;
}
export interface ConnectionInput {
  name: string; protocol: string; host?: string; port?: number; username?: string;
  password?: string; private_key?: string; host_key_fingerprint?: string; settings?: ConnectionSettings;
}
export interface SessionCreated { session_id: string; token: string; ws_url: string; connect_url: string; expires_at: number }
export type KeyScope = 'read' | 'sessions' | 'admin';
export interface ApiKey { id: string; name: string; created_at: number; last_used_at: number | null; scope: KeyScope; expires_at: number | null }

export class ApiError extends Error {
  constructor(public status: number, message: string) { super(message); }
}

let csrf: string | null = null;

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && csrf) headers['x-csrf-token'] = csrf;
  const res = await fetch(path, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data: unknown = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const msg = (data && typeof data === 'object' && 'error' in data) ? String((data as { error: unknown }).error) : `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, msg);
  }
  return data as T;
}

export async function me(): Promise<Me | null> {
  try {
    const m = await call<Me>('GET', '/api/v1/auth/me');
    csrf = m.csrf_token;
    return m;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null;
    throw e;
  }
}

export async function login(username: string, password: string): Promise<Me> {
  const m = await call<Me>('POST', '/api/v1/auth/login', { username, password });
  csrf = m.csrf_token;
  return m;
}

export const logout = () => call<unknown>('POST', '/api/v1/auth/logout');
export const connections = () => call<Connection[]>('GET', '/api/v1/connections');
export const createConnection = (c: ConnectionInput) => call<Connection>('POST', '/api/v1/connections', c);
export const updateConnection = (id: string, c: ConnectionInput) => call<Connection>('PUT', `/api/v1/connections/${encodeURIComponent(id)}`, c);
export const deleteConnection = (id: string) => call<unknown>('DELETE', `/api/v1/connections/${encodeURIComponent(id)}`);
export const createSession = (connection_id: string) => call<SessionCreated>('POST', '/api/v1/sessions', { connection_id });
export const endSession = (id: string) => call<unknown>('DELETE', `/api/v1/sessions/${encodeURIComponent(id)}`);
export const users = () => call<User[]>('GET', '/api/v1/users');
export const createUser = (username: string, password: string, role: string) => call<User>('POST', '/api/v1/users', { username, password, role });
export const deleteUser = (id: string) => call<unknown>('DELETE', `/api/v1/users/${encodeURIComponent(id)}`);
export const apiKeys = () => call<ApiKey[]>('GET', '/api/v1/api-keys');
export const createApiKey = (name: string, scope: KeyScope, expiresInDays: number) =>
  call<{ id: string; name: string; key: string }>('POST', '/api/v1/api-keys', { name, scope, expires_in_days: expiresInDays });
export const deleteApiKey = (id: string) => call<unknown>('DELETE', `/api/v1/api-keys/${encodeURIComponent(id)}`);

export const agents = (): Promise<Agent[]> => call('GET', '/api/v1/agents');
export const deleteAgent = (id: string) => call<unknown>('DELETE', `/api/v1/agents/${encodeURIComponent(id)}`);
/** A live session as `GET /api/v1/sessions` lists it (own; all for admins). */
export interface SessionRow {
  id: string; user_id: string; connection_id: string; state: 'pending' | 'active' | 'ended';
  claimed_at: number | null; bridge_id: string | null; created_at: number;
}
export const sessions = (): Promise<SessionRow[]> => call('GET', '/api/v1/sessions');

