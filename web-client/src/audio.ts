// A session's sound: AUDIO packets (Opus, 20 ms, 48 kHz stereo) decoded by WebCodecs' AudioDecoder and
// played through WebAudio at a bounded latency (a small jitter buffer: packets play TARGET_S after they
// arrive, and a packet that would play more than MAX_S late is dropped), with a mute button. Muting tells
// the bridge to stop sending (AUDIO_CONTROL), so a muted session costs no bandwidth.
import * as wire from './wire';
import { h } from './dom';

type Send = (bytes: Uint8Array<ArrayBuffer>) => void;

/** Latency the jitter buffer aims at, and the most it lets build up before dropping packets. */
export const TARGET_S = 0.06;
export const MAX_S = 0.25;
/** Decoded samples kept for `analyze` (one second of the first channel). */
const KEEP = wire.AUDIO_SAMPLE_RATE;

/** What the page tells tests and the curious (`window.porticoAudio`). */
export interface AudioStats {
  packets: number;
  decoded: number;
  dropped: number;
  gaps: number;
  playing: boolean;
  /** The dominant frequency (Hz, from zero crossings) and RMS level of the last second decoded. */
  analyze(): { hz: number; rms: number; samples: number };
}

declare global {
  interface Window { porticoAudio?: AudioStats }
}

/** Where decoded frames are scheduled (sans DOM: unit-tested with a fake clock). */
export class JitterBuffer {
  private playhead = 0;
  constructor(private readonly target = TARGET_S, private readonly max = MAX_S) {}

  /** When a frame of `duration` s decoded at `now` plays, or null to drop it (too far behind). */
  schedule(now: number, duration: number): number | null {
    if (this.playhead < now) this.playhead = now + this.target; // an underrun (or the first): start again
    if (this.playhead - now > this.max) return null;
    const at = this.playhead;
    this.playhead += duration;
    return at;
  }
}

/** The dominant frequency of `samples` at `rate` from its rising zero crossings, and its RMS level. */
export function analyze(samples: Float32Array, rate: number): { hz: number; rms: number; samples: number } {
  let crossings = 0;
  let first = -1;
  let last = -1;
  let energy = 0;
  for (let i = 0; i < samples.length; i++) {
    energy += samples[i] * samples[i];
    if (i > 0 && samples[i - 1] < 0 && samples[i] >= 0) {
      if (first < 0) first = i;
      last = i;
      crossings++;
    }
  }
  const rms = samples.length ? Math.sqrt(energy / samples.length) : 0;
  const hz = crossings > 1 ? ((crossings - 1) * rate) / (last - first) : 0;
  return { hz, rms, samples: samples.length };
}

export class AudioPlayer {
  readonly controls: HTMLElement[];
  private readonly button: HTMLButtonElement;
  private ctx: AudioContext | null = null;
  private decoder: AudioDecoder | null = null;
  private readonly jitter = new JitterBuffer();
  private readonly recent = new Float32Array(KEEP);
  private recentLen = 0;
  private recentAt = 0;
  private lastSeq = -1;
  private muted = false;
  private disposed = false;
  private readonly resume = () => { if (!this.muted && !this.disposed) void this.context().resume(); };
  readonly stats: AudioStats;

  constructor(private readonly send: Send) {
    this.button = h('button', { id: 'session-audio', title: 'sound of the session (muting stops it at the bridge)' });
    this.controls = [this.button];
    this.button.addEventListener('click', () => this.setMuted(!this.muted));
    const self = this;
    this.stats = {
      packets: 0, decoded: 0, dropped: 0, gaps: 0, playing: false,
      analyze() { return analyze(self.lastSecond(), wire.AUDIO_SAMPLE_RATE); },
    };
    window.porticoAudio = this.stats;
    if (typeof AudioDecoder === 'undefined') {
      // Only in a secure context (https, localhost) of a browser with WebCodecs.
      this.button.textContent = '🔇 No sound here';
      this.button.disabled = true;
      this.muted = true;
      this.send(wire.audioControl(false));
      return;
    }
    this.decoder = new AudioDecoder({
      output: (d) => this.play(d),
      error: (e) => console.warn('portico: audio decoder', e),
    });
    this.decoder.configure({ codec: 'opus', sampleRate: wire.AUDIO_SAMPLE_RATE, numberOfChannels: wire.AUDIO_CHANNELS });
    // Browsers start a page's sound only after a gesture on it.
    document.addEventListener('pointerdown', this.resume, { capture: true });
    document.addEventListener('keydown', this.resume, { capture: true });
    this.show();
    // The bridge sends nothing until this page says it plays.
    this.send(wire.audioControl(true));
  }

