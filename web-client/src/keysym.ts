// KeyboardEvent → X11 keysym. The browser's `key` carries the user's layout (AZERTY, German, dead keys
// already composed), so it decides the keysym; `code` (the physical key, US layout) is the fallback when
// `key` says nothing useful ("Unidentified", "Dead", "Process").

const NAMED: Record<string, number> = {
  Backspace: 0xff08, Tab: 0xff09, Enter: 0xff0d, Escape: 0xff1b, Delete: 0xffff,
  Home: 0xff50, ArrowLeft: 0xff51, ArrowUp: 0xff52, ArrowRight: 0xff53, ArrowDown: 0xff54,
  PageUp: 0xff55, PageDown: 0xff56, End: 0xff57, Insert: 0xff63, Pause: 0xff13, ScrollLock: 0xff14,
  PrintScreen: 0xff61, ContextMenu: 0xff67, NumLock: 0xff7f, CapsLock: 0xffe5,
  AltGraph: 0xfe03, Compose: 0xff20, Help: 0xff6a, Cancel: 0xff69, Clear: 0xff0b,
  F1: 0xffbe, F2: 0xffbf, F3: 0xffc0, F4: 0xffc1, F5: 0xffc2, F6: 0xffc3, F7: 0xffc4, F8: 0xffc5,
  F9: 0xffc6, F10: 0xffc7, F11: 0xffc8, F12: 0xffc9,
};

/** Modifiers: left and right variants by `location`. */
const MODIFIERS: Record<string, [number, number]> = {
  Shift: [0xffe1, 0xffe2], Control: [0xffe3, 0xffe4], Alt: [0xffe9, 0xffea],
  Meta: [0xffeb, 0xffec], OS: [0xffeb, 0xffec], Super: [0xffeb, 0xffec], Hyper: [0xffed, 0xffee],
};

/** Numeric keypad (location 3) keys. */
const KEYPAD: Record<string, number> = {
  '0': 0xffb0, '1': 0xffb1, '2': 0xffb2, '3': 0xffb3, '4': 0xffb4, '5': 0xffb5, '6': 0xffb6, '7': 0xffb7,
  '8': 0xffb8, '9': 0xffb9, '*': 0xffaa, '+': 0xffab, '-': 0xffad, '.': 0xffae, ',': 0xffac, '/': 0xffaf,
  Enter: 0xff8d, Delete: 0xff9f, Insert: 0xff9e, Home: 0xff95, End: 0xff9c, PageUp: 0xff9a, PageDown: 0xff9b,
  ArrowLeft: 0xff96, ArrowUp: 0xff97, ArrowRight: 0xff98, ArrowDown: 0xff99, Clear: 0xff9d,
};

/** Physical keys of a US layout, for when `key` is unusable. */
const US_CODES: Record<string, string> = {
  Backquote: '`', Minus: '-', Equal: '=', BracketLeft: '[', BracketRight: ']', Backslash: '\\',
  Semicolon: ';', Quote: "'", Comma: ',', Period: '.', Slash: '/', Space: ' ', IntlBackslash: '<',
};

/** The keysym of one Unicode character: Latin-1 maps directly, everything else to 0x01000000 + code point. */
export function charKeysym(ch: string): number {
  const cp = ch.codePointAt(0) ?? 0;
  if ((cp >= 0x20 && cp <= 0x7e) || (cp >= 0xa0 && cp <= 0xff)) return cp;
  return 0x01000000 + cp;
}

function fromCode(code: string): number | null {
  let m = /^Key([A-Z])$/.exec(code);
  if (m) return m[1].toLowerCase().charCodeAt(0);
  m = /^Digit([0-9])$/.exec(code);
  if (m) return m[1].charCodeAt(0);
  const ch = US_CODES[code];
  return ch ? ch.charCodeAt(0) : null;
}

