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
  await browser.close();
});
