//! Session recordings over the REST API: search, read (the recording as stored, with ranges; a terminal
//! session as asciicast v2), delete, and the retention. Admins and auditors read them all, a session's owner
//! their own where the connection's policy said so when it was recorded (the [`Readable`] extractor; the
//! list shows a user only those), only admins delete ([`Admin`]); every search, read and deletion is an event.
//!
//! The bytes are read from the recording storage ([`crate::config::WebappConfig::recording_dir`]), which
//! the bridges write; every read checks the chain of chunk hashes (`portico_proto::recording`), so an
//! altered recording is refused and one cut short (its bridge died) is served up to its last whole chunk.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::{Json, Router};
use portico_proto::recording::{Reader, RecordingError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::AppState;
use crate::api::page;
use crate::auth::{Admin, CurrentUser};
use crate::db::{RecordingFilter, RecordingRow};
use crate::error::ApiError;
use crate::events::{Event, EventType};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/recordings", get(list))
        .route("/api/v1/recordings/{id}", get(show).delete(delete))
        .route("/api/v1/recordings/{id}/file", get(file))
        .route("/api/v1/recordings/{id}/asciicast", get(asciicast))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    user_id: Option<String>,
    connection_id: Option<String>,
    /// A substring of the user's or the connection's name.
    q: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list(State(st): State<AppState>, me: CurrentUser, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request("offset must not be negative"));
    }
    if q.q.as_ref().is_some_and(|s| s.len() > 200) {
        return Err(ApiError::bad_request("q is at most 200 bytes"));
    }
    // A user who is neither admin nor auditor lists only their own sessions' recordings that they may play.
    let own = !me.sees_all();
    let filter = RecordingFilter {
        user_id: if own {
            Some(me.user.id.clone())
        } else {
            q.user_id.filter(|s| !s.is_empty())
        },
        connection_id: q.connection_id.filter(|s| !s.is_empty()),
        q: q.q.filter(|s| !s.trim().is_empty()),
        since: q.since,
        until: q.until,
        owner_access: own,
    };
    let (rows, total) = st.db.list_recordings(&filter, limit, offset).await?;
    if own {
        // A user listing what they may play of their own sessions searches nobody else's: no event (the home
        // page asks on every load). Reading one is an event as for anyone.
        return Ok(page(rows, total));
    }
    st.events.emit(
        Event::new(EventType::RecordingsListed)
            .by(&me)
            .detail(
                "filters",
                serde_json::json!({
                    "user_id": filter.user_id,
                    "connection_id": filter.connection_id,
                    "q": filter.q,
                    "since": filter.since,
                    "until": filter.until,
                }),
            )
            .detail("results", total),
    );
    Ok(page(rows, total))
}

/// What the storage holds of a recording, checked.
#[derive(Debug, Serialize)]
struct Stored {
    bytes: u64,
    /// Every chunk's hash checks and the recording ends with a whole chunk.
    intact: bool,
    /// Bytes of whole, checked chunks (all of it when intact; less when cut short).
    playable_bytes: u64,
    duration_ms: u64,
    records: u64,
    /// Where playback may start (ms since the session began, and the chunk's byte offset).
    keyframes: Vec<KeyframeView>,
    /// Why it is not intact.
    problem: Option<String>,
}

#[derive(Debug, Serialize)]
struct KeyframeView {
    at_ms: u64,
    offset: u64,
    /// The chain's hash before this chunk (hex), to check from there.
    prev: String,
}

#[derive(Debug, Serialize)]
struct RecordingView {
    #[serde(flatten)]
    row: RecordingRow,
    /// `None`: this webapp has no recording storage, or the file is missing.
    stored: Option<Stored>,
}

fn path_of(st: &AppState, row: &RecordingRow) -> Result<PathBuf, ApiError> {
    let dir = st.config.recording_dir.as_ref().ok_or_else(|| {
        ApiError::Unavailable(anyhow::anyhow!(
            "this webapp has no recording storage (--recording-dir)"
        ))
    })?;
    // Session ids are UUIDs; anything else never names a file.
    if row.id.is_empty() || !row.id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(ApiError::NotFound("recording"));
    }
    Ok(dir.join(portico_proto::recording::file_name(&row.id)))
}

/// Check a stored recording chunk by chunk (the file read in pieces: recordings may be large).
async fn check_file(path: &std::path::Path) -> std::io::Result<Result<Stored, RecordingError>> {
    let f = tokio::fs::File::open(path).await?;
    let bytes = f.metadata().await?.len();
    check(f, bytes).await
}

