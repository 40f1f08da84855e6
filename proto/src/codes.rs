//! Close and error codes: the one list of the `code` values that `ERROR` and `CLOSED` messages carry, that
//! the bridge ends sessions with, and that the control plane tells a bridge when it ended a session.
//!
//! Each code has its wire string (snake_case, in JSON as that string), whether it ends the session (an
//! `ERROR` with it is fatal), whether trying again may help, and a one-line meaning. The web client's
//! `web-client/src/codes.ts` and the code table of `docs/protocol.md` are generated from this list by the
//! tests of this module, which fail when either file differs from it (`PORTICO_BLESS=1` rewrites them).

use std::fmt;
use std::str::FromStr;

/// Declares [`CloseCode`] and everything derived from its one table.
macro_rules! close_codes {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident = $wire:literal, ends_session: $ends:literal, retryable: $retry:expr, meaning: $meaning:literal;
    )*) => {
        /// Why a session ended, or what went wrong in it: the `code` of `ERROR` and `CLOSED` messages.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum CloseCode {
            $($(#[doc = $doc])* $variant,)*
        }

        impl CloseCode {
            /// Every code, in the order of the table.
            pub const ALL: &'static [CloseCode] = &[$(CloseCode::$variant,)*];

            /// The code on the wire (and in metrics labels and recorded end reasons).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(CloseCode::$variant => $wire,)*
                }
            }

            /// Whether the session ends with this code: an `ERROR` carrying it is fatal and a `CLOSED`
            /// follows; the others are notices and the session goes on.
            pub const fn ends_session(self) -> bool {
                match self {
                    $(CloseCode::$variant => $ends,)*
                }
            }

            /// Whether trying again as it is (a new session, the same connection) may work: `Some(false)`
            /// when something must change first (credentials, a pin, the user's intent), `None` where it
            /// cannot be known from the code alone or the session did not end.
            pub const fn retryable(self) -> Option<bool> {
                match self {
                    $(CloseCode::$variant => $retry,)*
                }
            }

            /// What the code means, in one line.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(CloseCode::$variant => $meaning,)*
                }
            }
        }

        impl FromStr for CloseCode {
            type Err = UnknownCloseCode;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($wire => Ok(CloseCode::$variant),)*
                    other => Err(UnknownCloseCode(other.to_owned())),
                }
            }
        }
    };
}

close_codes! {
    /// A client message was not understood; the session goes on.
    MalformedMessage = "malformed_message", ends_session: false, retryable: None,
        meaning: "the last client message was not understood (not fatal)";
    /// The target refused the credentials.
    AuthFailed = "auth_failed", ends_session: true, retryable: Some(false),
        meaning: "the target refused the stored credentials (or needs a password and none is stored, or none was entered in time)";
    /// The target's identity differs from the pinned one.
    HostKeyMismatch = "host_key_mismatch", ends_session: true, retryable: Some(false),
        meaning: "the SSH host key or the RDP server's certificate differs from the pinned fingerprint";
    /// The target could not be reached.
    Unreachable = "unreachable", ends_session: true, retryable: Some(true),
        meaning: "the target could not be reached (DNS, refused, timeout)";
    /// Another error with the target.
    TargetError = "target_error", ends_session: true, retryable: None,
        meaning: "another error talking to the target, e.g. a VNC server sending a malformed or oversized update (the session ends; others are unaffected), or a workspace container that could not start or stopped";
    /// Ended on purpose.
    Ended = "ended", ends_session: true, retryable: Some(false),
        meaning: "the session was ended by the user, an admin or the API";
    /// The session's bridge or workspace agent stopped responding.
    Lost = "lost", ends_session: true, retryable: Some(true),
        meaning: "the bridge holding the session or the Docker agent running its workspace stopped responding (the reason starts with `lost:`); a new session lands on a surviving one";
    /// No input for the connection's idle limit.
    IdleTimeout = "idle_timeout", ends_session: true, retryable: Some(true),
        meaning: "no input for the connection's idle time limit";
    /// The connection's maximum duration was reached.
    MaxDuration = "max_duration", ends_session: true, retryable: Some(true),
        meaning: "the connection's maximum session duration was reached";
    /// The remote side ended the session.
    RemoteClosed = "remote_closed", ends_session: true, retryable: Some(true),
        meaning: "the remote shell exited, the VNC server closed the connection, or the RDP server ended the session (the reason says why: logoff, disconnected by an administrator, idle limit, …)";
    /// The remote display cannot be resized; the session goes on.
    ResizeUnsupported = "resize_unsupported", ends_session: false, retryable: None,
        meaning: "(not fatal) the remote display cannot be resized; the client scales instead";
    /// The RDP server reported a logon problem; the session goes on.
    LogonError = "logon_error", ends_session: false, retryable: None,
        meaning: "(not fatal) the RDP server reported a logon problem (Windows' logon error notification); the session shows what the server shows";
    /// No browser came back within the grace period.
    GraceExpired = "grace_expired", ends_session: true, retryable: Some(true),
        meaning: "(log only: no browser is there to hear it) no client reattached within the grace period";
    /// The session must be recorded and the recording could not start.
    RecordingUnavailable = "recording_unavailable", ends_session: true, retryable: Some(true),
        meaning: "the connection's policy records its sessions and the bridge could not start the recording (no recording storage, or it cannot be written); nothing was connected";
    /// A viewer's share was revoked or expired (the session goes on for its owner).
    ShareRevoked = "share_revoked", ends_session: true, retryable: Some(false),
        meaning: "(to a viewer only) the owner or an administrator stopped sharing the session with you, or the share expired; the session goes on for its owner";
    /// Another browser attached to the session.
    Replaced = "replaced", ends_session: true, retryable: Some(false),
        meaning: "(to the replaced socket only) the session was opened in another window, which now has it";
}

