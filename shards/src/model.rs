//! The vocabulary shared by every crate: requests a shard accepts, responses
//! and events it produces, and the storage jobs it asks for. Plain data, no
//! behaviour beyond parsing and formatting identifiers.
//!
//! `io` decodes HTTP into [`Request`] and encodes [`Response`]; `storage`
//! executes [`StorageJob`] into [`StorageOutput`]; `engine` carries all of
//! them between threads.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// A user id as the web app's database has it (positive, 64-bit).
pub type UserId = u64;
/// A message id: globally increasing, so also ordered within a
/// conversation. On the wire it is a decimal string (opaque to clients).
pub type MsgId = u64;
/// Index of a shard (executor), `0..shard_count`.
pub type ShardId = usize;

/// Where a response must go: the conn shard holding the socket and the
/// request number that shard is waiting on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplyTo {
    /// The conn shard (where the kernel put the connection).
    pub shard: ShardId,
    /// Per-conn-shard request number.
    pub req: u64,
}

/// One tab's credential: the user it belongs to (so any shard can route it
/// without a lookup) and 128 random bits that make it unguessable.
///
/// Text form: `{user}-{32 lowercase hex}`, canonical only: the user id in
/// decimal without leading zeros, so one tab has exactly one sid text.
/// Compared with [`Sid::matches`] wherever one comes from a client.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sid {
    /// The user whose session this tab attaches to.
    pub user: UserId,
    /// Random secret chosen by the conn shard at connect.
    pub secret: u128,
}

impl Sid {
    /// Parses the canonical text form; `None` for anything else (answered
    /// as `unknown_session`, since a sid is opaque to clients): a sign,
    /// spaces, leading zeros, uppercase hex, any other length.
    pub fn parse(text: &str) -> Option<Sid> {
        let (user, secret) = text.split_once('-')?;
        if user.is_empty()
            || user.len() > 20
            || user.starts_with('0')
            || !user.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        if secret.len() != 32
            || !secret
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let user: UserId = user.parse().ok()?;
        let secret = u128::from_str_radix(secret, 16).ok()?;
        if user == 0 {
            return None;
        }
        Some(Sid { user, secret })
    }

    /// Whether `self` is `other`, in a time that does not depend on where
    /// they differ (a sid's secret is a credential: a timing difference
    /// must not let a client learn it piece by piece).
    pub fn matches(&self, other: &Sid) -> bool {
        let diff = u128::from(self.user ^ other.user) | (self.secret ^ other.secret);
        // Both halves always folded; black_box keeps the compiler from
        // turning the one test into two early-out compares.
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:032x}", self.user, self.secret)
    }
}

impl fmt::Debug for Sid {
    // Never print the secret: sids end up in logs and traces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({}-…)", self.user)
    }
}

/// Presence as friends see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    Online,
    Away,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Offline => "offline",
        }
    }
}

/// What `/typing` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TypingState {
    Typing,
    Stopped,
}

impl TypingState {
    pub fn as_str(self) -> &'static str {
        match self {
            TypingState::Typing => "typing",
            TypingState::Stopped => "stopped",
        }
    }
}

/// A decoded, syntactically valid client or admin request. Decoding (`io`)
/// has already checked parameter syntax and sizes; the shard checks
/// identity, friendship and everything that needs state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// `/connect`: the token was verified by the conn shard, which also
    /// drew the new tab's sid.
    Connect {
        user: UserId,
        /// The client's tab name, or `None` to let the server name it.
        tab: Option<String>,
        sid: Sid,
    },
    Poll {
        sid: Sid,
        since: u64,
        wait_ms: u64,
    },
    Send {
        sid: Sid,
        to: UserId,
        /// 1–4000 code points, checked by `io`.
        text: String,
        cid: Option<String>,
    },
    Typing {
        sid: Sid,
        to: UserId,
        state: TypingState,
    },
    Presence {
        sid: Sid,
        /// `Online` or `Away` (never `Offline`: that is leaving).
        status: Status,
    },
    Ui {
        sid: Sid,
        /// A JSON object's text, at most 4096 bytes (checked by `io`).
        state: String,
    },
    Read {
        sid: Sid,
        with: UserId,
        upto: MsgId,
    },
    History {
        sid: Sid,
        with: UserId,
        before: Option<MsgId>,
        limit: u32,
    },
    Leave {
        sid: Sid,
    },
    /// From the engine, not a client: the held poll of `sid`'s tab that
    /// waits at `held` lost its client (it hung up): answered now with no
    /// events (the answer goes nowhere), the tab idle from now on. Nothing
    /// if that tab holds no poll, or a newer one. Answered `Done`; costs
    /// no rate limit and does not count as the tab's use.
    EndPoll {
        sid: Sid,
        held: ReplyTo,
    },
    /// Admin: the user's friendships changed in the directory.
    RosterChanged {
        user: UserId,
    },
    /// Admin: end every tab of the user now.
    Kick {
        user: UserId,
    },
    /// Admin: is this shard answering? Answered by every shard.
    Health,
    /// Admin: the users traced from now on (the engine's whole set, sent
    /// to every shard at each change; answered `Done` by every shard).
    Trace {
        traced: crate::trace::Traced,
    },
    /// A sid-bearing call whose other parameters failed decoding: the home
    /// shard checks the sid first (docs/protocol.md, "Check order": sid, then
    /// sizes, then content) and then answers `failure`.
    Rejected {
        sid: Sid,
        failure: Failure,
    },
}

