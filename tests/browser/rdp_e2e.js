// RDP in the browser against xrdp: create the connection in the UI (credentials stored, injected by the
// bridge), see the desktop at the browser's size (pixel truth), click and type into the remote xterm as
// physical keys (input truth), clipboard both ways, resize with the window, special keys, and a wrong
// password (xrdp shows its own dialog: checked by pixels).
'use strict';
const { launch, newPage, shot, waitState, waitFile, login, main, pixel, waitPixel, at, createConnection: create, openTab, typeUS } = require('./lib');
const env = process.env;
const GREEN = [0x30, 0x50, 0x30];
const createConnection = (page, name, password) =>
  create(page, { name, protocol: 'rdp', port: env.RDP_PORT, username: env.RDP_USER, password });

async function remoteSize(page) {
  return page.evaluate(() => [window.porticoDisplay.width, window.porticoDisplay.height]);
}

async function wrapSize(page) {
  return page.evaluate(() => {
    const w = document.querySelector('#display-wrap').getBoundingClientRect();
    return [Math.floor(w.width) & ~1, Math.floor(w.height) & ~1];
  });
}

main(async () => {
  const browser = await launch();
  let page = await newPage(browser);
  await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: env.PORTICO_URL });
  await login(page, env.ADMIN_PASSWORD);
  await createConnection(page, 'e2e rdp', env.RDP_PASSWORD);
  await createConnection(page, 'e2e rdp wrong', 'wrong-password-1');

  page = await openTab(page, page.locator('tr.conn-row[data-name="e2e rdp"] .conn-open'));
  await waitState(page, 'connected', 45000);
  // The desktop takes the browser's size.
  await page.waitForFunction(() => window.porticoDisplay.width > 0, null, { timeout: 30000 });
  const [w, h] = await remoteSize(page);
  const want = await wrapSize(page);
  if (Math.abs(w - want[0]) > 2 || Math.abs(h - want[1]) > 2) throw new Error(`remote ${w}x${h}, window ${want.join('x')}`);
  console.log(`desktop ${w}x${h} at the window's size`);
  // Pixel truth: xrdp's session shows the green root (beyond the xterm at the top left).
  await waitPixel(page, w - 20, h - 20, GREEN, 45000);
  await shot(page, 'rdp-desktop');

  // Input truth: click into the xterm, type a command as physical keys. The session's xterm starts after
  // the root is painted (and slowly on a busy machine): keys typed before it is mapped go to the root window,
  // so wait until it covers the point clicked.
  await page.waitForFunction(([x, y, g]) => {
    const got = window.porticoCanvasPixel?.(x, y);
    return !!got && got.some((v, i) => Math.abs(v - g[i]) > 2);
  }, [200, 100, GREEN], { timeout: 45000 }).catch(async (e) => {
    throw new Error(`the session's xterm never covered 200,100 (have ${await pixel(page, 200, 100)}): ${e.message}`);
  });
  let p = await at(page, 200, 100);
  await page.mouse.click(p.x, p.y);
  await typeUS(page, `echo typed-in-browser-$((6*7)) > ${env.MARKER_FILE}\n`);
  await waitFile(env.MARKER_FILE, 'the command typed into the remote xterm never ran');
  // Text without key events (on-screen and mobile keyboards, dead keys: `insertText`) goes as RDP Unicode
  // events; xrdp 0.9 types the characters its keymap holds.
  await page.keyboard.insertText(`echo unicode-$((6*7)) > ${env.UNICODE_FILE}`);
  await page.keyboard.press('Enter');
  await waitFile(env.UNICODE_FILE, 'the command typed as Unicode events never ran');
  console.log('text typed as unicode events ran a command');
  // Remote → browser clipboard.
  await typeUS(page, `echo -n remote-clip-rdp | xclip -i -selection clipboard\n`);
  await page.waitForFunction(() => window.porticoDisplay.clipboard === 'remote-clip-rdp', null, { timeout: 20000 });
  console.log('remote clipboard reached the browser');
  // Browser → remote clipboard, through the panel; the remote side writes it to a file.
  await page.click('#clipboard-toggle');
  await page.fill('#clipboard-text', 'from-the-browser-rdp');
  await page.click('#clipboard-send');
  p = await at(page, 200, 100);
  await page.mouse.click(p.x, p.y);
  await typeUS(page, `xclip -o -selection clipboard > ${env.CLIP_FILE}\n`);
  await page.click('#clipboard-toggle');
  await shot(page, 'rdp-typed');

  // The window grows: the remote desktop follows (Display Control, reactivation at the new size).
  await page.setViewportSize({ width: 1280, height: 800 });
  const grown = await wrapSize(page);
  await page.waitForFunction(([ww, wh]) => Math.abs(window.porticoDisplay.width - ww) <= 2
    && Math.abs(window.porticoDisplay.height - wh) <= 2, grown, { timeout: 30000 });
  const [w2, h2] = await remoteSize(page);
  await waitPixel(page, w2 - 20, h2 - 20, GREEN, 30000);
  console.log(`resized to ${w2}x${h2}`);
  await shot(page, 'rdp-resized');

  // Special keys reach the session without breaking it.
  await page.selectOption('#special-keys', { label: 'Ctrl+Alt+Del' });
  await waitPixel(page, w2 - 20, h2 - 20, GREEN, 30000);
  await page.click('#session-end');
  await waitState(page, 'closed');
  await page.click('#session-back');

  // A wrong password: xrdp 0.9 has no NLA, so the connection stands and xrdp draws its login dialog.
  page = await openTab(page, page.locator('tr.conn-row[data-name="e2e rdp wrong"] .conn-open'));
  await waitState(page, 'connected', 45000);
  await page.waitForFunction(() => window.porticoDisplay.frames > 0, null, { timeout: 30000 });
  await page.waitForTimeout(3000);
  const [ww, wh] = await remoteSize(page);
  const corner = await pixel(page, ww - 20, wh - 20);
  if (corner.every((v, i) => Math.abs(v - GREEN[i]) <= 2)) throw new Error('a wrong password reached the desktop');
  console.log(`wrong password: xrdp's dialog screen (pixel ${corner})`);
  await shot(page, 'rdp-wrong-password');
  await browser.close();
});
