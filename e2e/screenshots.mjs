// Takes the README's screenshots of the demo: docs/demo-desktop.png
// (1280×800, alice's page) and docs/demo-phone.png (390×844, bob's phone).
// Same setup as the tests: the built server binary, Debian's chromium.
//   node e2e/screenshots.mjs          (after cargo build)

import path from 'node:path';
import { setup, openAs, buddy, chat, sendText, messages, expectCount, repoRoot, sleep } from './lib.mjs';

const ALICE = 1;
const BOB = 2;
const CAROL = 3;
const DAVE = 4;

const env = await setup('screenshots');
try {
  const desktop = { viewport: { width: 1280, height: 800 } };
  const phone = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };
  const alice = await openAs(await env.browser.newContext(desktop), env.server, ALICE);
  const bob = await openAs(await env.browser.newContext(phone), env.server, BOB);
  const carol = await openAs(await env.browser.newContext(desktop), env.server, CAROL);
  await openAs(await env.browser.newContext(desktop), env.server, DAVE);

  await buddy(alice, BOB).click();
  await buddy(bob, ALICE).click();
  const lines = [
    [bob, ALICE, 'Hey alice! Are we still on for Saturday?'],
    [alice, BOB, 'Yes! 10am at the climbing gym?'],
    [bob, ALICE, 'Perfect. I will bring the rope.'],
    [alice, BOB, 'Great. Erin might join us too'],
    [bob, ALICE, 'The more the merrier'],
  ];
  for (const [page, to, text] of lines) {
    await sendText(page, to, text);
    await expectCount(messages(alice, BOB, text), 1, { settleMs: 0 });
    await sleep(150);
  }
  // carol writes while alice has no window for her: it pops up minimised
  // with a badge; then carol steps away.
  await buddy(carol, ALICE).click();
  await sendText(carol, ALICE, 'Did you see the photos from last week?');
  await chat(alice, CAROL).locator('.badge').waitFor({ state: 'visible' });
  await carol.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await buddy(alice, CAROL).and(alice.locator('[data-presence="away"]')).waitFor();

  // alice's desktop: bob is typing.
  await chat(bob, ALICE).locator('.chat-text').pressSequentially('See you', { delay: 40 });
  await chat(alice, BOB).locator('.typing').waitFor({ state: 'visible' });
  await alice.mouse.move(600, 300);
  await alice.screenshot({ path: path.join(repoRoot, 'docs/demo-desktop.png') });

  // bob's phone: alice read it (Seen) and is typing.
  await chat(bob, ALICE).locator('.chat-text').fill('');
  await chat(bob, ALICE).locator('.seen').waitFor({ state: 'visible' });
  await chat(alice, BOB).locator('.chat-text').pressSequentially('Can', { delay: 40 });
  await chat(bob, ALICE).locator('.typing').waitFor({ state: 'visible' });
  await bob.screenshot({ path: path.join(repoRoot, 'docs/demo-phone.png') });

  // bob's phone, back at the contact list.
  await chat(bob, ALICE).locator('.back').click();
  await bob.locator('#buddies').waitFor({ state: 'visible' });
  await sleep(200);
  await bob.screenshot({ path: path.join(repoRoot, 'docs/demo-phone-contacts.png') });
  console.log('wrote docs/demo-desktop.png, docs/demo-phone.png, docs/demo-phone-contacts.png');
} finally {
  await env.teardown();
}
