//! A fresh MySQL database per test, on the server of
//! `SWITCHBOARD_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`):
//! migrated, with two users who are friends (alice 1, bob 2). Without
//! MySQL a test is skipped with a banner, or fails under `CI=true`.

use mysql::prelude::Queryable;
use std::sync::atomic::{AtomicU64, Ordering};
use switchboard_storage::{MysqlConfig, Store};

/// A fresh, migrated database with two users who are friends.
pub struct Db {
    /// The server's URL, without a database.
    server: String,
    /// This test's database, dropped with the `Db`.
    name: String,
    /// The URL of this test's database.
    pub url: String,
}

impl Db {
    pub fn create_or_skip(test: &str) -> Option<Db> {
        match Db::create() {
            Ok(db) => Some(db),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
                panic!("CI=true: the MySQL tests must run, but MySQL is unusable: {e}")
            }
            Err(e) => {
                // Straight to the process's stderr: the test harness
                // captures `eprintln!` of passing tests, and this must show.
                use std::io::Write as _;
                static BANNER: std::sync::Once = std::sync::Once::new();
                let mut err = std::io::stderr().lock();
                BANNER.call_once(|| {
                    let bar = "!".repeat(78);
                    let _ = writeln!(
                        err,
                        "\n{bar}\n!! MySQL tests SKIPPED: {e}\n!! Start MariaDB (see .ci/run) \
                         or set SWITCHBOARD_TEST_MYSQL_URL; under CI=true they fail.\n{bar}"
                    );
                });
                let _ = writeln!(err, "!! SKIPPED {test} (no MySQL)");
                None
            }
        }
    }

    pub fn create() -> Result<Db, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let server = std::env::var("SWITCHBOARD_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
        let server = match server.split_once("://") {
            Some((s, rest)) => format!("{s}://{}", rest.split('/').next().unwrap()),
            None => server,
        };
        let name = format!(
            "sb_stest_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let opts = mysql::OptsBuilder::from_opts(
            mysql::Opts::from_url(&server).map_err(|e| e.to_string())?,
        )
        .tcp_connect_timeout(Some(std::time::Duration::from_secs(3)))
        .prefer_socket(false);
        let mut c = mysql::Conn::new(opts).map_err(|e| format!("{server}: {e}"))?;
        c.query_drop(format!("DROP DATABASE IF EXISTS {name}"))
            .and_then(|()| c.query_drop(format!("CREATE DATABASE {name}")))
            .map_err(|e| e.to_string())?;
        let db = Db {
            url: format!("{server}/{name}"),
            server,
            name,
        };
        switchboard_storage::mysql::migrate(&db.url)?;
        let mut c = db.conn();
        for ddl in switchboard_storage::mysql::schema::DIRECTORY_TABLES {
            c.query_drop(ddl).unwrap();
        }
        c.query_drop("INSERT INTO users VALUES (1,'alice'),(2,'bob')")
            .unwrap();
        c.query_drop("INSERT INTO friendships VALUES (1,2),(2,1)")
            .unwrap();
        Ok(db)
    }

    pub fn conn(&self) -> mysql::Conn {
        mysql::Conn::new(mysql::Opts::from_url(&self.url).unwrap()).unwrap()
    }

    pub fn open(&self, batch_wait_ms: u64) -> Store {
        let mut config = MysqlConfig::new(&self.url);
        config.pool_size = 4;
        config.write_batch_wait_ms = batch_wait_ms;
        Store::open_mysql(config).expect("open")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Ok(opts) = mysql::Opts::from_url(&self.server) {
            if let Ok(mut c) = mysql::Conn::new(opts) {
                let _ = c.query_drop(format!("DROP DATABASE IF EXISTS {}", self.name));
            }
        }
    }
}
