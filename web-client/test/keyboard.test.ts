// Text that no physical key typed (input methods, dead keys, mobile keyboards, `insertText`) as the keys the
// bridge gets: keysyms for VNC, no scan code so that RDP sends Unicode events.

import { charKeysym, imeKey, inputKeys, MAX_TYPED_TEXT, textKeys } from '../src/keysym';

export interface Case { name: string; run: () => void | Promise<void> }

function ensure(ok: boolean, what: string): void {
  if (!ok) throw new Error(what);
}

function same(a: unknown, b: unknown): void {
  ensure(JSON.stringify(a) === JSON.stringify(b), `${JSON.stringify(a)} !== ${JSON.stringify(b)}`);
}

export function cases(): Case[] {
  return [
    {
      name: 'composed and non-Latin characters are keysyms without a scan code',
      run: () => {
        // Latin-1 keysyms are the code point; the rest are 0x01000000 + code point (X11's Unicode keysyms).
        same(textKeys('é'), [[0xe9, 0]]);
        same(textKeys('ß'), [[0xdf, 0]]);
        same(textKeys('中文'), [[0x01004e2d, 0], [0x01006587, 0]]);
        same(textKeys('Ω€'), [[0x010003a9, 0], [0x010020ac, 0]]);
        // Outside the Basic Multilingual Plane: one key per code point, not per UTF-16 unit.
        same(textKeys('😀'), [[0x0101f600, 0]]);
        same(charKeysym('a'), 0x61);
      },
    },
    {
      name: 'line breaks and tabs are their keys, control characters are dropped, the length is bounded',
      run: () => {
        same(textKeys('a\r\nb\tc\u0007\u0085'), [[0x61, 0], [0xff0d, 0x1c], [0x62, 0], [0xff09, 0x0f], [0x63, 0]]);
        ensure(textKeys('x'.repeat(MAX_TYPED_TEXT + 10)).length === MAX_TYPED_TEXT, 'bounded');
      },
    },
    {
      name: 'input events type text once: a composition only when it ends',
      run: () => {
        same(inputKeys('insertText', 'ß'), [[0xdf, 0]]);
        same(inputKeys('insertCompositionText', '中'), []);
        same(inputKeys('insertText', null), []);
        same(inputKeys('insertParagraph', null), [[0xff0d, 0x1c]]);
        same(inputKeys('deleteContentBackward', null), [[0xff08, 0x0e]]);
        same(inputKeys('formatBold', null), []);
        same(inputKeys('insertFromPaste', 'secret'), []);
      },
    },
    {
      name: 'keys an input method owns are left to it',
      run: () => {
        ensure(imeKey({ isComposing: true, keyCode: 65, key: 'a' }), 'composing');
        ensure(imeKey({ isComposing: false, keyCode: 229, key: 'Unidentified' }), 'keyCode 229');
        ensure(imeKey({ isComposing: false, keyCode: 0, key: 'Dead' }), 'dead key');
        ensure(!imeKey({ isComposing: false, keyCode: 65, key: 'a' }), 'a plain key');
      },
    },
  ];
}
