// A session page: toolbar, connection state, the WebSocket to the bridge with automatic reattach, and the
// view chosen by the session's protocol (terminal for SSH, canvas display for VNC and RDP).

import { h, mount } from './dom';
import { CLOSE_CODES, type CloseCode } from './codes';
import * as wire from './wire';
import { TerminalView } from './terminal';
import { DisplayView, decodesH264 } from './display';
import { OwnerSharing } from './share';
import { FilePanel } from './files';
import { AudioPlayer } from './audio';

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
  /** The session as the control plane sees it (logged-in users): while reattaching, tells a session that
   * ended elsewhere (its bridge was lost) from a network that is slow to come back. */
  sessionState?: (id: string) => Promise<{ state: string; end_reason?: string | null }>;
  /** The owner (logged in) may share the session live: the Share panel. */
  sharing?: boolean;
  /** This page watches someone else's session: its owner's name and the mode it joined with. */
  viewer?: { owner: string; mode: wire.ShareMode };
}

/** What a protocol's view does with the session. */
export interface View {
  /** Toolbar controls of this view. */
  readonly controls: HTMLElement[];
  /** A browser attached (again): reset what must be redrawn, report the size. */
  attached(reattached: boolean): void;
  /** Messages for the view (output, display, clipboard). */
  handle(msg: wire.ServerMsg): void;
  /** The connection state changed (`closed`: the session is over or failed; the text says why). */
  state(state: State, text: string): void;
  focus(): void;
  dispose(): void;
}

export type Send = (bytes: Uint8Array<ArrayBuffer>) => void;

declare global {
  interface Window {
    porticoSessionId?: string;
    /** Diagnostics: drop the WebSocket as a network failure would (the client then reattaches). */
    porticoDropConnection?: () => void;
    /** Diagnostics: the round trip of one PING to the bridge and back, in ms, queued behind the display. */
    porticoPing?: () => Promise<number>;
  }
}

export type State = 'connecting' | 'connected' | 'reconnecting' | 'closed';

