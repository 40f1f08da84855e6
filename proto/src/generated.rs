//! Files generated from this crate's lists and checked in elsewhere in the repository (tests only): the web
//! client's close codes, the code table of the protocol document and the wire-protocol test vectors.
//!
//! `check` fails when a checked-in file differs from what the code generates; with `PORTICO_BLESS=1` it
//! writes the file instead (`PORTICO_BLESS=1 cargo test -p portico-proto --lib`), so the change shows up
//! in the diff.

use std::path::PathBuf;

use crate::codes::CloseCode;

/// The markers around the generated code table in `docs/protocol.md`.
pub const DOC_BEGIN: &str = "<!-- close-codes: generated from proto/src/codes.rs by its tests; do not edit by hand -->";
pub const DOC_END: &str = "<!-- /close-codes -->";

/// A path relative to the repository root.
pub fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

pub fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn bless() -> bool {
    std::env::var_os("PORTICO_BLESS").is_some_and(|v| v == "1")
}

/// Fail unless the checked-in file `rel` is exactly `expected` (or write it, when blessing).
pub fn check(rel: &str, expected: &str) {
    if bless() {
        std::fs::write(path(rel), expected).unwrap_or_else(|e| panic!("cannot write {rel}: {e}"));
        return;
    }
    let actual = std::fs::read_to_string(path(rel)).unwrap_or_default();
    if actual != expected {
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
        panic!(
            "{rel} is not what proto generates (first difference at line {}); \
             regenerate it with PORTICO_BLESS=1 cargo test -p portico-proto --lib and commit the result",
            line + 1
        );
    }
}

/// `text` with what lies between the lines `begin` and `end` replaced by `body`.
pub fn replace_between(text: &str, begin: &str, end: &str, body: &str) -> Result<String, String> {
    let start = text.find(begin).ok_or_else(|| format!("no line {begin:?}"))? + begin.len();
    let stop = start
        + text[start..]
            .find(end)
            .ok_or_else(|| format!("no line {end:?} after the start marker"))?;
    Ok(format!("{}\n{}{}", &text[..start], body, &text[stop..]))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// `web-client/src/codes.ts`.
pub fn typescript_codes() -> String {
    let mut out = String::from(
        "// Generated from proto/src/codes.rs by its tests: do not edit by hand \
         (PORTICO_BLESS=1 cargo test -p portico-proto --lib rewrites it).\n\
         // The `code` values of ERROR and CLOSED messages (docs/protocol.md, \"Error and close codes\").\n\n\
         export type CloseCode =\n",
    );
    let last = CloseCode::ALL.len() - 1;
    for (i, code) in CloseCode::ALL.iter().enumerate() {
        out += &format!("  | '{}'{}\n", code.as_str(), if i == last { ";" } else { "" });
    }
    out += "\nexport interface CloseCodeInfo {\n  \
            /** The session ends with this code: an ERROR carrying it is fatal, a CLOSED follows. */\n  \
            endsSession: boolean;\n  \
            /** Trying again as it is may work; `null`: not known from the code alone, or nothing ended. */\n  \
            retryable: boolean | null;\n  \
            meaning: string;\n}\n\n\
            export const CLOSE_CODES: { readonly [C in CloseCode]: CloseCodeInfo } = {\n";
    for code in CloseCode::ALL {
        let retry = match code.retryable() {
            Some(r) => r.to_string(),
            None => "null".into(),
        };
        out += &format!(
            "  {}: {{ endsSession: {}, retryable: {retry}, meaning: {} }},\n",
            code.as_str(),
            code.ends_session(),
            json_string(code.meaning())
        );
    }
    out += "};\n\n\
            export function isCloseCode(s: unknown): s is CloseCode {\n  \
            return typeof s === 'string' && Object.prototype.hasOwnProperty.call(CLOSE_CODES, s);\n}\n";
    out
}

/// The code table of `docs/protocol.md` (between [`DOC_BEGIN`] and [`DOC_END`]).
pub fn markdown_codes() -> String {
    let mut out = String::from("| code | ends the session | retry may help | meaning |\n|---|---|---|---|\n");
    for code in CloseCode::ALL {
        assert!(!code.meaning().contains('|'), "{code}: a pipe would break the table");
        let retry = match code.retryable() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "",
        };
        let ends = if code.ends_session() { "yes" } else { "no" };
        out += &format!("| `{}` | {ends} | {retry} | {} |\n", code.as_str(), code.meaning());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_between_markers_keeps_the_rest() {
        let text = "a\nBEGIN\nold\nEND\nz\n";
        assert_eq!(
            replace_between(text, "BEGIN", "END", "new\n").unwrap(),
            "a\nBEGIN\nnew\nEND\nz\n"
        );
        assert!(replace_between("a\nEND\n", "BEGIN", "END", "x").is_err());
        assert!(replace_between("BEGIN\n", "BEGIN", "END", "x").is_err());
    }
}
