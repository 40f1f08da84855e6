// Files in and out of a session (SSH: SFTP through the bridge, docs/protocol.md "Files"): the transfers
// over the session's WebSocket with their flow control (FileTransfers), and the panel (FilePanel): browse,
// download, upload (button or drop on the terminal), new folder, delete, progress and cancel. The bridge
// enforces the connection's policy; the panel only shows what the policy allows.

import { h } from './dom';
import type { Send } from './session';
import * as wire from './wire';

type Waiter = {
  onReply: (r: wire.FileReply) => void;
  onData?: (data: Uint8Array<ArrayBuffer>) => void;
};

export interface Listing { path: string; entries: wire.FileEntry[]; truncated: number }

/** A transfer under way: its promise, and how to stop it. */
export interface Transfer<T> { done: Promise<T>; cancel: () => void }

/** Join a directory and a name the POSIX way. */
export function joinPath(dir: string, name: string): string {
  return dir.endsWith('/') ? `${dir}${name}` : `${dir}/${name}`;
}

/** The parent of an absolute POSIX path (`/` stays `/`). */
export function parentPath(path: string): string {
  const trimmed = path.replace(/\/+$/, '');
  const i = trimmed.lastIndexOf('/');
  return i <= 0 ? '/' : trimmed.slice(0, i);
}

export class FileTransfers {
  private nextId = 1;
  private readonly waiting = new Map<number, Waiter>();

  constructor(private readonly send: Send) {}

  /** A reply or a chunk from the bridge. */
  handle(msg: wire.ServerMsg): void {
    if (msg.type === 'file') this.waiting.get(msg.reply.id)?.onReply(msg.reply);
    else if (msg.type === 'file_data') this.waiting.get(msg.id)?.onData?.(msg.data);
  }

  /** The session is gone or reattached: whatever waits fails. */
  failAll(why: string): void {
    for (const [id, w] of [...this.waiting]) w.onReply({ id, kind: 'failed', message: why });
  }

  private request(op: wire.FileRequest, waiter: (id: number) => Waiter): number {
    const id = this.nextId++;
    this.waiting.set(id, waiter(id));
    this.send(wire.fileRequest({ ...op, id }));
    return id;
  }

  /** One request with one answer. */
  private simple(op: wire.FileRequest): Promise<wire.FileReply> {
    return new Promise((resolve, reject) => {
      this.request(op, (id) => ({
        onReply: (r) => {
          this.waiting.delete(id);
          if (r.kind === 'failed') reject(new Error(r.message));
          else resolve(r);
        },
      }));
    });
  }

  async list(path: string): Promise<Listing> {
    const r = await this.simple({ id: 0, op: 'list', path });
    if (r.kind !== 'entries') throw new Error(`unexpected reply ${r.kind}`);
    return { path: r.path, entries: r.entries, truncated: r.truncated ?? 0 };
  }

  async mkdir(path: string): Promise<void> {
    await this.simple({ id: 0, op: 'mkdir', path });
  }

  async remove(path: string): Promise<void> {
    await this.simple({ id: 0, op: 'remove', path });
  }

  /** Download `path`; the browser acknowledges what it got, half a window at a time. */
  download(path: string, progress: (got: number, size: number) => void): Transfer<Blob> {
    let id = 0;
    let cancel = () => undefined as void;
    const done = new Promise<Blob>((resolve, reject) => {
      const parts: Uint8Array<ArrayBuffer>[] = [];
      let size = 0;
      let got = 0;
      let acked = 0;
      id = this.request({ id: 0, op: 'download', path }, (id) => ({
        onReply: (r) => {
          if (r.kind === 'started') {
            size = r.size;
            progress(0, size);
          } else if (r.kind === 'done') {
            this.waiting.delete(id);
            if (r.bytes !== got) reject(new Error(`received ${got} of ${r.bytes} bytes`));
            else resolve(new Blob(parts));
          } else if (r.kind === 'failed') {
            this.waiting.delete(id);
            // The bridge may still hold the transfer (a message of it was refused): let it go.
            this.send(wire.fileRequest({ id, op: 'cancel' }));
            reject(new Error(r.message));
          }
        },
        onData: (data) => {
          parts.push(data);
          got += data.length;
          progress(got, size);
          if (got - acked >= wire.FILE_WINDOW / 2) {
            acked = got;
            this.send(wire.fileRequest({ id, op: 'ack', bytes: got }));
          }
        },
      }));
      cancel = () => {
        this.send(wire.fileRequest({ id, op: 'cancel' }));
        this.waiting.delete(id);
        reject(new Error('cancelled'));
      };
    });
    return { done, cancel: () => cancel() };
  }

