// The Portico browser wire protocol v1 (docs/protocol.md): [version, type, payload...] in binary messages.
// Checked against the shared test vectors of proto/vectors/wire.json (test/wire.test.ts): a message the
// Rust codec refuses is refused here too.

import { type CloseCode, isCloseCode } from './codes';

export type { CloseCode } from './codes';

export const VERSION = 1;
export const SUBPROTOCOL = 'portico.v1';
export const TOKEN_PREFIX = 'portico.token.';
export const RESUME_PREFIX = 'portico.resume.';

export const S_HELLO = 0x01;
export const S_TERM_OUTPUT = 0x02;
export const S_STATUS = 0x03;
export const S_ERROR = 0x04;
export const S_CLOSED = 0x05;
export const S_PONG = 0x06;
export const S_SHARE = 0x07;
export const S_FILE_REPLY = 0x08;
export const S_FILE_DATA = 0x09;
export const S_AUDIO = 0x0a;
export const S_DISPLAY_SIZE = 0x20;
export const S_IMAGE = 0x21;
export const S_COPY = 0x22;
export const S_FILL = 0x23;
export const S_CURSOR = 0x24;
export const S_FRAME_END = 0x25;
export const S_VIDEO = 0x26;
export const S_CACHE_STORE = 0x27;
export const S_CACHE_DRAW = 0x28;
export const S_REMOTE_CLIPBOARD = 0x40;

export const C_TERM_INPUT = 0x81;
export const C_RESIZE = 0x82;
export const C_PING = 0x83;
export const C_FRAME_ACK = 0x84;
export const C_CLIPBOARD = 0x85;
export const C_DISCONNECT = 0x86;
export const C_KEY = 0x87;
export const C_CREDENTIALS = 0x89;
export const C_POINTER = 0x88;
export const C_CAPS = 0x8a;
export const C_FILE_REQUEST = 0x8b;
export const C_FILE_CHUNK = 0x8c;
export const C_AUDIO_CONTROL = 0x8d;

/** AUDIO packets: Opus, 20 ms at 48 kHz, stereo (proto/src/wire.rs AUDIO_*). */
export const AUDIO_SAMPLE_RATE = 48000;
export const AUDIO_CHANNELS = 2;
export const MAX_AUDIO_PACKET = 1275;

/** The largest chunk of file data in one message, and the bytes in flight per transfer (proto/src/files.rs). */
export const FILE_CHUNK = 32 * 1024;
export const FILE_WINDOW = 8 * FILE_CHUNK;

/** CAPS flag: this client decodes H.264 (AVC420, Annex B) in VIDEO messages. */
export const CAPS_H264 = 1;

export interface Hello { session_id: string; protocol: string; resume_token: string; grace_seconds: number; reattached: boolean; recording?: boolean }
/** What a session's connection lets its user move (proto/src/files.rs `FilePolicy`). */
export type FilePolicy = 'none' | 'download' | 'upload' | 'both';
export interface Status { state: string; message: string; graphics?: string; files?: FilePolicy; audio?: string }
export interface FileEntry { name: string; dir: boolean; size: number; mtime: number }
/** The bridge's answer to file request `id` (proto/src/files.rs `FileReply`). */
export type FileReply = { id: number } & (
  | { kind: 'entries'; path: string; entries: FileEntry[]; truncated?: number }
  | { kind: 'started'; size: number }
  | { kind: 'progress'; bytes: number }
  | { kind: 'done'; bytes: number }
  | { kind: 'failed'; message: string });
/** A file operation (proto/src/files.rs `FileRequest`). */
export type FileRequest = { id: number } & (
  | { op: 'list'; path: string }
  | { op: 'mkdir'; path: string }
  | { op: 'remove'; path: string }
  | { op: 'download'; path: string }
  | { op: 'upload'; path: string; size: number }
  | { op: 'ack'; bytes: number }
  | { op: 'cancel' });
