// Entry point: the embed page (/connect#session=…&token=…&ws=…) or the logged-in application.

import * as api from './api';
import { mount, h, errorText } from './dom';
import { openSession } from './session';
import { showLogin, showMain } from './views';

function embed(): void {
  const params = new URLSearchParams(location.hash.replace(/^#/, ''));
  // The secret must not stay in the address bar or the history.
  history.replaceState(null, '', location.pathname);
  const sessionId = params.get('session');
  const token = params.get('token');
  const wsUrl = params.get('ws');
  if (!sessionId || !token || !wsUrl) {
    mount(h('p', { class: 'error', style: 'padding: 2rem' }, 'This link is incomplete or was already opened. Ask for a new session link.'));
    return;
  }
  openSession({ sessionId, token, wsUrl, title: 'Portico' }, { embed: true });
}

async function app(): Promise<void> {
  const start = (me: api.Me) => void showMain(me, () => showLogin(start));
  const me = await api.me();
  if (me) start(me);
  else showLogin(start);
}

if (location.pathname === '/connect') {
  embed();
} else {
  app().catch((e) => mount(h('p', { class: 'error', style: 'padding: 2rem' }, `Portico is unavailable: ${errorText(e)}`)));
}
