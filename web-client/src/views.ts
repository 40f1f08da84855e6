// Login, the connection list and editor, users and API keys.

import * as api from './api';
import { h, mount, errorText } from './dom';
import { openSession, type SessionTarget } from './session';
import { joinRequest, joinTarget } from './share';
import { foldersCard, grantsEditor, groupsCard } from './access';
import { identityProvidersCard, loginExtras } from './sso';
import { eventsCard } from './events';
import { openPlayer } from './player';

const DEFAULT_PORTS: Record<string, number> = { ssh: 22, vnc: 5900, rdp: 3389 };

/** Run `action` when the form is submitted: the button is disabled meanwhile, a failure shows in `err`. */
function onSubmit(form: HTMLFormElement, submit: HTMLButtonElement, err: HTMLElement, action: () => Promise<void>): void {
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.textContent = '';
    submit.disabled = true;
    try {
      await action();
    } catch (e2) {
      err.textContent = errorText(e2);
    } finally {
      submit.disabled = false;
    }
  });
}

export function showLogin(onDone: (me: api.Me) => void): void {
  const user = h('input', { id: 'login-username', autocomplete: 'username', required: true, autofocus: true });
  const pass = h('input', { id: 'login-password', type: 'password', autocomplete: 'current-password', required: true });
  const err = h('div', { id: 'login-error', class: 'error', role: 'alert' });
  const submit = h('button', { id: 'login-submit', class: 'primary', type: 'submit' }, 'Log in');
  const form = h('form', { id: 'login-form', class: 'login' },
    h('h1', {}, 'Portico'), h('p', { class: 'muted' }, 'Browser access to your servers'),
    h('label', { for: 'login-username' }, 'User name'), user,
    h('label', { for: 'login-password' }, 'Password'), pass, submit, err);
  void loginExtras(err).then((extras) => form.append(extras));
  onSubmit(form, submit, err, async () => {
    const r = await api.login(user.value.trim(), pass.value);
    if ('mfa_required' in r) showSecondStep(r.mfa_token, onDone);
    else onDone(r);
  });
  mount(form);
  user.focus();
}

/** The second step of a login: the authenticator's code, or a recovery code. */
function showSecondStep(token: string, onDone: (me: api.Me) => void): void {
  const code = h('input', { id: 'login-code', autocomplete: 'one-time-code', inputmode: 'numeric', required: true, placeholder: '123456' });
  const err = h('div', { id: 'login-error', class: 'error', role: 'alert' });
  const submit = h('button', { id: 'login-code-submit', class: 'primary', type: 'submit' }, 'Verify');
  const useRecovery = h('input', { id: 'login-use-recovery', type: 'checkbox' });
  const form = h('form', { id: 'login-mfa-form', class: 'login' },
    h('h1', {}, 'Portico'), h('p', { class: 'muted' }, 'Enter the code from your authenticator app.'),
    h('label', { for: 'login-code' }, 'Code'), code,
    h('label', {}, useRecovery, ' Use a recovery code instead'), submit, err);
  onSubmit(form, submit, err, async () => {
    const typed = code.value.trim();
    onDone(await api.loginSecondStep(token, useRecovery.checked ? { recovery_code: typed } : { code: typed }));
  });
  mount(form);
  code.focus();
}

/** Two-factor authentication of the account: set it up (QR code, first code, recovery codes shown once). */
async function mfaCard(me: api.Me, onEnrolled: () => void): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const body = h('div', { id: 'mfa-body' });
  const card = h('section', { class: 'card', id: 'mfa-card' }, h('h2', {}, 'Two-factor authentication'), body, err);
  if (me.user.mfa_enabled) {
    body.append(h('p', { class: 'muted' }, 'On. If you lose your authenticator, use a recovery code, or ask an administrator to reset it.'));
    return card;
  }
  const start = h('button', { id: 'mfa-start', class: 'primary' }, 'Set up');
  body.append(h('p', { class: 'muted' }, me.mfa_enrolment_required
    ? 'Your role requires a second factor: set it up to continue.'
    : 'Off. Protect this account with an authenticator app (TOTP).'), start);
  start.addEventListener('click', async () => {
    err.textContent = '';
    try {
      const e = await api.mfaEnrol();
      // The server's QR code, shown as an image (never parsed into this page).
      const qr = h('img', { id: 'mfa-qr', alt: 'QR code for your authenticator app', width: '200', height: '200',
        src: `data:image/svg+xml;base64,${btoa(e.qr_svg)}` });
      const code = h('input', { id: 'mfa-code', autocomplete: 'one-time-code', inputmode: 'numeric', placeholder: '123456' });
      const confirm = h('button', { id: 'mfa-confirm', class: 'primary' }, 'Confirm');
      confirm.addEventListener('click', async () => {
        err.textContent = '';
        try {
          const r = await api.mfaConfirm(code.value.trim());
          const done = h('button', { id: 'mfa-done', class: 'primary' }, 'I have saved them');
          done.addEventListener('click', onEnrolled);
          body.replaceChildren(h('p', {}, 'Two-factor authentication is on. Save these recovery codes: each works once, and they are not shown again.'),
            h('pre', { id: 'mfa-recovery', class: 'secret-key' }, r.recovery_codes.join('\n')), done);
        } catch (e2) {
          err.textContent = errorText(e2);
        }
      });
      body.replaceChildren(h('p', {}, 'Scan this with your authenticator app, or type the key, then enter the code it shows.'),
        qr, h('p', {}, 'Key: ', h('code', { id: 'mfa-secret' }, e.secret)), h('div', { class: 'inline-form' }, code, confirm));
    } catch (e2) {
      err.textContent = errorText(e2);
    }
  });
  return card;
}

export async function launch(conn: api.Connection, me: api.Me, back: () => void): Promise<void> {
  const start = async (): Promise<SessionTarget> => {
    const s = await api.createSession(conn.id);
    return { sessionId: s.session_id, token: s.token, wsUrl: s.ws_url, title: conn.name };
  };
  const first = await start();
  openSession(first, { embed: false, onBack: back, newSession: start, endSession: api.endSession, sessionState: api.session, sharing: true });
  void me;
}

/** Watch a session someone shared (or, an administrator, one the policy lets them shadow). */
export async function watch(body: api.JoinBody, back: () => void): Promise<void> {
  const first = await joinTarget(body);
  const again = async (): Promise<SessionTarget> => (await joinTarget(body)).target;
  openSession(first.target, { embed: false, onBack: back, newSession: again, viewer: { owner: first.joined.owner, mode: first.joined.mode } });
}

