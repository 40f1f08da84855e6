// Single sign-on with a real OpenID Provider (node-oidc-provider, started by the Rust test): Chromium
// goes from Portico's login page to the provider, logs in there, consents, and comes back logged in with
// the groups the provider says; then the abuse: a replayed callback, a login finished in another browser
// than the one that started it, a forged ID token (payload changed after signing), an ID token for another
// audience, and a key rotation at the provider.
//
// Env: PORTICO_URL, IDP_URL (the provider's issuer), PROVIDER (its name in Portico).
'use strict';
const { launch, shot, main, goto } = require('./lib');
const env = process.env;

async function context(browser) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 720 } });
  // Nothing leaves this machine: any request off loopback is an error of the test.
  await ctx.route('**/*', (route) => {
    const u = new URL(route.request().url());
    if (u.hostname === '127.0.0.1' || u.hostname === 'localhost') return route.continue();
    console.log(`blocked a request off loopback: ${u}`);
    return route.abort();
  });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.log(`[pageerror] ${e.message}`));
  return { ctx, page };
}

async function control(what, body) {
  const res = await fetch(`${env.IDP_URL}/__test/${what}`, { method: 'POST', body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`provider control ${what}: ${res.status}`);
  return res.json();
}

/** From Portico's login page to the provider's authorization URL (not followed further). */
async function startAtPortico(page) {
  await goto(page, `${env.PORTICO_URL}/`);
  const button = page.locator(`a[data-provider="${env.PROVIDER}"]`);
  await button.waitFor({ timeout: 15000 });
  await button.click();
  await page.waitForSelector('input[name="login"]', { timeout: 15000 });
}

/** Log in at the provider's page and consent; returns the callback URL Portico was sent to. */
async function loginAtProvider(page, account) {
  let callback = null;
  const onRequest = (r) => { if (r.url().includes('/api/v1/auth/oidc/callback')) callback = r.url(); };
  page.on('request', onRequest);
  await page.fill('input[name="login"]', account);
  await page.fill('input[name="password"]', 'any password: the provider is under test, not its users');
  await page.click('button[type="submit"]');
  // Consent (the first time this provider session meets the client).
  const consent = page.locator('button:has-text("Continue")');
  await page.waitForURL((u) => u.href.startsWith(env.PORTICO_URL) || u.pathname.includes('/interaction/'), { timeout: 15000 });
  if (!page.url().startsWith(env.PORTICO_URL)) {
    await consent.click({ timeout: 15000 });
  }
  await page.waitForURL((u) => u.href.startsWith(env.PORTICO_URL) && !u.pathname.includes('/api/'), { timeout: 15000 });
  page.off('request', onRequest);
  if (!callback) throw new Error('no callback to Portico was seen');
  return callback;
}

async function me(page) {
  return page.evaluate(async () => {
    const r = await fetch('/api/v1/auth/me');
    return { status: r.status, body: r.ok ? await r.json() : null };
  });
}

async function loginError(page, pattern, what) {
  await page.waitForFunction((p) => new RegExp(p).test(document.querySelector('#login-error')?.textContent || ''), pattern, { timeout: 15000 })
    .catch(async (e) => {
      const text = await page.textContent('#login-error').catch(() => '(no #login-error)');
      throw new Error(`${what}: expected the login page to say /${pattern}/, it says ${JSON.stringify(text)} (${e.message})`);
    });
  const m = await me(page);
  if (m.status !== 401) throw new Error(`${what}: refused login left a session (${m.status})`);
  console.log(`${what}: refused (${await page.textContent('#login-error')})`);
}

/** A whole login as `account` in a fresh browser context; resolves with the page (on the home page). */
async function fullLogin(browser, account) {
  const { ctx, page } = await context(browser);
  await startAtPortico(page);
  const callback = await loginAtProvider(page, account);
  return { ctx, page, callback };
}

main(async () => {
  const browser = await launch();

  // 1. alice (group helpdesk at the provider) sees the connection granted to Portico's helpdesk group only.
  const a = await fullLogin(browser, 'alice');
  await a.page.waitForSelector('text=helpdesk-box', { timeout: 15000 });
  await shot(a.page, 'sso-home');
  if (await a.page.locator('text=secret-box').count()) throw new Error('alice sees a connection not granted to her');
  const who = await me(a.page);
  if (who.status !== 200 || who.body.user.username !== 'alice' || !who.body.user.provider_id) {
    throw new Error(`alice is not logged in as an SSO user: ${JSON.stringify(who)}`);
  }
  console.log(`alice logged in through the provider (user ${who.body.user.id})`);

  // 2. The callback URL replayed (in a browser without a Portico session) is refused: a state works once.
  const r = await context(browser);
  await goto(r.page, a.callback);
  await loginError(r.page, 'already used|unknown', 'replayed callback');
  await r.ctx.close();

  // 3. Login CSRF: a login started in one browser and finished in another is refused.
  const starter = await context(browser);
  await goto(starter.page, `${env.PORTICO_URL}/`);
  await starter.page.locator(`a[data-provider="${env.PROVIDER}"]`).waitFor({ timeout: 15000 });
  const href = await starter.page.getAttribute(`a[data-provider="${env.PROVIDER}"]`, 'href');
  const started = await starter.page.request.get(`${env.PORTICO_URL}${href}`, { maxRedirects: 0 });
  const authorizeUrl = started.headers()['location'];
  if (!authorizeUrl || !authorizeUrl.startsWith(env.IDP_URL)) throw new Error(`login start did not redirect to the provider: ${authorizeUrl}`);
  const victim = await context(browser);
  await goto(victim.page, authorizeUrl);
  await loginAtProvider(victim.page, 'alice');
  await loginError(victim.page, 'another browser', 'login finished in another browser');
  await starter.ctx.close();
  await victim.ctx.close();

  // 4. Forged ID tokens from the token endpoint: a payload changed after signing, another audience.
  for (const [mode, pattern] of [['tamper', 'signature does not verify'], ['aud', 'wrong audience']]) {
    await control('mode', { mode });
    const f = await fullLogin(browser, 'alice');
    await loginError(f.page, pattern, `id token forged (${mode})`);
    await f.ctx.close();
  }
  await control('mode', { mode: '' });

  // 5. The provider rotates its signing key: Portico fetches the new key set and the login works.
  const { kid } = await control('rotate', {});
  console.log(`provider key rotated to ${kid}`);
  const b = await fullLogin(browser, 'alice');
  await b.page.waitForSelector('text=helpdesk-box', { timeout: 15000 });
  await b.ctx.close();

  // 6. alice leaves the group at the provider: at her next login Portico's group follows.
  await control('groups', { account: 'alice', groups: [] });
  const c = await fullLogin(browser, 'alice');
  await c.page.waitForFunction(() => !!document.querySelector('#conn-search, #home, main'), null, { timeout: 15000 });
  const still = await c.page.evaluate(async () => (await (await fetch('/api/v1/connections')).json()).map((x) => x.name));
  if (still.length !== 0) throw new Error(`alice left helpdesk at the provider but still sees ${still}`);
  await shot(c.page, 'sso-no-groups');
  await a.ctx.close();
  await c.ctx.close();
  await browser.close();
  console.log('sso ok');
});