impl Request {
    /// The user whose home shard must handle this request (`None` for
    /// requests every shard answers).
    pub fn home_user(&self) -> Option<UserId> {
        match self {
            Request::Connect { user, .. }
            | Request::RosterChanged { user }
            | Request::Kick { user } => Some(*user),
            Request::Poll { sid, .. }
            | Request::Send { sid, .. }
            | Request::Typing { sid, .. }
            | Request::Presence { sid, .. }
            | Request::Ui { sid, .. }
            | Request::Read { sid, .. }
            | Request::History { sid, .. }
            | Request::Leave { sid }
            | Request::EndPoll { sid, .. }
            | Request::Rejected { sid, .. } => Some(sid.user),
            Request::Health | Request::Trace { .. } => None,
        }
    }

    /// Whether [`Request::home_user`] is only what the request's sid
    /// says: the home shard has yet to check the sid's secret, so anyone
    /// may send `42-anything`. (A connect's user comes from a verified
    /// token, a roster change's or kick's from the admin.) Logs key such
    /// a user `sid_user=`, never `user=`, until the home shard accepted
    /// the sid: `user=` routes a record into that user's trace.
    pub fn user_is_claimed(&self) -> bool {
        match self {
            Request::Poll { .. }
            | Request::Send { .. }
            | Request::Typing { .. }
            | Request::Presence { .. }
            | Request::Ui { .. }
            | Request::Read { .. }
            | Request::History { .. }
            | Request::Leave { .. }
            | Request::EndPoll { .. }
            | Request::Rejected { .. } => true,
            Request::Connect { .. }
            | Request::RosterChanged { .. }
            | Request::Kick { .. }
            | Request::Health
            | Request::Trace { .. } => false,
        }
    }

    /// The call's name, for logs: never its content (text, cid, UI state,
    /// tab name) nor its sid's secret.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Connect { .. } => "connect",
            Request::Poll { .. } => "poll",
            Request::Send { .. } => "send",
            Request::Typing { .. } => "typing",
            Request::Presence { .. } => "presence",
            Request::Ui { .. } => "ui",
            Request::Read { .. } => "read",
            Request::History { .. } => "history",
            Request::Leave { .. } => "leave",
            Request::EndPoll { .. } => "end_poll",
            Request::Rejected { .. } => "rejected",
            Request::RosterChanged { .. } => "roster_changed",
            Request::Kick { .. } => "kick",
            Request::Health => "health",
            Request::Trace { .. } => "trace",
        }
    }
}

/// Protocol error codes (docs/protocol.md, "Error codes"). The HTTP status for
/// each is decided in one place, in `io`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    UnknownSession,
    NotFriends,
    Forbidden,
    TooLarge,
    RateLimited,
    Unavailable,
    NotFound,
}

impl ErrorCode {
    /// Every code, in declaration order (`code as usize` is its place).
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::UnknownSession,
        ErrorCode::NotFriends,
        ErrorCode::Forbidden,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::NotFriends => "not_friends",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotFound => "not_found",
        }
    }
}

/// A protocol error: the code and a sentence for humans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// A friend as a roster shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub id: UserId,
    pub name: Arc<str>,
    pub presence: Status,
}

/// A stored chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: MsgId,
    pub from: UserId,
    pub to: UserId,
    pub text: Arc<str>,
    /// Unix milliseconds, assigned by the sender's home shard.
    pub ts: u64,
    /// The sender's client id, when it gave one.
    pub cid: Option<Arc<str>>,
}

/// Whether a friendship appeared or went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RosterChange {
    Added,
    Removed,
}

