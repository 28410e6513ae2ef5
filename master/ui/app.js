// Stoa's web UI: the same calls as the CLI (/api/v1/…), polled once a
// second for the overview and the tables; the event stream is read only
// while its tab is open, and a task's log is followed by long poll. Kept to
// bounded work per second whatever the cluster's size: the task table
// shows one page, charts keep the last five minutes.
'use strict';

const HISTORY = 300;        // samples kept per chart: five minutes at 1 s
const PAGE = 200;           // tasks per table page
const EVENTS_SHOWN = 200;
const TOKEN_KEY = 'stoa-token';

const $ = (sel, root = document) => root.querySelector(sel);

// ---- the API ---------------------------------------------------------------

function takeToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

let token = takeToken();

class ApiError extends Error {
  constructor(status, body) {
    super(body.error || `HTTP ${status}`);
    this.status = status;
    this.hint = body.hint;
  }
}

async function api(path, options = {}) {
  const res = await fetch('/api/v1/' + path, {
    ...options,
    headers: { Authorization: 'Bearer ' + token, ...(options.headers || {}) },
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

// ---- small helpers ---------------------------------------------------------

const cpus = (r) => (r && r.cpus ? r.cpus / 1000 : 0);
const mem = (r) => (r && r.mem ? r.mem : 0);
const amount = (list, kind) => {
  const found = (list || []).find(([k]) => k === kind);
  return found ? found[1] : 0;
};
const fmt = (n, digits = 1) => Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function fillTable(section, rows) {
  const body = $(`#${section} tbody`);
  body.replaceChildren(...rows.map((cells) => el('tr', {}, ...cells.map((c) =>
    c instanceof Node ? el('td', {}, c) : el('td', typeof c === 'number' ? { class: 'num' } : {}, c)))));
}

function setStatus(text, bad = false) {
  const s = $('#status');
  s.textContent = text;
  s.classList.toggle('bad', bad);
}

// ---- charts ----------------------------------------------------------------

const PALETTE = ['#2f6fbd', '#e07b39', '#3a9d5d', '#b5447c', '#7b61c4', '#c9a227', '#3aa3b5', '#8c564b', '#d62728', '#7f7f7f'];

function chartSize(div) {
  return { width: Math.max(div.clientWidth, 300), height: 240 };
}

// A stacked area: each series is drawn as the running sum up to it, the
// largest first, so each band shows one name's share.
class StackedChart {
  constructor(div) {
    this.div = div;
    this.names = [];
    this.plot = null;
    this.own = [];
  }

  update(times, series) {
    const names = [...series.keys()].sort();
    if (names.join('\n') !== this.names.join('\n') || !this.plot) {
      this.names = names;
      this.build();
    }
    let acc = times.map(() => 0);
    const sums = names.map((n) => {
      const values = series.get(n);
      acc = acc.map((a, i) => a + (values[i] ?? 0));
      return acc;
    });
    this.own = names.map((n) => series.get(n));
    this.plot.setData([times, ...sums.reverse()]);
  }

  build() {
    if (this.plot) this.plot.destroy();
    const drawn = [...this.names].reverse();
    const own = (name) => (u, v, si, i) => {
      const values = this.own[this.names.indexOf(name)];
      return values && i != null && values[i] != null ? fmt(values[i], 2) : '–';
    };
    this.plot = new uPlot({
      ...chartSize(this.div),
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, 1)] } },
      series: [{}, ...drawn.map((name) => {
        const color = PALETTE[this.names.indexOf(name) % PALETTE.length];
        return { label: name, stroke: color, fill: color + 'cc', width: 1, value: own(name) };
      })],
      axes: [{}, { size: 50 }],
    }, [[], ...drawn.map(() => [])], this.div);
  }
}

function lineChart(div, labels) {
  return new uPlot({
    ...chartSize(div),
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, 1)] } },
    series: [{}, ...labels.map((label, i) => ({ label, stroke: PALETTE[i], width: 2, value: (u, v) => (v == null ? '–' : fmt(v)) }))],
    axes: [{}, { size: 50 }],
  }, [[], ...labels.map(() => [])], div);
}

