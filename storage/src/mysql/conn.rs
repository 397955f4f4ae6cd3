//! One MySQL connection as the pool keeps it, and the r2d2 manager that
//! makes them: every connection gets the same session settings (character
//! set, isolation, lock and statement limits derived from the job
//! timeout), explicit connect/read/write timeouts, and a `broken` mark
//! that a failed statement sets so the pool drops it instead of handing it
//! out again.

use crate::limits;
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A pooled connection with what the backend needs to know about it.
pub(crate) struct DbConn {
    /// The connection itself.
    pub(crate) conn: Conn,
    /// Set when a statement failed in a way that leaves the connection
    /// unusable (I/O error, socket timeout, protocol error, failed
    /// rollback). The pool drops such a connection when it comes back.
    pub(crate) broken: bool,
    /// Whether the server's `sql_mode` has `NO_BACKSLASH_ESCAPES`, which
    /// changes how string literals of multi-row statements are escaped.
    pub(crate) no_backslash_escapes: bool,
    /// When the connection was last handed back (pings are only needed
    /// after idling, see [`limits::MYSQL_IDLE_PING_AFTER_MS`]).
    pub(crate) last_used: Instant,
    /// The id step (`auto_increment_increment`) when one multi-row
    /// `INSERT` gets consecutive ids (`innodb_autoinc_lock_mode` 0 or 1);
    /// `None` when it may not (lock mode 2), and rows go one per statement.
    pub(crate) autoinc_step: Option<u64>,
}

impl DbConn {
    /// Runs `f` on the connection and marks it broken when the error says
    /// the connection cannot be trusted any more.
    pub(crate) fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<T, mysql::Error>,
    ) -> Result<T, mysql::Error> {
        let result = f(&mut self.conn);
        if let Err(e) = &result {
            if is_connection_error(e) {
                self.broken = true;
            }
        }
        result
    }

    /// Quotes `text` as an SQL string literal for this connection.
    pub(crate) fn quote(&self, text: &str) -> String {
        mysql::Value::from(text).as_sql(self.no_backslash_escapes)
    }
}

/// Whether an error leaves the connection unusable (as opposed to a
/// server error answered on a healthy connection).
pub(crate) fn is_connection_error(e: &mysql::Error) -> bool {
    match e {
        mysql::Error::MySqlError(e) => {
            // Server shutdown, or our connection killed: do not reuse.
            matches!(e.code, 1053 | 1927 | 2006 | 2013)
        }
        other => other.is_connectivity_error(),
    }
}

/// A MySQL error as the serving path may show it, in a log line or in a
/// job's `Backend` answer: the error code, the SQLSTATE and a fixed
/// description, never the server's message text. That text can quote
/// row values: 1062's `Duplicate entry '42-<cid>' for key
/// 'sb_messages_cid'` holds a client-chosen cid (and a failed batch is
/// answered to every user in it), 1292's `Truncated incorrect ... value`
/// can hold a login token, 1366's `Incorrect string value` part of a
/// message. The driver's own errors (I/O, protocol, conversion) carry no
/// row values and are shown as the driver words them.
///
/// Setup paths that run no client values (connecting, the schema and
/// query checks at start, `migrate`, `check-directory`) show the full
/// error instead: the operator needs the server's words there.
pub(crate) struct Redacted<'a>(pub(crate) &'a mysql::Error);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            mysql::Error::MySqlError(e) => write!(
                f,
                "MySQL error {} (SQLSTATE {}): {}",
                e.code,
                sqlstate(&e.state),
                describe_code(e.code)
            ),
            other => write!(f, "{other}"),
        }
    }
}

/// The SQLSTATE as sent when it is the five letters and digits it should
/// be, else `?????` (so not even a misbehaving server puts text there).
fn sqlstate(state: &str) -> &str {
    if state.len() == 5 && state.bytes().all(|b| b.is_ascii_alphanumeric()) {
        state
    } else {
        "?????"
    }
}

/// A fixed description of the server error codes the serving path can
/// meet; others are described by their code alone.
fn describe_code(code: u16) -> &'static str {
    match code {
        1040 => "too many connections",
        1044 | 1045 | 1142 | 1143 => "access denied",
        1048 => "a NOT NULL column got NULL",
        1049 => "unknown database",
        1053 => "server shutting down",
        1054 => "unknown column",
        1062 => "duplicate key",
        1064 => "SQL syntax error",
        1146 => "no such table",
        1205 => "lock wait timeout",
        1213 => "deadlock, transaction rolled back",
        1264 | 1406 => "value out of range or too long for its column",
        1292 | 1366 => "incorrect value for its column",
        1451 | 1452 => "foreign key constraint",
        1927 => "connection killed",
        1969 | 3024 => "statement time limit exceeded",
        2006 => "server gone away",
        2013 => "connection lost during query",
        _ => "server error",
    }
}

