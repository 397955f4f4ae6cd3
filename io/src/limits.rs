//! Limits of the HTTP layer: every buffer, header count, parameter size and
//! deadline `io` enforces, by name, unit last. Each says what happens when it
//! is hit. The protocol fixes the HTTP-level sizes (docs/protocol.md, "Limits
//! and deadlines") and the parameter sizes (its client calls); the deadlines
//! are ours. The runtime-tunable ones are bundled in [`Limits`], whose
//! `Default` is the values below; the rest are protocol constants. Relations
//! between limits are checked by `const` asserts at the bottom, so a bad edit
//! fails the build.

/// A request line (method, target, version, without its CRLF) of up to this
/// many bytes is accepted. One byte more gets `414` and a graceful close,
/// detected as soon as that many bytes arrived without a line end (64 KiB:
/// a 4000-character text fits percent-encoded).
pub const REQUEST_LINE_BYTES_MAX: usize = 64 * 1024;

/// The header section (every header line with its CRLF, not the request
/// line and not the final empty line) may take up to this many bytes. One
/// byte more gets `431` and a graceful close.
pub const HEADER_SECTION_BYTES_MAX: usize = 16 * 1024;

/// At most this many header fields. One more gets `431` and a graceful
/// close. Also the size of the `httparse` header array on the stack, so it
/// is a constant and not in [`Limits`].
pub const HEADERS_COUNT_MAX: usize = 100;

/// A body (after de-chunking) of up to this many bytes is accepted. A larger
/// declared `Content-Length` gets `413` before any body byte is read; a
/// chunked body gets `413` as soon as a chunk would take it over.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// The whole request head must arrive within this long of its first byte
/// (slowloris). When it passes: `408` and a graceful close.
pub const HEAD_TIMEOUT_MS: u64 = 10_000;

/// The whole body must arrive within this long of the end of the head
/// (slow uploads). When it passes: `408` and a graceful close.
pub const BODY_TIMEOUT_MS: u64 = 30_000;

/// A new connection must send the first byte of its first request within
/// this long of being accepted. When it passes the connection is closed
/// quietly ([`crate::CloseReason::FirstByteTimeout`]): nothing was asked,
/// so there is nobody to answer. Much shorter than the idle timeout, so a
/// client that opens sockets and never speaks holds each for seconds, not
/// a minute (a browser sends its request right after the handshake).
pub const FIRST_BYTE_TIMEOUT_MS: u64 = 5_000;

/// A keep-alive connection may wait this long for the first byte of its
/// next request, after it was answered at least once (the first request
/// has [`FIRST_BYTE_TIMEOUT_MS`]). When it passes the connection is
/// closed quietly: no request is pending, so there is nobody to answer.
pub const IDLE_TIMEOUT_MS: u64 = 75_000;

/// After the last answer on a connection, the write side is shut down and
/// what the client still sends is read and discarded for at most this long,
/// so the client reads the whole answer and then end-of-stream instead of a
/// TCP reset. When it passes the connection is dropped.
pub const LINGER_TIMEOUT_MS: u64 = 5_000;

/// Lingering close reads and discards at most this many bytes; then the
/// connection is dropped (a client still uploading gets a reset, as it
/// deserves after its answer).
pub const LINGER_BYTES_MAX: usize = 256 * 1024;

/// One answer (or a `100 Continue`) must be written within this long. When
/// it passes the connection is dropped without lingering: the client is not
/// reading.
pub const WRITE_TIMEOUT_MS: u64 = 30_000;

/// A TLS handshake must complete within this long of the accept (the
/// first byte within the first-byte timeout, as on the plain port). When it
/// passes the connection is dropped without an answer: there is no channel
/// to answer on yet. Then the limits above apply to the requests.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// The certificate and key files are read up to this many bytes; a larger
/// one is refused (at start: the server does not start; at a reload: the
/// old certificate stays). A full chain of four RSA-4096 certificates is
/// about 8 KiB.
pub const TLS_PEM_FILE_BYTES_MAX: usize = 1024 * 1024;