  /** The browser (re)attached: the bridge waits for this page to say it plays (again). */
  attached(): void {
    this.lastSeq = -1;
    if (this.decoder) this.send(wire.audioControl(!this.muted));
  }

  handle(seq: number, data: Uint8Array<ArrayBuffer>): void {
    this.stats.packets++;
    if (this.disposed || !this.decoder || this.muted || this.decoder.state !== 'configured') return;
    if (this.lastSeq >= 0 && seq !== ((this.lastSeq + 1) >>> 0)) this.stats.gaps++;
    this.lastSeq = seq;
    this.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: seq * 20_000, data }));
  }

  dispose(): void {
    this.disposed = true;
    document.removeEventListener('pointerdown', this.resume, { capture: true });
    document.removeEventListener('keydown', this.resume, { capture: true });
    if (this.decoder && this.decoder.state !== 'closed') this.decoder.close();
    void this.ctx?.close();
    if (window.porticoAudio === this.stats) delete window.porticoAudio;
  }

  private setMuted(muted: boolean): void {
    this.muted = muted;
    this.send(wire.audioControl(!muted));
    if (muted) void this.ctx?.suspend();
    else void this.context().resume();
    this.show();
  }

  private show(): void {
    this.button.textContent = this.muted ? '🔇 Sound off' : '🔊 Sound on';
    this.button.dataset.muted = String(this.muted);
  }

  private context(): AudioContext {
    if (!this.ctx) this.ctx = new AudioContext({ sampleRate: wire.AUDIO_SAMPLE_RATE, latencyHint: 'interactive' });
    return this.ctx;
  }

  private play(d: AudioData): void {
    try {
      const frames = d.numberOfFrames;
      const channels = Math.min(d.numberOfChannels, 2);
      const planes: Float32Array<ArrayBuffer>[] = [];
      for (let c = 0; c < channels; c++) {
        const p = new Float32Array(frames);
        d.copyTo(p, { planeIndex: c, format: 'f32-planar' });
        planes.push(p);
      }
      this.stats.decoded++;
      this.keep(planes[0]);
      const ctx = this.context();
      this.stats.playing = ctx.state === 'running';
      const at = this.jitter.schedule(ctx.currentTime, frames / d.sampleRate);
      if (at === null) {
        this.stats.dropped++;
        return;
      }
      const buf = ctx.createBuffer(channels, frames, d.sampleRate);
      planes.forEach((p, c) => buf.copyToChannel(p, c));
      const src = ctx.createBufferSource();
      src.buffer = buf;
      src.connect(ctx.destination);
      src.start(at);
    } finally {
      d.close();
    }
  }

  /** Keep the newest second of the first channel (a ring). */
  private keep(p: Float32Array): void {
    for (let i = 0; i < p.length; i++) {
      this.recent[this.recentAt] = p[i];
      this.recentAt = (this.recentAt + 1) % KEEP;
    }
    this.recentLen = Math.min(KEEP, this.recentLen + p.length);
  }

  private lastSecond(): Float32Array {
    const out = new Float32Array(this.recentLen);
    const start = (this.recentAt - this.recentLen + KEEP) % KEEP;
    for (let i = 0; i < this.recentLen; i++) out[i] = this.recent[(start + i) % KEEP];
    return out;
  }
}