function connectionEditor(existing: api.Connection | null, onSaved: () => void, onCancel: () => void): HTMLElement {
  const name = h('input', { id: 'conn-name', value: existing?.name ?? '', placeholder: 'e.g. build server' });
  const protocol = h('select', { id: 'conn-protocol' },
    ...[['ssh', 'SSH'], ['vnc', 'VNC'], ['rdp', 'RDP'], ['container', 'Container workspace']].map(([p, label]) =>
      h('option', { value: p, selected: (existing?.protocol ?? 'ssh') === p }, label)));
  const host = h('input', { id: 'conn-host', value: existing?.host ?? '', placeholder: 'host name or IP', required: true });
  const port = h('input', { id: 'conn-port', type: 'number', min: '1', max: '65535', value: String(existing?.port ?? 22) });
  const username = h('input', { id: 'conn-username', value: existing?.username ?? '', autocomplete: 'off' });
  const password = h('input', { id: 'conn-password', type: 'password', autocomplete: 'new-password',
    placeholder: existing?.has_password ? '(stored; leave empty to keep)' : '' });
  const key = h('textarea', { id: 'conn-private-key', placeholder: existing?.has_private_key ? '(stored; leave empty to keep)' : '-----BEGIN OPENSSH PRIVATE KEY-----' });
  const filesPolicy = h('select', { id: 'conn-files' },
    ...[['none', 'Off'], ['download', 'Download only'], ['upload', 'Upload only'], ['both', 'Upload and download']].map(([v, t]) =>
      h('option', { value: v, selected: (existing?.settings?.files ?? 'none') === v }, t)));
  const filesMax = h('input', { id: 'conn-files-max', type: 'number', min: '1', max: '1048576', value: String(existing?.settings?.files_max_mb ?? 1024) });
  const locale = h('input', { id: 'conn-locale', value: existing?.settings?.locale ?? '', placeholder: 'C.UTF-8' });
  const hostKey = h('input', { id: 'conn-host-key', value: existing?.host_key_fingerprint ?? '', placeholder: 'empty = trust on first use' });
  const st = existing?.settings;
  const domain = h('input', { id: 'conn-domain', value: st?.domain ?? '', placeholder: 'optional' });
  const security = h('select', { id: 'conn-security' },
    ...[['auto', 'Auto (NLA or TLS)'], ['nla', 'NLA only'], ['tls', 'TLS only']].map(([v, t]) =>
      h('option', { value: v, selected: (st?.security ?? 'auto') === v }, t)));
  const size = h('input', { id: 'conn-size', value: st?.width && st.height ? `${st.width}x${st.height}` : '',
    placeholder: 'empty = browser window size' });
  const depth = h('select', { id: 'conn-depth' },
    ...[32, 24, 16].map((d) => h('option', { value: String(d), selected: (st?.color_depth ?? 32) === d }, `${d} bit`)));
  const check = (id: string, on: boolean) => h('input', { id, type: 'checkbox', checked: on });
  const clipUp = check('conn-clip-up', st?.clipboard_up ?? true);
  const clipDown = check('conn-clip-down', st?.clipboard_down ?? true);
  const ask = check('conn-ask-credentials', st?.ask_credentials ?? false);
  const anyCert = check('conn-any-cert', st?.danger_accept_any_certificate ?? false);
  const recording = h('select', { id: 'conn-recording' },
    ...[['off', 'Off'], ['on', 'On: what the user sees'], ['keystrokes', 'On, with keystrokes']].map(([v, t]) =>
      h('option', { value: v, selected: (st?.recording ?? 'off') === v }, t)));
  const limitSelect = (id: string, v: api.ShareLimit | undefined) => h('select', { id },
    ...[['off', 'Off'], ['view', 'View only'], ['control', 'View or control']].map(([k, t]) =>
      h('option', { value: k, selected: (v ?? 'off') === k }, t)));
  const ownerPlays = h('input', { id: 'conn-recording-owner', type: 'checkbox', checked: st?.recording_owner_access ?? false });
  const sharing = limitSelect('conn-sharing', st?.sharing);
  const shadowing = limitSelect('conn-shadowing', st?.shadowing);
  const ws = st?.workspace;
  const image = h('input', { id: 'conn-image', list: 'conn-image-list', value: ws?.image ?? 'portico/workspace:latest', placeholder: 'docker image' });
  // The catalog: the images the agents hold, with their title and which agents have them.
  const imageList = h('datalist', { id: 'conn-image-list' });
  void api.workspaceImages().then((all) => {
    imageList.append(...all.map((i) => h('option', { value: i.name },
      `${i.labels['org.opencontainers.image.title'] ?? i.name} · ${i.size_mb} MB · ${i.agents.join(', ')}`)));
  }, () => undefined);
  const cpus = h('input', { id: 'conn-cpus', type: 'number', min: '0.1', max: '64', step: '0.1', value: String((ws?.cpu_millis ?? 1000) / 1000) });
  const memory = h('input', { id: 'conn-memory', type: 'number', min: '128', max: '262144', value: String(ws?.memory_mb ?? 512) });
  const pids = h('input', { id: 'conn-pids', type: 'number', min: '16', max: '65536', value: String(ws?.pids_limit ?? 256) });
  const geometry = h('input', { id: 'conn-geometry', value: ws?.geometry ?? '', placeholder: 'e.g. 1280x720 (default)' });
  const warm = h('input', { id: 'conn-warm', type: 'number', min: '0', max: '32', value: String(ws?.warm ?? 0) });
  const sound = h('input', { id: 'conn-audio', type: 'checkbox', checked: ws?.audio ?? true });
  const folder = h('select', { id: 'conn-folder' }, h('option', { value: '' }, '(top level)'));
  void api.folders().then((all) => {
    const byId = new Map(all.map((f) => [f.id, f]));
    const path = (f: api.Folder): string => {
      const up = f.parent_id ? byId.get(f.parent_id) : undefined;
      return up ? `${path(up)} / ${f.name}` : f.name;
    };
    const opts = all.map((f) => ({ id: f.id, label: path(f) })).sort((a, b) => a.label.localeCompare(b.label));
    folder.append(...opts.map((o) => h('option', { value: o.id, selected: existing?.folder_id === o.id }, o.label)));
  }, () => undefined);
  const err = h('div', { id: 'conn-error', class: 'error wide', role: 'alert' });
  const save = h('button', { id: 'conn-save', class: 'primary', type: 'submit' }, existing ? 'Save' : 'Create');
  const cancel = h('button', { id: 'conn-cancel', type: 'button' }, 'Cancel');
  // Fields that mean nothing for the chosen protocol are hidden (VNC: a password only).
  const userField = h('div', {}, h('label', { for: 'conn-username' }, 'User name'), username);
  const sshFields = [
    h('div', { class: 'wide' }, h('label', { for: 'conn-private-key' }, 'Private key (SSH)'), key),
    h('div', {}, h('label', { for: 'conn-locale', title: 'LANG for the shell, where the server accepts it' }, 'Locale (LANG)'), locale),
    h('div', {}, h('label', { for: 'conn-files', title: 'SFTP on the session\'s connection, enforced by the bridge' }, 'Files (SFTP)'), filesPolicy),
    h('div', {}, h('label', { for: 'conn-files-max' }, 'Largest file (MiB)'), filesMax),
  ];
  const hostKeyField = h('div', { class: 'wide' }, h('label', { for: 'conn-host-key', id: 'conn-host-key-label' },
    'Host key fingerprint (SHA256:…)'), hostKey);
  const rdpFields = [
    h('div', {}, h('label', { for: 'conn-domain' }, 'Domain'), domain),
    h('div', {}, h('label', { for: 'conn-security' }, 'Security'), security),
    h('div', {}, h('label', { for: 'conn-size' }, 'Desktop size (WxH)'), size),
    h('div', {}, h('label', { for: 'conn-depth' }, 'Colour depth'), depth),
    h('div', { class: 'wide' }, h('label', {}, anyCert,
      ' Accept any certificate (dangerous: allows a man in the middle)')),
  ];
  const commonFields = [
    h('div', { class: 'wide' }, h('label', {}, clipUp, ' Clipboard browser → remote'), ' ',
      h('label', {}, clipDown, ' Clipboard remote → browser')),
    h('div', { class: 'wide' }, h('label', {}, ask, ' Ask for the user name and password at every connection (never stored)')),
    h('div', {}, h('label', { for: 'conn-recording' }, 'Recording (the user sees REC)'), recording),
    h('div', {}, h('label', {}, ownerPlays, ' The session\'s owner may play its recordings')),
    h('div', {}, h('label', { for: 'conn-sharing' }, 'Live sharing by the session\'s owner'), sharing),
    h('div', {}, h('label', { for: 'conn-shadowing' }, 'Admins join uninvited (the owner is told)'), shadowing),
  ];
  const containerFields = [
    h('div', { class: 'wide' }, h('label', { for: 'conn-image' }, 'Image (a VNC desktop; a fresh container per session)'), image, imageList),
    h('div', {}, h('label', { for: 'conn-cpus' }, 'CPU cores'), cpus),
    h('div', {}, h('label', { for: 'conn-memory' }, 'Memory (MiB)'), memory),
    h('div', {}, h('label', { for: 'conn-pids' }, 'Process limit'), pids),
    h('div', {}, h('label', { for: 'conn-geometry' }, 'Desktop size (WxH)'), geometry),
    h('div', {}, h('label', { for: 'conn-warm', title: 'Containers each agent keeps started for this connection: a launch takes one at once. Never reused: each ends with its session and is replaced.' },
      'Warm pool (spares per agent)'), warm),
    h('div', {}, h('label', { title: 'the image\'s PulseAudio output, Opus-encoded by the bridge' }, sound, ' Sound')),
  ];
  const hostField = h('div', {}, h('label', { for: 'conn-host' }, 'Host'), host);
  const portField = h('div', {}, h('label', { for: 'conn-port' }, 'Port'), port);
  const passwordField = h('div', {}, h('label', { for: 'conn-password' }, 'Password'), password);
  const showFields = () => {
    const container = protocol.value === 'container';
    for (const f of containerFields) f.hidden = !container;
    for (const f of [hostField, portField, passwordField, commonFields[1]]) if (f) f.hidden = container;
    host.required = !container;
    userField.hidden = protocol.value === 'vnc' || container;
    for (const f of sshFields) f.hidden = protocol.value !== 'ssh';
    for (const f of rdpFields) f.hidden = protocol.value !== 'rdp';
    hostKeyField.hidden = protocol.value === 'vnc' || container;
    const label = hostKeyField.querySelector('label');
    if (label) label.textContent = protocol.value === 'rdp'
      ? 'Certificate fingerprint (SHA256:… or hex)' : 'Host key fingerprint (SHA256:…)';
  };
  protocol.addEventListener('change', () => {
    if (Object.values(DEFAULT_PORTS).includes(Number(port.value))) port.value = String(DEFAULT_PORTS[protocol.value] ?? 22);
    showFields();
  });
  showFields();
  const form = h('form', { id: 'conn-form', class: 'editor' },
    h('div', {}, h('label', { for: 'conn-name' }, 'Name'), name),
    h('div', {}, h('label', { for: 'conn-protocol' }, 'Protocol'), protocol),
    h('div', {}, h('label', { for: 'conn-folder' }, 'Folder'), folder),
    hostField, portField, userField, passwordField,
    ...sshFields, hostKeyField, ...rdpFields, ...containerFields, ...commonFields,
    err, h('div', { class: 'buttons' }, save, cancel));
  cancel.addEventListener('click', onCancel);
  const submit = async (body: api.ConnectionInput) => {
    save.disabled = true;
    try {
      if (existing) await api.updateConnection(existing.id, body);
      else await api.createConnection(body);
      onSaved();
    } catch (e2) {
      err.textContent = errorText(e2);
    } finally {
      save.disabled = false;
    }
  };
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.textContent = '';
    if (protocol.value === 'container') {
      const workspace: api.WorkspaceSpec = {
        image: image.value.trim(), cpu_millis: Math.round(Number(cpus.value) * 1000), memory_mb: Number(memory.value),
        pids_limit: Number(pids.value), geometry: geometry.value.trim() || null, warm: Number(warm.value), audio: sound.checked,
      };
      const settings = { ...(st ?? {}), workspace, clipboard_up: clipUp.checked, clipboard_down: clipDown.checked,
        recording: recording.value as api.Recording, recording_owner_access: ownerPlays.checked, sharing: sharing.value as api.ShareLimit,
        shadowing: shadowing.value as api.ShareLimit } as api.ConnectionSettings;
      await submit({ name: name.value.trim(), protocol: 'container', settings, folder_id: folder.value || null });
      return;
    }
    const body: api.ConnectionInput = {
      name: name.value.trim(), protocol: protocol.value, host: host.value.trim(), port: Number(port.value),
      username: username.value, host_key_fingerprint: hostKey.value.trim(), folder_id: folder.value || null,
    };
    const wh = /^\s*(\d+)\s*[x×]\s*(\d+)\s*$/.exec(size.value);
    if (size.value.trim() && !wh) {
      err.textContent = 'desktop size must look like 1280x720';
      return;
    }
    body.settings = {
      // Settings the editor does not show (e.g. h264) are kept.
      ...(st ?? {}),
      recording: recording.value as api.Recording,
      recording_owner_access: ownerPlays.checked,
      sharing: sharing.value as api.ShareLimit,
      shadowing: shadowing.value as api.ShareLimit,
      domain: domain.value.trim() || null, security: security.value as api.ConnectionSettings['security'],
      width: wh ? Number(wh[1]) : null, height: wh ? Number(wh[2]) : null, color_depth: Number(depth.value),
      clipboard_up: clipUp.checked, clipboard_down: clipDown.checked, ask_credentials: ask.checked,
      danger_accept_any_certificate: anyCert.checked, workspace: null,
      locale: locale.value.trim() || null,
      files: filesPolicy.value as api.FilePolicy, files_max_mb: Number(filesMax.value) || 1024,
    };
    if (password.value) body.password = password.value;
    if (key.value.trim()) body.private_key = key.value;
    await submit(body);
  });
  return form;
}

