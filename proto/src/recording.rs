//! The recording format, sans-IO: a session's wire stream as the bridge sent it (the encoded messages,
//! never re-encoded), with timestamps and, when the policy says so, the user's input, in chunks chained by
//! SHA-256 so that a recording altered, reordered or cut short anywhere fails its check on playback.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! "PORTREC1"                                   magic, 8 bytes
//! chunk*                                       the first one holds the metadata (JSON, FLAG_META)
//!
//! chunk:  u32 payload length                   at most MAX_CHUNK_BYTES
//!         u64 start, ms since the session began (the first record's time)
//!         u8  flags                            FLAG_META, FLAG_KEYFRAME
//!         payload                              records (or the metadata)
//!         [32] SHA-256(previous chunk's hash ‖ length ‖ start ‖ flags ‖ payload); 32 zero bytes before
//!              the first chunk
//!
//! record: u64 ms since the session began       never decreasing
//!         u8  kind                             0 output (a `ServerMsg` as sent), 1 input (a `ClientMsg`),
//!                                              2 state (a `ServerMsg` of a keyframe, see below)
//!         u32 length
//!         bytes                                the encoded wire message
//! ```
//!
//! A chunk flagged `FLAG_KEYFRAME` starts with the state at that moment as `state` records: a full picture
//! (graphical sessions) or a terminal repaint, after the terminal's size as an input `RESIZE`. A player that
//! starts at the keyframe draws them; one that played up to it skips them (they repeat what it drew). So a
//! player may start there: with the hash stored before it ([`Index`]) the chain is checked from that
//! point on. [`Writer`] produces the bytes, [`Reader`] checks and parses them as they arrive, [`index`]
//! lists the keyframes for seeking, and [`asciicast`] exports a terminal session as asciicast v2.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::wire::{ClientMsg, ServerMsg};

/// The name of session `session_id`'s recording in the recording storage (bridges write it, webapps read it).
pub fn file_name(session_id: &str) -> String {
    format!("{session_id}.portrec")
}

/// The first bytes of every recording.
pub const MAGIC: &[u8; 8] = b"PORTREC1";
/// A chunk's payload never exceeds this (a reader refuses a larger length before allocating): the largest
/// wire message, a full picture, plus room.
pub const MAX_CHUNK_BYTES: usize = 96 << 20;
/// The writer closes a chunk once its payload reaches this.
pub const CHUNK_TARGET_BYTES: usize = 1 << 20;
/// The chunk holds the recording's metadata ([`Meta`], JSON): the first chunk, and only it.
pub const FLAG_META: u8 = 1;
/// The chunk starts with a full picture or a terminal repaint: playback may start here.
pub const FLAG_KEYFRAME: u8 = 2;

const HEAD: usize = 4 + 8 + 1;
const HASH: usize = 32;
const RECORD_HEAD: usize = 8 + 1 + 4;

/// Who a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A message the bridge sent to the browser (`ServerMsg`, encoded).
    Output,
    /// A message the browser sent (`ClientMsg`, encoded): input, when the policy records it.
    Input,
    /// Part of a keyframe's state (`ServerMsg`, encoded): drawn only by a player that starts at it.
    State,
}

/// One timestamped wire message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds since the session began.
    pub at_ms: u64,
    pub kind: Kind,
    /// The encoded wire message.
    pub data: Vec<u8>,
}

/// What a recording is of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub session_id: String,
    pub connection_id: String,
    /// `ssh`, `vnc`, `rdp` or `workspace`.
    pub protocol: String,
    /// The session's owner.
    pub user: String,
    /// When the session began, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Input (keystrokes included) is recorded.
    pub input: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    #[error("not a portico recording")]
    Magic,
    #[error("chunk at byte {offset} claims {len} bytes, over the limit")]
    TooLarge { offset: u64, len: usize },
    #[error("chunk at byte {offset} fails its hash: the recording was altered, reordered or is corrupt")]
    Hash { offset: u64 },
    #[error("chunk at byte {offset} holds a malformed record")]
    Record { offset: u64 },
    #[error("the recording ends inside a chunk at byte {offset}")]
    Truncated { offset: u64 },
    #[error("the recording does not start with its metadata")]
    NoMeta,
    #[error("invalid recording metadata: {0}")]
    Meta(String),
}

