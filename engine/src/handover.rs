//! Deploys that drop nobody: `switchboard serve --takeover` hands the
//! listening sockets and the live state from the running process (the
//! *old* one) to a new one, as Erlang's hot code loading kept chat up
//! through deploys.
//!
//! **The control socket.** Every serving process listens on
//! `DATA_DIR/switchboard.takeover.sock` (a Unix socket, mode 0600 in the
//! private data folder; a connection from another user is refused by its
//! peer credentials). The words on it are frames: a 4-byte big-endian
//! length, then a JSON object whose `word` names it (see [`Word`]).
//!
//! **The hand-over**, in order:
//! 1. The new process connects and says `hello`: the state formats it
//!    reads, its shard count, its pid and version.
//! 2. The old one checks them (a format both know, the same shard count;
//!    else `refused`, and it serves on), then stops as for a deploy
//!    ([`StopHandle::hand_over`]): it stops accepting but keeps its
//!    listening sockets open, so connections wait in their backlog
//!    (nobody is refused); it answers held polls at once and closes each
//!    connection after its answer (`Connection: close`), so clients poll
//!    again, at the new process; it finishes its storage jobs; each shard
//!    freezes its timers and waits for the mesh to fall quiet, and gives
//!    up its state; the store is closed and the data folder's lock freed.
//! 3. The old one sends `state` (the format, the listeners by shard and
//!    port, the state's length), then one byte carrying the listening
//!    sockets (`SCM_RIGHTS`), then the state: `{"format":1,"shards":[...]}`,
//!    each shard's whole state (`switchboard_shards::Shard`) as JSON.
//! 4. The new process opens the store, restores the shards, wraps the
//!    sockets, and says `ready` without accepting yet. The old one
//!    answers `go` and exits 0; the new one starts accepting on `go` (or
//!    when the old one is gone).
//!
//! **Failure.** Until it says `ready` the new process owns nothing: if it
//! dies, says `failed`, or is silent for `HANDOVER_READY_MS_MAX`, the old
//! one kills it (if it still runs), waits until it is gone (so the store
//! is free) and serves again from the state it kept, on the same
//! sockets, with the same sids. The old one gives up its sockets only
//! once the new one said `ready`.
//!
//! **Formats.** The state's format is a number. A binary reads its own
//! format and the one before it ([`FORMATS_READ`]) and can write its own
//! and the one before it, so a deploy and its rollback both work; the
//! old process writes the newest format the new one reads. Format 1 is
//! this: the shards' serde state as JSON (`engine/tests/takeover_format.rs`
//! keeps a format 1 state to read).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use log::{info, warn};
use serde::{Deserialize, Serialize};
use switchboard_shards::model::ShardId;
use switchboard_shards::Shard;

use crate::error::{Error, Port};
use crate::limits;
use crate::server::{Gate, HandedListener, HandedOver, Inherited};
use crate::settings::Settings;
use crate::stop::StopHandle;

/// The control socket's name in the data folder.
pub const SOCKET_NAME: &str = "switchboard.takeover.sock";

/// The state format this binary writes.
pub const FORMAT: u32 = 1;

/// The state formats this binary reads (oldest, newest).
pub const FORMATS_READ: (u32, u32) = (1, 1);

/// The largest frame (a word, not the state).
const FRAME_BYTES_MAX: u32 = 1 << 20;

/// The exit status of the test-only fault `SWITCHBOARD_FAULT_TAKEOVER`.
pub const FAULT_EXIT: i32 = 99;