function fmtTime(t: number | null): string {
  return t ? new Date(t * 1000).toLocaleString() : '—';
}

/** Rows of the connection list per request: more come with "Show more" (search and paging on the server). */
const PAGE = 50;
/** The home page's "Recent": the connections the user started a session on last (still granted). */
const RECENT = 8;
/** At most this many favourites at the top of the home page (the others are in the list, starred). */
const FAVOURITES = 100;

function target(c: api.Connection): string {
  return c.protocol === 'container' ? workspaceSummary(c.settings?.workspace) : `${c.username ? `${c.username}@` : ''}${c.host}:${c.port}`;
}

/** The header cell of the favourite toggles' column (named for screen readers). */
const starHeading = () => h('th', { class: 'star' }, h('span', { class: 'sr-only' }, 'Favourite'));

export async function showMain(me: api.Me, onLogout: () => void): Promise<void> {
  const refresh = () => void showMain(me, onLogout);
  const isAdmin = me.user.role === 'admin';
  const logout = h('button', { id: 'logout' }, 'Log out');
  logout.addEventListener('click', async () => {
    await api.logout().catch(() => undefined);
    onLogout();
  });
  const header = h('header', { class: 'top' }, h('span', { class: 'brand' }, 'Portico'),
    h('span', { class: 'muted' }, `${me.user.username} (${me.user.role})`), logout);

  const err = h('div', { class: 'error', role: 'alert' });
  const editorSlot = h('div');
  const newBtn = isAdmin ? h('button', { id: 'conn-new', class: 'primary' }, 'New connection') : null;
  const search = h('input', { id: 'conn-search', type: 'search', placeholder: 'Search by name, host or folder', autocomplete: 'off' });
  const count = h('span', { id: 'conn-count', class: 'muted' });
  const more = h('button', { id: 'conn-more', hidden: true }, 'Show more');
  const tbody = h('tbody', { id: 'conn-list' });
  // Favourites and recently used connections come first (those the user may still use). An auditor starts
  // nothing and changes nothing: no stars, nothing recent.
  const quick = me.user.role !== 'auditor';
  const favList = h('tbody', { id: 'fav-list' });
  const recentList = h('tbody', { id: 'recent-list' });
  const quickSection = (id: string, title: string, list: HTMLElement, last: string) =>
    h('section', { id, class: 'quick', hidden: true, 'aria-labelledby': `${id}-title` }, h('h3', { id: `${id}-title` }, title),
      h('table', {}, h('thead', {}, h('tr', {}, starHeading(), h('th', {}, 'Name'), h('th', {}, 'Folder'), h('th', {}, 'Protocol'),
        h('th', {}, last), h('th', {}))), list));
  const favSection = quickSection('favourites', 'Favourites', favList, 'Target');
  const recentSection = quickSection('recent', 'Recent', recentList, 'Last used');
  const connCard = h('section', { class: 'card' },
    h('h2', {}, 'Connections', h('span', { class: 'spacer' }), newBtn), editorSlot, favSection, recentSection,
    h('h3', { id: 'all-title', hidden: !quick }, 'All connections'),
    h('div', { class: 'inline-form' }, search, count),
    h('table', {}, h('thead', {}, h('tr', {}, starHeading(), h('th', {}, 'Name'), h('th', {}, 'Protocol'), h('th', {}, 'Target'), h('th', {}, 'Host key'), h('th', {}))), tbody),
    more, err);
  newBtn?.addEventListener('click', () => editorSlot.replaceChildren(connectionEditor(null, refresh, () => editorSlot.replaceChildren())));

  if (me.mfa_enrolment_required) {
    // Nothing else works for this login until it has a second factor.
    mount(header, h('main', { class: 'page' }, await mfaCard(me, async () => {
      const fresh = await api.me();
      if (fresh) void showMain(fresh, onLogout);
    })));
    return;
  }
  const page = h('main', { class: 'page' }, connCard);
  mount(header, page);

  // A session opens in its own tab (the list stays here): a link to this page with `#open=<id>`, which
  // starts the session there (below); middle-click and "open in new window" work as on any link.
  const openButton = (c: api.Connection): HTMLElement | null => {
    // An auditor reads the list and starts nothing.
    if (me.user.role === 'auditor') return null;
    return h('a', { class: 'conn-open button primary', href: `/#open=${encodeURIComponent(c.id)}`, target: '_blank', rel: 'noopener' },
      c.protocol === 'container' ? 'Launch' : 'Open');
  };
  // The star of a connection, in every row that shows it: a toggle button (aria-pressed) named after it.
  const markStar = (b: HTMLButtonElement, on: boolean) => {
    b.setAttribute('aria-pressed', String(on));
    b.textContent = on ? '★' : '☆';
    b.title = on ? 'Remove from favourites' : 'Add to favourites';
  };
  const star = (c: api.ListedConnection): HTMLElement => {
    const cell = h('td', { class: 'star' });
    if (!quick) return cell;
    const b = h('button', { type: 'button', class: 'conn-star', 'data-id': c.id, 'aria-label': `Favourite: ${c.name}` });
    markStar(b, c.favourite);
    b.addEventListener('click', async () => {
      const on = b.getAttribute('aria-pressed') !== 'true';
      err.textContent = '';
      b.disabled = true;
      try {
        await api.setFavourite(c.id, on);
        for (const other of page.querySelectorAll<HTMLButtonElement>('button.conn-star')) {
          if (other.dataset.id === c.id) markStar(other, on);
        }
        await loadQuick();
      } catch (e) {
        err.textContent = errorText(e);
      } finally {
        b.disabled = false;
      }
    });
    cell.append(b);
    return cell;
  };
  /** A row of "Favourites" or "Recent" (`kind`): the main list's rows alone are `conn-row`. */
  const quickRow = (c: api.ListedConnection, kind: string, last: string): HTMLElement =>
    h('tr', { class: kind, 'data-id': c.id, 'data-name': c.name },
      star(c), h('td', {}, c.name), h('td', { class: 'muted' }, c.folder_path ?? 'Top level'),
      h('td', {}, h('span', { class: 'tag' }, c.protocol)), h('td', {}, last), h('td', { class: 'actions' }, openButton(c)));
  const loadQuick = async () => {
    if (!quick) return;
    const [favs, recent] = await Promise.all([
      api.connections({ favourite: true, limit: FAVOURITES }),
      api.connections({ used: true, sort: 'last_used', limit: RECENT }),
    ]);
    favList.replaceChildren(...favs.items.map((c) => quickRow(c, 'fav-row', target(c))));
    if (favs.total > favs.items.length) {
      favList.append(h('tr', {}, h('td', { colspan: '6', class: 'muted' }, `${favs.total - favs.items.length} more in the list below`)));
    }
    recentList.replaceChildren(...recent.items.map((c) => quickRow(c, 'recent-row', fmtTime(c.last_used_at))));
    favSection.hidden = favs.total === 0;
    recentSection.hidden = recent.total === 0;
    // What the sections show now (the browser tests wait for it).
    favList.dataset.total = String(favs.total);
    recentList.dataset.total = String(recent.total);
  };

  const row = (c: api.ListedConnection): HTMLElement => {
    const container = c.protocol === 'container';
    const actions = h('td', { class: 'actions' }, openButton(c));
    if (isAdmin) {
      const edit = h('button', { class: 'conn-edit' }, 'Edit');
      edit.addEventListener('click', () => editorSlot.replaceChildren(connectionEditor(c, refresh, () => editorSlot.replaceChildren())));
      const access = h('button', { class: 'conn-access' }, 'Access');
      access.addEventListener('click', async () => {
        editorSlot.replaceChildren(await grantsEditor('connections', c.id, c.name, () => editorSlot.replaceChildren()));
      });
      const del = h('button', { class: 'conn-delete danger' }, 'Delete');
      del.addEventListener('click', async () => {
        if (!confirm(`Delete connection "${c.name}"?`)) return;
        try {
          await api.deleteConnection(c.id);
          refresh();
        } catch (e) {
          err.textContent = errorText(e);
        }
      });
      actions.append(edit, access, del);
    }
    return h('tr', { class: 'conn-row', 'data-id': c.id, 'data-name': c.name },
      star(c), h('td', {}, c.name), h('td', {}, h('span', { class: 'tag' }, c.protocol)),
      h('td', {}, target(c)),
      h('td', { class: 'muted' }, container ? 'one-time password' : c.host_key_fingerprint ?? (c.protocol === 'vnc' ? '—' : c.settings?.danger_accept_any_certificate ? 'any (insecure)' : 'trust on first use')), actions);
  };

  // The server returns the list grouped by folder (top level first): a heading row starts each folder.
  let loaded = 0;
  let lastFolder: string | null = null;
  let generation = 0;
  const load = async (append: boolean) => {
    const mine = ++generation;
    const q = search.value.trim();
    try {
      const p = await api.connections({ q, limit: PAGE, offset: append ? loaded : 0 });
      if (mine !== generation) return; // a newer search replaced this one
      if (!append) {
        tbody.replaceChildren();
        loaded = 0;
        lastFolder = null;
      }
      for (const c of p.items) {
        const folder = c.folder_path ?? '';
        if (folder !== lastFolder && (folder || lastFolder !== null)) {
          tbody.append(h('tr', { class: 'folder-heading' }, h('th', { colspan: '6' }, folder || 'Top level')));
        }
        lastFolder = folder;
        tbody.append(row(c));
      }
      loaded += p.items.length;
      if (p.total === 0) {
        tbody.append(h('tr', {}, h('td', { colspan: '6', class: 'muted' },
          q ? 'Nothing matches.' : isAdmin ? 'No connections yet: create one.' : 'No connection is shared with you yet.')));
      }
      count.textContent = `${p.total} connection${p.total === 1 ? '' : 's'}`;
      more.hidden = loaded >= p.total;
      // What the list shows now (the browser tests wait for it).
      tbody.dataset.query = q;
      tbody.dataset.total = String(p.total);
    } catch (e) {
      err.textContent = errorText(e);
    }
  };
  let timer = 0;
  search.addEventListener('input', () => {
    window.clearTimeout(timer);
    timer = window.setTimeout(() => void load(false), 150);
  });
  more.addEventListener('click', () => void load(true));
  await Promise.all([load(false), loadQuick().catch((e) => { err.textContent = errorText(e); })]);

  page.append(await sessionsCard(me, refresh));
  page.append(await sharedCard());
  page.append(await apiKeysCard());
  page.append(await mfaCard(me, refresh));
  if (isAdmin) {
    page.append(await groupsCard());
    page.append(await foldersCard(() => void load(false)));
    page.append(await bridgesCard());
    page.append(await agentsCard());
    page.append(await usersCard(me, refresh));
    page.append(await securityCard());
    page.append(await identityProvidersCard());
  }
  if (me.user.role !== 'user') {
    page.append(await recordingsCard(me, refresh));
    page.append(await eventsCard());
  } else if ((await api.recordings({ limit: 1 }).catch(() => ({ total: 0 }))).total > 0) {
    // A user's own recordings, where their connections let owners play them.
    page.append(await recordingsCard(me, refresh));
  }

  const played = /^#recording=(.+)$/.exec(location.hash);
  if (played) {
    history.replaceState(null, '', location.pathname);
    await openPlayer(decodeURIComponent(played[1] ?? ''), refresh);
    return;
  }
  const joining = joinRequest(location.hash);
  if (joining) {
    history.replaceState(null, '', location.pathname);
    try {
      await watch(joining, refresh);
    } catch (e) {
      err.textContent = `Could not join the session: ${errorText(e)}`;
    }
    return;
  }
  const m = /^#open=(.+)$/.exec(location.hash);
  if (m) {
    history.replaceState(null, '', location.pathname);
    try {
      const c = await api.connection(decodeURIComponent(m[1] ?? ''));
      await launch(c, me, refresh);
    } catch (e) {
      err.textContent = `Could not open the session: ${errorText(e)}`;
    }
  }
}

