// The web client's file transfers against a bridge played by the test: an upload never runs more than a
// window ahead of the bridge's progress, a download acknowledges every half window, and cancel stops both.

import { FileTransfers, joinPath, parentPath } from '../src/files';
import * as wire from '../src/wire';

export interface Case { name: string; run: () => void | Promise<void> }

function ensure(ok: boolean, what: string): void {
  if (!ok) throw new Error(what);
}

type Sent = { request?: wire.FileRequest; chunk?: { id: number; size: number } };

function bridge(): { files: FileTransfers; sent: Sent[] } {
  const sent: Sent[] = [];
  const files = new FileTransfers((b) => {
    const payload = b.subarray(2);
    if (b[1] === wire.C_FILE_REQUEST) sent.push({ request: JSON.parse(new TextDecoder().decode(payload)) as wire.FileRequest });
    else if (b[1] === wire.C_FILE_CHUNK) sent.push({ chunk: { id: new DataView(payload.buffer, payload.byteOffset).getUint32(0), size: payload.length - 4 } });
  });
  return { files, sent };
}

const settle = () => new Promise((r) => setTimeout(r, 0));

async function until(what: string, pred: () => boolean): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (pred()) return;
    await settle();
  }
  throw new Error(`never: ${what}`);
}

const chunked = (sent: Sent[]) => sent.filter((s) => s.chunk).reduce((n, s) => n + (s.chunk?.size ?? 0), 0);

export function cases(): Case[] {
  return [
    {
      name: 'an upload stays within the window until the bridge reports progress',
      run: async () => {
        const { files, sent } = bridge();
        const size = wire.FILE_WINDOW * 2 + 100;
        const t = files.upload('/tmp/x', new Blob([new Uint8Array(size)]), () => undefined);
        const req = sent[0].request;
        ensure(req?.op === 'upload' && req.size === size && req.path === '/tmp/x', JSON.stringify(req));
        const id = req!.id;
        // Nothing before the bridge says it started.
        await settle();
        ensure(chunked(sent) === 0, 'chunks before started');
        files.handle({ type: 'file', reply: { id, kind: 'started', size } });
        await until('a window sent', () => chunked(sent) === wire.FILE_WINDOW);
        await settle();
        ensure(chunked(sent) === wire.FILE_WINDOW, `sent ${chunked(sent)} beyond the window`);
        files.handle({ type: 'file', reply: { id, kind: 'progress', bytes: wire.FILE_WINDOW } });
        await until('the second window', () => chunked(sent) === 2 * wire.FILE_WINDOW);
        files.handle({ type: 'file', reply: { id, kind: 'progress', bytes: 2 * wire.FILE_WINDOW } });
        await until('all of it', () => chunked(sent) === size);
        ensure(sent.filter((s) => s.chunk).every((s) => (s.chunk?.size ?? 0) <= wire.FILE_CHUNK), 'a chunk over the limit');
        files.handle({ type: 'file', reply: { id, kind: 'done', bytes: size } });
        ensure(await t.done === size, 'done');
      },
    },
    {
      name: 'a download acknowledges every half window and ends with what the bridge counted',
      run: async () => {
        const { files, sent } = bridge();
        const t = files.download('/tmp/y', () => undefined);
        const id = sent[0].request!.id;
        files.handle({ type: 'file', reply: { id, kind: 'started', size: wire.FILE_WINDOW } });
        const chunk = new Uint8Array(wire.FILE_CHUNK).fill(7);
        for (let i = 0; i < wire.FILE_WINDOW / wire.FILE_CHUNK; i++) files.handle({ type: 'file_data', id, data: chunk.slice() });
        const acks = sent.map((s) => s.request).filter((r) => r?.op === 'ack') as { bytes: number }[];
        ensure(acks.length === 2 && acks[0].bytes === wire.FILE_WINDOW / 2 && acks[1].bytes === wire.FILE_WINDOW, JSON.stringify(acks));
        files.handle({ type: 'file', reply: { id, kind: 'done', bytes: wire.FILE_WINDOW } });
        const blob = await t.done;
        ensure(blob.size === wire.FILE_WINDOW, `blob of ${blob.size}`);
      },
    },
    {
      name: 'a download that lost bytes fails; cancel tells the bridge and stops',
      run: async () => {
        const { files, sent } = bridge();
        const t = files.download('/tmp/z', () => undefined);
        const id = sent[0].request!.id;
        files.handle({ type: 'file_data', id, data: new Uint8Array(10) });
        files.handle({ type: 'file', reply: { id, kind: 'done', bytes: 20 } });
        await t.done.then(() => { throw new Error('resolved'); }, (e: Error) => ensure(e.message === 'received 10 of 20 bytes', e.message));
        const u = files.upload('/tmp/w', new Blob([new Uint8Array(100)]), () => undefined);
        const uid = sent[sent.length - 1].request!.id;
        u.cancel();
        await u.done.then(() => { throw new Error('resolved'); }, (e: Error) => ensure(e.message === 'cancelled', e.message));
        const last = sent[sent.length - 1].request;
        ensure(last?.op === 'cancel' && last.id === uid, JSON.stringify(last));
        // A late reply for it changes nothing.
        files.handle({ type: 'file', reply: { id: uid, kind: 'started', size: 100 } });
        await settle();
        ensure(chunked(sent) === 0, 'chunks after cancel');
      },
    },
    {
      name: 'paths join and climb the POSIX way',
      run: () => {
        ensure(joinPath('/home/u', 'a b') === '/home/u/a b', 'join');
        ensure(joinPath('/', 'etc') === '/etc', 'join root');
        ensure(parentPath('/home/u') === '/home', 'parent');
        ensure(parentPath('/home') === '/' && parentPath('/') === '/', 'parent of top');
      },
    },
  ];
}