/// The words of the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "word", rename_all = "snake_case")]
pub enum Word {
    /// New → old: take over from you.
    Hello {
        /// The state formats it reads, oldest and newest.
        formats: (u32, u32),
        /// Its shard count (the state is per shard).
        shards: usize,
        pid: u32,
        /// Its version (`switchboard --version`).
        version: String,
    },
    /// Old → new: no hand-over (the old one serves on).
    Refused { why: String },
    /// Old → new: the state follows (then one byte with the sockets, then
    /// `bytes` of state).
    State {
        format: u32,
        /// The sockets, in the order they come: the shard that accepted
        /// on each, and which listener it is.
        listeners: Vec<(ShardId, PortName)>,
        bytes: u64,
        sessions: usize,
        tabs: usize,
        pid: u32,
        version: String,
    },
    /// New → old: serving is up (store open, shards restored, sockets
    /// wrapped); not accepting yet.
    Ready,
    /// New → old: it cannot take over (the old one serves on).
    Failed { why: String },
    /// Old → new: accept; the old one exits.
    Go,
}

/// A listener's name on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortName {
    Client,
    Tls,
    Admin,
}

impl From<Port> for PortName {
    fn from(p: Port) -> PortName {
        match p {
            Port::Client => PortName::Client,
            Port::Tls => PortName::Tls,
            Port::Admin => PortName::Admin,
        }
    }
}

impl From<PortName> for Port {
    fn from(p: PortName) -> Port {
        match p {
            PortName::Client => Port::Client,
            PortName::Tls => Port::Tls,
            PortName::Admin => Port::Admin,
        }
    }
}

/// The state, format 1.
#[derive(Serialize, Deserialize)]
struct StateV1 {
    format: u32,
    shards: Vec<Shard>,
}

/// The control socket's path for `settings`.
pub fn socket_path(settings: &Settings) -> PathBuf {
    settings.data_dir.join(SOCKET_NAME)
}

fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn handover_err(why: impl Into<String>) -> Error {
    Error::Handover { why: why.into() }
}

// ---- frames ----

/// Writes one word.
pub fn write_word(s: &mut UnixStream, word: &Word) -> io::Result<()> {
    let json = serde_json::to_vec(word).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(&json);
    s.write_all(&frame)
}

/// Reads one word (exactly its bytes: what follows stays unread).
pub fn read_word(s: &mut UnixStream) -> io::Result<Word> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {len}-byte word (at most {FRAME_BYTES_MAX})"),
        ));
    }
    let mut json = vec![0u8; len as usize];
    s.read_exact(&mut json)?;
    serde_json::from_slice(&json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The most descriptors one `SCM_RIGHTS` message may carry (the kernel's
/// `SCM_MAX_FD`): more are sent in several messages.
const FDS_PER_MESSAGE: usize = 253;

/// Sends one byte carrying `fds` (`SCM_RIGHTS`), in messages of at most
/// `FDS_PER_MESSAGE` descriptors (one byte each; none: one empty byte).
fn send_fds(s: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() {
        return send_with_fds(s.as_raw_fd(), b"F", &[]);
    }
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        send_with_fds(s.as_raw_fd(), b"F", chunk)?;
    }
    Ok(())
}

/// A control-message buffer for `fds` descriptors, aligned for `cmsghdr`.
fn cmsg_buffer(fds: usize) -> (Vec<u64>, usize) {
    let data_len = (fds * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    (vec![0u64; space.div_ceil(8)], space)
}

/// `sendmsg` of `payload` on socket `fd` with `fds` attached
/// (`SCM_RIGHTS`; none: no control message).
pub(crate) fn send_with_fds(fd: RawFd, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let data_len = std::mem::size_of_val(fds) as u32;
    let (mut control, space) = cmsg_buffer(fds.len());
    // SAFETY: msghdr is plain data; every pointer set below outlives the
    // sendmsg call, and the control buffer is sized by CMSG_SPACE and
    // aligned for cmsghdr (u64).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                data_len as usize,
            );
        }
        let sent = libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL);
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != payload.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "sendmsg cut short",
            ));
        }
    }
    Ok(())
}

