// Every fenced code block of the READMEs and docs is either run here (as
// pasted), run by another e2e file, or in SKIP below with a reason; a block
// that is none of these, or a SKIP/RUN entry that matches no block, fails
// the first test. A block is named by its file and its first line.
//
// What runs, and the only substitutions made (nothing else in a snippet
// is changed):
// - README.md's start command (`cargo run --release --bin switchboard`)
//   and its "Try it with curl in a minute" walkthrough, with `bash -eo
//   pipefail` in a temp folder (so `./data` is the server's data folder
//   and the secret `switchboard token` reads). `cargo` is a shell function
//   that runs the debug binary the suite uses (`cargo run [-q] --release
//   --bin switchboard -- ARGS` becomes `$SWITCHBOARD_BIN ARGS`: no release
//   build in a test), the server gets free ports and 2 shards from the
//   `SWITCHBOARD_*` variables, and `localhost:8080`/`localhost:8081` in the
//   walkthrough become those ports. A marker line is printed after each
//   command, so that what each one printed is checked against the `#  `
//   lines the README shows under it: the same JSON fields (no more, no
//   fewer, unless the README writes `...`), the same values except
//   timestamps and `…` (any text there); plain-text answers line by line
//   with numbers free.
// - docs/operations.md's `/roster-changed` calls (the one-shot and the
//   retry loop), with `SWITCHBOARD_ADMIN_TOKEN` and `USER_ID` set as the
//   snippets expect and `127.0.0.1:8081` replaced by a server's admin
//   address.
// - docs/integration.md's Django token snippet, in python3 with a stub
//   `django.conf.settings` (no Django here): the server accepts its token.
// - clients/js/README.md's `import` line, in Node, with the package
//   installed from the checkout (a symlink, as `npm install ./clients/js`).
// - Every ```json block parses (docs/protocol.md's examples, the seccomp
//   entry of docs/operations.md).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, writeFileSync, mkdirSync, symlinkSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { repoRoot, serverBinary, tempDir, startServer, GRACE_MS } from '../lib.mjs';