/// Check a recording of `bytes` bytes read from `f`, chunk by chunk.
async fn check(
    mut f: impl tokio::io::AsyncRead + Unpin,
    bytes: u64,
) -> std::io::Result<Result<Stored, RecordingError>> {
    let mut r = Reader::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut stored = Stored {
        bytes,
        intact: false,
        playable_bytes: 0,
        duration_ms: 0,
        records: 0,
        keyframes: Vec::new(),
        problem: None,
    };
    loop {
        let n = f.read(&mut buf).await?;
        if n > 0 {
            r.push(&buf[..n]);
        }
        loop {
            let prev = r.chain();
            match r.next_chunk() {
                Ok(Some(c)) => {
                    if c.keyframe {
                        stored.keyframes.push(KeyframeView {
                            at_ms: c.start_ms,
                            offset: c.offset,
                            prev: hex::encode(prev),
                        });
                    }
                    if let Some(last) = c.records.last() {
                        stored.duration_ms = last.at_ms;
                    }
                    stored.records += c.records.len() as u64;
                    stored.playable_bytes = r.offset();
                }
                Ok(None) => break,
                Err(e) => return Ok(Err(e)),
            }
        }
        if n == 0 {
            break;
        }
    }
    if r.meta().is_some() {
        stored.playable_bytes = stored.playable_bytes.max(r.offset());
    }
    match r.finish() {
        Ok(()) => stored.intact = true,
        Err(e) => stored.problem = Some(e.to_string()),
    }
    Ok(Ok(stored))
}

fn integrity(e: RecordingError) -> ApiError {
    ApiError::Conflict(format!("the recording fails its integrity check: {e}"))
}

/// A recording the caller may read, and the caller: admins and auditors read every recording; any other
/// user only the recordings of their own sessions whose connection let owners play them (when recorded).
/// Anything else is 403 whether it exists or not, so the answer tells nothing about others' sessions.
struct Readable {
    me: CurrentUser,
    row: RecordingRow,
}

impl axum::extract::FromRequestParts<AppState> for Readable {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, st: &AppState) -> Result<Self, ApiError> {
        let me = CurrentUser::from_request_parts(parts, st).await?;
        let Path(id) = Path::<String>::from_request_parts(parts, st)
            .await
            .map_err(|_| ApiError::bad_request("bad recording id"))?;
        match st.db.recording(&id).await? {
            Some(row) if me.sees_all() || (row.owner_access && row.user_id == me.user.id) => Ok(Readable { me, row }),
            None if me.sees_all() => Err(ApiError::NotFound("recording")),
            _ => Err(ApiError::Forbidden(
                "admins and auditors read recordings, and owners where the connection lets them".into(),
            )),
        }
    }
}

async fn show(State(st): State<AppState>, Readable { row, .. }: Readable) -> Result<Json<RecordingView>, ApiError> {
    let stored = match path_of(&st, &row) {
        Ok(path) => match check_file(&path).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => return Err(integrity(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ApiError::Unavailable(
                    anyhow::Error::new(e).context("read the recording"),
                ));
            }
        },
        Err(ApiError::Unavailable(_)) => None,
        Err(e) => return Err(e),
    };
    Ok(Json(RecordingView { row, stored }))
}

