// a3s-code dashboard: one page, hash routes, live data from /api/stream (server-sent events).
// Plain JS, no build step. Data is only ever put in the page as text (never as HTML).
'use strict';

const LANES = ['control', 'query', 'execute', 'generate'];
const STATES = [
  ['in_flight', 'In flight'],
  ['pending', 'Pending'],
  ['finished', 'Finished'],
  ['dead', 'Dead letters'],
];

let info = {};
let source = null; // the EventSource of the current page
let page = null; // {render(data)} of the current page
const openPayloads = new Set(); // the payloads unfolded by the user (task ids)

document.addEventListener('toggle', (ev) => {
  const key = ev.target.dataset && ev.target.dataset.key;
  if (!key) return;
  if (ev.target.open) openPayloads.add(key);
  else openPayloads.delete(key);
}, true);

// ----- small helpers -------------------------------------------------------------------------

/** Builds an element: h('td', {class: 'x', onclick: f}, 'text', child, ...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') el.style.cssText = v; // CSSOM: allowed by the page's CSP
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const $ = (sel) => document.querySelector(sel);

function ago(ms) {
  if (ms === undefined || ms === null) return '';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60 ? (s % 60) + ' s' : ''}`.trim();
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d`;
}

function since(epochMs) {
  return epochMs ? `${ago(Date.now() - epochMs)} ago` : '';
}

function duration(ms) {
  if (ms === undefined || ms === null) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return ago(ms);
}

function short(id, n = 12) {
  return id && id.length > n ? id.slice(0, n) + '…' : id || '';
}

function badge(text, kind) {
  return h('span', { class: `badge ${kind || text}` }, text.replace(/_/g, ' '));
}

function errorOf(value) {
  return value && value.error && value.error.code ? value.error : null;
}

function toast(text, kind = 'ok') {
  const t = h('div', { class: `toast ${kind}` }, text);
  $('#toasts').append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

function payloadSummary(p) {
  if (!p) return '';
  if (typeof p.command === 'string') return p.command;
  if (typeof p.path === 'string') return p.path;
  if (typeof p.pattern === 'string') return p.pattern;
  return JSON.stringify(p);
}

/** A payload, folded; `key` keeps it open across the live view's redraws. */
function payloadCell(p, key) {
  if (!p) return h('td', { class: 'muted' }, '—');
  const summary = payloadSummary(p);
  return h('td', { class: 'payload' },
    h('details', { dataset: { key }, open: openPayloads.has(key) },
      h('summary', { title: summary }, short(summary, 48)),
      h('pre', {}, JSON.stringify(p, null, 2))));
}

// ----- the API -------------------------------------------------------------------------------

async function api(path, options = {}) {
  const res = await fetch(path, { credentials: 'same-origin', ...options });
  const body = res.headers.get('content-type')?.includes('json') ? await res.json() : null;
  if (!res.ok) {
    const err = errorOf(body) || { code: String(res.status), message: res.statusText };
    if (res.status === 401) showLogin(err.message);
    throw Object.assign(new Error(err.message), { code: err.code, status: res.status });
  }
  return body;
}

function post(path, body) {
  return api(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-A3S-Dashboard': '1' },
    body: JSON.stringify(body),
  });
}

/** Asks, then applies an action to a session; `done` runs after it worked. */
function act(sessionId, action, { title, text, confirmLabel = 'Confirm', ok, done }) {
  confirmDialog(title, text, confirmLabel).then(async (yes) => {
    if (!yes) return;
    try {
      const out = await post(`/api/sessions/${encodeURIComponent(sessionId)}/actions`, action);
      toast(ok ? ok(out) : 'done');
      if (done) done(out);
      refreshNow();
    } catch (e) {
      toast(`${e.code}: ${e.message}`, 'error');
      if (e.code === 'PermissionDenied') await loadInfo();
    }
  });
}

function confirmDialog(title, text, confirmLabel) {
  const dialog = $('#confirm');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = confirmLabel;
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
  });
}

// ----- header, login -------------------------------------------------------------------------

async function loadInfo() {
  info = await api('/api/info');
  $('#source').textContent = info.mode === 'nats' ? info.source : 'this process';
  $('#source').className = `pill ${info.mode}`;
  const role = $('#role');
  role.hidden = info.can_act;
  role.textContent = info.read_only ? 'read-only' : 'viewer';
  $('#who').textContent = '';
  if (info.login_required && info.actor) {
    $('#who').append(info.actor, ' ', h('button', { class: 'link', onclick: logout }, 'log out'));
  }
  return info;
}

