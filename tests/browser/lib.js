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

async function waitState(page, state, timeout = 20000) {
  await page.waitForFunction((s) => document.querySelector('#session-status')?.dataset.state === s, state, { timeout });
}

async function waitText(page, needle, timeout = 15000) {
  await page.waitForFunction((n) => typeof window.porticoTerminalText === 'function' && window.porticoTerminalText().includes(n), needle, { timeout });
}

async function login(page, password) {
  await page.goto(`${process.env.PORTICO_URL}/`);
  await page.fill('#login-username', 'admin');
  await page.fill('#login-password', password);
  await page.click('#login-submit');
  await page.waitForSelector('#conn-new', { timeout: 10000 });
}

function main(fn) {
  fn().then(() => process.exit(0), (e) => { console.error(e && e.stack || e); process.exit(1); });
}

module.exports = { launch, newPage, shot, waitState, waitText, login, main };
