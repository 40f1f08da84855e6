// The recording format's reader (docs/protocol.md "Recording format"; the writer is proto/src/recording.rs):
// the chunks of a recording, each checked against the SHA-256 chain with WebCrypto, and their records. A
// recording cut short (its bridge died) reads up to its last whole chunk; any altered byte fails.

/** The first bytes of every recording. */
const MAGIC = 'PORTREC1';
/** A chunk's payload never exceeds this (refused before it is read). */
const MAX_CHUNK_BYTES = 96 << 20;
const FLAG_META = 1;
const FLAG_KEYFRAME = 2;
const HEAD = 4 + 8 + 1;
const HASH = 32;
const RECORD_HEAD = 8 + 1 + 4;

/** 0 output (bridge → client), 1 input (client → bridge), 2 a keyframe's state (bridge → client). */
export type Kind = 0 | 1 | 2;
export const OUTPUT: Kind = 0;
export const INPUT: Kind = 1;
export const STATE: Kind = 2;

export interface Meta {
  session_id: string; connection_id: string; protocol: string; user: string; started_unix_ms: number; input: boolean;
}

export interface RecordEntry {
  /** Milliseconds since the session began. */
  at: number;
  kind: Kind;
  /** The encoded wire message. */
  data: Uint8Array<ArrayBuffer>;
  /** Its chunk starts with a keyframe. */
  keyframe: boolean;
}

export interface Recording {
  meta: Meta;
  records: RecordEntry[];
  /** Every byte was read into whole, checked chunks (`false`: cut short; `problem` says where). */
  intact: boolean;
  problem: string | null;
  durationMs: number;
  /** Where playback may start: the time of each keyframe chunk and the index of its first record. */
  keyframes: { at: number; index: number }[];
}

async function sha256(parts: Uint8Array[]): Promise<Uint8Array> {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const all = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return new Uint8Array(await crypto.subtle.digest('SHA-256', all));
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Read and check a whole recording; throws on a wrong magic, a failed hash or a malformed chunk. */
export async function readRecording(buf: ArrayBuffer): Promise<Recording> {
  const bytes = new Uint8Array(buf);
  const view = new DataView(buf);
  if (bytes.length < MAGIC.length || String.fromCharCode(...bytes.subarray(0, MAGIC.length)) !== MAGIC) {
    throw new Error('not a portico recording');
  }
  let off = MAGIC.length;
  let prev: Uint8Array = new Uint8Array(HASH);
  let meta: Meta | null = null;
  const records: RecordEntry[] = [];
  const keyframes: { at: number; index: number }[] = [];
  let last = 0;
  while (off + HEAD <= bytes.length) {
    const len = view.getUint32(off);
    if (len > MAX_CHUNK_BYTES) throw new Error(`chunk at byte ${off} claims ${len} bytes, over the limit`);
    if (off + HEAD + len + HASH > bytes.length) break;
    const head = bytes.subarray(off, off + HEAD);
    const payload = bytes.subarray(off + HEAD, off + HEAD + len);
    const stored = bytes.subarray(off + HEAD + len, off + HEAD + len + HASH);
    const hash = await sha256([prev, head, payload]);
    if (!equal(hash, stored)) {
      throw new Error(`chunk at byte ${off} fails its hash: the recording was altered, reordered or is corrupt`);
    }
    const flags = bytes[off + 12] ?? 0;
    if (meta === null) {
      if ((flags & FLAG_META) === 0) throw new Error('the recording does not start with its metadata');
      meta = JSON.parse(new TextDecoder().decode(payload)) as Meta;
    } else {
      if ((flags & FLAG_META) !== 0) throw new Error(`chunk at byte ${off} holds a malformed record`);
      const keyframe = (flags & FLAG_KEYFRAME) !== 0;
      if (keyframe && len > 0) keyframes.push({ at: Number(view.getBigUint64(off + 4)), index: records.length });
      let p = off + HEAD;
      const end = off + HEAD + len;
      while (p < end) {
        if (end - p < RECORD_HEAD) throw new Error(`chunk at byte ${off} holds a malformed record`);
        const at = Number(view.getBigUint64(p));
        const kind = bytes[p + 8] ?? 255;
        const n = view.getUint32(p + 9);
        if (kind > 2 || at < last || end - p - RECORD_HEAD < n) throw new Error(`chunk at byte ${off} holds a malformed record`);
        last = at;
        records.push({ at, kind: kind as Kind, data: bytes.slice(p + RECORD_HEAD, p + RECORD_HEAD + n), keyframe });
        p += RECORD_HEAD + n;
      }
    }
    prev = hash;
    off += HEAD + len + HASH;
  }
  if (meta === null) throw new Error('the recording does not start with its metadata');
  const intact = off === bytes.length;
  return {
    meta,
    records,
    intact,
    problem: intact ? null : `the recording ends inside a chunk at byte ${off}`,
    durationMs: records.length ? records[records.length - 1]!.at : 0,
    keyframes,
  };
}

/** Where to start drawing the moment `at`: the first record of the last keyframe at or before it (`null`:
 * none, play from the start). */
export function keyframeBefore(rec: Recording, at: number): number | null {
  let best: number | null = null;
  for (const k of rec.keyframes) {
    if (k.at > at) break;
    best = k.index;
  }
  return best;
}
