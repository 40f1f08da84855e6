// Log in as admin, create an SSH connection in the UI, open it, type a command, see its output;
// then a connection with a wrong password shows a clear error.
'use strict';
const { launch, newPage, shot, waitState, waitText, main, createConnection: create, goto, openTab } = require('./lib');
const env = process.env;
const createConnection = (page, name, password, recording) =>
  create(page, { name, protocol: 'ssh', port: env.SSH_PORT, username: env.SSH_USER, password, recording });

main(async () => {
  const browser = await launch();
  let page = await newPage(browser);
  await goto(page, `${env.PORTICO_URL}/`);
  await page.fill('#login-username', 'admin');
  await page.fill('#login-password', 'definitely-wrong');
  await page.click('#login-submit');
  await page.waitForFunction(() => (document.querySelector('#login-error')?.textContent || '').includes('invalid username or password'));
  await page.fill('#login-password', env.ADMIN_PASSWORD);
  await shot(page, 'login');
  await page.click('#login-submit');
  await page.waitForSelector('#conn-new', { timeout: 10000 });

  // Recorded with keystrokes (the test reads the recording back through the API).
  await createConnection(page, 'e2e ssh', env.SSH_PASSWORD, 'keystrokes');
  await createConnection(page, 'e2e wrong password', 'not-the-password');
  await shot(page, 'connections');

  const list = page;
  page = await openTab(page, page.locator('tr.conn-row[data-name="e2e ssh"] .conn-open'));
  // The session has its own tab; the list stays where it was.
  if (!(await list.locator('tr.conn-row[data-name="e2e ssh"]').isVisible())) throw new Error('the list did not stay in its tab');
  await waitState(page, 'connected');
  if (!(await page.locator('#session-recording').isVisible())) throw new Error('a recorded session shows no REC mark');
  await page.click('#terminal');
  await page.keyboard.type(`echo from-browser-$((6*7)) > ${env.MARKER_FILE}; echo typed-$((2+3))-ok\n`);
  await waitText(page, 'typed-5-ok');
  await page.keyboard.type('ls / | head -5; printf "\\033[1;32mPortico\\033[0m over SSH\\n"\n');
  await waitText(page, 'Portico over SSH');
  await shot(page, 'terminal');

  // A network drop: the tab reattaches to the same shell and repaints the screen.
  await page.keyboard.type('echo shell-pid-$$\n');
  // The output line, not the echo of the typed command.
  await page.waitForFunction(() => window.porticoTerminalText().split('\n').some((l) => /^shell-pid-\d+/.test(l)), null, { timeout: 15000 });
  const pid = await page.evaluate(() => /shell-pid-(\d+)/.exec(window.porticoTerminalText().split('\n').filter((l) => /^shell-pid-\d+/.test(l)).pop() || '')?.[1]);
  if (!pid) throw new Error('no shell pid on screen');
  await page.evaluate(() => window.porticoDropConnection());
  await waitState(page, 'reconnecting', 5000);
  await waitState(page, 'connected', 15000);
  await waitText(page, 'typed-5-ok');
  await page.click('#terminal');
  await page.keyboard.type('echo after-drop-$$\n');
  await waitText(page, `after-drop-${pid}`);
  console.log(`reattached to shell ${pid}`);

  await page.click('#session-end');
  await waitState(page, 'closed');
  await page.click('#session-back');

  page = await openTab(page, page.locator('tr.conn-row[data-name="e2e wrong password"] .conn-open'));
  await waitState(page, 'closed', 30000);
  const status = await page.textContent('#session-status');
  if (!/authentication failed/.test(status)) throw new Error(`expected an authentication error, got: ${status}`);
  await shot(page, 'wrong-password');
  console.log(`status: ${status}`);
  await browser.close();
});
