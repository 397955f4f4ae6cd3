//! Demo mode: the chat demo's static files, embedded in the binary so that
//! `cargo run` followed by opening the printed URL just works, and the
//! token minting a demo needs (`/demo/login?user=ID`: anyone may sign in as
//! anyone, which is why it exists only in demo mode).
//!
//! Paths (client listener, `GET` only; every other `/demo/...` path, and
//! every path when demo mode is off, is `404 not_found` like any unknown
//! path):
//!
//! | path | answer |
//! | --- | --- |
//! | `/`, `/demo` | a small HTML page sending the browser to `/demo/` |
//! | `/demo/` | the demo page (`clients/demo/index.html`) |
//! | `/demo/demo.css`, `/demo/demo.js` | its style and script |
//! | `/demo/switchboard.js`, `/demo/switchboard.mjs`, `/demo/switchboard.d.ts` | the client library (`clients/js/`), the same bytes every server serves under `/client/` (`switchboard_io::client`) |
//! | `/demo/users` | `{"ok":true,"users":[{"id":1,"name":"alice","friends":[2,3]},...]}` (empty when the directory is not known here, e.g. MySQL) |
//! | `/demo/login?user=ID` | `{"ok":true,"token":"...","user":{"id":ID,"name":"..."}}`; a user not in a known directory is `404 not_found`, a missing or bad `user` `400 bad_request` |
//!
//! Static answers carry their content type, `Cache-Control: no-store` (as
//! every answer: the files change with the binary, and they are small) and
//! `X-Content-Type-Options: nosniff`. None is ever JSONP.

use switchboard_io::{client, DemoUser, Reply};
use switchboard_shards::model::{ErrorCode, Response, UserId};
use switchboard_storage::{token, Directory};

/// How long a demo token is valid.
pub const DEMO_TOKEN_TTL_S: u64 = 24 * 3600;

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = client::JAVASCRIPT;
const TS: &str = client::TYPESCRIPT;

/// The page at `/` and `/demo`: there is no redirect in `Reply`, and a
/// meta refresh plus a link does the same for a browser.
const TO_DEMO: &str = "<!doctype html><meta charset=utf-8><title>Switchboard</title>\
<meta http-equiv=refresh content=\"0; url=/demo/\">\
<p>Switchboard is running. The chat demo is at <a href=\"/demo/\">/demo/</a>.</p>\n";

/// Every embedded file: path, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    ("/", HTML, TO_DEMO.as_bytes()),
    ("/demo", HTML, TO_DEMO.as_bytes()),
    (
        "/demo/",
        HTML,
        include_bytes!("../../clients/demo/index.html"),
    ),
    (
        "/demo/demo.css",
        CSS,
        include_bytes!("../../clients/demo/demo.css"),
    ),
    (
        "/demo/demo.js",
        JS,
        include_bytes!("../../clients/demo/demo.js"),
    ),
    // The client library: the same bytes as `/client/...` (io embeds
    // them; see `switchboard_io::client`).
    ("/demo/switchboard.js", JS, client::FILES[0].body),
    ("/demo/switchboard.mjs", JS, client::FILES[1].body),
    ("/demo/switchboard.d.ts", TS, client::FILES[2].body),
];

/// What demo mode knows: who may be picked on the sign-in page.
#[derive(Debug)]
pub struct Demo {
    /// The directory the picker offers and `/demo/login` checks; `None`
    /// when it is not known to the engine (a MySQL directory): then any
    /// user id may sign in and the picker asks for an id.
    directory: Option<Directory>,
}

impl Demo {
    /// Demo mode over `directory` (see [`Demo::directory`]).
    pub fn new(directory: Option<Directory>) -> Demo {
        Demo { directory }
    }

    /// Answers a demo path. `now_s` is unix seconds (token expiry).
    pub fn answer(&self, path: &str, user: Option<UserId>, secret: &[u8], now_s: u64) -> Reply {
        if let Some((_, content_type, body)) = FILES.iter().find(|(p, _, _)| *p == path) {
            return Reply::File { content_type, body };
        }
        match path {
            "/demo/users" => Reply::DemoUsers(self.users()),
            "/demo/login" => self.login(user, secret, now_s),
            _ => not_found(),
        }
    }

    /// The directory's users with their friends (none when the directory
    /// is not known here).
    fn users(&self) -> Vec<DemoUser> {
        let Some(d) = &self.directory else {
            return Vec::new();
        };
        d.users()
            .map(|(id, name)| DemoUser {
                id,
                name: name.to_string(),
                friends: d.friends(id).iter().map(|f| f.id).collect(),
            })
            .collect()
    }

    fn login(&self, user: Option<UserId>, secret: &[u8], now_s: u64) -> Reply {
        let Some(user) = user else {
            return Reply::Shard(Response::fail(
                ErrorCode::BadRequest,
                "parameter `user` must be a user id (a positive whole number)",
            ));
        };
        let name = match &self.directory {
            Some(d) => match d.name(user) {
                Some(name) => name.to_string(),
                None => {
                    return Reply::Shard(Response::fail(ErrorCode::NotFound, "no such demo user"))
                }
            },
            None => format!("user {user}"),
        };
        Reply::DemoToken {
            token: token::mint(secret, user, now_s + DEMO_TOKEN_TTL_S),
            user,
            name,
        }
    }
}

