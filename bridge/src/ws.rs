//! The WebSocket endpoint: authenticate the upgrade request (session token or resume token) **before**
//! upgrading, then pump wire messages between the browser and the session actor.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use portico_proto::codes::CloseCode;
use portico_proto::control::{ClaimRequest, ControlError, ViewerClaimRequest};
use portico_proto::token::ViewerClaim;
use portico_proto::wire::{self, ClientMsg, ServerMsg};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::Bridge;
use crate::lifecycle::{CLIENT_QUEUE, Cmd, LiveSession, VIEWER_QUEUE};

/// Initial WebSocket read/write buffer per connection.
const WS_BUFFER: usize = 8 * 1024;
/// Most bytes a connection may buffer towards a browser that does not read.
const WS_MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
pub struct WsQuery {
    session: Option<String>,
}

enum Credential {
    Token(String),
    Resume(String),
}

fn credential(headers: &HeaderMap) -> Option<Credential> {
    for value in headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for item in value.split(',').map(str::trim) {
            if let Some(t) = item.strip_prefix(wire::TOKEN_PREFIX) {
                return Some(Credential::Token(t.to_owned()));
            }
            if let Some(t) = item.strip_prefix(wire::RESUME_PREFIX) {
                return Some(Credential::Resume(t.to_owned()));
            }
        }
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    auth.strip_prefix("Bearer ")
        .map(|t| Credential::Token(t.trim().to_owned()))
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

/// The WebSocket of a session assigned to this bridge: its URL names the bridge's route, so the load
/// balancer sends it (and every reattach) here. A route that is not this bridge's is refused before
/// anything else (421): the load balancer sent it to the wrong bridge, and the browser is told so.
pub async fn routed_handler(
    State(bridge): State<Arc<Bridge>>,
    axum::extract::Path(route): axum::extract::Path<String>,
    q: Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if bridge.config.route.as_deref() != Some(route.as_str()) {
        tracing::warn!(route = ?route, own = ?bridge.config.route, "Refused a WebSocket for another bridge's route: check the load balancer");
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this session belongs to another bridge (the load balancer sent it to the wrong one)",
        );
    }
    handler(State(bridge), q, headers, ws).await
}

pub async fn handler(
    State(bridge): State<Arc<Bridge>>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let metrics = &bridge.registry.metrics;
    let Some(session_id) = q.session.filter(|s| !s.is_empty() && s.len() <= 64) else {
        metrics.refused("missing_session");
        return refuse(StatusCode::BAD_REQUEST, "missing session parameter");
    };
    let live = match credential(&headers) {
        None => {
            metrics.refused("missing_token");
            return refuse(StatusCode::UNAUTHORIZED, "missing session token");
        }
        Some(Credential::Resume(token)) => match bridge.registry.get(&session_id) {
            Some(live) if live.resume_matches(&token) => {
                metrics.upgrades.with(&["reattach"]).inc();
                live
            }
            None if let Some((code, reason)) = bridge.registry.ended(&session_id, &token) => {
                // It ended while the browser was away: say why, then close.
                tracing::info!(%session_id, code = code.as_str(), "Reattach to an ended session: telling the browser why");
                metrics.upgrades.with(&["ended"]).inc();
                return ws
                    .protocols([wire::SUBPROTOCOL])
                    .on_upgrade(move |mut socket| async move {
                        let msg = ServerMsg::closed(code, reason);
                        if socket.send(Message::Binary(msg.encode().into())).await.is_ok() {
                            goodbye(&mut socket).await;
                        }
                    });
            }
            _ => {
                tracing::info!(%session_id, "Refused reattach: invalid or expired resume token");
                metrics.refused("bad_resume_token");
                return refuse(StatusCode::UNAUTHORIZED, "invalid or expired resume token");
            }
        },
        Some(Credential::Token(token)) => {
            let claims = match bridge.verify(&token, &session_id).await {
                Ok(c) => c,
                Err(e) => {
                    let status = if e.is_forbidden() {
                        StatusCode::FORBIDDEN
                    } else {
                        StatusCode::UNAUTHORIZED
                    };
                    tracing::info!(%session_id, error = %e, "Refused token");
                    metrics.refused(crate::metrics::token_reason(&e));
                    return refuse(status, &e.to_string());
                }
            };
            if let Some(viewer) = claims.viewer.clone() {
                return join_viewer(&bridge, &session_id, &claims.jti, viewer, ws).await;
            }
            // A draining bridge keeps its sessions (reattaches above) but starts none: the token is not
            // claimed, so it still works on another bridge.
            if bridge.draining.load(std::sync::atomic::Ordering::SeqCst) {
                tracing::info!(%session_id, "Refused a new session: this bridge is draining");
                metrics.refused("draining");
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "this bridge is draining");
            }
            let req = ClaimRequest {
                jti: claims.jti.clone(),
                bridge_id: bridge.config.bridge_id.clone(),
            };
            let claim_started = std::time::Instant::now();
            let claimed = bridge.control.claim(&session_id, &req).await;
            let result = match &claimed {
                Ok(_) => "ok",
                Err(
                    ControlError::AlreadyUsed | ControlError::Ended | ControlError::NotFound | ControlError::Refused(_),
                ) => "refused",
                Err(_) => "error",
            };
            metrics
                .claim_seconds
                .with(&[result])
                .observe_duration(claim_started.elapsed());
            let target = match claimed {
                Ok(t) => t,
                // Refused: expired, or assigned to another bridge (the load balancer sent it here wrongly).
                Err(
                    e @ (ControlError::AlreadyUsed
                    | ControlError::Ended
                    | ControlError::NotFound
                    | ControlError::Refused(_)),
                ) => {
                    tracing::warn!(%session_id, error = %e, "Refused token claim");
                    metrics.refused(crate::metrics::claim_reason(&e));
                    return refuse(StatusCode::FORBIDDEN, &e.to_string());
                }
                Err(e) => {
                    tracing::error!(%session_id, error = %e, "Token claim failed");
                    return refuse(StatusCode::SERVICE_UNAVAILABLE, "control plane unavailable");
                }
            };
            metrics.upgrades.with(&["new"]).inc();
            crate::session::spawn(
                bridge.registry.clone(),
                bridge.control.clone(),
                claims,
                target,
                bridge.config.max_desktop,
                bridge.config.recording_dir.clone(),
            )
        }
    };
    upgrade(ws).on_upgrade(move |socket| pump(socket, live, Role::Owner))
}

