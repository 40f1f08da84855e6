// The display view (VNC, RDP, containers): draws the bridge's frames on a canvas and sends keyboard,
// pointer and clipboard input.
//
// Frames: images are decoded as soon as they arrive with createImageBitmap (Chromium decodes off the main
// thread), and a frame is drawn in one go when its FRAME_END arrives and all its images are decoded, in
// order; then it is acknowledged. The bridge sends at most two unacknowledged frames, so a slow browser
// makes the bridge merge damage instead of queueing it.
//
// Video (an RDP server's H.264 through the graphics pipeline): each VIDEO message is decoded with WebCodecs
// (one VideoDecoder per stream, configured from the SPS of the key frame, Annex B) as it arrives; at the
// frame's end only its region rectangles are drawn from the decoded picture. The acknowledgement of the
// frame reaches the RDP server, which paces itself to this browser.

import { h } from './dom';
import * as wire from './wire';
import { imeKey, inputKeys, type KeyCode, keysymOf, scancodeOf, SPECIAL_KEYS, textKeys } from './keysym';
import type { Send, State, View } from './session';

declare global {
  interface Window {
    /** Diagnostics for tests: one pixel of the canvas as [r, g, b]. */
    porticoCanvasPixel?: (x: number, y: number) => number[];
    /** Diagnostics for tests: frames drawn, the remote size, video frames decoded and dropped. */
    porticoDisplay?: { frames: number; width: number; height: number; clipboard: string; videoFrames?: number; videoDropped?: number; typed?: number };
  }
}

type Op =
  | { kind: 'size'; width: number; height: number }
  | { kind: 'image'; rect: wire.Rect; bitmap: Promise<ImageBitmap | null> }
  | { kind: 'copy'; sx: number; sy: number; rect: wire.Rect }
  | { kind: 'fill'; rect: wire.Rect; color: string }
  | { kind: 'cursor'; css: string }
  | { kind: 'video'; x: number; y: number; rects: wire.Rect[]; frame: Promise<VideoFrame | null> }
  | { kind: 'cache_store'; slot: number; rect: wire.Rect }
  | { kind: 'cache_draw'; slot: number; x: number; y: number };

/** The codec string of an H.264 stream from the SPS in an Annex B key frame (`avc1.PPCCLL`). */
export function h264Codec(data: Uint8Array): string | null {
  for (let i = 0; i + 7 < data.length; i++) {
    if (data[i] === 0 && data[i + 1] === 0 && data[i + 2] === 1 && (data[i + 3] & 0x1f) === 7) {
      const hex = (b: number): string => b.toString(16).padStart(2, '0');
      return `avc1.${hex(data[i + 4])}${hex(data[i + 5])}${hex(data[i + 6])}`;
    }
  }
  return null;
}

/** The capability check: High profile at level 5.1 (desktops up to 4096x2160). */
const H264_PROBE = 'avc1.640033';
/** How long the H.264 probe may take before the browser is taken not to decode it. */
const H264_PROBE_LIMIT_MS = 10000;
let h264Support: Promise<boolean> | null = null;

/** Whether this browser decodes H.264 with WebCodecs (`?h264=0` in the page's URL says no). */
export function decodesH264(): Promise<boolean> {
  h264Support ??= (() => {
    if (new URLSearchParams(location.search).get('h264') === '0') return Promise.resolve(false);
    if (typeof VideoDecoder === 'undefined') return Promise.resolve(false);
    const probe = VideoDecoder.isConfigSupported({ codec: H264_PROBE, optimizeForLatency: true })
      .then((r) => r.supported === true, () => false);
    // A probe that does not answer in time counts as no: the bitmap path works everywhere.
    const late = new Promise<boolean>((resolve) => window.setTimeout(() => resolve(false), H264_PROBE_LIMIT_MS));
    return Promise.race([probe, late]);
  })();
  return h264Support;
}

/** How long a frame waits for a picture from its decoder before it is drawn without it. */
const DECODE_TIMEOUT_MS = 10000;

