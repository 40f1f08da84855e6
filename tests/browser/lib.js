// Shared helpers of the browser tests: launch Debian's Chromium through playwright-core.
'use strict';
const { chromium } = require('playwright-core');
const path = require('path');

async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
}

async function newPage(browser) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 720 } });
  const page = await ctx.newPage();
  page.on('console', (m) => console.log(`[console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => console.log(`[pageerror] ${e.message}`));
  return page;
}

async function shot(page, name) {
  if (process.env.SCREENSHOT_DIR) {
    await page.screenshot({ path: path.join(process.env.SCREENSHOT_DIR, `${name}.png`) });
  }
}

/** Open a page. Chromium aborts a navigation with ERR_NETWORK_CHANGED when the machine's interfaces change
 * (the tests' own Docker engines add bridges and veths while other tests run): that navigation, and only
 * for that error, is tried again (three times at most). */
async function goto(page, url) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await page.goto(url);
    } catch (e) {
      // The error page of such an abort can also interrupt the next try ("interrupted by another
      // navigation to chrome-error://"): the same cause, tried again too.
      if (attempt >= 3 || !/ERR_NETWORK_CHANGED|navigation to "chrome-error:/.test(String(e && e.message))) throw e;
      console.log(`navigation to ${url} hit ERR_NETWORK_CHANGED; again (${attempt})`);
    }
  }
}

/** Click a connection's Open: the session opens in its own tab and the list stays in this one. Returns the
 * new tab. */
async function openTab(page, locator) {
  const [tab] = await Promise.all([page.context().waitForEvent('page', { timeout: 15000 }), locator.click()]);
  tab.on('console', (m) => console.log(`[console.${m.type()}] ${m.text()}`));
  tab.on('pageerror', (e) => console.log(`[pageerror] ${e.message}`));
  await tab.waitForLoadState('domcontentloaded');
  return tab;
}

async function waitState(page, state, timeout = 20000) {
  await page.waitForFunction((s) => document.querySelector('#session-status')?.dataset.state === s, state, { timeout });
}

async function waitText(page, needle, timeout = 15000) {
  await page.waitForFunction((n) => typeof window.porticoTerminalText === 'function' && window.porticoTerminalText().includes(n), needle, { timeout });
}

/** Log in as `user` and wait until the home page shows `ready` (a selector). */
async function loginAs(page, user, password, ready) {
  await goto(page, `${process.env.PORTICO_URL}/`);
  await page.fill('#login-username', user);
  await page.fill('#login-password', password);
  await page.click('#login-submit');
  await page.waitForSelector(ready, { timeout: 15000 });
}

async function login(page, password) {
  await goto(page, `${process.env.PORTICO_URL}/`);
  await page.fill('#login-username', 'admin');
  await page.fill('#login-password', password);
  await page.click('#login-submit');
  await page.waitForSelector('#conn-new', { timeout: 10000 });
}

const pixel = (page, x, y) => page.evaluate(([px, py]) => window.porticoCanvasPixel(px, py), [x, y]);

/** Wait until the canvas pixel at (x, y) is `rgb` (each channel within 2) after at least one frame. */
async function waitPixel(page, x, y, rgb, timeout = 15000) {
  await page.waitForFunction(([px, py, want]) => {
    const got = window.porticoCanvasPixel?.(px, py);
    return !!got && window.porticoDisplay.frames > 0 && got.every((v, i) => Math.abs(v - want[i]) <= 2);
  }, [x, y, rgb], { timeout }).catch(async (e) => {
    throw new Error(`pixel at ${x},${y}: wanted ${rgb}, have ${await pixel(page, x, y)} (${e.message})`);
  });
}

/** Wait (bounded) until a file on this machine has content: the mark that a command typed into the remote
 * desktop ran there. `what` names the step in the error. */
async function waitFile(file, what, timeout = 20000) {
  const fs = require('fs');
  const end = Date.now() + timeout;
  for (;;) {
    try {
      if (fs.statSync(file).size > 0) return fs.readFileSync(file, 'utf8');
    } catch (_) { /* not there yet */ }
    if (Date.now() > end) throw new Error(`${what}: ${file} did not appear within ${timeout} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Page coordinates of a remote pixel (the canvas may be scaled to fit the window). */
async function at(page, x, y) {
  return page.evaluate(([rx, ry]) => {
    const c = document.querySelector('#display');
    const r = c.getBoundingClientRect();
    return { x: r.left + ((rx + 0.5) * r.width) / c.width, y: r.top + ((ry + 0.5) * r.height) / c.height };
  }, [x, y]);
}

function main(fn) {
  fn().then(() => process.exit(0), (e) => { console.error(e && e.stack || e); process.exit(1); });
}

/** Create a connection in the editor (`username` only for protocols that have one) and wait for its row. */
async function createConnection(page, { name, protocol, port, username, password, recording, files }) {
  await page.click('#conn-new');
  await page.waitForSelector('#conn-form');
  await page.fill('#conn-name', name);
  await page.selectOption('#conn-protocol', protocol);
  await page.fill('#conn-host', '127.0.0.1');
  await page.fill('#conn-port', port);
  if (username !== undefined) await page.fill('#conn-username', username);
  await page.fill('#conn-password', password);
  if (recording !== undefined) await page.selectOption('#conn-recording', recording);
  if (files !== undefined) await page.selectOption('#conn-files', files);
  await page.click('#conn-save');
  await page.locator(`tr.conn-row[data-name="${name}"]`).waitFor({ timeout: 10000 });
}

// Characters typed with Shift on a US keyboard, and the key that types them.
const SHIFTED = { '>': 'Period', '|': 'Backslash', '$': 'Digit4', '(': 'Digit9', ')': 'Digit0', '*': 'Digit8', '_': 'Minus', '&': 'Digit7', '+': 'Equal' };

/** Type as a person on a US keyboard would: Shift is pressed for shifted characters (RDP sends physical keys). */
async function typeUS(page, text) {
  for (const ch of text) {
    if (SHIFTED[ch]) {
      await page.keyboard.down('Shift');
      await page.keyboard.press(SHIFTED[ch]);
      await page.keyboard.up('Shift');
    } else {
      await page.keyboard.press(ch === '\n' ? 'Enter' : ch === ' ' ? 'Space' : ch);
    }
  }
}

module.exports = { typeUS, launch, newPage, openTab, goto, shot, waitState, waitText, waitFile, login, loginAs, main, pixel, waitPixel, at, createConnection };
