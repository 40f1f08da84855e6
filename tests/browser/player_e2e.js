// Recordings played back in the browser: an SSH recording seeked to a keyframe in the middle shows what the
// terminal showed then (and not what came after), the timeline reaches the end, text search finds earlier
// output, playback at 8× runs to the end; a VNC recording played at 8× ends on the pixels that were live.
'use strict';
const { launch, newPage, login, waitText, waitPixel, main } = require('./lib');
const env = process.env;

const state = (page) => page.evaluate(() => window.porticoPlayer.state());
const shows = (page, text) => page.evaluate((t) => window.porticoTerminalText().includes(t), text);

async function open(page, id) {
  const row = page.locator(`#recordings-list tr.recording-row[data-id="${id}"]`);
  await row.waitFor({ timeout: 10000 });
  await row.locator('.recording-play').click();
  await page.waitForSelector('#player[data-state="ready"]', { timeout: 20000 });
}

main(async () => {
  const browser = await launch();
  const page = await newPage(browser);
  await login(page, env.ADMIN_PASSWORD);

  await open(page, env.SSH_REC);
  const seekMs = Number(env.SEEK_MS);
  let t0 = Date.now();
  await page.evaluate((ms) => window.porticoPlayer.seek(ms), seekMs);
  await waitText(page, env.BEFORE_TEXT, 5000);
  console.log(`seek-ms ${Date.now() - t0}`);
  if (await shows(page, env.AFTER_TEXT)) throw new Error(`at ${seekMs} ms the terminal already shows ${env.AFTER_TEXT}`);

  // The timeline, as a user drags it: to the end.
  await page.$eval('#player-timeline', (el) => { el.value = el.max; el.dispatchEvent(new Event('input')); });
  await waitText(page, env.AFTER_TEXT, 5000);

  // Text search: earlier output, before the keyframe.
  await page.fill('#player-search', env.EARLY_TEXT);
  await page.click('#player-find');
  await waitText(page, env.EARLY_TEXT, 5000);
  const found = await state(page);
  if (!(found.position < seekMs)) throw new Error(`search landed at ${found.position} ms`);

  // Played at 8× from the start: it runs to the end by itself.
  await page.selectOption('#player-speed', '8');
  await page.evaluate(() => window.porticoPlayer.seek(0));
  t0 = Date.now();
  await page.click('#player-play');
  const { duration } = await state(page);
  await page.waitForFunction(() => {
    const s = window.porticoPlayer.state();
    return !s.playing && s.position >= s.duration;
  }, null, { timeout: duration / 8 + 15000 });
  await waitText(page, env.AFTER_TEXT, 5000);
  console.log(`played ${duration} ms at 8x in ${Date.now() - t0} ms`);

  await page.click('#player-back');
  await open(page, env.VNC_REC);
  await page.selectOption('#player-speed', '8');
  await page.click('#player-play');
  await waitPixel(page, 300, 190, [0xa0, 0x50, 0x10], 20000);
  console.log('player ok');
  await browser.close();
});
