//! A text-only CLIPRDR backend ([MS-RDPECLIP]).
//!
//! IronRDP calls the backend synchronously from inside `ActiveStage::process`, so it cannot send PDUs itself:
//! it posts [`ClipEvent`]s on a channel, and the session loop turns the clipboard messages into PDUs
//! ([`super::clipboard_pdus`]) and forwards remote text to the browser.
//!
//! - Monitor Ready → we must answer with a format list (possibly empty), or the channel never gets ready.
//! - Browser → remote: announce `CF_UNICODETEXT`, answer the server's data request with the text (delayed
//!   rendering: the text crosses only when the remote side pastes).
//! - Remote → browser: the server's format list → request `CF_UNICODETEXT` (or `CF_TEXT`) → the response.
//!   The response does not say which format it answers, so the requested one is remembered.
//!
//! [MS-RDPECLIP]: https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-rdpeclip/

use std::sync::{Arc, Mutex};

use ironrdp_cliprdr::backend::{ClipboardMessage, CliprdrBackend};
use ironrdp_cliprdr::pdu::{
    ClipboardFormat, ClipboardFormatId, ClipboardGeneralCapabilityFlags, FileContentsRequest, FileContentsResponse,
    FormatDataRequest, FormatDataResponse, LockDataId, OwnedFormatDataResponse,
};
use tokio::sync::mpsc::UnboundedSender;

/// Largest clipboard text taken from or given to the remote side, in bytes.
pub const MAX_CLIPBOARD_TEXT: usize = 1024 * 1024;

/// What the backend asks of the session loop.
#[derive(Debug)]
pub enum ClipEvent {
    /// Send these clipboard PDUs.
    Message(ClipboardMessage),
    /// The remote side copied this text.
    RemoteText(String),
}

#[derive(Debug)]
pub struct TextClipboard {
    tx: UnboundedSender<ClipEvent>,
    /// The text the browser owns and has announced (shared with the session loop, which sets it).
    local_text: Arc<Mutex<Option<String>>>,
    /// Whether remote copies are fetched at all (the connection's clipboard-down setting).
    fetch_remote: bool,
    pending_paste: Option<ClipboardFormatId>,
}

ironrdp_core::impl_as_any!(TextClipboard);

impl TextClipboard {
    pub fn new(tx: UnboundedSender<ClipEvent>, local_text: Arc<Mutex<Option<String>>>, fetch_remote: bool) -> Self {
        TextClipboard {
            tx,
            local_text,
            fetch_remote,
            pending_paste: None,
        }
    }

    fn local(&self) -> Option<String> {
        self.local_text.lock().ok().and_then(|t| t.clone())
    }

    fn send(&self, msg: ClipboardMessage) {
        // The receiver lives as long as the session loop; an error only happens at teardown.
        let _ = self.tx.send(ClipEvent::Message(msg));
    }
}

/// The formats the browser's text is offered in.
pub fn text_formats() -> Vec<ClipboardFormat> {
    vec![ClipboardFormat::new(ClipboardFormatId::CF_UNICODETEXT)]
}

impl CliprdrBackend for TextClipboard {
    fn temporary_directory(&self) -> &str {
        ".cliprdr"
    }

    fn client_capabilities(&self) -> ClipboardGeneralCapabilityFlags {
        ClipboardGeneralCapabilityFlags::USE_LONG_FORMAT_NAMES
    }

    fn on_ready(&mut self) {
        tracing::debug!("Clipboard channel ready");
    }

    fn on_request_format_list(&mut self) {
        let formats = if self.local().is_some() {
            text_formats()
        } else {
            Vec::new()
        };
        self.send(ClipboardMessage::SendInitiateCopy(formats));
    }

    fn on_format_list_response(&mut self, ok: bool) {
        if !ok {
            tracing::debug!("The server refused our clipboard format list");
        }
    }

    fn on_process_negotiated_capabilities(&mut self, _capabilities: ClipboardGeneralCapabilityFlags) {}

    fn on_remote_copy(&mut self, available_formats: &[ClipboardFormat]) {
        if !self.fetch_remote {
            return;
        }
        let has = |id| available_formats.iter().any(|f| f.id == id);
        let format = if has(ClipboardFormatId::CF_UNICODETEXT) {
            ClipboardFormatId::CF_UNICODETEXT
        } else if has(ClipboardFormatId::CF_TEXT) {
            ClipboardFormatId::CF_TEXT
        } else {
            return; // Images, files: not carried.
        };
        self.pending_paste = Some(format);
        self.send(ClipboardMessage::SendInitiatePaste(format));
    }

    fn on_format_data_request(&mut self, request: FormatDataRequest) {
        let response = match (request.format, self.local()) {
            (ClipboardFormatId::CF_UNICODETEXT, Some(text)) => OwnedFormatDataResponse::new_unicode_string(&text),
            (ClipboardFormatId::CF_TEXT, Some(text)) => OwnedFormatDataResponse::new_string(&text),
            _ => OwnedFormatDataResponse::new_error(),
        };
        self.send(ClipboardMessage::SendFormatData(response));
    }

    fn on_format_data_response(&mut self, response: FormatDataResponse<'_>) {
        let requested = self.pending_paste.take();
        if response.is_error() || response.data().len() > MAX_CLIPBOARD_TEXT * 2 {
            tracing::debug!(
                len = response.data().len(),
                "Remote clipboard data refused or too large"
            );
            return;
        }
        let text = match requested {
            Some(ClipboardFormatId::CF_TEXT) => response.to_string(),
            _ => response.to_unicode_string(),
        };
        match text {
            Ok(text) => {
                let _ = self.tx.send(ClipEvent::RemoteText(text.replace("\r\n", "\n")));
            }
            Err(e) => tracing::debug!(error = %e, "Undecodable remote clipboard text"),
        }
    }

    fn on_file_contents_request(&mut self, request: FileContentsRequest) {
        // No file transfer through the clipboard: answer, so the remote side does not hang.
        self.send(ClipboardMessage::SendFileContentsResponse(
            FileContentsResponse::new_error(request.stream_id),
        ));
    }

    fn on_file_contents_response(&mut self, _response: FileContentsResponse<'_>) {}

    fn on_lock(&mut self, _data_id: LockDataId) {}

    fn on_unlock(&mut self, _data_id: LockDataId) {}
}
