//! The browser client served by every server, demo mode or not:
//! `GET /client/switchboard.js`, `.mjs` and `.d.ts` over real sockets,
//! their headers, `ETag` and `If-None-Match`, the methods and paths that
//! are not them; and the npm package's version (`clients/js/package.json`)
//! against the crate's.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// `clients/js/` in the repository.
fn clients_js() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/js")
}

/// The client files: path, content type, file name.
const FILES: [(&str, &str, &str); 3] = [
    (
        "/client/switchboard.js",
        "text/javascript; charset=utf-8",
        "switchboard.js",
    ),
    (
        "/client/switchboard.mjs",
        "text/javascript; charset=utf-8",
        "switchboard.mjs",
    ),
    (
        "/client/switchboard.d.ts",
        "text/plain; charset=utf-8",
        "switchboard.d.ts",
    ),
];

fn raw(server: &Server, method: &str, target: &str, headers: &str) -> Answer {
    request(
        server.addr,
        &format!("{method} {target} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"),
    )
}

/// A server whose users come from a directory file: demo mode is then
/// off by default (auto), as on a real site.
fn start_with_directory(name: &str) -> (Server, PathBuf) {
    let dir = temp_dir(name);
    let file = dir.join("users.json");
    std::fs::write(
        &file,
        r#"{"users":[{"id":1,"name":"ann"},{"id":2,"name":"ben"}],"friendships":[[1,2]]}"#,
    )
    .unwrap();
    let server = Server::start(
        &dir.join("data"),
        &[("SWITCHBOARD_DIRECTORY", file.to_str().unwrap())],
    );
    (server, dir)
}

