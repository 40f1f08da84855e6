// The sound's jitter buffer (when decoded frames play) and the tone analysis the browser test relies on.

import { analyze, JitterBuffer, MAX_S, TARGET_S } from '../src/audio';

export interface Case { name: string; run: () => void | Promise<void> }

function ensure(ok: boolean, what: string): void {
  if (!ok) throw new Error(what);
}

const near = (a: number, b: number, eps = 1e-9) => Math.abs(a - b) < eps;

export function cases(): Case[] {
  return [
    {
      name: 'frames play back to back, the first one the target latency after it arrives',
      run: () => {
        const j = new JitterBuffer();
        const at0 = j.schedule(10, 0.02);
        ensure(at0 !== null && near(at0, 10 + TARGET_S), `first at ${at0}`);
        const at1 = j.schedule(10.001, 0.02);
        ensure(at1 !== null && near(at1, 10 + TARGET_S + 0.02), `second at ${at1}`);
      },
    },
    {
      name: 'an underrun starts again at the target latency',
      run: () => {
        const j = new JitterBuffer();
        j.schedule(0, 0.02);
        // Nothing for a second (silence is not sent): the next frame is not scheduled in the past.
        const at = j.schedule(1, 0.02);
        ensure(at !== null && near(at, 1 + TARGET_S), `after a gap at ${at}`);
      },
    },
    {
      name: 'latency is bounded: a burst beyond the most buffered is dropped',
      run: () => {
        const j = new JitterBuffer();
        let played = 0;
        let dropped = 0;
        // 50 frames of 20 ms (a second) arriving at once.
        for (let i = 0; i < 50; i++) {
          const at = j.schedule(5, 0.02);
          if (at === null) dropped++;
          else {
            played++;
            ensure(at - 5 <= MAX_S + 1e-9, `frame ${i} plays ${at - 5} s late`);
          }
        }
        ensure(played === Math.floor((MAX_S - TARGET_S) / 0.02) + 1, `played ${played}`);
        ensure(played + dropped === 50, 'every frame counted');
      },
    },
    {
      name: 'a tone is recognised by its frequency and level',
      run: () => {
        const rate = 48000;
        const tone = new Float32Array(rate).map((_, i) => 0.4 * Math.sin((2 * Math.PI * 1000 * i) / rate));
        const t = analyze(tone, rate);
        ensure(Math.abs(t.hz - 1000) < 1, `${t.hz} Hz`);
        ensure(Math.abs(t.rms - 0.4 / Math.SQRT2) < 0.01, `rms ${t.rms}`);
        const quiet = analyze(new Float32Array(480), rate);
        ensure(quiet.hz === 0 && quiet.rms === 0, JSON.stringify(quiet));
      },
    },
  ];
}
