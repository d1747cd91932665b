//! TLS (the `tls` feature): a certificate generated here (rcgen), a real
//! TLS WebSocket client (tokio-rustls + tokio-tungstenite's handshake),
//! `/health` over HTTPS, and clear startup errors.
#![cfg(feature = "tls")]

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use nbio_ws::{Client, Server};
use nbio_ws_testkit::TestServer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("nbio-ws-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost`, written as PEM files.
fn certificate(dir: &TempDir) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.0.join("cert.pem");
    let key_path = dir.0.join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.der().clone())
}

fn connector(cert: CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn wss_with_a_generated_certificate() {
    let dir = TempDir::new("ok");
    let (cert_path, key_path, der) = certificate(&dir);
    // Configured the way the example server is: from the WS_TLS_* variables.
    let cfg = nbio_ws::Config::from_lookup(|k| match k {
        "WS_TLS_ENABLED" => Some("true".into()),
        "WS_TLS_CERT" => Some(cert_path.display().to_string()),
        "WS_TLS_KEY" => Some(key_path.display().to_string()),
        _ => None,
    })
    .unwrap();
    let s = TestServer::start(
        Server::builder()
            .config(cfg)
            .registered_methods(false)
            .method("hello", |c: Client| async move {
                Ok::<_, nbio_ws::RpcError>(format!("hello {}", c.id()))
            }),
    )
    .await;
    let tls = connector(der);

    // A WebSocket over TLS.
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let stream = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", s.addr.port()), stream)
            .await
            .expect("WebSocket handshake over TLS");
    let mut ws = ws;
    ws.send(Message::text(
        json!({"jsonrpc": "2.0", "method": "hello", "id": 1}).to_string(),
    ))
    .await
    .unwrap();
    let reply = loop {
        match tokio::time::timeout(nbio_ws_testkit::TIMEOUT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Text(t) => break t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    let r: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert!(r["result"].as_str().unwrap().starts_with("hello "), "{r}");

    // Plain HTTP endpoints over TLS too.
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let mut https = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    https
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(nbio_ws_testkit::TIMEOUT, https.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // A plain-text client gets no WebSocket.
    let mut plain = TcpStream::connect(s.addr).await.unwrap();
    plain
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(nbio_ws_testkit::TIMEOUT, plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("101"));
    assert_eq!(s.hub.len(), 1);
}

#[test]
fn unusable_certificates_stop_startup() {
    let dir = TempDir::new("bad");
    let (cert, key, _) = certificate(&dir);
    let missing = dir.0.join("missing.pem");
    let err = Server::builder()
        .tls_pem_files(&missing, &key)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    // The key in place of the certificate, and the reverse.
    assert!(Server::builder().tls_pem_files(&key, &key).build().is_err());
    assert!(Server::builder()
        .tls_pem_files(&cert, &cert)
        .build()
        .is_err());
    // Enabled without files: the variable is named.
    let e = nbio_ws::Config::from_lookup(|k| (k == "WS_TLS_ENABLED").then(|| "true".into()))
        .unwrap_err();
    assert!(e.to_string().contains("WS_TLS_CERT"), "{e}");
}
