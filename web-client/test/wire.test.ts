// The web client's codec against the shared wire-protocol test vectors (proto/vectors/wire.json, generated
// from the Rust codec): every server message decodes to its value, every client message the web client
// sends encodes to exactly its bytes, and every malformed server message is refused. `npm test` bundles
// this file and runs its cases with node's test runner (test/run.mjs).

import vectors from '../../proto/vectors/wire.json';
import { CLOSE_CODES, type CloseCode, isCloseCode } from '../src/codes';
import * as wire from '../src/wire';

type Value = { type: string } & Record<string, unknown>;
interface Vector { name: string; value: Value; hex: string; decode_only?: boolean }
interface Malformed { name: string; hex: string; error: string }
interface Vectors { server: Vector[]; client: Vector[]; malformed_server: Malformed[]; malformed_client: Malformed[] }

export interface Case { name: string; run: () => void }

const file = vectors as unknown as Vectors;

function bytes(hex: string): Uint8Array<ArrayBuffer> {
  if (hex.length % 2 !== 0 || /[^0-9a-f]/.test(hex)) throw new Error(`bad hex ${hex}`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** A fresh ArrayBuffer holding exactly these bytes (what a WebSocket message gives the decoder). */
function buffer(hexText: string): ArrayBuffer {
  return bytes(hexText).buffer;
}

function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o).sort().map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

function assertEqual(actual: unknown, expected: unknown, what: string): void {
  const a = canonical(actual);
  const e = canonical(expected);
  if (a !== e) throw new Error(`${what}:\n  got      ${a}\n  expected ${e}`);
}

const FORMAT: Record<string, number> = { 'image/png': 1, 'image/jpeg': 2 };

/** A decoded message in the vectors' shape (flat fields, bytes in hex). */
export function serverValue(m: wire.ServerMsg): Value {
  switch (m.type) {
    case 'hello': return { type: 'hello', ...m.hello };
    case 'output': return { type: 'term_output', data: hex(m.data) };
    case 'status': return { type: 'status', ...m.status };
    case 'error': return { type: 'error', ...m.error };
    case 'closed': return { type: 'closed', ...m.closed };
    case 'pong': return { type: 'pong', data: hex(m.data) };
    case 'share': return { type: 'share', ...m.share };
    case 'size': return { type: 'display_size', width: m.width, height: m.height };
    case 'image': return { type: 'image', x: m.rect.x, y: m.rect.y, width: m.rect.w, height: m.rect.h, format: FORMAT[m.mime], data: hex(m.data) };
    case 'copy': return { type: 'copy', src_x: m.sx, src_y: m.sy, x: m.rect.x, y: m.rect.y, width: m.rect.w, height: m.rect.h };
    case 'fill': return { type: 'fill', x: m.rect.x, y: m.rect.y, width: m.rect.w, height: m.rect.h, rgb: m.rgb };
    case 'cursor': return { type: 'cursor', hot_x: m.hotX, hot_y: m.hotY, png: hex(m.png) };
    case 'frame': return { type: 'frame_end', frame_id: m.id };
    case 'clipboard': return { type: 'remote_clipboard', text: m.text };
    case 'video': return { type: 'video', stream: m.stream, x: m.x, y: m.y, key: m.key, rects: m.rects.map((r) => [r.x, r.y, r.w, r.h]), data: hex(m.data) };
    case 'cache_store': return { type: 'cache_store', slot: m.slot, x: m.rect.x, y: m.rect.y, width: m.rect.w, height: m.rect.h };
    case 'cache_draw': return { type: 'cache_draw', slot: m.slot, x: m.x, y: m.y };
    case 'file': return { type: 'file_reply', reply: m.reply };
    case 'file_data': return { type: 'file_data', id: m.id, data: hex(m.data) };
    case 'audio': return { type: 'audio', seq: m.seq, data: hex(m.data) };
  }
}

const num = (v: Value, k: string): number => {
  const n = v[k];
  if (typeof n !== 'number') throw new Error(`${v.type}.${k} is not a number`);
  return n;
};
const str = (v: Value, k: string): string => {
  const s = v[k];
  if (typeof s !== 'string') throw new Error(`${v.type}.${k} is not a string`);
  return s;
};

/** The bytes the web client sends for a client message of the vectors. */
export function encodeClient(v: Value): Uint8Array {
  switch (v.type) {
    case 'term_input': return wire.termInput(bytes(str(v, 'data')));
    case 'resize': return wire.resize(num(v, 'cols'), num(v, 'rows'), num(v, 'width_px'), num(v, 'height_px'));
    case 'ping': return wire.ping(bytes(str(v, 'data')));
    case 'frame_ack': return wire.frameAck(num(v, 'frame_id'));
    case 'clipboard': return wire.clipboard(str(v, 'text'));
    case 'disconnect': return wire.disconnect();
    case 'key': return wire.key(num(v, 'keysym'), v.down === true, num(v, 'scancode'));
    case 'pointer': return wire.pointer(num(v, 'x'), num(v, 'y'), num(v, 'buttons'));
    case 'credentials': return wire.credentials(str(v, 'username'), str(v, 'password'), v.domain === null ? null : str(v, 'domain'));
    case 'caps': return wire.caps(num(v, 'flags'));
    case 'file_request': return wire.fileRequest(v.request as wire.FileRequest);
    case 'file_chunk': return wire.fileChunk(num(v, 'id'), bytes(str(v, 'data')));
    case 'audio_control': return wire.audioControl(v.play === true);
    default: throw new Error(`no encoder for client message ${v.type}`);
  }
}

export function cases(): Case[] {
  const out: Case[] = [];
  if (file.server.length === 0 || file.client.length === 0 || file.malformed_server.length === 0) {
    throw new Error('the vectors file has no vectors');
  }
  for (const v of file.server) {
    out.push({
      name: `server: ${v.name}`,
      run: () => assertEqual(serverValue(wire.decode(buffer(v.hex))), v.value, v.name),
    });
  }
  for (const v of file.client.filter((c) => !c.decode_only)) {
    out.push({ name: `client: ${v.name}`, run: () => assertEqual(hex(encodeClient(v.value)), v.hex, v.name) });
  }
  for (const m of file.malformed_server) {
    out.push({
      name: `malformed server message refused: ${m.name}`,
      run: () => {
        let decoded: wire.ServerMsg | undefined;
        try {
          decoded = wire.decode(buffer(m.hex));
        } catch {
          return;
        }
        throw new Error(`decoded to ${canonical(serverValue(decoded))}; the bridge's codec says: ${m.error}`);
      },
    });
  }
  out.push({
    name: 'every close code of the vectors is a CloseCode, and every CloseCode is in them',
    run: () => {
      const seen = new Set<CloseCode>();
      for (const v of file.server) {
        if (v.value.type !== 'error' && v.value.type !== 'closed') continue;
        const code = v.value.code;
        if (!isCloseCode(code)) throw new Error(`${v.name}: ${String(code)} is not a CloseCode`);
        seen.add(code);
      }
      assertEqual([...seen].sort(), (Object.keys(CLOSE_CODES) as CloseCode[]).sort(), 'close codes');
      if (isCloseCode('toString') || isCloseCode('Ended')) throw new Error('isCloseCode accepts a non-code');
    },
  });
  return out;
}
