// VNC in the browser: create the connection in the UI, see the desktop on the canvas (pixel truth, fit to
// window), click and type into remote xterms (input truth), clipboard both ways, a wrong password.
'use strict';
const { launch, newPage, shot, waitState, waitFile, login, main, waitPixel, at, createConnection: create, openTab } = require('./lib');
const env = process.env;
const createConnection = (page, name, password, port = env.VNC_PORT) =>
  create(page, { name, protocol: 'vnc', port, password });

main(async () => {
  const browser = await launch();
  let page = await newPage(browser);
  await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: env.PORTICO_URL });
  await login(page, env.ADMIN_PASSWORD);
  await createConnection(page, 'e2e vnc', env.VNC_PASSWORD);
  await createConnection(page, 'e2e vnc wrong', 'wrongpw1');
  await createConnection(page, 'e2e vnc unreachable', '', env.UNREACHABLE_PORT);

  page = await openTab(page, page.locator('tr.conn-row[data-name="e2e vnc"] .conn-open'));
  await waitState(page, 'connected');
  // Pixel truth: the root colour and the two white xterms where the harness put them.
  await waitPixel(page, 1000, 20, [0x20, 0x60, 0xa0]);
  await waitPixel(page, 100, 60, [255, 255, 255]);
  await waitPixel(page, 700, 500, [255, 255, 255]);
  const fit = await page.evaluate(() => {
    const c = document.querySelector('#display').getBoundingClientRect();
    const w = document.querySelector('#display-wrap').getBoundingClientRect();
    return { c: [c.width, c.height], w: [w.width, w.height], remote: [window.porticoDisplay.width, window.porticoDisplay.height] };
  });
  if (fit.c[0] > fit.w[0] + 1 || fit.c[1] > fit.w[1] + 1) throw new Error(`canvas does not fit: ${JSON.stringify(fit)}`);
  console.log(`display ${fit.remote.join('x')} shown at ${fit.c.map(Math.round).join('x')}`);
  await shot(page, 'vnc-desktop');

  // The first click is taken by `xdotool selectwindow` on the remote side: it reports the window under it.
  let p = await at(page, 700, 500);
  await page.mouse.click(p.x, p.y);
  // Keyboard: focus follows the pointer on a desktop without a window manager.
  p = await at(page, 100, 60);
  await page.mouse.move(p.x, p.y);
  await page.mouse.move(p.x + 3, p.y + 3);
  await page.keyboard.type(`echo typed-in-browser-$((6*7)) > ${env.MARKER_FILE}\n`);
  await waitFile(env.MARKER_FILE, 'the command typed into the remote xterm never ran').catch(async (e) => {
    await shot(page, 'vnc-typing-failed');
    throw new Error(`${e.message}; display ${JSON.stringify(await page.evaluate(() => window.porticoDisplay))}`);
  });
  console.log('keys typed in the browser ran a command on the desktop');
  await page.keyboard.type(`printf remote-clip-42 | xclip -i -selection clipboard\n`);
  await page.waitForFunction(() => window.porticoDisplay.clipboard === 'remote-clip-42', null, { timeout: 15000 });
  const panel = await page.evaluate(() => document.querySelector('#clipboard-text').value);
  if (panel !== 'remote-clip-42') throw new Error(`clipboard panel shows ${panel}`);
  console.log('remote clipboard reached the browser');

  await page.click('#clipboard-toggle');
  await page.fill('#clipboard-text', 'from-the-browser-7');
  await page.click('#clipboard-send');
  p = await at(page, 100, 60);
  await page.mouse.move(p.x, p.y);
  await page.keyboard.type(`xclip -o -selection clipboard > ${env.CLIP_FILE}\n`);
  await shot(page, 'vnc-typed');

  // A network drop: the tab reattaches to the same session and gets the whole screen again.
  const framesBefore = await page.evaluate(() => window.porticoDisplay.frames);
  await page.evaluate(() => window.porticoDropConnection());
  await waitState(page, 'reconnecting', 5000);
  await waitState(page, 'connected', 15000);
  await page.waitForFunction((n) => window.porticoDisplay.frames > n, framesBefore, { timeout: 15000 });
  await waitPixel(page, 700, 500, [255, 255, 255]);
  console.log('reattached after a network drop');

  // Special keys menu and fullscreen control exist and do not break the session.
  await page.selectOption('#special-keys', { label: 'Ctrl+Alt+Del' });
  await page.selectOption('#display-scale', 'actual');
  await waitPixel(page, 1000, 20, [0x20, 0x60, 0xa0]);
  await page.click('#session-end');
  await waitState(page, 'closed');
  await page.click('#session-back');

  page = await openTab(page, page.locator('tr.conn-row[data-name="e2e vnc wrong"] .conn-open'));
  await waitState(page, 'closed', 30000);
  const status = await page.textContent('#session-status');
  if (!/authentication failed/.test(status)) throw new Error(`expected an authentication error, got: ${status}`);
  console.log(`status: ${status}`);
  await page.click('#session-back');

  page = await openTab(page, page.locator('tr.conn-row[data-name="e2e vnc unreachable"] .conn-open'));
  await waitState(page, 'closed', 30000);
  const unreachable = await page.textContent('#session-status');
  if (!/cannot reach/.test(unreachable)) throw new Error(`expected an unreachable error, got: ${unreachable}`);
  const overlay = await page.textContent('#display-overlay');
  if (!/cannot reach/.test(overlay)) throw new Error(`the display does not say why: ${overlay}`);
  console.log(`status: ${unreachable}`);
  await shot(page, 'vnc-unreachable');
  await browser.close();
});