/** The keysym to send for this key event, or null to let the browser have it. */
export function keysymOf(e: KeyboardEvent): number | null {
  const key = e.key;
  const mod = MODIFIERS[key];
  if (mod) return e.location === 2 ? mod[1] : mod[0];
  if (e.location === 3 && KEYPAD[key] !== undefined) return KEYPAD[key];
  if (NAMED[key] !== undefined) return NAMED[key];
  if ([...key].length === 1) return charKeysym(key);
  return fromCode(e.code);
}

// KeyboardEvent.code → PC/AT scan code set 1 (what RDP sends): the physical key, whatever the layout.
// Extended keys carry the 0xe0 prefix in the high byte.
const SCANCODES: Record<string, number> = {
  Escape: 0x01, Digit1: 0x02, Digit2: 0x03, Digit3: 0x04, Digit4: 0x05, Digit5: 0x06, Digit6: 0x07,
  Digit7: 0x08, Digit8: 0x09, Digit9: 0x0a, Digit0: 0x0b, Minus: 0x0c, Equal: 0x0d, Backspace: 0x0e,
  Tab: 0x0f, KeyQ: 0x10, KeyW: 0x11, KeyE: 0x12, KeyR: 0x13, KeyT: 0x14, KeyY: 0x15, KeyU: 0x16,
  KeyI: 0x17, KeyO: 0x18, KeyP: 0x19, BracketLeft: 0x1a, BracketRight: 0x1b, Enter: 0x1c,
  ControlLeft: 0x1d, KeyA: 0x1e, KeyS: 0x1f, KeyD: 0x20, KeyF: 0x21, KeyG: 0x22, KeyH: 0x23,
  KeyJ: 0x24, KeyK: 0x25, KeyL: 0x26, Semicolon: 0x27, Quote: 0x28, Backquote: 0x29, ShiftLeft: 0x2a,
  Backslash: 0x2b, KeyZ: 0x2c, KeyX: 0x2d, KeyC: 0x2e, KeyV: 0x2f, KeyB: 0x30, KeyN: 0x31, KeyM: 0x32,
  Comma: 0x33, Period: 0x34, Slash: 0x35, ShiftRight: 0x36, NumpadMultiply: 0x37, AltLeft: 0x38,
  Space: 0x39, CapsLock: 0x3a, F1: 0x3b, F2: 0x3c, F3: 0x3d, F4: 0x3e, F5: 0x3f, F6: 0x40, F7: 0x41,
  F8: 0x42, F9: 0x43, F10: 0x44, NumLock: 0x45, ScrollLock: 0x46, Numpad7: 0x47, Numpad8: 0x48,
  Numpad9: 0x49, NumpadSubtract: 0x4a, Numpad4: 0x4b, Numpad5: 0x4c, Numpad6: 0x4d, NumpadAdd: 0x4e,
  Numpad1: 0x4f, Numpad2: 0x50, Numpad3: 0x51, Numpad0: 0x52, NumpadDecimal: 0x53, IntlBackslash: 0x56,
  F11: 0x57, F12: 0x58, IntlRo: 0x73, IntlYen: 0x7d, NumpadComma: 0x7e,
  NumpadEnter: 0xe01c, ControlRight: 0xe01d, NumpadDivide: 0xe035, PrintScreen: 0xe037, AltRight: 0xe038,
  Home: 0xe047, ArrowUp: 0xe048, PageUp: 0xe049, ArrowLeft: 0xe04b, ArrowRight: 0xe04d, End: 0xe04f,
  ArrowDown: 0xe050, PageDown: 0xe051, Insert: 0xe052, Delete: 0xe053, MetaLeft: 0xe05b, OSLeft: 0xe05b,
  MetaRight: 0xe05c, OSRight: 0xe05c, ContextMenu: 0xe05d,
};

/** The scan code of the physical key, 0 when unknown (the bridge then types the keysym's character). */
export function scancodeOf(e: KeyboardEvent): number {
  // Characters the layout produced without a physical key (IME, virtual keyboards) have no usable code.
  if (e.isComposing) return 0;
  return SCANCODES[e.code] ?? 0;
}

