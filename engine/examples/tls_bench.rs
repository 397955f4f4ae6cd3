//! TLS costs, measured against the real binary on loopback:
//!
//! 1. **/ping throughput**: C keep-alive connections each sending /ping
//!    back to back for S seconds, plain and then over TLS (requests/s and
//!    latency).
//! 2. **Handshakes/s**: H client threads doing full handshakes (a fresh
//!    client, no session) for S seconds, then resumed ones (one client
//!    per thread, its session store warm), each followed by one /ping.
//! 3. **Latency during a handshake storm**: one probe connection (TLS,
//!    keep-alive) pings every 2 ms, alone and then while the full
//!    handshake storm of 2. runs; its p99 is what a chat connection on
//!    the same executors sees while new clients arrive.
//!
//! Client and server share this machine's cores, so a figure here is a
//! floor for the server alone.
//!
//! `cargo build --release --bin switchboard && cargo run --release -p
//! switchboard-engine --example tls_bench -- [ecdsa|rsa] [S]`
//! (`SWITCHBOARD_BIN` to point at another binary; S seconds per phase,
//! default 5).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const PING: &[u8] = b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn table(name: &str, h: &Histogram<u64>) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name:<34} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        h.len(),
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    );
}

fn header() {
    println!(
        "{:<34} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (µs)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
}

/// The test certificate: a CA and a server certificate for localhost.
fn make_cert(dir: &std::path::Path, rsa: bool) -> rustls::pki_types::CertificateDer<'static> {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = if rsa {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .stderr(Stdio::null())
            .output()
            .expect("openssl makes the RSA key");
        let pem = String::from_utf8(out.stdout).unwrap();
        KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap()
    } else {
        KeyPair::generate().unwrap()
    };
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem() + &ca_cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    ca_cert.der().clone()
}

/// Starts the binary; returns it and its plain and TLS addresses.
fn start(dir: &std::path::Path) -> (Child, SocketAddr, SocketAddr) {
    let bin = std::env::var("SWITCHBOARD_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/switchboard").into()
    });
    let mut child = Command::new(&bin)
        .env("SWITCHBOARD_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_ADMIN_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_TLS_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_TLS_CERT", dir.join("cert.pem"))
        .env("SWITCHBOARD_TLS_KEY", dir.join("key.pem"))
        .env("SWITCHBOARD_DATA_DIR", dir.join("data"))
        .env("SWITCHBOARD_SHARDS", "2")
        // Starts on a 1-CPU machine too (its shards then share the CPU).
        .env("SWITCHBOARD_SHARDS_OVERCOMMIT", "on")
        .env("SWITCHBOARD_RATE_LIMITS", "off")
        .env("SWITCHBOARD_CONNECTIONS_PER_ADDRESS_MAX", "100000")
        .env("SWITCHBOARD_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e} (cargo build --release --bin switchboard)"));
    let stdout = child.stdout.take().expect("piped stdout");
    match announced(stdout) {
        Some((plain, tls)) => (child, plain, tls),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not announce a plain and a TLS address");
        }
    }
}

/// The plain and TLS addresses from the server's announcement.
fn announced(stdout: std::process::ChildStdout) -> Option<(SocketAddr, SocketAddr)> {
    let mut tls = None;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(Ok(line)) = lines.next() {
        if let Some(a) = line.strip_prefix("switchboard tls listening on https://") {
            tls = a.parse().ok();
        } else if let Some(rest) = line.strip_prefix("switchboard listening on http://") {
            let plain = rest.split_whitespace().next()?.parse().ok()?;
            // Keep reading: the server still prints (the demo line).
            std::thread::spawn(move || lines.for_each(drop));
            return Some((plain, tls?));
        }
    }
    None
}

fn client(ca: &rustls::pki_types::CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut c =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

fn dial(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> Box<dyn Conn> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = ServerName::try_from("localhost").unwrap();
            let mut s = StreamOwned::new(ClientConnection::new(config.clone(), name).unwrap(), tcp);
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock).expect("handshake");
            }
            Box::new(s)
        }
    }
}

