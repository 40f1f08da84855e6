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

/** Key combinations of the special-keys menu, as keysyms pressed in order and released in reverse. */
export const SPECIAL_KEYS: [string, number[]][] = [
  ['Ctrl+Alt+Del', [0xffe3, 0xffe9, 0xffff]],
  ['Ctrl+Alt+Backspace', [0xffe3, 0xffe9, 0xff08]],
  ['Ctrl+Esc', [0xffe3, 0xff1b]],
  ['Alt+Tab', [0xffe9, 0xff09]],
  ['Alt+F4', [0xffe9, 0xffc1]],
  ['Windows key', [0xffeb]],
  ['Print Screen', [0xff61]],
  ['Ctrl+Alt+F1', [0xffe3, 0xffe9, 0xffbe]],
  ['Ctrl+Alt+F7', [0xffe3, 0xffe9, 0xffc4]],
];