/** Session recordings (admins and auditors): search by user or connection name, play, delete (admins). */
async function recordingsCard(me: api.Me, refresh: () => void): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const q = h('input', { id: 'recordings-q', placeholder: 'user or connection', autocomplete: 'off' });
  const list = h('tbody', { id: 'recordings-list' });
  const info = h('span', { id: 'recordings-info', class: 'muted' });
  const load = async (): Promise<void> => {
    err.textContent = '';
    try {
      const page = await api.recordings({ q: q.value.trim() || undefined, limit: 20 });
      list.replaceChildren(...page.items.map((r) => {
        const play = h('button', { class: 'recording-play' }, 'Play');
        play.addEventListener('click', () => void openPlayer(r.id, refresh));
        const del = h('button', { class: 'danger recording-delete', hidden: me.user.role !== 'admin' }, 'Delete');
        del.addEventListener('click', async () => {
          if (!confirm(`Delete the recording of ${r.username} on ${r.connection_name}?`)) return;
          try {
            await api.deleteRecording(r.id);
            await load();
          } catch (e) {
            err.textContent = errorText(e);
          }
        });
        return h('tr', { class: 'recording-row', 'data-id': r.id, 'data-connection': r.connection_name },
          h('td', {}, fmtTime(r.created_at)), h('td', {}, r.username), h('td', {}, r.connection_name),
          h('td', {}, h('span', { class: 'tag' }, r.protocol)), h('td', {}, r.input ? 'with keystrokes' : ''),
          h('td', {}, r.completed_at ? fmtTime(r.ended_at ?? r.completed_at) : (r.ended_at ? 'cut short' : 'live')),
          h('td', {}, play, ' ', del));
      }));
      info.textContent = page.total === 0 ? 'No recordings.' : `${page.items.length} of ${page.total}`;
    } catch (e) {
      err.textContent = errorText(e);
    }
  };
  let timer = 0;
  q.addEventListener('input', () => {
    window.clearTimeout(timer);
    timer = window.setTimeout(() => void load(), 300);
  });
  await load();
  return h('section', { class: 'card', id: 'recordings-card' },
    h('h2', {}, 'Recordings'),
    h('p', { class: 'muted' }, 'Every search and playback is recorded as an event.'),
    h('div', { class: 'inline-form' }, q, info),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Started'), h('th', {}, 'User'), h('th', {}, 'Connection'),
      h('th', {}, 'Protocol'), h('th', {}, 'Input'), h('th', {}, 'Ended'), h('th', {}, ''))), list), err);
}