async fn open(st: &AppState, row: &RecordingRow) -> Result<(tokio::fs::File, u64), ApiError> {
    let path = path_of(st, row)?;
    let f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::NotFound("recording file")),
        Err(e) => {
            return Err(ApiError::Unavailable(
                anyhow::Error::new(e).context("open the recording"),
            ));
        }
    };
    let len = f
        .metadata()
        .await
        .map_err(|e| ApiError::Unavailable(anyhow::Error::new(e).context("read the recording")))?
        .len();
    Ok((f, len))
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` of a resource of `len` bytes: the inclusive range, or `Err` when it
/// cannot be satisfied; `Ok(None)` without a (single, byte) range.
fn byte_range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
        }
        (a, "") => (a.parse().map_err(|_| ())?, len.checked_sub(1).ok_or(())?),
        (a, b) => (
            a.parse().map_err(|_| ())?,
            b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1)),
        ),
    };
    if start > end || start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// The recording as stored (`application/octet-stream`; `Range` requests for players that fetch from a
/// keyframe's offset). The client checks the chain as it reads (from the start, or from a keyframe's hash).
async fn file(
    State(st): State<AppState>,
    Readable { me, row }: Readable,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (mut f, len) = open(&st, &row).await?;
    let range = match byte_range(&headers, len) {
        Ok(r) => r,
        Err(()) => {
            let mut res = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(res);
        }
    };
    if range.is_none_or(|(start, _)| start == 0) {
        // One event per reading, not per piece of it.
        viewed(&st, &me, &row, "portrec");
    }
    let (start, end) = range.unwrap_or((0, len.saturating_sub(1)));
    let count = if len == 0 { 0 } else { end - start + 1 };
    f.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::Unavailable(anyhow::Error::new(e).context("read the recording")))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(f.take(count)));
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&count.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if range.is_some() {
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
            res.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(res)
}

/// A terminal session as asciicast v2 (`asciinema play` plays it), checked; a recording cut short is
/// exported up to its last whole chunk (`X-Portico-Recording-Intact: false`).
async fn asciicast(State(st): State<AppState>, Readable { me, row }: Readable) -> Result<Response, ApiError> {
    if row.protocol != "ssh" {
        return Err(ApiError::bad_request(
            "only terminal (ssh) recordings export as asciicast",
        ));
    }
    let path = path_of(&st, &row)?;
    // The export needs the whole recording in memory: read once, checked from there.
    let mut bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::NotFound("recording file")),
        Err(e) => {
            return Err(ApiError::Unavailable(
                anyhow::Error::new(e).context("read the recording"),
            ));
        }
    };
    let stored = match check(&bytes[..], bytes.len() as u64).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(integrity(e)),
        Err(e) => {
            return Err(ApiError::Unavailable(
                anyhow::Error::new(e).context("read the recording"),
            ));
        }
    };
    bytes.truncate(usize::try_from(stored.playable_bytes).unwrap_or(usize::MAX));
    let cast = tokio::task::spawn_blocking(move || portico_proto::recording::asciicast(&bytes))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(integrity)?;
    viewed(&st, &me, &row, "asciicast");
    let mut res = cast.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-asciicast"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}.cast\"", row.id)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        "x-portico-recording-intact",
        HeaderValue::from_static(if stored.intact { "true" } else { "false" }),
    );
    Ok(res)
}

/// The audit trail's `recording_viewed`: who read which recording, in which format.
fn viewed(st: &AppState, me: &crate::auth::CurrentUser, row: &RecordingRow, format: &str) {
    st.events.emit(
        Event::new(EventType::RecordingViewed)
            .by(me)
            .user(&row.user_id)
            .connection(&row.connection_id)
            .session(&row.id)
            .detail("format", format),
    );
}

async fn delete(State(st): State<AppState>, Admin(me): Admin, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let row = st.db.recording(&id).await?.ok_or(ApiError::NotFound("recording"))?;
    remove_file(&st, &row).await?;
    if !st.db.delete_recording(&row.id).await? {
        return Err(ApiError::NotFound("recording"));
    }
    st.events.emit(
        Event::new(EventType::RecordingDeleted)
            .by(&me)
            .user(&row.user_id)
            .connection(&row.connection_id)
            .session(&row.id),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a recording's file (gone already: fine).
async fn remove_file(st: &AppState, row: &RecordingRow) -> Result<(), ApiError> {
    let path = match path_of(st, row) {
        Ok(p) => p,
        // Without storage here, the row goes and the file stays for whoever has the storage.
        Err(ApiError::Unavailable(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    match tokio::fs::remove_file(&path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ApiError::Unavailable(
            anyhow::Error::new(e).context("remove the recording"),
        )),
    }
}

/// The retention: remove recordings older than `recording_retention_days` (0: keep them all), at most
/// 1000 a run; safe on every webapp at once.
pub async fn expire(st: &AppState, now: i64) -> anyhow::Result<usize> {
    let days = st.config.recording_retention_days;
    if days == 0 {
        return Ok(0);
    }
    let before = now - i64::try_from(days.saturating_mul(86_400)).unwrap_or(i64::MAX);
    let rows = st.db.expired_recordings(before, 1000).await?;
    let mut removed = 0;
    for row in &rows {
        if remove_file(st, row).await.is_err() {
            continue;
        }
        if st.db.delete_recording(&row.id).await? {
            removed += 1;
        }
    }
    if removed > 0 {
        st.events.emit(
            Event::new(EventType::RecordingsExpired)
                .detail("count", removed)
                .detail("retention_days", days),
        );
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        byte_range(&h, len)
    }

    #[test]
    fn byte_ranges_are_read_as_rfc_9110_says() {
        assert_eq!(byte_range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(range("bytes=0-3", 10), Ok(Some((0, 3))));
        assert_eq!(range("bytes=4-", 10), Ok(Some((4, 9))));
        assert_eq!(range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(
            range("bytes=5-100", 10),
            Ok(Some((5, 9))),
            "an end past the length is the last byte"
        );
        assert_eq!(
            range("bytes=10-", 10),
            Err(()),
            "a start past the end cannot be satisfied"
        );
        assert_eq!(range("bytes=4-2", 10), Err(()));
        assert_eq!(range("bytes=x-2", 10), Err(()));
        assert_eq!(range("bytes=0-1,4-5", 10), Ok(None), "several ranges: the whole file");
        assert_eq!(range("items=0-1", 10), Ok(None));
        assert_eq!(range("bytes=0-", 0), Err(()));
    }
}
