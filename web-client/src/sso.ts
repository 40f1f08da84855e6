// Single sign-on in the UI: the login page's "Sign in with ..." buttons and the reason a provider login
// failed, and the admin card that configures OIDC providers and LDAP directories.

import * as api from './api';
import { h, errorText } from './dom';

/** The buttons of the enabled OIDC providers, and the reason of a failed SSO login (from `?sso_error=`,
 * removed from the address bar once shown). */
export async function loginExtras(err: HTMLElement): Promise<HTMLElement> {
  const params = new URLSearchParams(location.search);
  const failed = params.get('sso_error');
  if (failed) {
    err.textContent = `Single sign-on failed: ${failed}`;
    history.replaceState(null, '', location.pathname);
  }
  const box = h('div', { id: 'sso-buttons', class: 'sso' });
  try {
    const opts = await api.loginOptions();
    for (const p of opts.oidc) {
      const next = encodeURIComponent(location.pathname === '/' ? '/' : location.pathname + location.search);
      box.append(h('a', { class: 'button', id: `sso-${p.id}`, href: `${p.login_url}?next=${next}`, 'data-provider': p.name }, `Sign in with ${p.name}`));
    }
    if (opts.ldap) box.append(h('p', { class: 'muted' }, 'Directory accounts log in with their directory user name and password.'));
  } catch {
    // The password form still works.
  }
  return box;
}

function parseLines(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const l of text.split('\n')) {
    const i = l.indexOf('=');
    if (i > 0) out[l.slice(0, i).trim()] = l.slice(i + 1).trim();
  }
  return out;
}

/** Admin: the identity providers, a form to add one, and each one's redirect URI to register. */
export async function identityProvidersCard(): Promise<HTMLElement> {
  const err = h('div', { class: 'error', role: 'alert' });
  const list = h('tbody', { id: 'idp-list' });
  const kind = h('select', { id: 'idp-kind' }, h('option', { value: 'oidc' }, 'OpenID Connect'), h('option', { value: 'ldap' }, 'LDAP / Active Directory'));
  const name = h('input', { id: 'idp-name', placeholder: 'Name (shown on the login page)' });
  const issuer = h('input', { id: 'idp-issuer', placeholder: 'Issuer URL (https://login.example.com)' });
  const clientId = h('input', { id: 'idp-client-id', placeholder: 'Client ID' });
  const clientSecret = h('input', { id: 'idp-client-secret', type: 'password', placeholder: 'Client secret', autocomplete: 'off' });
  const groupsClaim = h('input', { id: 'idp-groups-claim', placeholder: 'Groups claim (groups)' });
  const url = h('input', { id: 'idp-ldap-url', placeholder: 'ldaps://dc.example.com:636' });
  const starttls = h('input', { id: 'idp-ldap-starttls', type: 'checkbox' });
  const bindDn = h('input', { id: 'idp-ldap-bind-dn', placeholder: 'uid={username},ou=people,dc=example,dc=com or {username}@example.com' });
  const userBase = h('input', { id: 'idp-ldap-user-base', placeholder: 'User base DN' });
  const userFilter = h('input', { id: 'idp-ldap-user-filter', placeholder: 'User filter ((uid={username}))' });
  const groupBase = h('input', { id: 'idp-ldap-group-base', placeholder: 'Group base DN (optional)' });
  const ca = h('textarea', { id: 'idp-ca', placeholder: 'CA certificate (PEM), if not trusted by this machine', rows: '3' });
  const roles = h('textarea', { id: 'idp-roles', placeholder: 'Roles, one per line: provider-group = admin | auditor', rows: '2' });
  const groups = h('textarea', { id: 'idp-groups', placeholder: 'Groups, one per line: provider-group = Portico group (empty: same names)', rows: '2' });
  const oidcFields = h('div', { class: 'stack' }, issuer, clientId, clientSecret, groupsClaim);
  const ldapFields = h('div', { class: 'stack', hidden: true }, url, h('label', { for: 'idp-ldap-starttls' }, starttls, ' StartTLS on ldap://'), bindDn, userBase, userFilter, groupBase);
  kind.addEventListener('change', () => {
    oidcFields.hidden = kind.value !== 'oidc';
    ldapFields.hidden = kind.value !== 'ldap';
  });
  const add = h('button', { id: 'idp-add', class: 'primary' }, 'Add provider');

  async function refresh(): Promise<void> {
    list.replaceChildren();
    for (const p of await api.identityProviders()) {
      const del = h('button', { class: 'danger' }, 'Delete');
      del.addEventListener('click', async () => {
        if (!confirm(`Delete ${p.name} and its ${p.users} users?`)) return;
        try { await api.deleteIdentityProvider(p.id); await refresh(); } catch (e) { err.textContent = errorText(e); }
      });
      const where = p.kind === 'oidc' ? `${p.oidc?.issuer ?? ''} (redirect URI: ${p.redirect_uri ?? ''})` : (p.ldap?.url ?? '');
      list.append(h('tr', { 'data-provider': p.name }, h('td', {}, p.name), h('td', {}, p.kind), h('td', {}, where),
        h('td', {}, String(p.users)), h('td', {}, p.enabled ? 'on' : 'off'), h('td', {}, del)));
    }
  }

  add.addEventListener('click', async () => {
    err.textContent = '';
    const mapping = { roles: parseLines(roles.value) as Record<string, api.Role>, groups: parseLines(groups.value) };
    const input: api.ProviderInput = kind.value === 'oidc'
      ? {
        kind: 'oidc', name: name.value.trim(), mapping, client_secret: clientSecret.value || undefined,
        oidc: { issuer: issuer.value.trim(), client_id: clientId.value.trim(), groups_claim: groupsClaim.value.trim() || undefined, ca_pem: ca.value.trim() || null },
      }
      : {
        kind: 'ldap', name: name.value.trim(), mapping,
        ldap: {
          url: url.value.trim(), starttls: starttls.checked, bind_dn: bindDn.value.trim(), user_base: userBase.value.trim(),
          user_filter: userFilter.value.trim() || undefined, group_base: groupBase.value.trim() || null, ca_pem: ca.value.trim() || null,
        },
      };
    try {
      await api.createIdentityProvider(input);
      for (const i of [name, issuer, clientId, clientSecret, groupsClaim, url, bindDn, userBase, userFilter, groupBase]) i.value = '';
      ca.value = roles.value = groups.value = '';
      await refresh();
    } catch (e) {
      err.textContent = errorText(e);
    }
  });
  try { await refresh(); } catch (e) { err.textContent = errorText(e); }
  return h('section', { class: 'card', id: 'idp-card' }, h('h2', {}, 'Single sign-on'),
    h('p', { class: 'muted' }, 'Users of a provider are created at their first login; their groups and role follow the provider at every login.'),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Kind'), h('th', {}, 'Where'), h('th', {}, 'Users'), h('th', {}, 'Enabled'), h('th', {}))), list),
    h('div', { class: 'stack' }, kind, name, oidcFields, ldapFields, ca, roles, groups, add), err);
}