/// The WebSocket settings of every session's socket.
fn upgrade(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.protocols([wire::SUBPROTOCOL])
        .max_message_size(wire::MAX_CLIENT_MESSAGE + 16)
        // Small initial buffers (they grow on demand): the 128 KiB defaults dominate idle-session memory.
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        // Back-pressure instead of unbounded buffering when a browser stops reading.
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
}

/// A viewer's token (verified): the session must live on this bridge, and the token is claimed once,
/// fleet-wide, through the control plane, which answers with the share's current mode.
async fn join_viewer(
    bridge: &Arc<Bridge>,
    session_id: &str,
    jti: &str,
    mut viewer: ViewerClaim,
    ws: WebSocketUpgrade,
) -> Response {
    let metrics = &bridge.registry.metrics;
    let Some(live) = bridge.registry.get(session_id) else {
        tracing::info!(%session_id, viewer_id = %viewer.id, "Refused a viewer: the session is not live on this bridge");
        metrics.refused("viewer_no_session");
        return refuse(StatusCode::NOT_FOUND, "the session is not live on this bridge");
    };
    let req = ViewerClaimRequest {
        jti: jti.to_owned(),
        bridge_id: bridge.config.bridge_id.clone(),
        viewer_id: viewer.id.clone(),
    };
    match bridge.control.claim_viewer(session_id, &req).await {
        Ok(grant) => viewer.mode = grant.mode,
        Err(
            e @ (ControlError::AlreadyUsed | ControlError::Ended | ControlError::NotFound | ControlError::Refused(_)),
        ) => {
            tracing::warn!(%session_id, viewer_id = %viewer.id, error = %e, "Refused viewer claim");
            metrics.refused("viewer_claim");
            return refuse(StatusCode::FORBIDDEN, &e.to_string());
        }
        Err(e) => {
            tracing::error!(%session_id, error = %e, "Viewer claim failed");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "control plane unavailable");
        }
    }
    metrics.upgrades.with(&["viewer"]).inc();
    upgrade(ws).on_upgrade(move |socket| pump(socket, live, Role::Viewer(viewer)))
}

/// Who is at the other end of a session's socket.
enum Role {
    Owner,
    Viewer(ViewerClaim),
}

/// How the socket's messages reach the actor.
#[derive(Clone, Copy)]
enum Handle {
    Owner(u64),
    Viewer(u64),
}