function showLogin(message) {
  closeStream();
  setLive('logged out');
  page = null;
  const input = h('input', { type: 'password', name: 'token', placeholder: 'token secret', autocomplete: 'current-password', required: true });
  const form = h('form', { class: 'login card' },
    h('h2', {}, 'Log in'),
    h('p', { class: 'muted' }, 'This dashboard asks for one of its tokens (', h('code', {}, '--token NAME=SECRET'), ').'),
    message ? h('p', { class: 'error-text' }, message) : null,
    input,
    h('button', { class: 'btn primary', type: 'submit' }, 'Log in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await post('/api/login', { token: input.value });
      await loadInfo();
      route();
    } catch (e) {
      if (e.status !== 401) toast(e.message, 'error');
    }
  });
  $('#main').replaceChildren(form);
  input.focus();
}

async function logout() {
  await post('/api/logout', {});
  await loadInfo();
  showLogin();
}

// ----- live data -----------------------------------------------------------------------------

/** The header's pill: `live`, `reconnecting`, `connecting` or `logged out`. */
function setLive(state) {
  const live = $('#live');
  live.className = `pill status ${state.replace(' ', '-')}`;
  live.querySelector('span').textContent = state;
}

function closeStream() {
  if (source) source.close();
  source = null;
}

function openStream(params) {
  closeStream();
  const url = '/api/stream?' + new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== ''));
  source = new EventSource(url);
  source.addEventListener('update', (ev) => {
    setLive('live');
    const data = JSON.parse(ev.data);
    if (typeof data.can_act === 'boolean' && data.can_act !== info.can_act) loadInfo();
    if (page) page.render(data);
  });
  source.addEventListener('error', async () => {
    setLive('reconnecting');
    // A login that expired (or a dashboard restarted with other tokens): ask again.
    const now = await loadInfo().catch(() => null);
    if (now && now.login_required && !now.actor) showLogin();
  });
}

/** Re-opens the stream, so its next push comes now (after an action). */
function refreshNow() {
  if (page && page.params) openStream(page.params);
}

// ----- routes --------------------------------------------------------------------------------

function parseHash() {
  const [path, query] = location.hash.replace(/^#/, '').split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query || '') };
}

function go(parts, query) {
  const q = query ? new URLSearchParams(
    Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== '')).toString() : '';
  location.hash = '#/' + parts.map(encodeURIComponent).join('/') + (q ? '?' + q : '');
}

function route() {
  const { parts, query } = parseHash();
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', a.dataset.nav === (parts[0] === 'workers' ? 'workers' : 'sessions'));
  }
  if (parts[0] === 'session' && parts[1]) page = sessionPage(parts[1], query);
  else if (parts[0] === 'workers') page = workersPage();
  else page = sessionsPage(query);
  openStream(page.params);
}

// ----- pages: sessions -----------------------------------------------------------------------

function pager(cursor, next, onFirst, onNext) {
  return h('div', { class: 'pager' },
    h('button', { class: 'btn small', disabled: !cursor, onclick: onFirst }, '« First page'),
    h('button', { class: 'btn small', disabled: !next, onclick: onNext, 'data-next': true }, 'Next page »'));
}

