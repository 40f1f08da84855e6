// Two-factor authentication in the browser: the admin sets it up from the QR page (the test reads the key
// shown beside the QR code and computes codes as an authenticator app would: RFC 6238, HMAC-SHA1), saves
// the recovery codes, logs out, and logs in again with the password and then a code.
'use strict';
const crypto = require('crypto');
const { launch, newPage, shot, main, goto } = require('./lib');
const env = process.env;

function base32Decode(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const ch of s.replace(/=+$/, '')) bits += alphabet.indexOf(ch).toString(2).padStart(5, '0');
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

function totp(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const h = crypto.createHmac('sha1', secret).update(counter).digest();
  const off = h[19] & 0x0f;
  return String((h.readUInt32BE(off) & 0x7fffffff) % 1000000).padStart(6, '0');
}

main(async () => {
  const browser = await launch();
  const page = await newPage(browser);
  await goto(page, `${env.PORTICO_URL}/`);
  await page.fill('#login-username', 'admin');
  await page.fill('#login-password', env.ADMIN_PASSWORD);
  await page.click('#login-submit');
  await page.click('#mfa-start');
  await page.waitForSelector('#mfa-qr');
  const loaded = await page.$eval('#mfa-qr', (img) => img.complete && img.naturalWidth > 0);
  if (!loaded) throw new Error('the QR code image did not load');
  const secret = base32Decode((await page.textContent('#mfa-secret')).trim());
  const step = Math.floor(Date.now() / 1000 / 30);
  await page.fill('#mfa-code', totp(secret, step));
  await page.click('#mfa-confirm');
  const codes = (await page.textContent('#mfa-recovery', { timeout: 10000 })).trim().split('\n');
  if (codes.length !== 10) throw new Error(`recovery codes: ${codes}`);
  await shot(page, 'mfa-recovery');
  await page.click('#mfa-done');
  await page.click('#logout');

  await page.fill('#login-username', 'admin');
  await page.fill('#login-password', env.ADMIN_PASSWORD);
  await page.click('#login-submit');
  await page.waitForSelector('#login-code');
  // The code just used cannot be used again; the next step's can.
  await page.fill('#login-code', totp(secret, step));
  await page.click('#login-code-submit');
  await page.waitForFunction(() => /used already/.test(document.querySelector('#login-error')?.textContent || ''));
  // The next step's code, or now's if the machine was slow.
  await page.fill('#login-code', totp(secret, Math.max(step + 1, Math.floor(Date.now() / 1000 / 30))));
  await page.click('#login-code-submit');
  await page.waitForSelector('#conn-new', { timeout: 10000 });
  await page.waitForSelector('#mfa-card');
  const state = await page.textContent('#mfa-card');
  if (!/^Two-factor authentication\s*On\./.test(state)) throw new Error(`the card says: ${state}`);
  console.log('logged in with a second factor');
  await browser.close();
});