/** One video stream's decoder: each chunk's picture goes to the frame that sent it (by the chunk's
 * timestamp, so a picture that comes after its frame gave up on it is closed, not given to the next). */
class VideoStream {
  private decoder: VideoDecoder | null = null;
  private codec = '';
  private readonly waiting = new Map<number, (f: VideoFrame | null) => void>();
  private seq = 0;
  dropped = 0;

  decode(key: boolean, data: Uint8Array<ArrayBuffer>): Promise<VideoFrame | null> {
    if (key && typeof VideoDecoder !== 'undefined') {
      const codec = h264Codec(data);
      if (codec && (codec !== this.codec || !this.decoder || this.decoder.state === 'closed')) this.configure(codec);
    }
    const dec = this.decoder;
    if (!dec || dec.state !== 'configured') {
      // A delta frame without the key frame before it (or no decoder here): nothing to draw until the
      // next key frame.
      this.dropped++;
      return Promise.resolve(null);
    }
    const ts = this.seq++;
    const picture = new Promise<VideoFrame | null>((resolve) => {
      this.waiting.set(ts, resolve);
      window.setTimeout(() => {
        if (this.waiting.delete(ts)) {
          this.dropped++;
          resolve(null);
        }
      }, DECODE_TIMEOUT_MS);
    });
    try {
      dec.decode(new EncodedVideoChunk({ type: key ? 'key' : 'delta', timestamp: ts, data }));
    } catch (e) {
      console.warn('portico: video chunk refused', e);
      this.fail();
    }
    return picture;
  }

  private configure(codec: string): void {
    this.close();
    this.codec = codec;
    try {
      const dec = new VideoDecoder({
        output: (frame) => {
          const resolve = this.waiting.get(frame.timestamp);
          this.waiting.delete(frame.timestamp);
          if (resolve) resolve(frame);
          else frame.close();
        },
        error: (e) => {
          console.warn('portico: video decoder error', e);
          this.fail();
        },
      });
      dec.configure({ codec, optimizeForLatency: true });
      this.decoder = dec;
    } catch (e) {
      console.warn('portico: no video decoder for', codec, e);
      this.decoder = null;
    }
  }

  /** The decoder broke: what waits gets nothing, and decoding starts again at the next key frame. */
  private fail(): void {
    for (const w of this.waiting.values()) w(null);
    this.waiting.clear();
    if (this.decoder && this.decoder.state !== 'closed') this.decoder.close();
    this.decoder = null;
  }

  close(): void {
    this.fail();
    this.codec = '';
  }
}

type Scale = 'fit' | 'actual' | 'remote';