/// TLS 1.2 sessions kept for session-id resumption (clients without
/// tickets), shared by every shard; past it the oldest are forgotten and
/// those clients do a full handshake. An entry is a few hundred bytes.
/// Clients with tickets (every browser, TLS 1.3) need no entry: the
/// ticket carries the session, encrypted under a key the server rotates
/// every 6 hours.
pub const TLS_SESSION_CACHE_ENTRIES_MAX: usize = 16 * 1024;

/// TLS 1.3 tickets sent after each full handshake (each can resume one
/// connection: a browser opens a few per origin).
pub const TLS_TICKETS_PER_HANDSHAKE: usize = 2;

/// A chunk-size line (hex size, extensions, CRLF) of a chunked body may take
/// at most this many bytes; a longer one gets `400` and a graceful close.
pub const CHUNK_SIZE_LINE_BYTES_MAX: usize = 1024;

/// Bytes asked of the stream per read: the size of each thread's read
/// scratch buffer (`buffers.rs`), which every read goes into. Only the
/// bytes a connection must keep (a request not yet complete, pipelined
/// requests behind it) are copied into a buffer of its own, so its buffer
/// grows by at most this much per read.
pub const READ_CHUNK_BYTES: usize = 8 * 1024;

/// A buffer a connection gives back (its read buffer once the request is
/// consumed, its body buffer, its answer once written) goes back to its
/// thread's pool for the next connection if its capacity is at most this;
/// a larger one (after a big request or answer) is freed. A connection
/// holds no buffer between requests nor while its call is held (a
/// long-poll), so an idle connection costs no buffer memory at all.
pub const BUFFER_RETAIN_BYTES: usize = 16 * 1024;

/// Buffers each thread's pool keeps at most; one more given back is
/// freed. With [`BUFFER_RETAIN_BYTES`], a shard's pool never holds more
/// than 1 MiB, and usually a few KiB: as many buffers as its connections
/// ever used at once, each the size of a usual request or answer.
pub const POOL_BUFFERS_MAX: usize = 64;

/// A JSONP `callback` name of up to this many bytes is accepted; a longer
/// one gets a plain `400` (never echoed).
pub const CALLBACK_BYTES_MAX: usize = 64;

/// `/send` `text` of up to this many code points is accepted; more is
/// `too_large` (413).
pub const TEXT_CHARS_MAX: usize = 4000;

/// `/ui` `state` of up to this many bytes (UTF-8 of the decoded value) is
/// accepted; more is `too_large` (413).
pub const UI_STATE_BYTES_MAX: usize = 4096;

/// `/send` `cid` of up to this many code points is accepted; more (or an
/// empty one) is `bad_request`.
pub const CID_CHARS_MAX: usize = 64;

/// `/connect` `tab` of up to this many characters of `[A-Za-z0-9_-]` is
/// accepted; more (or an empty one) is `bad_request`.
pub const TAB_CHARS_MAX: usize = 64;

/// `/poll` `wait` of up to this many seconds is accepted; more is
/// `bad_request`.
pub const WAIT_S_MAX: u64 = 60;

/// `/poll` `wait` when the client gives none.
pub const WAIT_S_DEFAULT: u64 = 25;

/// `/history` `limit` of 1 up to this many messages is accepted; 0 or more
/// is `bad_request`.
pub const HISTORY_LIMIT_MAX: u32 = 100;

/// `/history` `limit` when the client gives none.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;

