// The terminal view: xterm.js bound to one Portico session over the wire protocol, with reattach.

import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { h, mount, byId } from './dom';
import * as wire from './wire';

export interface SessionTarget {
  sessionId: string;
  token: string;
  wsUrl: string;
  title: string;
}

export interface SessionOptions {
  /** Embedded (connect_url) page: no list to go back to, no credentials to start another session. */
  embed: boolean;
  onBack?: () => void;
  /** Start a fresh session for the same connection (logged-in users). */
  newSession?: () => Promise<SessionTarget>;
  /** End the session through the API as well (logged-in users). */
  endSession?: (id: string) => Promise<unknown>;
}

declare global {
  interface Window {
    porticoTerminalText?: () => string;
    porticoSessionId?: string;
    /** Diagnostics: drop the WebSocket as a network failure would (the client then reattaches). */
    porticoDropConnection?: () => void;
  }
}

type State = 'connecting' | 'connected' | 'reconnecting' | 'closed';

export function openSession(first: SessionTarget, opts: SessionOptions): void {
  const status = h('span', { id: 'session-status', 'data-state': 'connecting' }, 'connecting…');
  const reconnectBtn = h('button', { id: 'session-reconnect', hidden: true }, 'Reconnect');
  const endBtn = h('button', { id: 'session-end', class: 'danger' }, 'End session');
  const backBtn = h('button', { id: 'session-back', hidden: opts.embed }, '← Connections');
  const copyHint = h('span', { class: 'muted' }, 'Ctrl+Shift+C / Ctrl+Shift+V');
  const title = h('span', { class: 'title' }, first.title);
  const termEl = h('div', { id: 'terminal' });
  mount(h('div', { class: 'session' }, h('div', { class: 'toolbar' }, backBtn, title, status, copyHint, reconnectBtn, endBtn), termEl));

  const term = new Terminal({
    cursorBlink: true,
    fontFamily: '"DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    scrollback: 5000,
    theme: { background: '#000000' },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(termEl);
  fit.fit();
  term.focus();
  window.porticoTerminalText = () => {
    const buf = term.buffer.active;
    const lines: string[] = [];
    for (let i = 0; i < buf.length; i++) lines.push(buf.getLine(i)?.translateToString(true) ?? '');
    return lines.join('\n');
  };

  let target = first;
  let ws: WebSocket | null = null;
  let resumeToken: string | null = null;
  let graceMs = 60_000;
  let lostAt = 0;
  let attempt = 0;
  let finished = false;
  let reconnectTimer: number | undefined;

  const setState = (state: State, text: string) => {
    status.dataset.state = state;
    status.textContent = text;
    status.title = text;
    reconnectBtn.hidden = state !== 'closed' || !opts.newSession;
    endBtn.hidden = state === 'closed';
  };

  const send = (bytes: Uint8Array<ArrayBuffer>) => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(bytes);
  };

  const sendSize = () => {
    const r = termEl.getBoundingClientRect();
    send(wire.resize(term.cols, term.rows, r.width, r.height));
  };

  const finish = (text: string) => {
    finished = true;
    window.clearTimeout(reconnectTimer);
    setState('closed', text);
  };

  const connect = (protocols: string[]) => {
    let attached = false;
    const sock = new WebSocket(target.wsUrl, protocols);
    sock.binaryType = 'arraybuffer';
    ws = sock;
    sock.onmessage = (ev: MessageEvent) => {
      if (!(ev.data instanceof ArrayBuffer)) return;
      let msg: wire.ServerMsg;
      try {
        msg = wire.decode(ev.data);
      } catch (e) {
        console.warn('portico: undecodable message', e);
        return;
      }
      switch (msg.type) {
        case 'hello':
          attached = true;
          attempt = 0;
          resumeToken = msg.hello.resume_token;
          graceMs = msg.hello.grace_seconds * 1000;
          window.porticoSessionId = msg.hello.session_id;
          if (msg.hello.reattached) {
            term.reset();
            setState('connected', 'connected (reattached)');
          }
          sendSize();
          break;
        case 'output':
          term.write(msg.data);
          break;
        case 'status':
          setState(msg.status.state === 'connected' ? 'connected' : 'connecting', msg.status.message);
          break;
        case 'error':
          if (msg.error.fatal) {
            setState('closed', `closed: ${msg.error.message}`);
            term.write(`\r\n\x1b[1;31m${msg.error.message}\x1b[0m\r\n`);
          } else {
            console.warn(`portico: ${msg.error.message}`);
          }
          break;
        case 'closed':
          if (status.dataset.state !== 'closed') term.write(`\r\n\x1b[33m[session closed: ${msg.closed.reason}]\x1b[0m\r\n`);
          finish(`closed: ${msg.closed.reason}`);
          break;
        case 'pong':
          break;
      }
    };
    sock.onclose = () => {
      if (ws !== sock || finished) return;
      ws = null;
      if (!attached && !resumeToken) {
        finish('closed: the session could not be opened (the link expired or was already used)');
        return;
      }
      if (!lostAt) lostAt = Date.now();
      if (Date.now() - lostAt > graceMs) {
        finish('closed: connection lost');
        return;
      }
      const delay = Math.min(5000, 500 * 2 ** attempt++);
      setState('reconnecting', `reconnecting in ${(delay / 1000).toFixed(1)} s…`);
      reconnectTimer = window.setTimeout(() => connect([wire.SUBPROTOCOL, wire.RESUME_PREFIX + resumeToken]), delay);
    };
    sock.onopen = () => {
      lostAt = 0;
    };
  };

  window.porticoDropConnection = () => ws?.close(4000, 'simulated network drop');

  term.onData((d) => send(wire.termInput(d)));
  term.onBinary((d) => send(wire.termInput(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff))));
  term.onResize(() => sendSize());
  term.attachCustomKeyEventHandler((e) => {
    if (e.type !== 'keydown' || !e.ctrlKey || !e.shiftKey) return true;
    if (e.code === 'KeyC') {
      const sel = term.getSelection();
      if (sel && navigator.clipboard) void navigator.clipboard.writeText(sel);
      return false;
    }
    if (e.code === 'KeyV') {
      if (navigator.clipboard?.readText) void navigator.clipboard.readText().then((t) => term.paste(t), () => undefined);
      return false;
    }
    return true;
  });
  new ResizeObserver(() => fit.fit()).observe(termEl);
  const pinger = window.setInterval(() => send(wire.ping()), 20_000);

  endBtn.addEventListener('click', () => {
    send(wire.disconnect());
    finish('closed: ended');
    if (opts.endSession) void opts.endSession(target.sessionId).catch(() => undefined);
  });
  backBtn.addEventListener('click', () => {
    if (!finished) send(wire.disconnect());
    finished = true;
    window.clearInterval(pinger);
    ws?.close();
    term.dispose();
    opts.onBack?.();
  });
  reconnectBtn.addEventListener('click', async () => {
    if (!opts.newSession) return;
    try {
      target = await opts.newSession();
      finished = false;
      resumeToken = null;
      lostAt = 0;
      attempt = 0;
      term.reset();
      setState('connecting', 'connecting…');
      connect([wire.SUBPROTOCOL, wire.TOKEN_PREFIX + target.token]);
    } catch (e) {
      setState('closed', `closed: ${e instanceof Error ? e.message : String(e)}`);
    }
  });

  setState('connecting', 'connecting…');
  connect([wire.SUBPROTOCOL, wire.TOKEN_PREFIX + target.token]);
  byId('terminal').addEventListener('click', () => term.focus());
}
