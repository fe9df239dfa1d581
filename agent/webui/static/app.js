// The page's one script. Every text it shows goes through textContent: model names, adapter
// names, reasons and answers are data, never markup. Every URL is relative, so the page works
// under any prefix (Open OnDemand's /rnode/HOST/PORT/).
'use strict';

const $ = (id) => document.getElementById(id);
let csrf = '';
let statusTimer = 0;
let usageTimer = 0;
let history = [];
let running = null; // the AbortController of the answer being streamed

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function api(path, opts) {
  opts = Object.assign({ credentials: 'same-origin', headers: {} }, opts || {});
  if (opts.method && opts.method !== 'GET') opts.headers['X-CSRF-Token'] = csrf;
  return fetch('api/' + path, opts);
}

async function errorText(resp) {
  try {
    const b = await resp.json();
    if (b.error && typeof b.error === 'object') return b.error.message || resp.statusText;
    return b.error || resp.statusText;
  } catch (e) {
    return resp.status + ' ' + resp.statusText;
  }
}

function duration(sec) {
  if (sec === undefined || sec === null) return '';
  sec = Math.max(0, Math.round(sec));
  const h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), s = sec % 60;
  if (h) return h + ' h ' + m + ' min';
  if (m) return m + ' min ' + s + ' s';
  return s + ' s';
}

function showSignedIn(me) {
  csrf = me.csrf;
  $('who').textContent = 'key: ' + me.key + (me.owner ? ' (owner)' : '');
  $('signin').hidden = true;
  $('app').hidden = false;
  $('signout').hidden = false;
  refreshStatus();
  refreshUsage();
  loadModels();
  statusTimer = setInterval(refreshStatus, 3000);
  usageTimer = setInterval(refreshUsage, 10000);
}

function showSignIn(msg) {
  csrf = '';
  clearInterval(statusTimer);
  clearInterval(usageTimer);
  $('app').hidden = true;
  $('signout').hidden = true;
  $('signin').hidden = false;
  $('who').textContent = '';
  $('signin-error').textContent = msg || '';
}

async function start() {
  const resp = await api('session');
  if (resp.ok) showSignedIn(await resp.json());
  else showSignIn('');
}

$('signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('key');
  const resp = await api('session', { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ key: input.value.trim() }) });
  input.value = '';
  if (!resp.ok) {
    $('signin-error').textContent = await errorText(resp);
    return;
  }
  showSignedIn(await resp.json());
});

$('signout').addEventListener('click', async () => {
  await api('session', { method: 'DELETE' });
  showSignIn('Signed out.');
});

function fact(dl, name, value) {
  if (value === undefined || value === null || value === '') return;
  dl.append(el('dt', name), el('dd', value));
}

function renderStatus(st) {
  const badge = $('state');
  const label = st.models.length ? st.models[0].state : st.state;
  badge.textContent = label;
  badge.className = 'badge ' + label;
  $('job').textContent = 'job ' + st.job_id;
  $('reason').textContent = st.reason || '';
  const dl = $('facts');
  dl.replaceChildren();
  fact(dl, 'State', st.state);
  fact(dl, 'Up for', duration(st.uptime_seconds));
  fact(dl, 'Time left', duration(st.time_left_seconds));
  fact(dl, 'Service', st.service);
  fact(dl, 'Hands over in', duration(st.handover_in_seconds));
  fact(dl, 'Sleeps if idle in', duration(st.idle_release_in_seconds));
  const restarts = Object.entries(st.restarts || {}).map(([k, v]) => k + ' ' + v).join(', ');
  fact(dl, 'Restarts', restarts);
  const models = $('models');
  models.replaceChildren();
  for (const m of st.models) {
    const li = el('li');
    li.append(el('span', m.state, 'badge ' + m.state), el('span', m.name), el('span', m.kind + (m.where ? ' on ' + m.where : ''), 'muted'));
    models.append(li);
  }
  const jobs = $('jobs');
  jobs.replaceChildren();
  for (const j of st.service_jobs || []) {
    const li = el('li');
    li.append(el('span', j.state, 'badge ' + j.state), el('span', 'job ' + j.job_id), el('span', j.role + (j.reason ? ': ' + j.reason : ''), 'muted'));
    jobs.append(li);
  }
  $('jobs-title').hidden = !(st.service_jobs || []).length;
  const body = $('nodes').tBodies[0];
  body.replaceChildren();
  for (const n of st.nodes || []) {
    const tr = el('tr');
    const health = n.ready ? 'ready' : (n.healthy ? 'up, not ready' : 'no answer');
    const gpus = el('td');
    for (const g of n.gpus) {
      const line = el('span', null, 'gpu');
      const meter = el('meter');
      meter.min = 0; meter.max = 1; meter.value = g.utilization;
      line.append(el('span', 'GPU ' + g.index + ' '), meter,
        el('span', ' ' + Math.round(g.utilization * 100) + '% · ' + Math.round(g.memory_used_mib) + ' / ' + Math.round(g.memory_total_mib) + ' MiB'));
      line.title = g.name;
      gpus.append(line);
    }
    if (n.gpu_note) gpus.append(el('span', n.gpu_note, 'muted'));
    tr.append(el('td', n.name), el('td', n.role), el('td', health + (n.detail ? ': ' + n.detail : '')), gpus);
    body.append(tr);
  }
}