/// The limits a connection runs with. `Default` gives the constants above;
/// tests and the engine's settings may change them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// See [`REQUEST_LINE_BYTES_MAX`]: longer gets `414`.
    pub request_line_bytes_max: usize,
    /// See [`HEADER_SECTION_BYTES_MAX`]: larger gets `431`.
    pub header_section_bytes_max: usize,
    /// See [`BODY_BYTES_MAX`]: larger gets `413`.
    pub body_bytes_max: usize,
    /// See [`HEAD_TIMEOUT_MS`]: `408` and close.
    pub head_timeout_ms: u64,
    /// See [`BODY_TIMEOUT_MS`]: `408` and close.
    pub body_timeout_ms: u64,
    /// See [`FIRST_BYTE_TIMEOUT_MS`]: quiet close.
    pub first_byte_timeout_ms: u64,
    /// See [`IDLE_TIMEOUT_MS`]: quiet close.
    pub idle_timeout_ms: u64,
    /// See [`LINGER_TIMEOUT_MS`]: drop after lingering this long.
    pub linger_timeout_ms: u64,
    /// See [`LINGER_BYTES_MAX`]: drop after discarding this much.
    pub linger_bytes_max: usize,
    /// See [`WRITE_TIMEOUT_MS`]: drop without lingering.
    pub write_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            request_line_bytes_max: REQUEST_LINE_BYTES_MAX,
            header_section_bytes_max: HEADER_SECTION_BYTES_MAX,
            body_bytes_max: BODY_BYTES_MAX,
            head_timeout_ms: HEAD_TIMEOUT_MS,
            body_timeout_ms: BODY_TIMEOUT_MS,
            first_byte_timeout_ms: FIRST_BYTE_TIMEOUT_MS,
            idle_timeout_ms: IDLE_TIMEOUT_MS,
            linger_timeout_ms: LINGER_TIMEOUT_MS,
            linger_bytes_max: LINGER_BYTES_MAX,
            write_timeout_ms: WRITE_TIMEOUT_MS,
        }
    }
}

impl Limits {
    /// The most bytes the read buffer ever holds: a whole head at its
    /// limits (an ignored leading empty line, the request line, the header
    /// section, three CRLFs) plus one read. The head parser answers before
    /// a head can outgrow it, and a body is drained as it is decoded.
    pub fn read_buffer_bytes_max(&self) -> usize {
        2 + self.request_line_bytes_max + 2 + self.header_section_bytes_max + 2 + READ_CHUNK_BYTES
    }
}

// The protocol's numbers, so an edit that breaks the contract fails here.
const _: () = assert!(REQUEST_LINE_BYTES_MAX == 65_536);
const _: () = assert!(HEADER_SECTION_BYTES_MAX == 16_384);
const _: () = assert!(HEADERS_COUNT_MAX == 100);
const _: () = assert!(BODY_BYTES_MAX == 65_536);
// A 4000-character text percent-encoded (at most 4 UTF-8 bytes per code
// point, 3 characters per byte), with room for the other parameters, fits
// both a GET request line and a POST body.
const _: () = assert!(TEXT_CHARS_MAX * 4 * 3 + 1024 <= REQUEST_LINE_BYTES_MAX);
const _: () = assert!(TEXT_CHARS_MAX * 4 * 3 + 1024 <= BODY_BYTES_MAX);
// So does a UI state at its limit.
const _: () = assert!(UI_STATE_BYTES_MAX * 3 + 1024 <= REQUEST_LINE_BYTES_MAX);
const _: () = assert!(WAIT_S_DEFAULT <= WAIT_S_MAX);
const _: () = assert!(HISTORY_LIMIT_DEFAULT >= 1 && HISTORY_LIMIT_DEFAULT <= HISTORY_LIMIT_MAX);
// A long-poll's longest wait must not be cut by the idle timeout of the
// connection that carries the next one, nor by the write timeout.
const _: () = assert!(WAIT_S_MAX * 1000 < IDLE_TIMEOUT_MS);
// A connection that has not spoken yet gets less time than one that has
// been answered.
const _: () = assert!(FIRST_BYTE_TIMEOUT_MS <= IDLE_TIMEOUT_MS);
// Slow clients get less time for a head than a body.
const _: () = assert!(HEAD_TIMEOUT_MS <= BODY_TIMEOUT_MS);
// Lingering must be able to swallow a whole rejected request of the largest
// size we answer before reading it (a declared 64 KiB+ body, a full head).
const _: () = assert!(LINGER_BYTES_MAX >= BODY_BYTES_MAX + REQUEST_LINE_BYTES_MAX);
const _: () = assert!(CHUNK_SIZE_LINE_BYTES_MAX < READ_CHUNK_BYTES);
// A client gets at least as long to finish its handshake as to send its
// first byte.
const _: () = assert!(FIRST_BYTE_TIMEOUT_MS <= TLS_HANDSHAKE_TIMEOUT_MS);
const _: () = assert!(BUFFER_RETAIN_BYTES >= READ_CHUNK_BYTES);
// A shard's pool stays within the 1 MiB its doc promises.
const _: () = assert!(POOL_BUFFERS_MAX * BUFFER_RETAIN_BYTES <= 1024 * 1024);