export interface ErrorInfo { code: CloseCode; message: string; fatal: boolean }
export interface Closed { code: CloseCode; reason: string }
export type ShareMode = 'view' | 'control';
export interface ViewerInfo { id: string; name: string; mode: ShareMode; shadow?: boolean }
/** Who watches a shared session; `mode` is this browser's when it is a viewer (absent for the owner), and
 * `cols`/`rows` the owner's terminal size. */
export interface ShareInfo { mode?: ShareMode; viewers: ViewerInfo[]; cols?: number; rows?: number }

export interface Rect { x: number; y: number; w: number; h: number }

export type ServerMsg =
  | { type: 'hello'; hello: Hello }
  | { type: 'output'; data: Uint8Array }
  | { type: 'status'; status: Status }
  | { type: 'error'; error: ErrorInfo }
  | { type: 'closed'; closed: Closed }
  | { type: 'pong'; data: Uint8Array }
  | { type: 'share'; share: ShareInfo }
  | { type: 'file'; reply: FileReply }
  | { type: 'file_data'; id: number; data: Uint8Array<ArrayBuffer> }
  | { type: 'audio'; seq: number; data: Uint8Array<ArrayBuffer> }
  | { type: 'size'; width: number; height: number }
  | { type: 'image'; rect: Rect; mime: string; data: Uint8Array<ArrayBuffer> }
  | { type: 'copy'; sx: number; sy: number; rect: Rect }
  | { type: 'fill'; rect: Rect; rgb: [number, number, number] }
  | { type: 'cursor'; hotX: number; hotY: number; png: Uint8Array<ArrayBuffer> }
  | { type: 'frame'; id: number }
  | { type: 'clipboard'; text: string }
  | { type: 'video'; stream: number; x: number; y: number; key: boolean; rects: Rect[]; data: Uint8Array<ArrayBuffer> }
  | { type: 'cache_store'; slot: number; rect: Rect }
  | { type: 'cache_draw'; slot: number; x: number; y: number };

// Invalid UTF-8 makes a message malformed (as in the bridge's codec), it is not replaced.
const utf8 = new TextDecoder('utf-8', { fatal: true });

type Field = 'string' | 'string?' | 'boolean' | 'boolean?' | 'u32' | 'code' | 'policy?';

const POLICIES: readonly string[] = ['none', 'download', 'upload', 'both'];

function fieldOk(v: unknown, kind: Field): boolean {
  switch (kind) {
    case 'string': return typeof v === 'string';
    case 'string?': return v === undefined || v === null || typeof v === 'string';
    case 'boolean': return typeof v === 'boolean';
    case 'boolean?': return v === undefined || v === null || typeof v === 'boolean';
    case 'u32': return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
    case 'code': return isCloseCode(v);
    case 'policy?': return v === undefined || v === null || (typeof v === 'string' && POLICIES.includes(v));
  }
}

/** A JSON payload that must be an object with these fields of these types (others, from a later version,
 * are left out). */