impl CloseCode {
    /// The code of a session the control plane ended, told by the reason it recorded: how a bridge reads a
    /// sync answer from a webapp that does not send codes yet (`SyncResponse::codes`). A lost bridge or
    /// workspace says `lost:`, a failed workspace `workspace failed`, everything else ended on purpose.
    pub fn from_recorded_reason(reason: Option<&str>) -> CloseCode {
        match reason {
            Some(r) if r.starts_with("lost:") => CloseCode::Lost,
            Some(r) if r.starts_with("workspace failed") => CloseCode::TargetError,
            _ => CloseCode::Ended,
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for CloseCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for CloseCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A code that is not in [`CloseCode`]'s list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown close code {0:?}")]
pub struct UnknownCloseCode(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generated;

    #[test]
    fn wire_strings_round_trip_through_serde_and_from_str() {
        let mut seen = std::collections::BTreeSet::new();
        for &code in CloseCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} listed twice");
            assert!(
                code.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code} is not snake_case"
            );
            assert_eq!(code.as_str().parse::<CloseCode>(), Ok(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<CloseCode>(&json).unwrap(), code);
            assert_eq!(code.to_string(), code.as_str());
            assert!(!code.meaning().is_empty() && !code.meaning().contains('\n'));
            // A notice that does not end the session has nothing to retry.
            if !code.ends_session() {
                assert_eq!(code.retryable(), None, "{code}");
            }
        }
        assert_eq!("Ended".parse::<CloseCode>(), Err(UnknownCloseCode("Ended".into())));
        assert!(serde_json::from_str::<CloseCode>("\"closed_by_magic\"").is_err());
        assert!(serde_json::from_str::<CloseCode>("3").is_err());
    }

    #[test]
    fn the_wire_strings_are_the_ones_clients_know() {
        // Browsers and tests compare these strings: changing one is a protocol change.
        let wire: Vec<&str> = CloseCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            wire,
            [
                "malformed_message",
                "auth_failed",
                "host_key_mismatch",
                "unreachable",
                "target_error",
                "ended",
                "lost",
                "idle_timeout",
                "max_duration",
                "remote_closed",
                "resize_unsupported",
                "logon_error",
                "grace_expired",
                "recording_unavailable",
                "share_revoked",
                "replaced",
            ]
        );
    }

    #[test]
    fn recorded_reasons_of_older_webapps_give_their_codes() {
        use CloseCode::*;
        for (reason, code) in [
            (
                Some("lost: bridge b1 stopped responding; reconnect to start a new session"),
                Lost,
            ),
            (
                Some("lost: agent a stopped responding; relaunch for a fresh workspace"),
                Lost,
            ),
            (Some("workspace failed: image not found"), TargetError),
            (Some("ended: the user logged out"), Ended),
            (Some("connection deleted"), Ended),
            (Some("the reason mentions lost: later"), Ended),
            (None, Ended),
        ] {
            assert_eq!(CloseCode::from_recorded_reason(reason), code, "{reason:?}");
        }
    }

    #[test]
    fn the_web_client_codes_file_is_generated_from_this_list() {
        generated::check("web-client/src/codes.ts", &generated::typescript_codes());
    }

    #[test]
    fn the_protocol_doc_table_is_generated_from_this_list() {
        let path = "docs/protocol.md";
        let doc = generated::read(path);
        let updated = generated::replace_between(
            &doc,
            generated::DOC_BEGIN,
            generated::DOC_END,
            &generated::markdown_codes(),
        )
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        generated::check(path, &updated);
    }
}
