// The demo's finish: one sign-in for every tab of a browser (and one
// sign-out), the "+N" tab for chat windows that do not fit, safe clickable
// links, Facebook-style times, a restore control on minimised windows,
// names instead of ids, no developer text, and a picker that shows who is
// friends with whom.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, openAs, connected, watchPage, chat, buddy, messages, sendStored, expectCount, expectText, eventually } from '../lib.mjs';

const ALICE = 1;
const BOB = 2;
const CAROL = 3;
const DAVE = 4; // friends with bob and frank, not with alice

let env;
// Every dialog the links test's page opened (a message text run as script
// would open one).
const dialogs = [];

before(async () => {
  env = await setup('demo');
});

after(async () => {
  await env?.teardown();
});

const desktop = { viewport: { width: 1280, height: 800 } };

test('a second tab is signed in without asking; signing out signs out every tab', async () => {
  const ctx = await env.browser.newContext(desktop);
  const first = await openAs(ctx, env.server, ALICE, { problems: env.problems });

  const second = watchPage(await ctx.newPage(), env.problems);
  await second.goto(`${env.server.url}/demo/`);
  await connected(second);
  assert.equal(await second.locator('#picker').isVisible(), false, 'no sign-in asked');
  assert.equal((await second.locator('#me-name').textContent()).trim(), 'alice');
  await buddy(second, BOB).waitFor();

  // A reload keeps it too.
  await second.reload();
  await connected(second);
  assert.equal((await second.locator('#me-name').textContent()).trim(), 'alice');

  // Sign out in one tab: every tab shows the picker, and a new tab asks.
  await first.locator('#sign-out').click();
  await first.locator('#picker .user-tile').first().waitFor();
  await second.locator('#picker .user-tile').first().waitFor();
  const third = watchPage(await ctx.newPage(), env.problems);
  await third.goto(`${env.server.url}/demo/`);
  await third.locator('#picker .user-tile').first().waitFor();
  assert.equal(await third.locator('#home').isVisible(), false);
  await ctx.close();
  assert.deepEqual(env.problems, []);
});

test('at 900 px, windows that do not fit are behind a "+N" tab, and one picked from it swaps in', async () => {
  const ctx = await env.browser.newContext({ viewport: { width: 900, height: 800 } });
  const bob = await openAs(ctx, env.server, BOB, { problems: env.problems });
  const friends = [ALICE, CAROL, DAVE];
  for (const f of friends) {
    await buddy(bob, f).click();
    await chat(bob, f).waitFor({ state: 'attached' });
  }
  const visible = () =>
    bob.locator('#dock .chat').evaluateAll((els) => els.filter((e) => e.getBoundingClientRect().width > 0).map((e) => Number(e.dataset.friend)));
  const more = bob.locator('#dock .more');
  await more.waitFor({ state: 'visible' });
  const shown = await visible();
  const hidden = friends.filter((f) => !shown.includes(f));
  assert.ok(hidden.length >= 1 && shown.length >= 1, `shown ${shown}, hidden ${hidden}`);
  assert.equal((await more.locator('.more-count').textContent()).trim(), `+${hidden.length}`);
  // The last one opened is shown; the first opened is the one hidden.
  assert.ok(shown.includes(DAVE), `shown ${shown}`);
  assert.ok(hidden.includes(ALICE), `hidden ${hidden}`);

  // Nothing shown runs under the contact list or off the screen.
  const overlap = await bob.evaluate(() => {
    const side = document.querySelector('.sidebar').getBoundingClientRect().left;
    const boxes = [...document.querySelectorAll('#dock .chat, #dock .more')].map((e) => e.getBoundingClientRect()).filter((r) => r.width > 0);
    return boxes.some((r) => r.right > side + 1 || r.left < 0);
  });
  assert.equal(overlap, false, 'windows and the +N tab fit between the page edge and the contact list');

  // The tab lists the hidden conversations by name; picking one shows it.
  await more.locator('.more-tab').click();
  const items = more.locator('.more-menu .more-item');
  await expectCount(items, hidden.length);
  const item = more.locator(`.more-item[data-friend="${ALICE}"]`);
  assert.equal((await item.locator('.name').textContent()).trim(), 'alice');
  await item.click();
  await eventually(async () => (await visible()).includes(ALICE), 'alice swapped in');
  assert.equal(await chat(bob, ALICE).getAttribute('data-min'), 'false');
  assert.equal(await more.locator('.more-menu').isVisible(), false, 'the list closes');
  // Still the same number hidden: one swapped out for it.
  assert.equal((await more.locator('.more-count').textContent()).trim(), `+${hidden.length}`);
  assert.equal((await visible()).length, shown.length);

  // Wide enough for all: no "+N".
  await bob.setViewportSize({ width: 1600, height: 800 });
  await more.waitFor({ state: 'hidden' });
  assert.equal((await visible()).length, friends.length);
  await ctx.close();
  assert.deepEqual(env.problems, []);
});

