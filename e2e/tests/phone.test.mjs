// At phone width: the contact list is the page, and one chat at a time is
// shown full screen; back returns to the list. The layout is the same UI
// state as on a desktop.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, openAs, chat, buddy, sendText, messages, expectCount, eventually } from '../lib.mjs';

const BOB = 2;
const ALICE = 1;
const CAROL = 3;

let env, phone, desktop;

before(async () => {
  env = await setup('phone');
  phone = await openAs(
    await env.browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true }),
    env.server,
    BOB,
    { problems: env.problems }
  );
  desktop = await openAs(await env.browser.newContext({ viewport: { width: 1280, height: 800 } }), env.server, ALICE, {
    problems: env.problems,
  });
});

after(async () => {
  await env?.teardown();
});

async function visibleChats(page) {
  return page.locator('#dock .chat').evaluateAll((els) =>
    els.filter((e) => e.getBoundingClientRect().width > 0).map((e) => [Number(e.dataset.friend), Math.round(e.getBoundingClientRect().width)])
  );
}

test('one full-screen chat at a time, back to the contact list', async () => {
  assert.ok(await buddy(phone, ALICE).isVisible(), 'the contact list is the page');
  await buddy(phone, ALICE).tap();
  await chat(phone, ALICE).waitFor({ state: 'visible' });
  assert.deepEqual(await visibleChats(phone), [[ALICE, 390]]);
  await sendText(phone, ALICE, 'from my phone');
  // On the desktop it pops up as a minimised window.
  await expectCount(messages(desktop, BOB, 'from my phone'), 1, { visible: false });
  assert.equal(await chat(desktop, BOB).getAttribute('data-min'), 'true');

  await chat(phone, ALICE).locator('.back').tap();
  await buddy(phone, CAROL).waitFor({ state: 'visible' });
  assert.deepEqual(await visibleChats(phone), []);
  await buddy(phone, CAROL).tap();
  await eventually(async () => JSON.stringify(await visibleChats(phone)) === JSON.stringify([[CAROL, 390]]), 'only carol, full width');
  // No horizontal scrolling at phone width.
  assert.ok(await phone.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth));
  assert.deepEqual(env.problems, []);
});
