// The demo over https: a server with TLS required (a certificate made by
// the openssl CLI for this run), two users chatting in Chromium. The plain
// port's 301 brings a browser that asked for http:// to https://, and
// every request the page makes (the JSONP polls and sends) goes over TLS.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { tempDir, startServer, launchBrowser, openAs, chat, buddy, sendStored, messages, expectCount } from '../lib.mjs';

const ALICE = 1;
const BOB = 2;

let tmp, server, browser, https, problems = [];

before(async () => {
  tmp = tempDir('tls');
  const cert = path.join(tmp.dir, 'cert.pem');
  const key = path.join(tmp.dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ], { stdio: 'ignore' });
  server = await startServer({
    dataDir: path.join(tmp.dir, 'data'),
    env: {
      SWITCHBOARD_TLS_LISTEN: '127.0.0.1:0',
      SWITCHBOARD_TLS_CERT: cert,
      SWITCHBOARD_TLS_KEY: key,
      SWITCHBOARD_TLS_MODE: 'required',
    },
  });
  // With TLS on, the demo line names the https origin.
  https = new URL(server.demoUrl).origin;
  assert.match(https, /^https:\/\/127\.0\.0\.1:\d+$/);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
  tmp?.remove();
});

test('two users chat over https; the plain port redirects the browser there', async () => {
  // The test certificate is self-signed: the contexts accept it.
  const ctx = () => browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: true });
  const requests = [];
  const aliceCtx = await ctx();
  aliceCtx.on('request', (r) => requests.push(r.url()));
  // Alice asks for the plain URL and is sent to https by the 301.
  const alice = await openAs(aliceCtx, server, ALICE, { problems });
  assert.ok(alice.url().startsWith(`${https}/demo/`), `alice is on ${alice.url()}`);
  const bob = await openAs(await ctx(), { url: https }, BOB, { problems });
  assert.ok(bob.url().startsWith('https://'));

  await buddy(alice, BOB).click();
  await buddy(bob, ALICE).click();
  await sendStored(alice, BOB, 'hello over TLS');
  await expectCount(messages(bob, ALICE, 'hello over TLS'), 1);
  await sendStored(bob, ALICE, 'and back');
  await expectCount(messages(alice, BOB, 'and back'), 1);
  assert.equal(await chat(alice, BOB).locator('.msg .text', { hasText: 'hello over TLS' }).count(), 1);

  // Every call the page made after the redirect was https.
  const calls = requests.filter((u) => /\/(connect|poll|send)\?/.test(u));
  assert.ok(calls.length > 0, 'the page made calls');
  assert.deepEqual(calls.filter((u) => !u.startsWith('https://')), []);
  assert.deepEqual(problems, []);
});
