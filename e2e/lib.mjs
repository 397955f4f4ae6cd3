// Test harness: runs the real `switchboard` binary (built beforehand, never
// here) on port 0 with 2 shards, a temp data dir and a short presence grace,
// and drives Debian's Chromium with playwright-core. Every wait has a
// timeout.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..');

/** The server binary: $SWITCHBOARD_BIN, else the cargo target dir's debug build. */
export function serverBinary() {
  if (process.env.SWITCHBOARD_BIN) return process.env.SWITCHBOARD_BIN;
  const target = process.env.CARGO_TARGET_DIR || path.join(repoRoot, 'target');
  return path.join(path.resolve(repoRoot, target), 'debug', 'switchboard');
}

export const GRACE_MS = 1500;

/** A fresh temp folder, removed by the returned function. */
export function tempDir(name) {
  const dir = mkdtempSync(path.join(tmpdir(), `switchboard-e2e-${name}-`));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Starts the server and waits for its `switchboard listening on http://A
 * admin http://B` line, then (unless `demo` is false: a server with demo
 * mode off prints none) its `switchboard demo: open URL` line. `listen`
 * defaults to 127.0.0.1:0 (a restart passes the address the first run got).
 */
export async function startServer({ dataDir, listen = '127.0.0.1:0', env = {}, demo = true }) {
  const bin = serverBinary();
  if (!existsSync(bin)) throw new Error(`no server binary at ${bin} (cargo build first, or set SWITCHBOARD_BIN)`);
  const child = spawn(bin, [], {
    env: {
      PATH: process.env.PATH,
      SWITCHBOARD_LISTEN: listen,
      SWITCHBOARD_ADMIN_LISTEN: '127.0.0.1:0',
      SWITCHBOARD_SHARDS: '2',
      // Two shards on any runner (a 1-CPU one refuses them without this).
      SWITCHBOARD_SHARDS_OVERCOMMIT: 'on',
      SWITCHBOARD_DATA_DIR: dataDir,
      SWITCHBOARD_PRESENCE_GRACE_MS: String(GRACE_MS),
      SWITCHBOARD_LOG: process.env.SWITCHBOARD_E2E_LOG || 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout });
  const server = { child, url: null, admin: null, demoUrl: null, listen: null, exited: null };
  server.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('server did not announce its address within 60 s'));
    }, 60_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code}) before announcing its address`));
    });
    lines.on('line', (line) => {
      const m = /^switchboard listening on http:\/\/(\S+) admin http:\/\/(\S+)$/.exec(line);
      if (m) {
        server.listen = m[1];
        server.url = `http://${m[1]}`;
        server.admin = `http://${m[2]}`;
        if (!demo) {
          clearTimeout(timer);
          resolve();
        }
      }
      const d = /^switchboard demo: open (\S+)$/.exec(line);
      if (d) {
        server.demoUrl = d[1];
        clearTimeout(timer);
        resolve();
      }
    });
  });
  server.stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await server.exited;
  };
  return server;
}

/** The Chromium flags we run with; playwright adds --headless and its own
 *  fresh --user-data-dir (a temp folder per launch). */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];

export function chromiumPath() {
  return process.env.CHROMIUM || '/usr/bin/chromium';
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 60_000,
  });
}

/** Collects page errors and console errors, to fail a test that had one. */
export function watchPage(page, problems) {
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource|ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|net::/.test(m.text())) {
      problems.push(`console: ${m.text()}`);
    }
  });
  return page;
}

/** Opens the demo signed in as `user` (by the #as= link) and waits until
 *  connected. `query`: extra demo options (transport, coordination, share). */
export async function openAs(context, server, user, { transport, problems, query = {} } = {}) {
  const page = await context.newPage();
  if (problems) watchPage(page, problems);
  const params = new URLSearchParams(query);
  if (transport) params.set('transport', transport);
  const qs = params.size ? `?${params}` : '';
  await page.goto(`${server.url}/demo/${qs}#as=${user}`);
  await connected(page);
  return page;
}

export async function connected(page, timeout = 20_000) {
  await page.locator('#conn[data-status="connected"]').waitFor({ timeout });
}

/** The chat window for friend `id`. */
export function chat(page, id) {
  return page.locator(`.chat[data-friend="${id}"]`);
}

/** The contact list entry for `id`. */
export function buddy(page, id) {
  return page.locator(`#buddies .buddy[data-user="${id}"]`);
}

/** Messages with exactly this text in the window for `id`. */
export function messages(page, id, text) {
  return chat(page, id).locator('.msg .text', { hasText: new RegExp(`^${escapeRe(text)}$`) });
}

export function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Types and sends a message from the open window for `id`. */
export async function sendText(page, id, text) {
  const input = chat(page, id).locator('.chat-text');
  await input.fill(text);
  await input.press('Enter');
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `fn` (async, returns truthy) until it holds or `timeout`. */
export async function eventually(fn, what, timeout = 15_000) {
  const start = Date.now();
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() - start > timeout) throw new Error(`timed out: ${what} (last: ${last})`);
    await sleep(100);
  }
}

/** Waits until `locator` matches exactly `n` elements (and, when `visible`,
 *  that they are all visible), then checks it still does a moment later
 *  (a duplicate arriving late would show up). */
export async function expectCount(locator, n, { timeout = 15_000, visible = true, settleMs = 300 } = {}) {
  const check = async () => {
    const count = await locator.count();
    if (count !== n) return false;
    if (visible) {
      for (let i = 0; i < count; i++) if (!(await locator.nth(i).isVisible())) return false;
    }
    return true;
  };
  await eventually(check, `${n} × ${locator}`, timeout);
  if (settleMs) {
    await sleep(settleMs);
    const count = await locator.count();
    if (count !== n) throw new Error(`${locator}: ${count} instead of ${n} after settling`);
  }
}

/** The text of `locator` once it satisfies `pred`. */
export async function expectText(locator, pred, what, timeout = 15_000) {
  return eventually(async () => {
    const t = (await locator.textContent({ timeout: 1000 })) ?? '';
    return pred(t) ? t || true : false;
  }, what, timeout);
}

/** Everything a test needs: a server on a temp dir and a browser. */
export async function setup(name) {
  const tmp = tempDir(name);
  const server = await startServer({ dataDir: tmp.dir });
  const browser = await launchBrowser();
  const problems = [];
  const env = { tmp, server, browser, problems };
  env.teardown = async () => {
    await browser.close().catch(() => {});
    await env.server.stop();
    tmp.remove();
  };
  return env;
}

/** Sends from the window for `id` and waits until the server stored it (the
 *  bubble is no longer pending), so that what is sent next is later. */
export async function sendStored(page, id, text) {
  await sendText(page, id, text);
  await eventually(async () => {
    const mine = chat(page, id).locator('.msg.mine', { hasText: new RegExp(`^${escapeRe(text)}$`) });
    return (await mine.count()) === 1 && (await chat(page, id).locator('.msg.pending').count()) === 0;
  }, `"${text}" stored`);
}
