// The events page of admins and auditors: what happened (logins, changes, sessions, agents...), newest
// first, filtered by type, user and session on the server, one page at a time.

import * as api from './api';
import { h, errorText } from './dom';

/** Events per page. */
const PAGE = 50;

function fmtAt(ms: number): string {
  return new Date(ms).toLocaleString();
}

/** The details of an event as short `key: value` text (objects as compact JSON). */
function detailsText(d: Record<string, unknown>): string {
  return Object.entries(d)
    .map(([k, v]) => `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join('; ');
}

export async function eventsCard(): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const type = h('select', { id: 'events-type' }, h('option', { value: '' }, 'All types'));
  const user = h('select', { id: 'events-user' }, h('option', { value: '' }, 'All users'));
  const session = h('input', { id: 'events-session', placeholder: 'session id', autocomplete: 'off' });
  const list = h('tbody', { id: 'events-list' });
  const info = h('span', { id: 'events-info', class: 'muted' });
  const newer = h('button', { id: 'events-newer' }, 'Newer');
  const older = h('button', { id: 'events-older' }, 'Older');
  const reload = h('button', { id: 'events-reload' }, 'Refresh');
  const names = new Map<string, string>();
  let offset = 0;

  const who = (id: string | null): string => (id ? names.get(id) ?? id.slice(0, 8) : '—');

  async function load(): Promise<void> {
    err.textContent = '';
    try {
      const page = await api.events({
        type: type.value || undefined,
        user_id: user.value || undefined,
        session_id: session.value.trim() || undefined,
        limit: PAGE,
        offset,
      });
      list.replaceChildren(...page.items.map((e) => h('tr', { class: 'event-row', 'data-type': e.type },
        h('td', {}, fmtAt(e.at)), h('td', {}, h('span', { class: 'tag' }, e.type)), h('td', {}, who(e.actor_id)),
        h('td', {}, who(e.user_id)), h('td', {}, e.client_addr ?? '—'),
        h('td', { title: e.session_id ?? '' }, e.session_id ? e.session_id.slice(0, 8) : '—'),
        h('td', {}, detailsText(e.details)))));
      const last = Math.min(offset + page.items.length, page.total);
      info.textContent = page.total === 0 ? 'No events.' : `${offset + 1}–${last} of ${page.total}`;
      newer.disabled = offset === 0;
      older.disabled = last >= page.total;
    } catch (e) {
      err.textContent = errorText(e);
    }
  }

  const restart = (): void => {
    offset = 0;
    void load();
  };
  type.addEventListener('change', restart);
  user.addEventListener('change', restart);
  reload.addEventListener('click', restart);
  let timer = 0;
  session.addEventListener('input', () => {
    window.clearTimeout(timer);
    timer = window.setTimeout(restart, 300);
  });
  newer.addEventListener('click', () => {
    offset = Math.max(0, offset - PAGE);
    void load();
  });
  older.addEventListener('click', () => {
    offset += PAGE;
    void load();
  });

  let retention = '';
  try {
    const known = await api.eventTypes();
    type.append(...known.types.map((t) => h('option', { value: t }, t)));
    retention = known.retention_days === 0
      ? 'Events are not kept here (retention 0): they are only forwarded.'
      : `Kept for ${known.retention_days} days.`;
    for (const u of (await api.users({ limit: 1000 })).items) {
      names.set(u.id, u.username);
      user.append(h('option', { value: u.id }, u.username));
    }
  } catch (e) {
    err.textContent = errorText(e);
  }
  await load();
  return h('section', { class: 'card', id: 'events-card' },
    h('h2', {}, 'Events', h('span', { class: 'spacer' }), reload),
    h('p', { class: 'muted' }, retention),
    h('div', { class: 'inline-form' }, type, user, session),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Time'), h('th', {}, 'Type'), h('th', {}, 'By'),
      h('th', {}, 'User'), h('th', {}, 'Client'), h('th', {}, 'Session'), h('th', {}, 'Details'))), list),
    h('div', { class: 'inline-form' }, newer, info, older), err);
}
