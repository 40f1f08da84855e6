// Who may reach what, for admins: groups and their members, folders, and the grants of a folder or a
// connection. Lists come from the server a page at a time; pickers search on the server too.

import * as api from './api';
import { h, errorText } from './dom';

/** A checkbox list of users or groups, searched on the server; `chosen` holds the ids across searches. */
function picker(kind: 'users' | 'groups', chosen: Set<string>, id: string): HTMLElement {
  const search = h('input', { type: 'search', class: 'picker-search', placeholder: `search ${kind}`, autocomplete: 'off' });
  const list = h('div', { class: 'picker-list', id });
  let gen = 0;
  const load = async () => {
    const mine = ++gen;
    const q = search.value.trim();
    const page = kind === 'users'
      ? (await api.users({ q, limit: 100 })).items.map((u) => ({ id: u.id, label: `${u.username} (${u.role})` }))
      : (await api.groups({ q, limit: 100 })).items.map((g) => ({ id: g.id, label: g.name }));
    if (mine !== gen) return;
    list.replaceChildren(...page.map((x) => {
      const box = h('input', { type: 'checkbox', value: x.id, checked: chosen.has(x.id) });
      box.addEventListener('change', () => { if (box.checked) chosen.add(x.id); else chosen.delete(x.id); });
      return h('label', { class: 'picker-item', 'data-label': x.label }, box, ' ', x.label);
    }));
    list.dataset.query = q;
  };
  let timer = 0;
  search.addEventListener('input', () => { window.clearTimeout(timer); timer = window.setTimeout(() => void load(), 200); });
  void load();
  return h('div', { class: 'picker' }, h('div', { class: 'muted' }, kind === 'users' ? 'Users' : 'Groups'), search, list);
}

/** The grants of a folder or a connection: pick users and groups, save replaces them. */
export async function grantsEditor(kind: api.GrantTarget, id: string, title: string, onDone: () => void): Promise<HTMLElement> {
  const current = await api.grants(kind, id);
  const users = new Set(current.user_ids);
  const groups = new Set(current.group_ids);
  const err = h('div', { class: 'error', role: 'alert' });
  const save = h('button', { class: 'primary', id: 'grants-save' }, 'Save access');
  const cancel = h('button', {}, 'Cancel');
  save.addEventListener('click', async () => {
    try {
      await api.setGrants(kind, id, { user_ids: [...users], group_ids: [...groups] });
      onDone();
    } catch (e) {
      err.textContent = errorText(e);
    }
  });
  cancel.addEventListener('click', onDone);
  return h('div', { class: 'editor', id: 'grants-editor' },
    h('h3', {}, `Who may use ${title}`),
    h('p', { class: 'muted' }, kind === 'folders' ? 'Covers every subfolder and connection inside. Removing someone ends their sessions at once.' : 'Removing someone ends their sessions at once.'),
    h('div', { class: 'pickers' }, picker('groups', groups, 'grants-groups'), picker('users', users, 'grants-users')),
    h('div', { class: 'actions' }, save, cancel), err);
}

