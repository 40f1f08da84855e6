// RDP through the graphics pipeline in the browser: FreeRDP's shadow server sends H.264 (AVC420), the
// bridge passes it through untouched and Chromium decodes it with WebCodecs. Checked: the session reports
// the h264 path, large solid areas match the X display within the tolerance of lossy video, a window moved
// on the server arrives at its new place, a reattach
// shows the full picture again (canvas cleared, decoder restarted), and a browser without WebCodecs gets
// the bitmap path with the same picture.
'use strict';
const { launch, newPage, shot, waitState, login, main, pixel, openTab } = require('./lib');
const env = process.env;
const BLUE = [0x20, 0x50, 0xc0];
const RED = [0xc0, 0x30, 0x20];
// H.264 at the server's quality: colours of large flat areas land within a few levels (up to 11 seen).
const TOLERANCE = 24;

async function waitNear(page, x, y, rgb, timeout = 20000) {
  await page.waitForFunction(([px, py, want, tol]) => {
    const got = window.porticoCanvasPixel?.(px, py);
    return !!got && window.porticoDisplay.frames > 0 && got.every((v, i) => Math.abs(v - want[i]) <= tol);
  }, [x, y, rgb, TOLERANCE], { timeout }).catch(async (e) => {
    const display = JSON.stringify(await page.evaluate(() => window.porticoDisplay));
    throw new Error(`pixel at ${x},${y}: wanted ${rgb} (±${TOLERANCE}), have ${await pixel(page, x, y)}; display ${display} (${e.message})`);
  });
}

const graphics = (page) => page.evaluate(() => document.querySelector('#session-status')?.dataset.graphics);

main(async () => {
  const browser = await launch();
  let page = await newPage(browser);
  // The connection (settings.h264 on) was created through the API by the test.
  await login(page, env.ADMIN_PASSWORD);

  const list = page;
  page = await openTab(list, list.locator('tr.conn-row[data-name="e2e h264"] .conn-open'));
  await waitState(page, 'connected', 45000);
  await page.waitForFunction(() => document.querySelector('#session-status')?.dataset.graphics === 'h264', null, { timeout: 30000 })
    .catch(async (e) => { throw new Error(`graphics path ${await graphics(page)}, not h264 (${e.message})`); });
  console.log('graphics path: h264');
  // The picture: the blue root and the red xterm at (40, 40), decoded from the server's H.264.
  await waitNear(page, 900, 560, BLUE);
  await waitNear(page, 180, 120, RED);
  const decoded = await page.evaluate(() => window.porticoDisplay.videoFrames);
  if (!(decoded > 0)) throw new Error(`no video frame drawn: ${JSON.stringify(await page.evaluate(() => window.porticoDisplay))}`);
  console.log(`video frames drawn: ${decoded}`);
  await shot(page, 'h264-desktop');

  // A moving window arrives: the test moves the xterm on the X display (the trigger file tells it when).
  require('fs').writeFileSync(env.TRIGGER_FILE, 'move');
  await waitNear(page, 740, 380, RED, 30000);
  await waitNear(page, 60, 60, BLUE, 30000);
  console.log('the window moved on the server, and the move arrived');
  await shot(page, 'h264-moved');

  // A network drop: the tab reattaches; the canvas is cleared and the decoder restarts, so the picture
  // comes back only if the bridge sends everything since the last key frame (the screen is static now:
  // the server sends nothing new).
  const framesBefore = await page.evaluate(() => window.porticoDisplay.frames);
  await page.evaluate(() => window.porticoDropConnection());
  await waitState(page, 'reconnecting', 5000);
  await waitState(page, 'connected', 15000);
  const back = Date.now();
  await page.waitForFunction((n) => window.porticoDisplay.frames > n, framesBefore, { timeout: 15000 });
  await waitNear(page, 740, 380, RED, 15000);
  await waitNear(page, 60, 60, BLUE, 15000);
  await waitNear(page, 900, 560, BLUE, 15000);
  console.log(`reattached: the full picture in ${Date.now() - back} ms`);
  await page.click('#session-end');
  await waitState(page, 'closed');
  await page.close();

  // A browser without WebCodecs: the bridge falls back to bitmaps, same picture (lossless here).
  const ctx = list.context();
  await ctx.addInitScript(() => { delete window.VideoDecoder; });
  page = await openTab(list, list.locator('tr.conn-row[data-name="e2e h264"] .conn-open'));
  await waitState(page, 'connected', 45000);
  await waitNear(page, 740, 380, RED, 30000);
  await waitNear(page, 60, 60, BLUE, 30000);
  const path = await graphics(page);
  if (path !== 'bitmap') throw new Error(`graphics path without WebCodecs: ${path}`);
  const video = await page.evaluate(() => window.porticoDisplay.videoFrames ?? 0);
  if (video !== 0) throw new Error(`${video} video frames without WebCodecs`);
  console.log('without WebCodecs: the bitmap path, same picture');
  await shot(page, 'h264-fallback');
  await browser.close();
});