/// The chain's next link.
fn link(prev: &[u8; HASH], head: &[u8], payload: &[u8]) -> [u8; HASH] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(head);
    h.update(payload);
    h.finalize().into()
}

fn chunk_head(len: usize, start_ms: u64, flags: u8) -> [u8; HEAD] {
    let mut head = [0u8; HEAD];
    head[..4].copy_from_slice(&(len as u32).to_be_bytes());
    head[4..12].copy_from_slice(&start_ms.to_be_bytes());
    head[12] = flags;
    head
}

/// Writes a recording: records in, bytes out ([`Writer::take`]), in whole chunks.
pub struct Writer {
    prev: [u8; HASH],
    out: Vec<u8>,
    payload: Vec<u8>,
    start_ms: u64,
    flags: u8,
    last_ms: u64,
}

impl Writer {
    /// A recording of `meta`: the magic and the metadata chunk are ready to [take](Writer::take).
    pub fn new(meta: &Meta) -> Writer {
        let mut w = Writer {
            prev: [0; HASH],
            out: MAGIC.to_vec(),
            payload: Vec::new(),
            start_ms: 0,
            flags: 0,
            last_ms: 0,
        };
        // INVARIANT: `Meta` holds only strings, numbers and bools.
        let json = serde_json::to_vec(meta).unwrap_or_default();
        w.close(0, FLAG_META, &json);
        w
    }

    fn close(&mut self, start_ms: u64, flags: u8, payload: &[u8]) {
        let head = chunk_head(payload.len(), start_ms, flags);
        self.prev = link(&self.prev, &head, payload);
        self.out.extend_from_slice(&head);
        self.out.extend_from_slice(payload);
        self.out.extend_from_slice(&self.prev);
    }

    /// Close the chunk being filled (nothing when it is empty).
    pub fn flush(&mut self) {
        if !self.payload.is_empty() {
            let payload = std::mem::take(&mut self.payload);
            self.close(self.start_ms, self.flags, &payload);
            self.flags = 0;
        }
    }

    /// What follows starts with a full picture or a terminal repaint: it opens a chunk flagged
    /// [`FLAG_KEYFRAME`].
    pub fn keyframe(&mut self) {
        self.flush();
        self.flags = FLAG_KEYFRAME;
    }

    /// A wire message at `at_ms` since the session began (an earlier time than the last record's counts
    /// as the last's).
    pub fn record(&mut self, at_ms: u64, kind: Kind, data: &[u8]) {
        let at_ms = at_ms.max(self.last_ms);
        self.last_ms = at_ms;
        if !self.payload.is_empty() && self.payload.len() + RECORD_HEAD + data.len() > MAX_CHUNK_BYTES {
            self.flush();
        }
        if self.payload.is_empty() {
            self.start_ms = at_ms;
        }
        self.payload.extend_from_slice(&at_ms.to_be_bytes());
        self.payload.push(match kind {
            Kind::Output => 0,
            Kind::Input => 1,
            Kind::State => 2,
        });
        self.payload.extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.payload.extend_from_slice(data);
        if self.payload.len() >= CHUNK_TARGET_BYTES {
            self.flush();
        }
    }

    /// The bytes of the chunks closed so far, to append to the recording's file.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Bytes that [`Writer::take`] would return.
    pub fn pending(&self) -> usize {
        self.out.len()
    }
}

/// One checked chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where the chunk starts in the recording.
    pub offset: u64,
    pub start_ms: u64,
    pub keyframe: bool,
    pub records: Vec<Record>,
}

/// Checks and parses a recording as its bytes arrive: bytes in ([`Reader::push`]), the metadata and checked
/// chunks out ([`Reader::next_chunk`]).
pub struct Reader {
    buf: Vec<u8>,
    /// Bytes of the recording consumed before `buf`.
    consumed: u64,
    prev: [u8; HASH],
    magic: bool,
    meta: Option<Meta>,
}

impl Reader {
    /// A reader of a whole recording, from its first byte.
    pub fn new() -> Reader {
        Reader {
            buf: Vec::new(),
            consumed: 0,
            prev: [0; HASH],
            magic: false,
            meta: None,
        }
    }

