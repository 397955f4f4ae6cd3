// Friends only: a non-friend is not offered, and a forged send (through the
// client API, or a raw JSONP call made from the page) is refused with
// not_friends, shown to the user, and never reaches the other side.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, openAs, chat, buddy, sleep, expectText } from '../lib.mjs';

const ALICE = 1;
const BOB = 2;
const CAROL = 3;
const DAVE = 4; // friends with bob and frank, not with alice

let env, alice, dave;

before(async () => {
  env = await setup('friends');
  const ctx = () => env.browser.newContext({ viewport: { width: 1280, height: 800 } });
  alice = await openAs(await ctx(), env.server, ALICE, { problems: env.problems });
  dave = await openAs(await ctx(), env.server, DAVE, { problems: env.problems });
});

after(async () => {
  await env?.teardown();
});

test('a non-friend is not offered', async () => {
  const offered = await alice.locator('#buddies .buddy').evaluateAll((els) => els.map((e) => Number(e.dataset.user)));
  assert.deepEqual(offered.sort(), [BOB, CAROL]);
  assert.equal(await buddy(alice, DAVE).count(), 0);
  const daves = await dave.locator('#buddies .buddy').evaluateAll((els) => els.map((e) => Number(e.dataset.user)));
  assert.ok(!daves.includes(ALICE), `dave is offered alice: ${daves}`);
  // A window for a non-friend in the UI state (a forged /ui) is not shown.
  await alice.evaluate((d) => window.demo.client.setUi({ v: 1, windows: [{ id: d, min: false }], focus: d }), DAVE);
  await alice.reload();
  await alice.locator('#conn[data-status="connected"]').waitFor();
  await sleep(300);
  assert.equal(await chat(alice, DAVE).count(), 0);
});

test('a forged send through the client API is refused with not_friends, shown', async () => {
  const code = await alice.evaluate(
    (d) => window.demo.client.send(d, 'forged via the API').then(() => 'sent', (e) => e.code),
    DAVE
  );
  assert.equal(code, 'not_friends');
  await expectText(alice.locator('#toasts .toast.error').last(), (t) => t.includes('not_friends'), 'a not_friends toast');
  assert.match(await alice.locator('#toasts .toast.error').last().textContent(), /only message friends/);
});

test('a forged raw JSONP call from the page is refused with not_friends', async () => {
  const answer = await alice.evaluate(
    ({ d, base }) =>
      new Promise((resolve, reject) => {
        window.forged = (json) => resolve(json);
        const s = document.createElement('script');
        const q = new URLSearchParams({ sid: window.demo.client.sid, to: String(d), text: 'forged via JSONP', callback: 'forged' });
        s.src = `${base}/send?${q}`;
        s.onerror = () => reject(new Error('script failed'));
        document.head.appendChild(s);
      }),
    { d: DAVE, base: env.server.url }
  );
  assert.equal(answer.ok, false);
  assert.equal(answer.error.code, 'not_friends');

  // dave never sees either forged message, nor a window for alice.
  await sleep(1000);
  assert.equal(await chat(dave, ALICE).count(), 0);
  assert.equal(await dave.getByText('forged', { exact: false }).count(), 0);
  // And alice's history with dave is empty.
  const history = await alice.evaluate((d) => window.demo.client.history(d), DAVE);
  assert.deepEqual(history.messages, []);
  assert.deepEqual(env.problems, []);
});
