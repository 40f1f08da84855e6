// Live sharing in two Chromium browsers: the owner (admin) shares an SSH session with a user view-only from
// the session's Share panel; the viewer finds it under "Shared with me", sees the owner's typing, and its own
// keystrokes never reach the shell; switched to control they do; revoked, the viewer's tab closes within 2 s.
// Then a VNC session shared as a link: the viewer sees the owner's typing as pixels, its keys are dropped
// until it is given control.
'use strict';
const { launch, newPage, waitState, waitText, waitFile, login, loginAs, main, waitPixel, at, goto, openTab } = require('./lib');
const fs = require('fs');
const env = process.env;

/** A round trip through the bridge: everything the page sent before it was handled. */
const barrier = (page) => page.evaluate(() => window.porticoPing());

/** Load a page anew (a link that differs from the current address only in its hash would not reload). */
async function fresh(page, url) {
  await page.goto('about:blank');
  await goto(page, url);
}

async function openOwned(page, connectionId) {
  await fresh(page, `${env.PORTICO_URL}/#open=${connectionId}`);
  await waitState(page, 'connected', 30000);
}

/** Share from the owner's panel: with a user (by name) or as a link; returns the link when one is made. */
async function share(page, mode, user) {
  if (await page.locator('#share-panel').isHidden()) await page.click('#session-share');
  await page.selectOption('#share-mode', mode);
  if (user) {
    await page.fill('#share-user', user);
    await page.click('#share-user-add');
    await page.waitForSelector('#share-list tr.share-row[data-kind="user"]', { timeout: 10000 });
    return null;
  }
  await page.click('#share-link');
  await page.waitForFunction(() => document.querySelector('#share-link-url')?.value.includes('#join='), null, { timeout: 10000 });
  return page.inputValue('#share-link-url');
}

async function setMode(page, kind, mode) {
  if (await page.locator('#share-panel').isHidden()) await page.click('#session-share');
  await page.selectOption(`#share-list tr.share-row[data-kind="${kind}"] .share-row-mode`, mode);
}

const waitMode = (page, mode, timeout = 5000) =>
  page.waitForSelector(`#session-watching[data-mode="${mode}"]`, { timeout });

main(async () => {
  const ownerBrowser = await launch();
  const viewerBrowser = await launch();
  const owner = await newPage(ownerBrowser);
  let viewer = await newPage(viewerBrowser);
  await login(owner, env.ADMIN_PASSWORD);
  await loginAs(viewer, env.VIEWER_USER, env.VIEWER_PASSWORD, '#shared-card');

  // SSH, shared with the user, view-only.
  await openOwned(owner, env.SSH_CONN);
  await share(owner, 'view', env.VIEWER_USER);
  await viewer.reload();
  await viewer.waitForSelector('#shared-sessions tr.shared-row', { timeout: 10000 });
  viewer = await openTab(viewer, viewer.locator('#shared-sessions tr.shared-row .shared-join').first());
  await waitMode(viewer, 'view', 15000);
  await owner.waitForFunction((u) => document.querySelector('#session-viewers')?.dataset.viewers === u, env.VIEWER_USER, { timeout: 10000 });
  await owner.click('#terminal');
  await owner.keyboard.type('echo owner-typed-$((6*7))\n');
  await waitText(viewer, 'owner-typed-42');
  console.log('the viewer sees the owner typing');

  await viewer.click('#terminal');
  await viewer.keyboard.type(`touch ${env.SSH_MARKER}; echo viewer-typed-$((5*5))\n`);
  await barrier(viewer);
  await owner.click('#terminal');
  await owner.keyboard.type('echo owner-mark-$((7*7))\n');
  await waitText(owner, 'owner-mark-49');
  if (await owner.evaluate(() => window.porticoTerminalText().includes('viewer-typed-25'))) throw new Error('view-only keys reached the shell');
  if (fs.existsSync(env.SSH_MARKER)) throw new Error('view-only keys ran a command');
  console.log('view-only keys never reached the shell');

  await setMode(owner, 'user', 'control');
  await waitMode(viewer, 'control');
  await viewer.click('#terminal');
  await viewer.keyboard.type('echo viewer-typed-$((5*5))\n');
  await waitText(owner, 'viewer-typed-25');
  console.log('in control, the viewer types into the shell');

  const revoked = Date.now();
  await owner.click('#share-list tr.share-row[data-kind="user"] .share-revoke');
  await viewer.waitForSelector('#stage[data-close-code="share_revoked"]', { timeout: 5000 });
  const tookMs = Date.now() - revoked;
  console.log(`revoked-after-ms ${tookMs}`);
  if (tookMs > 2000) throw new Error(`the viewer closed ${tookMs} ms after the revocation`);
  await owner.click('#terminal');
  await owner.keyboard.type('echo still-owner-$((9*9))\n');
  await waitText(owner, 'still-owner-81');
  await owner.click('#session-end');
  await waitState(owner, 'closed');

  // VNC, shared as a link, view-only: the viewer sees the owner's typing as pixels.
  await openOwned(owner, env.VNC_CONN);
  await waitPixel(owner, 700, 500, [0x20, 0x60, 0xa0], 20000);
  const link = await share(owner, 'view', null);
  await fresh(viewer, link);
  await waitMode(viewer, 'view', 15000);
  await waitPixel(viewer, 700, 500, [0x20, 0x60, 0xa0], 20000);
  let p = await at(owner, 100, 60);
  await owner.mouse.click(p.x, p.y);
  await owner.mouse.move(p.x + 3, p.y + 3);
  await owner.keyboard.type('xsetroot -solid "#a05010"\n');
  await waitPixel(owner, 700, 500, [0xa0, 0x50, 0x10], 20000);
  await waitPixel(viewer, 700, 500, [0xa0, 0x50, 0x10], 20000);
  console.log('the viewer sees the owner typing, as pixels');

  p = await at(viewer, 100, 60);
  await viewer.mouse.click(p.x, p.y);
  await viewer.keyboard.type(`touch ${env.VNC_MARKER}\n`);
  await barrier(viewer);
  p = await at(owner, 100, 60);
  await owner.mouse.move(p.x, p.y);
  await owner.mouse.move(p.x + 3, p.y + 3);
  await owner.keyboard.type(`echo owner > ${env.VNC_DONE}\n`);
  await waitFile(env.VNC_DONE, 'the owner typing on the desktop');
  if (fs.existsSync(env.VNC_MARKER)) throw new Error('view-only keys reached the desktop');

  await setMode(owner, 'link', 'control');
  await waitMode(viewer, 'control');
  p = await at(viewer, 100, 60);
  await viewer.mouse.click(p.x, p.y);
  await viewer.mouse.move(p.x + 3, p.y + 3);
  await viewer.keyboard.type(`echo viewer > ${env.VNC_MARKER}\n`);
  await waitFile(env.VNC_MARKER, 'the viewer in control typing on the desktop');
  console.log('in control, the viewer types on the desktop');

  await owner.click('#share-revoke-all');
  await viewer.waitForSelector('#stage[data-close-code="share_revoked"]', { timeout: 5000 });
  console.log('share ok');
  await ownerBrowser.close();
  await viewerBrowser.close();
});