function sessionsPage(query) {
  const tenant = query.get('tenant') || '';
  const cursor = query.get('cursor') || '';
  const tenantsBox = h('div', { class: 'cards' });
  const table = h('div', { class: 'card' });
  const goTo = h('input', { type: 'search', class: 'search', placeholder: 'go to a session by its id', 'aria-label': 'session id' });
  goTo.addEventListener('change', () => goTo.value.trim() && go(['session', goTo.value.trim()]));
  $('#main').replaceChildren(
    h('div', { class: 'title-row' },
      h('h1', {}, 'Sessions', tenant ? h('span', { class: 'sub' }, ` · tenant ${tenant}`) : ''),
      goTo),
    tenantsBox,
    table);
  return {
    params: { view: 'sessions', tenant, cursor },
    render(data) {
      const tenants = Array.isArray(data.tenants) ? data.tenants : [];
      tenantsBox.replaceChildren(
        ...tenants.map((t) => h('a', {
          class: `card tenant ${t.tenant === tenant ? 'selected' : ''}`,
          href: t.tenant === tenant ? '#/' : `#/?tenant=${encodeURIComponent(t.tenant)}`,
          dataset: { tenant: t.tenant },
        },
        h('div', { class: 'label' }, 'tenant'),
        h('div', { class: 'value' }, t.tenant),
        h('div', { class: 'figures' },
          h('span', {}, h('b', {}, t.sessions), ' sessions'),
          info.mode === 'nats' ? h('span', {}, h('b', {}, t.processes), ' processes') : null,
          info.mode === 'nats' ? h('span', {}, h('b', {}, t.workers), ' workers') : null,
          h('span', {}, h('b', {}, t.slots_needed), ' slots needed')))));
      const err = errorOf(data.sessions);
      if (err) {
        table.replaceChildren(h('p', { class: 'error-text' }, `${err.code}: ${err.message}`));
        return;
      }
      const sessions = data.sessions.sessions;
      const rows = sessions.map((s) => h('tr', {
        class: 'clickable',
        dataset: { session: s.session_id },
        onclick: () => go(['session', s.session_id]),
      },
      h('td', { class: 'mono' }, h('a', { href: `#/session/${encodeURIComponent(s.session_id)}` }, s.session_id)),
      h('td', {}, s.tenant),
      h('td', { class: 'mono muted', title: s.hub || '' }, short(s.hub || '—', 10)),
      h('td', { title: new Date(s.opened_at).toLocaleString() }, since(s.opened_at)),
      h('td', { class: 'num' }, s.pending),
      h('td', { class: 'num' }, s.in_flight),
      h('td', { class: 'num' }, s.dead_letters ? badge(String(s.dead_letters), 'failed') : '0'),
      h('td', {}, (s.paused || []).map((l) => badge(`${l} paused`, 'paused')))));
      table.replaceChildren(
        h('table', {},
          h('thead', {}, h('tr', {},
            ['Session', 'Tenant', 'Hub', 'Opened', 'Pending', 'In flight', 'Dead letters', ''].map((c) => h('th', {}, c)))),
          h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 8, class: 'empty' },
            info.mode === 'nats' ? 'No session is announced on this NATS deployment yet.' : 'No session in this process.')))),
        pager(cursor, data.sessions.next,
          () => go([], { tenant }),
          () => go([], { tenant, cursor: data.sessions.next })));
    },
  };
}

// ----- pages: one session --------------------------------------------------------------------

function sparkline(series, lane) {
  const s = series && series.lanes && series.lanes[lane];
  const W = 120, H = 28;
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('class', 'spark');
  if (!s || s.pending.length < 2) return svg;
  const n = s.pending.length;
  const max = Math.max(1, ...s.pending, ...s.in_flight);
  for (const [key, cls] of [['pending', 'p'], ['in_flight', 'f']]) {
    const pts = s[key].map((v, i) => `${(i / (n - 1) * W).toFixed(1)},${(H - 1 - v / max * (H - 2)).toFixed(1)}`);
    const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    line.setAttribute('points', pts.join(' '));
    line.setAttribute('class', cls);
    svg.append(line);
  }
  const title = document.createElementNS('http://www.w3.org/2000/svg', 'title');
  title.textContent = `last ${ago((n - 1) * series.every_ms)}: backlog (orange), in flight (blue), max ${max}`;
  svg.append(title);
  return svg;
}

/** Tasks ended per second over the last ~10 s of samples. */
function rate(series, lane) {
  const s = series && series.lanes && series.lanes[lane];
  if (!s || s.processed.length < 2) return null;
  const n = s.processed.length;
  const back = Math.min(n - 1, 5);
  const ended = (i) => s.processed[i] + s.failed[i] + s.timed_out[i];
  const dt = (series.t[n - 1] - series.t[n - 1 - back]) / 1000;
  return dt > 0 ? (ended(n - 1) - ended(n - 1 - back)) / dt : null;
}