#[test]
fn the_client_is_served_with_demo_mode_off() {
    let (server, dir) = start_with_directory("client-files");
    // Demo mode is off: its pages are not there.
    for target in ["/demo/", "/demo/switchboard.js"] {
        assert_eq!(raw(&server, "GET", target, "").status, 404, "{target}");
    }
    let header = format!("/*! switchboard client {} */\n", env!("CARGO_PKG_VERSION"));
    let mut tags = Vec::new();
    for (path, content_type, name) in FILES {
        let a = raw(&server, "GET", path, "");
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert_eq!(a.headers["content-type"], content_type, "{path}");
        assert_eq!(a.headers["cache-control"], "public, no-cache", "{path}");
        assert_eq!(a.headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(a.headers["access-control-allow-origin"], "*", "{path}");
        // The repository's file, byte for byte, with its version.
        let file = std::fs::read_to_string(clients_js().join(name)).unwrap();
        assert_eq!(a.body, file, "{path}");
        assert_eq!(a.headers["content-length"], file.len().to_string());
        assert!(a.body.starts_with(&header), "{path}: {header:?}");
        let etag = a.headers["etag"].clone();
        assert!(
            etag.len() == 34 && etag.starts_with('"') && etag.ends_with('"'),
            "{path}: a strong ETag: {etag}"
        );
        // The same tag on every answer (one process, one file).
        assert_eq!(raw(&server, "GET", path, "").headers["etag"], etag);
        // A callback does not make it JSONP.
        let jsonp = raw(&server, "GET", &format!("{path}?callback=cb"), "");
        assert_eq!((jsonp.status, jsonp.body), (200, file));
        tags.push(etag);
    }
    let distinct: std::collections::HashSet<&String> = tags.iter().collect();
    assert_eq!(distinct.len(), 3, "{tags:?}");
    // The script reports the same version at run time.
    let js = raw(&server, "GET", "/client/switchboard.js", "").body;
    assert!(js.contains(&format!("var VERSION = '{}';", env!("CARGO_PKG_VERSION"))));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn if_none_match_is_answered_304_and_the_connection_goes_on() {
    let dir = temp_dir("client-304");
    let server = Server::start(&dir, &[("SWITCHBOARD_DEMO", "off")]);
    let path = "/client/switchboard.js";
    let etag = raw(&server, "GET", path, "").headers["etag"].clone();
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"nope\", {etag}"),
        "*".to_string(),
    ] {
        let a = raw(&server, "GET", path, &format!("If-None-Match: {inm}\r\n"));
        assert_eq!(a.status, 304, "{inm}");
        assert_eq!(a.body, "", "{inm}");
        assert_eq!(a.headers["etag"], etag, "{inm}");
        assert_eq!(a.headers["cache-control"], "public, no-cache");
        assert!(!a.headers.contains_key("content-type"), "{inm}");
        assert!(!a.headers.contains_key("content-length"), "{inm}");
        assert!(a.closed, "Connection: close is honoured");
    }
    // Another file's tag, or a stale one, gets the file.
    let mjs_tag = raw(&server, "GET", "/client/switchboard.mjs", "").headers["etag"].clone();
    for inm in [mjs_tag.as_str(), "\"0123\"", etag.trim_matches('"')] {
        let a = raw(&server, "GET", path, &format!("If-None-Match: {inm}\r\n"));
        assert_eq!(a.status, 200, "{inm}");
        assert!(a.body.starts_with("/*! switchboard client"), "{inm}");
    }
    // Keep-alive: a 304 has no body, and the next answer on the same
    // connection is read right after it.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n\
         GET /ping HTTP/1.1\r\nHost: t\r\n\r\n\
         GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let a = read_answer_from(&mut s, &mut buf);
    assert_eq!((a.status, a.body.as_str()), (304, ""));
    let a = read_answer_from(&mut s, &mut buf);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, r#"{"ok":true}"#);
    let a = read_answer_from(&mut s, &mut buf);
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["etag"], etag);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// As on every path (docs/protocol.md, "Transport and envelope"): `HEAD` and other methods are
/// `405` with `Allow`; a name that is not a client file is `404`.
#[test]
fn other_methods_and_paths() {
    let dir = temp_dir("client-methods");
    let server = Server::start(&dir, &[("SWITCHBOARD_DEMO", "off")]);
    for method in ["POST", "PUT", "DELETE"] {
        let a = raw(
            &server,
            method,
            "/client/switchboard.js",
            "Content-Length: 0\r\n",
        );
        assert_eq!(a.status, 405, "{method}");
        assert_eq!(a.headers["allow"], "GET", "{method}");
        assert_eq!(a.headers["cache-control"], "no-store", "{method}");
        assert!(!a.headers.contains_key("etag"), "{method}");
        assert!(a.body.contains("bad_request"), "{method}: {}", a.body);
    }
    // HEAD: the same 405, without its body (the answer's head is all
    // there is before the server closes).
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"HEAD /client/switchboard.js HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 405 ") && answer.contains("\r\nAllow: GET\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with("\r\n\r\n"), "no body: {answer}");
    for target in [
        "/client/",
        "/client",
        "/client/nope.js",
        "/client/switchboard.js/",
        "/client/../connect",
        "/client/Switchboard.js",
    ] {
        let a = raw(&server, "GET", target, "");
        assert_eq!(a.status, 404, "{target}");
        assert!(a.body.contains("not_found"), "{target}: {}", a.body);
        let a = raw(&server, "POST", target, "Content-Length: 0\r\n");
        assert_eq!(a.status, 404, "404 before 405: {target}");
    }
    // Not on the admin listener.
    let a = server.admin_call("GET", "/client/switchboard.js", &[]);
    assert_eq!(a.status, 404);
    // Counted under their own endpoint.
    let before = client_ok(&server);
    raw(&server, "GET", "/client/switchboard.mjs", "");
    raw(&server, "GET", "/client/nope", "");
    eventually(Duration::from_secs(5), "counted", || {
        client_ok(&server) == before + 1
    });
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `switchboard_requests_total{endpoint="client",outcome="ok"}`, summed
/// over shards.
fn client_ok(server: &Server) -> u64 {
    let metrics = server.admin_call("GET", "/metrics", &[]);
    assert_eq!(metrics.status, 200);
    metrics
        .body
        .lines()
        .filter(|l| {
            l.starts_with("switchboard_requests_total{")
                && l.contains("endpoint=\"client\"")
                && l.contains("outcome=\"ok\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// With demo mode on, `/demo/` serves the same bytes as `/client/` (with
/// the demo's `no-store`), and `/client/` is there too.
#[test]
fn the_demo_serves_the_same_bytes() {
    let dir = temp_dir("client-demo");
    let server = Server::start(&dir, &[("SWITCHBOARD_DEMO", "on")]);
    for (path, content_type, name) in FILES {
        let client = raw(&server, "GET", path, "");
        let demo = raw(&server, "GET", &format!("/demo/{name}"), "");
        assert_eq!((client.status, demo.status), (200, 200), "{name}");
        assert_eq!(client.body, demo.body, "{name}");
        assert_eq!(demo.headers["content-type"], content_type, "{name}");
        assert_eq!(demo.headers["cache-control"], "no-store", "{name}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `clients/js/package.json`: the npm package carries the crate's version
/// (the files' header comment does too, checked above), and points at
/// files that exist.
#[test]
fn the_npm_package_has_the_crate_version() {
    let text = std::fs::read_to_string(clients_js().join("package.json")).unwrap();
    let package: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(package["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(package["license"], "MIT OR Apache-2.0");
    assert!(
        package.get("dependencies").is_none(),
        "the client has no dependencies"
    );
    for key in ["main", "module", "types"] {
        let file = package[key].as_str().unwrap_or_else(|| panic!("{key}"));
        assert!(clients_js().join(file).is_file(), "{key}: {file}");
    }
    let files: Vec<&str> = package["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for (_, _, name) in FILES {
        assert!(files.contains(&name), "`files` lists {name}");
    }
}