/// The session settings every connection gets, derived from the job
/// timeout.
#[derive(Clone, Debug)]
pub(crate) struct SessionLimits {
    /// The storage job timeout: statements may not run longer, nor wait
    /// longer for a lock.
    pub(crate) job_timeout: Duration,
}

/// Makes and checks connections for r2d2.
#[derive(Debug)]
pub(crate) struct Manager {
    /// Connection options with the timeouts already set.
    opts: Opts,
    /// Per-session settings applied right after connecting.
    limits: SessionLimits,
}

impl Manager {
    /// A manager for `url` with explicit timeouts: `connect_timeout` for
    /// the TCP connect, socket reads and writes `job_timeout` plus
    /// [`limits::MYSQL_IO_TIMEOUT_MARGIN_MS`].
    pub(crate) fn new(
        url: &str,
        connect_timeout: Duration,
        limits: SessionLimits,
    ) -> Result<Manager, String> {
        let opts = Opts::from_url(url).map_err(|e| format!("bad URL {}: {e}", redact(url)))?;
        let io_timeout =
            limits.job_timeout + Duration::from_millis(limits::MYSQL_IO_TIMEOUT_MARGIN_MS);
        let opts = OptsBuilder::from_opts(opts)
            .tcp_connect_timeout(Some(connect_timeout))
            .read_timeout(Some(io_timeout))
            .write_timeout(Some(io_timeout))
            .tcp_nodelay(true)
            // Never fall back to a Unix socket found by asking the server:
            // the URL says where MySQL is.
            .prefer_socket(false)
            .tcp_keepalive_time_ms(Some(10_000));
        Ok(Manager {
            opts: Opts::from(opts),
            limits,
        })
    }

    /// Opens one connection and applies the session settings.
    pub(crate) fn open(&self) -> Result<DbConn, mysql::Error> {
        let mut conn = Conn::new(self.opts.clone())?;
        let version: String = conn.query_first("SELECT VERSION()")?.unwrap_or_default();
        let timeout_ms = self.limits.job_timeout.as_millis().max(1) as u64;
        // Lock waits are whole seconds, at least 1.
        let lock_wait_s = timeout_ms.div_ceil(1000).max(1);
        let mut init = vec![
            "SET NAMES utf8mb4".to_string(),
            // Each statement sees what is committed when it starts; see
            // `jobs.rs` for why unread counters need that.
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".to_string(),
            format!("SET SESSION lock_wait_timeout = {lock_wait_s}"),
            format!("SET SESSION innodb_lock_wait_timeout = {lock_wait_s}"),
        ];
        if version.contains("MariaDB") {
            // Any statement, reads and writes alike.
            init.push(format!(
                "SET SESSION max_statement_time = {}.{:03}",
                timeout_ms / 1000,
                timeout_ms % 1000
            ));
        } else {
            // MySQL limits SELECTs only; writes are bounded by lock waits.
            init.push(format!("SET SESSION max_execution_time = {timeout_ms}"));
        }
        for statement in &init {
            conn.query_drop(statement)?;
        }
        let (sql_mode, lock_mode, step): (String, u64, u64) = conn
            .query_first(
                "SELECT @@SESSION.sql_mode, @@GLOBAL.innodb_autoinc_lock_mode, \
                 @@SESSION.auto_increment_increment",
            )?
            .unwrap_or_default();
        Ok(DbConn {
            conn,
            broken: false,
            no_backslash_escapes: sql_mode.contains("NO_BACKSLASH_ESCAPES"),
            last_used: Instant::now(),
            autoinc_step: (lock_mode <= 1).then_some(step.max(1)),
        })
    }

