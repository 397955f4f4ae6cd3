// The JSONP transport cleans up after itself: after N calls (answers,
// protocol errors, script load failures, timeouts) no <script> tag and no
// callback is left behind.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, openAs, buddy, sendText, messages, expectCount, eventually, watchPage } from '../lib.mjs';

let env, page;

before(async () => {
  env = await setup('jsonp');
  const ctx = await env.browser.newContext();
  page = watchPage(await ctx.newPage(), env.problems);
  // The sign-in page: the library is loaded, no client runs.
  await page.goto(`${env.server.url}/demo/`);
  await page.locator('#picker .user-tile').first().waitFor();
});

after(async () => {
  await env?.teardown();
});

/** Script tags and callbacks the transport has outstanding. */
function leftovers(p) {
  return p.evaluate(() => ({
    scripts: document.querySelectorAll('script[data-sb]').length,
    callbacks: Object.keys(window.__sb || {}),
  }));
}

test('no leftover script tags or callbacks after many calls', async () => {
  const result = await page.evaluate(async () => {
    const t = new window.Switchboard.JsonpTransport(location.origin);
    // 50 at once, then 50 one after another.
    const parallel = await Promise.all(Array.from({ length: 50 }, () => t.call('/ping', {})));
    let sequential = 0;
    for (let i = 0; i < 50; i++) if ((await t.call('/ping', {})).ok) sequential++;
    return { parallel: parallel.filter((a) => a.ok).length, sequential, namespace: t.namespace };
  });
  assert.deepEqual(result, { parallel: 50, sequential: 50, namespace: '__sb' });
  assert.deepEqual(await leftovers(page), { scripts: 0, callbacks: [] });
});

test('errors clean up too: protocol errors and script load failures', async () => {
  const codes = await page.evaluate(async () => {
    const t = new window.Switchboard.JsonpTransport(location.origin);
    const code = (p) => p.then(() => 'ok', (e) => e.code);
    const out = [];
    for (let i = 0; i < 10; i++) {
      // A JSONP-wrapped failure (status 200, ok:false).
      out.push(await code(t.call('/poll', { sid: '1-00000000000000000000000000000000', since: 0 })));
      // Not JSONP-wrapped (404): the script fails to load.
      out.push(await code(t.call('/no-such-path', {})));
    }
    // A server that is not there at all.
    out.push(await code(new window.Switchboard.JsonpTransport('http://127.0.0.1:9').call('/ping', {})));
    return out;
  });
  assert.deepEqual(codes.slice(0, 2), ['unknown_session', 'network']);
  assert.equal(codes.filter((c) => c === 'unknown_session').length, 10);
  assert.equal(codes.filter((c) => c === 'network').length, 11);
  assert.deepEqual(await leftovers(page), { scripts: 0, callbacks: [] });
  // The 404s are JSON with `nosniff`, so Chromium refuses to run them as
  // script and says so on the console: expected here, and only here.
  const refused = (p) => p.includes('/no-such-path') && p.includes('strict MIME type checking');
  await eventually(async () => env.problems.filter(refused).length === 10, 'one refusal per 404', 5_000);
  env.problems.splice(0, env.problems.length, ...env.problems.filter((p) => !refused(p)));
});

test('a timed-out call removes its tag at once and its callback when the late answer comes', async () => {
  const code = await page.evaluate(async () => {
    const login = await (await fetch('/demo/login?user=5')).json();
    const t = new window.Switchboard.JsonpTransport(location.origin);
    const c = await t.call('/connect', { token: login.token });
    // A poll held 2 s by the server, given up after 300 ms.
    return t.call('/poll', { sid: c.sid, since: c.seq, wait: 2 }, { timeoutMs: 300 }).then(() => 'ok', (e) => e.code);
  });
  assert.equal(code, 'timeout');
  const now = await leftovers(page);
  assert.equal(now.scripts, 0, 'the tag is gone at once');
  assert.ok(now.callbacks.length <= 1, `one no-op callback awaits the late answer: ${now.callbacks}`);
  await eventually(async () => (await leftovers(page)).callbacks.length === 0, 'the late answer removed the no-op', 10_000);
  assert.deepEqual(env.problems, []);
});

test('a running client leaves at most its one outstanding poll behind', async () => {
  const ctx = await env.browser.newContext();
  const alice = await openAs(ctx, env.server, 1, { problems: env.problems });
  await buddy(alice, 2).click();
  for (let i = 0; i < 15; i++) await sendText(alice, 2, `n${i}`);
  await expectCount(messages(alice, 2, 'n14'), 1);
  await eventually(async () => {
    const l = await leftovers(alice);
    return l.scripts <= 1 && l.callbacks.length <= 1;
  }, 'at most the long-poll outstanding');
  await ctx.close();
  assert.deepEqual(env.problems, []);
});