    /// A reader that starts at the chunk at `offset` (a keyframe of the [`Index`]), `prev` being the hash
    /// stored before it: the chain is checked from there on.
    pub fn resume(offset: u64, prev: [u8; HASH], meta: Meta) -> Reader {
        Reader {
            buf: Vec::new(),
            consumed: offset,
            prev,
            magic: true,
            meta: Some(meta),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The recording's metadata, once its first chunk was read.
    pub fn meta(&self) -> Option<&Meta> {
        self.meta.as_ref()
    }

    /// The hash of the last chunk read (the chain so far).
    pub fn chain(&self) -> [u8; HASH] {
        self.prev
    }

    /// Where the next chunk starts.
    pub fn offset(&self) -> u64 {
        self.consumed
    }

    /// The next whole chunk, checked; `Ok(None)` until more bytes arrive.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, RecordingError> {
        if !self.magic {
            if self.buf.len() < MAGIC.len() {
                return if MAGIC.starts_with(&self.buf) {
                    Ok(None)
                } else {
                    Err(RecordingError::Magic)
                };
            }
            if &self.buf[..MAGIC.len()] != MAGIC {
                return Err(RecordingError::Magic);
            }
            self.advance(MAGIC.len());
            self.magic = true;
        }
        loop {
            let offset = self.consumed;
            if self.buf.len() < HEAD {
                return Ok(None);
            }
            let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
            if len > MAX_CHUNK_BYTES {
                return Err(RecordingError::TooLarge { offset, len });
            }
            if self.buf.len() < HEAD + len + HASH {
                return Ok(None);
            }
            let head = &self.buf[..HEAD];
            let payload = &self.buf[HEAD..HEAD + len];
            let expected = link(&self.prev, head, payload);
            if self.buf[HEAD + len..HEAD + len + HASH] != expected {
                return Err(RecordingError::Hash { offset });
            }
            let start_ms = u64::from_be_bytes(self.buf[4..12].try_into().unwrap_or_default());
            let flags = self.buf[12];
            let parsed = if self.meta.is_none() {
                if flags & FLAG_META == 0 {
                    return Err(RecordingError::NoMeta);
                }
                let meta: Meta = serde_json::from_slice(payload).map_err(|e| RecordingError::Meta(e.to_string()))?;
                self.meta = Some(meta);
                None
            } else if flags & FLAG_META != 0 {
                return Err(RecordingError::Record { offset });
            } else {
                Some(Chunk {
                    offset,
                    start_ms,
                    keyframe: flags & FLAG_KEYFRAME != 0,
                    records: parse_records(payload).ok_or(RecordingError::Record { offset })?,
                })
            };
            self.prev = expected;
            self.advance(HEAD + len + HASH);
            if let Some(chunk) = parsed {
                return Ok(Some(chunk));
            }
        }
    }

    /// All bytes pushed were whole chunks (a recording that ends inside one was cut short).
    pub fn finish(&self) -> Result<(), RecordingError> {
        if self.buf.is_empty() && self.magic {
            Ok(())
        } else if !self.magic {
            Err(RecordingError::Magic)
        } else {
            Err(RecordingError::Truncated { offset: self.consumed })
        }
    }

    fn advance(&mut self, n: usize) {
        self.buf.drain(..n);
        self.consumed += n as u64;
    }
}

impl Default for Reader {
    fn default() -> Self {
        Reader::new()
    }
}

fn parse_records(mut p: &[u8]) -> Option<Vec<Record>> {
    let mut records = Vec::new();
    let mut last = 0;
    while !p.is_empty() {
        if p.len() < RECORD_HEAD {
            return None;
        }
        let at_ms = u64::from_be_bytes(p[..8].try_into().ok()?);
        let kind = match p[8] {
            0 => Kind::Output,
            1 => Kind::Input,
            2 => Kind::State,
            _ => return None,
        };
        let len = u32::from_be_bytes(p[9..13].try_into().ok()?) as usize;
        if at_ms < last || p.len() - RECORD_HEAD < len {
            return None;
        }
        last = at_ms;
        records.push(Record {
            at_ms,
            kind,
            data: p[RECORD_HEAD..RECORD_HEAD + len].to_vec(),
        });
        p = &p[RECORD_HEAD + len..];
    }
    Some(records)
}

/// Where playback may start: a keyframe chunk, its time, and the hash stored before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyframe {
    pub at_ms: u64,
    pub offset: u64,
    pub prev: [u8; HASH],
}