async function refreshStatus() {
  const resp = await api('status');
  if (resp.status === 401) return showSignIn('Your session ended; sign in again.');
  if (!resp.ok) {
    $('status-error').textContent = await errorText(resp);
    return;
  }
  $('status-error').textContent = '';
  renderStatus(await resp.json());
}

async function refreshUsage() {
  const resp = await api('usage');
  if (!resp.ok) {
    $('usage-error').textContent = await errorText(resp);
    return;
  }
  $('usage-error').textContent = '';
  const u = await resp.json();
  $('usage-total').textContent = 'This job: ' + u.gpu_hours.toFixed(3) + ' GPU-hours, ' + u.service_units.toFixed(3) + ' SUs over ' + u.gpus + ' GPUs.';
  const body = $('usage').tBodies[0];
  body.replaceChildren();
  for (const r of u.keys || []) {
    const tr = el('tr');
    tr.append(el('td', r.key), el('td', r.project), el('td', r.requests), el('td', r.prompt_tokens),
      el('td', r.completion_tokens), el('td', r.gpu_hours.toFixed(4)), el('td', r.service_units.toFixed(4)));
    body.append(tr);
  }
}

async function loadModels() {
  const resp = await api('models');
  const sel = $('model');
  if (!resp.ok) {
    $('chat-error').textContent = await errorText(resp);
    return;
  }
  const list = await resp.json();
  const chosen = sel.value;
  sel.replaceChildren();
  for (const m of list.data || []) sel.append(new Option(m.id, m.id));
  if (chosen) sel.value = chosen;
}

function addMessage(role, text) {
  const div = el('div', null, 'msg ' + role);
  const body = el('span', text);
  div.append(body);
  $('messages').append(div);
  return { div, body };
}

function chatBusy(busy) {
  $('send').disabled = busy;
  $('stop').disabled = !busy;
}

// readEvents calls onEvent with each server-sent event's data as it arrives.
async function readEvents(resp, onEvent) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line.startsWith('data:')) onEvent(line.slice(5).trim());
    }
  }
}

async function send(text) {
  $('chat-error').textContent = '';
  addMessage('user', text);
  history.push({ role: 'user', content: text });
  const out = addMessage('assistant', '');
  running = new AbortController();
  chatBusy(true);
  const t0 = performance.now();
  let first = 0, answer = '', usage = null, stopped = false;
  try {
    const resp = await api('chat', { method: 'POST', signal: running.signal, headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: $('model').value, messages: history, stream: true, stream_options: { include_usage: true } }) });
    if (!resp.ok) throw new Error(await errorText(resp));
    await readEvents(resp, (data) => {
      if (data === '[DONE]') return;
      const ev = JSON.parse(data);
      if (ev.usage) usage = ev.usage;
      const delta = ev.choices && ev.choices[0] && ev.choices[0].delta;
      if (delta && delta.content) {
        if (!first) first = performance.now();
        answer += delta.content;
        out.body.textContent = answer;
      }
    });
  } catch (e) {
    if (e.name === 'AbortError') stopped = true;
    else $('chat-error').textContent = String(e.message || e);
  }
  running = null;
  chatBusy(false);
  history.push({ role: 'assistant', content: answer });
  const total = performance.now() - t0;
  let meta = (stopped ? 'stopped · ' : '') + (first ? 'first token ' + Math.round(first - t0) + ' ms · ' : '') + 'total ' + Math.round(total) + ' ms';
  if (usage) meta += ' · ' + usage.prompt_tokens + ' prompt + ' + usage.completion_tokens + ' completion tokens';
  out.div.append(el('span', meta, 'meta'));
  $('chat-info').textContent = meta;
  setTimeout(refreshUsage, 1500); // the gateway's usage records reach the disk each second
}

$('chat-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = $('prompt').value.trim();
  if (!text || running) return;
  $('prompt').value = '';
  send(text);
});
$('stop').addEventListener('click', () => { if (running) running.abort(); });
$('clear').addEventListener('click', () => { history = []; $('messages').replaceChildren(); $('chat-info').textContent = ''; });

start();