    /// Where the manager connects, without the password (for logs).
    pub(crate) fn describe(&self) -> String {
        describe(&self.opts)
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConn;
    type Error = mysql::Error;

    fn connect(&self) -> Result<DbConn, mysql::Error> {
        self.open()
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), mysql::Error> {
        if conn.last_used.elapsed() < Duration::from_millis(limits::MYSQL_IDLE_PING_AFTER_MS) {
            return Ok(());
        }
        conn.run(|c| c.ping())
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        conn.last_used = Instant::now();
        conn.broken
    }
}

/// r2d2's error handler: the background connector's failures, logged at
/// most once per [`limits::MYSQL_ERROR_LOG_INTERVAL_MS`] with how many
/// were not logged.
#[derive(Debug)]
pub(crate) struct ErrorLog {
    /// Where the pool connects (no password).
    pub(crate) target: String,
    /// When the last line was written (ms since `epoch`), and errors since.
    last_logged_ms: AtomicU64,
    /// Errors not logged since the last line.
    suppressed: AtomicU64,
    /// The time origin of `last_logged_ms`.
    epoch: Instant,
    /// Serialises the decision to log (errors come from several threads).
    lock: Mutex<()>,
}

impl ErrorLog {
    pub(crate) fn new(target: String) -> ErrorLog {
        ErrorLog {
            target,
            last_logged_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            epoch: Instant::now(),
            lock: Mutex::new(()),
        }
    }
}

impl r2d2::HandleError<mysql::Error> for ErrorLog {
    fn handle_error(&self, error: mysql::Error) {
        let _guard = self.lock.lock();
        let now_ms = self.epoch.elapsed().as_millis() as u64 + limits::MYSQL_ERROR_LOG_INTERVAL_MS;
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < limits::MYSQL_ERROR_LOG_INTERVAL_MS {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.last_logged_ms.store(now_ms, Ordering::Relaxed);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        let more = if suppressed > 0 {
            format!(" ({suppressed} more since the last such line)")
        } else {
            String::new()
        };
        log::warn!(
            "storage: mysql connection to {} failed: {error}{more}; retrying in the background",
            self.target
        );
    }
}

/// `user@host:port/db` of connection options (never the password).
pub(crate) fn describe(opts: &Opts) -> String {
    format!(
        "{}@{}:{}/{}",
        opts.get_user().unwrap_or(""),
        opts.get_ip_or_hostname(),
        opts.get_tcp_port(),
        opts.get_db_name().unwrap_or("")
    )
}

/// A URL fit for logs: the password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    match Opts::from_url(url) {
        Ok(opts) => format!("mysql://{}", describe(&opts)),
        Err(_) => "(unparseable mysql URL)".to_string(),
    }
}

/// A connection outside the pool, for `migrate`, `seed-demo` and checks:
/// same session settings, `job_timeout` for each statement.
pub(crate) fn connect_once(url: &str, job_timeout: Duration) -> Result<DbConn, String> {
    let manager = Manager::new(
        url,
        Duration::from_millis(limits::MYSQL_CONNECT_TIMEOUT_MS_DEFAULT),
        SessionLimits { job_timeout },
    )?;
    manager
        .open()
        .map_err(|e| format!("cannot connect to {}: {e}", manager.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: u16, state: &str, message: &str) -> mysql::Error {
        mysql::Error::MySqlError(mysql::MySqlError {
            state: state.to_string(),
            message: message.to_string(),
            code,
        })
    }

    fn check(error: mysql::Error, expected: &str) {
        assert_eq!(Redacted(&error).to_string(), expected);
    }

    #[test]
    fn redacted_server_errors_show_code_and_sqlstate_never_the_message() {
        // Racing batches on one (from, cid): the text quotes the cid.
        check(
            server_error(
                1062,
                "23000",
                "Duplicate entry '42-secret-cid' for key 'sb_messages_cid'",
            ),
            "MySQL error 1062 (SQLSTATE 23000): duplicate key",
        );
        check(
            server_error(1292, "22007", "Truncated incorrect DOUBLE value: 'tok3n'"),
            "MySQL error 1292 (SQLSTATE 22007): incorrect value for its column",
        );
        check(
            server_error(1213, "40001", "Deadlock found when trying to get lock"),
            "MySQL error 1213 (SQLSTATE 40001): deadlock, transaction rolled back",
        );
        check(
            server_error(4242, "HY000", "anything 'quoted'"),
            "MySQL error 4242 (SQLSTATE HY000): server error",
        );
        // A state that is not a SQLSTATE is not shown either.
        check(
            server_error(1062, "'42-x'", "Duplicate entry"),
            "MySQL error 1062 (SQLSTATE ?????): duplicate key",
        );
    }

    #[test]
    fn redacted_driver_errors_are_shown_as_the_driver_words_them() {
        let io = mysql::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "server disconnected",
        ));
        check(io, "IoError { server disconnected }");
        let row = mysql::Error::FromValueError(mysql::Value::from("secret text"));
        check(row, "from value conversion error");
    }
}