function lanesTable(sessionId, view, series, canAct) {
  const rows = view.lanes.map((l) => {
    const r = rate(series, l.lane);
    const fill = l.capacity ? Math.min(100, (l.in_flight / l.capacity) * 100) : 0;
    const button = !canAct || l.lane === 'control' ? null : l.paused
      ? h('button', {
        class: 'btn small', 'data-action': 'resume',
        onclick: () => act(sessionId, { action: 'resume', lane: l.lane }, {
          title: `Resume the ${l.lane} lane?`,
          text: 'Its backlog is dispatched again.',
          confirmLabel: 'Resume', ok: () => `${l.lane} resumed`,
        }),
      }, 'Resume')
      : h('button', {
        class: 'btn small warn', 'data-action': 'pause',
        onclick: () => act(sessionId, { action: 'pause', lane: l.lane }, {
          title: `Pause the ${l.lane} lane?`,
          text: 'Nothing new is dispatched; tasks in flight finish. Its backlog waits (and does not time out) until you resume.',
          confirmLabel: 'Pause', ok: () => `${l.lane} paused`,
        }),
      }, 'Pause');
    return h('tr', { dataset: { lane: l.lane, paused: String(l.paused) } },
      h('td', {}, h('b', {}, l.lane)),
      h('td', {}, badge(l.mode, 'mode')),
      h('td', {}, l.paused ? badge('paused', 'paused') : badge('running', 'running')),
      h('td', { class: 'num', 'data-field': 'pending' }, l.pending),
      h('td', { class: 'num', 'data-field': 'oldest' }, l.pending ? ago(l.oldest_pending_ms) : '—'),
      h('td', { class: 'num' },
        h('div', { class: 'meter', title: `${l.in_flight} of ${l.capacity} slots` },
          h('div', { class: 'bar', style: `width:${fill}%` }),
          h('span', {}, h('span', { 'data-field': 'in_flight' }, l.in_flight), ` / ${l.capacity}`))),
      h('td', { class: 'num' }, r === null ? '—' : `${r.toFixed(1)}/s`),
      h('td', { class: 'num', 'data-field': 'processed' }, l.processed),
      h('td', { class: 'num' }, l.failed ? h('span', { class: 'bad' }, l.failed) : '0'),
      h('td', { class: 'num' }, l.timed_out ? h('span', { class: 'bad' }, l.timed_out) : '0'),
      h('td', { class: 'num' }, l.retried),
      h('td', { class: 'num' }, duration(l.p50_ms)),
      h('td', { class: 'num' }, duration(l.p99_ms)),
      h('td', {}, sparkline(series, l.lane)),
      h('td', { class: 'actions' }, button));
  });
  return h('table', { class: 'lanes' },
    h('thead', {}, h('tr', {},
      ['Lane', 'Mode', 'State', 'Backlog', 'Oldest', 'In flight', 'Rate', 'Done', 'Failed', 'Timed out', 'Retried', 'p50', 'p99', 'Recent minutes', '']
        .map((c) => h('th', {}, c)))),
    h('tbody', {}, rows));
}

function taskRows(sessionId, tasks, state, canAct) {
  return tasks.map((t) => {
    const outcome = t.outcome ? badge(t.outcome) : badge(t.state);
    const cancel = canAct && state !== 'finished'
      ? h('button', {
        class: 'btn small danger', 'data-action': 'cancel',
        onclick: (ev) => {
          ev.stopPropagation();
          act(sessionId, { action: 'cancel', task_id: t.task_id }, {
            title: 'Cancel this task?',
            text: `${t.command_type} ${short(payloadSummary(t.payload), 80)} (${t.task_id}) ends as cancelled; its caller gets TaskCancelled.`,
            confirmLabel: 'Cancel task', ok: () => 'task cancelled',
          });
        },
      }, 'Cancel') : null;
    const ran = t.started_at && (t.finished_at || Date.now()) - t.started_at;
    return h('tr', { dataset: { task: t.task_id, state: t.state, outcome: t.outcome || '' } },
      h('td', { class: 'mono', title: t.task_id }, short(t.task_id, 14)),
      h('td', {}, t.lane),
      h('td', { class: 'mono' }, t.command_type),
      h('td', {}, outcome),
      h('td', { title: new Date(t.submitted_at).toLocaleString() }, since(t.submitted_at)),
      h('td', { class: 'num' }, ran ? duration(ran) : '—'),
      h('td', { class: 'num' }, t.attempt),
      h('td', { class: 'mono muted' }, t.worker_id ? short(t.worker_id, 16) : (t.state === 'in_flight' && t.mode === 'external' ? (info.mode === 'nats' ? 'worker unknown' : 'a worker of this process') : '—')),
      h('td', { class: 'mono', 'data-field': 'retry_of' }, t.retry_of ? h('span', { title: t.retry_of }, '↻ ', short(t.retry_of, 10)) : ''),
      h('td', { class: 'error-text', title: t.error || '' }, t.error_code ? `${t.error_code}: ${short(t.error || '', 60)}` : ''),
      state === 'finished' ? null : payloadCell(t.payload, t.task_id),
      state === 'finished' ? null : h('td', { class: 'actions' }, cancel));
  });
}