/** Live sessions other users shared with this one (directly or through a group): Join opens it in a tab. */
async function sharedCard(): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const list = h('tbody', { id: 'shared-sessions' });
  const card = h('section', { class: 'card', id: 'shared-card' }, h('h2', {}, 'Shared with me'),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Connection'), h('th', {}, 'Owner'), h('th', {}, 'Mode'),
      h('th', {}, 'Until'), h('th', {}))), list), err);
  try {
    const rows = await api.sharedWithMe();
    if (rows.length === 0) list.append(h('tr', {}, h('td', { colspan: '5', class: 'muted' }, 'Nothing is shared with you now.')));
    for (const s of rows) {
      list.append(h('tr', { class: 'shared-row', 'data-id': s.share_id, 'data-session': s.session_id },
        h('td', {}, s.connection_name), h('td', {}, s.owner), h('td', {}, s.mode === 'control' ? 'view and control' : 'view only'),
        h('td', {}, fmtTime(s.expires_at)),
        h('td', { class: 'actions' }, h('a', { class: 'shared-join button primary', href: `/#view=${encodeURIComponent(s.share_id)}`,
          target: '_blank', rel: 'noopener' }, 'Join'))));
    }
  } catch (e) {
    err.textContent = errorText(e);
  }
  return card;
}

