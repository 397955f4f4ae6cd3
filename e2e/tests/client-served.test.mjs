// A real site, as a new user would build it: a web app on ANOTHER origin (a
// tiny node server here) whose pages load the client from the Switchboard
// server itself (`/client/switchboard.mjs` and `/client/switchboard.js`),
// with demo mode off (users from a directory file, so no `/demo/` and no
// `/demo/login`). The pages are clients/js/README.md's two examples as
// pasted (only the chat server's address replaced), and the app's
// `/chat-token` route is docs/integration.md's Express snippet, answering
// `{"token": ...}` as the README's pages read it. Two users chat.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { tempDir, startServer, launchBrowser, watchPage, eventually, repoRoot } from '../lib.mjs';

const ANN = 1;
const BEN = 2;
const CHAT_EXAMPLE = 'https://chat.example.com';

/** The workspace's version (Cargo.toml), which the served files carry. */
function crateVersion() {
  const cargo = readFileSync(path.join(repoRoot, 'Cargo.toml'), 'utf8');
  const m = /\[workspace\.package\][^[]*?\nversion = "([^"]+)"/.exec(cargo);
  assert.ok(m, 'the workspace version in Cargo.toml');
  return m[1];
}

/** The fenced ```html blocks of the JS client's README, in order. */
function readmePages() {
  const text = readFileSync(path.join(repoRoot, 'clients/js/README.md'), 'utf8');
  return [...text.matchAll(/```html\n([\s\S]*?)```/g)].map((m) => m[1]);
}

/** docs/integration.md's Express token snippet, run as it is written. */
function expressSnippet(secret) {
  const text = readFileSync(path.join(repoRoot, 'docs/integration.md'), 'utf8');
  const m = /\*\*Express\*\*[^\n]*\n\n```js\n([\s\S]*?)```/.exec(text);
  assert.ok(m, 'the Express snippet in docs/integration.md');
  const module = { exports: {} };
  const process = { env: { SWITCHBOARD_TOKEN_SECRET: secret } };
  new Function('require', 'module', 'process', m[1])(createRequire(import.meta.url), module, process);
  assert.equal(typeof module.exports.switchboardToken, 'function');
  return module.exports.switchboardToken;
}

let tmp, server, app, appUrl, browser;
const problems = [];
const tokensMinted = [];

before(async () => {
  tmp = tempDir('client-served');
  const directory = path.join(tmp.dir, 'users.json');
  writeFileSync(
    directory,
    JSON.stringify({ users: [{ id: ANN, name: 'ann' }, { id: BEN, name: 'ben' }], friendships: [[ANN, BEN]] })
  );
  const secret = randomBytes(32).toString('hex');
  server = await startServer({
    dataDir: path.join(tmp.dir, 'data'),
    // A directory file: demo mode is off (auto), as on a real site.
    env: { SWITCHBOARD_DIRECTORY: directory, SWITCHBOARD_TOKEN_SECRET: secret },
    demo: false,
  });

  const switchboardToken = expressSnippet(secret);
  const [modulePage, classicPage] = readmePages();
  assert.ok(modulePage?.includes('type="module"') && classicPage?.includes('/client/switchboard.js'), 'two README pages');
  // The web app: a page per user (the "login" is a cookie), and the token
  // route of integration.md.
  const pages = { '/ann': [ANN, modulePage], '/ben': [BEN, classicPage] };
  app = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://app');
    const page = pages[url.pathname];
    if (page) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'set-cookie': `user=${page[0]}; Path=/` });
      res.end(`<!doctype html><meta charset=utf-8><title>app</title>\n${page[1].replaceAll(CHAT_EXAMPLE, server.url)}`);
    } else if (url.pathname === '/chat-token') {
      const user = /(?:^|;\s*)user=(\d+)/.exec(req.headers.cookie || '');
      if (!user) {
        res.writeHead(401).end();
        return;
      }
      tokensMinted.push(Number(user[1]));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token: switchboardToken(Number(user[1])) }));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
  appUrl = `http://127.0.0.1:${app.address().port}`;
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await new Promise((resolve) => (app ? app.close(resolve) : resolve()));
  await server?.stop();
  tmp?.remove();
});