/// One /ping and its answer (`{"ok":true}`, 11 bytes of body).
fn ping(s: &mut dyn Conn, buf: &mut Vec<u8>) {
    s.write_all(PING).unwrap();
    s.flush().unwrap();
    buf.clear();
    let mut tmp = [0u8; 4096];
    loop {
        let n = s.read(&mut tmp).expect("read the answer");
        assert!(n > 0, "EOF");
        buf.extend_from_slice(&tmp[..n]);
        if buf.ends_with(b"{\"ok\":true}") {
            return;
        }
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

/// C connections pinging back to back for `secs`: requests/s and latency.
fn throughput(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
    conns: usize,
    secs: u64,
) -> (f64, Histogram<u64>) {
    let until = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let mut s = dial(addr, tls);
            std::thread::spawn(move || {
                let mut h = hist();
                let mut buf = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    ping(&mut *s, &mut buf);
                    h.record(t.elapsed().as_nanos() as u64).unwrap();
                }
                h
            })
        })
        .collect();
    let mut all = hist();
    for t in threads {
        all.add(t.join().unwrap()).unwrap();
    }
    (all.len() as f64 / secs as f64, all)
}

/// H threads handshaking (and pinging once) for `secs`; `resume` keeps
/// one client per thread so its session is resumed. Handshakes/s.
fn storm(
    addr: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    threads: usize,
    secs: u64,
    resume: bool,
    stop: Option<Arc<AtomicBool>>,
) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (ca, count, stop) = (ca.clone(), count.clone(), stop.clone());
            std::thread::spawn(move || {
                let shared = client(&ca);
                let mut buf = Vec::new();
                while Instant::now() < until
                    && !stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
                {
                    let config = if resume { shared.clone() } else { client(&ca) };
                    let mut s = dial(addr, Some(&config));
                    ping(&mut *s, &mut buf);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / secs as f64
}

/// A TLS probe pinging every 2 ms for `secs`.
fn probe(addr: SocketAddr, config: &Arc<ClientConfig>, secs: u64) -> Histogram<u64> {
    let mut s = dial(addr, Some(config));
    let mut h = hist();
    let mut buf = Vec::new();
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        let t = Instant::now();
        ping(&mut *s, &mut buf);
        h.record(t.elapsed().as_nanos() as u64).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    h
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rsa = matches!(args.next().as_deref(), Some("rsa"));
    let secs: u64 = args.next().map_or(5, |s| s.parse().expect("S is a number"));
    let dir = std::env::temp_dir().join(format!("switchboard-tls-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = make_cert(&dir, rsa);
    let (mut child, plain, tls) = start(&dir);
    let config = client(&ca);
    println!(
        "machine: {} cores (client and server share them); server: 2 shards; certificate: {}; {secs} s per phase",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if rsa { "RSA 2048" } else { "ECDSA P-256" }
    );
    header();
    let (plain_rps, h) = throughput(plain, None, 4, secs);
    table("/ping plain, 4 conns", &h);
    let (tls_rps, h) = throughput(tls, Some(&config), 4, secs);
    table("/ping TLS, 4 conns", &h);
    let h = probe(tls, &config, secs);
    table("probe /ping TLS, idle server", &h);
    let stop = Arc::new(AtomicBool::new(false));
    let storming = {
        let (ca, stop) = (ca.clone(), stop.clone());
        std::thread::spawn(move || storm(tls, &ca, 4, secs, false, Some(stop)))
    };
    std::thread::sleep(Duration::from_millis(200));
    let h = probe(tls, &config, secs - 1);
    stop.store(true, Ordering::Relaxed);
    let storm_rate = storming.join().unwrap();
    table("probe /ping TLS, handshake storm", &h);
    let full = storm(tls, &ca, 4, secs, false, None);
    let resumed = storm(tls, &ca, 4, secs, true, None);
    println!("/ping requests/s, 4 conns: plain {plain_rps:.0}, TLS {tls_rps:.0}");
    println!("handshakes/s (each + one /ping), 4 client threads: full {full:.0}, resumed {resumed:.0}; during the probe's storm {storm_rate:.0}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
