//! `switchboard-storage`: the directory, history, UI state and read marks.
