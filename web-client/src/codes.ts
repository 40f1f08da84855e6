// Generated from proto/src/codes.rs by its tests: do not edit by hand (PORTICO_BLESS=1 cargo test -p portico-proto --lib rewrites it).
// The `code` values of ERROR and CLOSED messages (docs/protocol.md, "Error and close codes").

export type CloseCode =
  | 'malformed_message'
  | 'auth_failed'
  | 'host_key_mismatch'
  | 'unreachable'
  | 'target_error'
  | 'ended'
  | 'lost'
  | 'idle_timeout'
  | 'max_duration'
  | 'remote_closed'
  | 'resize_unsupported'
  | 'logon_error'
  | 'grace_expired'
  | 'recording_unavailable'
  | 'share_revoked'
  | 'replaced';

export interface CloseCodeInfo {
  /** The session ends with this code: an ERROR carrying it is fatal, a CLOSED follows. */
  endsSession: boolean;
  /** Trying again as it is may work; `null`: not known from the code alone, or nothing ended. */
  retryable: boolean | null;
  meaning: string;
}

export const CLOSE_CODES: { readonly [C in CloseCode]: CloseCodeInfo } = {
  malformed_message: { endsSession: false, retryable: null, meaning: "the last client message was not understood (not fatal)" },
  auth_failed: { endsSession: true, retryable: false, meaning: "the target refused the stored credentials (or needs a password and none is stored, or none was entered in time)" },
  host_key_mismatch: { endsSession: true, retryable: false, meaning: "the SSH host key or the RDP server's certificate differs from the pinned fingerprint" },
  unreachable: { endsSession: true, retryable: true, meaning: "the target could not be reached (DNS, refused, timeout)" },
  target_error: { endsSession: true, retryable: null, meaning: "another error talking to the target, e.g. a VNC server sending a malformed or oversized update (the session ends; others are unaffected), or a workspace container that could not start or stopped" },
  ended: { endsSession: true, retryable: false, meaning: "the session was ended by the user, an admin or the API" },
  lost: { endsSession: true, retryable: true, meaning: "the bridge holding the session or the Docker agent running its workspace stopped responding (the reason starts with `lost:`); a new session lands on a surviving one" },
  idle_timeout: { endsSession: true, retryable: true, meaning: "no input for the connection's idle time limit" },
  max_duration: { endsSession: true, retryable: true, meaning: "the connection's maximum session duration was reached" },
  remote_closed: { endsSession: true, retryable: true, meaning: "the remote shell exited, the VNC server closed the connection, or the RDP server ended the session (the reason says why: logoff, disconnected by an administrator, idle limit, …)" },
  resize_unsupported: { endsSession: false, retryable: null, meaning: "(not fatal) the remote display cannot be resized; the client scales instead" },
  logon_error: { endsSession: false, retryable: null, meaning: "(not fatal) the RDP server reported a logon problem (Windows' logon error notification); the session shows what the server shows" },
  grace_expired: { endsSession: true, retryable: true, meaning: "(log only: no browser is there to hear it) no client reattached within the grace period" },
  recording_unavailable: { endsSession: true, retryable: true, meaning: "the connection's policy records its sessions and the bridge could not start the recording (no recording storage, or it cannot be written); nothing was connected" },
  share_revoked: { endsSession: true, retryable: false, meaning: "(to a viewer only) the owner or an administrator stopped sharing the session with you, or the share expired; the session goes on for its owner" },
  replaced: { endsSession: true, retryable: false, meaning: "(to the replaced socket only) the session was opened in another window, which now has it" },
};

export function isCloseCode(s: unknown): s is CloseCode {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(CLOSE_CODES, s);
}