/** A key as sent: its keysym (VNC) and scan code (RDP). */
export type KeyCode = [keysym: number, scancode: number];

/** Key combinations of the special-keys menu, pressed in order and released in reverse. */
export const SPECIAL_KEYS: [string, KeyCode[]][] = [
  ['Ctrl+Alt+Del', [[0xffe3, 0x1d], [0xffe9, 0x38], [0xffff, 0xe053]]],
  ['Ctrl+Alt+Backspace', [[0xffe3, 0x1d], [0xffe9, 0x38], [0xff08, 0x0e]]],
  ['Ctrl+Shift+Esc', [[0xffe3, 0x1d], [0xffe1, 0x2a], [0xff1b, 0x01]]],
  ['Ctrl+Esc', [[0xffe3, 0x1d], [0xff1b, 0x01]]],
  ['Alt+Tab', [[0xffe9, 0x38], [0xff09, 0x0f]]],
  ['Alt+F4', [[0xffe9, 0x38], [0xffc1, 0x3e]]],
  ['Windows key', [[0xffeb, 0xe05b]]],
  ['Windows+R', [[0xffeb, 0xe05b], [0x72, 0x13]]],
  ['Windows+L', [[0xffeb, 0xe05b], [0x6c, 0x26]]],
  ['Windows+E', [[0xffeb, 0xe05b], [0x65, 0x12]]],
  ['Print Screen', [[0xff61, 0xe037]]],
  ['Ctrl+Alt+F1', [[0xffe3, 0x1d], [0xffe9, 0x38], [0xffbe, 0x3b]]],
  ['Ctrl+Alt+F7', [[0xffe3, 0x1d], [0xffe9, 0x38], [0xffc4, 0x41]]],
];

/** At most this many characters of one text input are typed (a pasted novel goes through the clipboard). */
export const MAX_TYPED_TEXT = 4096;

/** The keys that type `text` where no physical key produced it (an input method's composition, a dead key,
 * a mobile keyboard, `insertText`): each character's keysym with no scan code, so VNC gets the keysym and
 * RDP a Unicode event. Line breaks and tabs are their keys; other control characters are dropped. */
export function textKeys(text: string): KeyCode[] {
  const keys: KeyCode[] = [];
  let n = 0;
  for (const ch of text.replace(/\r\n?/g, '\n')) {
    if (++n > MAX_TYPED_TEXT) break;
    const cp = ch.codePointAt(0) ?? 0;
    if (ch === '\n') keys.push([0xff0d, 0x1c]);
    else if (ch === '\t') keys.push([0xff09, 0x0f]);
    else if (cp >= 0x20 && cp !== 0x7f && !(cp >= 0x80 && cp < 0xa0)) keys.push([charKeysym(ch), 0]);
  }
  return keys;
}

/** The keys an `input` event of the keyboard sink stands for. A composition's text is typed once, when it
 * ends (`compositionend`), so `insertCompositionText` types nothing; so does anything else that is not
 * typing (formatting, drag and drop; a paste goes through the clipboard). */
export function inputKeys(inputType: string, data: string | null): KeyCode[] {
  switch (inputType) {
    case 'insertText':
    case 'insertReplacementText':
      return data ? textKeys(data) : [];
    case 'insertLineBreak':
    case 'insertParagraph':
      return [[0xff0d, 0x1c]];
    case 'deleteContentBackward':
    case 'deleteWordBackward':
      return [[0xff08, 0x0e]];
    case 'deleteContentForward':
    case 'deleteWordForward':
      return [[0xffff, 0xe053]];
    default:
      return [];
  }
}

/** A key event that belongs to an input method (its composition is under way, or the browser hands it to
 * one: "Process", key code 229): its text arrives as an input or composition event instead. */
export function imeKey(e: Pick<KeyboardEvent, 'isComposing' | 'keyCode' | 'key'>): boolean {
  return e.isComposing || e.keyCode === 229 || e.key === 'Process' || e.key === 'Dead';
}
