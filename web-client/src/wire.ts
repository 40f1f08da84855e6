// The Portico browser wire protocol v1 (docs/protocol.md): [version, type, payload...] in binary messages.

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

export const C_TERM_INPUT = 0x81;
export const C_RESIZE = 0x82;
export const C_PING = 0x83;
export const C_DISCONNECT = 0x86;

export interface Hello { session_id: string; protocol: string; resume_token: string; grace_seconds: number; reattached: boolean }
export interface Status { state: string; message: string }
export interface ErrorInfo { code: string; message: string; fatal: boolean }
export interface Closed { code: string; reason: string }

export type ServerMsg =
  | { type: 'hello'; hello: Hello }
  | { type: 'output'; data: Uint8Array }
  | { type: 'status'; status: Status }
  | { type: 'error'; error: ErrorInfo }
  | { type: 'closed'; closed: Closed }
  | { type: 'pong' };

const utf8 = new TextDecoder();

function json<T>(payload: Uint8Array): T {
  return JSON.parse(utf8.decode(payload)) as T;
}

export function decode(buf: ArrayBuffer): ServerMsg {
  const bytes = new Uint8Array(buf);
  if (bytes.length < 2) throw new Error('short message');
  if (bytes[0] !== VERSION) throw new Error(`unsupported protocol version ${bytes[0]}`);
  const payload = bytes.subarray(2);
  switch (bytes[1]) {
    case S_HELLO: return { type: 'hello', hello: json<Hello>(payload) };
    case S_TERM_OUTPUT: return { type: 'output', data: payload };
    case S_STATUS: return { type: 'status', status: json<Status>(payload) };
    case S_ERROR: return { type: 'error', error: json<ErrorInfo>(payload) };
    case S_CLOSED: return { type: 'closed', closed: json<Closed>(payload) };
    case S_PONG: return { type: 'pong' };
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

export function ping(): Uint8Array<ArrayBuffer> {
  const p = new Uint8Array(8);
  new DataView(p.buffer).setFloat64(0, performance.now());
  return frame(C_PING, p);
}

export function disconnect(): Uint8Array<ArrayBuffer> {
  return frame(C_DISCONNECT);
}