/// A whole recording checked: its metadata, its length in time, and its keyframes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub meta: Meta,
    pub duration_ms: u64,
    pub keyframes: Vec<Keyframe>,
    pub records: u64,
}

impl Index {
    /// The keyframe to start from to show the moment `at_ms`: the last one at or before it.
    pub fn seek(&self, at_ms: u64) -> Option<&Keyframe> {
        self.keyframes.iter().take_while(|k| k.at_ms <= at_ms).last()
    }
}

/// Check a whole recording (every chunk against the chain) and list its keyframes.
pub fn index(bytes: &[u8]) -> Result<Index, RecordingError> {
    let mut r = Reader::new();
    r.push(bytes);
    let mut keyframes = Vec::new();
    let (mut duration_ms, mut records) = (0, 0);
    loop {
        let prev = r.chain();
        let Some(chunk) = r.next_chunk()? else { break };
        if chunk.keyframe {
            keyframes.push(Keyframe {
                at_ms: chunk.start_ms,
                offset: chunk.offset,
                prev,
            });
        }
        if let Some(last) = chunk.records.last() {
            duration_ms = last.at_ms;
        }
        records += chunk.records.len() as u64;
    }
    r.finish()?;
    let meta = r.meta.ok_or(RecordingError::NoMeta)?;
    Ok(Index {
        meta,
        duration_ms,
        keyframes,
        records,
    })
}

/// Terminal output split anywhere, as text: a character cut between two messages waits for its end;
/// bytes that are not UTF-8 become U+FFFD.
#[derive(Default)]
struct Utf8Stream {
    tail: Vec<u8>,
}

