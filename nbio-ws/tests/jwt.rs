//! JWT bearer tokens (the `jwt` feature), configured from the `WS_*`
//! variables: HS256 and RS256, `exp`, `nbf`, `aud`, `iss`, `sub` as the
//! identity, no algorithm confusion, and the close with 4001 at `exp`.
#![cfg(feature = "jwt")]

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use nbio_ws::{Client, Server};
use nbio_ws_testkit::{TestServer, WsClient};
use serde_json::{json, Value};

const SECRET: &str = "hs256-test-secret-0123456789abcdef";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hs(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn rs(claims: Value, key_file: &str) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{key_file}")).unwrap();
    encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

async fn server() -> TestServer {
    let public_key = format!("{FIXTURES}/jwt-test-rsa.pub");
    let cfg = nbio_ws::Config::from_lookup(|k| match k {
        "WS_AUTH_ENABLED" => Some("true".into()),
        "WS_BEARER_TOKENS" => Some("static-token".into()),
        "WS_JWT_SECRET" => Some(SECRET.into()),
        "WS_JWT_PUBLIC_KEY" => Some(public_key.clone()),
        "WS_JWT_AUDIENCE" => Some("chat, admin".into()),
        _ => None,
    })
    .unwrap();
    TestServer::start(
        Server::builder()
            .config(cfg)
            .registered_methods(false)
            .method("whoami", |c: Client| async move {
                Ok::<_, nbio_ws::RpcError>(c.identity().map(str::to_owned))
            }),
    )
    .await
}

async fn status(addr: std::net::SocketAddr, token: &str) -> u16 {
    let auth = format!("Authorization: Bearer {token}\r\n");
    nbio_ws_testkit::upgrade_request(addr, "/ws", &auth).await.0
}

async fn connect(s: &TestServer, token: &str) -> WsClient {
    // The subprotocol form: JWTs are made of token characters.
    let protocol = format!("bearer, {token}");
    WsClient::connect_with(&s.url("/ws"), &[("sec-websocket-protocol", &protocol)])
        .await
        .0
}

async fn whoami(c: &mut WsClient) -> Value {
    c.request("whoami", json!([])).await["result"].clone()
}

async fn identity(s: &TestServer, token: &str) -> Value {
    whoami(&mut connect(s, token).await).await
}

#[tokio::test]
async fn valid_tokens_give_their_subject_as_identity() {
    let s = server().await;
    let exp = now() + 600;
    assert_eq!(
        identity(&s, &hs(json!({"sub": "ada", "exp": exp, "aud": "chat"}))).await,
        "ada"
    );
    assert_eq!(
        identity(
            &s,
            &rs(
                json!({"sub": "grace", "exp": exp, "aud": ["x", "admin"], "nbf": now() - 10}),
                "jwt-test-rsa.key"
            )
        )
        .await,
        "grace"
    );
    // Static tokens still work beside JWTs.
    assert_eq!(status(s.addr, "static-token").await, 101);
}

#[tokio::test]
async fn invalid_tokens_are_refused_with_401() {
    let s = server().await;
    let exp = now() + 600;
    let cases = [
        (
            "expired",
            hs(json!({"sub": "a", "exp": now() - 3600, "aud": "chat"})),
        ),
        (
            "not yet valid",
            hs(json!({"sub": "a", "exp": exp, "nbf": now() + 3600, "aud": "chat"})),
        ),
        (
            "wrong audience",
            hs(json!({"sub": "a", "exp": exp, "aud": "other"})),
        ),
        ("no audience", hs(json!({"sub": "a", "exp": exp}))),
        ("no exp", hs(json!({"sub": "a", "aud": "chat"}))),
        ("no sub", hs(json!({"exp": exp, "aud": "chat"}))),
        (
            "untrusted RSA key",
            rs(
                json!({"sub": "a", "exp": exp, "aud": "chat"}),
                "jwt-other-rsa.key",
            ),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, token) in &cases {
        assert_eq!(status(s.addr, token).await, 401, "{what}");
    }
    // Algorithm confusion: an HS256 token whose "secret" is the public key.
    let public = std::fs::read(format!("{FIXTURES}/jwt-test-rsa.pub")).unwrap();
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "mallory", "exp": exp, "aud": "chat"}),
        &EncodingKey::from_secret(&public).unwrap(),
    )
    .unwrap();
    assert_eq!(status(s.addr, &forged).await, 401);
}

#[test]
fn an_unreadable_public_key_fails_the_build() {
    let cfg = nbio_ws::Config::from_lookup(|k| match k {
        "WS_AUTH_ENABLED" => Some("true".into()),
        "WS_JWT_PUBLIC_KEY" => Some("/nonexistent/key.pem".into()),
        _ => None,
    })
    .unwrap();
    let err = Server::builder().config(cfg).build().unwrap_err();
    assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
}

#[tokio::test]
async fn a_connection_is_closed_with_4001_when_its_token_expires() {
    let s = server().await;
    let exp = now() + 2;
    let mut short = connect(&s, &hs(json!({"sub": "brief", "exp": exp, "aud": "chat"}))).await;
    let mut long = connect(
        &s,
        &hs(json!({"sub": "ada", "exp": now() + 600, "aud": "chat"})),
    )
    .await;
    let mut fixed = connect(&s, "static-token").await;
    // And a server without authentication at all.
    let open = TestServer::start(
        Server::builder()
            .registered_methods(false)
            .method("whoami", |c: Client| async move {
                Ok::<_, nbio_ws::RpcError>(c.identity().map(str::to_owned))
            }),
    )
    .await;
    let mut anonymous = WsClient::connect(&open.url("/ws")).await;
    assert_eq!(whoami(&mut short).await, "brief");

    assert_eq!(
        short.expect_close_frame().await,
        (4001, "credentials expired".to_owned())
    );
    // At `exp` (the leeway is for the upgrade only), not before.
    assert!(now() >= exp, "closed at {} before exp {exp}", now());
    s.wait_connections(2).await;
    // The others are still open, and answer.
    assert_eq!(whoami(&mut long).await, "ada");
    assert_eq!(whoami(&mut fixed).await, "token-1");
    assert_eq!(whoami(&mut anonymous).await, Value::Null);
}

#[tokio::test]
async fn a_token_past_exp_within_the_leeway_is_admitted_then_closed_with_4001() {
    let s = server().await;
    let late = hs(json!({"sub": "late", "exp": now() - 30, "aud": "chat"}));
    assert_eq!(status(s.addr, &late).await, 101);
    let mut c = connect(&s, &late).await;
    assert_eq!(c.expect_close_frame().await.0, 4001);
}
