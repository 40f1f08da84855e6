// The terminal view (SSH): xterm.js bound to the session.

import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { h } from './dom';
import * as wire from './wire';
import type { Send, State, View } from './session';

declare global {
  interface Window {
    porticoTerminalText?: () => string;
  }
}

export class TerminalView implements View {
  readonly controls: HTMLElement[];
  private readonly term: Terminal;
  private readonly el: HTMLElement;
  private readonly observer: ResizeObserver;
  /** A recording's size: the terminal keeps it instead of fitting its element. */
  private fixed = false;

  constructor(stage: HTMLElement, private readonly send: Send) {
    this.controls = [h('span', { class: 'muted' }, 'Ctrl+Shift+C / Ctrl+Shift+V')];
    this.el = h('div', { id: 'terminal' });
    stage.replaceChildren(this.el);
    const term = new Terminal({
      cursorBlink: true,
      fontFamily: '"DejaVu Sans Mono", Menlo, Consolas, monospace',
      fontSize: 14,
      scrollback: 5000,
      theme: { background: '#000000' },
    });
    this.term = term;
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(this.el);
    fit.fit();
    window.porticoTerminalText = () => {
      const buf = term.buffer.active;
      const lines: string[] = [];
      for (let i = 0; i < buf.length; i++) lines.push(buf.getLine(i)?.translateToString(true) ?? '');
      return lines.join('\n');
    };
    term.onData((d) => send(wire.termInput(d)));
    term.onBinary((d) => send(wire.termInput(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff))));
    term.onResize(() => this.sendSize());
    term.attachCustomKeyEventHandler((e) => {
      if (e.type !== 'keydown' || !e.ctrlKey || !e.shiftKey) return true;
      if (e.code === 'KeyC') {
        const sel = term.getSelection();
        if (sel && navigator.clipboard) void navigator.clipboard.writeText(sel);
        return false;
      }
      if (e.code === 'KeyV') {
        if (navigator.clipboard?.readText) void navigator.clipboard.readText().then((t) => term.paste(t), () => undefined);
        return false;
      }
      return true;
    });
    this.observer = new ResizeObserver(() => {
      if (!this.fixed) fit.fit();
    });
    this.observer.observe(this.el);
    this.el.addEventListener('click', () => term.focus());
  }

  private sendSize(): void {
    const r = this.el.getBoundingClientRect();
    this.send(wire.resize(this.term.cols, this.term.rows, r.width, r.height));
  }

  /** Keep `cols` × `rows` (playback: the size the recorded terminal had). */
  resizeTo(cols: number, rows: number): void {
    this.fixed = true;
    if (cols > 0 && rows > 0 && (cols !== this.term.cols || rows !== this.term.rows)) this.term.resize(cols, rows);
  }

  attached(reattached: boolean): void {
    if (reattached) this.term.reset();
    this.sendSize();
  }

  handle(msg: wire.ServerMsg): void {
    if (msg.type === 'output') this.term.write(msg.data);
  }

  state(state: State, text: string): void {
    if (state === 'closed') this.term.write(`\r\n\x1b[1;31m[${text}]\x1b[0m\r\n`);
  }

  focus(): void {
    this.term.focus();
  }

  dispose(): void {
    this.observer.disconnect();
    this.term.dispose();
  }
}
