// Bundle the web client into dist/: app.js (ESM, minified), app.css (xterm.js styles + ours), index.html.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, 'dist');
const require = createRequire(import.meta.url);
mkdirSync(dist, { recursive: true });

await build({
  entryPoints: [join(root, 'src/main.ts')],
  bundle: true,
  format: 'esm',
  minify: true,
  sourcemap: true,
  target: ['es2022'],
  outfile: join(dist, 'app.js'),
  logLevel: 'warning',
});
const xtermCss = readFileSync(require.resolve('@xterm/xterm/css/xterm.css'), 'utf8');
writeFileSync(join(dist, 'app.css'), `${xtermCss}\n${readFileSync(join(root, 'src/style.css'), 'utf8')}`);
copyFileSync(join(root, 'src/index.html'), join(dist, 'index.html'));
console.log('web client built into dist/');
