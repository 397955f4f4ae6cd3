//! Demo mode over real sockets: the embedded pages, `/demo/login`, and
//! that demo paths do not exist when demo mode is off.

mod common;

use common::*;

fn get_raw(server: &Server, target: &str) -> Answer {
    request(
        server.addr,
        &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn demo_pages_and_login() {
    let dir = temp_dir("demo-on");
    let server = Server::start(&dir, &[]);
    for (target, content_type, piece) in [
        ("/", "text/html; charset=utf-8", "/demo/"),
        ("/demo", "text/html; charset=utf-8", "/demo/"),
        ("/demo/", "text/html; charset=utf-8", "<!doctype html>"),
        ("/demo/demo.css", "text/css; charset=utf-8", "{"),
        (
            "/demo/demo.js",
            "text/javascript; charset=utf-8",
            "Switchboard",
        ),
        (
            "/demo/switchboard.js",
            "text/javascript; charset=utf-8",
            "Switchboard",
        ),
        (
            "/demo/switchboard.mjs",
            "text/javascript; charset=utf-8",
            "export",
        ),
        // A callback does not make it JSONP.
        (
            "/demo/?callback=cb",
            "text/html; charset=utf-8",
            "<!doctype html>",
        ),
    ] {
        let a = get_raw(&server, target);
        assert_eq!(a.status, 200, "{target}");
        assert_eq!(a.headers["content-type"], content_type, "{target}");
        assert_eq!(a.headers["x-content-type-options"], "nosniff", "{target}");
        assert_eq!(a.headers["cache-control"], "no-store", "{target}");
        assert!(a.body.contains(piece), "{target}: {}", a.body);
    }
    assert_eq!(get_raw(&server, "/demo/nope").status, 404);
    assert_eq!(get_raw(&server, "/demo/../connect").status, 404);
    let post = request(
        server.addr,
        "POST /demo/login?user=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(post.status, 405);

    let users = server.get("/demo/users", &[]);
    assert_eq!(users["users"][0]["name"], "alice");
    assert_eq!(users["users"][0]["friends"], serde_json::json!([2, 3]));

    // The minted token signs in, as that user.
    let login = server.get("/demo/login", &[("user", "2"), ("callback", "cb")]);
    assert_eq!(login["ok"], true, "{login}");
    assert_eq!(login["user"]["name"], "bob");
    let token = login["token"].as_str().unwrap();
    let connect = server.get("/connect", &[("token", token)]);
    assert_eq!(connect["ok"], true, "{connect}");
    assert_eq!(connect["user"]["id"], 2);

    let (status, body) = server.get_status("/demo/login", &[("user", "99")]);
    assert_eq!(status, 404, "{body}");
    let (status, body) = server.get_status("/demo/login", &[("user", "x")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_request"));
}

#[test]
fn demo_paths_are_404_when_demo_mode_is_off() {
    let dir = temp_dir("demo-off");
    let server = Server::start(&dir, &[("SWITCHBOARD_DEMO", "0")]);
    for target in [
        "/",
        "/demo",
        "/demo/",
        "/demo/demo.js",
        "/demo/login?user=1",
    ] {
        let a = get_raw(&server, target);
        assert_eq!(a.status, 404, "{target}");
        assert!(a.body.contains("not_found"), "{target}: {}", a.body);
    }
    // The API is unaffected.
    assert_eq!(server.get("/ping", &[])["ok"], true);
}