/** Groups: create (with limits), delete, and edit members. */
export async function groupsCard(): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const slot = h('div');
  const name = h('input', { id: 'group-name', placeholder: 'group name', autocomplete: 'off' });
  const max = h('input', { id: 'group-max', type: 'number', min: '1', max: '1000', placeholder: 'max sessions (empty: no limit)' });
  const protocols = h('input', { id: 'group-protocols', placeholder: 'protocols, e.g. ssh,rdp (empty: any)' });
  // Members' sessions are recorded at least so, whatever their connections say.
  const recording = h('select', { id: 'group-recording', title: "members' sessions are recorded at least so" },
    h('option', { value: 'off' }, 'recording: as the connection says'), h('option', { value: 'on' }, 'recording: always'),
    h('option', { value: 'keystrokes' }, 'recording: always, with keystrokes'));
  const create = h('button', { id: 'group-create' }, 'Add group');
  const list = h('tbody', { id: 'groups' });
  const load = async () => {
    const page = await api.groups();
    list.replaceChildren(...page.items.map((g) => {
      const edit = h('button', { class: 'group-members' }, 'Members');
      edit.addEventListener('click', async () => {
        const chosen = new Set((await api.members(g.id)).user_ids);
        const save = h('button', { class: 'primary', id: 'members-save' }, 'Save members');
        const cancel = h('button', {}, 'Cancel');
        save.addEventListener('click', async () => {
          await api.setMembers(g.id, [...chosen]).then(() => { slot.replaceChildren(); return load(); }, (e) => { err.textContent = errorText(e); });
        });
        cancel.addEventListener('click', () => slot.replaceChildren());
        slot.replaceChildren(h('div', { class: 'editor', id: 'members-editor' }, h('h3', {}, `Members of ${g.name}`),
          picker('users', chosen, 'members-users'), h('div', { class: 'actions' }, save, cancel)));
      });
      const del = h('button', { class: 'danger' }, 'Delete');
      del.addEventListener('click', async () => {
        if (!confirm(`Delete group "${g.name}"? Sessions only it allowed end at once.`)) return;
        await api.deleteGroup(g.id).then(load, (e) => { err.textContent = errorText(e); });
      });
      return h('tr', { class: 'group-row', 'data-name': g.name }, h('td', {}, g.name), h('td', {}, String(g.members)),
        h('td', {}, g.max_sessions === null ? '—' : String(g.max_sessions)), h('td', {}, g.protocols?.join(', ') ?? 'any'),
        h('td', {}, g.recording ?? '—'), h('td', { class: 'actions' }, edit, del));
    }));
    if (page.items.length === 0) list.append(h('tr', {}, h('td', { colspan: '6', class: 'muted' }, 'No group yet.')));
  };
  create.addEventListener('click', async () => {
    err.textContent = '';
    try {
      const p = protocols.value.split(',').map((x) => x.trim()).filter((x) => x);
      await api.createGroup({ name: name.value.trim(), max_sessions: max.value ? Number(max.value) : null, protocols: p.length ? p : null,
        recording: recording.value as api.Recording });
      name.value = ''; max.value = ''; protocols.value = ''; recording.value = 'off';
      await load();
    } catch (e) {
      err.textContent = errorText(e);
    }
  });
  await load().catch((e) => { err.textContent = errorText(e); });
  return h('section', { class: 'card' }, h('h2', {}, 'Groups'), h('div', { class: 'inline-form' }, name, max, protocols, recording, create), slot,
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Group'), h('th', {}, 'Members'), h('th', {}, 'Max sessions'), h('th', {}, 'Protocols'),
      h('th', {}, 'Recording'), h('th', {}))), list), err);
}

/** Folders as a tree: create (under a parent), delete when empty, and edit who may use each. */
export async function foldersCard(onChange: () => void): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const slot = h('div');
  const name = h('input', { id: 'folder-name', placeholder: 'folder name', autocomplete: 'off' });
  const parent = h('select', { id: 'folder-parent' });
  const create = h('button', { id: 'folder-create' }, 'Add folder');
  const list = h('tbody', { id: 'folders' });
  const load = async () => {
    const all = await api.folders();
    const children = new Map<string | null, api.Folder[]>();
    for (const f of all) children.set(f.parent_id, [...(children.get(f.parent_id) ?? []), f]);
    const rows: HTMLElement[] = [];
    const options: HTMLElement[] = [h('option', { value: '' }, '(top level)')];
    const walk = (at: string | null, depth: number, path: string) => {
      for (const f of children.get(at) ?? []) {
        const full = path ? `${path} / ${f.name}` : f.name;
        options.push(h('option', { value: f.id }, full));
        const access = h('button', { class: 'folder-access' }, 'Access');
        access.addEventListener('click', async () => {
          slot.replaceChildren(await grantsEditor('folders', f.id, full, () => slot.replaceChildren()));
        });
        const del = h('button', { class: 'danger' }, 'Delete');
        del.addEventListener('click', async () => {
          await api.deleteFolder(f.id).then(() => { void load(); onChange(); }, (e) => { err.textContent = errorText(e); });
        });
        rows.push(h('tr', { class: 'folder-row', 'data-path': full },
          h('td', { style: `padding-left: ${0.5 + depth * 1.25}rem` }, f.name), h('td', { class: 'actions' }, access, del)));
        walk(f.id, depth + 1, full);
      }
    };
    walk(null, 0, '');
    list.replaceChildren(...rows);
    if (rows.length === 0) list.append(h('tr', {}, h('td', { colspan: '2', class: 'muted' }, 'No folder yet.')));
    parent.replaceChildren(...options);
  };
  create.addEventListener('click', async () => {
    err.textContent = '';
    try {
      await api.createFolder(name.value.trim(), parent.value || null);
      name.value = '';
      await load();
      onChange();
    } catch (e) {
      err.textContent = errorText(e);
    }
  });
  await load().catch((e) => { err.textContent = errorText(e); });
  return h('section', { class: 'card' }, h('h2', {}, 'Folders'), h('div', { class: 'inline-form' }, name, parent, create), slot,
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Folder'), h('th', {}))), list), err);
}