test('links: only http(s) URLs, built safely; javascript: and others stay text', async () => {
  const alice = await openAs(await env.browser.newContext(desktop), env.server, ALICE, { problems: env.problems });
  alice.on('dialog', (d) => {
    dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
  const bob = await openAs(await env.browser.newContext(desktop), env.server, BOB, { problems: env.problems });

  // Unit-ish: the demo's own formatter on hostile texts.
  const cases = await alice.evaluate(() =>
    [
      'javascript:alert(1)',
      'JaVaScRiPt:alert(1)',
      'data:text/html,<script>alert(1)</script>',
      '<a href="javascript:alert(1)">x</a>',
      'https://example.com',
      'see https://example.com/a?b=1&c=<b>, ok.',
      'http://x.test/"onmouseover="alert(1)',
      'mailto:someone@example.com',
      'https://en.wikipedia.org/wiki/Foo_(bar)',
      '(see https://example.com/a).',
    ].map((t) => {
      const span = window.demo.messageText(t);
      return {
        text: span.textContent,
        tags: [...span.querySelectorAll('*')].map((e) => e.tagName),
        links: [...span.querySelectorAll('a')].map((a) => ({ href: a.getAttribute('href'), rel: a.rel, target: a.target, text: a.textContent })),
        t,
      };
    })
  );
  for (const c of cases) {
    assert.equal(c.text, c.t, 'the text is kept as it was');
    assert.ok(c.tags.every((t) => t === 'A'), `only links are made: ${c.tags}`);
    for (const l of c.links) {
      assert.match(l.href, /^https?:\/\//, `${c.t}: ${l.href}`);
      assert.equal(l.rel, 'noopener noreferrer');
      assert.equal(l.target, '_blank');
    }
  }
  const byText = Object.fromEntries(cases.map((c) => [c.t, c.links]));
  assert.deepEqual(byText['javascript:alert(1)'], []);
  assert.deepEqual(byText['JaVaScRiPt:alert(1)'], []);
  assert.deepEqual(byText['data:text/html,<script>alert(1)</script>'], []);
  assert.deepEqual(byText['<a href="javascript:alert(1)">x</a>'], []);
  assert.deepEqual(byText['mailto:someone@example.com'], []);
  // A bracket the URL opened stays in it; the sentence's does not.
  assert.deepEqual(
    byText['https://en.wikipedia.org/wiki/Foo_(bar)'].map((l) => l.text),
    ['https://en.wikipedia.org/wiki/Foo_(bar)']
  );
  assert.deepEqual(byText['(see https://example.com/a).'].map((l) => l.text), ['https://example.com/a']);
  assert.deepEqual(byText['https://example.com'].map((l) => l.href), ['https://example.com/']);
  assert.deepEqual(byText['see https://example.com/a?b=1&c=<b>, ok.'].map((l) => l.text), ['https://example.com/a?b=1&c=']);
  assert.ok(byText['http://x.test/"onmouseover="alert(1)'].every((l) => !l.href.includes('"')));

  // End to end: sent by bob, shown to alice.
  await buddy(bob, ALICE).click();
  await sendStored(bob, ALICE, 'javascript:alert(1)');
  await sendStored(bob, ALICE, 'look: https://example.com');
  await expectCount(messages(alice, BOB, 'javascript:alert(1)'), 1, { visible: false, settleMs: 0 });
  await expectCount(messages(alice, BOB, 'look: https://example.com'), 1, { visible: false, settleMs: 0 });
  assert.equal(await messages(alice, BOB, 'javascript:alert(1)').locator('a').count(), 0);
  const link = messages(alice, BOB, 'look: https://example.com').locator('a');
  assert.equal(await link.count(), 1);
  assert.equal(await link.getAttribute('href'), 'https://example.com/');
  assert.equal(await link.getAttribute('rel'), 'noopener noreferrer');
  assert.equal(await link.getAttribute('target'), '_blank');
  assert.deepEqual(dialogs, [], 'no dialog opened by a message');

  // Times: under the last message of a group, shown (not only on hover).
  await chat(alice, BOB).locator('.chat-head .chat-title').click(); // restore the popped-up window
  await eventually(async () => (await chat(alice, BOB).getAttribute('data-min')) === 'false', 'restored');
  const times = await chat(alice, BOB).locator('.msg').evaluateAll((els) =>
    els.map((e) => [e.querySelector('.text').textContent, e.dataset.time || null, getComputedStyle(e, '::after').content])
  );
  assert.deepEqual(
    times.map((t) => t.slice(0, 2)),
    [
      ['javascript:alert(1)', null],
      ['look: https://example.com', 'Just now'],
    ]
  );
  assert.equal(times[1][2], '"Just now"', 'the time is on screen');
  const formats = await alice.evaluate(() => {
    const now = Date.now();
    const f = window.demo.shortTime;
    return [f(now - 5_000, now), f(now - 7 * 60_000, now), f(now - 3 * 3600_000, now), f(now - 40 * 86400_000, now)];
  });
  assert.equal(formats[0], 'Just now');
  assert.equal(formats[1], '7 min');
  assert.match(formats[2], /\d{1,2}:\d{2}/);
  assert.match(formats[3], /[A-Za-z]+ \d+, .*\d{1,2}:\d{2}/);
  await alice.context().close();
  await bob.context().close();
  assert.deepEqual(env.problems, []);
});

test('a minimised window shows a restore control that restores it', async () => {
  const alice = await openAs(await env.browser.newContext(desktop), env.server, ALICE, { problems: env.problems });
  await buddy(alice, CAROL).click();
  const win = chat(alice, CAROL);
  await win.waitFor({ state: 'visible' });
  assert.equal(await win.locator('.min').getAttribute('aria-label'), 'Minimise');
  await win.locator('.min').click();
  await eventually(async () => (await win.getAttribute('data-min')) === 'true', 'minimised');
  const control = win.locator('.min');
  assert.equal(await control.isVisible(), true);
  assert.equal(await control.getAttribute('aria-label'), 'Restore');
  assert.notEqual((await control.textContent()).trim(), '–');
  await control.click();
  await eventually(async () => (await win.getAttribute('data-min')) === 'false', 'restored');
  await win.locator('.chat-input').waitFor({ state: 'visible' });
  await alice.context().close();
});

test('names, not ids; no developer text on the page', async () => {
  const alice = await openAs(await env.browser.newContext(desktop), env.server, ALICE, { problems: env.problems });
  // A forged send to dave (not a friend): the toast names him.
  await alice.evaluate((d) => window.demo.client.send(d, 'forged').catch(() => {}), DAVE);
  const toast = await expectText(alice.locator('#toasts .toast.error').last(), (t) => t.includes('not_friends'), 'the toast');
  assert.match(String(toast), /dave/);
  assert.doesNotMatch(String(toast), /user \d/);
  const page = await alice.locator('body').innerText();
  assert.doesNotMatch(page, /long-poll|holds the|polls by itself|transport/i);
  assert.doesNotMatch(page, /\buser \d/);
  await alice.context().close();
});

test('the picker shows who is friends with whom, in full, and scrolls', async () => {
  const ctx = await env.browser.newContext({ viewport: { width: 390, height: 560 }, isMobile: true, hasTouch: true });
  const page = watchPage(await ctx.newPage(), env.problems);
  await page.goto(`${env.server.url}/demo/`);
  const tiles = page.locator('#picker .user-tile');
  await tiles.first().waitFor();
  const friendsOf = async (id) => (await page.locator(`.user-tile[data-user="${id}"] .friends`).textContent()).trim();
  assert.equal(await friendsOf(ALICE), 'Friends with bob and carol');
  assert.equal(await friendsOf(BOB), 'Friends with alice, carol and dave');
  // Not cut off: every friends line shows whole.
  const cut = await page.locator('#picker .user-tile .friends').evaluateAll((els) => els.filter((e) => e.scrollWidth > e.clientWidth + 1).length);
  assert.equal(cut, 0);
  // The last user can be reached (scrolled to) and picked.
  const last = tiles.last();
  await last.scrollIntoViewIfNeeded();
  assert.equal(await last.isVisible(), true);
  const inView = await last.evaluate((e) => {
    const r = e.getBoundingClientRect();
    return r.top >= 0 && r.bottom <= window.innerHeight;
  });
  assert.equal(inView, true, 'the last user scrolls into view');
  await ctx.close();
  assert.deepEqual(env.problems, []);
});