function letterRows(sessionId, letters, canAct) {
  return letters.map((d) => h('tr', { dataset: { letter: d.task_id } },
    h('td', { class: 'mono', title: d.task_id }, short(d.task_id, 14)),
    h('td', {}, d.lane),
    h('td', { class: 'mono' }, d.command_type),
    h('td', {}, badge(d.error_code, 'failed')),
    h('td', { class: 'error-text', title: d.error }, short(d.error, 70)),
    h('td', { class: 'num' }, d.attempts),
    h('td', { title: new Date(d.dead_lettered_at).toLocaleString() }, since(d.dead_lettered_at)),
    payloadCell(d.payload, `letter-${d.task_id}`),
    h('td', { class: 'actions' }, canAct ? [
      h('button', {
        class: 'btn small primary', 'data-action': 'retry',
        onclick: () => act(sessionId, { action: 'retry_dead_letter', task_id: d.task_id }, {
          title: 'Retry this dead letter?',
          text: `${d.command_type} ${short(payloadSummary(d.payload), 80)} is submitted again as a new task (retry of ${d.task_id}). Its original caller already got its failure.`,
          confirmLabel: 'Retry', ok: (out) => `retried as ${out.task_id}`,
        }),
      }, 'Retry'),
      h('button', {
        class: 'btn small danger', 'data-action': 'delete',
        onclick: () => act(sessionId, { action: 'delete_dead_letter', task_id: d.task_id }, {
          title: 'Delete this dead letter?', text: `${d.task_id} is removed for good.`,
          confirmLabel: 'Delete', ok: () => 'dead letter deleted',
        }),
      }, 'Delete'),
    ] : null)));
}

