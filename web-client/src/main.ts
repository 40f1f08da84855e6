// Entry point: the embed page (/connect#session=…&token=…) or the logged-in application.

import * as api from './api';
import { mount, h, errorText } from './dom';
import { openSession } from './session';
import { showLogin, showMain } from './views';

/** The bridge's WebSocket base URL, which the webapp writes into the page it serves (never from the URL). */
function bridgeBase(): string | null {
  const meta = document.querySelector<HTMLMetaElement>('meta[name="portico-bridge"]');
  return meta?.content ? meta.content.replace(/\/+$/, '') : null;
}

function embed(): void {
  const params = new URLSearchParams(location.hash.replace(/^#/, ''));
  // The secret must not stay in the address bar or the history.
  history.replaceState(null, '', location.pathname);
  const sessionId = params.get('session');
  const token = params.get('token');
  if (!sessionId || !token) {
    mount(h('p', { class: 'error', style: 'padding: 2rem' }, 'This link is incomplete or was already opened. Ask for a new session link.'));
    return;
  }
  // A `ws` parameter (links of older versions had one) is ignored: whoever writes the link must not choose the
  // server that receives the token.
  const base = bridgeBase();
  if (!base) {
    mount(h('p', { class: 'error', style: 'padding: 2rem' }, 'Portico is unavailable: this page does not name its bridge.'));
    return;
  }
  // A route only picks a bridge behind the configured origin (the load balancer), never another server.
  const route = params.get('bridge');
  const path = route && /^[a-z0-9][a-z0-9-]{0,62}$/.test(route) ? `/bridge/v1/at/${route}/ws` : '/bridge/v1/ws';
  const wsUrl = `${base}${path}?session=${encodeURIComponent(sessionId)}`;
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
