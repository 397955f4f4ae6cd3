//! TLS on the client listener: rustls with the ring provider, TLS 1.2 and
//! 1.3, ALPN `http/1.1`, session resumption (stateless tickets, and a
//! bounded session-id cache for TLS 1.2 clients without tickets), the
//! certificate reloadable while the server runs.
//!
//! [`Tls`] is the server's TLS state, shared by every shard (rustls's
//! `ServerConfig` is `Send + Sync`): the PEM files' paths, the current
//! certificate chain and key behind a lock that only handshakes take
//! (a read lock held to clone one `Arc`), the ticketer and the session
//! cache. [`Tls::reload`] re-reads both files, checks that the key is
//! one rustls can sign with and matches the chain's first certificate,
//! and only then swaps it in: handshakes from then on use the new chain,
//! connections already up keep the keys they agreed on, and a bad file
//! leaves the old certificate in place (the error is returned for the
//! caller to log).
//!
//! [`accept`] runs one handshake on a connection's own task and returns a
//! [`TlsStream`], the `AsyncRead + AsyncWrite` that [`crate::serve`] then
//! runs over, so the connection loop does not know it is TLS. Its waits
//! are bounded like the loop's: the first byte within
//! `first_byte_timeout_ms`, the whole handshake within
//! [`TLS_HANDSHAKE_TIMEOUT_MS`] of the accept. A first byte that cannot
//! start a TLS record is not handshaken: an ASCII letter (a plain HTTP
//! request sent to the TLS port) gets a plain `400` saying to use
//! `https://` and a graceful close, anything else a quiet close. Between
//! handshake steps the task yields if its executor's time slice is used
//! up ([`crate::Handler::yield_if_needed`]), so a storm of handshakes
//! takes turns with the executor's other connections rather than running
//! back to back; one step's signature (an RSA-2048 sign is about 1 ms,
//! ECDSA P-256 a tenth of that) is the most one handshake runs at once.
//!
//! The adapter is ours rather than `futures-rustls`: it is the same small
//! loop (`read_tls`, `process_new_packets`, `write_tls` over the poll
//! functions), and owning it lets the handshake sniff the first byte,
//! yield between steps and run under our deadlines.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::{pin, Pin};
use std::sync::{Arc, RwLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_lite::future::poll_fn;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::deadline::{within, TimedOut};
use crate::head::HttpError;
use crate::limits::{
    Limits, TLS_HANDSHAKE_TIMEOUT_MS, TLS_PEM_FILE_BYTES_MAX, TLS_SESSION_CACHE_ENTRIES_MAX,
    TLS_TICKETS_PER_HANDSHAKE,
};
use crate::response::{Encoder, Persist};
use crate::{Handler, Listener};

/// The one ALPN protocol offered: a client that offers ALPN without it is
/// refused (`no_application_protocol`, RFC 7301).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why the certificate files could not be used.
#[derive(Debug)]
pub enum TlsError {
    /// A file could not be read.
    Read { path: PathBuf, source: io::Error },
    /// A file is larger than [`TLS_PEM_FILE_BYTES_MAX`].
    TooLarge { path: PathBuf },
    /// The certificate file holds no PEM certificate.
    NoCertificate { path: PathBuf },
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    NoKey { path: PathBuf },
    /// The PEM text is malformed.
    Pem { path: PathBuf, message: String },
    /// rustls refused the key (an unsupported kind), or it does not match
    /// the first certificate of the chain.
    Key { message: String },
    /// rustls refused the configuration (no ticketer, no versions).
    Config { message: String },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            TlsError::TooLarge { path } => write!(
                f,
                "{} is larger than {TLS_PEM_FILE_BYTES_MAX} bytes",
                path.display()
            ),
            TlsError::NoCertificate { path } => {
                write!(f, "{} holds no PEM certificate", path.display())
            }
            TlsError::NoKey { path } => write!(
                f,
                "{} holds no PEM private key (PKCS#8, RSA or EC)",
                path.display()
            ),
            TlsError::Pem { path, message } => write!(f, "{}: {message}", path.display()),
            TlsError::Key { message } => write!(f, "the private key cannot be used: {message}"),
            TlsError::Config { message } => write!(f, "TLS configuration refused: {message}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// What a loaded certificate file held, for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// Certificates in the chain (the server's first).
    pub chain_len: usize,
}

/// The server's TLS state, shared by every shard.
pub struct Tls {
    /// The certificate resolver every handshake asks (holds the paths and
    /// the current chain).
    certs: Arc<Certs>,
    /// What each new `ServerConnection` is built from.
    config: Arc<ServerConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.certs.cert_path)
            .field("key", &self.certs.key_path)
            .finish()
    }
}

