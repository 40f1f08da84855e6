// Live sharing on the session page (docs/security.md, "Sharing"): the owner's Share panel (who watches now,
// share with a user or as a link, view-only or in control, switch a share's mode, revoke one or all), and
// the viewer's side (joining through `/#join=<link>`, `/#view=<share>` or an administrator's
// `/#shadow=<session>`). The bridge enforces every mode; the page only reflects it.

import * as api from './api';
import { h, errorText } from './dom';
import type { ShareInfo } from './wire';
import type { SessionTarget } from './session';

const modeText = (m: api.ShareMode) => (m === 'control' ? 'in control' : 'view only');

/** The owner's sharing controls: a toolbar button and badge, and the panel they open over the stage. */
export class OwnerSharing {
  readonly controls: HTMLElement[];
  private readonly badge: HTMLElement;
  private readonly panel: HTMLElement;
  private readonly watching: HTMLElement;
  private readonly list: HTMLElement;
  private readonly err: HTMLElement;
  private info: ShareInfo = { viewers: [] };

  constructor(private readonly sessionId: () => string, stage: HTMLElement) {
    const open = h('button', { id: 'session-share', title: 'share this session live' }, 'Share');
    this.badge = h('span', { id: 'session-viewers', class: 'viewers', hidden: true });
    this.controls = [open, this.badge];
    this.watching = h('ul', { id: 'share-watching' });
    this.list = h('tbody', { id: 'share-list' });
    this.err = h('div', { id: 'share-error', class: 'error', role: 'alert' });
    const mode = h('select', { id: 'share-mode' },
      h('option', { value: 'view' }, 'View only'), h('option', { value: 'control' }, 'View and control'));
    const user = h('input', { id: 'share-user', placeholder: 'user name', autocomplete: 'off' });
    const addUser = h('button', { id: 'share-user-add', type: 'button' }, 'Share with user');
    const link = h('button', { id: 'share-link', type: 'button' }, 'Create link');
    const linkUrl = h('input', { id: 'share-link-url', readonly: true, hidden: true });
    const stop = h('button', { id: 'share-revoke-all', type: 'button', class: 'danger' }, 'Stop sharing');
    const close = h('button', { id: 'share-close', type: 'button' }, 'Close');
    this.panel = h('div', { id: 'share-panel', class: 'share-panel', hidden: true },
      h('h3', {}, 'Watching now'), this.watching,
      h('h3', {}, 'Share'), h('div', { class: 'inline-form' }, mode, user, addUser, link), linkUrl,
      h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'With'), h('th', {}, 'Mode'), h('th', {}, 'Expires'), h('th', {}))), this.list),
      h('div', { class: 'inline-form' }, stop, close), this.err);
    stage.parentElement?.append(this.panel);
    open.addEventListener('click', () => {
      this.panel.hidden = !this.panel.hidden;
      if (!this.panel.hidden) void this.load();
    });
    close.addEventListener('click', () => { this.panel.hidden = true; });
    const create = async (body: api.ShareBody) => {
      this.err.textContent = '';
      try {
        const s = await api.createShare(this.sessionId(), body);
        if (s.link_url) {
          linkUrl.value = s.link_url;
          linkUrl.hidden = false;
          linkUrl.select();
          if (navigator.clipboard) void navigator.clipboard.writeText(s.link_url).catch(() => undefined);
        }
        await this.load();
      } catch (e) {
        this.err.textContent = errorText(e);
      }
    };
    addUser.addEventListener('click', () => {
      if (user.value.trim()) void create({ mode: mode.value as api.ShareMode, username: user.value.trim() });
    });
    link.addEventListener('click', () => void create({ mode: mode.value as api.ShareMode, link: true }));
    stop.addEventListener('click', async () => {
      try {
        await api.revokeShare(this.sessionId(), null);
        await this.load();
      } catch (e) {
        this.err.textContent = errorText(e);
      }
    });
  }

  /** Who watches now, as the bridge says (a SHARE message). */
  update(info: ShareInfo): void {
    this.info = info;
    const n = info.viewers.length;
    this.badge.hidden = n === 0;
    this.badge.textContent = `👁 ${n} watching`;
    this.badge.title = info.viewers.map((v) => `${v.name} (${modeText(v.mode)}${v.shadow ? ', administrator' : ''})`).join('\n');
    this.badge.dataset.viewers = info.viewers.map((v) => v.name).join(',');
    this.badge.classList.toggle('shadowed', info.viewers.some((v) => v.shadow));
    this.watching.replaceChildren(...(n === 0
      ? [h('li', { class: 'muted' }, 'Nobody.')]
      : info.viewers.map((v) => h('li', { class: 'share-viewer', 'data-name': v.name, 'data-mode': v.mode },
        `${v.name} · ${modeText(v.mode)}${v.shadow ? ' · administrator, uninvited' : ''}`))));
    if (!this.panel.hidden) void this.load();
  }

  private async load(): Promise<void> {
    try {
      const all = await api.shares(this.sessionId());
      const live = all.shares.filter((s) => s.revoked_at === null && s.expires_at * 1000 > Date.now());
      this.list.replaceChildren(...live.map((s) => {
        const mode = h('select', { class: 'share-row-mode' },
          h('option', { value: 'view', selected: s.mode === 'view' }, 'view only'),
          h('option', { value: 'control', selected: s.mode === 'control' }, 'control'));
        mode.addEventListener('change', async () => {
          try {
            await api.setShareMode(this.sessionId(), s.id, mode.value as api.ShareMode);
          } catch (e) {
            this.err.textContent = errorText(e);
            mode.value = s.mode;
          }
        });
        const revoke = h('button', { class: 'share-revoke danger' }, 'Revoke');
        revoke.addEventListener('click', async () => {
          try {
            await api.revokeShare(this.sessionId(), s.id);
            await this.load();
          } catch (e) {
            this.err.textContent = errorText(e);
          }
        });
        const viewers = all.viewers.filter((v) => v.share_id === s.id).map((v) => v.username);
        const who = s.kind === 'link' ? 'anyone with the link' : s.kind === 'shadow' ? 'administrator (uninvited)' : `${s.kind} ${s.subject_id?.slice(0, 8) ?? ''}`;
        return h('tr', { class: 'share-row', 'data-id': s.id, 'data-kind': s.kind },
          h('td', {}, who, viewers.length ? h('div', { class: 'muted' }, viewers.join(', ')) : null), h('td', {}, mode),
          h('td', {}, new Date(s.expires_at * 1000).toLocaleTimeString()), h('td', {}, revoke));
      }));
      if (live.length === 0) this.list.append(h('tr', {}, h('td', { colspan: '4', class: 'muted' }, 'Not shared.')));
    } catch (e) {
      this.err.textContent = errorText(e);
    }
    void this.info;
  }
}

/** How this page joins a shared session, from its address (`/#join=…`, `/#view=…`, `/#shadow=…`). */
export function joinRequest(hash: string): api.JoinBody | null {
  const m = /^#(join|view|shadow)=([^&]+)(?:&mode=(view|control))?$/.exec(hash);
  if (!m) return null;
  const value = decodeURIComponent(m[2] ?? '');
  if (m[1] === 'join') return { link: value };
  if (m[1] === 'view') return { share_id: value };
  return { session_id: value, mode: (m[3] as api.ShareMode | undefined) ?? 'view' };
}

/** Join: a viewer token for the bridge that holds the session (asked again for "Join again"). */
export async function joinTarget(body: api.JoinBody): Promise<{ target: SessionTarget; joined: api.Joined }> {
  const j = await api.join(body);
  return {
    joined: j,
    target: { sessionId: j.session_id, token: j.token, wsUrl: j.ws_url, title: `${j.owner}'s session` },
  };
}