impl RosterChange {
    pub fn as_str(self) -> &'static str {
        match self {
            RosterChange::Added => "added",
            RosterChange::Removed => "removed",
        }
    }
}

/// What happened, as one session's tabs see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Message(Arc<Message>),
    Presence {
        user: UserId,
        status: Status,
    },
    Typing {
        user: UserId,
        state: TypingState,
    },
    Ui {
        /// JSON object text, embedded as-is.
        state: Arc<str>,
        tab: Arc<str>,
    },
    Read {
        /// The other user of the conversation, seen from this session.
        with: UserId,
        by: UserId,
        upto: MsgId,
    },
    Roster {
        change: RosterChange,
        user: Contact,
    },
}

impl EventKind {
    /// The event's type, as the protocol names it (for logs and traces:
    /// never its content).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Message(_) => "message",
            EventKind::Presence { .. } => "presence",
            EventKind::Typing { .. } => "typing",
            EventKind::Ui { .. } => "ui",
            EventKind::Read { .. } => "read",
            EventKind::Roster { .. } => "roster",
        }
    }
}

/// One event in a session's buffer. Shared by every tab that polls it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub kind: EventKind,
}

/// The answer to `/connect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connected {
    pub sid: Sid,
    pub tab: Arc<str>,
    pub user: UserId,
    pub name: Arc<str>,
    /// Latest event seq of the session.
    pub seq: u64,
    pub roster: Vec<Contact>,
    /// Persisted UI state (JSON object text), if any.
    pub ui: Option<Arc<str>>,
    /// Friend id → unread messages from that friend (only non-zero ones).
    pub unread: Vec<(UserId, u64)>,
}

/// A shard's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Connected(Box<Connected>),
    /// `/poll`: events after `since` (maybe none), and the latest seq.
    Events {
        seq: u64,
        events: Vec<Arc<Event>>,
    },
    /// `/poll`: events after `since` are no longer buffered.
    Reset {
        seq: u64,
    },
    /// `/send`: stored durably.
    Sent {
        id: MsgId,
        ts: u64,
    },
    /// `/history`. `seen`: how far the other user has read this
    /// conversation (their read mark), if they ever marked it.
    History {
        messages: Vec<Arc<Message>>,
        more: bool,
        seen: Option<MsgId>,
    },
    /// `/health` from one shard: its id and how many sessions, tabs and
    /// held polls it owns (`/health` shows the first three, `/metrics`
    /// all).
    Health {
        shard: ShardId,
        sessions: u64,
        tabs: u64,
        polls: u64,
    },
    /// Success with nothing more to say (`typing`, `presence`, `ui`,
    /// `read`, `leave`, admin calls).
    Done,
    Failed(Failure),
}

impl Response {
    pub fn fail(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Failed(Failure::new(code, message))
    }
}

/// Work a shard asks of storage. Executed off the executors, on `db-N`
/// threads; the result comes back as [`StorageOutput`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageJob {
    /// Everything a new session needs: the user's name, friends (with
    /// names), persisted UI state and unread counts.
    LoadSession { user: UserId },
    /// Re-read the user's friends (roster refresh or `roster-changed`).
    LoadRoster { user: UserId },
    /// Store a message durably, unless `(from, cid)` was stored before.
    StoreMessage {
        from: UserId,
        to: UserId,
        text: Arc<str>,
        cid: Option<Arc<str>>,
        ts: u64,
    },
    /// Move `user`'s read mark in the conversation with `with` to `upto`
    /// (never backwards) and recount unread messages from `with`.
    MarkRead {
        user: UserId,
        with: UserId,
        upto: MsgId,
    },
    /// A page of the conversation between `user` and `with`, older than
    /// `before`, oldest first.
    History {
        user: UserId,
        with: UserId,
        before: Option<MsgId>,
        limit: u32,
    },
    /// Persist the user's UI state (JSON object text).
    SaveUi { user: UserId, state: Arc<str> },
}

impl StorageJob {
    /// The user the job is for (for logs and traces).
    pub fn user(&self) -> UserId {
        match self {
            StorageJob::LoadSession { user }
            | StorageJob::LoadRoster { user }
            | StorageJob::MarkRead { user, .. }
            | StorageJob::History { user, .. }
            | StorageJob::SaveUi { user, .. } => *user,
            StorageJob::StoreMessage { from, .. } => *from,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            StorageJob::LoadSession { .. } => "load_session",
            StorageJob::LoadRoster { .. } => "load_roster",
            StorageJob::StoreMessage { .. } => "store_message",
            StorageJob::MarkRead { .. } => "mark_read",
            StorageJob::History { .. } => "history",
            StorageJob::SaveUi { .. } => "save_ui",
        }
    }
}

