// Files in and out of an SSH session in the browser (SFTP through the bridge): the connection allows it in
// the editor; the session's Files panel browses the server, downloads a file (the browser saves it),
// uploads one from the file picker, and cancels a large upload half way.
'use strict';
const { launch, newPage, waitState, login, main, createConnection, openTab, shot } = require('./lib');
const env = process.env;

main(async () => {
  const browser = await launch();
  let page = await newPage(browser);
  await login(page, env.ADMIN_PASSWORD);
  await createConnection(page, { name: 'e2e files', protocol: 'ssh', port: env.SSH_PORT, username: env.SSH_USER, password: env.SSH_PASSWORD, files: 'both' });
  page = await openTab(page, page.locator('tr.conn-row[data-name="e2e files"] .conn-open'));
  await waitState(page, 'connected');

  // The panel opens on the home folder; go to the test's folder.
  await page.click('#files-toggle');
  await page.waitForSelector('#files-panel[data-path]');
  await page.fill('#files-path', env.DIR);
  await page.press('#files-path', 'Enter');
  await page.waitForSelector(`#files-panel[data-path="${env.DIR}"] tr.files-row[data-name="server.bin"]`);
  await shot(page, 'files-panel');

  // Download: the browser saves what the server has.
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout: 30000 }),
    page.click('tr.files-row[data-name="server.bin"] .files-download'),
  ]);
  await download.saveAs(env.DOWNLOAD_TO);
  console.log(`downloaded ${download.suggestedFilename()}`);

  // Upload from the picker: the transfer ends done and the file is listed.
  await page.setInputFiles('#files-upload-input', env.UPLOAD_FROM);
  const name = require('path').basename(env.UPLOAD_FROM);
  await page.waitForSelector(`.files-transfer[data-direction="upload"][data-name="${name}"][data-state="done"]`, { timeout: 30000 });
  await page.waitForSelector(`tr.files-row[data-name="${name}"]`);
  console.log('uploaded from the picker');

  // A large upload cancelled once it is under way.
  const big = require('path').basename(env.BIG_FROM);
  await page.setInputFiles('#files-upload-input', env.BIG_FROM);
  const row = page.locator(`.files-transfer[data-name="${big}"]`);
  await page.waitForFunction((n) => Number(document.querySelector(`.files-transfer[data-name="${n}"]`)?.dataset.bytes ?? 0) > 0, big, { timeout: 30000 });
  await row.locator('.files-cancel').click();
  await page.waitForSelector(`.files-transfer[data-name="${big}"][data-state="cancelled"]`, { timeout: 10000 });
  console.log(`cancelled the large upload at ${await row.getAttribute('data-bytes')} bytes`);
  await shot(page, 'files-transfers');

  // The terminal is still there.
  await page.click('#files-close');
  await page.click('#terminal');
  await page.keyboard.type('echo files-ok-$((6*7))\n');
  await page.waitForFunction(() => window.porticoTerminalText().includes('files-ok-42'), null, { timeout: 15000 });
  await browser.close();
});