function base64(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** DOM mouse buttons (1 left, 2 right, 4 middle) → RFB mask (1 left, 2 middle, 4 right). */
function rfbButtons(domButtons: number): number {
  return (domButtons & 1) | ((domButtons & 4) >> 1) | ((domButtons & 2) << 1);
}

export class DisplayView implements View {
  readonly controls: HTMLElement[];
  private readonly canvas: HTMLCanvasElement;
  /** Where the keyboard goes: an invisible text field over the canvas, so that input methods, dead keys and
   * mobile keyboards compose there and their text reaches the remote side (a canvas gets no text input). */
  private readonly sink: HTMLTextAreaElement;
  private readonly ctx: CanvasRenderingContext2D;
  private readonly wrap: HTMLElement;
  private readonly overlay: HTMLElement;
  private readonly clipText: HTMLTextAreaElement;
  private readonly clipPanel: HTMLElement;
  private readonly observer: ResizeObserver;
  private width = 0;
  private height = 0;
  private frames = 0;
  private pending: Op[] = [];
  private chain: Promise<void> = Promise.resolve();
  private scale: Scale = 'fit';
  private pressed = new Map<string, KeyCode>();
  private buttons = 0;
  private move: { x: number; y: number } | null = null;
  private moveScheduled = false;
  private last = { x: 0, y: 0 };
  private wheelAcc = 0;
  private lastClipboard = '';
  /** The last write to the local clipboard (a read on focus waits for it). */
  private clipWrite: Promise<void> = Promise.resolve();
  private pendingPasteKey: { code: string; key: KeyCode; timer: number } | null = null;
  /** A dead key was pressed and no composition started: the next character key is the composed one. */
  private afterDead = false;
  private resizeTimer: number | undefined;
  private disposed = false;
  private readonly streams = new Map<number, VideoStream>();
  private readonly cache = new Map<number, OffscreenCanvas>();
  private videoFrames = 0;
  /** Sent once the capabilities went out (the size must not overtake them). */
  private capsSent: Promise<void> = Promise.resolve();

  constructor(stage: HTMLElement, private readonly send: Send, protocol = 'vnc') {
    // RDP desktops take the browser's size (the bridge waits for it before connecting).
    if (protocol === 'rdp') this.scale = 'remote';
    this.canvas = h('canvas', { id: 'display', tabindex: '0' });
    const ctx = this.canvas.getContext('2d', { alpha: false });
    if (!ctx) throw new Error('no 2d canvas');
    this.ctx = ctx;
    this.overlay = h('div', { id: 'display-overlay' });
    this.sink = h('textarea', {
      id: 'display-input', autocomplete: 'off', autocapitalize: 'off', autocorrect: 'off', spellcheck: 'false',
      'aria-label': 'Keyboard input for the remote desktop',
    });
    this.wrap = h('div', { id: 'display-wrap' }, this.canvas, this.sink, this.overlay);
    this.clipText = h('textarea', { id: 'clipboard-text', placeholder: 'Text to send to the remote clipboard; text copied there appears here.' });
    const clipSend = h('button', { id: 'clipboard-send' }, 'Send to remote');
    this.clipPanel = h('div', { id: 'clipboard-panel', hidden: true }, this.clipText, clipSend);
    stage.replaceChildren(this.wrap, this.clipPanel);

    const scaleSel = h('select', { id: 'display-scale', title: 'Display size' },
      h('option', { value: 'fit' }, 'Fit to window'),
      h('option', { value: 'actual' }, 'Actual size'),
      h('option', { value: 'remote' }, 'Resize remote'));
    scaleSel.value = this.scale;
    const keysSel = h('select', { id: 'special-keys', title: 'Send special keys' }, h('option', { value: '' }, 'Keys…'),
      ...SPECIAL_KEYS.map(([name], i) => h('option', { value: String(i) }, name)));
    const clipBtn = h('button', { id: 'clipboard-toggle' }, 'Clipboard');
    const fullBtn = h('button', { id: 'fullscreen' }, 'Fullscreen');
    this.controls = [scaleSel, keysSel, clipBtn, fullBtn];

    scaleSel.addEventListener('change', () => {
      this.scale = scaleSel.value as Scale;
      this.layout();
      if (this.scale === 'remote') this.requestRemoteSize();
      this.focus();
    });
    keysSel.addEventListener('change', () => {
      const combo = SPECIAL_KEYS[Number(keysSel.value)];
      keysSel.value = '';
      if (!combo) return;
      for (const [k, sc] of combo[1]) send(wire.key(k, true, sc));
      for (const [k, sc] of [...combo[1]].reverse()) send(wire.key(k, false, sc));
      this.focus();
    });
    clipBtn.addEventListener('click', () => {
      this.clipPanel.hidden = !this.clipPanel.hidden;
      if (!this.clipPanel.hidden) this.clipText.focus();
    });
    clipSend.addEventListener('click', () => {
      this.sendClipboard(this.clipText.value);
      this.focus();
    });
    fullBtn.addEventListener('click', () => {
      const root = stage.closest('.session') ?? stage;
      if (document.fullscreenElement) void document.exitFullscreen();
      else void root.requestFullscreen().then(() => {
        // Keep Escape, Alt+Tab and friends for the remote desktop where the browser allows it.
        const kb = (navigator as unknown as { keyboard?: { lock?: () => Promise<void> } }).keyboard;
        void kb?.lock?.().catch(() => undefined);
      }, () => undefined);
      this.focus();
    });

    this.bindInput();
    this.observer = new ResizeObserver(() => {
      this.layout();
      if (this.scale === 'remote') this.requestRemoteSize();
    });
    this.observer.observe(stage);

    window.porticoCanvasPixel = (x, y) => Array.from(this.ctx.getImageData(x, y, 1, 1).data.subarray(0, 3));
    window.porticoDisplay = { frames: 0, width: 0, height: 0, clipboard: '' };
  }

  attached(reattached: boolean): void {
    // What this browser can decode goes first: an RDP bridge chooses the graphics path from it.
    this.capsSent = decodesH264().then((ok) => this.send(wire.caps(ok ? wire.CAPS_H264 : 0)));
    // The bridge sends the whole screen after every attach; frames of the old connection are void, and a
    // video stream restarts from the key frame the bridge sends first.
    if (reattached) {
      this.dropPending();
      this.closeStreams();
    }
    if (this.scale === 'remote') this.requestRemoteSize();
  }

  handle(msg: wire.ServerMsg): void {
    switch (msg.type) {
      case 'size':
        // A new desktop (or the full picture of a reattach): video streams restart at their next key frame.
        this.closeStreams();
        this.pending.push({ kind: 'size', width: msg.width, height: msg.height });
        break;
      case 'image': {
        const bitmap = createImageBitmap(new Blob([msg.data], { type: msg.mime })).catch((e: unknown) => {
          console.warn('portico: undecodable image', e);
          return null;
        });
        this.pending.push({ kind: 'image', rect: msg.rect, bitmap });
        break;
      }
      case 'copy':
        this.pending.push({ kind: 'copy', sx: msg.sx, sy: msg.sy, rect: msg.rect });
        break;
      case 'fill':
        this.pending.push({ kind: 'fill', rect: msg.rect, color: `rgb(${msg.rgb[0]},${msg.rgb[1]},${msg.rgb[2]})` });
        break;
      case 'cursor': {
        const css = msg.png.length ? `url(data:image/png;base64,${base64(msg.png)}) ${msg.hotX} ${msg.hotY}, default` : 'none';
        this.pending.push({ kind: 'cursor', css });
        break;
      }
      case 'frame': {
        const ops = this.pending;
        this.pending = [];
        const id = msg.id;
        this.chain = this.chain.then(async () => {
          try {
            // In order, each op once its picture is decoded (already decoded ones do not yield, so the frame
            // is drawn in one go; a frame of many video pictures, a reattach's history, holds one at a time).
            for (const op of ops) {
              const decoded = op.kind === 'image' ? await op.bitmap : op.kind === 'video' ? await op.frame : null;
              if (this.disposed) {
                decoded?.close();
                continue;
              }
              this.apply(op, decoded);
            }
          } catch (e) {
            console.warn('portico: frame not fully drawn', e);
          } finally {
            // The acknowledgement always goes: a frame that failed to draw must not stall the session.
            this.frames++;
            if (window.porticoDisplay) window.porticoDisplay.frames = this.frames;
            if (!this.disposed) this.send(wire.frameAck(id));
          }
        });
        break;
      }
      case 'clipboard':
        this.remoteClipboard(msg.text);
        break;
      case 'video': {
        let stream = this.streams.get(msg.stream);
        if (!stream) {
          stream = new VideoStream();
          this.streams.set(msg.stream, stream);
        }
        this.pending.push({ kind: 'video', x: msg.x, y: msg.y, rects: msg.rects, frame: stream.decode(msg.key, msg.data) });
        break;
      }
      case 'cache_store':
        this.pending.push({ kind: 'cache_store', slot: msg.slot, rect: msg.rect });
        break;
      case 'cache_draw':
        this.pending.push({ kind: 'cache_draw', slot: msg.slot, x: msg.x, y: msg.y });
        break;
      default:
        break;
    }
  }

  /** Drop the ops of an unfinished frame, closing what they decoded. */
  private dropPending(): void {
    for (const op of this.pending) {
      if (op.kind === 'image') void op.bitmap.then((b) => b?.close());
      if (op.kind === 'video') void op.frame.then((f) => f?.close());
    }
    this.pending = [];
  }

  private closeStreams(): void {
    for (const s of this.streams.values()) s.close();
    this.streams.clear();
  }

  private apply(op: Op, bitmap: ImageBitmap | VideoFrame | null): void {
    const ctx = this.ctx;
    switch (op.kind) {
      case 'size':
        this.width = op.width;
        this.height = op.height;
        this.canvas.width = op.width;
        this.canvas.height = op.height;
        if (window.porticoDisplay) Object.assign(window.porticoDisplay, { width: op.width, height: op.height });
        this.layout();
        break;
      case 'image':
        if (bitmap) {
          ctx.drawImage(bitmap, op.rect.x, op.rect.y);
          bitmap.close();
        }
        break;
      case 'video':
        if (bitmap) {
          try {
            for (const r of op.rects) ctx.drawImage(bitmap, r.x, r.y, r.w, r.h, op.x + r.x, op.y + r.y, r.w, r.h);
            this.videoFrames++;
          } finally {
            bitmap.close();
          }
        }
        if (window.porticoDisplay) {
          window.porticoDisplay.videoFrames = this.videoFrames;
          window.porticoDisplay.videoDropped = [...this.streams.values()].reduce((n, s) => n + s.dropped, 0);
        }
        break;
      case 'cache_store': {
        if (op.rect.w === 0 || op.rect.h === 0) {
          this.cache.delete(op.slot);
          break;
        }
        const c = new OffscreenCanvas(op.rect.w, op.rect.h);
        c.getContext('2d')?.drawImage(this.canvas, op.rect.x, op.rect.y, op.rect.w, op.rect.h, 0, 0, op.rect.w, op.rect.h);
        this.cache.set(op.slot, c);
        break;
      }
      case 'cache_draw': {
        const c = this.cache.get(op.slot);
        if (c) ctx.drawImage(c, op.x, op.y);
        break;
      }
      case 'copy':
        ctx.drawImage(this.canvas, op.sx, op.sy, op.rect.w, op.rect.h, op.rect.x, op.rect.y, op.rect.w, op.rect.h);
        break;
      case 'fill':
        ctx.fillStyle = op.color;
        ctx.fillRect(op.rect.x, op.rect.y, op.rect.w, op.rect.h);
        break;
      case 'cursor':
        this.canvas.style.cursor = op.css;
        break;
    }
  }

  /** Size the canvas element for the scaling mode (the canvas keeps the remote resolution). */
  private layout(): void {
    if (!this.width || !this.height) return;
    const box = this.wrap.getBoundingClientRect();
    let s = 1;
    if (this.scale === 'fit' && box.width > 0 && box.height > 0) s = Math.min(box.width / this.width, box.height / this.height);
    this.canvas.style.width = `${Math.floor(this.width * s)}px`;
    this.canvas.style.height = `${Math.floor(this.height * s)}px`;
    this.wrap.classList.toggle('scroll', this.scale !== 'fit');
  }

  /** Ask the remote side to take the size of the window (servers with ExtendedDesktopSize or RDP). */
  private requestRemoteSize(): void {
    window.clearTimeout(this.resizeTimer);
    this.resizeTimer = window.setTimeout(() => void this.capsSent.then(() => {
      const box = this.wrap.getBoundingClientRect();
      const w = Math.floor(box.width) & ~1;
      const hgt = Math.floor(box.height) & ~1;
      if (w >= 200 && hgt >= 200 && (w !== this.width || hgt !== this.height)) this.send(wire.resize(0, 0, w, hgt));
    }), 250);
  }

  private toRemote(e: MouseEvent): { x: number; y: number } {
    const r = this.canvas.getBoundingClientRect();
    const x = ((e.clientX - r.left) * this.width) / Math.max(1, r.width);
    const y = ((e.clientY - r.top) * this.height) / Math.max(1, r.height);
    return { x: Math.max(0, Math.min(this.width - 1, Math.floor(x))), y: Math.max(0, Math.min(this.height - 1, Math.floor(y))) };
  }

  /** A key goes after any pointer move still waiting for its animation frame: with focus following the
   * pointer, the remote must see the pointer where the user left it before the keys typed there. */
  private key(k: KeyCode, down: boolean): void {
    if (this.move) this.flushMove();
    this.send(wire.key(k[0], down, k[1]));
  }

  /** Put the text field where the pointer is (an input method opens its candidates next to it). */
  private placeSink(e: MouseEvent): void {
    const w = this.wrap.getBoundingClientRect();
    this.sink.style.left = `${Math.round(e.clientX - w.left + this.wrap.scrollLeft)}px`;
    this.sink.style.top = `${Math.round(e.clientY - w.top + this.wrap.scrollTop)}px`;
  }

  private flushMove(): void {
    this.moveScheduled = false;
    if (!this.move) return;
    this.last = this.move;
    this.move = null;
    this.send(wire.pointer(this.last.x, this.last.y, this.buttons));
  }

  private bindInput(): void {
    const c = this.canvas;
    c.addEventListener('contextmenu', (e) => e.preventDefault());
    c.addEventListener('pointermove', (e) => {
      // Moves are coalesced to one per animation frame; button changes go at once.
      this.move = this.toRemote(e);
      if (!this.moveScheduled) {
        this.moveScheduled = true;
        requestAnimationFrame(() => this.flushMove());
      }
    });
    const buttonEvent = (e: PointerEvent) => {
      e.preventDefault();
      if (e.type === 'pointerdown') {
        this.placeSink(e);
        this.focus();
        c.setPointerCapture(e.pointerId);
      }
      this.move = null;
      this.last = this.toRemote(e);
      this.buttons = rfbButtons(e.buttons);
      this.send(wire.pointer(this.last.x, this.last.y, this.buttons));
    };
    c.addEventListener('pointerdown', buttonEvent);
    c.addEventListener('pointerup', buttonEvent);
    c.addEventListener('wheel', (e) => {
      e.preventDefault();
      const px = e.deltaMode === 1 ? e.deltaY * 40 : e.deltaMode === 2 ? e.deltaY * 400 : e.deltaY;
      this.wheelAcc += px;
      const pos = this.toRemote(e);
      while (Math.abs(this.wheelAcc) >= 50) {
        const bit = this.wheelAcc < 0 ? 8 : 16;
        this.wheelAcc -= Math.sign(this.wheelAcc) * 50;
        this.send(wire.pointer(pos.x, pos.y, this.buttons | bit));
        this.send(wire.pointer(pos.x, pos.y, this.buttons));
      }
    }, { passive: false });

    // The canvas takes no keys: focus goes to the text field, which sits under the pointer so that an input
    // method's candidate window opens where the user works.
    c.addEventListener('focus', () => this.focus());
    const k = this.sink;
    k.addEventListener('keydown', (e) => {
      // An input method's keys compose in the field; their text comes as input or composition events.
      if (imeKey(e)) {
        if (e.key === 'Dead' && !e.isComposing) this.afterDead = true;
        return;
      }
      // Where the browser composes a dead key without composition events (Windows, Linux without an input
      // method), the next key carries the composed character on the physical key's code: as a scancode
      // the remote would type the plain letter, so it goes as text.
      if (this.afterDead && [...e.key].length === 1) {
        this.afterDead = false;
        e.preventDefault();
        this.typeKeys(textKeys(e.key));
        return;
      }
      this.afterDead = false;
      const keysym = keysymOf(e);
      if (keysym === null) return;
      const key: KeyCode = [keysym, scancodeOf(e)];
      const id = e.code || e.key;
      if ((e.ctrlKey || e.metaKey) && !e.altKey && e.key.toLowerCase() === 'v') {
        // Let the browser run its paste, so the remote clipboard is updated before the remote sees Ctrl+V.
        this.flushPasteKey();
        this.pressed.set(id, key);
        const timer = window.setTimeout(() => this.flushPasteKey(), 150);
        this.pendingPasteKey = { code: id, key, timer };
        return;
      }
      // A key typed as itself: no input event follows it.
      e.preventDefault();
      this.pressed.set(id, key);
      this.key(key, true);
    });
    k.addEventListener('keyup', (e) => {
      const id = e.code || e.key;
      if (this.pendingPasteKey?.code === id) this.flushPasteKey();
      const held = this.pressed.get(id);
      this.pressed.delete(id);
      if (held === undefined) return; // its press went to an input method, or elsewhere
      e.preventDefault();
      this.key(held, false);
    });
    // Text without keys: `insertText` (dead keys, mobile keyboards, automation), line breaks and deletions
    // of virtual keyboards. A composition's text is typed once, when it is committed.
    k.addEventListener('input', (e) => {
      const ev = e as InputEvent;
      if (ev.isComposing || ev.inputType === 'insertCompositionText') return;
      this.typeKeys(inputKeys(ev.inputType, ev.data));
      k.value = '';
    });
    k.addEventListener('compositionend', (e) => {
      this.afterDead = false;
      this.typeKeys(textKeys(e.data ?? ''));
      k.value = '';
    });
    k.addEventListener('paste', (e) => {
      const text = e.clipboardData?.getData('text/plain');
      if (text) this.sendClipboard(text);
      e.preventDefault();
      this.flushPasteKey();
    });
    k.addEventListener('blur', () => this.releaseAll());
    k.addEventListener('focus', () => {
      // Seamless clipboard where the browser allows reading it (Chromium with permission).
      void this.clipWrite
        .then(() => navigator.clipboard?.readText?.())
        .then((t) => {
          if (t && t !== this.lastClipboard) this.sendClipboard(t);
        }, () => undefined);
    });
  }

  /** Type keys that no physical key pressed: each pressed and released. */
  private typeKeys(keys: KeyCode[]): void {
    for (const key of keys) {
      this.key(key, true);
      this.key(key, false);
    }
    if (keys.length && window.porticoDisplay) window.porticoDisplay.typed = (window.porticoDisplay.typed ?? 0) + keys.length;
  }

  private flushPasteKey(): void {
    const p = this.pendingPasteKey;
    if (!p) return;
    this.pendingPasteKey = null;
    window.clearTimeout(p.timer);
    this.key(p.key, true);
  }

  /** Release every key still down (focus left the canvas: the remote must not see a stuck key). */
  private releaseAll(): void {
    this.flushPasteKey();
    for (const k of this.pressed.values()) this.key(k, false);
    this.pressed.clear();
    if (this.buttons) {
      this.buttons = 0;
      this.send(wire.pointer(this.last.x, this.last.y, 0));
    }
  }

  private sendClipboard(text: string): void {
    this.lastClipboard = text;
    this.clipText.value = text;
    this.send(wire.clipboard(text));
    this.writeLocal(text);
  }

  /** Keep the browser's clipboard equal to the remote one where the browser allows it. */
  private writeLocal(text: string): void {
    if (!document.hasFocus() || !navigator.clipboard?.writeText) return;
    this.clipWrite = navigator.clipboard.writeText(text).catch(() => undefined);
  }

  private remoteClipboard(text: string): void {
    this.lastClipboard = text;
    this.clipText.value = text;
    if (window.porticoDisplay) window.porticoDisplay.clipboard = text;
    this.writeLocal(text);
  }

  state(state: State, text: string): void {
    this.overlay.textContent = text;
    this.overlay.hidden = state === 'connected';
    if (state === 'closed') this.releaseAll();
  }

  focus(): void {
    this.sink.focus({ preventScroll: true });
  }

  dispose(): void {
    this.disposed = true;
    this.observer.disconnect();
    window.clearTimeout(this.resizeTimer);
    this.closeStreams();
    this.dropPending();
    this.cache.clear();
  }
}