const FILES = [
  'README.md',
  ...readdirSync(path.join(repoRoot, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => `docs/${f}`),
  'clients/js/README.md',
  'bench/README.md',
  'tuning/README.md',
];

/** The fenced blocks of a markdown file: {file, line, lang, first, body}
 *  (an indented fence's indentation is removed from its lines). */
function blocks(file) {
  const lines = readFileSync(path.join(repoRoot, file), 'utf8').split('\n');
  const out = [];
  let open = null;
  lines.forEach((l, i) => {
    const m = /^(\s*)```(\S*)\s*$/.exec(l);
    if (!m) return;
    if (!open) {
      open = { start: i, lang: m[2], indent: m[1].length };
      return;
    }
    const body = lines.slice(open.start + 1, i).map((x) => x.slice(Math.min(open.indent, /^\s*/.exec(x)[0].length)));
    const first = (body.find((x) => x.trim()) ?? '').trim();
    out.push({ file, line: open.start + 1, lang: open.lang, first, body: body.join('\n') + '\n' });
    open = null;
  });
  assert.equal(open, null, `${file}: an unclosed fence`);
  return out;
}

const ALL = FILES.flatMap(blocks);
const key = (b) => `${b.file}: ${b.first}`;

const README_START = 'README.md: cargo run --release --bin switchboard';
const README_CURL = "README.md: # Tokens come from the web app; for the demo, mint them with the server's secret.";

/** The blocks this file runs (file: first line), each by a test below. */
const RUN = {
  [README_START]: 'started as the server of the walkthrough',
  [README_CURL]: 'the curl walkthrough',
  'docs/operations.md: curl -fsS -X POST \\': '/roster-changed',
  'docs/operations.md: for delay in 0 1 2 4 8; do': '/roster-changed with retries',
  'docs/integration.md: import hashlib': 'the Django token, in python3',
  "clients/js/README.md: import Switchboard, { Client } from 'switchboard-chat-client';": 'the package import, in Node',
};

/** Run by another e2e file. */
const ELSEWHERE = {
  'clients/js/README.md: <ul id="log"></ul>': 'client-served.test.mjs: the module page, in Chromium',
  'clients/js/README.md: <ul id="messages"></ul>': 'client-served.test.mjs: the classic-script page, in Chromium',
  "docs/integration.md: const crypto = require('crypto');": 'client-served.test.mjs: the Express token route',
};

/** ```json blocks that are not whole documents (none today). */
const JSON_FRAGMENTS = {};

/** Not run, each with why. */
const SKIP = {
  // README.md
  'README.md: ./test.sh': 'the whole test suite, this file included',
  "README.md: export SWITCHBOARD_MYSQL_URL='mysql://chat:PASSWORD@127.0.0.1:3306/myapp'": 'needs a MySQL with the placeholder credentials and a release build',
  'README.md: cargo run --release --bin switchboard -- seed-demo --users 50000 --friends 50 --seed 1': 'needs MySQL (SWITCHBOARD_MYSQL_URL)',
  // docs/architecture.md
  'docs/architecture.md: SO_REUSEPORT: the kernel spreads connections': 'a diagram',
  // docs/benchmarks.md: benchmark runs (minutes to hours, release builds, other hosts) and their outputs
  'docs/benchmarks.md: cargo build --release -p switchboard-storage --example mysql_group_commit': 'a benchmark (release build, MySQL)',
  'docs/benchmarks.md: Architecture:                            x86_64': 'lscpu output of the benchmark host',
  'docs/benchmarks.md: cargo run --release -p switchboard-engine --example phases -- 20000': 'a benchmark (release build)',
  'docs/benchmarks.md: git worktree add /tmp/old 5723d14    && (cd /tmp/old    && cargo build --release -p switchboard-engine)': 'a benchmark of old commits',
  'docs/benchmarks.md: git worktree add /tmp/pre10 6a7a55c && (cd /tmp/pre10 && cargo build --release -p switchboard-engine)': 'a benchmark of old commits',
  'docs/benchmarks.md: RUNS=3 RATE=1000 OUT=/tmp/sb-obs1000 bench/observe.sh': 'a benchmark run (minutes)',
  'docs/benchmarks.md: RUNS=3 DURATION=30 POINTS="1000:1000" bench/peer.sh': 'a benchmark run (needs ejabberd)',
  'docs/benchmarks.md: RUNS=3 bench/handover.sh': 'a benchmark run (minutes)',
  'docs/benchmarks.md: cargo build --release --bin switchboard': 'part of a benchmark recipe (release build)',
  'docs/benchmarks.md: RUNS=3 OUT=/tmp/sbq RATE=1250 bench/run-scenarios.sh 3': 'a benchmark run (minutes)',
  'docs/benchmarks.md: switchboard-bench run --users 20000 --friends 50 --tabs 1 --live-users 2000 --idle-poll-s 20 \\': 'a benchmark run (release build, minutes)',
  'docs/benchmarks.md: switchboard-bench graph --users 50000 --friends 10 --seed 1 --out dir-50000-10.json': 'a benchmark run (release build, minutes)',
  'docs/benchmarks.md: switchboard-bench graph --users 15000 --friends 8 --seed 1 --out dir-15000-8.json': 'a benchmark run (release build, minutes)',
  'docs/benchmarks.md: switchboard-bench graph --users 1000 --friends 8 --seed 1 --out dir-1000-8.json': 'a benchmark run (release build, minutes)',
  'docs/benchmarks.md: histogram (ms)        count       p50       p90       p99     p99.9       max': 'benchmark output',
  'docs/benchmarks.md: wrk -t2 -c100 -d10s http://127.0.0.1:8088/tiny.txt    # nginx 1.22.1, worker_processes 2, access_log off, 3-byte file': 'needs wrk and an nginx',
  'docs/benchmarks.md: switchboard-bench graph --users 20000 --friends 50 --seed 1 --out dir-20000-50.json': 'a benchmark run (release build, minutes)',
  // docs/integration.md
  "docs/integration.md: export SWITCHBOARD_MYSQL_URL='mysql://chat:PASSWORD@db.internal:3306/myapp'": 'needs MySQL (placeholder host and credentials)',
  "docs/integration.md: SWITCHBOARD_MYSQL_USER_NAME_SQL='SELECT display_name FROM accounts WHERE id = ? AND deleted_at IS NULL'": 'settings for a MySQL schema of another app',
  "docs/integration.md: SWITCHBOARD_MYSQL_FRIENDS_SQL='SELECT a.id, a.display_name": 'settings for a MySQL schema of another app',
  'docs/integration.md: CREATE TABLE users (': 'SQL: needs MySQL',
  "docs/integration.md: token: () => fetch('/chat-token').then((r) => r.json()).then((j) => j.token),": 'a fragment (an option); the same line is in clients/js/README.md\'s pages, run by client-served.test.mjs',
  'docs/integration.md: require "openssl"': 'Rails (Ruby): no ruby here',
  'docs/integration.md: <?php': 'Laravel (PHP): no php here',
  "docs/integration.md: SWITCHBOARD_MYSQL_TOKEN_SQL='SELECT user_id FROM chat_tokens WHERE token = ? AND expires_at > NOW()'": 'a setting for a MySQL table of the app',
  'docs/integration.md: CREATE TABLE sb_messages (': 'SQL: needs MySQL',
  'docs/integration.md: ANALYZE SELECT id, from_user, to_user, ts, text, cid FROM sb_messages': 'MySQL query plans',
  'docs/integration.md: EXPLAIN SELECT id FROM sb_messages WHERE id = @anchor AND user_lo = 7 AND user_hi = 8;': 'MySQL query plans',
  'docs/integration.md: ANALYZE SELECT COUNT(*) FROM sb_messages WHERE to_user = 8 AND from_user = 7 AND id > 190000;': 'MySQL query plans',
  'docs/integration.md: EXPLAIN SELECT from_user, unread FROM sb_unread WHERE user_id = 20 AND unread > 0 ORDER BY from_user;': 'MySQL query plans',
  'docs/integration.md: EXPLAIN SELECT id, from_user, to_user, ts, text, cid FROM sb_messages': 'MySQL query plans',
  'docs/integration.md: EXPLAIN SELECT u.id, u.name FROM friendships f JOIN friendships b ON b.user_id = f.friend_id AND b.friend_id = f.user_id': 'MySQL query plans',
  'docs/integration.md: WARN db-0 storage: store_message ×2 for user 1 timed out: 1 ms past its deadline; db-0 waited 1500 ms for query `INSERT INTO sb_unread (user_id, from_user, unread) VALUES (2,1,2) ON DUPLICATE KEY UPDATE unread = unread + VALUES(unread)` (pool: 1 of 4 connections idle)': 'log output',
  // docs/operations.md: a host's setup (root, systemd, /etc files, docker)
  'docs/operations.md: (set -a; . /etc/switchboard/env; switchboard tune)': 'reads /etc/switchboard/env',
  'docs/operations.md: useradd --system --user-group --no-create-home --home-dir /var/lib/switchboard \\': 'root: creates a system user',
  'docs/operations.md: systemd-run --pipe --wait -p User=switchboard -p EnvironmentFile=/etc/switchboard/env \\': 'needs systemd and the service user',
  'docs/operations.md: [Unit]': 'a systemd unit',
  'docs/operations.md: (. /etc/switchboard/env; curl -s -H "Authorization: Bearer $SWITCHBOARD_ADMIN_TOKEN" \\': 'reads /etc/switchboard/env (the same /health call runs in the README walkthrough)',
  'docs/operations.md: # 1. Install the new binary over the old one (install removes the old file': 'root and systemd (a deploy)',
  'docs/operations.md: # /etc/switchboard/env': 'an environment file',
  'docs/operations.md: upstream switchboard {': 'an nginx config',
  'docs/operations.md: docker run -d --name switchboard \\': 'needs docker and an image',
  'docs/operations.md: systemctl stop switchboard            # SIGTERM: drains, commits, closes the database': 'root and systemd (a backup)',
  'docs/operations.md: export SWITCHBOARD_NATS_URL=nats://127.0.0.1:4222   # or several: nats://a:4222,nats://b:4222,nats://c:4222': 'a cluster: NATS, MySQL and several machines (engine/tests/cluster.rs runs the same commands against NATS)',
  // docs/protocol.md
  'docs/protocol.md: # trace of user 42: on, 1874 of 16777216 bytes, ends in 583 s': 'output (the README walkthrough checks the same answer\'s shape)',
  'docs/protocol.md: CREATE TABLE users (': 'SQL: needs MySQL',
  'docs/protocol.md: CREATE TABLE IF NOT EXISTS sb_schema_version (': 'SQL: needs MySQL',
  // docs/security.md
  'docs/security.md: cargo +nightly install cargo-fuzz --locked   # once (0.13.2 used here)': 'fuzzing: a nightly toolchain, hours',
  // bench/README.md
  'bench/README.md: export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}': 'a benchmark run (release build, minutes)',
  'bench/README.md: RUNS=3 OUT=/tmp/sb-bench bench/run-scenarios.sh 1 2 3 4 5 6 7': 'a benchmark run (an hour)',
  'bench/README.md: bench/ejabberd/ejabberd.sh users /tmp/ej 1000     # once per user count: import users + rosters': 'needs ejabberd',
  'bench/README.md: bench/peer.sh                                         # everything: about an hour': 'a benchmark run (an hour, ejabberd)',
  'bench/README.md: bench/handover.sh                                   # 2,500 users x 4 tabs, 300 msg/s': 'a benchmark run (minutes)',
  // tuning/README.md
  'tuning/README.md: $ switchboard tune': "output of another host",
  'tuning/README.md: ! locked memory limit 512 KiB is below the 576 KiB the shards register with io_uring (3 rings x 64 KiB each): glommio falls back to unregistered buffers (the network path does not use them; storage runs on db threads). Raise it (LimitMEMLOCK=) to keep glommio on its normal path': 'output (a warning)',
  'tuning/README.md: switchboard tune --strict                 # exit 0: no warnings (run it as the service user)': 'exit codes depend on the host; run as the service user',
};

test('every block of the docs is run here, run elsewhere, or skipped with a reason', () => {
  const unknown = [];
  const used = new Set();
  for (const b of ALL) {
    const k = key(b);
    const isJson = b.lang === 'json' && !JSON_FRAGMENTS[k];
    const lists = [RUN, ELSEWHERE, SKIP].filter((l) => l[k]);
    if (isJson) lists.push('json');
    if (lists.length === 0) unknown.push(`${b.file}:${b.line} [${b.lang}] ${b.first}`);
    assert.ok(lists.length <= 1, `${k}: in more than one list`);
    used.add(k);
  }
  assert.deepEqual(unknown, [], 'blocks neither run nor skipped: run them here or add them to SKIP with a reason');
  const stale = [RUN, ELSEWHERE, SKIP, JSON_FRAGMENTS].flatMap((l) => Object.keys(l)).filter((k) => !used.has(k));
  assert.deepEqual(stale, [], 'entries that match no block any more');
  for (const [k, why] of Object.entries(SKIP)) assert.ok(why.trim(), `${k}: a reason`);
});

test('every ```json block parses', () => {
  const json = ALL.filter((b) => b.lang === 'json' && !JSON_FRAGMENTS[key(b)]);
  assert.ok(json.length >= 5, `${json.length} json blocks`);
  for (const b of json) {
    assert.doesNotThrow(() => JSON.parse(b.body), `${b.file}:${b.line} is not JSON`);
  }
});

/** The block named `k` (exactly one). */
function block(k) {
  const found = ALL.filter((b) => key(b) === k);
  assert.equal(found.length, 1, `one block ${k}`);
  return found[0];
}

// ---------------------------------------------------------------- README

/** `cargo run [-q] --release --bin switchboard [-- ARGS]` as the debug binary. */
const CARGO_SHIM = `cargo() {
  [ "$1" = run ] || { echo "cargo shim: only 'cargo run' is known: $*" >&2; return 99; }; shift
  [ "$1" = -q ] && shift
  [ "$1 $2 $3" = "--release --bin switchboard" ] || { echo "cargo shim: unknown: $*" >&2; return 99; }; shift 3
  [ "$1" = -- ] && shift
  "$SWITCHBOARD_BIN" "$@"
}
`;

function bash(script, { cwd, env = {}, timeout = 60_000 }) {
  const r = spawnSync('bash', ['-eo', 'pipefail', '-c', script], {
    cwd,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, SWITCHBOARD_BIN: serverBinary(), ...env },
    encoding: 'utf8',
    timeout,
  });
  assert.equal(r.error, undefined, `bash: ${r.error}`);
  return r;
}

let tmp, readme;

/** Starts README.md's start command in `tmp.dir` (free ports, 2 shards). */
async function startReadmeServer() {
  const b = block(README_START);
  const child = spawn('bash', ['-c', CARGO_SHIM + b.body], {
    cwd: tmp.dir,
    detached: true, // its own process group: the shell and the server are stopped together
    env: {
      PATH: process.env.PATH,
      SWITCHBOARD_BIN: serverBinary(),
      SWITCHBOARD_LISTEN: '127.0.0.1:0',
      SWITCHBOARD_ADMIN_LISTEN: '127.0.0.1:0',
      SWITCHBOARD_SHARDS: '2',
      SWITCHBOARD_SHARDS_OVERCOMMIT: 'on',
      SWITCHBOARD_PRESENCE_GRACE_MS: String(GRACE_MS),
      SWITCHBOARD_LOG: process.env.SWITCHBOARD_E2E_LOG || 'warn',
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const s = { child, lines: [] };
  s.exited = new Promise((resolve) => child.once('exit', resolve));
  const lines = createInterface({ input: child.stdout });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the README server did not start in 60 s')), 60_000);
    child.once('exit', (code) => reject(new Error(`the README server exited (${code})`)));
    lines.on('line', (line) => {
      s.lines.push(line);
      const m = /^switchboard listening on http:\/\/(\S+) admin http:\/\/(\S+)$/.exec(line);
      if (m) [s.listen, s.admin] = [m[1], m[2]];
      if (/^switchboard demo: open /.test(line)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  s.stop = async () => {
    if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid, 'SIGKILL');
    await s.exited;
  };
  return s;
}

before(async () => {
  tmp = tempDir('snippets');
  readme = await startReadmeServer();
});

after(async () => {
  await readme?.stop();
  tmp?.remove();
});

test('README: the start command prints the demo URL it says', () => {
  const text = readFileSync(path.join(repoRoot, 'README.md'), 'utf8');
  const m = /It prints `(switchboard demo: open http:\/\/127\.0\.0\.1:8080\/demo\/)`/.exec(text);
  assert.ok(m, 'the README says what the server prints');
  const port = readme.listen.split(':')[1];
  assert.ok(readme.lines.includes(m[1].replace(':8080/', `:${port}/`)), readme.lines.join('\n'));
});

/** The walkthrough as steps: each command line (with its `\` continuations)
 *  and the `#  ` output lines the README shows under it. */
function steps(body) {
  const out = [];
  for (const line of body.split('\n')) {
    if (/^#  /.test(line)) {
      assert.ok(out.length, 'output before any command');
      out.at(-1).expected.push(line.slice(3));
    } else if (!line.trim() || /^# /.test(line)) {
      continue; // prose
    } else if (out.length && out.at(-1).cmd.endsWith('\\')) {
      out.at(-1).cmd += '\n' + line;
    } else {
      out.push({ cmd: line, expected: [] });
    }
  }
  return out;
}

const MARK = '\u001e@@step@@\u001e';

/** What one command printed: JSON documents (JSONP as {callback, json}), or text. */
function documents(text) {
  const docs = [];
  let s = text.trim();
  while (s) {
    const jsonp = /^\/\*\*\/([A-Za-z_$][\w$.]*)\(/.exec(s);
    if (!jsonp && s[0] !== '{') {
      docs.push({ text: s });
      break;
    }
    const start = jsonp ? jsonp[0].length : 0;
    const end = jsonEnd(s, start);
    const json = JSON.parse(s.slice(start, end));
    if (jsonp) {
      assert.equal(s.slice(end, end + 2), ');', `JSONP ends with ");": ${s}`);
      docs.push({ callback: jsonp[1], json });
      s = s.slice(end + 2).trim();
    } else {
      docs.push({ json });
      s = s.slice(end).trim();
    }
  }
  return docs;
}

/** The end of the JSON object starting at `i`. */
function jsonEnd(s, i) {
  let depth = 0;
  let inString = false;
  for (let j = i; j < s.length; j++) {
    const c = s[j];
    if (inString) {
      if (c === '\\') j++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') {
      if (--depth === 0) return j + 1;
    }
  }
  throw new Error(`unterminated JSON: ${s.slice(i)}`);
}

/** The README's sample answer, as documents: `...` (more fields or
 *  elements) becomes an "…" entry, `…` in a string stays (any text). */
function expectedDocuments(lines) {
  if (!/^(\{|\/\*\*\/)/.test(lines[0])) return [{ text: lines.join('\n') }];
  const joined = lines.map((l) => l.trim()).join('').replace(/,\.\.\.\}/g, ',"…":"…"}').replace(/,\.\.\.\]/g, ',"…"]');
  return documents(joined);
}

/** Fields whose values change from run to run (only their type is compared). */
const VOLATILE = new Set(['ts']);

function like(actual, expected, where) {
  if (typeof expected === 'string' && expected.includes('…')) {
    assert.equal(typeof actual, 'string', where);
    const re = new RegExp(`^${expected.split('…').map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
    assert.match(actual, re, where);
  } else if (Array.isArray(expected)) {
    assert.ok(Array.isArray(actual), `${where}: an array`);
    const open = expected.at(-1) === '…';
    const items = open ? expected.slice(0, -1) : expected;
    if (open) assert.ok(actual.length >= items.length, `${where}: at least ${items.length} items`);
    else assert.equal(actual.length, items.length, `${where}: ${items.length} items`);
    items.forEach((e, i) => like(actual[i], e, `${where}[${i}]`));
  } else if (expected && typeof expected === 'object') {
    assert.ok(actual && typeof actual === 'object' && !Array.isArray(actual), `${where}: an object`);
    const keys = Object.keys(expected).filter((k) => k !== '…');
    for (const k of keys) assert.ok(k in actual, `${where}: "${k}" is missing from the answer`);
    if (!('…' in expected)) {
      const extra = Object.keys(actual).filter((k) => !(k in expected));
      assert.deepEqual(extra, [], `${where}: fields the README does not show`);
    }
    for (const k of keys) {
      if (VOLATILE.has(k)) assert.equal(typeof actual[k], typeof expected[k], `${where}.${k}`);
      else like(actual[k], expected[k], `${where}.${k}`);
    }
  } else {
    assert.deepEqual(actual, expected, where);
  }
}

/** A log record: `TIME LEVEL THREAD TARGET: message`. */
const LOG_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO |WARN |ERROR) \S+ [\w:]+: /;

/** Plain text: the same lines with numbers free; a `...` line stands for
 *  any further lines; a log record stands for any log record. */
function likeText(actual, expected, where) {
  const a = actual.split('\n');
  const e = expected.split('\n');
  const digits = (s) => s.replace(/\d+/g, '0');
  for (let i = 0; i < e.length; i++) {
    if (e[i].trim() === '...') return;
    assert.ok(i < a.length, `${where}: line ${i + 1} missing (expected ${e[i]})`);
    if (LOG_LINE.test(e[i])) assert.match(a[i], LOG_LINE, `${where}: line ${i + 1}`);
    else assert.equal(digits(a[i]), digits(e[i]), `${where}: line ${i + 1}`);
  }
  assert.equal(a.length, e.length, `${where}: ${e.length} lines`);
}

function likeDoc(actual, expected, where) {
  if ('text' in expected) {
    assert.ok('text' in actual, `${where}: text, got ${JSON.stringify(actual)}`);
    likeText(actual.text, expected.text, where);
    return;
  }
  assert.ok(!('text' in actual), `${where}: JSON, got ${actual.text}`);
  assert.equal(actual.callback, expected.callback, `${where}: the JSONP callback`);
  like(actual.json, expected.json, where);
}

function matches(actual, expected, where) {
  try {
    likeDoc(actual, expected, where);
    return null;
  } catch (e) {
    return e;
  }
}

test('README: "Try it with curl in a minute", run as written, prints what it shows', () => {
  const b = block(README_CURL);
  const port = readme.listen.split(':')[1];
  const adminPort = readme.admin.split(':')[1];
  // The only edits: the addresses of the server this test started.
  const body = b.body.replaceAll('localhost:8080', `localhost:${port}`).replaceAll('localhost:8081', `localhost:${adminPort}`);
  const st = steps(body);
  assert.ok(st.length >= 15, `${st.length} steps`);
  const script = CARGO_SHIM + st.map((s) => `${s.cmd}\nprintf '\\n${MARK}\\n'\n`).join('');
  const r = bash(script, { cwd: tmp.dir });
  assert.equal(r.status, 0, `the walkthrough failed (${r.status}):\n${r.stderr}\n${r.stdout}`);
  const segments = r.stdout.split(`\n${MARK}\n`);
  assert.equal(segments.length, st.length + 1, r.stdout);
  assert.equal(segments.at(-1).trim(), '');

  // A command sent to the background (`&`) prints whenever its answer
  // comes, up to the next `wait`: its output and what the README shows for
  // it (under `wait`) are matched within that window, in any order.
  let window = null;
  let checked = 0;
  st.forEach((s, i) => {
    const actual = documents(segments[i]).map((d) => ({ d, step: i }));
    const expected = s.expected.length ? expectedDocuments(s.expected).map((d) => ({ d, step: i })) : [];
    if (/&\s*$/.test(s.cmd)) window = { actual: [], expected: [] };
    if (window) {
      window.actual.push(...actual);
      window.expected.push(...expected);
      if (s.cmd.trim() !== 'wait') return;
      const pool = [...window.actual];
      for (const e of window.expected) {
        const where = `after "${st[e.step].cmd}"`;
        const j = pool.findIndex((a) => !matches(a.d, e.d, where));
        if (j < 0) {
          const errs = pool.map((a) => matches(a.d, e.d, where)?.message).join('\n---\n');
          assert.fail(`${where}: no answer like ${JSON.stringify(e.d)}:\n${errs}`);
        }
        pool.splice(j, 1);
        checked++;
      }
      assert.deepEqual(pool.map((a) => a.d), [], 'answers the README does not show, around the background poll');
      window = null;
      return;
    }
    if (!expected.length) return; // nothing shown: not checked
    assert.equal(actual.length, expected.length, `"${s.cmd}" printed ${segments[i]}`);
    expected.forEach((e, k) => {
      likeDoc(actual[k].d, e.d, `after "${s.cmd}"`);
      checked++;
    });
  });
  assert.equal(window, null, 'a background command without a later wait');
  assert.ok(checked >= 8, `${checked} answers checked`);
});

// ------------------------------------------------------ the other snippets

let tokenServer, tokenTmp;
const ADMIN_TOKEN = randomBytes(32).toString('hex');
const TOKEN_SECRET = randomBytes(32).toString('hex');

async function otherServer() {
  if (!tokenServer) {
    tokenTmp = tempDir('snippets-ops');
    tokenServer = await startServer({
      dataDir: tokenTmp.dir,
      env: { SWITCHBOARD_ADMIN_TOKEN: ADMIN_TOKEN, SWITCHBOARD_TOKEN_SECRET: TOKEN_SECRET },
    });
  }
  return tokenServer;
}

after(async () => {
  await tokenServer?.stop();
  tokenTmp?.remove();
});

test('docs/operations.md: the /roster-changed calls, one-shot and with retries', async () => {
  const server = await otherServer();
  const admin = new URL(server.admin).host;
  const env = { SWITCHBOARD_ADMIN_TOKEN: ADMIN_TOKEN, USER_ID: '2' };

  const once = block('docs/operations.md: curl -fsS -X POST \\');
  const shown = once.body.split('\n').filter((l) => /^# \{/.test(l)).map((l) => l.slice(2));
  assert.equal(shown.length, 1, 'the answer it shows');
  const r1 = bash(once.body.replaceAll('127.0.0.1:8081', admin), { cwd: tokenTmp.dir, env });
  assert.equal(r1.status, 0, r1.stderr);
  like(JSON.parse(r1.stdout), JSON.parse(shown[0]), 'roster-changed');

  // The loop prints nothing on success (and an HTTP code on a bug).
  const loop = block('docs/operations.md: for delay in 0 1 2 4 8; do');
  const r2 = bash(loop.body.replaceAll('127.0.0.1:8081', admin), { cwd: tokenTmp.dir, env });
  assert.equal(r2.status, 0, r2.stderr);
  assert.equal(r2.stdout + r2.stderr, '');
  // And with a wrong token it says so (a 401 is not retried).
  const r3 = bash(loop.body.replaceAll('127.0.0.1:8081', admin), { cwd: tokenTmp.dir, env: { ...env, SWITCHBOARD_ADMIN_TOKEN: 'x'.repeat(64) } });
  assert.equal(r3.stderr.trim(), 'roster-changed: HTTP 401');
});

test('docs/integration.md: the Django token is accepted by /connect', async (t) => {
  if (spawnSync('python3', ['--version']).status !== 0) {
    if (process.env.CI) assert.fail('python3 is needed');
    t.skip('no python3');
    return;
  }
  const server = await otherServer();
  const b = block('docs/integration.md: import hashlib');
  const dir = path.join(tokenTmp.dir, 'django-app');
  mkdirSync(path.join(dir, 'django'), { recursive: true });
  mkdirSync(path.join(dir, 'chat'), { recursive: true });
  // A stub of Django's settings: the one setting the snippet reads.
  writeFileSync(path.join(dir, 'django', '__init__.py'), '');
  writeFileSync(
    path.join(dir, 'django', 'conf.py'),
    'import os\nclass _Settings:\n    SWITCHBOARD_TOKEN_SECRET = os.environ["SWITCHBOARD_TOKEN_SECRET"]\nsettings = _Settings()\n'
  );
  writeFileSync(path.join(dir, 'chat', '__init__.py'), '');
  writeFileSync(path.join(dir, 'chat', 'tokens.py'), b.body);
  const r = spawnSync('python3', ['-c', 'from chat.tokens import switchboard_token; print(switchboard_token(1))'], {
    cwd: dir,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, SWITCHBOARD_TOKEN_SECRET: TOKEN_SECRET },
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  const token = r.stdout.trim();
  assert.match(token, /^1\.\d+\.[0-9a-f]{64}$/);
  const answer = await (await fetch(`${server.url}/connect?token=${encodeURIComponent(token)}`)).json();
  assert.equal(answer.ok, true, JSON.stringify(answer));
  assert.equal(answer.user.id, 1);
});

test("clients/js/README.md: the package's import line, in Node", () => {
  const b = block("clients/js/README.md: import Switchboard, { Client } from 'switchboard-chat-client';");
  const dir = path.join(tmp.dir, 'npm-app');
  mkdirSync(path.join(dir, 'node_modules'), { recursive: true });
  // What `npm install ./path/to/switchboard/clients/js` makes: a link.
  symlinkSync(path.join(repoRoot, 'clients/js'), path.join(dir, 'node_modules', 'switchboard-chat-client'), 'dir');
  writeFileSync(path.join(dir, 'app.mjs'), `${b.body}console.log(typeof Switchboard, typeof Client, Switchboard.Client === Client);\n`);
  const r = spawnSync(process.execPath, ['app.mjs'], { cwd: dir, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'object function true');
});