  /** Upload `file` to `path`, at most a window ahead of what the bridge wrote. */
  upload(path: string, file: Blob, progress: (sent: number, size: number) => void): Transfer<number> {
    let cancel = () => undefined as void;
    const done = new Promise<number>((resolve, reject) => {
      const size = file.size;
      let sent = 0;
      let written = 0;
      let started = false;
      let stopped = false;
      let pumping = false;
      let id = 0;
      const pump = async () => {
        if (pumping) return;
        pumping = true;
        try {
          while (!stopped && started && sent < size && sent - written < wire.FILE_WINDOW) {
            const end = Math.min(size, sent + wire.FILE_CHUNK);
            const chunk = new Uint8Array(await file.slice(sent, end).arrayBuffer());
            if (stopped) break;
            this.send(wire.fileChunk(id, chunk));
            sent = end;
          }
        } catch (e) {
          stopped = true;
          this.send(wire.fileRequest({ id, op: 'cancel' }));
          this.waiting.delete(id);
          reject(e instanceof Error ? e : new Error(String(e)));
        } finally {
          pumping = false;
        }
      };
      id = this.request({ id: 0, op: 'upload', path, size }, (id) => ({
        onReply: (r) => {
          if (r.kind === 'started') {
            started = true;
            progress(0, size);
            void pump();
          } else if (r.kind === 'progress') {
            written = r.bytes;
            progress(written, size);
            void pump();
          } else if (r.kind === 'done') {
            stopped = true;
            this.waiting.delete(id);
            resolve(r.bytes);
          } else if (r.kind === 'failed') {
            stopped = true;
            this.waiting.delete(id);
            this.send(wire.fileRequest({ id, op: 'cancel' }));
            reject(new Error(r.message));
          }
        },
      }));
      cancel = () => {
        if (stopped) return;
        stopped = true;
        this.send(wire.fileRequest({ id, op: 'cancel' }));
        this.waiting.delete(id);
        reject(new Error('cancelled'));
      };
    });
    return { done, cancel: () => cancel() };
  }
}