impl Handle {
    fn msg(self, msg: ClientMsg) -> Cmd {
        match self {
            Handle::Owner(generation) => Cmd::Client { generation, msg },
            Handle::Viewer(key) => Cmd::ViewerMsg { key, msg },
        }
    }

    fn gone(self) -> Cmd {
        match self {
            Handle::Owner(generation) => Cmd::Detach { generation },
            Handle::Viewer(key) => Cmd::DetachViewer { key },
        }
    }
}

async fn pump(socket: WebSocket, live: Arc<LiveSession>, role: Role) {
    let (reply_tx, reply_rx) = oneshot::channel();
    let (attach, mut client_rx) = match role {
        Role::Owner => {
            let (client, rx) = mpsc::channel(CLIENT_QUEUE);
            (
                Cmd::Attach {
                    client,
                    reply: reply_tx,
                },
                rx,
            )
        }
        Role::Viewer(viewer) => {
            let (client, rx) = mpsc::channel(VIEWER_QUEUE);
            (
                Cmd::AttachViewer {
                    viewer,
                    client,
                    reply: reply_tx,
                },
                rx,
            )
        }
    };
    let viewer = matches!(attach, Cmd::AttachViewer { .. });
    if live.cmd.send(attach).await.is_err() {
        return;
    }
    let Ok(key) = reply_rx.await else {
        return;
    };
    let handle = if viewer {
        Handle::Viewer(key)
    } else {
        Handle::Owner(key)
    };
    let (mut tx, mut rx) = socket.split();
    loop {
        tokio::select! {
            out = client_rx.recv() => {
                let Some(msg) = out else {
                    // The actor let go of this browser: detached it, or was cancelled after an order to
                    // end that it did not obey (then the browser hears why, as it would have from the actor).
                    if live.ended_state().0.is_some() {
                        drain(&mut tx, &mut client_rx, &live).await;
                        return;
                    }
                    break;
                };
                let closing = matches!(msg, ServerMsg::Closed(_));
                let bytes = msg.encode();
                live.sent_to_browser(bytes.len());
                if tx.send(Message::Binary(bytes.into())).await.is_err() {
                    break;
                }
                if closing {
                    goodbye(&mut tx).await;
                    return;
                }
            }
            incoming = rx.next() => {
                if let Some(Ok(Message::Binary(b))) = &incoming {
                    live.received_from_browser(b.len());
                }
                let reply = match incoming {
                    Some(Ok(Message::Binary(b))) => match ClientMsg::decode(&b) {
                        Ok(msg) => {
                            if live.cmd.send(handle.msg(msg)).await.is_err() {
                                // The session ended: what it queued for us (its final error and the
                                // close) must still reach the browser, or the browser would keep
                                // trying to reattach to a session that no longer exists.
                                drain(&mut tx, &mut client_rx, &live).await;
                                return;
                            }
                            None
                        }
                        Err(e) => Some(format!("malformed message: {e}")),
                    },
                    Some(Ok(Message::Text(_))) => Some("malformed message: text frames are not part of the protocol".to_owned()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                };
                if let Some(text) = reply {
                    tracing::debug!(session_id = %live.id, error = %text, "Malformed client message");
                    if tx.send(Message::Binary(ServerMsg::error(CloseCode::MalformedMessage, text).encode().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    let _ = live.cmd.send(handle.gone()).await;
}

/// Forward what the ended session left in the queue, then close the WebSocket. A session whose actor
/// was cancelled ([`crate::session`]'s watchdog) queued no `CLOSED`: the browser gets the recorded end.
async fn drain<S>(tx: &mut S, client_rx: &mut mpsc::Receiver<ServerMsg>, live: &LiveSession)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let forward = async {
        while let Some(msg) = client_rx.recv().await {
            let closing = matches!(msg, ServerMsg::Closed(_));
            if tx.send(Message::Binary(msg.encode().into())).await.is_err() {
                return true;
            }
            if closing {
                return true;
            }
        }
        false
    };
    let closed = tokio::time::timeout(std::time::Duration::from_secs(2), forward)
        .await
        .unwrap_or(false);
    if !closed && let (Some((code, reason)), _) = live.ended_state() {
        let _ = tx
            .send(Message::Binary(ServerMsg::closed(code, reason).encode().into()))
            .await;
    }
    goodbye(tx).await;
}

/// The normal WebSocket close after the session's `CLOSED` message.
async fn goodbye<S>(tx: &mut S)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "session closed".into(),
        })))
        .await;
}