// ---- state -----------------------------------------------------------------

const samples = {
  times: [],
  roles: new Map(),
  frameworks: new Map(),
  cpu: [],
  mem: [],
  launched: [],
  ended: [],
};
let lastCounts = null;
let charts = null;
let isOperator = true;
let activeTab = 'overview';
let taskPage = { after: null, next: null };

function push(list, value) {
  list.push(value);
  if (list.length > HISTORY) list.shift();
}

// Appends this sample to every series by name (names not seen before get
// zeros for the past; names gone get zeros from now on).
function sample(series, values) {
  const length = samples.times.length;
  for (const [name, list] of series) {
    push(list, values.get(name) ?? 0);
    if (!values.has(name) && list.every((v) => v === 0)) series.delete(name);
  }
  for (const [name, v] of values) {
    if (!series.has(name)) {
      const list = new Array(length - 1).fill(0);
      list.push(v);
      series.set(name, list);
    }
  }
}

// ---- polling ---------------------------------------------------------------

async function poll() {
  const now = Date.now() / 1000;
  const [summary, frameworks, roles, agents] = await Promise.all([
    api('summary'),
    api('frameworks'),
    isOperator ? api('roles').catch(forbidden) : null,
    isOperator ? api('agents').catch(forbidden) : null,
  ]);
  renderSummary(summary);
  push(samples.times, now);
  const total = summary.total;
  const used = { cpus: cpus(total) - cpus(summary.free), mem: mem(total) - mem(summary.free) };
  push(samples.cpu, cpus(total) ? (100 * used.cpus) / cpus(total) : 0);
  push(samples.mem, mem(total) ? (100 * used.mem) / mem(total) : 0);
  const counts = { at: now, launched: summary.tasks_launched, ended: summary.tasks_ended };
  const rate = (k) => (lastCounts && counts.at > lastCounts.at
    ? Math.max(0, counts[k] - lastCounts[k]) / (counts.at - lastCounts.at) : 0);
  push(samples.launched, rate('launched'));
  push(samples.ended, rate('ended'));
  lastCounts = counts;
  sample(samples.frameworks, new Map(frameworks.map((f) => [f.name + ' ' + f.id, amount(f.allocated, 'cpus') / 1000])));
  if (roles) {
    // Top-level roles only: a sub-role's share is inside its parent's.
    sample(samples.roles, new Map(roles.filter((r) => !r.role.includes('/')).map((r) => [r.role, amount(r.allocated, 'cpus') / 1000])));
  }
  drawCharts();
  renderFrameworks(frameworks);
  if (roles) renderRoles(roles);
  if (agents) renderAgents(agents);
  if (activeTab === 'tasks') await loadTasks();
}

function forbidden(e) {
  if (e.status === 403) {
    isOperator = false;
    document.querySelectorAll('[data-operator]').forEach((b) => { b.hidden = true; });
    $('#chart-roles').closest('figure').hidden = true;
    return null;
  }
  throw e;
}

function drawCharts() {
  if (!charts) {
    charts = {
      roles: new StackedChart($('#chart-roles')),
      frameworks: new StackedChart($('#chart-frameworks')),
      use: lineChart($('#chart-use'), ['CPU', 'memory']),
      rate: lineChart($('#chart-rate'), ['launched', 'ended']),
    };
  }
  if (isOperator) charts.roles.update(samples.times, samples.roles);
  charts.frameworks.update(samples.times, samples.frameworks);
  charts.use.setData([samples.times, samples.cpu, samples.mem]);
  charts.rate.setData([samples.times, samples.launched, samples.ended]);
}