/// Receives the bytes [`send_fds`] sent for `count` sockets and the
/// sockets (each close-on-exec, owned here).
fn recv_fds(s: &UnixStream, count: usize) -> io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::with_capacity(count);
    loop {
        recv_some_fds(s, &mut fds)?;
        if fds.len() >= count {
            break;
        }
    }
    if fds.len() != count {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{count} sockets announced, {} came", fds.len()),
        ));
    }
    Ok(fds)
}

/// Receives one byte of [`send_fds`] and the sockets it carries.
fn recv_some_fds(s: &UnixStream, fds: &mut Vec<OwnedFd>) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let (mut control, space) = cmsg_buffer(FDS_PER_MESSAGE);
    // SAFETY: as in send_with_fds; the kernel writes at most `space` bytes
    // of control data, each header's length is checked before its data is
    // read, and every descriptor it passed is taken into an OwnedFd
    // exactly once.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let n = libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = libc::CMSG_LEN(0) as usize;
            let len = (*cmsg).cmsg_len as usize;
            if (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_RIGHTS
                && len >= header
            {
                let count = (len - header) / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                for k in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(k))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if n != 1 || byte[0] != b'F' {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "expected the sockets' byte",
            ));
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the sockets were cut short",
            ));
        }
    }
    Ok(())
}

/// The uid of the process at the other end.
fn peer_uid(s: &UnixStream) -> io::Result<(u32, u32)> {
    // SAFETY: ucred is plain data; getsockopt writes at most `len` bytes.
    unsafe {
        let mut cred: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let r = libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        );
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((cred.uid, cred.pid as u32))
    }
}

// ---- the old process ----

/// A process that asked to take over, and the format it gets.
pub struct Taker {
    stream: UnixStream,
    pid: u32,
    version: String,
    format: u32,
    /// When the hand-over began (the accept loops stopped).
    began: Instant,
}

/// The control socket of a serving process: a thread accepts on it, and
/// the first valid `hello` starts a hand-over ([`StopHandle::hand_over`]).
pub struct Control {
    takers: mpsc::Receiver<Taker>,
    path: PathBuf,
    /// The socket file's inode, to remove only our own at the end.
    ino: u64,
}