/// The current certificate and where it came from.
struct Certs {
    /// The PEM certificate chain (server certificate first).
    cert_path: PathBuf,
    /// The PEM private key.
    key_path: PathBuf,
    /// The provider keys are loaded with (ring).
    provider: Arc<CryptoProvider>,
    /// The chain and key new handshakes use; swapped whole by a reload.
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs")
            .field("cert", &self.cert_path)
            .finish()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock means a reload panicked mid-swap, which cannot
        // leave a half-written `Arc`: the value is still whole.
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        Some(current.clone())
    }
}

impl Tls {
    /// Loads the certificate chain and key from PEM files and builds the
    /// server configuration: TLS 1.3 and 1.2, no client certificates, ALPN
    /// `http/1.1`, tickets and a session cache of
    /// [`TLS_SESSION_CACHE_ENTRIES_MAX`], no early data.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<(Tls, Loaded), TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_key(&provider, cert_path, key_path)?;
        let loaded = Loaded {
            chain_len: key.cert.len(),
        };
        let certs = Arc::new(Certs {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider: provider.clone(),
            current: RwLock::new(Arc::new(key)),
        });
        let config_error = |e: rustls::Error| TlsError::Config {
            message: e.to_string(),
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(config_error)?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        config.session_storage = ServerSessionMemoryCache::new(TLS_SESSION_CACHE_ENTRIES_MAX);
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(config_error)?;
        config.send_tls13_tickets = TLS_TICKETS_PER_HANDSHAKE;
        config.max_early_data_size = 0;
        config.ignore_client_order = false;
        let tls = Tls {
            certs,
            config: Arc::new(config),
        };
        Ok((tls, loaded))
    }

    /// Re-reads both files and, if they are good, makes them the
    /// certificate of every handshake from now on. On an error the old
    /// certificate stays. Blocking file reads: call it off the executors
    /// (the binary's `signals` thread does).
    pub fn reload(&self) -> Result<Loaded, TlsError> {
        let certs = &self.certs;
        let key = load_key(&certs.provider, &certs.cert_path, &certs.key_path)?;
        let loaded = Loaded {
            chain_len: key.cert.len(),
        };
        let key = Arc::new(key);
        *certs.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(loaded)
    }

    /// The certificate file's path.
    pub fn cert_path(&self) -> &Path {
        &self.certs.cert_path
    }

    /// The key file's path.
    pub fn key_path(&self) -> &Path {
        &self.certs.key_path
    }
}

/// Reads a PEM file of at most [`TLS_PEM_FILE_BYTES_MAX`].
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(TLS_PEM_FILE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() > TLS_PEM_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// The chain and key from the two files, checked: the key loads (RSA,
/// ECDSA P-256/P-384 or Ed25519) and matches the chain's first
/// certificate.
fn load_key(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let pem_error = |path: &Path, e: rustls_pki_types::pem::Error| TlsError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let cert_pem = read_pem(cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key_pem = read_pem(key_path)?;
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: key_path.to_path_buf(),
            })
        }
        Err(e) => return Err(pem_error(key_path, e)),
    };
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            message: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    // Unlike `CertifiedKey::from_der`, an unknown consistency is refused
    // too: every key ring loads can say its public key.
    certified.keys_match().map_err(|e| TlsError::Key {
        message: e.to_string(),
    })?;
    Ok(certified)
}