impl Utf8Stream {
    fn text(&mut self, bytes: &[u8]) -> String {
        let mut all = std::mem::take(&mut self.tail);
        all.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest = &all[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{fffd}');
                            rest = &bad[n..];
                        }
                        None => {
                            // Cut short: the rest of the character comes with the next message.
                            self.tail = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }
}

/// A terminal recording as asciicast v2 (`asciinema play` plays it): the header, then one event per line:
/// output (`"o"`), input when it was recorded (`"i"`), and terminal resizes (`"r"`, `COLSxROWS`, only when
/// the size changes). The size in the header is the first resize before any output (80x24 without one).
/// Keyframe state is left out: it repeats what the output drew.
pub fn asciicast(bytes: &[u8]) -> Result<String, RecordingError> {
    let mut r = Reader::new();
    r.push(bytes);
    let mut events = Vec::new();
    let mut size: Option<(u16, u16)> = None;
    let mut first_size: Option<(u16, u16)> = None;
    let mut output_seen = false;
    let (mut out, mut input) = (Utf8Stream::default(), Utf8Stream::default());
    while let Some(chunk) = r.next_chunk()? {
        for rec in chunk.records {
            let t = rec.at_ms as f64 / 1000.0;
            match rec.kind {
                Kind::Output => {
                    if let Ok(ServerMsg::TermOutput(b)) = ServerMsg::decode(&rec.data) {
                        output_seen = true;
                        let text = out.text(&b);
                        if !text.is_empty() {
                            events.push(serde_json::json!([t, "o", text]));
                        }
                    }
                }
                Kind::Input => match ClientMsg::decode(&rec.data) {
                    Ok(ClientMsg::TermInput(b)) => {
                        let text = input.text(&b);
                        if !text.is_empty() {
                            events.push(serde_json::json!([t, "i", text]));
                        }
                    }
                    Ok(ClientMsg::Resize { cols, rows, .. }) => {
                        if !output_seen && size.is_none() {
                            size = Some((cols, rows));
                            first_size = size;
                        } else if size != Some((cols, rows)) {
                            size = Some((cols, rows));
                            events.push(serde_json::json!([t, "r", format!("{cols}x{rows}")]));
                        }
                    }
                    _ => {}
                },
                Kind::State => {}
            }
        }
    }
    r.finish()?;
    let meta = r.meta.ok_or(RecordingError::NoMeta)?;
    let (width, height) = first_size.unwrap_or((80, 24));
    let header = serde_json::json!({
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": meta.started_unix_ms / 1000,
        "title": format!("{} session {}", meta.protocol, meta.session_id),
    });
    let mut text = header.to_string();
    for e in events {
        text.push('\n');
        text.push_str(&e.to_string());
    }
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(protocol: &str) -> Meta {
        Meta {
            session_id: "s-1".into(),
            connection_id: "c-1".into(),
            protocol: protocol.into(),
            user: "alice".into(),
            started_unix_ms: 1_796_000_000_000,
            input: true,
        }
    }

    fn out(text: &[u8]) -> Vec<u8> {
        ServerMsg::TermOutput(text.to_vec()).encode()
    }

    /// A recording of `n` outputs of `size` bytes, a keyframe every `every`, and its records.
    fn sample(n: usize, size: usize, every: usize) -> (Vec<u8>, Vec<Record>) {
        let mut w = Writer::new(&meta("vnc"));
        let mut bytes = w.take();
        let mut records = Vec::new();
        for i in 0..n {
            if i % every == 0 {
                w.keyframe();
            }
            let data = vec![(i % 251) as u8; size];
            let kind = if i % 7 == 3 { Kind::Input } else { Kind::Output };
            w.record(i as u64 * 40, kind, &data);
            records.push(Record {
                at_ms: i as u64 * 40,
                kind,
                data,
            });
            if i % 13 == 0 {
                bytes.extend(w.take());
            }
        }
        w.flush();
        bytes.extend(w.take());
        (bytes, records)
    }

    fn read_all(bytes: &[u8], piece: usize) -> Result<(Meta, Vec<Chunk>), RecordingError> {
        let mut r = Reader::new();
        let mut chunks = Vec::new();
        for part in bytes.chunks(piece) {
            r.push(part);
            while let Some(c) = r.next_chunk()? {
                chunks.push(c);
            }
        }
        r.finish()?;
        Ok((r.meta().cloned().expect("metadata"), chunks))
    }

    #[test]
    fn what_is_written_is_read_back_whatever_the_pieces_it_arrives_in() {
        let (bytes, records) = sample(400, 9000, 50);
        for piece in [13, 4096, bytes.len()] {
            let (m, chunks) = read_all(&bytes, piece).unwrap();
            assert_eq!(m, meta("vnc"));
            let got: Vec<Record> = chunks.iter().flat_map(|c| c.records.clone()).collect();
            assert_eq!(got, records, "read in pieces of {piece}");
            // Chunks close at the target size, and every keyframe opens one.
            assert!(chunks.len() >= 8, "{} chunks", chunks.len());
            assert_eq!(chunks.iter().filter(|c| c.keyframe).count(), 8);
            for c in &chunks {
                assert_eq!(c.start_ms, c.records[0].at_ms);
            }
        }
    }

    #[test]
    fn any_altered_byte_reordered_or_missing_chunk_fails_the_check() {
        let (bytes, _) = sample(60, 2_000, 15);
        let idx = index(&bytes).unwrap();
        assert_eq!(idx.records, 60);
        // Every byte after the magic, altered, fails (a hash, a length or the metadata).
        for at in (MAGIC.len()..bytes.len()).step_by(397) {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            let err = index(&bad).expect_err("an altered byte passed");
            assert!(
                matches!(
                    err,
                    RecordingError::Hash { .. }
                        | RecordingError::TooLarge { .. }
                        | RecordingError::Truncated { .. }
                        | RecordingError::Meta(_)
                ),
                "byte {at}: {err}"
            );
        }
        // Chunks swapped, or one dropped: the chain breaks there.
        let (_, chunks) = read_all(&bytes, bytes.len()).unwrap();
        let (a, b) = (chunks[1].offset as usize, chunks[2].offset as usize);
        let c = chunks[3].offset as usize;
        let mut swapped = bytes[..a].to_vec();
        swapped.extend_from_slice(&bytes[b..c]);
        swapped.extend_from_slice(&bytes[a..b]);
        swapped.extend_from_slice(&bytes[c..]);
        assert_eq!(index(&swapped), Err(RecordingError::Hash { offset: a as u64 }));
        let mut dropped = bytes[..a].to_vec();
        dropped.extend_from_slice(&bytes[b..]);
        assert_eq!(index(&dropped), Err(RecordingError::Hash { offset: a as u64 }));
        // Cut short inside a chunk, not a recording, a lying length.
        assert_eq!(
            index(&bytes[..bytes.len() - 1]),
            Err(RecordingError::Truncated {
                offset: chunks.last().unwrap().offset
            })
        );
        assert_eq!(index(b"GIF89a.."), Err(RecordingError::Magic));
        let mut huge = bytes[..a].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 9]);
        assert_eq!(
            index(&huge),
            Err(RecordingError::TooLarge {
                offset: a as u64,
                len: u32::MAX as usize
            })
        );
    }

    #[test]
    fn playback_starts_at_the_keyframe_before_any_moment_and_checks_the_chain_from_there() {
        let (bytes, records) = sample(300, 5000, 25);
        let idx = index(&bytes).unwrap();
        assert_eq!(idx.keyframes.len(), 12);
        assert_eq!(idx.duration_ms, 299 * 40);
        let moment = 6_100;
        let k = idx.seek(moment).unwrap();
        assert_eq!(k.at_ms, 6_000);
        let mut r = Reader::resume(k.offset, k.prev, idx.meta.clone());
        r.push(&bytes[k.offset as usize..]);
        let first = r.next_chunk().unwrap().unwrap();
        assert!(first.keyframe);
        assert_eq!(first.records[0], records[150]);
        while r.next_chunk().unwrap().is_some() {}
        r.finish().unwrap();
        // Started from a wrong hash: refused at once.
        let mut r = Reader::resume(k.offset, [7; 32], idx.meta.clone());
        r.push(&bytes[k.offset as usize..]);
        assert_eq!(r.next_chunk(), Err(RecordingError::Hash { offset: k.offset }));
        assert!(idx.seek(0).is_some());
    }

    #[test]
    fn a_terminal_recording_exports_as_asciicast_v2() {
        let mut w = Writer::new(&meta("ssh"));
        let resize = |cols, rows| {
            ClientMsg::Resize {
                cols,
                rows,
                width_px: 0,
                height_px: 0,
            }
            .encode()
        };
        w.record(0, Kind::Input, &resize(120, 40));
        w.keyframe();
        w.record(10, Kind::Output, &out(b"$ "));
        w.record(
            500,
            Kind::Input,
            &ClientMsg::TermInput(b"echo \xe2\x82\xac\r".to_vec()).encode(),
        );
        // A euro sign cut between two messages, and a byte that is not UTF-8.
        w.record(520, Kind::Output, &out(b"echo \xe2\x82"));
        w.record(530, Kind::Output, &out(b"\xac\r\n\xff\r\n"));
        // A keyframe: the size again (no event) and the repaint (left out).
        w.keyframe();
        w.record(1000, Kind::Input, &resize(120, 40));
        w.record(1000, Kind::State, &out(b"\x1bc$ echo \xe2\x82\xac"));
        w.record(1500, Kind::Input, &resize(100, 30));
        w.flush();
        let cast = asciicast(&w.take()).unwrap();
        let lines: Vec<serde_json::Value> = cast.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(
            (lines[0]["width"].clone(), lines[0]["height"].clone()),
            (120.into(), 40.into())
        );
        assert_eq!(lines[0]["timestamp"], 1_796_000_000);
        assert_eq!(lines[1], serde_json::json!([0.01, "o", "$ "]));
        assert_eq!(lines[2], serde_json::json!([0.5, "i", "echo €\r"]));
        assert_eq!(lines[3], serde_json::json!([0.52, "o", "echo "]));
        assert_eq!(lines[4], serde_json::json!([0.53, "o", "€\r\n\u{fffd}\r\n"]));
        assert_eq!(lines[5], serde_json::json!([1.5, "r", "100x30"]));
        assert_eq!(lines.len(), 6);
    }
}

