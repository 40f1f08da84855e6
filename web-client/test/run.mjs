// `npm test`: bundle the TypeScript tests with esbuild (the vectors file inlined) and run their cases with
// node's test runner. No test framework: each test file exports `cases()`, a list of { name, run }.
import { build } from 'esbuild';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test, after } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const out = mkdtempSync(join(tmpdir(), 'portico-web-client-test-'));
after(() => rmSync(out, { recursive: true, force: true }));

// Every file bundled and imported before the first test is registered: the runner may end (and clean up)
// once the tests it knows of are done.
const names = ['wire.test', 'recording.test', 'keyboard.test', 'files.test', 'audio.test'];
const mods = [];
for (const name of names) {
  const outfile = join(out, `${name}.mjs`);
  await build({
    entryPoints: [join(root, 'test', `${name}.ts`)],
    bundle: true,
    format: 'esm',
    platform: 'neutral',
    target: ['es2022'],
    outfile,
    logLevel: 'warning',
  });
  mods.push([name, await import(pathToFileURL(outfile).href)]);
}
for (const [name, mod] of mods) {
  for (const c of mod.cases()) test(`${name}: ${c.name}`, () => c.run());
}