/// Why a handshake did not complete. Nothing was served on such a
/// connection; the caller counts and drops it.
#[derive(Debug)]
pub enum Refused {
    /// No byte within the first-byte timeout (quiet close).
    FirstByteTimeout,
    /// The handshake did not complete within [`TLS_HANDSHAKE_TIMEOUT_MS`].
    HandshakeTimeout,
    /// The client closed before the handshake completed.
    PeerClosed,
    /// The first byte was an ASCII letter: plain HTTP on the TLS port.
    /// Answered `400` and closed gracefully.
    PlainHttp,
    /// The first byte cannot start a TLS handshake record (quiet close).
    NotTls,
    /// rustls refused the handshake (an alert was sent when possible).
    Tls(rustls::Error),
    /// Reading or writing the socket failed.
    Io(io::ErrorKind),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::FirstByteTimeout => write!(f, "no byte within the first-byte timeout"),
            Refused::HandshakeTimeout => {
                write!(f, "handshake not done within {TLS_HANDSHAKE_TIMEOUT_MS} ms")
            }
            Refused::PeerClosed => write!(f, "closed by the client mid-handshake"),
            Refused::PlainHttp => write!(f, "plain HTTP on the TLS port (answered 400)"),
            Refused::NotTls => write!(f, "not a TLS handshake"),
            Refused::Tls(e) => write!(f, "TLS error: {e}"),
            Refused::Io(kind) => write!(f, "socket error: {kind}"),
        }
    }
}

/// The TLS record type of a handshake message: every TLS client's first
/// byte.
const RECORD_HANDSHAKE: u8 = 0x16;

/// Runs the server side of a handshake on `io` (see the module doc for
/// its deadlines and what a non-TLS first byte gets). `limits` gives the
/// first-byte timeout and the write timeout of a `400`.
pub async fn accept<S, H>(
    mut io: S,
    tls: &Tls,
    handler: &H,
    limits: &Limits,
) -> Result<TlsStream<S>, Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let handshake_deadline = handler.sleep(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS));
    let mut handshake_deadline = pin!(handshake_deadline);
    // The first byte, alone: it decides whether this is TLS at all.
    let mut first = [0u8; 1];
    let first_byte = handler.sleep(Duration::from_millis(limits.first_byte_timeout_ms));
    match within(first_byte, io.read(&mut first)).await {
        Err(TimedOut) => return Err(Refused::FirstByteTimeout),
        Ok(Ok(0)) => return Err(Refused::PeerClosed),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(Refused::Io(e.kind())),
    }
    if first[0] != RECORD_HANDSHAKE {
        if first[0].is_ascii_alphabetic() {
            refuse_plain_http(io, handler, limits).await;
            return Err(Refused::PlainHttp);
        }
        return Err(Refused::NotTls);
    }
    let mut conn = ServerConnection::new(tls.config.clone()).map_err(Refused::Tls)?;
    conn.read_tls(&mut &first[..])
        .map_err(|e| Refused::Io(e.kind()))?;
    let mut stream = TlsStream {
        io,
        conn,
        eof: false,
    };
    let handshake = stream.handshake(handler);
    match within(handshake_deadline.as_mut(), handshake).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(refused)) => Err(refused),
        Err(TimedOut) => Err(Refused::HandshakeTimeout),
    }
}

/// Answers a plain HTTP request on the TLS port with `400` (JSON, as every
/// HTTP-level failure) and closes gracefully: shut down our side, then
/// read and discard for at most the linger bounds, so the client reads the
/// answer rather than a reset.
async fn refuse_plain_http<S, H>(mut io: S, handler: &H, limits: &Limits)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let error = HttpError::bad_request("plain HTTP sent to the TLS port: use https://");
    let mut out = Vec::new();
    let persist = Persist {
        keep_alive: false,
        http10: false,
    };
    let date = crate::conn::now_date();
    Encoder::new(Listener::Client).http_error(&mut out, &error, persist, false, &date);
    let write = async {
        io.write_all(&out).await?;
        io.close().await
    };
    let timer = handler.sleep(Duration::from_millis(limits.write_timeout_ms));
    if !matches!(within(timer, write).await, Ok(Ok(()))) {
        return;
    }
    let mut timer = pin!(handler.sleep(Duration::from_millis(limits.linger_timeout_ms)));
    let mut buf = [0u8; 4096];
    let mut discarded = 0usize;
    while discarded < limits.linger_bytes_max {
        match within(timer.as_mut(), io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => break,
        }
    }
}