/// The recording shared with the web client's reader (`proto/vectors/recording.json`): a small terminal
/// recording with a keyframe, its records, and where it breaks when a byte is altered.
#[cfg(test)]
mod vector {
    use super::*;
    use crate::generated;

    const FILE: &str = "proto/vectors/recording.json";

    fn sample() -> (Vec<u8>, Vec<(bool, Record)>) {
        let meta = Meta {
            session_id: "0b6f4c2e-5a4d-4c9e-9d55-0f3c1f2b7a10".into(),
            connection_id: "c-1".into(),
            protocol: "ssh".into(),
            user: "u-1".into(),
            started_unix_ms: 1_796_000_000_000,
            input: true,
        };
        let mut w = Writer::new(&meta);
        let resize = ClientMsg::Resize {
            cols: 100,
            rows: 30,
            width_px: 0,
            height_px: 0,
        }
        .encode();
        let out = |t: &[u8]| ServerMsg::TermOutput(t.to_vec()).encode();
        let mut records = Vec::new();
        let mut rec = |w: &mut Writer, key: bool, at_ms, kind, data: Vec<u8>| {
            w.record(at_ms, kind, &data);
            records.push((key, Record { at_ms, kind, data }));
        };
        w.keyframe();
        rec(&mut w, true, 0, Kind::Input, resize.clone());
        rec(&mut w, true, 0, Kind::State, out(b"\x1bc"));
        rec(&mut w, false, 5, Kind::Output, out(b"$ "));
        rec(
            &mut w,
            false,
            700,
            Kind::Input,
            ClientMsg::TermInput(b"ls\r".to_vec()).encode(),
        );
        rec(&mut w, false, 720, Kind::Output, out("ls\r\nfile-é\r\n$ ".as_bytes()));
        w.keyframe();
        rec(&mut w, true, 10_000, Kind::Input, resize);
        rec(
            &mut w,
            true,
            10_000,
            Kind::State,
            out("\x1bc$ ls\r\nfile-é\r\n$ ".as_bytes()),
        );
        rec(&mut w, false, 10_250, Kind::Output, out(b"exit\r\n"));
        w.flush();
        (w.take(), records)
    }

