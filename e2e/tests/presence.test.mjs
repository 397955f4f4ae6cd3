// Presence and typing as the friend sees them: typing shows and clears;
// away when no tab of the user is in use; offline after the grace period
// once every tab is closed.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, openAs, chat, buddy, GRACE_MS, eventually, sleep, sendText, expectCount, messages } from '../lib.mjs';

const ALICE = 1;
const BOB = 2;

let env, ctxAlice, alice1, alice2, bob;

before(async () => {
  env = await setup('presence');
  ctxAlice = await env.browser.newContext({ viewport: { width: 1280, height: 800 } });
  const ctxBob = await env.browser.newContext({ viewport: { width: 1280, height: 800 } });
  alice1 = await openAs(ctxAlice, env.server, ALICE, { problems: env.problems });
  alice2 = await openAs(ctxAlice, env.server, ALICE, { problems: env.problems });
  bob = await openAs(ctxBob, env.server, BOB, { problems: env.problems });
});

after(async () => {
  await env?.teardown();
});

/** The presence bob's contact list shows for alice. */
function aliceAsBobSeesHer() {
  return buddy(bob, ALICE).getAttribute('data-presence');
}

test('typing shows and clears', async () => {
  await buddy(alice1, BOB).click();
  await buddy(bob, ALICE).click();
  const indicator = chat(bob, ALICE).locator('.typing');
  assert.equal(await indicator.isVisible(), false);

  // Typing, then idle: shown, then cleared by `stopped` (debounced).
  await chat(alice1, BOB).locator('.chat-text').pressSequentially('hel', { delay: 50 });
  await indicator.waitFor({ state: 'visible' });
  assert.match(await indicator.textContent(), /alice is typing/);
  await indicator.waitFor({ state: 'hidden', timeout: 10_000 });

  // Typing, then sending: cleared by the message.
  await chat(alice1, BOB).locator('.chat-text').fill('');
  await chat(alice1, BOB).locator('.chat-text').pressSequentially('hello', { delay: 30 });
  await indicator.waitFor({ state: 'visible' });
  await chat(alice1, BOB).locator('.chat-text').press('Enter');
  await expectCount(messages(bob, ALICE, 'hello'), 1, { settleMs: 0 });
  await indicator.waitFor({ state: 'hidden', timeout: 2000 });

  // Emptying the box says stopped at once.
  await chat(alice1, BOB).locator('.chat-text').pressSequentially('x', { delay: 30 });
  await indicator.waitFor({ state: 'visible' });
  await chat(alice1, BOB).locator('.chat-text').press('Backspace');
  await indicator.waitFor({ state: 'hidden', timeout: 2000 });
  assert.deepEqual(env.problems, []);
});

/** Makes a page look hidden (a background tab) or visible again. */
async function setHidden(page, hidden) {
  await page.evaluate((h) => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
}

test('away only when no tab of the user is in use', async () => {
  await eventually(async () => (await aliceAsBobSeesHer()) === 'online', 'alice online');
  await setHidden(alice1, true);
  await sleep(800);
  assert.equal(await aliceAsBobSeesHer(), 'online', 'one tab still in use');
  await setHidden(alice2, true);
  await eventually(async () => (await aliceAsBobSeesHer()) === 'away', 'alice away');
  assert.match(await buddy(bob, ALICE).locator('.status').textContent(), /Away/);
  await setHidden(alice2, false);
  await eventually(async () => (await aliceAsBobSeesHer()) === 'online', 'alice back online');
  await setHidden(alice1, false);
});

test('closing all tabs of a user turns them offline for the friend after the grace period', async () => {
  await eventually(async () => (await aliceAsBobSeesHer()) === 'online', 'alice online');
  // One tab closing changes nothing.
  await alice1.close({ runBeforeUnload: true });
  await sleep(GRACE_MS + 1000);
  assert.equal(await aliceAsBobSeesHer(), 'online');
  // The last one: offline once the grace has passed (not before, and not
  // a tab timeout later: the tab left by sendBeacon).
  const closed = Date.now();
  await alice2.close({ runBeforeUnload: true });
  await sleep(GRACE_MS / 3);
  assert.equal(await aliceAsBobSeesHer(), 'online', 'still online within the grace');
  await eventually(async () => (await aliceAsBobSeesHer()) === 'offline', 'alice offline', 15_000);
  const took = Date.now() - closed;
  assert.ok(took >= GRACE_MS - 200, `offline after ${took} ms, before the grace`);
  assert.ok(took < GRACE_MS + 8000, `offline after ${took} ms: the tab did not leave`);
  assert.equal(await chat(bob, ALICE).getAttribute('data-presence'), 'offline');
  assert.match(await chat(bob, ALICE).locator('.chat-sub').textContent(), /Offline/);
  assert.deepEqual(env.problems, []);
});
