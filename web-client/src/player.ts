// Playback of a session recording: the file is fetched and checked chunk by chunk (recording.ts), then drawn
// by the same views as a live session (terminal.ts, display.ts), with play/pause, speed, a timeline that
// seeks from the nearest keyframe, and for terminals a text search and the asciicast export.

import { h, mount, errorText } from './dom';
import * as api from './api';
import * as wire from './wire';
import { TerminalView } from './terminal';
import { DisplayView } from './display';
import { INPUT, OUTPUT, STATE, keyframeBefore, readRecording, type Recording } from './recording';
import type { View } from './session';

declare global {
  interface Window {
    /** Tests and diagnostics: the player's position and controls. */
    porticoPlayer?: {
      seek(ms: number): void;
      play(): void;
      pause(): void;
      state(): { position: number; duration: number; playing: boolean; speed: number; intact: boolean };
    };
  }
}

const SPEEDS = [0.5, 1, 2, 4, 8];
const RESIZE = 0x82;

function fmt(ms: number): string {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

/** A RESIZE the browser sent (a terminal's size), else null. */
function resizeOf(data: Uint8Array): { cols: number; rows: number } | null {
  if (data.length < 6 || data[1] !== RESIZE) return null;
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  return { cols: v.getUint16(2), rows: v.getUint16(4) };
}

/** What the player draws of a bridge → client message (what a live session's view would have drawn). */
function drawable(msg: wire.ServerMsg): boolean {
  return !['hello', 'status', 'error', 'closed', 'pong', 'clipboard'].includes(msg.type);
}

export async function openPlayer(id: string, onBack: () => void): Promise<void> {
  const back = h('button', { id: 'player-back' }, '← Back');
  const title = h('span', { class: 'title' }, 'Recording');
  const playBtn = h('button', { id: 'player-play', disabled: true }, 'Play');
  const speed = h('select', { id: 'player-speed' },
    ...SPEEDS.map((s) => h('option', { value: String(s), selected: s === 1 }, `${s}×`)));
  const timeline = h('input', { id: 'player-timeline', type: 'range', min: '0', max: '0', step: '1', value: '0' });
  const clock = h('span', { id: 'player-clock', class: 'muted' }, '0:00 / 0:00');
  const status = h('span', { id: 'player-status', class: 'muted' }, 'loading…');
  const search = h('input', { id: 'player-search', placeholder: 'find text', hidden: true });
  const find = h('button', { id: 'player-find', hidden: true }, 'Find');
  const cast = h('a', { id: 'player-asciicast', href: `/api/v1/recordings/${encodeURIComponent(id)}/asciicast`, download: `${id}.cast`, hidden: true }, 'asciicast');
  const stage = h('div', { id: 'stage' });
  const toolbar = h('div', { class: 'toolbar' }, back, title, playBtn, speed, timeline, clock, search, find, cast, status);
  const page = h('div', { class: 'session', id: 'player', 'data-state': 'loading' }, toolbar, stage);
  mount(page);

  let rec: Recording;
  try {
    const info = await api.recording(id);
    title.textContent = `${info.connection_name} · ${info.username} · ${new Date(info.created_at * 1000).toLocaleString()}`;
    const res = await fetch(`/api/v1/recordings/${encodeURIComponent(id)}/file`, { credentials: 'same-origin' });
    if (!res.ok) throw new Error(`the recording could not be read (${res.status})`);
    rec = await readRecording(await res.arrayBuffer());
  } catch (e) {
    status.textContent = errorText(e);
    page.dataset.state = 'failed';
    back.addEventListener('click', onBack);
    return;
  }
  const terminal = rec.meta.protocol === 'ssh';
  search.hidden = find.hidden = cast.hidden = !terminal;
  timeline.max = String(rec.durationMs);
  status.textContent = rec.intact ? `${rec.records.length} records, checked` : `cut short: ${rec.problem ?? ''}`;

  const noSend = (): void => undefined;
  let view: View | null = null;
  const newView = (): View => {
    view?.dispose();
    const v = terminal ? new TerminalView(stage, noSend) : new DisplayView(stage, noSend, 'vnc');
    v.attached(false);
    return v;
  };
  let position = 0;
  /** The next record to play. */
  let next = 0;
  let playing = false;
  let startedAt = 0;
  let startedPos = 0;
  let timer = 0;

  const apply = (i: number): void => {
    const r = rec.records[i]!;
    if (r.kind === INPUT) {
      const size = resizeOf(r.data);
      if (size && view instanceof TerminalView) view.resizeTo(size.cols, size.rows);
      return;
    }
    let msg: wire.ServerMsg;
    try {
      msg = wire.decode(r.data.buffer);
    } catch {
      return;
    }
    if (drawable(msg)) view?.handle(msg);
  };

  const show = (): void => {
    timeline.value = String(position);
    clock.textContent = `${fmt(position)} / ${fmt(rec.durationMs)}`;
  };

  /** Draw the moment `at`: from the keyframe before it (its state, then what followed), or from the start. */
  const seek = (at: number): void => {
    at = Math.max(0, Math.min(at, rec.durationMs));
    view = newView();
    const k = keyframeBefore(rec, at);
    let i = k ?? 0;
    // The keyframe's own state is drawn; later keyframes' state repeats what is drawn already.
    let inState = k !== null;
    for (; i < rec.records.length && rec.records[i]!.at <= at; i++) {
      const r = rec.records[i]!;
      if (r.kind === OUTPUT) inState = false;
      if (r.kind === STATE && !inState) continue;
      apply(i);
    }
    next = i;
    position = at;
    startedAt = performance.now();
    startedPos = at;
    show();
  };

  const tick = (): void => {
    if (!playing) return;
    position = Math.min(rec.durationMs, startedPos + (performance.now() - startedAt) * Number(speed.value));
    for (; next < rec.records.length && rec.records[next]!.at <= position; next++) {
      if (rec.records[next]!.kind !== STATE) apply(next);
    }
    show();
    if (next >= rec.records.length) {
      pause();
      return;
    }
    timer = window.setTimeout(tick, Math.max(10, Math.min(100, (rec.records[next]!.at - position) / Number(speed.value))));
  };
  const play = (): void => {
    if (playing) return;
    if (next >= rec.records.length) seek(0);
    playing = true;
    startedAt = performance.now();
    startedPos = position;
    playBtn.textContent = 'Pause';
    page.dataset.playing = 'true';
    tick();
  };
  const pause = (): void => {
    playing = false;
    window.clearTimeout(timer);
    playBtn.textContent = 'Play';
    page.dataset.playing = 'false';
  };

  playBtn.addEventListener('click', () => (playing ? pause() : play()));
  speed.addEventListener('change', () => {
    startedAt = performance.now();
    startedPos = position;
  });
  timeline.addEventListener('input', () => {
    const was = playing;
    pause();
    seek(Number(timeline.value));
    if (was) play();
  });
  // Text search (terminals): the first output after the current position holding the text.
  const texts = terminal
    ? rec.records.flatMap((r) => {
        if (r.kind !== OUTPUT) return [];
        try {
          const m = wire.decode(r.data.buffer);
          return m.type === 'output' ? [{ at: r.at, text: new TextDecoder().decode(m.data).toLowerCase() }] : [];
        } catch {
          return [];
        }
      })
    : [];
  const doFind = (): void => {
    const q = search.value.trim().toLowerCase();
    if (!q) return;
    const hit = texts.find((t, i) => t.at > position && (t.text.includes(q) || ((texts[i - 1]?.text ?? '') + t.text).includes(q)))
      ?? texts.find((t) => t.text.includes(q));
    if (!hit) {
      status.textContent = `“${search.value.trim()}” is not in the recording`;
      return;
    }
    pause();
    seek(hit.at);
  };
  find.addEventListener('click', doFind);
  search.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') doFind();
  });
  back.addEventListener('click', () => {
    pause();
    view?.dispose();
    delete window.porticoPlayer;
    onBack();
  });

  window.porticoPlayer = {
    seek: (ms) => {
      pause();
      seek(ms);
    },
    play,
    pause,
    state: () => ({ position, duration: rec.durationMs, playing, speed: Number(speed.value), intact: rec.intact }),
  };
  seek(0);
  playBtn.disabled = false;
  page.dataset.state = 'ready';
}
