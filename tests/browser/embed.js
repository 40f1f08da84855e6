// Open a connect_url in a fresh browser with no cookies: exactly that one session is shown; a DELETE through
// the API closes the browser's terminal within 2 s.
'use strict';
const { launch, newPage, shot, waitState, waitText, main, goto } = require('./lib');
const env = process.env;

main(async () => {
  const browser = await launch();
  const page = await newPage(browser);
  await goto(page, env.CONNECT_URL);
  await waitState(page, 'connected');
  if ((await page.evaluate(() => location.hash)) !== '') throw new Error('the secret stayed in the address bar');
  if (await page.isVisible('#conn-new')) throw new Error('the embed page shows the connection list');
  await page.click('#terminal');
  await page.keyboard.type('echo embed-$((20+22))\n');
  await waitText(page, 'embed-42');
  await shot(page, 'embed');
  const started = Date.now();
  const res = await fetch(`${env.PORTICO_URL}/api/v1/sessions/${env.SESSION_ID}`, {
    method: 'DELETE', headers: { authorization: `Bearer ${env.API_KEY}` },
  });
  if (res.status !== 204) throw new Error(`delete answered ${res.status}`);
  await waitState(page, 'closed', 5000);
  const took = Date.now() - started;
  console.log(`closed-after-ms: ${took}`);
  if (took > 2000) throw new Error(`the terminal closed after ${took} ms`);
  await browser.close();
});
