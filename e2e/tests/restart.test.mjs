// The client survives a server restart: the server is killed and started
// again on the same port and data dir; every tab reconnects and resumes, a
// message sent while the server was down is delivered once, and nothing
// shown before is shown twice.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, startServer, openAs, connected, chat, buddy, messages, sendText, sendStored, expectCount, eventually, sleep } from '../lib.mjs';

const ALICE = 1;
const BOB = 2;

let env, alice1, alice2, bob;

before(async () => {
  env = await setup('restart');
  const ctxAlice = await env.browser.newContext({ viewport: { width: 1280, height: 800 } });
  const ctxBob = await env.browser.newContext({ viewport: { width: 1280, height: 800 } });
  alice1 = await openAs(ctxAlice, env.server, ALICE, { problems: env.problems });
  alice2 = await openAs(ctxAlice, env.server, ALICE, { problems: env.problems });
  bob = await openAs(ctxBob, env.server, BOB, { problems: env.problems });
});

after(async () => {
  await env?.teardown();
});

test('the client survives a server restart: reconnects, resumes, no duplicates', async () => {
  await buddy(alice1, BOB).click();
  await buddy(bob, ALICE).click();
  await chat(alice2, BOB).waitFor({ state: 'visible' });
  // Each stored before the next is sent, so their order is known.
  await sendStored(bob, ALICE, 'before the restart');
  await sendStored(alice1, BOB, 'hi before');
  for (const [page, friend] of [[alice1, BOB], [alice2, BOB], [bob, ALICE]]) {
    await expectCount(messages(page, friend, 'before the restart'), 1, { settleMs: 0 });
    await expectCount(messages(page, friend, 'hi before'), 1, { settleMs: 0 });
  }

  // Kill it (no goodbye) and wait until the pages notice.
  await env.server.stop();
  for (const page of [alice1, alice2, bob]) {
    await page.locator('#conn[data-status="reconnecting"]').waitFor({ timeout: 40_000 });
    assert.match(await page.locator('#conn .conn-text').textContent(), /Reconnecting/);
  }

  // A message typed while the server is down waits, pending (from the
  // follower tab: the tab that does not poll must retry too).
  const follower = (await alice1.locator('#conn').getAttribute('data-role')) === 'follower' ? alice1 : alice2;
  await sendText(follower, BOB, 'sent while down');
  await chat(follower, BOB).locator('.msg.pending').waitFor();
  await sleep(1000);

  env.server = await startServer({ dataDir: env.tmp.dir, listen: env.server.listen });
  for (const page of [alice1, alice2, bob]) await connected(page, 40_000);

  // Delivered once everywhere, the pending bubble became the message.
  for (const [page, friend] of [[alice1, BOB], [alice2, BOB], [bob, ALICE]]) {
    await expectCount(messages(page, friend, 'sent while down'), 1, { timeout: 40_000, settleMs: 0 });
  }
  await eventually(async () => (await chat(follower, BOB).locator('.msg.pending').count()) === 0, 'not pending');

  // Resumed: new messages flow both ways, once.
  await sendStored(bob, ALICE, 'after the restart');
  await sendStored(alice2, BOB, 'hi after');
  for (const [page, friend] of [[alice1, BOB], [alice2, BOB], [bob, ALICE]]) {
    await expectCount(messages(page, friend, 'after the restart'), 1, { settleMs: 0 });
    await expectCount(messages(page, friend, 'hi after'), 1, { settleMs: 0 });
  }
  // Nothing shown before the restart is shown twice, and the order holds.
  await sleep(1000);
  for (const [page, friend] of [[alice1, BOB], [alice2, BOB], [bob, ALICE]]) {
    const texts = await chat(page, friend).locator('.msg .text').allTextContents();
    assert.deepEqual(texts, ['before the restart', 'hi before', 'sent while down', 'after the restart', 'hi after'], `${friend === BOB ? 'alice' : 'bob'}: ${texts}`);
  }
  // Presence came back too: each sees the other online.
  await eventually(async () => (await buddy(bob, ALICE).getAttribute('data-presence')) === 'online', 'alice online for bob');
  await eventually(async () => (await buddy(alice1, BOB).getAttribute('data-presence')) === 'online', 'bob online for alice');
  assert.deepEqual(env.problems, []);
});