/// The answer for a path that does not exist (the same as `io`'s).
pub fn not_found() -> Reply {
    Reply::Shard(Response::fail(ErrorCode::NotFound, "no such path"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchboard_io::response::{Encoder, Persist};
    use switchboard_io::DemoUser;
    use switchboard_io::{Listener, Mode};

    use super::*;

    /// The status and body `io` sends for `reply`, read back from the bytes
    /// it encodes (the status from the `HTTP/1.1 NNN` line, so an encoder
    /// writing another status than the one decided is caught).
    fn body(reply: &Reply) -> (u16, String) {
        let mut out = Vec::new();
        let persist = Persist {
            keep_alive: true,
            http10: false,
        };
        let date = [b'D'; 29];
        Encoder::new(Listener::Client).reply(&mut out, reply, &Mode::Json, persist, false, &date);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status_line = head.lines().next().unwrap();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        (status, body.to_string())
    }

    /// The JSON value of a demo answer's body (it must parse).
    fn json(reply: &Reply) -> serde_json::Value {
        let (status, text) = body(reply);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
    }

    #[test]
    fn files_users_login() {
        let demo = Demo::new(Some(Directory::demo()));
        let secret = b"s";
        for path in [
            "/",
            "/demo",
            "/demo/",
            "/demo/demo.js",
            "/demo/switchboard.js",
        ] {
            let reply = demo.answer(path, None, secret, 0);
            assert!(matches!(reply, Reply::File { .. }), "{path}");
            assert_eq!(body(&reply).0, 200, "{path}");
        }
        let Reply::File { content_type, .. } = demo.answer("/demo/demo.css", None, secret, 0)
        else {
            panic!()
        };
        assert_eq!(content_type, CSS);
        assert_eq!(body(&demo.answer("/demo/nope", None, secret, 0)).0, 404);
        let (status, users) = body(&demo.answer("/demo/users", None, secret, 0));
        assert_eq!(status, 200);
        assert!(
            users.starts_with(
                "{\"ok\":true,\"users\":[{\"id\":1,\"name\":\"alice\",\"friends\":[2,3]}"
            ),
            "{users}"
        );
        let (status, login) = body(&demo.answer("/demo/login", Some(2), secret, 100));
        assert_eq!(status, 200);
        let want = token::mint(secret, 2, 100 + DEMO_TOKEN_TTL_S);
        assert_eq!(
            login,
            format!("{{\"ok\":true,\"token\":\"{want}\",\"user\":{{\"id\":2,\"name\":\"bob\"}}}}")
        );
        assert_eq!(
            body(&demo.answer("/demo/login", Some(99), secret, 0)).0,
            404
        );
        assert_eq!(body(&demo.answer("/demo/login", None, secret, 0)).0, 400);
        // A directory the engine does not hold: any id, a made-up name.
        let open = Demo::new(None);
        assert_eq!(
            body(&open.answer("/demo/users", None, secret, 0)).1,
            "{\"ok\":true,\"users\":[]}"
        );
        assert_eq!(
            body(&open.answer("/demo/login", Some(99), secret, 0)).0,
            200
        );
    }

    /// Names are JSON strings whatever they hold: quotes, backslashes,
    /// `</script>`, U+2028/U+2029 (valid in JSON, not in old JavaScript),
    /// characters outside the BMP, and control characters. A directory
    /// refuses control characters in names, so those are given to the
    /// encoder directly; the others also come through a directory.
    #[test]
    fn demo_json_round_trips_names_with_any_characters() {
        let odd = "a\"b\\c</script>\u{2028}\u{2029}é😀";
        let control = "x\n\r\t\u{0}\u{1}\u{1f}\u{7f}\u{85}\u{2028}y";
        let text = format!(
            r#"{{"users":[{{"id":1,"name":{}}},{{"id":2,"name":"bob"}}],"friendships":[[1,2]]}}"#,
            serde_json::to_string(odd).unwrap()
        );
        let demo = Demo::new(Some(Directory::from_json(&text).unwrap()));
        let secret = b"s";
        assert_eq!(
            json(&demo.answer("/demo/users", None, secret, 0)),
            json!({"ok": true, "users": [
                {"id": 1, "name": odd, "friends": [2]},
                {"id": 2, "name": "bob", "friends": [1]},
            ]})
        );
        let login = json(&demo.answer("/demo/login", Some(1), secret, 0));
        assert_eq!(login["user"], json!({"id": 1, "name": odd}));

        for name in [odd, control] {
            let users = Reply::DemoUsers(vec![DemoUser {
                id: 7,
                name: name.to_string(),
                friends: vec![],
            }]);
            assert_eq!(
                json(&users),
                json!({"ok": true, "users": [{"id": 7, "name": name, "friends": []}]})
            );
            let token = Reply::DemoToken {
                token: "t\"\u{2029}".to_string(),
                user: 7,
                name: name.to_string(),
            };
            assert_eq!(
                json(&token),
                json!({"ok": true, "token": "t\"\u{2029}", "user": {"id": 7, "name": name}})
            );
        }
    }
}
