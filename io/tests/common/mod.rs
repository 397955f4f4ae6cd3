//! Shared by the seeded pseudo-fuzz tests (`fuzz.rs`, `conn_bytes.rs`):
//! a small deterministic generator, real requests of the protocol as
//! seeds, and the mutations applied to them.

/// xorshift64*: small, fast, deterministic.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

pub const SEEDS: &[&str] = &[
    "GET /poll?sid=42-0123456789abcdef0011223344556677&since=3&wait=10&callback=cb HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST /send HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 62\r\n\r\nsid=42-0123456789abcdef0011223344556677&to=7&text=h%C3%A9llo+",
    "POST /ui?callback=a.b HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n2b\r\nsid=42-0123456789abcdef0011223344556677&sta\r\n10;x=y\r\nte=%7B%22a%22%3A1%7D\r\n0\r\nT: v\r\n\r\n",
    "GET /connect?token=1.2.abc&tab=t-1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /ping HTTP/1.1\r\nHost: y\r\n\r\n",
    "POST /kick?user=5 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    "GET /history?sid=42-0123456789abcdef0011223344556677&with=3&before=9&limit=100 HTTP/1.1\r\nHost: x\r\n\r\n",
    "\r\nHEAD http://h/read?sid=1&with=2&upto=3 HTTP/1.1\nHost: h\n\n",
    "GET /client/switchboard.js?callback=cb HTTP/1.1\r\nHost: x\r\nIf-None-Match: W/\"a\", *\r\n\r\n",
];

pub const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"%",
    b"%zz",
    b"%ff",
    b"%C3%A9",
    b"&",
    b"=",
    b"+",
    b"?",
    b"\xff",
    b"\0",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"callback=",
    b"sid=",
    b"99999999999999999999999",
    b"Host: x\r\n",
    b"\r\n\r\n",
    b" ",
    b";",
];

pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(7) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 => input.insert(at, rng.next() as u8),
            2 if at < input.len() => {
                let end = (at + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
            3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            4 if at < input.len() => {
                let end = (at + rng.below(64)).min(input.len());
                let piece = input[at..end].to_vec();
                for _ in 0..rng.below(50) {
                    input.splice(at..at, piece.iter().copied());
                }
            }
            5 => input.truncate(at),
            _ => {
                let seed = SEEDS[rng.below(SEEDS.len())].as_bytes();
                let from = rng.below(seed.len());
                input.splice(at..at, seed[from..].iter().copied());
            }
        }
    }
}
