//! BOSH (XEP-0124, XMPP over BOSH XEP-0206) as the `peer` scenario's
//! ejabberd client speaks it: the request bodies it sends and a scanner
//! for the few things it reads in an answer.
//!
//! The scanner is hand-written, not an XML parser: the answers come from
//! one server (ejabberd's `fxml` serializer: attributes in single quotes,
//! a message's text in a bare `<body>`), the bench reads only the outer
//! `<body>` tag's attributes, the `<message>` stanzas' `type` and text,
//! and counts of a few elements, and the texts it sends are ASCII letters
//! and digits (no escapes to undo). A general parser (quick-xml) would
//! build events for every element and attribute of every answer to find
//! the same few bytes; this finds them with a handful of `find`s, and the
//! generator's CPU per request is part of what the scenario reports.

use std::fmt::Write as _;

/// The namespace of every BOSH `<body>`.
pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// The content type of every request.
pub const CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// The login's stanzas after SASL: bind the resource `r`, start the
/// session, fetch the roster, announce presence.
pub const BIND: &str = "<iq type='set' id='b1' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>";
pub const SESSION: &str = "<iq type='set' id='s1' xmlns='jabber:client'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>";
pub const ROSTER_GET: &str =
    "<iq type='get' id='r1' xmlns='jabber:client'><query xmlns='jabber:iq:roster'/></iq>";
pub const PRESENCE: &str = "<presence xmlns='jabber:client'/>";

/// The session creation request (XEP-0124 §7.1, XEP-0206 §4): `hold=1`,
/// so the server holds at most one request and answers the older one when
/// a newer arrives.
pub fn session_request(out: &mut String, rid: u64, domain: &str, wait_s: u64) {
    out.clear();
    let _ = write!(
        out,
        "<body content='text/xml; charset=utf-8' hold='1' rid='{rid}' to='{domain}' \
         ver='1.6' wait='{wait_s}' xml:lang='en' xmpp:version='1.0' \
         xmlns='{NS_HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'/>"
    );
}

/// A request of the session carrying `payload` (stanzas, or nothing: the
/// empty body that keeps one request held).
pub fn request(out: &mut String, rid: u64, sid: &str, payload: &str) {
    out.clear();
    if payload.is_empty() {
        let _ = write!(out, "<body rid='{rid}' sid='{sid}' xmlns='{NS_HTTPBIND}'/>");
    } else {
        let _ = write!(
            out,
            "<body rid='{rid}' sid='{sid}' xmlns='{NS_HTTPBIND}'>{payload}</body>"
        );
    }
}

/// The stream restart after SASL success (XEP-0206 §5).
pub fn restart(out: &mut String, rid: u64, sid: &str, domain: &str) {
    out.clear();
    let _ = write!(
        out,
        "<body rid='{rid}' sid='{sid}' to='{domain}' xml:lang='en' xmpp:restart='true' \
         xmlns='{NS_HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'/>"
    );
}

/// SASL PLAIN with the authzid empty: base64 of `\0user\0password`.
pub fn auth_plain(user: &str, password: &str) -> String {
    let mut raw = Vec::with_capacity(user.len() + password.len() + 2);
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        base64(&raw)
    )
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                s.push(T[(n >> shift & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// One answer of the server: its text, scanned on demand.
pub struct Answer<'a> {
    text: &'a str,
    /// The outer `<body ...>` open tag (attributes only are read).
    head: &'a str,
}

/// A `<message>` stanza of an answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// Its `type` attribute (`chat`, or `error` when it bounced).
    pub kind: Option<&'a str>,
    /// The text of its `<body>`, as sent (no escapes undone).
    pub body: Option<&'a str>,
}

impl<'a> Answer<'a> {
    /// `None` when the bytes are not a BOSH `<body>` element.
    pub fn parse(bytes: &'a [u8]) -> Option<Answer<'a>> {
        let text = std::str::from_utf8(bytes).ok()?;
        let start = text.find("<body")?;
        let end = start + text[start..].find('>')?;
        Some(Answer {
            text,
            head: &text[start..end + 1],
        })
    }

    /// An attribute of the outer `<body>`.
    pub fn attr(&self, name: &str) -> Option<&'a str> {
        attr(self.head, name)
    }

    /// `Some(condition)` when the server ended the session
    /// (`type='terminate'`; an empty condition when it gave none).
    pub fn terminate(&self) -> Option<&'a str> {
        (self.attr("type") == Some("terminate")).then(|| self.attr("condition").unwrap_or(""))
    }

    /// How many times `needle` occurs after the outer `<body>` tag (e.g.
    /// `"<presence"`, `"<item "`).
    pub fn count(&self, needle: &str) -> usize {
        self.payload().matches(needle).count()
    }

    /// Whether `needle` occurs after the outer `<body>` tag.
    pub fn has(&self, needle: &str) -> bool {
        self.payload().contains(needle)
    }

    fn payload(&self) -> &'a str {
        let from = self.head.as_ptr() as usize - self.text.as_ptr() as usize + self.head.len();
        &self.text[from..]
    }

    /// The `<message>` stanzas, in order.
    pub fn messages(&self) -> impl Iterator<Item = Message<'a>> + 'a {
        let mut rest = self.payload();
        std::iter::from_fn(move || loop {
            let at = rest.find("<message")?;
            rest = &rest[at..];
            let after = rest.as_bytes().get("<message".len()).copied();
            if !matches!(after, Some(b' ' | b'>' | b'/')) {
                rest = &rest["<message".len()..];
                continue;
            }
            let open_end = rest.find('>')?;
            let open = &rest[..open_end + 1];
            let (inner, next) = if open.ends_with("/>") {
                ("", open_end + 1)
            } else {
                match rest.find("</message>") {
                    Some(close) => (&rest[open_end + 1..close], close + "</message>".len()),
                    None => (&rest[open_end + 1..], rest.len()),
                }
            };
            rest = &rest[next..];
            let body = inner.find("<body>").and_then(|b| {
                let text = &inner[b + "<body>".len()..];
                text.find("</body>").map(|e| &text[..e])
            });
            return Some(Message {
                kind: attr(open, "type"),
                body,
            });
        })
    }
}

