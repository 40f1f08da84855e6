// The web client's recording reader against the shared recording (proto/vectors/recording.json, written by
// the Rust writer): the same metadata, records and keyframes; any altered byte fails the chain; a
// recording cut short reads up to its last whole chunk.

import vector from '../../proto/vectors/recording.json';
import { keyframeBefore, readRecording } from '../src/recording';

interface Vector {
  hex: string;
  meta: Record<string, unknown>;
  duration_ms: number;
  keyframes: { at_ms: number; offset: number }[];
  records: { at_ms: number; kind: number; keyframe: boolean; hex: string }[];
}

export interface Case { name: string; run: () => void | Promise<void> }

const v = vector as unknown as Vector;

function bytes(hex: string): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function ensure(ok: boolean, what: string): void {
  if (!ok) throw new Error(what);
}

export function cases(): Case[] {
  return [
    {
      name: 'the shared recording reads as the writer wrote it',
      run: async () => {
        const rec = await readRecording(bytes(v.hex).buffer);
        const meta = rec.meta as unknown as Record<string, unknown>;
        ensure(Object.keys(v.meta).length === Object.keys(meta).length
          && Object.entries(v.meta).every(([k, x]) => meta[k] === x), `meta ${JSON.stringify(rec.meta)}`);
        ensure(rec.intact && rec.problem === null, 'intact');
        ensure(rec.durationMs === v.duration_ms, `duration ${rec.durationMs}`);
        ensure(rec.records.length === v.records.length, `${rec.records.length} records`);
        rec.records.forEach((r, i) => {
          const want = v.records[i]!;
          ensure(r.at === want.at_ms && r.kind === want.kind && r.keyframe === want.keyframe && hex(r.data) === want.hex,
            `record ${i}: ${JSON.stringify({ at: r.at, kind: r.kind, keyframe: r.keyframe, hex: hex(r.data) })}`);
        });
        ensure(JSON.stringify(rec.keyframes.map((k) => k.at)) === JSON.stringify(v.keyframes.map((k) => k.at_ms)), 'keyframes');
        // Seeking: the keyframe at or before a moment, none before the first.
        ensure(keyframeBefore(rec, 9_999) === 0, 'the first keyframe');
        const second = keyframeBefore(rec, 10_100);
        ensure(second !== null && rec.records[second]!.at === 10_000 && rec.records[second]!.keyframe, 'the second keyframe');
      },
    },
    {
      name: 'any altered byte fails the chain',
      run: async () => {
        const good = bytes(v.hex);
        // Every byte after the magic, a step apart (each chunk's head, payload and hash are hit).
        for (let i = 8; i < good.length; i += 7) {
          const bad = good.slice();
          bad[i] = (bad[i] ?? 0) ^ 0x01;
          let failed = false;
          try {
            const rec = await readRecording(bad.buffer);
            // A changed length may make the last chunk look cut short: then it is not intact.
            failed = !rec.intact;
          } catch {
            failed = true;
          }
          ensure(failed, `byte ${i} altered, yet the recording reads as intact`);
        }
      },
    },
    {
      name: 'a recording cut short reads up to its last whole chunk',
      run: async () => {
        const good = bytes(v.hex);
        const cut = good.slice(0, good.length - 10);
        const rec = await readRecording(cut.buffer);
        ensure(!rec.intact && rec.problem !== null, 'cut short');
        ensure(rec.records.length > 0 && rec.records.length < v.records.length, `${rec.records.length} records`);
        let refused = false;
        try {
          await readRecording(bytes('504f525452454332').buffer);
        } catch {
          refused = true;
        }
        ensure(refused, 'a wrong magic is refused');
      },
    },
  ];
}