/** A page of the app for `who`, recording the client files it loaded. */
async function open(who) {
  const context = await browser.newContext();
  const page = watchPage(await context.newPage(), problems);
  const files = [];
  page.on('response', (r) => {
    if (r.url().includes('/client/')) files.push(r);
  });
  await page.goto(`${appUrl}/${who}`);
  return { page, files };
}

test('demo mode is off: no demo pages, no demo login', async () => {
  assert.equal(server.demoUrl, null);
  assert.equal((await fetch(`${server.url}/demo/`)).status, 404);
  assert.equal((await fetch(`${server.url}/demo/login?user=1`)).status, 404);
  const js = await fetch(`${server.url}/client/switchboard.js`);
  assert.equal(js.status, 200);
  assert.ok((await js.text()).startsWith(`/*! switchboard client ${crateVersion()} */\n`));
});

test('a page on another origin loads the client from the server and two users chat', async () => {
  assert.notEqual(new URL(appUrl).origin, new URL(server.url).origin);

  // Ben: the classic-script page. Connected before ann sends.
  const ben = await open('ben');
  await eventually(() => ben.page.evaluate(() => window.chat && window.chat.status === 'connected'), 'ben connected');
  assert.equal(await ben.page.evaluate(() => window.Switchboard.version), crateVersion());
  assert.equal(await ben.page.evaluate(() => window.chat.user.name), 'ben');

  // Ann: the module page, which signs in and says hello to her first friend.
  const ann = await open('ann');
  const annLog = ann.page.locator('#log li');
  await eventually(async () => (await annLog.allTextContents()).includes('signed in as ann; friends: ben'), 'ann signed in');

  const benMessages = ben.page.locator('#messages li');
  await eventually(async () => (await benMessages.allTextContents()).includes(`${ANN}: hello`), 'ben got hello');

  // And back, from ben's page.
  const stored = await ben.page.evaluate((to) => window.chat.send(to, 'hi ann').then((s) => s.id), ANN);
  assert.ok(stored, 'stored');
  await eventually(async () => (await annLog.allTextContents()).includes(`${BEN}: hi ann`), 'ann got hi ann');

  // Each message once.
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(await benMessages.allTextContents(), [`${ANN}: hello`, `${BEN}: hi ann`]);
  // (Ann's own "hello" may or may not come back to her as an event: the
  // client skips an id the page's `history()` call already returned.)
  const annMessages = (await annLog.allTextContents()).filter((t) => /^\d+: /.test(t));
  assert.deepEqual(annMessages.filter((t) => t !== `${ANN}: hello`), [`${BEN}: hi ann`]);
  assert.ok(annMessages.filter((t) => t === `${ANN}: hello`).length <= 1, `${annMessages}`);
  assert.ok(!(await annLog.allTextContents()).some((t) => t.startsWith('error')), 'no error on ann');

  // The files came from the chat server (the module and the script it
  // imports, cross-origin), cacheable and tagged.
  const loaded = (p) => p.files.map((r) => new URL(r.url()).pathname).sort();
  assert.deepEqual(loaded(ben), ['/client/switchboard.js']);
  assert.deepEqual(loaded(ann), ['/client/switchboard.js', '/client/switchboard.mjs']);
  for (const r of [...ben.files, ...ann.files]) {
    assert.equal(new URL(r.url()).origin, new URL(server.url).origin);
    assert.equal(r.status(), 200, r.url());
    const h = r.headers();
    assert.match(h.etag, /^"[0-9a-f]{32}"$/, r.url());
    assert.equal(h['cache-control'], 'public, no-cache');
    assert.equal(h['content-type'], 'text/javascript; charset=utf-8');
    assert.equal(h['access-control-allow-origin'], '*');
  }

  // The tokens came from the app's /chat-token (integration.md's snippet).
  assert.ok(tokensMinted.includes(ANN) && tokensMinted.includes(BEN), `${tokensMinted}`);
  assert.deepEqual(problems, []);
});