/// A server-side TLS stream over `S`, once the handshake is done.
/// `close` sends `close_notify`, flushes, and half-closes `S`.
pub struct TlsStream<S> {
    /// The transport (a TCP stream).
    io: S,
    /// rustls's state: records in, plaintext out and back.
    conn: ServerConnection,
    /// The transport reached end of stream (what rustls had is still
    /// readable).
    eof: bool,
}

impl<S> fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("version", &self.conn.protocol_version())
            .field("eof", &self.eof)
            .finish()
    }
}

/// `std::io::Read`/`Write` over a poll function: `Pending` becomes
/// `WouldBlock`, with the waker registered, as rustls's `read_tls` and
/// `write_tls` want.
struct SyncIo<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for SyncIo<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for SyncIo<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// A `WouldBlock` from the adapters as `Pending`.
fn pending_on_block<T>(r: io::Result<T>) -> Poll<io::Result<T>> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        r => Poll::Ready(r),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Which TLS version was agreed (once the handshake is done).
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The handshake's steps: flush what rustls wants sent, read one
    /// batch of records, process them, yield if the time slice is used
    /// up; until rustls says the handshake is done and its last messages
    /// (TLS 1.3 tickets) are written.
    async fn handshake<H: Handler>(&mut self, handler: &H) -> Result<(), Refused> {
        // The first byte alone is never a whole record.
        loop {
            self.flush_tls().await.map_err(|e| Refused::Io(e.kind()))?;
            if !self.conn.is_handshaking() {
                return Ok(());
            }
            let n = poll_fn(|cx| self.poll_read_tls(cx))
                .await
                .map_err(|e| Refused::Io(e.kind()))?;
            if n == 0 {
                return Err(Refused::PeerClosed);
            }
            if let Err(e) = self.conn.process_new_packets() {
                // The alert rustls queued, best effort.
                let _ = self.flush_tls().await;
                return Err(Refused::Tls(e));
            }
            handler.yield_if_needed().await;
        }
    }

    /// Writes every TLS record rustls has queued.
    async fn flush_tls(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush_tls(cx)).await
    }

    /// Reads one batch of records from the transport into rustls
    /// (`Ok(0)`: end of stream).
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut sync = SyncIo {
            io: &mut self.io,
            cx,
        };
        let n = ready!(pending_on_block(self.conn.read_tls(&mut sync)))?;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n))
    }

    /// Writes queued records until none is left (`Ready(Ok)`), the
    /// transport blocks (`Pending`) or fails.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut sync = SyncIo {
                io: &mut self.io,
                cx: &mut *cx,
            };
            let n = ready!(pending_on_block(self.conn.write_tls(&mut sync)))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The client closed TCP without `close_notify`. Nothing
                // we wrote is at risk (our answers are complete HTTP
                // messages), so it reads as an end of stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.eof {
                return Poll::Ready(Ok(0));
            }
            // Records rustls wants sent (alerts, key updates) go first,
            // if the transport takes them now.
            if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
            ready!(this.poll_read_tls(cx))?;
            if let Err(e) = this.conn.process_new_packets() {
                let _ = this.poll_flush_tls(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // rustls buffers plaintext up to its buffer limit (64 KiB by
        // default); past that it takes nothing until records are written.
        let mut taken = 0;
        loop {
            taken += this.conn.writer().write(&buf[taken..])?;
            match this.poll_flush_tls(cx) {
                Poll::Ready(Ok(())) if taken < buf.len() => continue,
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(taken)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if taken == 0 => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Ok(taken)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Idempotent in rustls: a second call queues nothing.
        this.conn.send_close_notify();
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_clear_errors() {
        let missing = Path::new("/nonexistent/cert.pem");
        let e = Tls::load(missing, missing).unwrap_err();
        assert!(
            e.to_string().contains("cannot read /nonexistent/cert.pem"),
            "{e}"
        );
    }
}
