// A reload restores chat windows (open and minimised), their history, and
// unread badges; "seen" receipts, also on the reloaded sender's side
// (`/history` answers the friend's read mark); history scroll-back.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, openAs, connected, chat, buddy, messages, sendText, expectCount, eventually } from '../lib.mjs';

const ALICE = 1;
const BOB = 2;
const CAROL = 3;

let env, alice, bob, carol;

before(async () => {
  env = await setup('reload');
  const ctx = () => env.browser.newContext({ viewport: { width: 1280, height: 800 } });
  alice = await openAs(await ctx(), env.server, ALICE, { problems: env.problems });
  bob = await openAs(await ctx(), env.server, BOB, { problems: env.problems });
  carol = await openAs(await ctx(), env.server, CAROL, { problems: env.problems });
});

after(async () => {
  await env?.teardown();
});

function badge(locator) {
  return locator.locator('.badge');
}

async function badgeText(locator) {
  const b = badge(locator).first();
  return (await b.isVisible()) ? (await b.textContent()).trim() : '';
}

test('a reload restores windows, history and unread badges', async () => {
  await buddy(alice, BOB).click();
  await buddy(alice, CAROL).click();
  await chat(alice, CAROL).locator('.min').click();
  await eventually(async () => (await chat(alice, CAROL).getAttribute('data-min')) === 'true', 'carol minimised');

  await buddy(bob, ALICE).click();
  await sendText(bob, ALICE, 'r1');
  await sendText(bob, ALICE, 'r2');
  await expectCount(messages(alice, BOB, 'r2'), 1);
  // alice's window is open: bob's last message shows "Seen".
  await chat(bob, ALICE).locator('.seen').waitFor({ state: 'visible' });

  await buddy(carol, ALICE).click();
  await sendText(carol, ALICE, 'c1');
  await sendText(carol, ALICE, 'c2');
  await eventually(async () => (await badgeText(chat(alice, CAROL))) === '2', 'badge 2 on the minimised window');
  await eventually(async () => (await badgeText(buddy(alice, CAROL))) === '2', 'badge 2 in the contact list');
  assert.equal(await badgeText(buddy(alice, BOB)), '', 'bob was read');
  await chat(carol, ALICE).locator('.seen').waitFor({ state: 'hidden' });

  await alice.reload();
  await connected(alice);
  await chat(alice, BOB).waitFor({ state: 'visible' });
  assert.equal(await chat(alice, BOB).getAttribute('data-min'), 'false');
  assert.equal(await chat(alice, CAROL).getAttribute('data-min'), 'true');
  await expectCount(messages(alice, BOB, 'r1'), 1);
  await expectCount(messages(alice, BOB, 'r2'), 1);
  await eventually(async () => (await badgeText(chat(alice, CAROL))) === '2', 'badge 2 after the reload');
  await eventually(async () => (await badgeText(buddy(alice, CAROL))) === '2', 'contact badge 2 after the reload');
  assert.equal(await badgeText(buddy(alice, BOB)), '');
  // The window order is kept too: bob's window was opened first, so it is
  // further from the contact list (the dock is laid out right to left).
  const order = await alice.locator('#dock .chat').evaluateAll((els) => els.map((e) => Number(e.dataset.friend)));
  assert.deepEqual(order, [CAROL, BOB]);

  // Opening carol's window reads it: badges go, carol sees "Seen".
  await chat(alice, CAROL).locator('.chat-head').click();
  await expectCount(messages(alice, CAROL, 'c2'), 1);
  await eventually(async () => (await badgeText(buddy(alice, CAROL))) === '', 'contact badge cleared');
  await chat(carol, ALICE).locator('.seen').waitFor({ state: 'visible' });

  // And the read mark is stored: a reload shows no badge.
  await alice.reload();
  await connected(alice);
  await expectCount(messages(alice, CAROL, 'c2'), 1);
  assert.equal(await badgeText(buddy(alice, CAROL)), '');

  // "Seen" survives the sender's reload: /history says how far alice read.
  await carol.reload();
  await connected(carol);
  await expectCount(messages(carol, ALICE, 'c2'), 1);
  await chat(carol, ALICE).locator('.seen').waitFor({ state: 'visible' });
  assert.equal((await chat(carol, ALICE).locator('.seen').textContent()).trim(), 'Seen');
  assert.deepEqual(env.problems, []);
});

test('history scroll-back loads older messages at the top', async () => {
  // 25 more from bob, through the client API (faster than typing).
  await bob.evaluate(async (to) => {
    for (let i = 1; i <= 25; i++) await window.demo.client.send(to, `old ${i}`);
  }, ALICE);
  await expectCount(messages(alice, BOB, 'old 25'), 1);
  await alice.reload();
  await connected(alice);
  // The newest page (20) is shown: the first messages are not.
  await expectCount(messages(alice, BOB, 'old 25'), 1);
  await expectCount(messages(alice, BOB, 'old 6'), 1);
  assert.equal(await messages(alice, BOB, 'r1').count(), 0);
  assert.equal(await chat(alice, BOB).locator('.msg').count(), 20);
  // Scroll to the top: the older ones come, each once, in order.
  await chat(alice, BOB).locator('.chat-body').evaluate((b) => {
    b.scrollTop = 0;
  });
  await expectCount(messages(alice, BOB, 'r1'), 1);
  const texts = await chat(alice, BOB).locator('.msg .text').allTextContents();
  assert.deepEqual(texts, ['r1', 'r2', ...Array.from({ length: 25 }, (_, i) => `old ${i + 1}`)]);
  assert.deepEqual(env.problems, []);
});