function sessionPage(sessionId, query) {
  const tab = query.get('tab') || 'in_flight';
  const cursor = query.get('cursor') || '';
  const search = query.get('search') || '';
  const setQuery = (changes) => go(['session', sessionId], { tab, search, ...changes });

  const summary = h('div', { class: 'cards' });
  const lanes = h('div', { class: 'card' });
  const tabs = h('div', { class: 'tabs' });
  const searchBox = h('input', { type: 'search', placeholder: 'task id or its start', value: search, class: 'search', 'aria-label': 'search by task id' });
  searchBox.addEventListener('change', () => setQuery({ search: searchBox.value.trim(), cursor: '' }));
  const tools = h('div', { class: 'tools' }, tab === 'dead' ? null : searchBox);
  const list = h('div', { class: 'card' });
  const workers = h('div', { class: 'card' });
  $('#main').replaceChildren(
    h('div', { class: 'crumbs' }, h('a', { href: '#/' }, 'Sessions'), ' / ', h('span', { class: 'mono' }, sessionId)),
    summary,
    h('h2', {}, 'Lanes'), lanes,
    h('div', { class: 'tabbar' }, tabs, tools), list,
    h('h2', {}, 'Workers of this session'), workers);

  return {
    params: tab === 'dead'
      ? { view: 'session', id: sessionId, letters: true, letters_cursor: cursor }
      : { view: 'session', id: sessionId, state: tab, cursor, search },
    render(data) {
      const canAct = !!data.can_act;
      const err = errorOf(data.session);
      const view = err ? null : data.session;
      if (err) {
        const gone = err.code === 'SessionNotFound';
        summary.replaceChildren(h('div', { class: `card banner ${gone ? 'warn' : 'error'}` },
          gone ? 'This session is gone (no process hosts it). Its dead letters, if the stream kept any, are shown read-only below.'
            : `${err.code}: ${err.message}`));
        lanes.replaceChildren(h('p', { class: 'empty' }, gone ? 'No lanes: the session is gone.' : '—'));
      } else {
        const pending = view.lanes.reduce((a, l) => a + l.pending, 0);
        const inFlight = view.lanes.reduce((a, l) => a + l.in_flight, 0);
        summary.replaceChildren(
          stat('tenant', view.tenant),
          stat('hub', view.hub ? short(view.hub, 14) : 'this process', view.hub),
          stat('opened', since(view.opened_at), new Date(view.opened_at).toLocaleString()),
          stat('backlog', pending),
          stat('in flight', inFlight),
          stat('dead letters', view.dead_letters, null, view.dead_letters ? 'bad' : ''),
          stat('finished kept', view.finished_kept));
        lanes.replaceChildren(lanesTable(sessionId, view, data.history, canAct));
        if (!view.metrics) lanes.append(h('p', { class: 'muted note' }, 'This session records no metrics: rates and latencies stay 0.'));
      }

      const count = {
        pending: view ? view.lanes.reduce((a, l) => a + l.pending, 0) : null,
        in_flight: view ? view.lanes.reduce((a, l) => a + l.in_flight, 0) : null,
        finished: view ? view.finished_kept : null,
        dead: view ? view.dead_letters : (data.letters && data.letters.letters ? data.letters.letters.length : null),
      };
      const shown = err ? 'dead' : tab;
      tools.hidden = shown === 'dead';
      tabs.replaceChildren(...STATES.filter(([key]) => !err || key === 'dead').map(([key, label]) => h('a', {
        class: `tab ${key === shown ? 'active' : ''}`,
        href: '#/session/' + encodeURIComponent(sessionId) + '?tab=' + key,
        dataset: { tab: key },
      }, label, count[key] === null ? '' : h('span', { class: 'count' }, count[key]))));

      if (tab === 'dead' || err) renderLetters(data.letters, canAct && !err);
      else renderTasks(data.tasks, canAct);
      renderWorkers(data.workers || []);
    },
  };

  function stat(label, value, title, cls) {
    return h('div', { class: 'card stat' }, h('div', { class: 'label' }, label),
      h('div', { class: `value ${cls || ''}`, title: title || '' }, value));
  }

  function renderTasks(page, canAct) {
    const err = errorOf(page);
    if (!page || err) {
      list.replaceChildren(h('p', { class: 'muted' }, err ? `${err.code}: ${err.message}` : '—'));
      return;
    }
    const rows = taskRows(sessionId, page.tasks, tab, canAct);
    list.replaceChildren(
      h('table', { class: 'tasks' },
        h('thead', {}, h('tr', {},
          ['Task', 'Lane', 'Command', tab === 'finished' ? 'Outcome' : 'State', 'Submitted', 'Ran', 'Attempt', 'Worker', 'Retry of', 'Error']
            .concat(tab === 'finished' ? [] : ['Payload', '']).map((c) => h('th', {}, c)))),
        h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 12, class: 'empty' }, search ? `No ${tab.replace('_', ' ')} task starts with ${search}.` : `No ${tab.replace('_', ' ')} task.`)))),
      pager(cursor, page.next, () => setQuery({ cursor: '' }), () => setQuery({ cursor: page.next })));
  }

  function renderLetters(page, canAct) {
    const err = errorOf(page);
    if (!page || err) {
      list.replaceChildren(h('p', { class: 'muted' }, err ? `${err.code}: ${err.message}` : '—'));
      return;
    }
    const fromStream = page.source === 'stream';
    const purge = canAct && !fromStream && page.letters.length
      ? h('button', {
        class: 'btn small danger', 'data-action': 'purge',
        onclick: () => act(sessionId, { action: 'purge_dead_letters' }, {
          title: 'Purge every dead letter?', text: 'All dead letters of this session are deleted for good.',
          confirmLabel: 'Purge all', ok: (out) => `${out.purged} dead letters purged`,
        }),
      }, 'Purge all') : null;
    const rows = letterRows(sessionId, page.letters, canAct && !fromStream);
    list.replaceChildren(
      h('div', { class: 'list-head' },
        fromStream ? h('span', { class: 'muted' }, 'Read from the dead-letter stream: the session is gone, nothing can be retried.') : h('span'),
        purge),
      h('table', { class: 'letters' },
        h('thead', {}, h('tr', {},
          ['Task', 'Lane', 'Command', 'Code', 'Error', 'Attempts', 'Dead since', 'Payload', ''].map((c) => h('th', {}, c)))),
        h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 9, class: 'empty' }, 'No dead letter.')))),
      pager(cursor, page.next, () => setQuery({ cursor: '' }), () => setQuery({ cursor: page.next })));
  }

  function renderWorkers(ws) {
    workers.replaceChildren(ws.length ? workersTable(ws)
      : h('p', { class: 'muted note' }, info.mode === 'nats'
        ? 'No worker announces itself for this session.'
        : 'Workers in this process do not announce themselves: the Worker column of the tasks shows them.'));
  }
}

