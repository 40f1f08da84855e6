// The help-desk home page on a seeded database (1,000 connections in 20 folders, 200 users): a user sees
// exactly their grants, grouped by folder, searched on the server, with their favourites and recent
// connections first; an admin gives access in the UI; removing the user's group membership closes their open
// terminal tab with the reason.
'use strict';
const { launch, newPage, shot, waitState, waitText, main, goto, openTab, loginAs } = require('./lib');
const env = process.env;

/** Type a search and wait for the list to show its result; returns the time from the last key, in ms. */
async function searchFor(page, q) {
  await page.fill('#conn-search', '');
  const start = Date.now();
  await page.fill('#conn-search', q);
  await page.waitForFunction((want) => document.querySelector('#conn-list')?.dataset.query === want, q, { timeout: 10000 });
  return Date.now() - start;
}

const names = (page) => page.$$eval('#conn-list tr.conn-row', (rows) => rows.map((r) => r.dataset.name));
const total = (page) => page.$eval('#conn-list', (t) => Number(t.dataset.total));

main(async () => {
  const browser = await launch();
  let page = await newPage(browser);
  await loginAs(page, env.USER_NAME, env.USER_PASSWORD, '#conn-list[data-total]');
  // Exactly the granted folder's 50 connections and the SSH one, 50 per page, under their folder heading.
  if (await total(page) !== 51) throw new Error(`the user's list has ${await total(page)} connections`);
  const first = await names(page);
  if (first.length !== 50) throw new Error(`first page: ${first.length} rows`);
  const headings = await page.$$eval('#conn-list tr.folder-heading', (rows) => rows.map((r) => r.textContent));
  if (headings.join('|') !== 'Site 07') throw new Error(`folder headings: ${headings}`);
  await page.click('#conn-more');
  await page.waitForFunction(() => document.querySelectorAll('#conn-list tr.conn-row').length === 51, null, { timeout: 10000 });
  if (!(await page.isHidden('#conn-more'))) throw new Error('"Show more" still shown after the last page');
  const all = await names(page);
  const outside = all.filter((n) => n !== 'bob-ssh' && !/^pc-03[5-9]\d$/.test(n));
  if (outside.length) throw new Error(`ungranted connections listed: ${outside}`);
  await shot(page, 'access-home');

  const ms = await searchFor(page, 'pc-0355');
  const found = await names(page);
  if (found.join() !== 'pc-0355') throw new Error(`search pc-0355 found ${found}`);
  console.log(`user search: ${ms} ms`);
  await searchFor(page, 'pc-0001');
  if (await total(page) !== 0) throw new Error('a search found an ungranted connection');
  const byFolder = await searchFor(page, 'site 07');
  if (await total(page) !== 51) throw new Error(`search by folder name: ${await total(page)}`);
  console.log(`user search by folder: ${byFolder} ms`);

  // Favourites and Recent come first: the user stars a connection (a toggle button), and it is under
  // Favourites, also after a reload; a connection they open is under Recent when they come back.
  await searchFor(page, 'pc-0355');
  const star = page.locator('tr.conn-row[data-name="pc-0355"] button.conn-star');
  if (await star.getAttribute('aria-pressed') !== 'false') throw new Error('pc-0355 is starred before the user did');
  if (!/pc-0355/.test(await star.getAttribute('aria-label'))) throw new Error(`star label: ${await star.getAttribute('aria-label')}`);
  await star.click();
  await page.locator('#favourites tr.fav-row[data-name="pc-0355"]').waitFor({ timeout: 10000 });
  if (await star.getAttribute('aria-pressed') !== 'true') throw new Error('the star is not pressed after a click');
  await goto(page, `${env.PORTICO_URL}/`);
  await page.waitForSelector('#conn-list[data-total]', { timeout: 15000 });
  await page.waitForFunction(() => document.querySelector('#fav-list')?.dataset.total === '1', null, { timeout: 10000 });
  if (!(await page.isVisible('#favourites tr.fav-row[data-name="pc-0355"]'))) throw new Error('no pc-0355 under Favourites after a reload');
  const favStar = page.locator('#favourites tr.fav-row[data-name="pc-0355"] button.conn-star');
  if (await favStar.getAttribute('aria-pressed') !== 'true') throw new Error('the favourite\'s star is not pressed');
  const sectionsFirst = await page.evaluate(() => {
    const order = (a, b) => !!(a && b && (a.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING));
    return order(document.querySelector('#favourites'), document.querySelector('#recent'))
      && order(document.querySelector('#recent'), document.querySelector('#conn-list'));
  });
  if (!sectionsFirst) throw new Error('Favourites and Recent do not come before the list');
  if (!(await page.isHidden('#recent'))) throw new Error('Recent shown before the user opened anything');
  await searchFor(page, 'bob-ssh');
  page = await openTab(page, page.locator('tr.conn-row[data-name="bob-ssh"] .conn-open'));
  await waitState(page, 'connected');
  await page.click('#session-back');
  await page.locator('#recent tr.recent-row[data-name="bob-ssh"]').waitFor({ timeout: 10000 });
  await goto(page, `${env.PORTICO_URL}/`);
  await page.waitForSelector('#conn-list[data-total]', { timeout: 15000 });
  await page.waitForFunction(() => document.querySelector('#recent-list')?.dataset.total === '1', null, { timeout: 10000 });
  const recent = await page.$$eval('#recent tr.recent-row', (rows) => rows.map((r) => r.dataset.name));
  const favs = await page.$$eval('#favourites tr.fav-row', (rows) => rows.map((r) => r.dataset.name));
  if (recent.join() !== 'bob-ssh' || favs.join() !== 'pc-0355') throw new Error(`after a reload: recent ${recent}, favourites ${favs}`);
  await shot(page, 'access-favourites');
  console.log('favourites and recent connections come first');

  // The admin: the whole list, searched on the server, and gives access in the UI.
  const adminPage = await newPage(browser);
  await loginAs(adminPage, 'admin', env.ADMIN_PASSWORD, '#conn-list[data-total]');
  if (await total(adminPage) !== 1001) throw new Error(`the admin's list has ${await total(adminPage)}`);
  const adminMs = await searchFor(adminPage, 'pc-0999');
  if ((await names(adminPage)).join() !== 'pc-0999') throw new Error('admin search pc-0999');
  console.log(`admin search among 1001: ${adminMs} ms`);
  await adminPage.fill('#group-name', 'night-shift');
  await adminPage.click('#group-create');
  await adminPage.waitForSelector('tr.group-row[data-name="night-shift"]');
  await adminPage.click('tr.group-row[data-name="night-shift"] .group-members');
  await adminPage.fill('#members-editor .picker-search', 'user-042');
  await adminPage.waitForFunction(() => document.querySelector('#members-users')?.dataset.query === 'user-042');
  await adminPage.check('#members-users label[data-label="user-042 (user)"] input');
  await adminPage.click('#members-save');
  await adminPage.waitForFunction(() => document.querySelector('tr.group-row[data-name="night-shift"] td:nth-child(2)')?.textContent === '1');
  await adminPage.click('tr.folder-row[data-path="Site 12"] .folder-access');
  await adminPage.waitForSelector('#grants-editor');
  await adminPage.waitForSelector('#grants-groups label[data-label="night-shift"]');
  await adminPage.check('#grants-groups label[data-label="night-shift"] input');
  await adminPage.click('#grants-save');
  await adminPage.waitForSelector('#grants-editor', { state: 'detached' });
  // An API key made in the UI with the read scope and 30 days: it reads and cannot change anything.
  await adminPage.fill('#apikey-name', 'auditor-feed');
  await adminPage.selectOption('#apikey-scope', 'read');
  await adminPage.fill('#apikey-days', '30');
  await adminPage.click('#apikey-create');
  const readKey = (await adminPage.textContent('#apikey-value', { timeout: 10000 })).trim();
  const auth = { authorization: `Bearer ${readKey}` };
  const read = await adminPage.request.get(`${env.PORTICO_URL}/api/v1/connections?limit=1`, { headers: auth });
  const write = await adminPage.request.post(`${env.PORTICO_URL}/api/v1/groups`, { headers: auth, data: { name: 'by-a-read-key' } });
  if (read.status() !== 200 || write.status() !== 403) throw new Error(`read key: GET ${read.status()}, POST ${write.status()}`);
  console.log('a read-scoped key from the UI reads and cannot write');
  await shot(adminPage, 'access-admin');
  console.log('admin gave night-shift access to Site 12');

  // Revocation: the user's terminal tab closes with the reason when their membership goes.
  await searchFor(page, 'bob-ssh');
  page = await openTab(page, page.locator('tr.conn-row[data-name="bob-ssh"] .conn-open'));
  await waitState(page, 'connected');
  await page.click('#terminal');
  await page.keyboard.type('echo still-$((40+2))\n');
  await waitText(page, 'still-42');
  const revoked = await adminPage.request.put(`${env.PORTICO_URL}/api/v1/groups/${env.GROUP_ID}/members`, {
    headers: { authorization: `Bearer ${env.ADMIN_KEY}` }, data: { user_ids: [] },
  });
  if (revoked.status() !== 204) throw new Error(`revoking: ${revoked.status()} ${await revoked.text()}`);
  const t = Date.now();
  await waitState(page, 'closed', 10000);
  const status = await page.textContent('#session-status');
  if (!/access was revoked/.test(status)) throw new Error(`the tab closed with: ${status}`);
  console.log(`revoked: the tab closed after ${Date.now() - t} ms: ${status}`);
  await shot(page, 'access-revoked');
  await browser.close();
});