/// A friend as the directory has them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Friend {
    pub id: UserId,
    pub name: Arc<str>,
}

/// The successful result of a [`StorageJob`], variant for variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageOutput {
    /// `LoadSession`. `name` is `None` when the directory has no such user.
    Session {
        name: Option<Arc<str>>,
        friends: Vec<Friend>,
        ui: Option<Arc<str>>,
        /// Friend id → unread count, non-zero entries only.
        unread: Vec<(UserId, u64)>,
    },
    /// `LoadRoster`.
    Roster { friends: Vec<Friend> },
    /// `StoreMessage`: the stored message. `duplicate` is true when
    /// `(from, cid)` had been stored before: then `message` is that first
    /// message and nothing was stored now.
    Stored {
        message: Arc<Message>,
        duplicate: bool,
    },
    /// `MarkRead`: the mark now in force (≥ the asked `upto` when an
    /// earlier read went further) and unread messages from `with` after it.
    /// `valid` is false when `upto` is not a message of that conversation
    /// (nothing changed).
    ReadMarked {
        valid: bool,
        upto: MsgId,
        unread: u64,
    },
    /// `History`. `valid` is false when `before` is not a message of that
    /// conversation.
    History {
        valid: bool,
        messages: Vec<Arc<Message>>,
        more: bool,
        /// The other user's read mark in this conversation.
        #[serde(default)]
        seen: Option<MsgId>,
    },
    /// `SaveUi`.
    Saved,
}

/// Why a storage job failed. Every failure reaches the client as
/// `unavailable`; the detail goes to the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageError {
    /// The job queue was full: shed at once.
    Overloaded,
    /// The deadline passed before a result came back.
    TimedOut,
    /// The backend failed (I/O error, database error): the text says how.
    Backend(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Overloaded => write!(f, "storage queue full"),
            StorageError::TimedOut => write!(f, "storage deadline passed"),
            StorageError::Backend(e) => write!(f, "storage backend: {e}"),
        }
    }
}

impl StorageError {
    /// What a client is told: the kind of failure only. A `Backend` text
    /// is for the log: it names the batch's failing job (another user's,
    /// when a batch of several users rolls back) and the database's
    /// error code.
    pub fn client_text(&self) -> &'static str {
        match self {
            StorageError::Overloaded => "storage unavailable: storage queue full",
            StorageError::TimedOut => "storage unavailable: storage deadline passed",
            StorageError::Backend(_) => "storage unavailable: storage backend failed",
        }
    }
}

/// A storage job's result.
pub type StorageResult = Result<StorageOutput, StorageError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sid_round_trips_and_rejects_junk() {
        let sid = Sid {
            user: 42,
            secret: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        };
        let text = sid.to_string();
        assert_eq!(text, "42-0123456789abcdef0011223344556677");
        assert_eq!(Sid::parse(&text), Some(sid));
        for bad in [
            "",
            "42",
            "42-",
            "-0123456789abcdef0011223344556677",
            "0-0123456789abcdef0011223344556677",
            "x-0123456789abcdef0011223344556677",
            "42-0123456789ABCDEF0011223344556677",
            "42-0123456789abcdef001122334455667",
            "42-0123456789abcdef00112233445566778",
            "+42-0123456789abcdef0011223344556677",
            "042-0123456789abcdef0011223344556677",
            "00-0123456789abcdef0011223344556677",
            " 42-0123456789abcdef0011223344556677",
            "42 -0123456789abcdef0011223344556677",
            "42-0123456789abcdef0011223344556677 ",
            "42-+123456789abcdef0011223344556677",
            "99999999999999999999-0123456789abcdef0011223344556677",
        ] {
            assert_eq!(Sid::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sids_match_only_themselves() {
        let sid = Sid {
            user: 42,
            secret: 7,
        };
        assert!(sid.matches(&sid));
        for other in [
            Sid {
                user: 43,
                secret: 7,
            },
            Sid {
                user: 42,
                secret: 6,
            },
            Sid {
                user: 42,
                secret: 7 | 1 << 127,
            },
            Sid {
                user: 42 | 1 << 63,
                secret: 7,
            },
        ] {
            assert!(!sid.matches(&other), "{other}");
            assert!(!other.matches(&sid), "{other}");
        }
    }
}
