//! Limits of the HTTP layer.