export function openSession(first: SessionTarget, opts: SessionOptions): void {
  const status = h('span', { id: 'session-status', 'data-state': 'connecting' }, 'connecting…');
  const reconnectBtn = h('button', { id: 'session-reconnect', hidden: true }, 'Reconnect');
  const endBtn = h('button', { id: 'session-end', class: 'danger' }, 'End session');
  const backBtn = h('button', { id: 'session-back', hidden: opts.embed }, '← Connections');
  const title = h('span', { class: 'title' }, first.title);
  // Shown while the bridge says the session is recorded (its policy is the connection's).
  const recording = h('span', { id: 'session-recording', class: 'recording', hidden: true, title: 'this session is recorded' }, '● REC');
  // A viewer's mode, as the bridge says (it enforces it: view-only input never reaches the target).
  const watching = h('span', { id: 'session-watching', class: 'watching', hidden: !opts.viewer });
  const viewControls = h('span', { class: 'view-controls' });
  const stage = h('div', { id: 'stage' });
  const shareControls = h('span', { class: 'share-controls' });
  const toolbar = h('div', { class: 'toolbar' }, backBtn, title, recording, watching, status, shareControls, viewControls, reconnectBtn, endBtn);
  mount(h('div', { class: 'session' }, toolbar, stage));
  let viewerMode: wire.ShareMode | null = opts.viewer?.mode ?? null;
  const showMode = () => {
    if (!opts.viewer || !viewerMode) return;
    watching.textContent = `👁 ${opts.viewer.owner}'s session · ${viewerMode === 'control' ? 'in control' : 'view only'}`;
    watching.dataset.mode = viewerMode;
    stage.dataset.viewer = viewerMode;
  };
  showMode();
  if (opts.viewer) {
    endBtn.textContent = 'Leave';
    reconnectBtn.textContent = 'Join again';
  }

  let target = first;
  let ws: WebSocket | null = null;
  let view: View | null = null;
  let resumeToken: string | null = null;
  let graceMs = 60_000;
  let lostAt = 0;
  let attempt = 0;
  let finished = false;
  let reconnectTimer: number | undefined;
  let protocol = '';
  /** New sessions started by themselves after a lost bridge, in a row (reset once one is attached). */
  let autoRestarts = 0;
  /** The Files panel, once the bridge said the connection allows file transfer (owners only). */
  let filePanel: FilePanel | null = null;
  /** The session's sound, once the bridge said it has some (owners only). */
  let audio: AudioPlayer | null = null;

  const setState = (state: State, text: string) => {
    status.dataset.state = state;
    status.textContent = text;
    status.title = text;
    stage.dataset.state = state;
    reconnectBtn.hidden = state !== 'closed' || !opts.newSession;
    endBtn.hidden = state === 'closed';
    view?.state(state, text);
  };

  // A viewer sends acknowledgements and pings, and input only in control (never a resize: the owner's
  // screen keeps its size). The bridge drops the rest anyway; not sending it keeps the page honest.
  const viewerMay = (type: number | undefined) => type === wire.C_FRAME_ACK || type === wire.C_PING || type === wire.C_CAPS ||
    type === wire.C_DISCONNECT || (viewerMode === 'control' && type !== wire.C_RESIZE && type !== wire.C_CREDENTIALS &&
      type !== wire.C_FILE_REQUEST && type !== wire.C_FILE_CHUNK);
  const send: Send = (bytes) => {
    if (opts.viewer && !viewerMay(bytes[1])) return;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(bytes);
  };
  const owner = opts.sharing && !opts.viewer && !opts.embed ? new OwnerSharing(() => target.sessionId, stage) : null;
  if (owner) shareControls.replaceChildren(...owner.controls);

  // `code`: how the bridge said the session ended; the stage carries it (data-close-code) and the status
  // line's tooltip explains it.
  const finish = (text: string, code?: CloseCode) => {
    finished = true;
    window.clearTimeout(reconnectTimer);
    setState('closed', text);
    if (code) {
      stage.dataset.closeCode = code;
      status.title = `${text}\n${code}: ${CLOSE_CODES[code].meaning}`;
    }
  };

  const makeView = (protocol: string): View => {
    view?.dispose();
    const v = protocol === 'ssh' ? new TerminalView(stage, send) : new DisplayView(stage, send, protocol);
    viewControls.replaceChildren(...v.controls);
    return v;
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
          protocol = msg.hello.protocol;
          recording.hidden = !msg.hello.recording;
          if (!view) view = makeView(msg.hello.protocol);
          if (msg.hello.reattached) setState('connected', 'connected (reattached)');
          filePanel?.reset('the connection was interrupted');
          audio?.attached();
          view.attached(msg.hello.reattached);
          view.focus();
          break;
        case 'status':
          if (msg.status.state === 'connected') autoRestarts = 0;
          if (msg.status.state === 'credentials') {
            askCredentials(msg.status.message);
            break;
          }
          credForm?.remove();
          if (msg.status.files && msg.status.files !== 'none' && !filePanel && !opts.viewer && view) {
            filePanel = new FilePanel(stage, send, msg.status.files);
            viewControls.append(...filePanel.controls);
          }
          if (msg.status.audio && !audio && !opts.viewer && view) {
            audio = new AudioPlayer(send);
            viewControls.append(...audio.controls);
          }
          if (msg.status.graphics) {
            // Which graphics path the session uses (connection info in the toolbar).
            status.dataset.graphics = msg.status.graphics;
          }
          setState(msg.status.state === 'connected' ? 'connected' : 'connecting', msg.status.message);
          break;
        case 'error':
          if (msg.error.fatal) finish(`closed: ${msg.error.message}`, msg.error.code);
          else console.warn(`portico: ${msg.error.code}: ${msg.error.message}`);
          break;
        case 'closed':
          if (!finished) finish(`closed: ${msg.closed.reason}`, msg.closed.code);
          break;
        case 'pong': {
          // The payload is the send time this page put in (`wire.ping`).
          const sent = new DataView(msg.data.buffer, msg.data.byteOffset, 8).getFloat64(0);
          const waiting = pings.get(sent);
          if (waiting) {
            pings.delete(sent);
            waiting(performance.now() - sent);
          }
          break;
        }
        case 'share':
          if (opts.viewer) {
            viewerMode = msg.share.mode ?? viewerMode;
            showMode();
            if (msg.share.cols && msg.share.rows && view instanceof TerminalView) view.resizeTo(msg.share.cols, msg.share.rows);
          } else {
            owner?.update(msg.share);
            stage.dataset.viewers = String(msg.share.viewers.length);
          }
          break;
        case 'file':
        case 'file_data':
          filePanel?.handle(msg);
          break;
        case 'audio':
          audio?.handle(msg.seq, msg.data);
          break;
        default:
          view?.handle(msg);
      }
    };
    sock.onclose = () => {
      if (ws !== sock || finished) return;
      ws = null;
      if (!attached && !resumeToken) {
        finish('closed: the session could not be opened (the link expired or was already used)');
        return;
      }
      if (opts.viewer) {
        // A viewer does not reattach: it joins again through the control plane (Join again).
        finish('closed: connection lost');
        return;
      }
      if (!lostAt) lostAt = Date.now();
      if (Date.now() - lostAt > graceMs) {
        finish('closed: connection lost');
        return;
      }
      const delay = Math.min(2000, 500 * 2 ** attempt++);
      setState('reconnecting', `reconnecting in ${(delay / 1000).toFixed(1)} s…`);
      reconnectTimer = window.setTimeout(() => connect([wire.SUBPROTOCOL, wire.RESUME_PREFIX + resumeToken]), delay);
      void checkEnded();
      // And every second until attached again: a lost bridge is known to the control plane within
      // seconds, sooner than the backoff's next attempt.
      if (!statePoll) {
        statePoll = window.setInterval(() => {
          if (finished || ws?.readyState === WebSocket.OPEN) {
            window.clearInterval(statePoll);
            statePoll = undefined;
          } else {
            void checkEnded();
          }
        }, 1000);
      }
    };
    sock.onopen = () => {
      lostAt = 0;
    };
  };

  // The connection asks for credentials at every connection: a form over the stage; what the user types
  // goes to the bridge for this attempt only and is never stored.
  let credForm: HTMLFormElement | null = null;
  const askCredentials = (prompt: string) => {
    credForm?.remove();
    const user = h('input', { id: 'cred-username', autocomplete: 'username', required: true });
    const pass = h('input', { id: 'cred-password', type: 'password', autocomplete: 'current-password' });
    const domain = h('input', { id: 'cred-domain', placeholder: 'optional' });
    const form = h('form', { id: 'cred-form', class: 'cred-form' },
      h('p', {}, prompt),
      h('label', {}, 'User name ', user),
      h('label', {}, 'Password ', pass),
      h('label', {}, 'Domain ', domain),
      h('button', { type: 'submit', id: 'cred-submit' }, 'Connect'));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      send(wire.credentials(user.value, pass.value, domain.value.trim() || null));
      pass.value = '';
      form.remove();
      credForm = null;
      setState('connecting', 'connecting…');
    });
    credForm = form;
    stage.append(form);
    setState('connecting', 'credentials required');
    user.focus();
  };

  window.porticoDropConnection = () => ws?.close(4000, 'simulated network drop');
  const pings = new Map<number, (ms: number) => void>();
  window.porticoPing = () => new Promise<number>((resolve) => {
    const stamp = new Uint8Array(8);
    const now = performance.now();
    new DataView(stamp.buffer).setFloat64(0, now);
    pings.set(now, resolve);
    send(wire.ping(stamp));
  });
  const pinger = window.setInterval(() => send(wire.ping()), 20_000);

  endBtn.addEventListener('click', () => {
    send(wire.disconnect());
    finish(opts.viewer ? 'closed: you left' : 'closed: ended');
    if (opts.endSession) void opts.endSession(target.sessionId).catch(() => undefined);
  });
  backBtn.addEventListener('click', () => {
    if (!finished) send(wire.disconnect());
    finished = true;
    window.clearInterval(pinger);
    ws?.close();
    view?.dispose();
    audio?.dispose();
    opts.onBack?.();
  });
  // While reattaching: has the session ended elsewhere? A bridge that died takes its sessions with it
  // (the control plane ends them as lost within seconds); reattaching cannot work then. An RDP session
  // starts anew by itself (the server kept the Windows/xrdp logon session, so the user is back in the same
  // desktop); the others offer Reconnect.
  let checking = false;
  let statePoll: number | undefined;
  const checkEnded = async () => {
    if (!opts.sessionState || checking) return;
    checking = true;
    const sessionId = target.sessionId;
    try {
      const s = await opts.sessionState(sessionId);
      if (s.state !== 'ended' || finished || sessionId !== target.sessionId || ws?.readyState === WebSocket.OPEN) return;
      const reason = s.end_reason ?? 'the session ended';
      window.clearTimeout(reconnectTimer);
      if (protocol === 'rdp' && reason.startsWith('lost: bridge') && opts.newSession && autoRestarts < 3) {
        autoRestarts++;
        setState('reconnecting', `${reason.replace(/; reconnect.*$/, '')}: starting a new session…`);
        await startNew();
      } else {
        finish(`closed: ${reason}`);
      }
    } catch {
      // The control plane is unreachable too: keep reattaching.
    } finally {
      checking = false;
    }
  };

  const startNew = async () => {
    if (!opts.newSession) return;
    try {
      target = await opts.newSession();
      finished = false;
      delete stage.dataset.closeCode;
      resumeToken = null;
      lostAt = 0;
      attempt = 0;
      view?.dispose();
      view = null;
      audio?.dispose();
      audio = null;
      viewControls.replaceChildren();
      setState('connecting', 'connecting…');
      connect([wire.SUBPROTOCOL, wire.TOKEN_PREFIX + target.token]);
    } catch (e) {
      finish(`closed: ${e instanceof Error ? e.message : String(e)}`);
    }
  };
  reconnectBtn.addEventListener('click', () => void startNew());

  setState('connecting', 'connecting…');
  // What this browser decodes is known before the socket opens: an RDP bridge chooses the graphics path
  // from the capabilities sent right after attaching, and a probe that is slow on a busy machine must not
  // make it wait (the probe is bounded and cached).
  void decodesH264().then(() => connect([wire.SUBPROTOCOL, wire.TOKEN_PREFIX + target.token]));
}