function renderSummary(s) {
  const running = (s.tasks.find(([state]) => state === 'Running') || [0, 0])[1];
  const live = s.tasks.reduce((n, [, c]) => n + c, 0);
  const box = $('#summary');
  box.replaceChildren(
    ...[
      ['agents', `${s.connected_agents}/${s.agents}`],
      ['frameworks', s.frameworks],
      ['tasks running', running],
      ['tasks live', live],
      ['offers', s.offers],
      ['CPUs used', `${fmt(cpus(s.total) - cpus(s.free))}/${fmt(cpus(s.total))}`],
      ['memory used (MiB)', `${fmt(mem(s.total) - mem(s.free), 0)}/${fmt(mem(s.total), 0)}`],
    ].map(([label, value]) => el('span', { 'data-summary': label }, label + ' ', el('b', {}, value))),
  );
  box.dataset.running = running;
}

function renderAgents(agents) {
  fillTable('agents', agents.map((a) => [
    a.id, a.hostname, a.connected ? 'connected' : a.unreachable ? 'unreachable' : 'gone', a.tasks,
    `${fmt(cpus(a.total) - cpus(a.free), 2)} / ${fmt(cpus(a.total), 2)}`,
    `${fmt(mem(a.total) - mem(a.free), 0)} / ${fmt(mem(a.total), 0)}`,
  ]));
}

function renderFrameworks(frameworks) {
  fillTable('frameworks', frameworks.map((f) => [
    f.id, f.name, f.role, f.principal ?? '', f.connected ? 'connected' : (f.hosted ? 'hosted, starting' : 'away'), f.tasks,
    fmt(amount(f.allocated, 'cpus') / 1000, 2), fmt(amount(f.allocated, 'mem'), 0),
  ]));
}

// A role's reservations, summed over its agents.
function reserved(r) {
  const list = r.reservations || [];
  if (!list.length) return '';
  const total = list.reduce((sum, [, res]) => ({ cpus: sum.cpus + cpus(res), mem: sum.mem + mem(res) }), { cpus: 0, mem: 0 });
  return `cpus ${fmt(total.cpus)}, mem ${fmt(total.mem, 0)} on ${list.length} agent${list.length > 1 ? 's' : ''}`;
}

function renderRoles(roles) {
  fillTable('roles', roles.map((r) => [
    r.role, r.weight, cpus(r.guarantee) || mem(r.guarantee) ? `cpus ${fmt(cpus(r.guarantee))}, mem ${mem(r.guarantee)}` : '',
    r.limit ?? '', reserved(r), r.frameworks, fmt(amount(r.allocated, 'cpus') / 1000, 2), fmt(amount(r.allocated, 'mem'), 0),
  ]));
}

async function loadTasks() {
  const form = new FormData($('#task-filter'));
  const params = new URLSearchParams({ limit: PAGE });
  for (const key of ['framework', 'agent', 'state']) {
    const v = (form.get(key) || '').trim();
    if (v) params.set(key, v);
  }
  if (taskPage.after) {
    params.set('after_framework', taskPage.after.after_framework);
    params.set('after_task', taskPage.after.after_task);
  }
  const page = await api('tasks?' + params);
  taskPage.next = page.next;
  $('#task-next').disabled = !page.next;
  fillTable('tasks', page.tasks.map((t) => [
    el('a', { class: 'task', 'data-task': t.task_id, onclick: () => openTask(t) }, t.task_id),
    t.framework_id, t.agent_id,
    el('span', { class: 'state-' + String(t.state).toLowerCase(), 'data-state': t.state }, String(t.state).toUpperCase()),
  ]));
}

// ---- the event stream (only while its tab is open) -------------------------

let events = null;

async function followEvents() {
  if (events) return;
  const controller = new AbortController();
  events = controller;
  const body = $('#events tbody');
  try {
    const res = await fetch('/api/v1/events', {
      headers: { Authorization: 'Bearer ' + token }, signal: controller.signal,
    });
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => ({})));
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = frame.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5)).join('\n');
        if (!data) continue;
        const e = JSON.parse(data);
        const { seq, at_ms, type, ...rest } = e;
        body.prepend(el('tr', {}, el('td', {}, seq ?? ''), el('td', {}, fmt((at_ms ?? 0) / 1000, 3)),
          el('td', {}, type ?? ''), el('td', {}, JSON.stringify(rest))));
        while (body.children.length > EVENTS_SHOWN) body.lastChild.remove();
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') setStatus('event stream: ' + e.message, true);
  } finally {
    if (events === controller) events = null;
  }
}

