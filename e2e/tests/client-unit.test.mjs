// The client library's logic without a browser or a server: a scripted
// transport stands in for the server (same answers and error codes), so
// retries, reconnects and resets are checked call by call.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import Switchboard from '../../clients/js/switchboard.mjs';

const { Client, SwitchboardError, backoffDelay, compareIds } = Switchboard;

/** A transport whose answers are scripted per path: each entry is an
 *  answer object, a SwitchboardError code to throw, or a function. The
 *  defaults: a fresh sid per /connect, a poll held 20 ms with no events,
 *  `{ok:true}` for the rest. */
function fakeServer(script) {
  const calls = [];
  let sids = 0;
  const transport = {
    kind: 'fake',
    async call(path, params) {
      calls.push({ path, params: { ...params } });
      const queue = script[path];
      // A list is used up in order, then the defaults answer.
      let next = Array.isArray(queue) ? queue.shift() : queue;
      if (typeof next === 'function') next = await next(params, calls);
      if (next === undefined && path === '/connect') {
        sids += 1;
        next = { ok: true, sid: `1-${String(sids).padStart(32, '0')}`, tab: params.tab, user: { id: 1, name: 'alice' }, seq: 0, roster: [{ id: 2, name: 'bob', presence: 'online' }], ui: null, unread: {} };
      }
      if (next === undefined && path === '/poll') {
        await new Promise((r) => setTimeout(r, 20));
        next = { ok: true, seq: params.since, events: [] };
      }
      if (next === undefined) next = { ok: true };
      if (typeof next === 'string') throw new SwitchboardError(next, next);
      return next;
    },
  };
  return { transport, calls };
}

function client(transport, extra = {}) {
  return new Client({ token: 't', transport, shareTabs: false, trackPresence: false, backoffBaseMs: 1, backoffMaxMs: 5, pollWaitS: 1, ...extra });
}

test('backoff is jittered, grows, and is capped', () => {
  for (let attempt = 0; attempt < 20; attempt++) {
    const d = Math.min(1000, 10 * 2 ** attempt);
    const x = backoffDelay(attempt, 10, 1000);
    assert.ok(x >= d / 2 && x <= d, `${attempt}: ${x}`);
  }
  assert.equal(compareIds('9', '10'), -1);
  assert.equal(compareIds('10', '10'), 0);
  assert.equal(compareIds('11', '10'), 1);
});

test('a send retried after network errors and a lost session keeps its cid, and resolves once', async () => {
  let sends = 0;
  const { transport, calls } = fakeServer({
    '/send': () => {
      sends += 1;
      if (sends === 1) return 'network';
      if (sends === 2) return 'timeout';
      if (sends === 3) return 'unknown_session';
      return { ok: true, id: '42', ts: 1 };
    },
  });
  const c = client(transport);
  await c.start();
  const r = await c.send(2, 'hello');
  c.close();
  const sendCalls = calls.filter((x) => x.path === '/send');
  assert.equal(sendCalls.length, 4);
  assert.equal(new Set(sendCalls.map((x) => x.params.cid)).size, 1, 'one cid for every attempt');
  assert.equal(r.cid, sendCalls[0].params.cid);
  assert.equal(r.id, '42');
  // The lost session was replaced: the last attempt used the new sid.
  assert.equal(calls.filter((x) => x.path === '/connect').length, 2);
  assert.notEqual(sendCalls[3].params.sid, sendCalls[0].params.sid);
});

test('not_friends rejects at once, once, and is emitted', async () => {
  const { transport, calls } = fakeServer({ '/send': 'not_friends' });
  const c = client(transport);
  const errors = [];
  c.on('error', (e) => errors.push(e.code));
  await c.start();
  await assert.rejects(c.send(4, 'x'), (e) => e.code === 'not_friends' && e.to === 4);
  c.close();
  assert.equal(calls.filter((x) => x.path === '/send').length, 1);
  assert.ok(errors.includes('not_friends'));
});

test('events are applied once each, in seq order; message ids are not emitted twice', async () => {
  const m = (seq, id) => ({ seq, type: 'message', id, from: 2, to: 1, text: `m${id}`, ts: 1 });
  const { transport } = fakeServer({
    '/poll': [
      { ok: true, seq: 2, events: [m(2, '11'), m(1, '10')] },
      { ok: true, seq: 3, events: [m(2, '11'), m(3, '10')] }, // seq 2 again; id 10 again under a new seq
      { ok: true, seq: 3, events: [] },
    ],
  });
  const c = client(transport);
  const got = [];
  c.on('message', (e) => got.push(e.id));
  await c.start();
  await new Promise((r) => setTimeout(r, 150));
  c.close();
  assert.deepEqual(got, ['10', '11']);
  assert.equal(c.seq, 3);
  assert.equal(c.unread['2'], 2);
});

test('reset: connect again, emit reset, fetch tracked history again and emit only unseen messages', async () => {
  const msg = (id) => ({ id, from: 2, to: 1, text: `m${id}`, ts: 1 });
  let polls = 0;
  const { transport, calls } = fakeServer({
    '/history': [{ ok: true, messages: [msg('1'), msg('2')], more: false }, { ok: true, messages: [msg('1'), msg('2'), msg('3')], more: false }],
    '/poll': (params) => {
      polls += 1;
      if (polls === 1) return { ok: true, reset: true, seq: 9 };
      return new Promise((r) => setTimeout(() => r({ ok: true, seq: params.since, events: [] }), 20));
    },
  });
  const c = client(transport);
  const replayed = [];
  const resets = [];
  c.on('message', (e) => replayed.push([e.id, e.replayed]));
  c.on('reset', (s) => resets.push(s.again));
  await c.start();
  const first = await c.history(2);
  assert.equal(first.messages.length, 2);
  await new Promise((r) => setTimeout(r, 150));
  c.close();
  assert.deepEqual(resets, [true]);
  assert.equal(calls.filter((x) => x.path === '/connect').length, 2);
  assert.deepEqual(replayed, [['3', true]]);
  // The old sid was left after the new one attached.
  const leave = calls.find((x) => x.path === '/leave');
  assert.ok(leave, 'left the old sid');
});

test('typing is debounced: one typing, then stopped after the idle time', async () => {
  const { transport, calls } = fakeServer({});
  const c = client(transport, { typingIdleMs: 60, typingRefreshMs: 1000 });
  await c.start();
  for (let i = 0; i < 5; i++) {
    c.typing(2);
    await new Promise((r) => setTimeout(r, 10));
  }
  await new Promise((r) => setTimeout(r, 120));
  c.close();
  const typing = calls.filter((x) => x.path === '/typing').map((x) => x.params.state);
  assert.deepEqual(typing, ['typing', 'stopped']);
});

test('sends to one friend go one at a time, in call order, even when the first is retried', async () => {
  const order = [];
  let first = true;
  const { transport } = fakeServer({
    '/send': async (params) => {
      order.push(`start ${params.text}`);
      if (first) {
        first = false;
        await new Promise((r) => setTimeout(r, 50));
        order.push(`fail ${params.text}`);
        return 'unavailable';
      }
      order.push(`done ${params.text}`);
      return { ok: true, id: String(order.length), ts: 1 };
    },
  });
  const c = client(transport);
  await c.start();
  const [a, b] = await Promise.all([c.send(2, 'one'), c.send(2, 'two')]);
  c.close();
  assert.deepEqual(order, ['start one', 'fail one', 'start one', 'done one', 'start two', 'done two']);
  assert.ok(compareIds(a.id, b.id) < 0);
});
