//! The browser client (`clients/js/`), embedded in the binary and served
//! by every server on the client listener, demo mode or not, so that a
//! site loads the client from the chat server it talks to (the versions
//! always match):
//!
//! | path | content type |
//! | --- | --- |
//! | `/client/switchboard.js` | `text/javascript; charset=utf-8` (the classic script) |
//! | `/client/switchboard.mjs` | `text/javascript; charset=utf-8` (the ES module; it imports `./switchboard.js`) |
//! | `/client/switchboard.d.ts` | `text/plain; charset=utf-8` (TypeScript declarations) |
//!
//! `GET` only (another method, `HEAD` included, is `405` with
//! `Allow: GET`, as on every path), never JSONP; any other `/client/...`
//! path is `404 not_found`. Each answer carries a strong `ETag` (the first
//! 16 bytes of the SHA-256 of the file, in hex, computed once per process)
//! and [`CACHE_CONTROL`]; a request whose `If-None-Match` names that tag
//! (or is `*`) is answered `304 Not Modified` without a body. The answers
//! also carry `X-Content-Type-Options: nosniff` and
//! `Access-Control-Allow-Origin: *` (a page on another origin may load the
//! module with `<script type="module">`, which fetches with CORS).
//!
//! Each file starts with `/*! switchboard client VERSION */`, the crate
//! version (checked by a test against `CARGO_PKG_VERSION`).

use std::sync::LazyLock;

use sha2::{Digest, Sha256};

/// The `Cache-Control` of a client file: browsers and proxies may keep it
/// but revalidate it before each use with `If-None-Match` (a `304` while it
/// is unchanged, the new file right after an upgrade): a page never runs a
/// client older than its server, nor the module of one version and the
/// script of another.
pub const CACHE_CONTROL: &str = "public, no-cache";

/// Where the client files are served.
pub const PREFIX: &str = "/client/";

/// One embedded client file.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientFile {
    /// Its name under [`PREFIX`] (and in `clients/js/`).
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
    /// Its place in [`FILES`] (for its ETag).
    index: usize,
}

/// The content type of the scripts.
pub const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
/// The content type of the TypeScript declarations: plain text (there is
/// no registered type for TypeScript; a browser shows it, never runs it).
pub const TYPESCRIPT: &str = "text/plain; charset=utf-8";

/// The client files, in the order of their ETags.
pub static FILES: [ClientFile; 3] = [
    ClientFile {
        name: "switchboard.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("../../clients/js/switchboard.js"),
        index: 0,
    },
    ClientFile {
        name: "switchboard.mjs",
        content_type: JAVASCRIPT,
        body: include_bytes!("../../clients/js/switchboard.mjs"),
        index: 1,
    },
    ClientFile {
        name: "switchboard.d.ts",
        content_type: TYPESCRIPT,
        body: include_bytes!("../../clients/js/switchboard.d.ts"),
        index: 2,
    },
];

/// The ETags of [`FILES`], computed on first use.
static ETAGS: LazyLock<[String; 3]> = LazyLock::new(|| FILES.each_ref().map(|f| etag_of(f.body)));

/// A strong entity tag for `body`: `"` + 32 hex digits (128 bits of its
/// SHA-256) + `"`.
fn etag_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut tag = String::with_capacity(34);
    tag.push('"');
    for b in &digest[..16] {
        tag.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        tag.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    tag.push('"');
    tag
}

impl ClientFile {
    /// Its path on the client listener.
    pub fn path(&self) -> String {
        format!("{PREFIX}{}", self.name)
    }

    /// Its `ETag` value, quotes included.
    pub fn etag(&self) -> &'static str {
        &ETAGS[self.index]
    }

    /// Whether an `If-None-Match` value names this file's tag: `*`, or a
    /// comma-separated list holding the tag (weak comparison, as RFC 9110
    /// §13.1.2 asks: `W/"..."` matches too).
    pub fn not_modified(&self, if_none_match: Option<&[u8]>) -> bool {
        let Some(value) = if_none_match else {
            return false;
        };
        let tag = self.etag().as_bytes();
        value.split(|&b| b == b',').any(|one| {
            let one = one.trim_ascii();
            let one = one.strip_prefix(b"W/").unwrap_or(one);
            one == b"*" || one == tag
        })
    }
}

/// The client file at `path`, if `path` is one.
pub fn find(path: &str) -> Option<&'static ClientFile> {
    let name = path.strip_prefix(PREFIX)?;
    FILES.iter().find(|f| f.name == name)
}

/// Whether `path` is under [`PREFIX`] (a client file, or a `404`).
pub fn is_client_path(path: &str) -> bool {
    path.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header every file starts with: the crate's version, so that a
    /// copy found in a cache or a bundle says which server it came from.
    #[test]
    fn every_file_starts_with_the_crate_version() {
        let header = format!("/*! switchboard client {} */\n", env!("CARGO_PKG_VERSION"));
        for f in &FILES {
            let text = std::str::from_utf8(f.body).unwrap();
            assert!(
                text.starts_with(&header),
                "{} must start with {header:?}",
                f.name
            );
        }
        // The version the script reports at run time is the same.
        let js = std::str::from_utf8(FILES[0].body).unwrap();
        let var = format!("var VERSION = '{}';", env!("CARGO_PKG_VERSION"));
        assert!(js.contains(&var), "switchboard.js must hold {var:?}");
    }

    #[test]
    fn etags_are_strong_distinct_and_match_if_none_match() {
        let tags: Vec<&str> = FILES.iter().map(ClientFile::etag).collect();
        for t in &tags {
            assert_eq!(t.len(), 34, "{t}");
            assert!(t.starts_with('"') && t.ends_with('"'), "{t}");
        }
        assert_ne!(tags[0], tags[1]);
        assert_ne!(tags[1], tags[2]);
        let js = &FILES[0];
        let tag = js.etag();
        assert!(js.not_modified(Some(tag.as_bytes())));
        assert!(js.not_modified(Some(format!("W/{tag}").as_bytes())));
        assert!(js.not_modified(Some(format!("\"x\", {tag} ").as_bytes())));
        assert!(js.not_modified(Some(b"*")));
        assert!(!js.not_modified(None));
        assert!(!js.not_modified(Some(b"\"x\"")));
        assert!(!js.not_modified(Some(tags[1].as_bytes())));
        // Unquoted, the tag is not the tag.
        assert!(!js.not_modified(Some(tag.trim_matches('"').as_bytes())));
    }

    #[test]
    fn paths() {
        assert_eq!(
            find("/client/switchboard.js").map(|f| f.name),
            Some("switchboard.js")
        );
        assert_eq!(
            find("/client/switchboard.d.ts").map(|f| f.content_type),
            Some(TYPESCRIPT)
        );
        assert!(find("/client/").is_none());
        assert!(find("/client/../connect").is_none());
        assert!(find("/demo/switchboard.js").is_none());
        assert_eq!(FILES[2].path(), "/client/switchboard.d.ts");
        assert!(is_client_path("/client/nope"));
        assert!(!is_client_path("/client"));
    }
}
