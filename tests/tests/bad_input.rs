//! Bad input gets a clear error and loses nothing: malformed API bodies, malformed WebSocket frames,
//! junk on the TLS port; the process keeps serving everyone else.

use portico_proto::codes::CloseCode;
use std::io::Write as _;
use std::time::Duration;

use portico_proto::wire::ClientMsg;
use portico_tests::client::Api;
use portico_tests::portico::Portico;
use reqwest::Method;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::{open_term, password_fixture};

#[tokio::test(flavor = "multi_thread")]
async fn malformed_api_bodies_get_clear_errors() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let cases: [(&'static [u8], &str); 5] = [
        (b"{not json", "invalid request body"),
        (b"[]", "invalid request body"),
        (br#"{"protocol":"ssh","host":"h","port":"22"}"#, "invalid request body"),
        (br#"{"protocol":"ssh","host":"h","surprise":1}"#, "unknown field"),
        (
            br#"{"protocol":"telnet","host":"h"}"#,
            "protocol must be ssh, vnc, rdp or container",
        ),
    ];
    for (body, needle) in cases {
        let (s, v) = admin
            .raw(Method::POST, "/api/v1/connections", "application/json", body)
            .await?;
        assert_eq!(s, 400, "{}", String::from_utf8_lossy(body));
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{needle:?} not in {v}"
        );
    }
    for (body, needle) in [
        (
            json!({ "protocol": "ssh", "host": "h", "port": 70000 }),
            "port must be between 1 and 65535",
        ),
        (json!({ "protocol": "ssh", "host": "bad host" }), "host must be"),
        (
            json!({ "protocol": "ssh", "host": "h", "host_key_fingerprint": "MD5:aa" }),
            "SHA256",
        ),
        (
            json!({ "protocol": "ssh", "host": "h", "private_key": "hello" }),
            "private_key",
        ),
    ] {
        let (s, v) = admin.request(Method::POST, "/api/v1/connections", Some(body)).await?;
        assert_eq!(s, 400);
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{needle:?} not in {v}"
        );
    }
    let (s, v) = admin.raw(Method::POST, "/api/v1/sessions", "text/plain", b"x").await?;
    assert_eq!(s, 400, "{v}");
    let (s, _) = admin
        .request(
            Method::POST,
            "/api/v1/sessions",
            Some(json!({ "connection_id": "nope" })),
        )
        .await?;
    assert_eq!(s, 404);
    assert_eq!(admin.request(Method::GET, "/api/__healthcheck", None).await?.0, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_are_reported_and_the_session_survives() -> anyhow::Result<()> {
    let (_sshd, p, api, conn) = password_fixture().await?;
    let (_, mut victim) = open_term(&p, &api, &conn).await?;
    let (_, mut bystander) = open_term(&p, &api, &conn).await?;
    victim.connected().await?;
    bystander.connected().await?;
    let junk: Vec<Message> = vec![
        Message::Binary(vec![].into()),
        Message::Binary(vec![9, 0x81, 1].into()),
        Message::Binary(vec![1, 0x7f].into()),
        Message::Binary(vec![1, 0x82, 0, 1].into()),
        Message::Binary(vec![1, 0x82, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0].into()),
        Message::Text("hello".into()),
    ];
    let n = junk.len();
    for m in junk {
        victim.send_raw(m).await?;
    }
    victim
        .until("malformed errors", Duration::from_secs(10), |t| t.errors.len() >= n)
        .await?;
    assert!(
        victim
            .errors
            .iter()
            .all(|e| e.code == CloseCode::MalformedMessage && !e.fatal && e.message.starts_with("malformed message"))
    );
    // An oversized frame is refused by the WebSocket layer: that socket closes, the session waits for a reattach.
    victim.input("echo still-alive-$((5*5))\r").await?;
    victim
        .until("victim still works", Duration::from_secs(10), |t| {
            t.text().contains("still-alive-25")
        })
        .await?;
    bystander
        .send(ClientMsg::TermInput(b"echo bystander-$((6*6))\r".to_vec()))
        .await?;
    bystander
        .until("bystander works", Duration::from_secs(10), |t| {
            t.text().contains("bystander-36")
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_on_the_tls_port_does_not_hurt_the_server() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let addr = p.url.trim_start_matches("https://").to_owned();
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x16, 3, 1, 0xff, 0xff, 1, 2, 3][..],
        &[0u8; 4096][..],
    ] {
        let mut s = std::net::TcpStream::connect(&addr)?;
        let _ = s.write_all(junk);
    }
    let api = Api::new(&p)?;
    assert_eq!(api.request(Method::GET, "/api/__healthcheck", None).await?.0, 200);
    Ok(())
}
