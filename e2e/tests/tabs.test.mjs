// Two users, three tabs: alice in two tabs (one browser profile, so they
// share one long-poll), bob in one (another profile).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, openAs, chat, buddy, messages, sendText, sendStored, expectCount, eventually, sleep } from '../lib.mjs';

const ALICE = 1;
const BOB = 2;
const CAROL = 3;

let env, alice1, alice2, bob, ctxAlice, ctxBob;
const polls = new Map(); // page -> list of long-poll request URLs

function recordPolls(page) {
  const list = [];
  polls.set(page, list);
  page.on('request', (r) => {
    const url = new URL(r.url());
    if (url.pathname === '/poll' && url.searchParams.get('wait') !== '0') list.push(r.url());
  });
}

before(async () => {
  env = await setup('tabs');
  ctxAlice = await env.browser.newContext({ viewport: { width: 1280, height: 800 } });
  ctxBob = await env.browser.newContext({ viewport: { width: 1280, height: 800 } });
  alice1 = await openAs(ctxAlice, env.server, ALICE, { problems: env.problems });
  recordPolls(alice1);
  alice2 = await openAs(ctxAlice, env.server, ALICE, { problems: env.problems });
  recordPolls(alice2);
  // bob on the fetch/JSON transport, alice on JSONP: both in one chat.
  bob = await openAs(ctxBob, env.server, BOB, { problems: env.problems, transport: 'fetch' });
});

after(async () => {
  await env?.teardown();
});

test('the server printed the demo URL, and / leads to it', async () => {
  assert.equal(env.server.demoUrl, `${env.server.url}/demo/`);
  // A fresh profile: one signed in already would skip the picker (the
  // sign-in is shared by the tabs of a browser).
  const ctx = await env.browser.newContext();
  const page = await ctx.newPage();
  await page.goto(env.server.url + '/');
  await page.waitForURL(/\/demo\/$/);
  await page.locator('#picker .user-tile').first().waitFor();
  await ctx.close();
});

test('a message appears in all three tabs exactly once', async () => {
  // alice opens bob's window in one tab; the other tab follows (UI state).
  await buddy(alice1, BOB).click();
  await chat(alice2, BOB).waitFor({ state: 'visible' });
  await buddy(bob, ALICE).click();

  await sendText(bob, ALICE, 'hi alice, from bob');
  for (const page of [alice1, alice2, bob]) {
    await expectCount(messages(page, page === bob ? ALICE : BOB, 'hi alice, from bob'), 1);
  }

  await sendText(alice2, BOB, 'hello bob, from the second tab');
  await expectCount(messages(bob, ALICE, 'hello bob, from the second tab'), 1);
  await expectCount(messages(alice1, BOB, 'hello bob, from the second tab'), 1);
  await expectCount(messages(alice2, BOB, 'hello bob, from the second tab'), 1);
  // The sender's bubble is the stored message, not pending any more.
  await eventually(async () => (await alice2.locator(`.chat[data-friend="${BOB}"] .msg.pending`).count()) === 0, 'no pending bubble');

  // Both ways, each stored before the next is sent: every message once,
  // in the order sent, everywhere.
  const burst = [];
  for (let i = 1; i <= 5; i++) {
    burst.push(`burst ${i}`);
    await sendStored(i % 2 ? bob : alice1, i % 2 ? ALICE : BOB, `burst ${i}`);
  }
  for (const [page, friend] of [[alice1, BOB], [alice2, BOB], [bob, ALICE]]) {
    for (const text of burst) await expectCount(messages(page, friend, text), 1, { settleMs: 0 });
    const texts = await chat(page, friend).locator('.msg .text').allTextContents();
    assert.deepEqual(texts.filter((t) => t.startsWith('burst')), burst, 'in order');
  }
  assert.deepEqual(env.problems, []);
});

test('opening, minimising and closing a chat window in one tab does it in the other', async () => {
  await buddy(alice1, CAROL).click();
  await chat(alice1, CAROL).waitFor({ state: 'visible' });
  await chat(alice2, CAROL).waitFor({ state: 'visible' });
  assert.equal(await chat(alice2, CAROL).getAttribute('data-min'), 'false');

  await chat(alice2, CAROL).locator('.min').click();
  await eventually(async () => (await chat(alice1, CAROL).getAttribute('data-min')) === 'true', 'minimised in the other tab');
  // A minimised window shows its head only.
  assert.equal(await chat(alice1, CAROL).locator('.chat-input').isVisible(), false);

  await chat(alice1, CAROL).locator('.close').click();
  await chat(alice2, CAROL).waitFor({ state: 'detached' });
  await chat(alice1, CAROL).waitFor({ state: 'detached' });
  // bob's window is untouched.
  await chat(alice2, BOB).waitFor({ state: 'visible' });
});

test('one long-poll per user: the other tab is a follower that does not long-poll', async () => {
  const roles = await Promise.all([alice1, alice2].map((p) => p.locator('#conn').getAttribute('data-role')));
  const leaders = roles.filter((r) => r === 'leader');
  const followers = roles.filter((r) => r === 'follower');
  assert.equal(leaders.length, 1, roles.join(' | '));
  assert.equal(followers.length, 1, roles.join(' | '));
  const leader = roles[0] === 'leader' ? alice1 : alice2;
  const follower = leader === alice1 ? alice2 : alice1;
  assert.ok(polls.get(leader).length >= 1, 'the leader long-polls');
  assert.equal(polls.get(follower).length, 0, `the follower long-polled: ${polls.get(follower)}`);
});

test('when the leader tab closes, the other tab takes over the poll', async () => {
  const leader = (await alice1.locator('#conn').getAttribute('data-role')) === 'leader' ? alice1 : alice2;
  const other = leader === alice1 ? alice2 : alice1;
  await leader.close();
  await other.locator('#conn[data-role="leader"]').waitFor({ timeout: 15_000 });
  await sendText(bob, ALICE, 'after the leader left');
  await expectCount(messages(other, BOB, 'after the leader left'), 1);
  await sleep(200);
  assert.deepEqual(env.problems, []);
});