/** Live sessions (own; all for admins), each with an End button: an admin's End is the kill switch. */
async function sessionsCard(me: api.Me, refresh: () => void): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const list = h('tbody', { id: 'sessions' });
  const card = h('section', { class: 'card' }, h('h2', {}, 'Live sessions'),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Connection'), h('th', {}, 'User'), h('th', {}, 'State'),
      h('th', {}, 'Started'), h('th', {}))), list), err);
  try {
    const [rows, users] = await Promise.all([
      api.sessions(),
      me.user.role === 'user' ? Promise.resolve([] as api.User[]) : api.users().then((p) => p.items, () => []),
    ]);
    // The names of the sessions' connections (one request each; a revoked one shows its id).
    const ids = [...new Set(rows.map((s) => s.connection_id))];
    const names = await Promise.all(ids.map((id) => api.connection(id).then((c) => c.name, () => null)));
    const conns = ids.map((id, i) => ({ id, name: names[i] })).filter((c): c is { id: string; name: string } => c.name !== null);
    const userName = (id: string) => id === me.user.id ? me.user.username : users.find((u) => u.id === id)?.username ?? id.slice(0, 8);
    if (rows.length === 0) list.append(h('tr', {}, h('td', { colspan: '5', class: 'muted' }, 'No live session.')));
    for (const s of rows) {
      const conn = conns.find((c) => c.id === s.connection_id);
      const end = h('button', { class: 'session-kill danger' }, 'End');
      end.addEventListener('click', async () => {
        try {
          await api.endSession(s.id);
          refresh();
        } catch (e) {
          err.textContent = errorText(e);
        }
      });
      list.append(h('tr', { class: 'session-row', 'data-id': s.id, 'data-connection': conn?.name ?? '' },
        h('td', {}, conn?.name ?? s.connection_id), h('td', {}, userName(s.user_id)),
        h('td', {}, h('span', { class: 'tag' }, s.state)), h('td', {}, fmtTime(s.created_at)), h('td', { class: 'actions' },
          // An administrator may watch another user's session where its connection's policy allows it.
          me.user.role === 'admin' && s.user_id !== me.user.id
            ? h('a', { class: 'session-shadow button', href: `/#shadow=${encodeURIComponent(s.id)}`, target: '_blank', rel: 'noopener',
              title: 'watch without an invitation (the owner is told)' }, 'Watch')
            : null,
          me.user.role === 'auditor' ? null : end)));
    }
  } catch (e) {
    err.textContent = errorText(e);
  }
  return card;
}

