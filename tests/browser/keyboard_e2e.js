// Any keyboard: text that no physical key of a US keyboard types reaches the remote side on every protocol.
// Three ways in, as users' keyboards produce them:
// - `insertText` with no key event (dead keys, mobile keyboards, on-screen keyboards, playwright's
//   `keyboard.insertText` and `keyboard.type` for characters off its US layout);
// - an input method's composition (Chromium's own IME events through the DevTools protocol: the text is
//   composed, then committed);
// - plain keys around them.
// SSH: the terminal gets UTF-8; VNC: TigerVNC gets keysyms and types them into a UTF-8 xterm.
'use strict';
const { launch, newPage, waitState, waitFile, login, main, waitPixel, at, createConnection, openTab, shot } = require('./lib');
const env = process.env;

const TEXT = 'é ß 中文';

/** Type `printf '%s\n' 'é ß 中文' > file` with the non-Latin text entered in the three ways. */
// `settled` waits until what was typed before the composition arrived: a person's input method starts
// long after the last key, the DevTools protocol at once, and xterm.js reads a composition from its text
// field a tick later.
async function typeComposed(page, file, settled = async () => undefined) {
  const cdp = await page.context().newCDPSession(page);
  await page.keyboard.type(`printf '%s\\n' '`);
  await page.keyboard.insertText('é');
  await page.keyboard.type(' ß ');
  await settled();
  // An IME: pinyin composed, candidates chosen, then committed.
  await cdp.send('Input.imeSetComposition', { text: 'zhong', selectionStart: 5, selectionEnd: 5 });
  await cdp.send('Input.imeSetComposition', { text: '中文', selectionStart: 2, selectionEnd: 2 });
  await cdp.send('Input.insertText', { text: '中文' });
  await page.keyboard.type(`' > ${file}\n`);
  await cdp.detach();
}

main(async () => {
  const browser = await launch();
  let page = await newPage(browser);
  await login(page, env.ADMIN_PASSWORD);
  await createConnection(page, { name: 'kb ssh', protocol: 'ssh', port: env.SSH_PORT, username: env.SSH_USER, password: env.SSH_PASSWORD });
  await createConnection(page, { name: 'kb vnc', protocol: 'vnc', port: env.VNC_PORT, password: env.VNC_PASSWORD });
  const home = page;

  // SSH: xterm.js composes in its own text field and sends UTF-8.
  page = await openTab(home, home.locator('tr.conn-row[data-name="kb ssh"] .conn-open'));
  await waitState(page, 'connected');
  await page.click('#terminal');
  await typeComposed(page, env.SSH_FILE, () => page.waitForFunction(
    () => window.porticoTerminalText().includes("'é ß "), null, { timeout: 15000 }));
  const ssh = await waitFile(env.SSH_FILE, 'the command with composed text never ran over ssh');
  console.log(`ssh wrote: ${ssh.trim()}`);
  await page.close();

  // VNC: the display's text field takes the composition; the bridge sends keysyms.
  page = await openTab(home, home.locator('tr.conn-row[data-name="kb vnc"] .conn-open'));
  await waitState(page, 'connected');
  await waitPixel(page, 100, 60, [255, 255, 255]);
  // Focus follows the pointer on a desktop without a window manager; a click focuses the text field.
  const p = await at(page, 100, 60);
  await page.mouse.click(p.x, p.y);
  const focused = await page.evaluate(() => document.activeElement?.id);
  if (focused !== 'display-input') throw new Error(`a click on the desktop focused ${focused}, not the keyboard field`);
  await typeComposed(page, env.VNC_FILE);
  const vnc = await waitFile(env.VNC_FILE, 'the command with composed text never ran over vnc').catch(async (e) => {
    await shot(page, 'keyboard-vnc-failed');
    throw e;
  });
  console.log(`vnc wrote: ${vnc.trim()}`);
  const typed = await page.evaluate(() => window.porticoDisplay.typed);
  // é, ß, 中, 文 and their spaces went as text; the rest as keys.
  if (!(typed >= 4)) throw new Error(`the display typed ${typed} characters as text`);
  const left = await page.evaluate(() => document.querySelector('#display-input').value);
  if (left !== '') throw new Error(`the keyboard field kept ${JSON.stringify(left)}`);
  console.log(`typed ${typed} characters as text; ${TEXT} everywhere`);
  await browser.close();
});
