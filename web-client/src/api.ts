// The Portico REST API (see /api/openapi.json). Errors carry the server's message.

export type Role = 'admin' | 'auditor' | 'user';
export interface User {
  id: string; username: string; role: Role; created_at: number; max_sessions: number | null; protocols: string[] | null;
  mfa_enabled: boolean; /** The identity provider the user comes from; null: a local account. */ provider_id: string | null;
}
/** `mfa_enrolment_required`: the login may only set up two-factor authentication until it has. */
export interface Me { user: User; csrf_token: string | null; mfa_enrolment_required?: boolean }
/** The password was right and the account has a second factor: the code goes to `loginSecondStep`. */
export interface MfaChallenge { mfa_required: true; mfa_token: string }
export interface MfaEnrolment { secret: string; otpauth_uri: string; qr_svg: string }
export interface Connection {
  id: string; name: string; protocol: 'ssh' | 'vnc' | 'rdp' | 'container'; host: string; port: number; username: string;
  has_password: boolean; has_private_key: boolean; host_key_fingerprint: string | null; settings: ConnectionSettings;
  folder_id: string | null; /** "Site A / Floor 1": the folders above it, top first. */ folder_path: string | null;
  created_at: number; updated_at: number;
}
export interface Group { id: string; name: string; max_sessions: number | null; protocols: string[] | null; recording: Recording | null; created_at: number; members: number }
export interface Folder { id: string; name: string; parent_id: string | null; created_at: number }
export interface Grants { user_ids: string[]; group_ids: string[] }
/** One page of a list and the number of all that matched. */
export interface Page<T> { items: T[]; total: number }
/** Protocol settings (see proto/src/control.rs `ConnectionSettings`). */
export interface ConnectionSettings {
  domain: string | null; security: 'auto' | 'tls' | 'nla'; width: number | null; height: number | null;
  color_depth: number; clipboard_up: boolean; clipboard_down: boolean; ask_credentials: boolean;
  danger_accept_any_certificate: boolean;
  workspace?: WorkspaceSpec | null;
  h264?: boolean;
  recording?: Recording;
  /** The session's owner may play their own recordings. */
  recording_owner_access?: boolean;
  /** Live sharing of its sessions, and administrators' shadowing without an invitation: the most allowed. */
  sharing?: ShareLimit;
  shadowing?: ShareLimit;
  /** SSH: the shell's locale (LANG); null = C.UTF-8. */
  locale?: string | null;
  /** SSH: file transfer through SFTP (the bridge enforces it), and the largest file in MiB. */
  files?: FilePolicy;
  files_max_mb?: number;
}
export type FilePolicy = 'none' | 'download' | 'upload' | 'both';
/** proto/src/control.rs `ShareLimit`. */
export type ShareLimit = 'off' | 'view' | 'control';
/** Whether a connection's sessions are recorded (proto/src/control.rs `RecordingPolicy`). */
export type Recording = 'off' | 'on' | 'keystrokes';
/** A container workspace's image and limits (proto/src/control.rs `WorkspaceSpec`). */
export interface WorkspaceSpec {
  image: string; cpu_millis: number; memory_mb: number; pids_limit: number; vnc_port?: number; geometry?: string | null;
  /** Warm pool: spares each healthy agent keeps started for the connection (0: none). */
  warm?: number;
  /** Sound from the image's audio server (default true). */
  audio?: boolean;
}
/** A Docker agent as `GET /api/v1/agents` lists it. */
export interface Agent {
  id: string | null; name: string; state: 'healthy' | 'draining' | 'down' | 'failed'; last_error: string | null; remote_addr: string;
  docker_version: string; cores: number; memory_mb: number; running: number; last_heartbeat_at: number | null;
  /** Its warm pool: unclaimed containers started ahead of launches. */
  spares?: { ready: number; starting: number };
  networks: { name: string; subnet: string; gateway?: string | null }[];
  /** The latest refused registration under this name (never changes the agent). */
  refused: { reason: string; remote_addr: string; attempts: number; first_at: number; last_at: number } | null;
}
export interface ConnectionInput {
  name: string; protocol: string; host?: string; port?: number; username?: string;
  password?: string; private_key?: string; host_key_fingerprint?: string; settings?: ConnectionSettings;
  folder_id?: string | null;
}
export interface SessionCreated { session_id: string; token: string; ws_url: string; connect_url: string; expires_at: number }
export type KeyScope = 'read' | 'sessions' | 'admin';
export interface ApiKey { id: string; name: string; created_at: number; last_used_at: number | null; scope: KeyScope; expires_at: number | null }

export class ApiError extends Error {
  constructor(public status: number, message: string) { super(message); }
}

