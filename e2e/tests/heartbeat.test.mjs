// Tab sharing without navigator.locks: the heartbeat election gives one
// polling tab, events reach every tab once, and a new leader takes over
// when the leader's tab closes.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, openAs, buddy, messages, sendText, expectCount } from '../lib.mjs';

const ALICE = 1;
const BOB = 2;
const query = { coordination: 'heartbeat' };

let env, tabs, bob;

before(async () => {
  env = await setup('heartbeat');
  const ctxAlice = await env.browser.newContext();
  tabs = [];
  for (let i = 0; i < 3; i++) tabs.push(await openAs(ctxAlice, env.server, ALICE, { problems: env.problems, query }));
  bob = await openAs(await env.browser.newContext(), env.server, BOB, { problems: env.problems });
});

after(async () => {
  await env?.teardown();
});

async function roles() {
  return Promise.all(tabs.map((p) => p.locator('#conn').getAttribute('data-role')));
}

test('one leader among three tabs; every tab gets each message once', async () => {
  await tabs[0].locator('#conn[data-role]:not([data-role=""])').waitFor();
  let leaders;
  const start = Date.now();
  do {
    leaders = (await roles()).filter((r) => r === 'leader').length;
    if (leaders === 1) break;
    await new Promise((r) => setTimeout(r, 200));
  } while (Date.now() - start < 15_000);
  assert.equal(leaders, 1, (await roles()).join(' | '));

  await buddy(tabs[0], BOB).click();
  await buddy(bob, ALICE).click();
  await sendText(bob, ALICE, 'to every tab');
  for (const t of tabs) await expectCount(messages(t, BOB, 'to every tab'), 1);
});

test('the leader closes: another tab is elected and events keep coming', async () => {
  const r = await roles();
  const i = r.findIndex((x) => x === 'leader');
  await tabs[i].close();
  tabs.splice(i, 1);
  await tabs[0].locator('#conn[data-role]:not([data-role=""])').waitFor();
  const start = Date.now();
  let leaders;
  do {
    leaders = (await roles()).filter((x) => x === 'leader').length;
    if (leaders === 1) break;
    await new Promise((res) => setTimeout(res, 200));
  } while (Date.now() - start < 15_000);
  assert.equal(leaders, 1, (await roles()).join(' | '));
  await sendText(bob, ALICE, 'after the election');
  for (const t of tabs) await expectCount(messages(t, BOB, 'after the election'), 1);
  assert.deepEqual(env.problems, []);
});
