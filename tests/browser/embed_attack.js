// A connect URL whose `ws` parameter names an attacker's WebSocket server: the embed page must connect to the
// bridge the webapp is configured with (never the URL's), and the CSP must refuse WebSockets to any other origin.
'use strict';
const { launch, newPage, shot, waitState, main, goto } = require('./lib');
const env = process.env;

main(async () => {
  const browser = await launch();
  const page = await newPage(browser);
  await goto(page, env.ATTACK_URL);
  try {
    await waitState(page, 'connected');
  } catch (e) {
    const text = await page.evaluate(() => document.querySelector('#session-status')?.textContent
      ?? document.querySelector('#app')?.textContent);
    throw new Error(`the embed page did not connect to the real bridge (it shows ${JSON.stringify(text)}): ${e.message}`);
  }
  console.log('connected to the configured bridge');
  if ((await page.evaluate(() => location.hash)) !== '') throw new Error('the secret stayed in the address bar');
  await shot(page, 'embed-attack');
  // Defence in depth: even script on the page cannot open a WebSocket to another origin.
  const probe = await page.evaluate((url) => new Promise((resolve) => {
    const violations = [];
    let outcome = 'none';
    const finish = () => resolve({ outcome, violations });
    document.addEventListener('securitypolicyviolation', (e) => {
      violations.push(e.effectiveDirective);
      if (e.effectiveDirective === 'connect-src') finish();
    });
    // Without a violation report, give up 2 s after the socket's own outcome.
    const ended = (what) => {
      if (outcome === 'none') outcome = what;
      setTimeout(finish, 2000);
    };
    try {
      const ws = new WebSocket(url);
      ws.onopen = () => ended('opened');
      ws.onerror = () => ended('error');
      ws.onclose = () => ended('closed');
    } catch (e) {
      ended(`threw ${e.name}`);
    }
  }), env.FAKE_WS);
  console.log(`probe of the foreign WebSocket: ${probe.outcome}; csp violations: ${probe.violations.join(',')}`);
  if (probe.outcome === 'opened') throw new Error('a WebSocket to a foreign origin opened');
  if (!probe.violations.includes('connect-src')) throw new Error('the CSP did not refuse the foreign WebSocket');
  await browser.close();
});