function stopEvents() {
  if (events) events.abort();
  events = null;
}

// ---- a task's page: details, kill, its log followed live -------------------

let following = null;

function openTask(t) {
  $('#task-page').hidden = false;
  $('#task-title').textContent = t.task_id;
  const details = $('#task-details');
  details.replaceChildren(...[['framework', t.framework_id], ['agent', t.agent_id], ['state', String(t.state).toUpperCase()]]
    .flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  $('#task-kill').onclick = async () => {
    try {
      await api(`tasks/${encodeURIComponent(t.task_id)}/kill?framework=${encodeURIComponent(t.framework_id)}`, { method: 'POST' });
      setStatus(`asked to kill ${t.task_id}`);
    } catch (e) {
      setStatus(e.message, true);
    }
  };
  followLog(t);
}

async function followLog(t) {
  const me = {};
  following = me;
  const stream = $('input[name=stream]:checked').value;
  const out = $('#task-log');
  out.textContent = '';
  let offset = 0;
  while (following === me) {
    const params = new URLSearchParams({ framework: t.framework_id, stream, offset, wait_ms: 5000 });
    let chunk;
    try {
      chunk = await api(`tasks/${encodeURIComponent(t.task_id)}/log?${params}`);
    } catch (e) {
      if (following === me) out.append(`\n[${e.message}]`);
      return;
    }
    if (following !== me) return;
    const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.append(chunk.data);
    if (atBottom) out.scrollTop = out.scrollHeight;
    offset = chunk.next_offset;
    if (!chunk.data && chunk.task_ended) {
      out.append('\n[the task has ended]');
      return;
    }
  }
}

// ---- wiring ----------------------------------------------------------------

function showTab(name) {
  activeTab = name;
  document.querySelectorAll('nav button').forEach((b) => b.classList.toggle('active', b.dataset.tab === name));
  document.querySelectorAll('section.tab').forEach((s) => { s.hidden = s.id !== name; });
  if (name === 'events') followEvents(); else stopEvents();
  if (name === 'tasks') loadTasks().catch((e) => setStatus(e.message, true));
}

function showLogin(message) {
  $('#login').hidden = false;
  $('#tabs').hidden = true;
  if (message) setStatus(message, true);
}

async function loop() {
  for (;;) {
    try {
      await poll();
      setStatus('live · ' + new Date().toLocaleTimeString());
    } catch (e) {
      if (e.status === 401) {
        showLogin(e.message + (e.hint ? ' — ' + e.hint : ''));
        return;
      }
      setStatus(e.message, true);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function start() {
  $('#login').hidden = true;
  $('#tabs').hidden = false;
  loop();
}

document.querySelectorAll('nav button').forEach((b) => b.addEventListener('click', () => showTab(b.dataset.tab)));
$('#task-filter').addEventListener('submit', (e) => {
  e.preventDefault();
  taskPage = { after: null, next: null };
  loadTasks().catch((err) => setStatus(err.message, true));
});
$('#task-next').addEventListener('click', () => {
  taskPage.after = taskPage.next;
  loadTasks().catch((err) => setStatus(err.message, true));
});
$('#task-close').addEventListener('click', () => { following = null; $('#task-page').hidden = true; });
document.querySelectorAll('input[name=stream]').forEach((r) => r.addEventListener('change', () => {
  const title = $('#task-title').textContent;
  const dd = [...document.querySelectorAll('#task-details dd')].map((d) => d.textContent);
  followLog({ task_id: title, framework_id: dd[0], agent_id: dd[1] });
}));
$('#login').addEventListener('submit', (e) => {
  e.preventDefault();
  token = $('#token-input').value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
});
window.addEventListener('resize', () => {
  if (!charts) return;
  for (const c of [charts.roles.plot, charts.frameworks.plot, charts.use, charts.rate]) {
    if (c) c.setSize(chartSize(c.root.parentElement));
  }
});

if (token) start(); else showLogin();
