#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/, from real
requests of the protocol: the README's walkthrough, docs/protocol.md, and
the tables of io's tests. Each file carries the target's selector bytes
first (see the target's doc comment). Re-run after editing; the files are
named by content, so unchanged seeds keep their names."""

import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SID = "42-0123456789abcdef0011223344556677"
SA = "1-00112233445566778899aabbccddeeff"
TOKEN = "1.1795683713.0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"


def get(target, extra=""):
    return f"GET {target} HTTP/1.1\r\nHost: localhost:8080\r\n{extra}\r\n"


def post_form(path, body, extra=""):
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body.encode())}\r\n{extra}\r\n{body}"
    )


# Requests, as clients send them.
REQUESTS = [
    get(f"/connect?token={TOKEN}&tab=main"),
    get(f"/connect?token={TOKEN}&callback=f"),
    get(f"/poll?sid={SID}&since=0&wait=10"),
    get(f"/poll?sid={SID}&since=3&wait=10&callback=cb"),
    get(f"/send?sid={SA}&to=2&text=hello+bob&cid=c1"),
    get(f"/history?sid={SA}&with=2&callback=onHistory"),
    get(f"/history?sid={SID}&with=3&before=9&limit=100"),
    get(f"/read?sid={SID}&with=2&upto=1"),
    get(f"/typing?sid={SID}&to=2&state=typing"),
    get(f"/presence?sid={SID}&status=away"),
    get(f"/ui?sid={SID}&state=%7B%22open%22%3A%5B2%5D%7D&callback=a.b"),
    get(f"/leave?sid={SID}"),
    get("/ping", "Connection: close\r\n"),
    get("/ping?callback=a..b"),
    get("/demo/login?user=1"),
    get("/health", "Authorization: Bearer s3cret\r\n"),
    "POST /kick?user=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 0\r\n\r\n",
    "POST /trace?user=5&level=debug HTTP/1.1\r\nHost: x\r\n\r\n",
    post_form("/send", f"sid={SID}&to=7&text=h%C3%A9llo+"),
    post_form("/send?callback=f", f"sid={SID}&to=7&text=hi+there", "Expect: 100-continue\r\n"),
    "POST /ui?callback=a.b HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    f"Transfer-Encoding: chunked\r\n\r\n2b\r\nsid={SID}&sta\r\n10;x=y\r\nte=%7B%22a%22%3A1%7D\r\n0\r\nT: v\r\n\r\n",
    "GET /connect?token=1.2.abc&tab=t-1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /ping HTTP/1.1\r\nHost: y\r\n\r\n",
    "\r\nHEAD http://h/read?sid=1&with=2&upto=3 HTTP/1.1\nHost: h\n\n",
    "GET HTTPS://example.com?a=b HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 000\r\n\r\n",
    "POST /send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    # Malformed, from head.rs's table.
    "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  folded\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n",
    "POST /send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n",
]

# Query strings and form bodies (query target: `[mode, query 0xff body]`).
FORMS = [
    (f"sid={SID}&since=3&wait=10&callback=cb", None),
    ("", f"sid={SID}&to=7&text=h%C3%A9llo+"),
    ("callback=f", f"sid={SID}&to=7&text=hi+there&cid=c%201"),
    ("a=x+y%20z&b=%e2%82%ac", None),
    ("sid=1&sid=2", None),
    ("sid=1", "sid=1"),
    ("%zz=1&text=%4", None),
    ("%ff=1&to=%C3%28", None),
    ("&&=&text&tab==", None),
    ("state=%7B%22a%22%3A1%7D&user=05&level=debug", None),
]

# Callback names (callback target: `[mode, name]`).
CALLBACKS = [
    "cb", "f", "onHistory", "a.b", "$", "_x.$y9", "jQuery3600_1700000000000",
    "a..b", "1a", ".a", "a.", "a-b", "a b", "alert(1)//", "é", "a" * 64, "a" * 65,
    "", "window.top.x",
]


def write(target, name_bytes):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(name_bytes).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(name_bytes)


for i, req in enumerate(REQUESTS):
    raw = req.encode()
    write("head", bytes([0, 0, 0]) + raw)
    # Tiny limits and a split in the middle, for a few.
    if i % 4 == 0:
        write("head", bytes([1, 40, 60]) + raw)
    # call: raw-request mode on both listeners, good and bad auth, the
    # gate bound at 127.0.0.1:8081 (these Hosts are not its own).
    write("call", bytes([1 | (2 if "Authorization" in req or "/kick" in req or "/trace" in req else 0), 0, 0]) + raw)

# call: admin requests that pass the gate, and browsers and foreign Hosts
# that do not (`gate` byte: address index | hsts << 3 | host << 5).
ADMIN = [
    ("GET /health HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nAuthorization: Bearer s3cret\r\n\r\n", 0),
    ("GET /metrics HTTP/1.1\r\nHost: localhost:8081\r\nAuthorization: Bearer s3cret\r\n\r\n", 0 | 8),
    ("GET /health HTTP/1.1\r\nHost: [::1]:8081\r\nAuthorization: bearer  s3cret \r\n\r\n", 1),
    ("POST /kick?user=1 HTTP/1.1\r\nHost: 10.1.2.3:8081\r\nAuthorization: Bearer s3cret\r\nContent-Length: 0\r\n\r\n", 2),
    ("POST /trace?user=5&level=debug HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 0\r\n\r\n", 4),
    ("POST /roster-changed HTTP/1.1\r\nHost: 10.0.0.5:8081\r\nAuthorization: Bearer s3cret\r\n"
     "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 6\r\n\r\nuser=7", 3),
    ("GET /health HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nAuthorization: Bearer s3cret\r\nOrigin: https://evil.example\r\n\r\n", 0),
    ("GET /health HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nSec-Fetch-Site: cross-site\r\n\r\n", 0),
    ("GET /health HTTP/1.1\r\nHost: evil.example:8081\r\nAuthorization: Bearer s3cret\r\n\r\n", 0),
    ("GET /health HTTP/1.1\r\nHost: 127.0.0.1:08081\r\nAuthorization: Bearer s3cret\r\n\r\n", 0),
    ("GET /health HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nAuthorization: Bearer wrong\r\n\r\n", 0),
]
for req, gate in ADMIN:
    write("call", bytes([1 | 2, 0, gate]) + req.encode())

for query, body in FORMS:
    data = query.encode() + (b"\xff" + body.encode() if body is not None else b"")
    write("query", bytes([0]) + data)
    # call: structured mode, path chosen by the query's look.
    for path_index in (1, 2):
        write("call", bytes([path_index << 2, 1, 0]) + data)

# call: structured mode on the admin listener, `Host` from the table (own,
# localhost, foreign, absent) or from the input (before `0xfe`), with and
# without a browser's headers. `auth` 1 << 2: `Bearer s3cret`.
for path, query in [(10, ""), (13, "user=3"), (14, "user=3&level=off")]:
    for host in (0, 1, 4, 6):
        for browser in (0, 0x10):
            write("call", bytes([path << 2 | 2, 1 << 2 | (1 if path != 10 else 0), host << 5 | browser]) + query.encode())
    write("call", bytes([path << 2 | 2, 1 << 2, 7 << 5]) + b"[::1]:8081\xfe" + query.encode())

for i, cb in enumerate(CALLBACKS):
    write("callback", bytes([(i % 6) << 1 | (i & 1)]) + cb.encode())