    #[test]
    fn the_shared_recording_vector_is_what_the_writer_writes() {
        let (bytes, records) = sample();
        let idx = index(&bytes).unwrap();
        // Each record with whether its chunk is a keyframe (a keyframe chunk goes on after its state).
        let mut r = Reader::new();
        r.push(&bytes);
        let mut read = Vec::new();
        while let Some(c) = r.next_chunk().unwrap() {
            read.extend(c.records.into_iter().map(|rec| (c.keyframe, rec)));
        }
        assert_eq!(
            read.iter().map(|(_, r)| r).collect::<Vec<_>>(),
            records.iter().map(|(_, r)| r).collect::<Vec<_>>()
        );
        assert!(
            records.iter().zip(&read).all(|((state, _), (key, _))| !state || *key),
            "state starts keyframes"
        );
        let kind = |k: Kind| match k {
            Kind::Output => 0,
            Kind::Input => 1,
            Kind::State => 2,
        };
        let v = serde_json::json!({
            "about": format!("A session recording (docs/protocol.md \"Recording format\") written by proto/src/recording.rs for the web client's reader: do not edit by hand ({FILE} is rewritten by PORTICO_BLESS=1 cargo test -p portico-proto --lib). A reader must give the records in order, each with whether its chunk is a keyframe; any altered byte must fail the check."),
            "hex": hex::encode(&bytes),
            "meta": idx.meta,
            "duration_ms": idx.duration_ms,
            "keyframes": idx.keyframes.iter().map(|k| serde_json::json!({ "at_ms": k.at_ms, "offset": k.offset, "prev": hex::encode(k.prev) })).collect::<Vec<_>>(),
            "records": read.iter().map(|(key, r)| serde_json::json!({ "at_ms": r.at_ms, "kind": kind(r.kind), "keyframe": key, "hex": hex::encode(&r.data) })).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
        generated::check(FILE, &text);
    }
}