function fmtSize(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

/** The Files panel of a session: a toolbar button and a side panel over the stage. */
export class FilePanel {
  readonly controls: HTMLElement[];
  private readonly files: FileTransfers;
  private readonly panel: HTMLElement;
  private readonly pathInput: HTMLInputElement;
  private readonly list: HTMLElement;
  private readonly transfers: HTMLElement;
  private readonly error: HTMLElement;
  private cwd = '';
  /** Transfers run one at a time (the bridge moves one per session); the rest wait here. */
  private queue: Promise<void> = Promise.resolve();

  constructor(stage: HTMLElement, send: Send, private readonly policy: wire.FilePolicy) {
    this.files = new FileTransfers(send);
    const toggle = h('button', { id: 'files-toggle', title: 'Files on the server (SFTP)' }, 'Files');
    this.controls = [toggle];
    this.pathInput = h('input', { id: 'files-path', 'aria-label': 'Folder' });
    const up = h('button', { id: 'files-up', title: 'Parent folder' }, '↑');
    const refresh = h('button', { id: 'files-refresh' }, 'Refresh');
    const picker = h('input', { id: 'files-upload-input', type: 'file', multiple: true, hidden: true });
    const uploadBtn = h('button', { id: 'files-upload', hidden: !this.canUpload() }, 'Upload…');
    const mkdirBtn = h('button', { id: 'files-mkdir', hidden: !this.canUpload() }, 'New folder');
    const close = h('button', { id: 'files-close', title: 'Close' }, '×');
    this.list = h('table', { id: 'files-list' });
    this.transfers = h('div', { id: 'files-transfers' });
    this.error = h('div', { id: 'files-error', class: 'error', role: 'alert' });
    this.panel = h('div', { id: 'files-panel', hidden: true },
      h('div', { class: 'files-bar' }, up, this.pathInput, refresh, close),
      h('div', { class: 'files-bar' }, uploadBtn, mkdirBtn, picker,
        h('span', { class: 'muted' }, this.policy === 'download' ? 'download only' : this.policy === 'upload' ? 'upload only' : '')),
      this.error, this.list, this.transfers);
    stage.append(this.panel);

    toggle.addEventListener('click', () => {
      this.panel.hidden = !this.panel.hidden;
      if (!this.panel.hidden) void this.show(this.cwd);
    });
    close.addEventListener('click', () => { this.panel.hidden = true; });
    up.addEventListener('click', () => void this.show(parentPath(this.cwd || '/')));
    refresh.addEventListener('click', () => void this.show(this.cwd));
    this.pathInput.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') void this.show(this.pathInput.value.trim());
    });
    uploadBtn.addEventListener('click', () => picker.click());
    picker.addEventListener('change', () => {
      for (const f of Array.from(picker.files ?? [])) this.enqueueUpload(f);
      picker.value = '';
    });
    mkdirBtn.addEventListener('click', () => {
      const name = window.prompt('New folder name');
      if (name) void this.files.mkdir(joinPath(this.cwd, name)).then(() => this.show(this.cwd), (e: Error) => this.fail(e));
    });
    // Files dropped on the session go into the panel's folder (the home folder until one is opened).
    if (this.canUpload()) {
      stage.addEventListener('dragover', (e) => {
        if (e.dataTransfer?.types.includes('Files')) e.preventDefault();
      });
      stage.addEventListener('drop', (e) => {
        const dropped = Array.from(e.dataTransfer?.files ?? []);
        if (!dropped.length) return;
        e.preventDefault();
        this.panel.hidden = false;
        for (const f of dropped) this.enqueueUpload(f);
      });
    }
  }

  private canUpload(): boolean {
    return this.policy === 'upload' || this.policy === 'both';
  }

  private canDownload(): boolean {
    return this.policy === 'download' || this.policy === 'both';
  }

  handle(msg: wire.ServerMsg): void {
    this.files.handle(msg);
  }

  /** The browser reattached: the bridge abandoned what was under way. */
  reset(why: string): void {
    this.files.failAll(why);
  }

  private fail(e: Error): void {
    this.error.textContent = e.message;
  }

  private async show(path: string): Promise<void> {
    this.error.textContent = '';
    let l: Listing;
    try {
      l = await this.files.list(path);
    } catch (e) {
      this.fail(e as Error);
      return;
    }
    this.cwd = l.path;
    this.pathInput.value = l.path;
    this.panel.dataset.path = l.path;
    const rows = l.entries.map((e) => {
      const full = joinPath(l.path, e.name);
      const name = e.dir
        ? h('a', { href: '#', class: 'files-dir' }, `${e.name}/`)
        : h('span', {}, e.name);
      if (e.dir) name.addEventListener('click', (ev) => { ev.preventDefault(); void this.show(full); });
      const actions = h('td', { class: 'files-actions' });
      if (!e.dir && this.canDownload()) {
        const dl = h('button', { class: 'files-download' }, 'Download');
        dl.addEventListener('click', () => this.enqueueDownload(full, e.name));
        actions.append(dl);
      }
      if (this.canUpload()) {
        const rm = h('button', { class: 'files-remove danger' }, 'Delete');
        rm.addEventListener('click', () => {
          if (!window.confirm(`Delete ${e.name}?`)) return;
          void this.files.remove(full).then(() => this.show(this.cwd), (err: Error) => this.fail(err));
        });
        actions.append(rm);
      }
      return h('tr', { class: 'files-row', 'data-name': e.name, 'data-dir': String(e.dir) },
        h('td', {}, name), h('td', { class: 'num' }, e.dir ? '' : fmtSize(e.size)),
        h('td', { class: 'muted' }, e.mtime ? new Date(e.mtime * 1000).toLocaleString() : ''), actions);
    });
    this.list.replaceChildren(...rows);
    if (l.truncated) this.list.append(h('tr', {}, h('td', { class: 'muted' }, `… and ${l.truncated} more`)));
  }

  /** A row in the transfers list: a progress bar and Cancel until it ends. */
  private transferRow(label: string, direction: 'upload' | 'download'): { bar: HTMLProgressElement; row: HTMLElement; cancel: HTMLButtonElement; state: HTMLElement } {
    const bar = h('progress', { max: '1', value: '0' });
    const cancel = h('button', { class: 'files-cancel' }, 'Cancel');
    const state = h('span', { class: 'files-state' }, 'waiting');
    const row = h('div', { class: 'files-transfer', 'data-name': label, 'data-direction': direction, 'data-state': 'waiting' },
      h('span', {}, `${direction === 'upload' ? '↑' : '↓'} ${label}`), bar, state, cancel);
    this.transfers.prepend(row);
    return { bar, row, cancel, state };
  }

  private run(label: string, direction: 'upload' | 'download', start: (progress: (n: number, size: number) => void) => Transfer<unknown>, after: () => void): void {
    const ui = this.transferRow(label, direction);
    let cancelled = false;
    let transfer: Transfer<unknown> | null = null;
    ui.cancel.addEventListener('click', () => {
      cancelled = true;
      transfer?.cancel();
    });
    const set = (state: string, text: string) => {
      ui.row.dataset.state = state;
      ui.state.textContent = text;
    };
    this.queue = this.queue.then(async () => {
      if (cancelled) {
        set('cancelled', 'cancelled');
        return;
      }
      set('running', '0%');
      transfer = start((n, size) => {
        ui.bar.value = size ? n / size : 1;
        ui.row.dataset.bytes = String(n);
        ui.state.textContent = `${size ? Math.floor((100 * n) / size) : 100}% of ${fmtSize(size)}`;
      });
      try {
        await transfer.done;
        ui.bar.value = 1;
        set('done', 'done');
        after();
      } catch (e) {
        const msg = (e as Error).message;
        set(msg === 'cancelled' ? 'cancelled' : 'failed', msg);
      } finally {
        ui.cancel.hidden = true;
      }
    });
  }

  private enqueueUpload(file: File): void {
    const dir = this.cwd;
    this.run(file.name, 'upload', (p) => this.files.upload(dir ? joinPath(dir, file.name) : file.name, file, p), () => {
      if (dir === this.cwd || !dir) void this.show(this.cwd);
    });
  }

  private enqueueDownload(path: string, name: string): void {
    let blob: Blob | null = null;
    this.run(name, 'download', (p) => {
      const t = this.files.download(path, p);
      return { done: t.done.then((b) => { blob = b; }), cancel: t.cancel };
    }, () => {
      if (!blob) return;
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
    });
  }
}
