/*! switchboard client 0.1.0 */
/* Switchboard browser client. Plain JavaScript, no build step, no dependencies.
 *
 * Load it either way:
 *   <script src="switchboard.js"></script>        → window.Switchboard
 *   import Switchboard from './switchboard.mjs';  → the same object (ES module)
 *
 * The wire protocol is docs/protocol.md; how tabs share one long-poll is in
 * clients/js/README.md ("Tabs").
 */
(function (root, factory) {
  'use strict';
  var api = factory();
  // Always set the global: switchboard.mjs imports this file for its side
  // effect and re-exports the global, which works in browsers and in Node.
  root.Switchboard = api;
  if (typeof module === 'object' && module && module.exports) module.exports = api;
})(typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  var VERSION = '0.1.0';

  // ---------------------------------------------------------------------
  // Errors

  /** An error from the server (`code` is the protocol's error code) or from
   *  the transport (`network`, `timeout`, `bad_response`, `closed`). */
  class SwitchboardError extends Error {
    constructor(code, message, extra) {
      super(message || code);
      this.name = 'SwitchboardError';
      this.code = code;
      if (extra) Object.assign(this, extra);
    }
    /** Whether trying the same call again later may succeed. */
    get retryable() {
      return RETRYABLE.has(this.code);
    }
  }
  var RETRYABLE = new Set(['network', 'timeout', 'bad_response', 'unavailable', 'rate_limited']);

  // ---------------------------------------------------------------------
  // Small helpers

  function encodeParams(params) {
    var parts = [];
    Object.keys(params).forEach(function (k) {
      var v = params[k];
      if (v === undefined || v === null) return;
      parts.push(encodeURIComponent(k) + '=' + encodeURIComponent(String(v)));
    });
    return parts.join('&');
  }

  function trimSlash(url) {
    return String(url || '').replace(/\/+$/, '');
  }

  function randomId(n) {
    var alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
    var out = '';
    var bytes = new Uint8Array(n);
    if (typeof crypto !== 'undefined' && crypto.getRandomValues) crypto.getRandomValues(bytes);
    else for (var i = 0; i < n; i++) bytes[i] = Math.floor(Math.random() * 256);
    for (var j = 0; j < n; j++) out += alphabet[bytes[j] % alphabet.length];
    return out;
  }

  /** Message ids are decimal strings, ordered within a conversation;
   *  compared as numbers of any length. */
  function compareIds(a, b) {
    a = String(a);
    b = String(b);
    if (a.length !== b.length) return a.length < b.length ? -1 : 1;
    return a < b ? -1 : a > b ? 1 : 0;
  }

  /** Jittered exponential backoff: attempt 0 waits about `base`, doubling up
   *  to `max`, each delay drawn uniformly from [d/2, d] ("equal jitter") so
   *  that many clients that failed together do not retry together. */
  function backoffDelay(attempt, base, max) {
    var d = Math.min(max, base * Math.pow(2, Math.min(attempt, 16)));
    return d / 2 + Math.random() * (d / 2);
  }

  function sleep(ms) {
    return new Promise(function (resolve) {
      setTimeout(resolve, ms);
    });
  }

  function hasDocument() {
    return typeof document !== 'undefined' && !!document.createElement;
  }

  // ---------------------------------------------------------------------
  // Event emitter

  class Emitter {
    constructor() {
      this._handlers = new Map();
    }
    /** Adds `fn` for `type`; returns a function that removes it. */
    on(type, fn) {
      if (!this._handlers.has(type)) this._handlers.set(type, new Set());
      this._handlers.get(type).add(fn);
      var self = this;
      return function () {
        self.off(type, fn);
      };
    }
    off(type, fn) {
      var set = this._handlers.get(type);
      if (set) set.delete(fn);
    }
    once(type, fn) {
      var off = this.on(type, function (x) {
        off();
        fn(x);
      });
      return off;
    }
    emit(type, value) {
      var set = this._handlers.get(type);
      if (!set) return;
      Array.from(set).forEach(function (fn) {
        try {
          fn(value);
        } catch (e) {
          // A listener's bug must not break the poll loop.
          setTimeout(function () {
            throw e;
          });
        }
      });
    }
  }

  // ---------------------------------------------------------------------
  // Transports: `call(path, params, {timeoutMs})` resolves with the answer's
  // JSON object when `ok` is true, and rejects with a SwitchboardError.

  function answerOf(json, status) {
    if (!json || typeof json !== 'object') {
      throw new SwitchboardError('bad_response', 'answer is not a JSON object', { status: status });
    }
    if (json.ok) return json;
    var err = json.error || {};
    throw new SwitchboardError(err.code || 'bad_response', err.message || 'failed', { status: status });
  }

  /** JSONP: one `<script>` per call, its callback a unique name under one
   *  global object (`window.__sb.cb17`, which matches the protocol's
   *  callback regex). Tag and callback are removed when the call ends, by
   *  answer, load error or timeout; a callback that times out is replaced by
   *  a no-op until the late answer arrives or a minute passes, so the late
   *  script does not throw. */
  class JsonpTransport {
    constructor(baseUrl, options) {
      options = options || {};
      this.baseUrl = trimSlash(baseUrl);
      this.namespace = options.namespace || '__sb';
      if (!/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(this.namespace)) throw new Error('bad JSONP namespace');
      this.kind = 'jsonp';
    }
    _ns() {
      var g = typeof window !== 'undefined' ? window : globalThis;
      var ns = g[this.namespace];
      if (!ns) {
        ns = Object.defineProperty({}, '_n', { value: 0, writable: true, enumerable: false });
        g[this.namespace] = ns;
      }
      return ns;
    }
    call(path, params, opts) {
      var self = this;
      var timeoutMs = (opts && opts.timeoutMs) || 15000;
      return new Promise(function (resolve, reject) {
        if (!hasDocument()) {
          reject(new SwitchboardError('network', 'JSONP needs a document'));
          return;
        }
        var ns = self._ns();
        ns._n += 1;
        var name = 'cb' + ns._n;
        var full = self.namespace + '.' + name;
        var script = document.createElement('script');
        var done = false;
        var timer = null;
        function finish() {
          done = true;
          if (timer) clearTimeout(timer);
          script.onerror = script.onload = null;
          if (script.parentNode) script.parentNode.removeChild(script);
        }
        ns[name] = function (json) {
          delete ns[name];
          if (done) return;
          finish();
          try {
            resolve(answerOf(json, 200));
          } catch (e) {
            reject(e);
          }
        };
        script.onerror = function () {
          if (done) return;
          finish();
          delete ns[name];
          reject(new SwitchboardError('network', 'script load failed: ' + path));
        };
        script.onload = function () {
          // Runs after the script executed: if the callback was not called
          // the answer was not ours (a proxy's page, say).
          if (done) return;
          finish();
          delete ns[name];
          reject(new SwitchboardError('bad_response', 'the answer did not call back: ' + path));
        };
        timer = setTimeout(function () {
          if (done) return;
          finish();
          ns[name] = function () {
            delete ns[name];
          };
          setTimeout(function () {
            if (ns[name]) delete ns[name];
          }, 60000);
          reject(new SwitchboardError('timeout', 'no answer within ' + timeoutMs + ' ms: ' + path));
        }, timeoutMs);
        var query = encodeParams(Object.assign({}, params, { callback: full }));
        script.async = true;
        script.setAttribute('data-sb', name);
        script.src = self.baseUrl + path + '?' + query;
        (document.head || document.documentElement).appendChild(script);
      });
    }
  }

  /** fetch and JSON: a form-encoded POST (a CORS "simple" request, so no
   *  preflight; the server answers `Access-Control-Allow-Origin: *`), with a
   *  timeout by AbortController. */
  class FetchTransport {
    constructor(baseUrl) {
      this.baseUrl = trimSlash(baseUrl);
      this.kind = 'fetch';
    }
    call(path, params, opts) {
      var timeoutMs = (opts && opts.timeoutMs) || 15000;
      var controller = typeof AbortController !== 'undefined' ? new AbortController() : null;
      var timer = setTimeout(function () {
        if (controller) controller.abort();
      }, timeoutMs);
      var url = this.baseUrl + path;
      return fetch(url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
        body: encodeParams(params),
        cache: 'no-store',
        credentials: 'omit',
        signal: controller ? controller.signal : undefined,
      }).then(
        function (res) {
          return res.text().then(
            function (text) {
              clearTimeout(timer);
              var json;
              try {
                json = JSON.parse(text);
              } catch (e) {
                throw new SwitchboardError('bad_response', 'answer is not JSON (HTTP ' + res.status + ')', {
                  status: res.status,
                });
              }
              return answerOf(json, res.status);
            },
            function () {
              clearTimeout(timer);
              throw new SwitchboardError('network', 'answer cut off: ' + path);
            }
          );
        },
        function (e) {
          clearTimeout(timer);
          if (e && e.name === 'AbortError') {
            throw new SwitchboardError('timeout', 'no answer within ' + timeoutMs + ' ms: ' + path);
          }
          throw new SwitchboardError('network', 'request failed: ' + path);
        }
      );
    }
  }

  function makeTransport(kind, baseUrl) {
    if (kind && typeof kind === 'object' && typeof kind.call === 'function') return kind;
    if (kind === 'fetch') return new FetchTransport(baseUrl);
    if (kind === 'jsonp' || kind === undefined) return new JsonpTransport(baseUrl);
    throw new Error('unknown transport ' + kind);
  }

  // ---------------------------------------------------------------------
  // The client

  var DEFAULTS = {
    url: '',
    token: null,
    transport: 'jsonp',
    tab: null,
    shareTabs: true,
    coordination: 'auto', // 'auto' (navigator.locks, else heartbeats) | 'locks' | 'heartbeat'
    pollWaitS: 25,
    callTimeoutMs: 15000,
    keepaliveMs: 20000,
    backoffBaseMs: 500,
    backoffMaxMs: 15000,
    sendRetryMs: 120000,
    typingIdleMs: 2500,
    typingRefreshMs: 3000,
    idleMs: 120000,
    trackPresence: true,
    leaveOnUnload: true,
    heartbeatMs: 1500,
    seenIdsMax: 5000,
    bufferedEventsMax: 1000,
  };

  /**
   * One tab's attachment to the user's chat session.
   *
   * Status (`client.status`): 'idle' → 'connecting' → 'connected', then
   * 'reconnecting' while the session is being re-established, 'closed' after
   * close(). Role (`client.role`): 'leader' (holds the long-poll for every
   * tab of this user in this browser), 'follower' (gets events from the
   * leader), or 'solo' (no tab sharing: polls itself).
   */
  class Client extends Emitter {
    constructor(options) {
      super();
      this.options = Object.assign({}, DEFAULTS, options || {});
      if (!this.options.token) throw new Error('Switchboard: a token (string or function) is needed');
      this.baseUrl = trimSlash(this.options.url);
      this.transport = makeTransport(this.options.transport, this.baseUrl);
      this.tab = this.options.tab || 't' + randomId(12);
      this.status = 'idle';
      this.role = 'solo';
      this.sid = null;
      this.seq = 0;
      this.user = null;
      this.roster = new Map();
      this.unread = {};
      this.ui = null;
      this.presence = 'online';
      this._presenceSent = null;
      this._flowStarted = false;
      this._running = false;
      this._pollGen = 0;
      this._reconnecting = null;
      this._readyWaiters = [];
      this._seen = new Set();
      this._seenOrder = [];
      this._tracked = new Map(); // friend id -> true: conversations resynced after a gap
      this._lastRead = {};
      this._lastIncoming = {};
      this._cidN = 0;
      this._typing = new Map();
      this._sendQueues = new Map(); // friend id -> the last send's settling
      this._uiQueue = Promise.resolve();
      this._channel = null;
      this._checking = false;
      this._buffered = [];
      this._tabsActivity = new Map();
      this._presenceSent = null;
      this._active = true;
      this._lastInput = Date.now();
      this._timers = new Set();
      this._cleanup = [];
      this._leaderSince = 0;
    }

    // -- public API ---------------------------------------------------------

    /** Connects (retrying with backoff until it works or close()), then
     *  starts the event flow. Resolves with the connect answer. */
    start() {
      if (this._running) return this._started;
      this._running = true;
      this._setStatus('connecting');
      var self = this;
      this._started = this._connectWithRetry(false).then(function (answer) {
        self._installPageHooks();
        self._startFlow();
        return answer;
      });
      return this._started;
    }

    /** Leaves the session (this tab only) and stops everything. */
    close() {
      if (!this._running) return;
      this._running = false;
      this._pollGen++;
      this._leave(false);
      this._stopCoordination();
      this._timers.forEach(function (t) {
        clearTimeout(t);
      });
      this._timers.clear();
      this._cleanup.forEach(function (f) {
        f();
      });
      this._cleanup = [];
      this._setStatus('closed');
      this._rejectWaiters(new SwitchboardError('closed', 'client closed'));
    }

    /** Sends `text` to friend `to`. Resolves with `{id, ts, cid}` once the
     *  message is stored. Retries with the same `cid` (so never twice)
     *  after network errors, timeouts, `unavailable` and a lost session,
     *  for up to `sendRetryMs`; other failures (not_friends, too_large, ...)
     *  reject at once and are also emitted as 'error'. The sends of this
     *  tab to one friend go one at a time, in the order of the calls, so
     *  they are stored (and shown) in the order they were written. */
    send(to, text, opts) {
      var cid = (opts && opts.cid) || this.tab + '-' + Date.now().toString(36) + '-' + ++this._cidN;
      var self = this;
      to = Number(to);
      this.stopTyping(to);
      var params = { to: to, text: text, cid: cid };
      var previous = this._sendQueues.get(to) || Promise.resolve();
      var sent = previous
        .then(function () {
          return self._callWithSid('/send', params, { retryForMs: self.options.sendRetryMs });
        })
        .then(
          function (r) {
            return { id: r.id, ts: r.ts, cid: cid };
          },
          function (e) {
            e.cid = cid;
            e.call = 'send';
            e.to = to;
            self.emit('error', e);
            throw e;
          }
        );
      var tail = sent.catch(function () {});
      this._sendQueues.set(to, tail);
      tail.then(function () {
        if (self._sendQueues.get(to) === tail) self._sendQueues.delete(to);
      });
      return sent;
    }

    /** Call on every keystroke in the box for `to`: sends `typing` at most
     *  every `typingRefreshMs`, and `stopped` after `typingIdleMs` without
     *  a keystroke. */
    typing(to) {
      to = Number(to);
      var now = Date.now();
      var st = this._typing.get(to) || { sentAt: 0, timer: null };
      if (!st.sentAt || now - st.sentAt >= this.options.typingRefreshMs) {
        st.sentAt = now;
        this._fire('/typing', { to: to, state: 'typing' });
      }
      if (st.timer) this._clearTimer(st.timer);
      var self = this;
      st.timer = this._later(this.options.typingIdleMs, function () {
        self.stopTyping(to);
      });
      this._typing.set(to, st);
    }

    /** Says `stopped` now, if `typing` was said. */
    stopTyping(to) {
      to = Number(to);
      var st = this._typing.get(to);
      if (!st) return;
      if (st.timer) this._clearTimer(st.timer);
      this._typing.delete(to);
      this._fire('/typing', { to: to, state: 'stopped' });
    }

    /** Marks the conversation with `friend` read up to message `upto` (sent
     *  only when it moves the mark forward). */
    read(friend, upto) {
      friend = Number(friend);
      var last = this._lastRead[friend];
      if (last && compareIds(upto, last) <= 0) return Promise.resolve();
      this._lastRead[friend] = String(upto);
      return this._callWithSid('/read', { with: friend, upto: upto }, { retryForMs: 10000 }).catch(function () {});
    }

    /** A page of history with `friend`, oldest first: `{messages, more}`.
     *  Without `before`, the conversation is also tracked: after a lost
     *  session or a `reset`, its newest page is fetched again and messages
     *  not seen yet are emitted as 'message' events (`replayed: true`). */
    history(friend, opts) {
      friend = Number(friend);
      opts = opts || {};
      var params = { with: friend, before: opts.before, limit: opts.limit };
      if (!opts.before) this._tracked.set(friend, true);
      var self = this;
      return this._callWithSid('/history', params, { retryForMs: 10000 }).then(function (r) {
        r.messages.forEach(function (m) {
          self._markSeen(m.id);
          if (m.from === friend && (!self._lastIncoming[friend] || compareIds(m.id, self._lastIncoming[friend]) > 0)) {
            self._lastIncoming[friend] = m.id;
          }
        });
        return { messages: r.messages, more: !!r.more, seen: r.seen == null ? null : String(r.seen) };
      });
    }

    /** Stops tracking a conversation (its window closed). */
    untrack(friend) {
      this._tracked.delete(Number(friend));
    }

    /** Replaces the UI state (a JSON object, at most 4096 bytes encoded).
     *  Applied here at once (a 'ui' event with `local: true`), stored on
     *  the server, and sent to every other tab of the user. Writes are
     *  sent in order; the last one wins. */
    setUi(state) {
      var text = JSON.stringify(state);
      this.ui = JSON.parse(text);
      this.emit('ui', { state: this.ui, tab: this.tab, local: true });
      var self = this;
      this._uiQueue = this._uiQueue
        .then(function () {
          return self._callWithSid('/ui', { state: text }, { retryForMs: 30000 });
        })
        .catch(function (e) {
          self.emit('error', Object.assign(e, { call: 'ui' }));
        });
      return this._uiQueue;
    }

    /** Sets presence by hand ('online' or 'away'); with `trackPresence`
     *  the client also does it from page visibility and idle time. */
    setPresence(status) {
      this._manualPresence = status;
      this._updatePresence();
    }

    /** Any call by name, with this tab's sid (for what the helpers do not
     *  cover). */
    call(path, params) {
      return this._callWithSid(path, params || {}, {});
    }

    // -- connection ---------------------------------------------------------

    _setStatus(status) {
      if (this.status === status) return;
      this.status = status;
      this.emit('state', { status: this.status, role: this.role });
      // Followers show the leader's view of the connection: they learn of
      // an outage only through it (they do not poll but every keepalive).
      if (this.role === 'leader') this._broadcast({ t: 'status', status: status });
    }

    _setRole(role) {
      if (this.role === role) return;
      this.role = role;
      this.emit('state', { status: this.status, role: this.role });
    }

    _token() {
      var t = this.options.token;
      return Promise.resolve(typeof t === 'function' ? t() : t);
    }

    _raw(path, params, timeoutMs) {
      return this.transport.call(path, params, { timeoutMs: timeoutMs || this.options.callTimeoutMs });
    }

    /** /connect until it works. `again`: this replaces a lost or reset
     *  session (then 'reset' is emitted and tracked conversations are
     *  fetched again). */
    _connectWithRetry(again) {
      var self = this;
      var attempt = 0;
      function tryOnce() {
        if (!self._running) return Promise.reject(new SwitchboardError('closed', 'client closed'));
        return self
          ._token()
          .then(function (token) {
            return self._raw('/connect', { token: token, tab: self.tab });
          })
          .then(
            function (answer) {
              self._applyConnect(answer, again);
              return answer;
            },
            function (e) {
              self.emit('error', Object.assign(e, { call: 'connect' }));
              if (e.code === 'bad_request') throw e; // our bug: retrying will not help
              var delay = backoffDelay(attempt++, self.options.backoffBaseMs, self.options.backoffMaxMs);
              return sleep(delay).then(tryOnce);
            }
          );
      }
      return tryOnce();
    }

    _applyConnect(a, again) {
      var self = this;
      this.sid = a.sid;
      this.seq = a.seq;
      this.user = a.user;
      this.roster = new Map();
      a.roster.forEach(function (c) {
        self.roster.set(c.id, { id: c.id, name: c.name, presence: c.presence });
      });
      this.unread = Object.assign({}, a.unread || {});
      this.ui = a.ui;
      this._setStatus('connected');
      var snapshot = {
        user: this.user,
        sid: this.sid,
        seq: this.seq,
        roster: Array.from(this.roster.values()),
        ui: this.ui,
        unread: this.unread,
        again: !!again,
      };
      this.emit('connected', snapshot);
      if (again) this.emit('reset', snapshot);
      this._flushReady();
      if (again) this._refetchTracked();
      if (this.role !== 'follower') this._updatePresence(true);
    }


    /** Resolves with a sid, waiting for a reconnect in progress. */
    _ready() {
      if (!this._running) return Promise.reject(new SwitchboardError('closed', 'client closed'));
      if (this.sid && !this._reconnecting) return Promise.resolve(this.sid);
      var self = this;
      return new Promise(function (resolve, reject) {
        self._readyWaiters.push({ resolve: resolve, reject: reject });
      });
    }

    _flushReady() {
      var waiters = this._readyWaiters;
      this._readyWaiters = [];
      var sid = this.sid;
      waiters.forEach(function (w) {
        w.resolve(sid);
      });
    }

    _rejectWaiters(e) {
      var waiters = this._readyWaiters;
      this._readyWaiters = [];
      waiters.forEach(function (w) {
        w.reject(e);
      });
    }

    /** The session is gone (unknown_session) or events were lost (reset):
     *  connect again (once, however many calls noticed), then leave the
     *  old sid if it may still be attached. */
    _reconnect(oldSid, why) {
      if (this._reconnecting) return this._reconnecting;
      if (oldSid && this.sid !== oldSid) return Promise.resolve(); // already replaced
      var self = this;
      this.sid = null;
      this._setStatus('reconnecting');
      this._reconnecting = this._connectWithRetry(true).then(
        function () {
          self._reconnecting = null;
          self._flushReady();
          if (why === 'reset' && oldSid) self._leaveSid(oldSid);
          // Only the leader tells the others (a follower's news would
          // start the other followers over again).
          if (self.role === 'leader') self._broadcast({ t: why === 'reset' ? 'reset' : 'lost' });
          self._flushBuffered();
        },
        function (e) {
          self._reconnecting = null;
          self._rejectWaiters(e);
        }
      );
      return this._reconnecting;
    }

    /** One call with this tab's sid. `retryForMs`: keep trying retryable
     *  failures (with backoff, the same parameters) that long. A lost
     *  session is replaced, then the call is tried again. */
    _callWithSid(path, params, opts) {
      var self = this;
      var started = Date.now();
      var attempt = 0;
      var retryForMs = opts.retryForMs || 0;
      function tryOnce() {
        return self._ready().then(function (sid) {
          return self._raw(path, Object.assign({ sid: sid }, params), opts.timeoutMs).catch(function (e) {
            if (!self._running) throw e;
            if (e.code === 'unknown_session') {
              if (Date.now() - started > Math.max(retryForMs, 30000)) throw e;
              return self._reconnect(sid, 'lost').then(tryOnce);
            }
            if (e.retryable && Date.now() - started < retryForMs) {
              var delay = backoffDelay(attempt++, self.options.backoffBaseMs, self.options.backoffMaxMs);
              return sleep(delay).then(tryOnce);
            }
            throw e;
          });
        });
      }
      return tryOnce();
    }

    /** A call whose outcome nobody waits for (typing, presence). */
    _fire(path, params) {
      var self = this;
      if (!this._running || !this.sid) return;
      this._callWithSid(path, params, {}).catch(function (e) {
        if (e.code !== 'closed') self.emit('error', Object.assign(e, { call: path.slice(1) }));
      });
    }

    _leave(useBeacon) {
      if (!this.sid) return;
      this._leaveSid(this.sid, useBeacon);
      this.sid = null;
    }

    /** /leave for `sid`: by sendBeacon when the page is going away (a
     *  POST with the sid in the query, which the server accepts whatever
     *  the body), else by a normal call. */
    _leaveSid(sid, useBeacon) {
      var url = this.baseUrl + '/leave?' + encodeParams({ sid: sid });
      if (useBeacon && typeof navigator !== 'undefined' && navigator.sendBeacon) {
        try {
          if (navigator.sendBeacon(url)) return;
        } catch (e) {
          /* fall through */
        }
      }
      if (useBeacon && typeof Image !== 'undefined') {
        new Image().src = url;
        return;
      }
      this.transport.call('/leave', { sid: sid }, { timeoutMs: 5000 }).catch(function () {});
    }

    // -- event flow -----------------------------------------------------------

    _startFlow() {
      this._flowStarted = true;
      this._active = this._isActive();
      var bc = typeof BroadcastChannel !== 'undefined';
      if (this.options.shareTabs && bc) this._startCoordination();
      else this._becomeSolo();
    }

    _becomeSolo() {
      this._setRole('solo');
      this._startPolling();
      this._updatePresence(true);
    }

    _startPolling() {
      var gen = ++this._pollGen;
      this._stopKeepalive();
      this._pollLoop(gen);
    }

    _stopPolling() {
      this._pollGen++;
    }

    /** The long-poll loop of the leader (or a solo tab). */
    _pollLoop(gen) {
      var self = this;
      var attempt = 0;
      function next() {
        if (!self._running || self._pollGen !== gen) return;
        self
          ._ready()
          .then(function (sid) {
            if (self._pollGen !== gen) return;
            var wait = self.options.pollWaitS;
            return self
              ._raw('/poll', { sid: sid, since: self.seq, wait: wait }, wait * 1000 + self.options.callTimeoutMs)
              .then(
                function (r) {
                  attempt = 0;
                  if (self._pollGen !== gen) return;
                  if (r.reset) return self._reconnect(sid, 'reset');
                  self._broadcast({ t: 'events', events: r.events });
                  self._ingest(r.events, false);
                },
                function (e) {
                  if (!self._running) return;
                  if (e.code === 'unknown_session') return self._reconnect(sid, 'lost');
                  if (e.code === 'bad_request') return self._reconnect(sid, 'reset');
                  if (e.code === 'closed') return;
                  self.emit('error', Object.assign(e, { call: 'poll' }));
                  if (e.retryable && self.status === 'connected') self._setStatus('reconnecting');
                  var delay = backoffDelay(attempt++, self.options.backoffBaseMs, self.options.backoffMaxMs);
                  return sleep(delay);
                }
              );
          })
          .then(
            function () {
              if (self.sid && !self._reconnecting && self.status === 'reconnecting') self._setStatus('connected');
              next();
            },
            function (e) {
              if (e && e.code === 'closed') return;
              self._later(self.options.backoffMaxMs, next);
            }
          );
      }
      next();
    }

    /** A follower keeps its own sid attached (the server detaches a tab
     *  with no poll outstanding for its tab timeout, 60 s by default) with a
     *  `wait=0` poll every `keepaliveMs`; the answer's events are applied
     *  like the leader's (duplicates are skipped by seq), which also fills
     *  any gap. */
    _startKeepalive() {
      this._stopKeepalive();
      var self = this;
      var tick = function () {
        self._keepaliveTimer = null;
        if (!self._running || self.role !== 'follower') return;
        self._keepaliveOnce().then(function () {
          if (self._running && self.role === 'follower' && !self._keepaliveTimer) {
            self._keepaliveTimer = self._later(self.options.keepaliveMs, tick);
          }
        });
      };
      this._keepaliveTimer = this._later(this.options.keepaliveMs, tick);
    }

    _stopKeepalive() {
      if (this._keepaliveTimer) this._clearTimer(this._keepaliveTimer);
      this._keepaliveTimer = null;
    }

    /** One `wait=0` poll on this tab's own sid. */
    _keepaliveOnce() {
      var self = this;
      if (this._keepaliveBusy) return this._keepaliveBusy;
      this._sendActivity();
      // Peer events wait in the buffer until this poll has brought this
      // tab up to date; after a failed poll they wait for the next one
      // (flushing them would find the same gap and poll again at once).
      var done = function (ok) {
        self._keepaliveBusy = null;
        self._checking = false;
        if (ok) self._flushBuffered();
      };
      this._keepaliveBusy = this._ready()
        .then(function (sid) {
          return self._raw('/poll', { sid: sid, since: self.seq, wait: 0 }).then(
            function (r) {
              self._keepaliveFailures = 0;
              if (r.reset) return self._reconnect(sid, 'reset').then(function () {
                return true;
              });
              self._ingest(r.events, false);
              return true;
            },
            function (e) {
              if (e.code === 'unknown_session' || e.code === 'bad_request') {
                return self._reconnect(sid, e.code === 'bad_request' ? 'reset' : 'lost').then(function () {
                  return true;
                });
              }
              if (e.code !== 'closed') self.emit('error', Object.assign(e, { call: 'keepalive' }));
              return false;
            }
          );
        })
        .then(done, function () {
          done(false);
        });
      return this._keepaliveBusy;
    }

    /** Applies events in seq order, skipping those already applied. From
     *  the leader (`fromPeer`), a gap means this tab missed some (it joined
     *  or reconnected meanwhile): a `wait=0` poll on its own sid fetches
     *  them. While this tab checks its own session, peer events wait. */
    _ingest(events, fromPeer) {
      if (fromPeer && (this._checking || this._reconnecting || !this.sid)) {
        this._buffered.push.apply(this._buffered, events);
        if (this._buffered.length > this.options.bufferedEventsMax) {
          // Stuck behind for long: start over from a fresh connect, which
          // is what a server `reset` would ask for too.
          this._buffered = [];
          if (this.sid) this._reconnect(this.sid, 'reset');
        }
        return;
      }
      var sorted = events.slice().sort(function (a, b) {
        return a.seq - b.seq;
      });
      for (var i = 0; i < sorted.length; i++) {
        var ev = sorted[i];
        if (ev.seq <= this.seq) continue;
        if (fromPeer && ev.seq > this.seq + 1) {
          this._checking = true;
          this._buffered.push.apply(this._buffered, sorted.slice(i));
          this._keepaliveOnce();
          return;
        }
        this.seq = ev.seq;
        this._apply(ev);
      }
    }

    _flushBuffered() {
      if (this._checking || this._reconnecting || !this.sid || !this._buffered.length) return;
      var events = this._buffered;
      this._buffered = [];
      this._ingest(events, true);
    }

    _markSeen(id) {
      id = String(id);
      if (this._seen.has(id)) return false;
      this._seen.add(id);
      this._seenOrder.push(id);
      if (this._seenOrder.length > this.options.seenIdsMax) this._seen.delete(this._seenOrder.shift());
      return true;
    }

    _apply(ev) {
      var me = this.user && this.user.id;
      switch (ev.type) {
        case 'message': {
          if (!this._markSeen(ev.id)) return;
          var friend = ev.from === me ? ev.to : ev.from;
          if (ev.from !== me) {
            this.unread[friend] = (this.unread[friend] || 0) + 1;
            this._lastIncoming[friend] = ev.id;
          }
          this.emit('message', ev);
          break;
        }
        case 'presence': {
          var c = this.roster.get(ev.user);
          if (c) c.presence = ev.status;
          this.emit('presence', ev);
          break;
        }
        case 'typing':
          this.emit('typing', ev);
          break;
        case 'ui':
          if (ev.tab === this.tab) return; // applied when it was set here
          this.ui = ev.state;
          this.emit('ui', { state: ev.state, tab: ev.tab, local: false });
          break;
        case 'read':
          if (ev.by === me) {
            var last = this._lastIncoming[ev.with];
            if (!last || compareIds(ev.upto, last) >= 0) this.unread[ev.with] = 0;
            if (!this._lastRead[ev.with] || compareIds(ev.upto, this._lastRead[ev.with]) > 0) {
              this._lastRead[ev.with] = String(ev.upto);
            }
          }
          this.emit('read', ev);
          break;
        case 'roster':
          if (ev.change === 'added') this.roster.set(ev.user.id, ev.user);
          else this.roster.delete(ev.user.id);
          this.emit('roster', ev);
          break;
        default:
          break; // newer servers may add event types
      }
    }

    /** After a lost session or a reset: the newest page of every tracked
     *  conversation, emitting the messages this tab has not seen. */
    _refetchTracked() {
      var self = this;
      this._tracked.forEach(function (_, friend) {
        self
          ._callWithSid('/history', { with: friend }, { retryForMs: 10000 })
          .then(function (r) {
            r.messages.forEach(function (m) {
              if (!self._markSeen(m.id)) return;
              self.emit('message', Object.assign({ type: 'message', replayed: true }, m));
            });
          })
          .catch(function () {});
      });
    }

    // -- tab coordination -----------------------------------------------------

    _channelName() {
      return 'switchboard:' + (this.baseUrl || location.origin) + ':' + this.user.id;
    }

    _startCoordination() {
      var self = this;
      this._channel = new BroadcastChannel(this._channelName());
      this._channel.onmessage = function (m) {
        self._onPeer(m.data);
      };
      this._setRole('follower');
      this._startKeepalive();
      this._sendActivity();
      var mode = this.options.coordination;
      var locks = typeof navigator !== 'undefined' && navigator.locks && navigator.locks.request;
      if (mode === 'locks' || (mode === 'auto' && locks)) this._electByLock();
      else this._electByHeartbeat();
    }

    _stopCoordination() {
      this._stopKeepalive();
      if (this._releaseLock) this._releaseLock();
      this._releaseLock = null;
      if (this._hbTimer) this._clearTimer(this._hbTimer);
      if (this._channel) {
        this._broadcast({ t: 'bye', tab: this.tab });
        this._channel.close();
      }
      this._channel = null;
    }

    /** navigator.locks: the tab holding the user's lock is the leader; the
     *  lock is released when the tab closes or crashes, and the next tab in
     *  line takes it at once. */
    _electByLock() {
      var self = this;
      navigator.locks.request('sb-leader:' + this._channelName(), function () {
        if (!self._running) return undefined;
        return new Promise(function (release) {
          self._releaseLock = release;
          self._becomeLeader();
        });
      });
    }

    /** Without navigator.locks: the leader says so every `heartbeatMs`;
     *  when 3 beats are missed, the tabs claim, and the smallest tab name
     *  among the claims of the next beat wins. Two leaders (a slow beat)
     *  resolve the same way. */
    _electByHeartbeat() {
      var self = this;
      this._lastBeat = 0;
      this._claims = new Set();
      var hb = this.options.heartbeatMs;
      var tick = function () {
        if (!self._running) return;
        var now = Date.now();
        if (self.role === 'leader') {
          self._broadcast({ t: 'beat', tab: self.tab });
        } else if (now - self._lastBeat > 3 * hb) {
          if (self._claiming) {
            var winner = Array.from(self._claims).concat([self.tab]).sort()[0];
            self._claiming = false;
            self._claims.clear();
            if (winner === self.tab) {
              self._becomeLeader();
              self._broadcast({ t: 'beat', tab: self.tab });
            }
          } else {
            self._claiming = true;
            self._broadcast({ t: 'claim', tab: self.tab });
          }
        }
        self._hbTimer = self._later(self.role === 'leader' ? hb : hb / 2, tick);
      };
      this._lastBeat = Date.now() - 2 * hb; // first claim soon, after hearing any leader
      this._broadcast({ t: 'hello', tab: this.tab });
      tick();
    }

    _becomeLeader() {
      if (!this._running || this.role === 'leader') return;
      this._setRole('leader');
      this._leaderSince = Date.now();
      this._broadcast({ t: 'leader', tab: this.tab });
      this._tabsActivity.clear();
      this._broadcast({ t: 'who' });
      this._startPolling();
      this._updatePresence(true);
    }

    _becomeFollower() {
      if (this.role === 'follower') return;
      this._stopPolling();
      this._setRole('follower');
      this._startKeepalive();
      this._sendActivity();
    }

    _broadcast(msg) {
      if (!this._channel) return;
      try {
        this._channel.postMessage(msg);
      } catch (e) {
        /* closed */
      }
    }

    _onPeer(msg) {
      if (!msg || typeof msg !== 'object' || !this._running) return;
      switch (msg.t) {
        case 'events':
          if (this.role === 'follower') this._ingest(msg.events || [], true);
          break;
        case 'lost':
          // The leader's session was gone; ours may be too (a server
          // restart): check now rather than at the next keepalive.
          if (this.role === 'follower') {
            this._checking = true;
            this._keepaliveOnce();
          }
          break;
        case 'reset':
          if (this.role === 'follower' && this.sid) this._reconnect(this.sid, 'reset');
          break;
        case 'status':
          if (this.role === 'follower' && this.sid && !this._reconnecting) {
            if (msg.status === 'reconnecting' || msg.status === 'connected') this._setStatus(msg.status);
          }
          break;
        case 'activity':
          if (this.role === 'leader') {
            this._tabsActivity.set(msg.tab, { active: !!msg.active, at: Date.now() });
            this._updatePresence(false);
          }
          break;
        case 'bye':
          this._tabsActivity.delete(msg.tab);
          // The heartbeat leader left: elect now rather than after 3 beats.
          if (msg.tab === this._leaderTab) this._lastBeat = 0;
          if (this.role === 'leader') this._updatePresence(false);
          break;
        case 'who':
        case 'leader':
          this._sendActivity();
          if (msg.t === 'leader' && this.role === 'leader' && msg.tab !== this.tab && this.options.coordination !== 'locks' && !this._releaseLock) {
            if (msg.tab < this.tab) this._becomeFollower();
          }
          break;
        case 'hello':
          if (this.role === 'leader') this._broadcast({ t: 'beat', tab: this.tab });
          break;
        case 'beat':
          this._lastBeat = Date.now();
          this._leaderTab = msg.tab;
          this._claiming = false;
          if (this.role === 'leader' && !this._releaseLock && msg.tab < this.tab) this._becomeFollower();
          break;
        case 'claim':
          if (this._claiming) this._claims.add(msg.tab);
          else if (this.role === 'leader') this._broadcast({ t: 'beat', tab: this.tab });
          break;
        default:
          break;
      }
    }

    // -- presence -------------------------------------------------------------

    /** Whether this tab is in use: visible, with input within `idleMs`. */
    _isActive() {
      if (typeof document !== 'undefined' && document.visibilityState === 'hidden') return false;
      return Date.now() - this._lastInput < this.options.idleMs;
    }

    /** A follower tells the leader whether it is in use; a leader or a
     *  solo tab decides itself. */
    _sendActivity() {
      this._updatePresence(false);
    }

    /** The leader (or a solo tab) decides the session's presence: online
     *  when any tab of the user here is active, else away. `force`: say it
     *  even if unchanged (after a connect or an election, when the session
     *  may be in another state than this tab last said). */
    _updatePresence(force) {
      if (this.role === 'follower') {
        this._broadcast({ t: 'activity', tab: this.tab, active: this._active });
        return;
      }
      if (!this.options.trackPresence && !this._manualPresence) return;
      var status;
      if (this._manualPresence) status = this._manualPresence;
      else {
        var any = this._active;
        var now = Date.now();
        var self = this;
        this._tabsActivity.forEach(function (a, tab) {
          if (now - a.at > 3 * self.options.keepaliveMs) self._tabsActivity.delete(tab);
          else if (a.active) any = true;
        });
        status = any ? 'online' : 'away';
      }
      this.presence = status;
      if (!this.sid || !this._flowStarted) return;
      if (!force && this._presenceSent === status) return;
      this._presenceSent = status;
      this._fire('/presence', { status: status });
    }

    _installPageHooks() {
      if (typeof window === 'undefined' || !window.addEventListener) return;
      var self = this;
      var on = function (target, type, fn, opts) {
        target.addEventListener(type, fn, opts);
        self._cleanup.push(function () {
          target.removeEventListener(type, fn, opts);
        });
      };
      var recompute = function () {
        var active = self._isActive();
        if (active !== self._active) {
          self._active = active;
          self._sendActivity();
        }
      };
      if (this.options.trackPresence) {
        var input = function () {
          self._lastInput = Date.now();
          if (!self._active) recompute();
        };
        ['pointerdown', 'keydown', 'wheel', 'touchstart', 'mousemove', 'focus'].forEach(function (type) {
          on(window, type, input, { passive: true, capture: true });
        });
        on(document, 'visibilitychange', function () {
          if (document.visibilityState === 'visible') self._lastInput = Date.now();
          recompute();
          // A hidden follower's timers may have been throttled: check now.
          if (document.visibilityState === 'visible' && self.role === 'follower') self._keepaliveOnce();
        });
        var idleCheck = function () {
          recompute();
          self._later(Math.min(self.options.idleMs / 4, 15000), idleCheck);
        };
        this._later(1000, idleCheck);
      }
      if (this.options.leaveOnUnload) {
        on(window, 'pagehide', function () {
          // Leave at once (sendBeacon survives the unload); a page kept in
          // the back/forward cache attaches again on pageshow.
          self._broadcast({ t: 'bye', tab: self.tab });
          self._leave(true);
          if (self._releaseLock) {
            self._releaseLock();
            self._releaseLock = null;
          }
          self._stopPolling();
          self._stopKeepalive();
          self._suspended = true;
        });
        on(window, 'pageshow', function (e) {
          if (e.persisted && self._suspended && self._running) {
            self._suspended = false;
            self._stopCoordination();
            self._setRole('solo');
            self._reconnect(null, 'lost').then(function () {
              self._startFlow();
            });
          }
        });
      }
    }

    // -- timers ---------------------------------------------------------------

    _later(ms, fn) {
      var self = this;
      var t = setTimeout(function () {
        self._timers.delete(t);
        fn();
      }, ms);
      this._timers.add(t);
      return t;
    }

    _clearTimer(t) {
      clearTimeout(t);
      this._timers.delete(t);
    }
  }

  /** Creates a client and starts it: `Switchboard.connect({url, token})`. */
  function connect(options) {
    var client = new Client(options);
    client.start().catch(function () {});
    return client;
  }

  var api = {
    version: VERSION,
    Client: Client,
    connect: connect,
    JsonpTransport: JsonpTransport,
    FetchTransport: FetchTransport,
    SwitchboardError: SwitchboardError,
    Emitter: Emitter,
    compareIds: compareIds,
    backoffDelay: backoffDelay,
  };
  // `require(...).default` is the API too, as switchboard.d.ts's
  // `export default` says for either entry.
  api.default = api;
  return api;
});