// ----- pages: workers ------------------------------------------------------------------------

function workersTable(ws) {
  return h('table', { class: 'workers' },
    h('thead', {}, h('tr', {},
      ['Worker', 'State', 'Tenant', 'Session', 'Lanes', 'Labels', 'Busy / slots', 'Version', 'Last seen'].map((c) => h('th', {}, c)))),
    h('tbody', {}, ws.map((w) => {
      const fill = w.slots ? Math.min(100, (w.busy / w.slots) * 100) : 0;
      const stale = w.last_seen_ms > 2 * w.interval_s * 1000;
      return h('tr', { dataset: { worker: w.worker_id } },
        h('td', { class: 'mono', title: w.worker_id }, short(w.worker_id, 20)),
        h('td', {}, badge(w.state)),
        h('td', {}, w.tenant || h('span', { class: 'muted' }, 'every tenant')),
        h('td', { class: 'mono' }, w.session ? h('a', { href: `#/session/${encodeURIComponent(w.session)}` }, short(w.session, 14)) : h('span', { class: 'muted' }, 'pool')),
        h('td', {}, (w.lanes || []).join(', ')),
        h('td', { class: 'mono' }, Object.entries(w.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ')),
        h('td', { class: 'num' }, h('div', { class: 'meter' }, h('div', { class: 'bar', style: `width:${fill}%` }), h('span', {}, `${w.busy} / ${w.slots}`))),
        h('td', { class: 'muted' }, w.version),
        h('td', { class: stale ? 'bad' : '' }, `${ago(w.last_seen_ms)} ago`));
    })));
}

function workersPage() {
  const workers = h('div', { class: 'card' });
  const processes = h('div', { class: 'card' });
  const demand = h('div', { class: 'card' });
  $('#main').replaceChildren(
    h('h1', {}, 'Workers'), workers,
    h('h2', {}, 'Processes hosting sessions'), processes,
    h('h2', {}, 'Fleet demand ', h('span', { class: 'sub' }, '(a3s_fleet_worker_slots_needed on /metrics)')), demand);
  return {
    params: { view: 'workers' },
    render(data) {
      const ws = data.workers || [];
      workers.replaceChildren(ws.length ? workersTable(ws) : h('p', { class: 'empty' },
        info.mode === 'nats' ? 'No worker announces itself on this NATS deployment.' : 'This dashboard shows the sessions of its own process: their workers do not announce themselves.'));
      const ps = Array.isArray(data.processes) ? data.processes : [];
      processes.replaceChildren(ps.length ? h('table', {},
        h('thead', {}, h('tr', {}, ['Hub', 'Tenant', 'Host', 'PID', 'Sessions', 'Slots needed', 'Version'].map((c) => h('th', {}, c)))),
        h('tbody', {}, ps.map((p) => h('tr', {},
          h('td', { class: 'mono', title: p.hub }, short(p.hub, 14)),
          h('td', {}, p.tenant), h('td', {}, p.host), h('td', { class: 'num' }, p.pid),
          h('td', { class: 'num' }, p.sessions),
          h('td', { class: 'num' }, (p.demand || []).reduce((a, d) => a + d.slots, 0)),
          h('td', { class: 'muted' }, p.version))))) : h('p', { class: 'empty' }, 'No process announces sessions.'));
      const ds = Array.isArray(data.demand) ? data.demand : [];
      demand.replaceChildren(ds.length ? h('table', {},
        h('thead', {}, h('tr', {}, ['Tenant', 'Lane', 'Labels', 'Slots needed'].map((c) => h('th', {}, c)))),
        h('tbody', {}, ds.map((d) => h('tr', {},
          h('td', {}, d.tenant), h('td', {}, d.lane), h('td', { class: 'mono' }, d.labels || '—'),
          h('td', { class: 'num' }, d.slots))))) : h('p', { class: 'empty' }, 'No External lane needs a worker now.'));
    },
  };
}

// ----- start ---------------------------------------------------------------------------------

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', async () => {
  try {
    await loadInfo();
  } catch (e) {
    $('#main').replaceChildren(h('p', { class: 'error-text' }, `The dashboard does not answer: ${e.message}`));
    return;
  }
  if (info.login_required && !info.actor) showLogin();
  else route();
});
