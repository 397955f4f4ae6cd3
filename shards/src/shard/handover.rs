//! A deploy's hand-over (`switchboard serve --takeover`): the shard's
//! whole state goes, serialised, from the old process to the new one
//! (the engine's `handover.rs` moves it). Only a *settled* shard can go:
//! drained (no poll held, so no [`ReplyTo`](crate::model::ReplyTo) of the
//! old process's connections is kept), with no storage job in flight (so
//! no result is owed to it and no session is still loading) and no roster
//! part re-reading. What may still name the old process's requests is
//! dropped on the way in: admin `roster-changed` calls waiting for acks
//! (their admin connection closed with the old process; the web app
//! retries a call that got no answer).
//!
//! Time needs no translation: `now` is wall-clock milliseconds in both
//! processes, so a grace or tab deadline armed in the old one falls due at
//! the same moment in the new one.

use super::drain::Drain;
use super::{Config, Shard};

/// Why a shard could not be handed over as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotSettled {
    /// Storage jobs in flight (their results are owed to this process).
    JobsInFlight(usize),
    /// Polls still held (their answers are owed to this process's
    /// connections).
    PollsHeld(usize),
    /// The shard is not draining (it may still hold a poll at any time).
    NotDraining,
}

impl std::fmt::Display for NotSettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotSettled::JobsInFlight(n) => write!(f, "{n} storage jobs in flight"),
            NotSettled::PollsHeld(n) => write!(f, "{n} polls held"),
            NotSettled::NotDraining => write!(f, "not draining"),
        }
    }
}

impl Shard {
    /// Whether this shard may be serialised for a hand-over (see the module
    /// doc).
    pub fn settled(&self) -> Result<(), NotSettled> {
        if self.drain != Drain::Draining {
            return Err(NotSettled::NotDraining);
        }
        if self.jobs.len() > 0 {
            return Err(NotSettled::JobsInFlight(self.jobs.len()));
        }
        let held = self.held_poll_count();
        if held > 0 {
            return Err(NotSettled::PollsHeld(held));
        }
        Ok(())
    }

    /// A shard handed over (or handed back after a failed hand-over)
    /// serving again under `config`, this process's settings for it: it
    /// holds polls again, and forgets the admin calls that were waiting
    /// (their connections are gone). `config` must name the same shard of
    /// the same count.
    pub fn resumed(mut self, config: Config) -> Result<Shard, String> {
        if config.shard != self.config.shard || config.shard_count != self.config.shard_count {
            return Err(format!(
                "the state is shard {} of {}, this is shard {} of {}",
                self.config.shard, self.config.shard_count, config.shard, config.shard_count
            ));
        }
        self.config = config;
        self.drain = Drain::Serving;
        self.changes.forget_waits();
        self.working_on = None;
        self.forget_unsettled();
        Ok(self)
    }

    /// What only an unsettled shard holds (the engine takes the state
    /// once settled, but hands it over anyway past its bound): storage
    /// jobs whose results went to the old process, the sessions still
    /// loading on them (their users connect again and load anew; their
    /// tabs were not attached yet), and roster parts re-reading. Nothing
    /// of a settled shard.
    fn forget_unsettled(&mut self) {
        self.jobs.forget_all();
        self.changes.forget_parts();
        for user in self.sessions.loading_users() {
            self.timers.disarm_where(|key| key.user() == user);
            self.sessions.remove(user);
        }
    }
}
