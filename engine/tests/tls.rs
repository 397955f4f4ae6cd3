//! TLS end to end against the real binary: a test CA and server
//! certificates made at test time (rcgen; the RSA key by `openssl
//! genpkey`, which ring cannot generate), a rustls client, chat over TLS
//! 1.2 and 1.3 with ECDSA and RSA certificates, certificate reload by
//! SIGHUP under a held poll, plain HTTP on the TLS port, required mode,
//! and a client stalled mid-handshake.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;

/// The server certificate's key kind.
#[derive(Clone, Copy, Debug)]
enum KeyKind {
    Ecdsa,
    Rsa,
}

/// A test CA.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    /// Its certificate, DER (the client's trust root).
    der: CertificateDer<'static>,
    /// Its certificate, PEM (the end of the server's chain).
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            params,
            key,
        }
    }

    /// Issues a certificate for localhost and 127.0.0.1 and writes the
    /// chain (server certificate, then the CA) and the key as PEM files
    /// `cert.pem` and `key.pem` in `dir` (replaced by rename, as a
    /// deploy tool would). Returns the server certificate's DER.
    fn issue(&self, kind: KeyKind, dir: &Path) -> CertificateDer<'static> {
        let key = match kind {
            KeyKind::Ecdsa => KeyPair::generate().unwrap(),
            KeyKind::Rsa => {
                let pem = dir.join("rsa-new.pem");
                let status = std::process::Command::new("openssl")
                    .args([
                        "genpkey",
                        "-algorithm",
                        "RSA",
                        "-pkeyopt",
                        "rsa_keygen_bits:2048",
                    ])
                    .arg("-out")
                    .arg(&pem)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .expect("openssl makes the RSA key (ring cannot)");
                assert!(status.success());
                let text = std::fs::read_to_string(&pem).unwrap();
                KeyPair::from_pem_and_sign_algo(&text, &rcgen::PKCS_RSA_SHA256).unwrap()
            }
        };
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "switchboard test");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        write_atomically(
            &dir.join("cert.pem"),
            &format!("{}{}", cert.pem(), self.pem),
        );
        write_atomically(&dir.join("key.pem"), &key.serialize_pem());
        cert.der().clone()
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A server with TLS on port 0 (2 shards unless `extra` says otherwise),
/// its certificate files in `dir`.
fn start_tls(dir: &Path, extra: &[(&str, &str)]) -> Server {
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let mut env = vec![
        ("SWITCHBOARD_TLS_LISTEN", "127.0.0.1:0"),
        ("SWITCHBOARD_TLS_CERT", cert.as_str()),
        ("SWITCHBOARD_TLS_KEY", key.as_str()),
        ("SWITCHBOARD_LOG", "info"),
    ];
    env.extend_from_slice(extra);
    Server::start(&dir.join("data"), &env)
}