/// The value of attribute `name` in an open tag (single or double quotes).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = tag[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before = tag.as_bytes().get(at.wrapping_sub(1)).copied();
        let rest = &tag.as_bytes()[from..];
        if !matches!(before, Some(b' ' | b'\t' | b'\n' | b'\r')) || rest.first() != Some(&b'=') {
            continue;
        }
        let quote = *rest.get(1)?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        let value = &tag[from + 2..];
        return value.find(quote as char).map(|e| &value[..e]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_sasl_plain() {
        for (input, want) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"\0user1\0pw", "AHVzZXIxAHB3"),
        ] {
            assert_eq!(base64(input), want, "{input:?}");
        }
    }

    #[test]
    fn session_answer_attributes() {
        let a = Answer::parse(
            b"<body xmpp:version='1.0' authid='7606' xmlns='http://jabber.org/protocol/httpbind' \
              sid='59fc6f' wait='60' ver='1.11' hold='1' requests='2'><stream:features>\
              <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>\
              </mechanisms></stream:features></body>",
        )
        .unwrap();
        assert_eq!(a.attr("sid"), Some("59fc6f"));
        assert_eq!(a.attr("version"), None, "only whole attribute names");
        assert_eq!(a.attr("xmpp:version"), Some("1.0"));
        assert_eq!(a.attr("requests"), Some("2"));
        assert_eq!(a.terminate(), None);
        assert!(a.has("<mechanism>PLAIN</mechanism>"));
        assert_eq!(a.messages().count(), 0);
    }

    #[test]
    fn terminate_with_and_without_condition() {
        let a = Answer::parse(b"<body type='terminate' condition='item-not-found' xmlns='x'/>")
            .unwrap();
        assert_eq!(a.terminate(), Some("item-not-found"));
        let a = Answer::parse(b"<body xmlns=\"x\" type=\"terminate\"/>").unwrap();
        assert_eq!(a.terminate(), Some(""));
        assert!(Answer::parse(b"<html>").is_none());
    }

    #[test]
    fn messages_and_presences_of_an_answer() {
        let a = Answer::parse(
            b"<body xmlns='http://jabber.org/protocol/httpbind'>\
              <presence xml:lang='en' to='user1@localhost/r' from='user2@localhost/r' xmlns='jabber:client'/>\
              <message from='user2@localhost/r' to='user1@localhost/r' type='chat' id='k1' xmlns='jabber:client'>\
              <body>k8589934593t1700000000000000xx</body></message>\
              <messages/><message type='error' from='user9@localhost'><error type='cancel'/></message>\
              <message to='a'/></body>",
        )
        .unwrap();
        let m: Vec<Message> = a.messages().collect();
        assert_eq!(
            m,
            vec![
                Message {
                    kind: Some("chat"),
                    body: Some("k8589934593t1700000000000000xx")
                },
                Message {
                    kind: Some("error"),
                    body: None
                },
                Message {
                    kind: None,
                    body: None
                },
            ]
        );
        assert_eq!(a.count("<presence"), 1);
        assert_eq!(a.terminate(), None);
    }

    #[test]
    fn requests_as_sent() {
        let mut s = String::new();
        session_request(&mut s, 7, "localhost", 60);
        assert!(s.starts_with(
            "<body content='text/xml; charset=utf-8' hold='1' rid='7' to='localhost'"
        ));
        assert!(s.contains(" wait='60' "));
        request(&mut s, 8, "abc", "");
        assert_eq!(
            s,
            "<body rid='8' sid='abc' xmlns='http://jabber.org/protocol/httpbind'/>"
        );
        request(&mut s, 9, "abc", "<presence/>");
        assert_eq!(
            s,
            "<body rid='9' sid='abc' xmlns='http://jabber.org/protocol/httpbind'><presence/></body>"
        );
        restart(&mut s, 10, "abc", "localhost");
        assert!(s.contains("xmpp:restart='true'"));
        assert_eq!(
            auth_plain("user1", "pw"),
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AHVzZXIxAHB3</auth>"
        );
    }
}
