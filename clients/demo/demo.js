/* Switchboard demo app: sign-in picker, contact list with presence, docked
 * chat windows (open, minimise, close) with unread badges, typing, "seen"
 * receipts and history scroll-back. The window layout is the user's UI
 * state (client.setUi), so it is the same in every tab and after a reload.
 * Plain script over window.Switchboard (switchboard.js), no build step.
 *
 * ?transport=fetch uses fetch/JSON instead of JSONP; ?coordination=heartbeat
 * elects the polling tab by heartbeats instead of navigator.locks; ?share=0
 * turns tab sharing off. #as=ID signs in as
 * that demo user directly (the "open another tab" link uses it).
 *
 * The sign-in is the browser's (localStorage), so a new tab is signed in
 * too and signing out signs out every tab; each tab also remembers its own
 * user (sessionStorage), so a tab signed in as someone else by an #as= link
 * stays that user across reloads.
 */
(function () {
  'use strict';

  var Switchboard = window.Switchboard;
  var LOGIN_KEY = 'sb-demo-user';
  var WINDOWS_MAX = 8; // open windows kept in the UI state; those that do not fit are behind "+N"
  var MORE_W = 72; // room kept for the "+N" tab
  var HISTORY_PAGE = 20;
  var TYPING_SHOWN_MAX_MS = 8000;

  var query = new URLSearchParams(location.search);
  var transport = query.get('transport') === 'fetch' ? 'fetch' : 'jsonp';

  function $(sel, root) {
    return (root || document).querySelector(sel);
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  var PALETTE = ['#1f6feb', '#e8590c', '#2f9e44', '#ae3ec9', '#f08c00', '#0c8599', '#d6336c', '#5c7cfa'];
  function paintAvatar(node, id, name) {
    node.style.setProperty('--avatar', PALETTE[(Number(id) || 0) % PALETTE.length]);
    var dot = node.querySelector('.dot');
    node.textContent = (name || '?').trim().charAt(0) || '?';
    if (dot) node.appendChild(dot);
  }

  var STATUS_TEXT = { online: 'Active now', away: 'Away', offline: 'Offline' };

  // ---------------------------------------------------------------------
  // App state

  var demo = (window.demo = {
    client: null,
    me: null,
    ui: { v: 1, windows: [], focus: null },
    windows: new Map(), // friend id -> window object
    directory: {}, // user id -> name, from /demo/users (names of non-friends too)
  });
  var cidN = 0;

  // ---------------------------------------------------------------------
  // Toasts

  function toast(text, kind) {
    var t = el('div', 'toast' + (kind ? ' ' + kind : ''), text);
    $('#toasts').appendChild(t);
    setTimeout(function () {
      t.remove();
    }, 6000);
  }

  // ---------------------------------------------------------------------
  // Sign in

  /** The demo users with their friends (empty when the server's directory
   *  is not known to it); also fills demo.directory, the names by id. */
  function loadUsers() {
    return fetch('/demo/users', { cache: 'no-store' })
      .then(function (r) {
        return r.json();
      })
      .then(function (j) {
        var users = (j && j.users) || [];
        users.forEach(function (u) {
          demo.directory[u.id] = u.name;
        });
        return users;
      });
  }

  function showPicker() {
    $('#app').classList.add('signed-out');
    $('#picker').hidden = false;
    $('#home').hidden = true;
    $('#me').hidden = true;
    var grid = $('#user-grid');
    grid.textContent = '';
    loadUsers()
      .then(function (users) {
        if (!users.length) {
          $('#picker-id').hidden = false;
          return;
        }
        var names = demo.directory;
        users.forEach(function (u) {
          var li = el('li');
          var b = el('button', 'user-tile');
          b.type = 'button';
          b.dataset.user = u.id;
          var av = el('span', 'avatar');
          paintAvatar(av, u.id, u.name);
          var who = el('span', 'who');
          who.appendChild(el('span', 'name', u.name));
          var friends = (u.friends || []).map(function (f) {
            return names[f] || f;
          });
          who.appendChild(el('span', 'friends', friends.length ? 'Friends with ' + listNames(friends) : 'No friends yet'));
          b.appendChild(av);
          b.appendChild(who);
          b.addEventListener('click', function () {
            signIn(u.id);
          });
          li.appendChild(b);
          grid.appendChild(li);
        });
      })
      .catch(function () {
        $('#picker-error').textContent = 'Cannot reach the server.';
      });
  }

  $('#picker-id').addEventListener('submit', function (e) {
    e.preventDefault();
    signIn(Number(new FormData(e.target).get('user')));
  });

  function mint(userId) {
    return fetch('/demo/login?user=' + encodeURIComponent(userId), { cache: 'no-store' })
      .then(function (r) {
        return r.json();
      })
      .then(function (j) {
        if (!j.ok) throw Object.assign(new Error(j.error.message), { code: j.error.code });
        return j;
      });
  }

  function signIn(userId) {
    $('#picker-error').textContent = '';
    mint(userId).then(
      function (j) {
        remember(j.user);
        start(j.user, j.token);
      },
      function (e) {
        $('#picker-error').textContent = 'Cannot sign in: ' + e.message;
      }
    );
  }

  /** The signed-in user: this tab's, else the browser's (another tab's). */
  function remembered() {
    // Reading either store may throw where storage is blocked.
    var stores = [
      function () {
        return sessionStorage;
      },
      function () {
        return localStorage;
      },
    ];
    for (var i = 0; i < stores.length; i++) {
      try {
        var u = JSON.parse(stores[i]().getItem(LOGIN_KEY) || 'null');
        if (u && u.id) return u;
      } catch (e) {
        /* unreadable: try the next */
      }
    }
    return null;
  }
  function remember(user) {
    var v = JSON.stringify({ id: user.id, name: user.name });
    try {
      sessionStorage.setItem(LOGIN_KEY, v);
      localStorage.setItem(LOGIN_KEY, v);
    } catch (e) {
      /* storage off: this tab only */
    }
  }
  function forget() {
    try {
      sessionStorage.removeItem(LOGIN_KEY);
      localStorage.removeItem(LOGIN_KEY);
    } catch (e) {
      /* storage off */
    }
  }

  // Signing out in one tab signs out every tab of this browser signed in
  // as the same user (a tab opened as someone else with `#as=` stays).
  window.addEventListener('storage', function (e) {
    if (e.key !== LOGIN_KEY || e.newValue !== null || !demo.client) return;
    var was = null;
    try {
      was = JSON.parse(e.oldValue || 'null');
    } catch (err) {
      /* unreadable: treat as the same user */
    }
    if (!was || !demo.me || was.id === demo.me.id) signOut();
  });

  function signOut() {
    forget();
    if (demo.client) demo.client.close();
    demo.client = null;
    demo.windows.forEach(function (w) {
      w.el.remove();
    });
    demo.windows.clear();
    // The "+N" tab and its list belong to the user signed out.
    demo.hidden = [];
    var more = $('#dock .more');
    if (more) more.remove();
    document.title = 'Switchboard demo';
    showPicker();
  }
  $('#sign-out').addEventListener('click', signOut);

  // ---------------------------------------------------------------------
  // Start the client

  function start(user, firstToken) {
    demo.me = user;
    $('#app').classList.remove('signed-out');
    $('#picker').hidden = true;
    $('#home').hidden = false;
    $('#me').hidden = false;
    $('#me-name').textContent = user.name;
    paintAvatar($('#me-avatar'), user.id, user.name);
    $('#welcome-name').textContent = user.name;
    $('#another-name').textContent = user.name;
    $('#another-tab').href = location.pathname + location.search + '#as=' + user.id;

    var token = firstToken;
    var client = new Switchboard.Client({
      url: '',
      transport: transport,
      // ?coordination=heartbeat tries the election without navigator.locks;
      // ?share=0 makes every tab poll by itself.
      coordination: query.get('coordination') === 'heartbeat' ? 'heartbeat' : 'auto',
      shareTabs: query.get('share') !== '0',
      // A demo token is minted again whenever the client connects again
      // (a real web app would hand out a fresh one the same way).
      token: function () {
        if (token) {
          var t = token;
          token = null;
          return t;
        }
        return mint(user.id).then(function (j) {
          return j.token;
        });
      },
    });
    demo.client = client;
    loadUsers().catch(function () {});

    client.on('connected', function (snap) {
      demo.me = snap.user;
      renderBuddies();
      applyUi(snap.ui);
      renderUnread();
    });
    client.on('state', renderConn);
    client.on('message', onMessage);
    client.on('presence', function () {
      renderBuddies();
      renderWindowHeads();
      renderMore();
    });
    client.on('roster', function (ev) {
      if (ev.change === 'removed' && demo.windows.has(ev.user.id)) closeWindow(ev.user.id, true);
      renderBuddies();
    });
    client.on('typing', onTyping);
    client.on('ui', function (change) {
      if (!change.local) applyUi(change.state);
    });
    client.on('read', onRead);
    client.on('error', onError);
    renderConn({ status: 'connecting', role: client.role });
    client.start().catch(function () {});
  }

  function onError(e) {
    var shown = { not_friends: 1, too_large: 1, forbidden: 1, bad_request: 1, unauthorized: 1 };
    if (!shown[e.code]) return;
    if (e.code === 'not_friends') {
      var name = e.to ? nameOf(e.to) : 'they';
      toast('Not sent: you can only message friends, and ' + name + ' is not one (not_friends)', 'error');
    } else {
      toast((e.call ? e.call + ': ' : '') + e.message + ' (' + e.code + ')', 'error');
    }
  }

  function renderConn(st) {
    var client = demo.client;
    var status = (st && st.status) || (client && client.status) || 'idle';
    var role = (st && st.role) || (client && client.role);
    var conn = $('#conn');
    conn.dataset.status = status;
    conn.dataset.role = role || '';
    var text = { connected: 'Connected', connecting: 'Connecting…', reconnecting: 'Reconnecting…', closed: 'Offline', idle: 'Offline' };
    $('.conn-text', conn).textContent = text[status] || status;
    var roleText = {
      leader: 'This tab holds the long-poll for all your tabs here.',
      follower: 'Another tab holds the long-poll and shares its events with this one.',
      solo: 'This tab polls by itself.',
    };
    // How this tab talks to the server is for the curious: a tooltip, not
    // text on the page (tests read data-role).
    conn.title = (roleText[role] ? roleText[role] + ' ' : '') + '(' + transport + ')';
  }

  // ---------------------------------------------------------------------
  // Contacts

  /** A user's name: from the roster (friends), else the demo directory,
   *  never a bare id on screen. */
  function nameOf(id) {
    var c = demo.client && demo.client.roster.get(Number(id));
    if (c) return c.name;
    return demo.directory[Number(id)] || 'someone';
  }

  /** "a", "a and b", "a, b and c". */
  function listNames(names) {
    if (names.length < 2) return names.join('');
    return names.slice(0, -1).join(', ') + ' and ' + names[names.length - 1];
  }
  function presenceOf(id) {
    var c = demo.client && demo.client.roster.get(Number(id));
    return c ? c.presence : 'offline';
  }
  function unreadOf(id) {
    return (demo.client && demo.client.unread[String(id)]) || 0;
  }

  function renderBuddies() {
    var client = demo.client;
    if (!client) return;
    var list = $('#buddies');
    list.textContent = '';
    var order = { online: 0, away: 1, offline: 2 };
    var friends = Array.from(client.roster.values()).sort(function (a, b) {
      return order[a.presence] - order[b.presence] || a.name.localeCompare(b.name);
    });
    friends.forEach(function (f) {
      var li = el('li');
      var b = el('button', 'buddy');
      b.type = 'button';
      b.dataset.user = f.id;
      b.dataset.presence = f.presence;
      var av = el('span', 'avatar small');
      av.appendChild(el('i', 'dot ' + f.presence));
      paintAvatar(av, f.id, f.name);
      var name = el('span', 'name', f.name);
      var status = el('span', 'status', f.presence === 'online' ? '' : STATUS_TEXT[f.presence]);
      b.appendChild(av);
      b.appendChild(name);
      b.appendChild(status);
      var n = unreadOf(f.id);
      var badge = el('span', 'badge', String(n));
      badge.hidden = !n;
      b.appendChild(badge);
      b.addEventListener('click', function () {
        openWindow(f.id, true);
      });
      li.appendChild(b);
      list.appendChild(li);
    });
    var names = friends.map(function (f) {
      return f.name;
    });
    $('#welcome-friends').textContent = names.length ? 'Your friends: ' + listNames(names) + '.' : 'No friends yet.';
  }

  function renderUnread() {
    var total = 0;
    $('#buddies')
      .querySelectorAll('.buddy')
      .forEach(function (b) {
        var n = unreadOf(b.dataset.user);
        total += n;
        var badge = $('.badge', b);
        badge.textContent = String(n);
        badge.hidden = !n;
      });
    demo.windows.forEach(function (w) {
      var n = unreadOf(w.friend);
      var badge = $('.badge', w.el);
      badge.textContent = String(n);
      badge.hidden = !n;
      w.el.classList.toggle('has-unread', n > 0);
    });
    renderMore();
    document.title = (total ? '(' + total + ') ' : '') + 'Switchboard demo';
  }

  // ---------------------------------------------------------------------
  // UI state: which windows are open, in order (first = nearest the
  // contact list), which are minimised, which one is in focus (the one a
  // phone shows full screen).

  function normalizeUi(state) {
    var client = demo.client;
    var out = { v: 1, windows: [], focus: null };
    var seen = {};
    ((state && state.windows) || []).forEach(function (w) {
      var id = Number(w && w.id);
      if (!id || seen[id] || !client.roster.has(id) || out.windows.length >= WINDOWS_MAX) return;
      seen[id] = true;
      out.windows.push({ id: id, min: !!w.min });
    });
    var focus = Number(state && state.focus);
    out.focus = seen[focus] ? focus : null;
    return out;
  }

  function saveUi() {
    demo.client.setUi(demo.ui);
  }

  function applyUi(state) {
    demo.ui = normalizeUi(state);
    var wanted = {};
    demo.ui.windows.forEach(function (w) {
      wanted[w.id] = w;
    });
    demo.windows.forEach(function (w, id) {
      if (!wanted[id]) closeWindow(id, true);
    });
    var dock = $('#dock');
    demo.ui.windows.forEach(function (w) {
      var win = demo.windows.get(w.id) || createWindow(w.id);
      setMin(win, w.min);
      win.el.classList.toggle('focused', demo.ui.focus === w.id);
      dock.appendChild(win.el); // in UI order
    });
    fitDock();
    renderUnread();
    demo.windows.forEach(function (w) {
      maybeRead(w);
    });
  }

  function openWindow(friend, focus) {
    var ui = demo.ui;
    var existing = ui.windows.filter(function (w) {
      return w.id === friend;
    })[0];
    if (existing) {
      existing.min = focus ? false : existing.min;
      // A hidden (overflowed) window comes in nearest the contact list,
      // swapping out the farthest shown one.
      var shown = demo.windows.get(friend);
      if (focus && shown && shown.el.classList.contains('overflow')) {
        ui.windows = [existing].concat(
          ui.windows.filter(function (w) {
            return w !== existing;
          })
        );
      }
    } else {
      ui.windows.unshift({ id: friend, min: !focus });
      ui.windows = ui.windows.slice(0, WINDOWS_MAX);
    }
    if (focus) ui.focus = friend;
    applyUi(ui);
    saveUi();
    var win = demo.windows.get(friend);
    if (focus && win && !isPhone()) $('.chat-text', win.el).focus();
  }

  function closeWindow(friend, fromState) {
    var win = demo.windows.get(friend);
    if (win) {
      win.el.remove();
      demo.windows.delete(friend);
      demo.client.untrack(friend);
      demo.client.stopTyping(friend);
    }
    if (!fromState) {
      demo.ui.windows = demo.ui.windows.filter(function (w) {
        return w.id !== friend;
      });
      if (demo.ui.focus === friend) demo.ui.focus = null;
      saveUi();
    }
  }

  function toggleMin(friend, min) {
    demo.ui.windows.forEach(function (w) {
      if (w.id === friend) w.min = min;
    });
    if (!min) demo.ui.focus = friend;
    applyUi(demo.ui);
    saveUi();
  }

  /** Windows that do not fit left of the contact list are hidden (the
   *  farthest first; they stay in the UI state for wider screens) behind
   *  a "+N" tab, as Facebook did: it lists them, and one picked from it
   *  swaps in. */
  function fitDock() {
    var dock = $('#dock');
    var more = moreTab();
    var chats = Array.prototype.slice.call(dock.querySelectorAll('.chat'));
    chats.forEach(function (node) {
      node.classList.remove('overflow');
    });
    dock.appendChild(more); // last: the far end of the dock
    var hidden = [];
    if (!isPhone()) {
      var room = dock.getBoundingClientRect().right - 8;
      var widths = chats.map(function (node) {
        return node.getBoundingClientRect().width + 10;
      });
      var total = widths.reduce(function (a, b) {
        return a + b;
      }, 0);
      if (total > room) {
        room -= MORE_W;
        chats.forEach(function (node, i) {
          room -= widths[i];
          if (room < 0 || hidden.length) {
            node.classList.add('overflow');
            hidden.push(Number(node.dataset.friend));
          }
        });
      }
    }
    demo.hidden = hidden;
    more.hidden = !hidden.length;
    if (!hidden.length) $('.more-menu', more).hidden = true;
    renderMore();
  }
  // A window revealed by widening the page is read like any shown one.
  window.addEventListener('resize', function () {
    fitDock();
    demo.windows.forEach(maybeRead);
  });

  function moreTab() {
    var more = $('#dock .more');
    if (more) return more;
    more = el('div', 'more');
    more.hidden = true;
    var button = el('button', 'more-tab');
    button.type = 'button';
    button.title = 'More conversations';
    button.setAttribute('aria-haspopup', 'true');
    button.appendChild(el('span', 'more-count'));
    var badge = el('span', 'badge');
    badge.hidden = true;
    button.appendChild(badge);
    var menu = el('ul', 'more-menu');
    menu.hidden = true;
    button.addEventListener('click', function (e) {
      e.stopPropagation();
      menu.hidden = !menu.hidden;
      button.setAttribute('aria-expanded', String(!menu.hidden));
    });
    document.addEventListener('click', function (e) {
      if (!more.contains(e.target)) menu.hidden = true;
    });
    more.appendChild(menu);
    more.appendChild(button);
    return more;
  }

  /** The "+N" tab's count, unread badge and list of hidden conversations. */
  function renderMore() {
    var more = $('#dock .more');
    if (!more) return;
    var hidden = demo.hidden || [];
    $('.more-count', more).textContent = '+' + hidden.length;
    var unread = 0;
    var menu = $('.more-menu', more);
    menu.textContent = '';
    hidden.forEach(function (id) {
      var n = unreadOf(id);
      unread += n;
      var li = el('li');
      var b = el('button', 'more-item');
      b.type = 'button';
      b.dataset.friend = id;
      var av = el('span', 'avatar small');
      av.appendChild(el('i', 'dot ' + presenceOf(id)));
      paintAvatar(av, id, nameOf(id));
      b.appendChild(av);
      b.appendChild(el('span', 'name', nameOf(id)));
      var badge = el('span', 'badge', String(n));
      badge.hidden = !n;
      b.appendChild(badge);
      b.addEventListener('click', function (e) {
        e.stopPropagation();
        menu.hidden = true;
        openWindow(id, true);
      });
      li.appendChild(b);
      menu.appendChild(li);
    });
    var badge = $('.more-tab .badge', more);
    badge.textContent = String(unread);
    badge.hidden = !unread;
  }

  function isPhone() {
    return window.matchMedia('(max-width: 700px)').matches;
  }

  // ---------------------------------------------------------------------
  // Chat windows

  function createWindow(friend) {
    var node = $('#chat-template').content.firstElementChild.cloneNode(true);
    node.dataset.friend = friend;
    var win = {
      friend: friend,
      el: node,
      list: $('.msgs', node),
      body: $('.chat-body', node),
      byId: new Map(),
      byCid: new Map(),
      oldest: null,
      more: false,
      loading: false,
      lastIncoming: null,
      seenUpto: null,
      typingTimer: null,
      min: false,
    };
    demo.windows.set(friend, win);
    renderWindowHead(win);
    // Minimise on an open window, restore on a minimised one.
    $('.min', node).addEventListener('click', function (e) {
      e.stopPropagation();
      toggleMin(friend, !win.min);
    });
    $('.back', node).addEventListener('click', function (e) {
      e.stopPropagation();
      toggleMin(friend, true);
    });
    $('.close', node).addEventListener('click', function (e) {
      e.stopPropagation();
      closeWindow(friend, false);
    });
    $('.chat-head', node).addEventListener('click', function () {
      if (isPhone()) return;
      toggleMin(friend, !win.min);
    });
    var input = $('.chat-text', node);
    input.addEventListener('input', function () {
      if (input.value.trim()) demo.client.typing(friend);
      else demo.client.stopTyping(friend);
    });
    $('.chat-input', node).addEventListener('submit', function (e) {
      e.preventDefault();
      var text = input.value;
      if (!text.trim()) return;
      input.value = '';
      sendFrom(win, text);
    });
    node.addEventListener('focusin', function () {
      maybeRead(win);
    });
    win.body.addEventListener('scroll', function () {
      if (win.body.scrollTop < 40) loadOlder(win);
    });
    loadLatest(win);
    return win;
  }

  function renderWindowHead(win) {
    var node = win.el;
    var name = nameOf(win.friend);
    var presence = presenceOf(win.friend);
    $('.chat-name', node).textContent = name;
    $('.chat-sub', node).textContent = STATUS_TEXT[presence];
    var av = $('.avatar', node);
    $('.dot', av).className = 'dot ' + presence;
    paintAvatar(av, win.friend, name);
    node.dataset.presence = presence;
  }

  function renderWindowHeads() {
    demo.windows.forEach(renderWindowHead);
  }

  function setMin(win, min) {
    win.min = min;
    win.el.dataset.min = String(min);
    var button = $('.min', win.el);
    button.textContent = min ? '□' : '–';
    button.title = min ? 'Restore' : 'Minimise';
    button.setAttribute('aria-label', button.title);
    button.classList.toggle('restore', min);
    if (!min) scrollToEnd(win);
  }

  function nearEnd(win) {
    return win.body.scrollHeight - win.body.scrollTop - win.body.clientHeight < 60;
  }

  function scrollToEnd(win) {
    win.body.scrollTop = win.body.scrollHeight;
  }

  function loadLatest(win) {
    win.loading = true;
    demo.client
      .history(win.friend, { limit: HISTORY_PAGE })
      .then(function (page) {
        win.loading = false;
        page.messages.forEach(function (m) {
          addMessage(win, m);
        });
        if (win.oldest === null || page.messages.length) {
          win.more = page.more;
          if (page.messages.length) win.oldest = page.messages[0].id;
        }
        win.loaded = true;
        // The friend's read mark, kept by the server: "Seen" survives a
        // reload (a newer read event moves it on).
        if (page.seen && (!win.seenUpto || Switchboard.compareIds(page.seen, win.seenUpto) > 0)) {
          win.seenUpto = String(page.seen);
        }
        renderEmpty(win);
        scrollToEnd(win);
        renderSeen(win);
        maybeRead(win);
      })
      .catch(function (e) {
        win.loading = false;
        toast('Cannot load history: ' + e.message, 'error');
      });
  }

  function loadOlder(win) {
    if (win.loading || !win.more || !win.oldest) return;
    win.loading = true;
    var older = $('.older', win.el);
    older.hidden = false;
    var fromBottom = win.body.scrollHeight - win.body.scrollTop;
    demo.client
      .history(win.friend, { before: win.oldest, limit: HISTORY_PAGE })
      .then(function (page) {
        page.messages.forEach(function (m) {
          addMessage(win, m);
        });
        win.more = page.more;
        if (page.messages.length) win.oldest = page.messages[0].id;
        older.hidden = true;
        win.body.scrollTop = win.body.scrollHeight - fromBottom; // keep the view still
        win.loading = false;
      })
      .catch(function () {
        older.hidden = true;
        win.loading = false;
      });
  }

  var GROUP_GAP_MS = 5 * 60 * 1000;

  /** Facebook-style: "Just now", "7 min", "10:42" today, "Mon 10:42" this
   *  week, "Jan 5, 10:42" before. */
  function shortTime(ts, now) {
    var d = new Date(ts);
    if (isNaN(d)) return '';
    var ago = now - ts;
    if (ago < 60 * 1000) return 'Just now';
    if (ago < 60 * 60 * 1000) return Math.floor(ago / 60000) + ' min';
    var hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    var today = new Date(now);
    if (d.toDateString() === today.toDateString()) return hm;
    if (ago < 6 * 24 * 60 * 60 * 1000) return d.toLocaleDateString([], { weekday: 'short' }) + ' ' + hm;
    return d.toLocaleDateString([], { month: 'short', day: 'numeric' }) + ', ' + hm;
  }
  demo.shortTime = shortTime; // for the tests

  /** A time under each group of messages (no pause of more than a few
   *  minutes between them), in data-time (shown by CSS, so it is not part
   *  of the message's text). */
  function renderTimes(win) {
    var now = Date.now();
    var items = Array.prototype.filter.call(win.list.children, function (li) {
      return li.dataset.ts;
    });
    items.forEach(function (li, i) {
      var next = items[i + 1];
      var end = !next || Number(next.dataset.ts) - Number(li.dataset.ts) > GROUP_GAP_MS;
      if (end) li.dataset.time = shortTime(Number(li.dataset.ts), now);
      else delete li.dataset.time;
    });
  }
  setInterval(function () {
    demo.windows.forEach(renderTimes);
  }, 30 * 1000);

  function time(ts) {
    try {
      return new Date(ts).toLocaleString([], { hour: '2-digit', minute: '2-digit', month: 'short', day: 'numeric' });
    } catch (e) {
      return '';
    }
  }

  /** Adds a message to its window once (by id; a pending bubble with the
   *  same cid becomes the message), in id order. */
  function addMessage(win, m) {
    var id = String(m.id);
    if (win.byId.has(id)) return;
    var me = demo.me && demo.me.id;
    var li = m.cid && win.byCid.get(m.cid);
    if (li) {
      li.classList.remove('pending');
      li.remove();
    } else {
      li = el('li', 'msg' + (m.from === me ? ' mine' : ''));
      li.appendChild(messageText(m.text));
    }
    li.dataset.id = id;
    li.title = time(m.ts);
    if (m.ts) li.dataset.ts = String(m.ts);
    if (m.cid) li.dataset.cid = m.cid;
    win.byId.set(id, li);
    // Insert after the last message with a smaller id (pending ones stay last).
    var after = null;
    var items = win.list.children;
    for (var i = items.length - 1; i >= 0; i--) {
      var other = items[i];
      if (!other.dataset.id) continue;
      if (Switchboard.compareIds(other.dataset.id, id) < 0) {
        after = other;
        break;
      }
    }
    var stick = nearEnd(win);
    if (after) after.after(li);
    else win.list.prepend(li);
    if (m.from !== me && (!win.lastIncoming || Switchboard.compareIds(id, win.lastIncoming) > 0)) {
      win.lastIncoming = id;
    }
    renderTimes(win);
    renderSeen(win);
    renderEmpty(win);
    if (stick || m.from === me) scrollToEnd(win);
  }

  // Links: only http(s) URLs written out in full become links, built with
  // DOM calls (never markup from message text), opening in a new tab with
  // no opener and no referrer. Anything else (javascript:, data:, ...)
  // stays text.
  var URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;

  function safeHref(candidate) {
    try {
      var u = new URL(candidate);
      return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
    } catch (e) {
      return null;
    }
  }

  /** `url` without the sentence's trailing punctuation. */
  function trimUrl(url) {
    var pairs = { ')': '(', ']': '[', '}': '{' };
    for (;;) {
      var last = url.charAt(url.length - 1);
      if ('.,;:!?'.indexOf(last) >= 0) {
        url = url.slice(0, -1);
      } else if (pairs[last] && url.split(pairs[last]).length <= url.split(last).length - 1) {
        // More closing than opening brackets: the last one is the text's.
        url = url.slice(0, -1);
      } else {
        return url;
      }
    }
  }

  /** A message's text as a .text span, its http(s) URLs as links. */
  function messageText(text) {
    var span = el('span', 'text');
    var at = 0;
    var m;
    URL_RE.lastIndex = 0;
    while ((m = URL_RE.exec(text))) {
      // Trailing punctuation ends the sentence, not the URL; a closing
      // bracket stays when the URL opened one (Foo_(bar)).
      var url = trimUrl(m[0]);
      var href = safeHref(url);
      if (!href) continue;
      if (m.index > at) span.appendChild(document.createTextNode(text.slice(at, m.index)));
      var a = el('a', null, url);
      a.href = href;
      a.target = '_blank';
      a.rel = 'noopener noreferrer';
      span.appendChild(a);
      at = m.index + url.length;
      URL_RE.lastIndex = at;
    }
    if (at < text.length) span.appendChild(document.createTextNode(text.slice(at)));
    return span;
  }
  demo.messageText = messageText; // for the tests

  function renderEmpty(win) {
    $('.empty', win.el).hidden = !win.loaded || win.list.children.length > 0;
  }

  function sendFrom(win, text) {
    var client = demo.client;
    var cid = client.tab + '-' + Date.now().toString(36) + '-' + ++cidN;
    var li = el('li', 'msg mine pending');
    li.appendChild(messageText(text));
    li.dataset.cid = cid;
    li.title = 'Sending…';
    win.byCid.set(cid, li);
    win.list.appendChild(li);
    renderEmpty(win);
    scrollToEnd(win);
    client.send(win.friend, text, { cid: cid }).then(
      function (r) {
        addMessage(win, { id: r.id, from: demo.me.id, to: win.friend, text: text, ts: r.ts, cid: cid });
      },
      function (e) {
        li.classList.remove('pending');
        li.classList.add('failed');
        li.title = 'Not sent: ' + e.message + ' (' + e.code + ')';
      }
    );
  }

  function onMessage(ev) {
    var me = demo.me && demo.me.id;
    var friend = ev.from === me ? ev.to : ev.from;
    var win = demo.windows.get(friend);
    if (!win) {
      // Like Facebook, a new message pops its window up (minimised). One
      // tab decides (the leader); the others follow through the UI state.
      if (ev.from !== me && demo.client.role !== 'follower' && demo.client.roster.has(friend)) {
        openWindow(friend, false);
      }
      renderUnread();
      return;
    }
    addMessage(win, ev);
    if (ev.from === friend) showTyping(win, false);
    renderUnread();
    maybeRead(win);
  }

  /** Marks a window's conversation read when the user can see it. */
  function maybeRead(win) {
    if (win.min || win.el.classList.contains('overflow') || document.visibilityState !== 'visible' || !win.lastIncoming) return;
    if (isPhone() && demo.ui.focus !== win.friend) return;
    if (!demo.client || !demo.client.sid) return;
    demo.client.read(win.friend, win.lastIncoming);
    if (unreadOf(win.friend)) {
      demo.client.unread[String(win.friend)] = 0;
      renderUnread();
    }
  }

  document.addEventListener('visibilitychange', function () {
    demo.windows.forEach(maybeRead);
  });

  function onRead(ev) {
    var me = demo.me && demo.me.id;
    if (ev.by === me) {
      renderUnread();
      return;
    }
    var win = demo.windows.get(ev.with);
    if (!win) return;
    if (!win.seenUpto || Switchboard.compareIds(ev.upto, win.seenUpto) > 0) win.seenUpto = String(ev.upto);
    renderSeen(win);
  }

  /** "Seen" under the last message when it is ours and the friend read it. */
  function renderSeen(win) {
    var seen = $('.seen', win.el);
    var last = null;
    var items = win.list.children;
    for (var i = items.length - 1; i >= 0; i--) {
      if (items[i].dataset.id) {
        last = items[i];
        break;
      }
    }
    var show =
      !!last && last.classList.contains('mine') && !!win.seenUpto && Switchboard.compareIds(last.dataset.id, win.seenUpto) <= 0;
    seen.hidden = !show;
    if (show) seen.textContent = 'Seen';
  }

  function onTyping(ev) {
    var win = demo.windows.get(ev.user);
    if (win) showTyping(win, ev.state === 'typing');
  }

  function showTyping(win, on) {
    var box = $('.typing', win.el);
    if (win.typingTimer) clearTimeout(win.typingTimer);
    win.typingTimer = null;
    if (on) {
      $('.typing-text', box).textContent = nameOf(win.friend) + ' is typing…';
      // A lost `stopped` must not leave it shown for ever.
      win.typingTimer = setTimeout(function () {
        showTyping(win, false);
      }, TYPING_SHOWN_MAX_MS);
    }
    var stick = nearEnd(win);
    box.hidden = !on;
    if (stick) scrollToEnd(win);
  }

  // ---------------------------------------------------------------------
  // Boot

  function boot() {
    var as = /(?:^|[#&])as=(\d+)/.exec(location.hash);
    if (as) {
      history.replaceState(null, '', location.pathname + location.search);
      signIn(Number(as[1]));
      return;
    }
    var saved = remembered();
    if (saved) {
      mint(saved.id).then(
        function (j) {
          remember(j.user);
          start(j.user, j.token);
        },
        function (e) {
          if (e.code === 'not_found') {
            forget();
            showPicker();
          } else start(saved, null); // the server is away: the client retries
        }
      );
    } else showPicker();
  }

  boot();
})();