function workspaceSummary(w: api.WorkspaceSpec | null | undefined): string {
  if (!w) return '—';
  return `${w.image} · ${w.cpu_millis / 1000} cores · ${w.memory_mb} MiB`;
}

/** Docker agents: an agent that never registered shows as failed with the reason; a refused registration
 * under a registered agent's name (a wrong token, another identity) is shown on its row without changing it.
 * Removing an agent frees its name for another agent identity. */
async function agentsCard(): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const list = h('tbody', { id: 'agents' });
  const card = h('section', { class: 'card' }, h('h2', {}, 'Docker agents'),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'State'), h('th', {}, 'Docker'),
      h('th', {}, 'Capacity'), h('th', {}, 'Networks'), h('th', {}, 'Workspaces'), h('th', {}, 'Last heartbeat'), h('th', {}))), list), err);
  const load = async () => {
    list.replaceChildren();
    const agents = await api.agents();
    if (agents.length === 0) list.append(h('tr', {}, h('td', { colspan: '8', class: 'muted' }, 'No agent has registered yet.')));
    for (const a of agents) {
      const state = h('span', { class: `tag state-${a.state}` }, a.state);
      const refused = a.refused && a.id
        ? h('div', { class: 'error' }, `refused registration from ${a.refused.remote_addr} (${a.refused.attempts}×): ${a.refused.reason}`)
        : '';
      const actions = h('td', { class: 'actions' });
      const id = a.id;
      if (id && a.state !== 'down') {
        const draining = a.state === 'draining';
        const drain = h('button', { class: 'agent-drain', title: draining ? 'place new workspaces on it again' : 'no new workspaces on it; the live ones run to their end' },
          draining ? 'Take back' : 'Drain');
        drain.addEventListener('click', async () => {
          await api.drainAgent(id, !draining).catch((e) => { err.textContent = errorText(e); });
          await load().catch((e) => { err.textContent = errorText(e); });
        });
        actions.append(drain);
      }
      if (id) {
        const del = h('button', { class: 'danger' }, 'Remove');
        del.addEventListener('click', async () => {
          if (!confirm(`Remove agent ${a.name}? Its workspaces end, and any agent may then register under this name.`)) return;
          await api.deleteAgent(id).catch((e) => { err.textContent = errorText(e); });
          await load().catch((e) => { err.textContent = errorText(e); });
        });
        actions.append(del);
      }
      list.append(h('tr', { class: 'agent-row', 'data-name': a.name },
        h('td', {}, a.name), h('td', {}, state, a.last_error ? h('div', { class: 'error' }, a.last_error) : '', refused),
        h('td', {}, a.docker_version || '—'), h('td', {}, `${a.cores} cores · ${a.memory_mb} MiB`),
        h('td', {}, (a.networks ?? []).map((n) => n.subnet).join(', ') || '—'),
        h('td', {}, String(a.running), a.spares && (a.spares.ready || a.spares.starting)
          ? h('div', { class: 'agent-spares', title: 'warm pool: containers started ahead of launches' },
            `${a.spares.ready} spare${a.spares.ready === 1 ? '' : 's'} ready${a.spares.starting ? `, ${a.spares.starting} starting` : ''}`)
          : ''),
        h('td', {}, fmtTime(a.last_heartbeat_at)), actions));
    }
  };
  await load().catch((e) => { err.textContent = errorText(e); });
  return card;
}

/** Bridges: each registration is an identity (a restarted bridge shows its old identity as stopped or
 * down). Drain: no new sessions there, the live ones run to their end (or a deadline), then it stops. */
async function bridgesCard(): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const list = h('tbody', { id: 'bridges' });
  const showGone = h('input', { type: 'checkbox', id: 'bridges-show-gone' });
  const card = h('section', { class: 'card' }, h('h2', {}, 'Bridges'),
    h('label', { class: 'muted' }, showGone, ' show stopped, down and revoked identities'),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Route'), h('th', {}, 'State'),
      h('th', {}, 'Sessions'), h('th', {}, 'Address'), h('th', {}, 'Last seen'), h('th', {}))), list), err);
  const load = async () => {
    const all = await api.bridges();
    const shown = showGone.checked ? all : all.filter((b) => b.state === 'healthy' || b.state === 'draining' || b.live_sessions > 0);
    list.replaceChildren();
    if (shown.length === 0) list.append(h('tr', {}, h('td', { colspan: '7', class: 'muted' }, 'No live bridge.')));
    for (const b of shown) {
      const actions = h('td', { class: 'actions' });
      if (b.state === 'healthy' || b.state === 'draining') {
        const deadline = h('input', { type: 'number', min: '0', class: 'bridge-drain-deadline', placeholder: 'deadline (s)', title: 'seconds the live sessions may still run; empty: until they end' });
        const drain = h('button', { class: 'bridge-drain' }, b.state === 'draining' ? 'Set deadline' : 'Drain');
        drain.addEventListener('click', async () => {
          const secs = deadline.value.trim() === '' ? null : Number(deadline.value);
          await api.drainBridge(b.id, secs).catch((e) => { err.textContent = errorText(e); });
          await load().catch((e) => { err.textContent = errorText(e); });
        });
        actions.append(deadline, drain);
      }
      const until = b.state === 'draining' && b.drain_deadline_at ? h('div', { class: 'muted' }, `until ${fmtTime(b.drain_deadline_at)}`) : '';
      list.append(h('tr', { class: 'bridge-row', 'data-name': b.name, 'data-state': b.state },
        h('td', {}, b.name), h('td', {}, b.route ?? '—'), h('td', {}, h('span', { class: `tag state-${b.state}` }, b.state), until),
        h('td', {}, String(b.live_sessions)), h('td', {}, b.remote_addr), h('td', {}, fmtTime(b.last_seen_at)), actions));
    }
  };
  showGone.addEventListener('change', () => void load().catch((e) => { err.textContent = errorText(e); }));
  await load().catch((e) => { err.textContent = errorText(e); });
  return card;
}

