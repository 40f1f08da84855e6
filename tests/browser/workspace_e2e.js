// Container workspaces in the browser: the admin sees the agent, creates a workspace in the UI, launches
// it (a fresh container), sees its desktop on the canvas, types into its xterm, and ends it from the live
// sessions list of another tab.
'use strict';
const { launch, newPage, shot, waitState, login, main, waitPixel, at, goto, openTab } = require('./lib');
const env = process.env;

main(async () => {
  const browser = await launch();
  let page = await newPage(browser);
  await login(page, env.ADMIN_PASSWORD);
  await page.locator(`tr.agent-row[data-name="${env.AGENT_NAME}"] .state-healthy`).waitFor({ timeout: 10000 });

  await page.click('#conn-new');
  await page.waitForSelector('#conn-form');
  await page.fill('#conn-name', 'e2e workspace');
  await page.selectOption('#conn-protocol', 'container');
  if (await page.isVisible('#conn-host')) throw new Error('a workspace has no host field');
  await page.fill('#conn-image', env.IMAGE);
  await page.fill('#conn-cpus', '0.5');
  await page.fill('#conn-memory', '256');
  await page.fill('#conn-geometry', '1024x640');
  await page.click('#conn-save');
  const row = page.locator('tr.conn-row[data-name="e2e workspace"]');
  await row.waitFor({ timeout: 10000 });
  const summary = await row.textContent();
  if (!/0\.5 cores/.test(summary) || !/256 MiB/.test(summary)) throw new Error(`row shows ${summary}`);

  const t0 = Date.now();
  page = await openTab(page, row.locator('.conn-open'));
  await waitState(page, 'connected', 60000);
  // The image's root colour at the bottom right, where no window is.
  await waitPixel(page, 1000, 620, [0x2d, 0x5a, 0x7b], 30000);
  console.log(`launch to first frame in the browser: ${Date.now() - t0} ms`);
  const size = await page.evaluate(() => [window.porticoDisplay.width, window.porticoDisplay.height]);
  if (size[0] !== 1024 || size[1] !== 640) throw new Error(`desktop is ${size}`);
  await shot(page, 'workspace-desktop');

  // Type into the xterm (focus follows the pointer under twm) once it is mapped: the command repaints the
  // root window.
  await page.waitForFunction(() => {
    const px = window.porticoCanvasPixel?.(200, 120);
    return !!px && (Math.abs(px[0] - 0x2d) > 8 || Math.abs(px[1] - 0x5a) > 8 || Math.abs(px[2] - 0x7b) > 8);
  }, null, { timeout: 15000 });
  await new Promise((r) => setTimeout(r, 500));
  const p = await at(page, 200, 120);
  await page.mouse.move(p.x, p.y);
  await page.mouse.move(p.x + 3, p.y + 3);
  await page.keyboard.type("xsetroot -solid '#10a040'\n");
  await waitPixel(page, 1000, 620, [0x10, 0xa0, 0x40], 15000);
  console.log('typed command ran in the container');

  // Sound: the session says it has some (the toolbar's button), and a 1 kHz tone played in the container
  // (written by awk, played by PulseAudio's pacat, typed into the xterm like a user would) arrives in the
  // page as decoded samples at that frequency.
  await page.locator('#session-audio[data-muted="false"]').waitFor({ timeout: 15000 });
  const silent = await page.evaluate(() => window.porticoAudio.packets);
  if (silent !== 0) throw new Error(`${silent} audio packets before anything played: silence must not be sent`);
  await page.keyboard.type("LC_ALL=C awk 'BEGIN{for(i=0;i<192000;i++)printf \"%c\",128+100*sin(6.2831853*1000*i/48000)}' | pacat --raw --format=u8 --rate=48000 --channels=1\n");
  const tone = await page.waitForFunction(() => {
    const a = window.porticoAudio;
    if (!a || a.decoded < 25) return null;
    const t = a.analyze();
    return t.samples >= 24000 && t.rms > 0.05 && Math.abs(t.hz - 1000) < 20 ? { ...t, packets: a.packets, decoded: a.decoded } : null;
  }, null, { timeout: 30000, polling: 100 }).then((h) => h.jsonValue()).catch(async (e) => {
    const got = await page.evaluate(() => ({ ...window.porticoAudio, now: window.porticoAudio?.analyze() }));
    throw new Error(`${e.message}: no 1 kHz tone decoded in the page: ${JSON.stringify(got)}`);
  });
  console.log(`TONE ${tone.hz.toFixed(1)} Hz rms ${tone.rms.toFixed(3)} after ${tone.packets} packets`);
  // Muted: the bridge stops sending.
  await page.click('#session-audio');
  await page.locator('#session-audio[data-muted="true"]').waitFor({ timeout: 5000 });
  const sid = await page.evaluate(() => window.porticoSessionId);
  console.log(`SESSION ${sid}`);

  // The admin ends it from the live sessions list in another tab: the workspace tab says so.
  const admin = await page.context().newPage();
  admin.on('console', (m) => console.log(`[admin console.${m.type()}] ${m.text()}`));
  admin.on('pageerror', (e) => console.log(`[admin pageerror] ${e.message}`));
  await goto(admin, `${env.PORTICO_URL}/`);
  const live = admin.locator(`tr.session-row[data-id="${sid}"]`);
  // The home page builds its cards one after the other: on a busy 2-core machine that took over 10 s.
  await live.waitFor({ timeout: 30000 }).catch(async (e) => {
    // What the admin's tab shows instead (the login page? an error? the list without the session?).
    const shown = await admin.evaluate(() => document.body.innerText.slice(0, 1500)).catch(() => '?');
    throw new Error(`${e.message}\nthe admin's tab shows:\n${shown}`);
  });
  const text = await live.textContent();
  if (!/e2e workspace/.test(text)) throw new Error(`live session row shows ${text}`);
  await live.locator('.session-kill').click();
  await waitState(page, 'closed', 10000);
  const status = await page.textContent('#session-status');
  if (!/ended/.test(status)) throw new Error(`the workspace tab says ${status}`);
  console.log(`workspace tab: ${status}`);
  await admin.locator(`tr.session-row[data-id="${sid}"]`).waitFor({ state: 'detached', timeout: 30000 });

  // The secure-browsing workspace: the editor offers the agent's images (the catalog); the browser image
  // shows Chromium full-screen on its start page (a solid #3a7d44 below the toolbar), with sound.
  await admin.click('#conn-new');
  await admin.waitForSelector('#conn-form');
  await admin.fill('#conn-name', 'e2e secure browser');
  await admin.selectOption('#conn-protocol', 'container');
  await admin.waitForFunction((img) => [...document.querySelectorAll('#conn-image-list option')].some((o) => o.value === img),
    env.BROWSER_IMAGE, { timeout: 15000 });
  const offered = await admin.$$eval('#conn-image-list option', (os) => os.map((o) => `${o.value} (${o.textContent})`));
  console.log(`catalog: ${offered.join('; ')}`);
  await admin.fill('#conn-image', env.BROWSER_IMAGE);
  await admin.fill('#conn-memory', '1024');
  await admin.fill('#conn-pids', '512');
  await admin.fill('#conn-geometry', '1024x640');
  await admin.click('#conn-save');
  const browserRow = admin.locator('tr.conn-row[data-name="e2e secure browser"]');
  await browserRow.waitFor({ timeout: 10000 });
  const tab = await openTab(admin, browserRow.locator('.conn-open'));
  await waitState(tab, 'connected', 60000);
  await waitPixel(tab, 40, 600, [0x3a, 0x7d, 0x44], 60000);
  await tab.locator('#session-audio').waitFor({ timeout: 15000 });
  console.log('secure browser: Chromium shows its start page');
  await shot(tab, 'workspace-browser');
  await tab.click('#session-end');
  await waitState(tab, 'closed', 15000);
  await browser.close();
});