/// A client configuration trusting `ca`, offering ALPN http/1.1, limited
/// to `version` (`None`: 1.3 and 1.2). Its session store lets a second
/// connection resume.
fn client(
    ca: &CertificateDer<'static>,
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = match version {
        Some(v) => vec![v],
        None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to `addr` as `localhost`, handshake done.
fn dial(addr: SocketAddr, config: &Arc<ClientConfig>) -> Tls {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("handshake");
    }
    tls
}

/// One answer: status, headers (lowercase names), body.
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends a keep-alive GET of `path?params` and reads its answer.
fn get<S: Read + Write>(s: &mut S, path: &str, params: &[(&str, &str)]) -> Reply {
    let target = format!("{path}?{}", encode(params));
    write!(s, "GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    s.flush().unwrap();
    read_reply(s)
}

fn read_reply<S: Read>(s: &mut S) -> Reply {
    let (status, headers, body) = read_message(s, &mut Vec::new());
    Reply {
        status,
        headers,
        body,
    }
}

/// `/connect` of `user` as `tab` on `s`: the sid.
fn connect<S: Read + Write>(s: &mut S, user: u64, tab: &str) -> String {
    connect_seq(s, user, tab).0
}

/// `/connect` of `user` as `tab` on `s`: the sid and the session's seq.
fn connect_seq<S: Read + Write>(s: &mut S, user: u64, tab: &str) -> (String, u64) {
    let v = get(s, "/connect", &[("token", &token(user)), ("tab", tab)]).json();
    assert_eq!(v["ok"], true, "connect {user}: {v}");
    (
        v["sid"].as_str().unwrap().to_string(),
        v["seq"].as_u64().unwrap(),
    )
}

/// Holds a poll of `sid` since `since` on its own TLS connection, in a
/// thread: the answer.
fn hold_poll(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    sid: &str,
    since: u64,
    wait_s: u64,
) -> std::thread::JoinHandle<Value> {
    let mut s = dial(addr, config);
    let sid = sid.to_string();
    std::thread::spawn(move || {
        let (wait, since) = (wait_s.to_string(), since.to_string());
        let r = get(
            &mut s,
            "/poll",
            &[("sid", &sid), ("since", &since), ("wait", &wait)],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    })
}

/// Message texts among a poll answer's events.
fn texts(poll: &Value) -> Vec<String> {
    poll["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn test_dir(name: &str) -> PathBuf {
    temp_dir(name)
}

#[test]
fn chat_over_tls_with_ecdsa_and_rsa_certificates_on_tls_1_2_and_1_3() {
    for kind in [KeyKind::Ecdsa, KeyKind::Rsa] {
        let dir = test_dir("tls-chat");
        let ca = Ca::new("test CA");
        ca.issue(kind, &dir);
        let server = start_tls(&dir, &[]);
        let addr = server.tls.expect("TLS listens");
        for (version, name) in [
            (&rustls::version::TLS13, "TLS 1.3"),
            (&rustls::version::TLS12, "TLS 1.2"),
        ] {
            let config = client(&ca.der, Some(version));
            let mut alice = dial(addr, &config);
            assert_eq!(
                alice.conn.alpn_protocol(),
                Some(&b"http/1.1"[..]),
                "{kind:?} {name}"
            );
            assert_eq!(
                alice.conn.protocol_version(),
                Some(version.version),
                "{kind:?} {name}"
            );
            let ping = get(&mut alice, "/ping", &[]);
            assert_eq!(ping.status, 200);
            assert!(
                !ping.headers.contains_key("strict-transport-security"),
                "optional mode: no HSTS"
            );

            let alice_sid = connect(&mut alice, ALICE, "a");
            let mut bob = dial(addr, &config);
            let (bob_sid, seq) = connect_seq(&mut bob, BOB, "b");
            let held = hold_poll(addr, &config, &bob_sid, seq, 10);
            std::thread::sleep(Duration::from_millis(200));
            let text = format!("over {name} with {kind:?}");
            let sent = get(
                &mut alice,
                "/send",
                &[("sid", &alice_sid), ("to", "2"), ("text", &text)],
            );
            assert_eq!(sent.json()["ok"], true, "{}", sent.body);
            let poll = held.join().unwrap();
            assert_eq!(texts(&poll), vec![text], "{poll}");

            // A second connection with the same client resumes.
            let again = dial(addr, &config);
            assert_eq!(
                again.conn.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "{kind:?} {name}: resumption"
            );
        }
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_sighup_reload_keeps_held_polls_and_new_handshakes_see_the_new_certificate() {
    let dir = test_dir("tls-reload");
    let old_ca = Ca::new("old CA");
    let old_der = old_ca.issue(KeyKind::Ecdsa, &dir);
    let server = start_tls(&dir, &[]);
    let addr = server.tls.unwrap();
    let old_client = client(&old_ca.der, None);
    let mut alice = dial(addr, &old_client);
    let alice_sid = connect(&mut alice, ALICE, "a");
    let mut bob = dial(addr, &old_client);
    let bob_sid = connect(&mut bob, BOB, "b");
    let held = hold_poll(addr, &old_client, &bob_sid, 0, 15);

    // A new certificate from another CA, then SIGHUP.
    let new_ca = Ca::new("new CA");
    let new_der = new_ca.issue(KeyKind::Rsa, &dir);
    server.signal("HUP");
    let new_client = client(&new_ca.der, None);
    let peer_cert = |config: &Arc<ClientConfig>| -> Option<CertificateDer<'static>> {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = StreamOwned::new(ClientConnection::new(config.clone(), name).unwrap(), tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).ok()?;
        }
        tls.conn.peer_certificates().map(|c| c[0].clone())
    };
    eventually(
        Duration::from_secs(10),
        "new handshakes see the new certificate",
        || peer_cert(&new_client).as_ref() == Some(&new_der),
    );
    // A fresh client (no session to resume) that trusts only the old CA
    // refuses the server now.
    let fresh_old = client(&old_ca.der, None);
    assert!(
        peer_cert(&fresh_old).is_none(),
        "the old CA no longer verifies the server"
    );
    assert_ne!(old_der, new_der);

    // The connections made before the reload still work, and the poll
    // held across it is answered with the message.
    let sent = get(
        &mut alice,
        "/send",
        &[("sid", &alice_sid), ("to", "2"), ("text", "after reload")],
    );
    assert_eq!(sent.json()["ok"], true, "{}", sent.body);
    assert_eq!(
        texts(&held.join().unwrap()),
        vec!["after reload".to_string()]
    );
    assert_eq!(get(&mut bob, "/ping", &[]).status, 200);

    // A bad file: logged, the certificate in use stays.
    std::fs::write(dir.join("cert.pem"), "not a certificate\n").unwrap();
    server.signal("HUP");
    eventually(Duration::from_secs(10), "the bad file is logged", || {
        !server.log_lines("not reloaded").is_empty()
    });
    assert_eq!(
        peer_cert(&new_client),
        Some(new_der),
        "the good certificate stays"
    );
    assert_eq!(get(&mut alice, "/ping", &[]).status, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plain_http_on_the_tls_port_is_answered_400_and_closed() {
    let dir = test_dir("tls-plain");
    Ca::new("test CA").issue(KeyKind::Ecdsa, &dir);
    let server = start_tls(&dir, &[]);
    let addr = server.tls.unwrap();
    let answer = request(addr, "GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(answer.status, 400);
    assert!(answer.body.contains("use https://"), "{}", answer.body);
    assert!(answer.closed, "closed after the 400");
    // A first byte that is neither TLS nor a letter: closed, no answer.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"\x00\x01\x02\x03").unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "closed quietly");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn required_mode_redirects_the_plain_port_and_tls_answers_carry_hsts() {
    let dir = test_dir("tls-required");
    let ca = Ca::new("test CA");
    ca.issue(KeyKind::Ecdsa, &dir);
    let server = start_tls(&dir, &[("SWITCHBOARD_TLS_MODE", "required")]);
    let tls_port = server.tls.unwrap().port();
    let plain = server.addr;
    let answer = request(
        plain,
        &format!(
            "GET /poll?sid=abc&since=3 HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            plain.port()
        ),
    );
    assert_eq!(answer.status, 308);
    assert_eq!(
        answer.headers["location"],
        format!("https://127.0.0.1:{tls_port}/poll?sid=abc&since=3")
    );
    // 308, not 301: a POST is repeated as a POST, with its body.
    let answer = request(
        plain,
        &format!(
            "POST /send HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=b",
            plain.port()
        ),
    );
    assert_eq!(answer.status, 308);
    assert_eq!(
        answer.headers["location"],
        format!("https://127.0.0.1:{tls_port}/send")
    );
    // A Host that is not a host is not echoed.
    let answer = request(plain, "GET / HTTP/1.1\r\nHost: evil.example/x\r\n\r\n");
    assert_eq!(answer.status, 400);

    let mut s = dial(server.tls.unwrap(), &client(&ca.der, None));
    for path in ["/ping", "/poll"] {
        let r = get(&mut s, path, &[]);
        assert_eq!(
            r.headers["strict-transport-security"], "max-age=31536000",
            "{path}"
        );
    }
    let sid = connect(&mut s, ALICE, "a");
    let r = get(
        &mut s,
        "/poll",
        &[("sid", &sid), ("since", "0"), ("wait", "0")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["strict-transport-security"], "max-age=31536000");

    // The client files are served over TLS too (engine/tests/client.rs
    // has the rest), with HSTS; a 304 keeps the connection going.
    let js = get(&mut s, "/client/switchboard.js", &[]);
    assert_eq!(js.status, 200);
    assert!(
        js.body.starts_with("/*! switchboard client "),
        "{}",
        js.body
    );
    assert_eq!(js.headers["strict-transport-security"], "max-age=31536000");
    assert_eq!(js.headers["cache-control"], "public, no-cache");
    let etag = &js.headers["etag"];
    write!(
        s,
        "GET /client/switchboard.js HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: {etag}\r\n\r\n"
    )
    .unwrap();
    s.flush().unwrap();
    let cached = read_reply(&mut s);
    assert_eq!((cached.status, cached.body.as_str()), (304, ""));
    assert_eq!(&cached.headers["etag"], etag);
    let dts = get(&mut s, "/client/switchboard.d.ts", &[]);
    assert_eq!(dts.status, 200);
    assert_eq!(dts.headers["content-type"], "text/plain; charset=utf-8");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_stalled_mid_handshake_is_dropped_at_the_deadline_while_others_are_served() {
    let dir = test_dir("tls-stall");
    let ca = Ca::new("test CA");
    ca.issue(KeyKind::Ecdsa, &dir);
    // One shard: the stalled handshake and the served client share it.
    let server = start_tls(&dir, &[("SWITCHBOARD_SHARDS", "1")]);
    let addr = server.tls.unwrap();
    let started = Instant::now();
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The start of a TLS record header, then nothing.
    stalled.write_all(&[0x16, 0x03, 0x01]).unwrap();

    let config = client(&ca.der, None);
    let mut served = dial(addr, &config);
    let sid = connect(&mut served, ALICE, "a");
    for _ in 0..20 {
        let r = get(
            &mut served,
            "/poll",
            &[("sid", &sid), ("since", "0"), ("wait", "0")],
        );
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut buf = [0u8; 16];
    let end = stalled.read(&mut buf);
    let took = started.elapsed();
    assert!(matches!(end, Ok(0) | Err(_)), "dropped: {end:?}");
    assert!(
        (Duration::from_millis(9_500)..Duration::from_secs(15)).contains(&took),
        "dropped at the 10 s handshake deadline, not {took:?}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS client that hangs up during a held poll (a close_notify, or TCP
/// closed under it) frees the poll at once, as on the plain listener: the
/// poll is counted abandoned, and the tab polls on.
#[test]
fn a_tls_client_hanging_up_during_a_held_poll_frees_the_poll_at_once() {
    let dir = test_dir("tls-hangup");
    let ca = Ca::new("test CA");
    ca.issue(KeyKind::Ecdsa, &dir);
    let server = start_tls(&dir, &[]);
    let addr = server.tls.expect("TLS listens");
    let config = client(&ca.der, None);
    let mut control = dial(addr, &config);
    let (sid, seq) = connect_seq(&mut control, ALICE, "a");
    for graceful in [true, false] {
        let mut s = dial(addr, &config);
        let target = format!(
            "/poll?{}",
            encode(&[("sid", &sid), ("since", &seq.to_string()), ("wait", "25")])
        );
        write!(s, "GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let before = server.metric("switchboard_polls_abandoned_total");
        let started = Instant::now();
        if graceful {
            s.conn.send_close_notify();
            s.conn.complete_io(&mut s.sock).unwrap();
        }
        drop(s);
        eventually(Duration::from_secs(5), "the poll counted abandoned", || {
            server.metric("switchboard_polls_abandoned_total") == before + 1
        });
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "graceful={graceful}: freed only after {:?}",
            started.elapsed()
        );
    }
    // The tab is still attached: it polls on.
    let r = get(
        &mut control,
        "/poll",
        &[("sid", &sid), ("since", &seq.to_string()), ("wait", "0")],
    );
    assert_eq!(r.json()["ok"], true, "{}", r.body);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
