//! Per-user rate limits at the door of each call: after the tab check
//! (`unknown_session` first: an unknown sid has no user to charge), before
//! anything else (not oneself, friends-only, storage, events). A call over
//! its limit is answered `rate_limited` and does nothing. A poll is charged
//! only when it is to be answered at once (`polls.rs`): a held poll is not.
//!
//! Invariant: every call of a limited kind from a live tab takes from its
//! user's bucket exactly once, whatever its answer later (`not_friends`
//! and `bad_request` answers count too: probing is not free).

use super::{fail, note_if_traced, Output, Shard};
use crate::model::{ErrorCode, ReplyTo, Sid, UserId};
use crate::ratelimit::Kind;
use crate::session::LiveSession;
use crate::trace::Note;

impl Shard {
    /// The live session holding `sid` and the tab's index, as
    /// `Sessions::tab`, once `kind`'s bucket allows the call at `now`.
    /// Otherwise answers (`unknown_session` or `rate_limited`) at `to` and
    /// returns `None`.
    pub(super) fn tab_within_rate(
        &mut self,
        now: u64,
        sid: Sid,
        to: ReplyTo,
        kind: Kind,
        out: &mut Vec<Output>,
    ) -> Option<(&mut LiveSession, usize)> {
        let (session, i) = self.sessions.tab(now, sid, to, out)?;
        if !session.buckets.take(&self.config.rate_limits, kind, now) {
            self.stats.rate_limited += 1;
            let call = kind.as_str();
            note_if_traced(&self.traced, now, sid.user, Note::RateLimited { call }, out);
            rate_limited(out, to, kind);
            return None;
        }
        Some((session, i))
    }

    /// Whether a connect to `user`'s live session at `now` is within the
    /// connect limit; answers `rate_limited` at `to` when it is not.
    pub(super) fn connect_within_rate(
        &mut self,
        now: u64,
        user: UserId,
        to: ReplyTo,
        out: &mut Vec<Output>,
    ) -> bool {
        let session = self.sessions.live_mut(user).expect("live session");
        if session
            .buckets
            .take(&self.config.rate_limits, Kind::Connect, now)
        {
            return true;
        }
        self.stats.rate_limited += 1;
        let call = Kind::Connect.as_str();
        self.note(now, user, Note::RateLimited { call }, out);
        rate_limited(out, to, Kind::Connect);
        false
    }
}

pub(super) fn rate_limited(out: &mut Vec<Output>, to: ReplyTo, kind: Kind) {
    let message = format!("too many {} calls: slow down", kind.as_str());
    fail(out, to, ErrorCode::RateLimited, &message);
}