function json<T>(payload: Uint8Array, what: string, fields: Record<keyof T, Field>): T {
  const v: unknown = JSON.parse(utf8.decode(payload));
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${what} is not an object`);
  const o = v as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [k, kind] of Object.entries(fields) as [string, Field][]) {
    if (!fieldOk(o[k], kind)) throw new Error(`${what}: bad or missing ${k}`);
    if (o[k] !== undefined && o[k] !== null) out[k] = o[k];
  }
  return out as T;
}

const HELLO: Record<keyof Hello, Field> = { session_id: 'string', protocol: 'string', resume_token: 'string', grace_seconds: 'u32', reattached: 'boolean', recording: 'boolean?' };
const STATUS: Record<keyof Status, Field> = { state: 'string', message: 'string', graphics: 'string?', files: 'policy?', audio: 'string?' };
const ERROR: Record<keyof ErrorInfo, Field> = { code: 'code', message: 'string', fatal: 'boolean' };
const CLOSED: Record<keyof Closed, Field> = { code: 'code', reason: 'string' };

const isMode = (v: unknown): v is ShareMode => v === 'view' || v === 'control';
const isU16 = (v: unknown): boolean => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff;

/** A SHARE payload, checked as the Rust codec checks it (unknown fields of a later version left out). */
function shareInfo(payload: Uint8Array): ShareInfo {
  const v: unknown = JSON.parse(utf8.decode(payload));
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('share is not an object');
  const o = v as Record<string, unknown>;
  const out: ShareInfo = { viewers: [] };
  if (o.mode !== undefined && o.mode !== null) {
    if (!isMode(o.mode)) throw new Error('share: bad mode');
    out.mode = o.mode;
  }
  for (const k of ['cols', 'rows'] as const) {
    if (o[k] === undefined || o[k] === null) continue;
    if (!isU16(o[k])) throw new Error(`share: bad ${k}`);
    out[k] = o[k] as number;
  }
  if (!Array.isArray(o.viewers)) throw new Error('share: bad or missing viewers');
  for (const w of o.viewers as unknown[]) {
    if (typeof w !== 'object' || w === null || Array.isArray(w)) throw new Error('share: a viewer is not an object');
    const r = w as Record<string, unknown>;
    if (typeof r.id !== 'string' || typeof r.name !== 'string' || !isMode(r.mode)) throw new Error('share: bad viewer');
    if (r.shadow !== undefined && r.shadow !== null && typeof r.shadow !== 'boolean') throw new Error('share: bad viewer');
    const info: ViewerInfo = { id: r.id, name: r.name, mode: r.mode };
    if (r.shadow === true) info.shadow = true;
    out.viewers.push(info);
  }
  return out;
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** A FILE_REPLY payload, checked as the Rust codec checks it. */
function fileReply(payload: Uint8Array): FileReply {
  const v: unknown = JSON.parse(utf8.decode(payload));
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('file reply is not an object');
  const o = v as Record<string, unknown>;
  if (!fieldOk(o.id, 'u32')) throw new Error('file reply: bad id');
  const id = o.id as number;
  switch (o.kind) {
    case 'entries': {
      if (typeof o.path !== 'string' || !Array.isArray(o.entries)) throw new Error('file reply: bad entries');
      const entries = (o.entries as unknown[]).map((e) => {
        const r = (typeof e === 'object' && e !== null ? e : {}) as Record<string, unknown>;
        if (typeof r.name !== 'string' || typeof r.dir !== 'boolean' || !isCount(r.size) || !isCount(r.mtime)) {
          throw new Error('file reply: bad entry');
        }
        return { name: r.name, dir: r.dir, size: r.size, mtime: r.mtime };
      });
      const out: FileReply = { id, kind: 'entries', path: o.path, entries };
      if (o.truncated !== undefined && o.truncated !== null) {
        if (!fieldOk(o.truncated, 'u32')) throw new Error('file reply: bad truncated');
        if ((o.truncated as number) > 0) out.truncated = o.truncated as number;
      }
      return out;
    }
    case 'started': if (!isCount(o.size)) throw new Error('file reply: bad size'); return { id, kind: 'started', size: o.size };
    case 'progress': if (!isCount(o.bytes)) throw new Error('file reply: bad bytes'); return { id, kind: 'progress', bytes: o.bytes };
    case 'done': if (!isCount(o.bytes)) throw new Error('file reply: bad bytes'); return { id, kind: 'done', bytes: o.bytes };
    case 'failed': if (typeof o.message !== 'string') throw new Error('file reply: bad message'); return { id, kind: 'failed', message: o.message };
    default: throw new Error('file reply: unknown kind');
  }
}

/** At least `n` payload bytes (exactly `n` unless `more`). */
function need(payload: Uint8Array, n: number, what: string, more = false): DataView {
  if (payload.length < n || (!more && payload.length > n)) throw new Error(`${what} message of ${payload.length} bytes`);
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
}

function rect(v: DataView, at: number): Rect {
  return { x: v.getUint16(at), y: v.getUint16(at + 2), w: v.getUint16(at + 4), h: v.getUint16(at + 6) };
}

/** Image formats of IMAGE messages. */
export const IMAGE_MIME: Readonly<Record<number, string>> = { 1: 'image/png', 2: 'image/jpeg' };

export function decode(buf: ArrayBuffer): ServerMsg {
  const bytes = new Uint8Array(buf);
  if (bytes.length < 2) throw new Error('short message');
  if (bytes[0] !== VERSION) throw new Error(`unsupported protocol version ${bytes[0]}`);
  const payload = bytes.subarray(2);
  let v: DataView;
  switch (bytes[1]) {
    case S_DISPLAY_SIZE: v = need(payload, 4, 'size'); return { type: 'size', width: v.getUint16(0), height: v.getUint16(2) };
    case S_IMAGE: {
      v = need(payload, 9, 'image', true);
      const mime = IMAGE_MIME[payload[8]];
      if (!mime) throw new Error(`unknown image format ${payload[8]}`);
      return { type: 'image', rect: rect(v, 0), mime, data: payload.slice(9) };
    }
    case S_COPY: v = need(payload, 12, 'copy'); return { type: 'copy', sx: v.getUint16(0), sy: v.getUint16(2), rect: rect(v, 4) };
    case S_FILL: v = need(payload, 11, 'fill'); return { type: 'fill', rect: rect(v, 0), rgb: [payload[8], payload[9], payload[10]] };
    case S_CURSOR: v = need(payload, 4, 'cursor', true); return { type: 'cursor', hotX: v.getUint16(0), hotY: v.getUint16(2), png: payload.slice(4) };
    case S_FRAME_END: v = need(payload, 4, 'frame end'); return { type: 'frame', id: v.getUint32(0) };
    case S_REMOTE_CLIPBOARD: return { type: 'clipboard', text: utf8.decode(payload) };
    case S_VIDEO: {
      v = need(payload, 9, 'video', true);
      const n = v.getUint16(7);
      const head = 9 + n * 8;
      need(payload, head, 'video', true);
      const rects: Rect[] = [];
      for (let i = 0; i < n; i++) rects.push(rect(v, 9 + i * 8));
      return { type: 'video', stream: v.getUint16(0), x: v.getUint16(2), y: v.getUint16(4), key: (payload[6] & 1) !== 0, rects, data: payload.slice(head) };
    }
    case S_CACHE_STORE: v = need(payload, 10, 'cache store'); return { type: 'cache_store', slot: v.getUint16(0), rect: rect(v, 2) };
    case S_CACHE_DRAW: v = need(payload, 6, 'cache draw'); return { type: 'cache_draw', slot: v.getUint16(0), x: v.getUint16(2), y: v.getUint16(4) };
    case S_HELLO: return { type: 'hello', hello: json<Hello>(payload, 'hello', HELLO) };
    case S_TERM_OUTPUT: return { type: 'output', data: payload };
    case S_STATUS: return { type: 'status', status: json<Status>(payload, 'status', STATUS) };
    case S_ERROR: return { type: 'error', error: json<ErrorInfo>(payload, 'error', ERROR) };
    case S_CLOSED: return { type: 'closed', closed: json<Closed>(payload, 'closed', CLOSED) };
    case S_PONG: need(payload, 8, 'pong'); return { type: 'pong', data: payload };
    case S_SHARE: return { type: 'share', share: shareInfo(payload) };
    case S_FILE_REPLY: return { type: 'file', reply: fileReply(payload) };
    case S_FILE_DATA: v = need(payload, 4, 'file data', true); return { type: 'file_data', id: v.getUint32(0), data: payload.slice(4) };
    case S_AUDIO: {
      v = need(payload, 5, 'audio', true);
      if (payload.length > 4 + MAX_AUDIO_PACKET) throw new Error(`audio packet of ${payload.length - 4} bytes`);
      return { type: 'audio', seq: v.getUint32(0), data: payload.slice(4) };
    }
    default: throw new Error(`unknown message type ${bytes[1]}`);
  }
}

function frame(type: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(2 + payload.length);
  out[0] = VERSION;
  out[1] = type;
  out.set(payload, 2);
  return out;
}

const utf8enc = new TextEncoder();

export function termInput(data: string | Uint8Array): Uint8Array<ArrayBuffer> {
  return frame(C_TERM_INPUT, typeof data === 'string' ? utf8enc.encode(data) : data);
}

export function resize(cols: number, rows: number, widthPx: number, heightPx: number): Uint8Array<ArrayBuffer> {
  const p = new Uint8Array(8);
  const v = new DataView(p.buffer);
  const clamp = (n: number) => Math.max(0, Math.min(65535, Math.round(n)));
  v.setUint16(0, clamp(cols));
  v.setUint16(2, clamp(rows));
  v.setUint16(4, clamp(widthPx));
  v.setUint16(6, clamp(heightPx));
  return frame(C_RESIZE, p);
}

/** A PING with 8 opaque bytes (by default the time, echoed in the PONG). */
export function ping(data?: Uint8Array): Uint8Array<ArrayBuffer> {
  const p = new Uint8Array(8);
  if (data) {
    if (data.length !== 8) throw new Error('a ping carries 8 bytes');
    p.set(data);
  } else {
    new DataView(p.buffer).setFloat64(0, performance.now());
  }
  return frame(C_PING, p);
}

export function disconnect(): Uint8Array<ArrayBuffer> {
  return frame(C_DISCONNECT);
}

export function frameAck(id: number): Uint8Array<ArrayBuffer> {
  const p = new Uint8Array(4);
  new DataView(p.buffer).setUint32(0, id);
  return frame(C_FRAME_ACK, p);
}

export function key(keysym: number, down: boolean, scancode = 0): Uint8Array<ArrayBuffer> {
  const p = new Uint8Array(7);
  const v = new DataView(p.buffer);
  v.setUint32(0, keysym);
  p[4] = down ? 1 : 0;
  v.setUint16(5, scancode);
  return frame(C_KEY, p);
}

/** Credentials the user typed for this connection attempt (answer to the `credentials` status). */
export function credentials(username: string, password: string, domain: string | null): Uint8Array<ArrayBuffer> {
  return frame(C_CREDENTIALS, new TextEncoder().encode(JSON.stringify({ username, password, domain })));
}

export function pointer(x: number, y: number, buttons: number): Uint8Array<ArrayBuffer> {
  const p = new Uint8Array(5);
  const v = new DataView(p.buffer);
  v.setUint16(0, Math.max(0, Math.min(65535, Math.round(x))));
  v.setUint16(2, Math.max(0, Math.min(65535, Math.round(y))));
  p[4] = buttons;
  return frame(C_POINTER, p);
}

export function clipboard(text: string): Uint8Array<ArrayBuffer> {
  return frame(C_CLIPBOARD, utf8enc.encode(text));
}

/** What this client can do beyond the base protocol (CAPS_H264); sent after every HELLO, before RESIZE. */
export function caps(flags: number): Uint8Array<ArrayBuffer> {
  const p = new Uint8Array(4);
  new DataView(p.buffer).setUint32(0, flags >>> 0);
  return frame(C_CAPS, p);
}

/** A file operation: JSON with the fields in the bridge's order (id, op, then the operation's). */
export function fileRequest(r: FileRequest): Uint8Array<ArrayBuffer> {
  return frame(C_FILE_REQUEST, new TextEncoder().encode(JSON.stringify(r)));
}

/** A chunk of upload `id` (at most FILE_CHUNK bytes). */
export function fileChunk(id: number, data: Uint8Array): Uint8Array<ArrayBuffer> {
  const p = new Uint8Array(4 + data.length);
  new DataView(p.buffer).setUint32(0, id);
  p.set(data, 4);
  return frame(C_FILE_CHUNK, p);
}

/** Play the session's sound, or not (a muted client is sent none). */
export function audioControl(play: boolean): Uint8Array<ArrayBuffer> {
  return frame(C_AUDIO_CONTROL, Uint8Array.of(play ? 1 : 0));
}