impl Control {
    /// Listens on the data folder's control socket (replacing a stale or
    /// previous one) for `stop`'s server, whose listeners are at `wake`
    /// (connected to, to end the accept loops; a wildcard address is
    /// reached on loopback).
    pub fn listen(
        settings: &Settings,
        stop: StopHandle,
        wake: Vec<std::net::SocketAddr>,
    ) -> io::Result<Control> {
        let path = socket_path(settings);
        // On MySQL with a configured token secret nothing else needs the
        // data folder: made here (private) for the socket alone.
        if !settings.data_dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&settings.data_dir)?;
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let ino = std::fs::metadata(&path)?.ino();
        let (tx, takers) = mpsc::channel();
        let shards = settings.shards;
        std::thread::Builder::new()
            .name("takeover".into())
            .spawn(move || control_loop(listener, stop, wake, shards, tx))?;
        Ok(Control { takers, path, ino })
    }

    /// Removes the socket file if it is still ours (a process that took
    /// over has bound its own by now).
    pub fn remove(&self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Hands `handed` to the process that asked (the server has settled:
    /// [`crate::server::Ended::HandedOver`]). `Ok` once it said `ready`
    /// and was told `go`: this process exits. Else the state comes back,
    /// to serve again from, with why.
    pub fn give(&self, handed: HandedOver) -> Result<(), (HandedOver, String)> {
        let Ok(mut taker) = self.takers.recv_timeout(Duration::from_millis(100)) else {
            return Err((handed, "no process asked to take over".into()));
        };
        match send_state(&mut taker, &handed) {
            Ok(()) => {}
            Err(e) => {
                let why = format!("sending the state to pid {}: {e}", taker.pid);
                stop_taker(&taker);
                return Err((handed, why));
            }
        }
        let ready = taker
            .stream
            .set_read_timeout(Some(Duration::from_millis(limits::HANDOVER_READY_MS_MAX)))
            .and_then(|()| read_word(&mut taker.stream));
        let why = match ready {
            Ok(Word::Ready) => match write_word(&mut taker.stream, &Word::Go) {
                Ok(()) => {
                    info!(
                        "handed over to pid {} (version {}): {} sessions, {} tabs, {} listeners, \
                         format {}; no connection was accepted for {} ms",
                        taker.pid,
                        taker.version,
                        handed.sessions,
                        handed.tabs,
                        handed.listeners.len(),
                        taker.format,
                        taker.began.elapsed().as_millis()
                    );
                    return Ok(());
                }
                Err(e) => format!("telling pid {} to go: {e}", taker.pid),
            },
            Ok(Word::Failed { why }) => format!("pid {} failed: {why}", taker.pid),
            Ok(other) => format!("pid {} said {other:?} instead of ready", taker.pid),
            Err(e) => format!("pid {} was not ready: {e}", taker.pid),
        };
        stop_taker(&taker);
        Err((handed, why))
    }
}

/// Accepts on the control socket: the first valid `hello` starts the
/// hand-over; any after it is refused (the server is stopping). The loop
/// ends with the process (after a failed hand-over it is left waiting on a
/// socket file the next `Control` replaced).
fn control_loop(
    listener: UnixListener,
    stop: StopHandle,
    wake: Vec<std::net::SocketAddr>,
    shards: usize,
    tx: mpsc::Sender<Taker>,
) {
    let own_uid = unsafe { libc::geteuid() };
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else {
            // EMFILE and the like: not a spin.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let word_wait = Some(Duration::from_millis(limits::HANDOVER_WORD_MS_MAX));
        let _ = stream.set_read_timeout(word_wait);
        let _ = stream.set_write_timeout(word_wait);
        let (uid, pid) = match peer_uid(&stream) {
            Ok(c) => c,
            Err(e) => {
                warn!("takeover socket: cannot read a caller's credentials: {e}");
                continue;
            }
        };
        if pid == 0 {
            // In another pid namespace: it could not be told apart from a
            // reused pid, nor killed if it failed half-way.
            warn!("takeover socket: refused a caller in another pid namespace");
            let why = "run the new server in this server's pid namespace".to_string();
            let _ = write_word(&mut stream, &Word::Refused { why });
            continue;
        }
        if uid != own_uid {
            warn!(
                "takeover socket: refused pid {pid} of uid {uid} (this server runs as {own_uid})"
            );
            let why = "another user may not take over".to_string();
            let _ = write_word(&mut stream, &Word::Refused { why });
            continue;
        }
        let hello = match read_word(&mut stream) {
            Ok(w) => w,
            Err(e) => {
                warn!("takeover socket: pid {pid} said no valid hello: {e}");
                continue;
            }
        };
        let Word::Hello {
            formats,
            shards: theirs,
            pid: _,
            version,
        } = hello
        else {
            warn!("takeover socket: pid {pid} began with {hello:?}, not hello");
            continue;
        };
        let refuse = |stream: &mut UnixStream, why: String| {
            warn!("takeover: refused pid {pid} (version {version}): {why}; serving on");
            let _ = write_word(stream, &Word::Refused { why });
        };
        // The newest format both know: ours or the one before it.
        let format = [FORMAT, FORMAT.saturating_sub(1)]
            .into_iter()
            .find(|f| *f >= 1 && (formats.0..=formats.1).contains(f));
        let Some(format) = format else {
            let why = format!(
                "it reads state formats {}..={}, this server writes {} or {}",
                formats.0,
                formats.1,
                FORMAT,
                FORMAT.saturating_sub(1)
            );
            refuse(&mut stream, why);
            continue;
        };
        if format != FORMAT {
            // Only format 1 exists so far: nothing older to write.
            refuse(
                &mut stream,
                format!("this server cannot write format {format}"),
            );
            continue;
        }
        if theirs != shards {
            let why = format!(
                "it runs {theirs} shards, this server {shards} (the state is per shard): start \
                 it with SWITCHBOARD_SHARDS={shards}"
            );
            refuse(&mut stream, why);
            continue;
        }
        if stop.is_stopping() {
            refuse(&mut stream, "this server is stopping".into());
            continue;
        }
        info!(
            "takeover: pid {pid} (version {version}) takes over: stopping accepts, answering held \
             polls, closing connections"
        );
        let began = Instant::now();
        stop.hand_over();
        let taker = Taker {
            stream,
            pid,
            version,
            format,
            began,
        };
        if tx.send(taker).is_err() {
            return;
        }
        wake_accept_loops(&stop, &wake);
        // Listening on, so that another takeover asked meanwhile is
        // refused ("stopping") rather than finding no server and starting
        // on its own while this one's store is between owners.
    }
}

/// Connects to this process's own listeners until every accept loop has
/// ended (each ends after its next accept; see `server::serve`), bounded
/// by `HANDOVER_NUDGE_MS_MAX`. A connection that lands on a socket whose
/// loop has ended waits in its backlog and is accepted by the process
/// taking over, which sees it close at once.
fn wake_accept_loops(stop: &StopHandle, wake: &[std::net::SocketAddr]) {
    let until = Instant::now() + Duration::from_millis(limits::HANDOVER_NUDGE_MS_MAX);
    let wake: Vec<std::net::SocketAddr> = wake
        .iter()
        .map(|a| {
            let mut a = *a;
            if a.ip().is_unspecified() {
                a.set_ip(match a {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            a
        })
        .collect();
    while stop.accepting() > 0 && Instant::now() < until {
        for addr in &wake {
            let _ = std::net::TcpStream::connect_timeout(addr, Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `state`, the sockets and the state itself.
fn send_state(taker: &mut Taker, handed: &HandedOver) -> io::Result<()> {
    let mut body = Vec::with_capacity(handed.states.iter().map(Vec::len).sum::<usize>() + 64);
    body.extend_from_slice(format!("{{\"format\":{},\"shards\":[", taker.format).as_bytes());
    for (k, s) in handed.states.iter().enumerate() {
        if k > 0 {
            body.push(b',');
        }
        body.extend_from_slice(s);
    }
    body.extend_from_slice(b"]}");
    let word = Word::State {
        format: taker.format,
        listeners: handed
            .listeners
            .iter()
            .map(|l| (l.shard, l.port.into()))
            .collect(),
        bytes: body.len() as u64,
        sessions: handed.sessions,
        tabs: handed.tabs,
        pid: std::process::id(),
        version: version(),
    };
    let wait = Some(Duration::from_millis(limits::HANDOVER_WORD_MS_MAX));
    taker.stream.set_write_timeout(wait)?;
    write_word(&mut taker.stream, &word)?;
    let fds: Vec<RawFd> = handed.listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
    send_fds(&taker.stream, &fds)?;
    taker.stream.write_all(&body)
}

/// Makes sure the process that failed to take over is gone (it may hold
/// the store): SIGKILL, then wait up to 10 s for it to disappear.
fn stop_taker(taker: &Taker) {
    let pid = taker.pid;
    if pid <= 1 || gone(pid) {
        return;
    }
    warn!("takeover: killing pid {pid}, which did not take over");
    // SAFETY: kill only sends a signal.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if gone(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    warn!("takeover: pid {pid} is still there 10 s after SIGKILL");
}

/// Whether process `pid` has exited: no longer there, or a zombie (its
/// parent has not reaped it yet; its files, and so its locks, are closed).
fn gone(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.is_empty()
        || status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
}

// ---- the new process ----

/// What a new process took from the old one, until it says `ready`.
pub struct Taken {
    stream: UnixStream,
    /// The old process.
    pub pid: u32,
    pub sessions: usize,
    pub tabs: usize,
    /// Opened on `go`.
    pub gate: Gate,
    /// When this process asked.
    pub asked: Instant,
}

/// Asks the server running on `settings`' data folder to hand over.
/// `Ok(None)`: none runs there (start as usual). `Err`: it refused, or the
/// hand-over failed before anything was taken (it serves on).
pub fn take_over(settings: &Settings) -> Result<Option<(Taken, Inherited)>, Error> {
    let path = socket_path(settings);
    let asked = Instant::now();
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            info!(
                "takeover: no server answers on {} ({e}): starting as usual",
                path.display()
            );
            return Ok(None);
        }
        Err(e) => {
            return Err(handover_err(format!(
                "connecting to {}: {e}",
                path.display()
            )))
        }
    };
    let io = |what: &str, e: io::Error| handover_err(format!("{what}: {e}"));
    // Only a server of this user hands this process its sockets and state.
    let own_uid = unsafe { libc::geteuid() };
    match peer_uid(&stream) {
        Ok((uid, _)) if uid == own_uid => {}
        Ok((uid, pid)) => {
            return Err(handover_err(format!(
                "{} is held by pid {pid} of uid {uid}, not this user ({own_uid})",
                path.display()
            )))
        }
        Err(e) => return Err(io("reading the server's credentials", e)),
    }
    // The old process drains first: at most its stop's bound, then the
    // settle and the state.
    let wait = limits::handover_state_wait_ms(settings.storage_timeout_ms);
    stream
        .set_read_timeout(Some(Duration::from_millis(wait)))
        .map_err(|e| io("setting a timeout", e))?;
    let hello = Word::Hello {
        formats: FORMATS_READ,
        shards: settings.shards,
        pid: std::process::id(),
        version: version(),
    };
    write_word(&mut stream, &hello).map_err(|e| io("saying hello", e))?;
    let (format, ports, bytes, sessions, tabs, pid) = match read_word(&mut stream) {
        Ok(Word::State {
            format,
            listeners,
            bytes,
            sessions,
            tabs,
            pid,
            version,
        }) => {
            info!(
                "takeover: pid {pid} (version {version}) hands over {sessions} sessions, {tabs} \
                 tabs, {} listeners, format {format}, {bytes} bytes",
                listeners.len()
            );
            (format, listeners, bytes, sessions, tabs, pid)
        }
        Ok(Word::Refused { why }) => return Err(handover_err(format!("refused: {why}"))),
        Ok(other) => return Err(handover_err(format!("expected the state, got {other:?}"))),
        Err(e) => return Err(io("waiting for the state", e)),
    };
    let fds = recv_fds(&stream, ports.len()).map_err(|e| io("receiving the sockets", e))?;
    let mut body = Vec::new();
    body.try_reserve_exact(bytes as usize)
        .map_err(|e| handover_err(format!("no memory for a state of {bytes} bytes: {e}")))?;
    (&mut stream)
        .take(bytes)
        .read_to_end(&mut body)
        .map_err(|e| io("reading the state", e))?;
    if body.len() as u64 != bytes {
        return Err(handover_err(format!(
            "the state ended after {} of {bytes} bytes",
            body.len()
        )));
    }
    if fault_exit_after_state() {
        warn!("takeover: test fault SWITCHBOARD_FAULT_TAKEOVER=exit-after-state: exiting");
        crate::logger::flush();
        std::process::exit(FAULT_EXIT);
    }
    let mut taken = Taken {
        stream,
        pid,
        sessions,
        tabs,
        gate: Gate::closed(),
        asked,
    };
    let inherited = read_state(format, &body, ports, fds).and_then(|(shards, listeners)| {
        if shards.len() != settings.shards {
            return Err(format!(
                "the state has {} shards, the settings say {}",
                shards.len(),
                settings.shards
            ));
        }
        Ok(Inherited {
            shards,
            listeners,
            gate: taken.gate.clone(),
        })
    });
    match inherited {
        Ok(inherited) => Ok(Some((taken, inherited))),
        Err(why) => {
            taken.fail(&why);
            Err(handover_err(why))
        }
    }
}

/// Reads a state of `format` and pairs the sockets with their shards.
fn read_state(
    format: u32,
    body: &[u8],
    ports: Vec<(ShardId, PortName)>,
    fds: Vec<OwnedFd>,
) -> Result<(Vec<Shard>, Vec<HandedListener>), String> {
    let shards = read_state_body(format, body)?;
    if ports.len() != fds.len() {
        return Err(format!(
            "{} sockets announced, {} came",
            ports.len(),
            fds.len()
        ));
    }
    let listeners = ports
        .into_iter()
        .zip(fds)
        .map(|((shard, port), fd)| HandedListener {
            shard,
            port: port.into(),
            fd,
        })
        .collect();
    Ok((shards, listeners))
}

/// Reads a state of `format` (one this binary reads, [`FORMATS_READ`]):
/// each shard's state, in shard order.
pub fn read_state_body(format: u32, body: &[u8]) -> Result<Vec<Shard>, String> {
    if !(FORMATS_READ.0..=FORMATS_READ.1).contains(&format) {
        return Err(format!(
            "state format {format} is not one this binary reads"
        ));
    }
    // Format 1 is the only one so far. A format 2 reader keeps this one's
    // and converts what it reads.
    let state: StateV1 =
        serde_json::from_slice(body).map_err(|e| format!("reading the state: {e}"))?;
    if state.format != format {
        return Err(format!(
            "the state says format {}, its header {format}",
            state.format
        ));
    }
    Ok(state.shards)
}

/// Whether the test-only fault asks this process to exit once it has the
/// state (`SWITCHBOARD_FAULT_TAKEOVER=exit-after-state`; honoured only in
/// builds with fault injection).
fn fault_exit_after_state() -> bool {
    switchboard_shards::FAULT_INJECTION
        && std::env::var("SWITCHBOARD_FAULT_TAKEOVER").is_ok_and(|v| v == "exit-after-state")
}

impl Taken {
    /// Tells the old process this one cannot take over (it serves on).
    pub fn fail(&mut self, why: &str) {
        let _ = write_word(&mut self.stream, &Word::Failed { why: why.into() });
    }

    /// Says `ready` and waits for `go` (or the old process gone), then
    /// opens the gate: this process accepts from now on. `Err`: the old
    /// process answered something else; it serves on, and this process
    /// must not.
    pub fn ready(mut self) -> Result<(), Error> {
        let word_wait = Some(Duration::from_millis(limits::HANDOVER_WORD_MS_MAX));
        let _ = self.stream.set_read_timeout(word_wait);
        write_word(&mut self.stream, &Word::Ready)
            .map_err(|e| handover_err(format!("saying ready: {e}")))?;
        match read_word(&mut self.stream) {
            Ok(Word::Go) => {}
            // Gone after reading `ready`: it exits only after `go`, or
            // dies; either way it serves no more.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                warn!(
                    "takeover: pid {} closed without saying go: taking over",
                    self.pid
                )
            }
            Ok(other) => return Err(handover_err(format!("expected go, got {other:?}"))),
            // Silent: gone (it serves no more), or hung (if it ever goes
            // on, its `go` finds this process gone and it serves again).
            Err(e) if gone(self.pid) => {
                warn!(
                    "takeover: pid {} is gone without saying go ({e}): taking over",
                    self.pid
                )
            }
            Err(e) => return Err(handover_err(format!("waiting for go: {e}"))),
        }
        self.gate.open();
        info!(
            "took over from pid {}: {} sessions, {} tabs, {} ms after asking",
            self.pid,
            self.sessions,
            self.tabs,
            self.asked.elapsed().as_millis()
        );
        Ok(())
    }
}