let csrf: string | null = null;

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  return (await request<T>(method, path, body)).data;
}

async function request<T>(method: string, path: string, body?: unknown): Promise<{ data: T; res: Response }> {
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
  return { data: data as T, res };
}

/** A page of a list endpoint: `?q=` searched on the server, the total from `X-Total-Count`. */
async function page<T>(path: string, params: Record<string, string | number | undefined>): Promise<Page<T>> {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') qs.set(k, String(v));
  const { data, res } = await request<T[]>('GET', `${path}?${qs}`);
  return { items: data, total: Number(res.headers.get('x-total-count') ?? data.length) };
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

export async function login(username: string, password: string): Promise<Me | MfaChallenge> {
  const m = await call<Me | MfaChallenge>('POST', '/api/v1/auth/login', { username, password });
  if ('csrf_token' in m) csrf = m.csrf_token;
  return m;
}

/** The second step of a login: a code from the authenticator app, or one of the recovery codes. */
export async function loginSecondStep(token: string, code: { code: string } | { recovery_code: string }): Promise<Me> {
  const m = await call<Me>('POST', '/api/v1/auth/login/mfa', { mfa_token: token, ...code });
  csrf = m.csrf_token;
  return m;
}

export const mfaEnrol = () => call<MfaEnrolment>('POST', '/api/v1/auth/mfa/enrol');
export const mfaConfirm = (code: string) => call<{ recovery_codes: string[] }>('POST', '/api/v1/auth/mfa/confirm', { code });
export const mfaReset = (userId: string) => call<unknown>('DELETE', `/api/v1/users/${encodeURIComponent(userId)}/mfa`);

export const logout = () => call<unknown>('POST', '/api/v1/auth/logout');
/** A connection in the caller's list, with what it is to them. */
export interface ListedConnection extends Connection {
  /** One of the caller's favourites. */ favourite: boolean;
  /** When the caller last started a session on it (unix seconds). */ last_used_at: number | null;
}
/** `sort`: name (by folder, then name; the default), recent (the caller's favourites, then what they used last,
 * then by folder and name), last_used (what the caller used last first); `favourite`, `used`: only those. */
export interface ConnectionQuery {
  q?: string; folder_id?: string; limit?: number; offset?: number;
  sort?: 'name' | 'recent' | 'last_used'; favourite?: boolean; used?: boolean;
}
export const connections = (p: ConnectionQuery = {}) =>
  page<ListedConnection>('/api/v1/connections', { ...p, favourite: p.favourite ? 'true' : undefined, used: p.used ? 'true' : undefined });
/** Make a connection one of the caller's favourites, or not. */
export const setFavourite = (id: string, on: boolean) =>
  call<unknown>(on ? 'PUT' : 'DELETE', `/api/v1/connections/${encodeURIComponent(id)}/favourite`);
export const connection = (id: string) => call<Connection>('GET', `/api/v1/connections/${encodeURIComponent(id)}`);
export const createConnection = (c: ConnectionInput) => call<Connection>('POST', '/api/v1/connections', c);
export const updateConnection = (id: string, c: ConnectionInput) => call<Connection>('PUT', `/api/v1/connections/${encodeURIComponent(id)}`, c);
export const deleteConnection = (id: string) => call<unknown>('DELETE', `/api/v1/connections/${encodeURIComponent(id)}`);
export const createSession = (connection_id: string) => call<SessionCreated>('POST', '/api/v1/sessions', { connection_id });
export const endSession = (id: string) => call<unknown>('DELETE', `/api/v1/sessions/${encodeURIComponent(id)}`);
export const users = (p: { q?: string; limit?: number; offset?: number } = { limit: 1000 }) => page<User>('/api/v1/users', p);
export const updateUser = (id: string, u: { role?: Role; max_sessions?: number | null; protocols?: string[] | null }) =>
  call<User>('PUT', `/api/v1/users/${encodeURIComponent(id)}`, u);
export const groups = (p: { q?: string; limit?: number; offset?: number } = { limit: 1000 }) => page<Group>('/api/v1/groups', p);
export const createGroup = (g: { name: string; max_sessions?: number | null; protocols?: string[] | null; recording?: Recording | null }) =>
  call<{ id: string }>('POST', '/api/v1/groups', g);
export const deleteGroup = (id: string) => call<unknown>('DELETE', `/api/v1/groups/${encodeURIComponent(id)}`);
export const members = (id: string) => call<{ user_ids: string[] }>('GET', `/api/v1/groups/${encodeURIComponent(id)}/members`);
export const setMembers = (id: string, userIds: string[]) =>
  call<unknown>('PUT', `/api/v1/groups/${encodeURIComponent(id)}/members`, { user_ids: userIds });
export const folders = () => call<Folder[]>('GET', '/api/v1/folders');
/** An image the healthy agents' engines hold (`GET /api/v1/workspace-images`). */
export interface WorkspaceImage { name: string; size_mb: number; labels: Record<string, string>; agents: string[] }
export const workspaceImages = () => call<WorkspaceImage[]>('GET', '/api/v1/workspace-images');
export const createFolder = (name: string, parentId: string | null) => call<Folder>('POST', '/api/v1/folders', { name, parent_id: parentId });
export const deleteFolder = (id: string) => call<unknown>('DELETE', `/api/v1/folders/${encodeURIComponent(id)}`);
export type GrantTarget = 'connections' | 'folders';
export const grants = (kind: GrantTarget, id: string) => call<Grants>('GET', `/api/v1/${kind}/${encodeURIComponent(id)}/grants`);
export const setGrants = (kind: GrantTarget, id: string, g: Grants) =>
  call<unknown>('PUT', `/api/v1/${kind}/${encodeURIComponent(id)}/grants`, g);
export const createUser = (username: string, password: string, role: string) => call<User>('POST', '/api/v1/users', { username, password, role });
export const deleteUser = (id: string) => call<unknown>('DELETE', `/api/v1/users/${encodeURIComponent(id)}`);
export const apiKeys = () => call<ApiKey[]>('GET', '/api/v1/api-keys');
export const createApiKey = (name: string, scope: KeyScope, expiresInDays: number) =>
  call<{ id: string; name: string; key: string }>('POST', '/api/v1/api-keys', { name, scope, expires_in_days: expiresInDays });
export const deleteApiKey = (id: string) => call<unknown>('DELETE', `/api/v1/api-keys/${encodeURIComponent(id)}`);

export const agents = (): Promise<Agent[]> => call('GET', '/api/v1/agents');
export const deleteAgent = (id: string) => call<unknown>('DELETE', `/api/v1/agents/${encodeURIComponent(id)}`);
/** Drain an agent (no new workspaces on it) or take it back. */
export const drainAgent = (id: string, on: boolean) => call<unknown>(on ? 'POST' : 'DELETE', `/api/v1/agents/${encodeURIComponent(id)}/drain`);
/** A bridge as `GET /api/v1/bridges` lists it (each registration is an identity). */
export interface Bridge {
  id: string; name: string; route: string | null; state: 'healthy' | 'draining' | 'down' | 'stopped' | 'replaced' | 'revoked';
  remote_addr: string; registered_at: number; last_seen_at: number; live_sessions: number;
  draining_at: number | null; drain_deadline_at: number | null;
}
export const bridges = (): Promise<Bridge[]> => call('GET', '/api/v1/bridges');
/** Drain a bridge: no new sessions; the live ones run to their end (or `deadline_secs`), then it stops. */
export const drainBridge = (id: string, deadline_secs: number | null) =>
  call<unknown>('POST', `/api/v1/bridges/${encodeURIComponent(id)}/drain`, deadline_secs === null ? {} : { deadline_secs });
export const revokeBridge = (id: string) => call<unknown>('DELETE', `/api/v1/bridges/${encodeURIComponent(id)}`);
/** A live session as `GET /api/v1/sessions` lists it (own; all for admins). */
export interface SessionRow {
  id: string; user_id: string; connection_id: string; state: 'pending' | 'active' | 'ended';
  claimed_at: number | null; bridge_id: string | null; created_at: number; ended_at?: number | null; end_reason?: string | null;
}
export const sessions = (): Promise<SessionRow[]> => call('GET', '/api/v1/sessions');
export const session = (id: string): Promise<SessionRow> => call('GET', `/api/v1/sessions/${encodeURIComponent(id)}`);


/** Single sign-on (see webapp/src/identity.rs). */
export interface OidcSettings { issuer: string; client_id: string; scopes?: string[]; groups_claim?: string; username_claim?: string; ca_pem?: string | null }
export interface LdapSettings {
  url: string; starttls?: boolean; ca_pem?: string | null; bind_dn: string; user_base: string; user_filter?: string;
  group_base?: string | null; group_filter?: string;
}
export interface Mapping { groups: Record<string, string>; roles: Record<string, Role> }
export interface IdentityProvider {
  id: string; kind: 'oidc' | 'ldap'; name: string; enabled: boolean; oidc?: OidcSettings; ldap?: LdapSettings; mapping: Mapping;
  has_client_secret: boolean; redirect_uri?: string; users: number; created_at: number;
}
export interface ProviderInput {
  kind: 'oidc' | 'ldap'; name: string; enabled?: boolean; oidc?: OidcSettings; client_secret?: string; ldap?: LdapSettings; mapping?: Mapping;
}
export interface LoginOptions { oidc: { id: string; name: string; login_url: string }[]; ldap: boolean }
export const loginOptions = () => call<LoginOptions>('GET', '/api/v1/auth/providers');
export const identityProviders = () => call<IdentityProvider[]>('GET', '/api/v1/identity-providers');
export const createIdentityProvider = (p: ProviderInput) => call<IdentityProvider>('POST', '/api/v1/identity-providers', p);
export const updateIdentityProvider = (id: string, p: ProviderInput) =>
  call<IdentityProvider>('PUT', `/api/v1/identity-providers/${encodeURIComponent(id)}`, p);
export const deleteIdentityProvider = (id: string) => call<unknown>('DELETE', `/api/v1/identity-providers/${encodeURIComponent(id)}`);
export interface SecuritySettings { mfa_required_roles: Role[]; local_login_admins_only: boolean }
export const securitySettings = () => call<SecuritySettings>('GET', '/api/v1/settings');
export const setSecuritySettings = (s: Partial<SecuritySettings>) => call<SecuritySettings>('PUT', '/api/v1/settings', s);

export interface EventRecord {
  id: string; at: number; type: string; actor_id: string | null; client_addr: string | null;
  user_id: string | null; connection_id: string | null; session_id: string | null; details: Record<string, unknown>;
}
export type EventQuery = { type?: string; user_id?: string; connection_id?: string; session_id?: string; since?: number; until?: number; limit?: number; offset?: number };
export const events = (q: EventQuery) => page<EventRecord>('/api/v1/events', q);
export const eventTypes = () => call<{ types: string[]; retention_days: number }>('GET', '/api/v1/events/types');

/** A session recording as `GET /api/v1/recordings` lists it (`stored` only for one recording). */
export interface RecordingInfo {
  id: string; user_id: string; username: string; connection_id: string; connection_name: string; protocol: string;
  input: boolean; bridge_id: string; created_at: number; ended_at: number | null; completed_at: number | null;
  stored?: { bytes: number; intact: boolean; duration_ms: number; records: number; problem: string | null } | null;
}

export async function recordings(params: { q?: string; limit?: number; offset?: number }): Promise<Page<RecordingInfo>> {
  return page<RecordingInfo>('/api/v1/recordings', params);
}

export async function recording(id: string): Promise<RecordingInfo> {
  return call<RecordingInfo>('GET', `/api/v1/recordings/${encodeURIComponent(id)}`);
}

export async function deleteRecording(id: string): Promise<void> {
  await call<null>('DELETE', `/api/v1/recordings/${encodeURIComponent(id)}`);
}

/** Live session sharing (docs/security.md, "Sharing"). */
export type ShareMode = 'view' | 'control';
export interface Share {
  id: string; session_id: string; created_by: string; kind: 'user' | 'group' | 'link' | 'shadow';
  subject_id: string | null; mode: ShareMode; created_at: number; expires_at: number; revoked_at: number | null;
  /** Only in the answer that created a link share. */ link_url?: string;
}
export interface Viewer { id: string; share_id: string; user_id: string; username: string; claimed_at: number | null; left_at: number | null }
export interface Shares { shares: Share[]; viewers: Viewer[] }
export interface SharedSession { share_id: string; session_id: string; mode: ShareMode; expires_at: number; owner: string; connection_name: string; protocol: string }
export interface Joined { session_id: string; viewer_id: string; mode: ShareMode; protocol: string; owner: string; token: string; ws_url: string; expires_at: number }
export type ShareBody = { mode: ShareMode; expires_in_secs?: number } & ({ username: string } | { user_id: string } | { group_id: string } | { link: true });
export type JoinBody = { share_id: string } | { link: string } | { session_id: string; mode?: ShareMode };
const sessionPath = (id: string) => `/api/v1/sessions/${encodeURIComponent(id)}`;
export const shares = (sessionId: string) => call<Shares>('GET', `${sessionPath(sessionId)}/shares`);
export const createShare = (sessionId: string, b: ShareBody) => call<Share>('POST', `${sessionPath(sessionId)}/shares`, b);
export const setShareMode = (sessionId: string, shareId: string, mode: ShareMode) =>
  call<Share>('PATCH', `${sessionPath(sessionId)}/shares/${encodeURIComponent(shareId)}`, { mode });
export const revokeShare = (sessionId: string, shareId: string | null) =>
  call<unknown>('DELETE', `${sessionPath(sessionId)}/shares${shareId ? `/${encodeURIComponent(shareId)}` : ''}`);
export const sharedWithMe = () => call<SharedSession[]>('GET', '/api/v1/shared');
export const join = (b: JoinBody) => call<Joined>('POST', '/api/v1/join', b);