async function apiKeysCard(): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const shown = h('div');
  const name = h('input', { id: 'apikey-name', placeholder: 'key name, e.g. ci' });
  const scope = h('select', { id: 'apikey-scope', title: 'what the key may do' },
    h('option', { value: 'sessions' }, 'sessions: start and end sessions, read'),
    h('option', { value: 'read' }, 'read only'),
    h('option', { value: 'admin' }, 'admin: everything you may do'));
  const days = h('input', { id: 'apikey-days', type: 'number', min: '1', max: '3650', value: '90', title: 'expires after this many days' });
  const create = h('button', { id: 'apikey-create' }, 'Create API key');
  const list = h('tbody');
  const card = h('section', { class: 'card' }, h('h2', {}, 'API keys'),
    h('div', { class: 'inline-form' }, name, scope, days, h('span', { class: 'muted' }, 'days'), create), shown,
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Scope'), h('th', {}, 'Created'), h('th', {}, 'Expires'), h('th', {}, 'Last used'), h('th', {}))), list), err);
  const load = async () => {
    list.replaceChildren();
    for (const k of await api.apiKeys()) {
      const del = h('button', { class: 'danger' }, 'Revoke');
      del.addEventListener('click', async () => {
        await api.deleteApiKey(k.id).catch((e) => { err.textContent = errorText(e); });
        await load();
      });
      list.append(h('tr', {}, h('td', {}, k.name), h('td', {}, k.scope), h('td', {}, fmtTime(k.created_at)), h('td', {}, fmtTime(k.expires_at)), h('td', {}, fmtTime(k.last_used_at)), h('td', { class: 'actions' }, del)));
    }
  };
  create.addEventListener('click', async () => {
    err.textContent = '';
    try {
      const k = await api.createApiKey(name.value.trim(), (scope as HTMLSelectElement).value as api.KeyScope, Number((days as HTMLInputElement).value));
      shown.replaceChildren(h('p', { class: 'muted' }, 'Copy this key now; it is not shown again:'), h('div', { class: 'secret-key', id: 'apikey-value' }, k.key));
      name.value = '';
      await load();
    } catch (e) {
      err.textContent = errorText(e);
    }
  });
  await load().catch((e) => { err.textContent = errorText(e); });
  return card;
}

async function usersCard(me: api.Me, refresh: () => void): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const name = h('input', { id: 'user-name', placeholder: 'user name', autocomplete: 'off' });
  const pass = h('input', { id: 'user-password', type: 'password', placeholder: 'password (8+ characters)', autocomplete: 'new-password' });
  const role = h('select', { id: 'user-role' }, h('option', { value: 'user' }, 'user'), h('option', { value: 'auditor' }, 'auditor'),
    h('option', { value: 'admin' }, 'admin'));
  const create = h('button', { id: 'user-create' }, 'Add user');
  const list = h('tbody');
  create.addEventListener('click', async () => {
    err.textContent = '';
    try {
      await api.createUser(name.value.trim(), pass.value, role.value);
      refresh();
    } catch (e) {
      err.textContent = errorText(e);
    }
  });
  try {
    for (const u of (await api.users()).items) {
      const reset = u.mfa_enabled ? h('button', { class: 'user-mfa-reset' }, 'Reset 2FA') : null;
      reset?.addEventListener('click', async () => {
        if (!confirm(`Remove the second factor of "${u.username}"? They log in with the password alone until they set it up again.`)) return;
        await api.mfaReset(u.id).then(refresh, (e) => { err.textContent = errorText(e); });
      });
      const del = h('button', { class: 'danger', disabled: u.id === me.user.id }, 'Delete');
      del.addEventListener('click', async () => {
        if (!confirm(`Delete user "${u.username}"?`)) return;
        await api.deleteUser(u.id).then(refresh, (e) => { err.textContent = errorText(e); });
      });
      list.append(h('tr', {}, h('td', {}, u.username), h('td', {}, u.role), h('td', {}, fmtTime(u.created_at)), h('td', { class: 'actions' }, reset, del)));
    }
  } catch (e) {
    err.textContent = errorText(e);
  }
  return h('section', { class: 'card' }, h('h2', {}, 'Users'),
    h('div', { class: 'inline-form' }, name, pass, role, create),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'User'), h('th', {}, 'Role'), h('th', {}, 'Created'), h('th', {}))), list), err);
}

/** Which roles must log in with a second factor (their accounts without one may only set it up), and
 * whether local accounts other than admins may log in (single sign-on only). */
async function securityCard(): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const roles: api.Role[] = ['admin', 'auditor', 'user'];
  const boxes = roles.map((r) => h('input', { type: 'checkbox', id: `mfa-required-${r}`, value: r }));
  const adminsOnly = h('input', { type: 'checkbox', id: 'local-login-admins-only' });
  const save = h('button', { id: 'security-save' }, 'Save');
  const saved = h('span', { class: 'muted', id: 'security-saved' });
  try {
    const cur = await api.securitySettings();
    for (const b of boxes) b.checked = cur.mfa_required_roles.includes(b.value as api.Role);
    adminsOnly.checked = cur.local_login_admins_only;
  } catch (e) {
    err.textContent = errorText(e);
  }
  save.addEventListener('click', async () => {
    err.textContent = '';
    saved.textContent = '';
    try {
      await api.setSecuritySettings({
        mfa_required_roles: boxes.filter((b) => b.checked).map((b) => b.value as api.Role),
        local_login_admins_only: adminsOnly.checked,
      });
      saved.textContent = 'saved';
    } catch (e) {
      err.textContent = errorText(e);
    }
  });
  return h('section', { class: 'card' }, h('h2', {}, 'Security'),
    h('p', { class: 'muted' }, 'Two-factor authentication is required for these roles:'),
    h('div', { class: 'inline-form' }, ...boxes.flatMap((b, i) => [h('label', { for: b.id }, b, ` ${roles[i]}`)])),
    h('p', {}, h('label', { for: adminsOnly.id }, adminsOnly,
      ' Only admins may log in with a local password (everyone else signs in with single sign-on or a directory)')),
    h('div', { class: 'inline-form' }, save, saved), err);
}
