// The console's shell: reads config.json, draws the tabs and the credentials box, polls
// the admin API's status (and /metrics, for the charts) and hands both to the panels.
// A panel is one module exporting {id, title, mount(root, app)}; adding one is a line in PANELS.

import {admin, canAct, config, gateway, loadConfig, secrets} from './api.js';
import {clear, h} from './dom.js';
import {parse, totals} from './metrics.js';
import overview from './overview.js';
import actions from './actions.js';
import playground from './playground.js';
import requests from './requests.js';

const PANELS = [overview, actions, playground, requests];
const STATUS_EVERY_MS = 1500;
const METRICS_EVERY_MS = 2000;

const listeners = {status: [], metrics: []};
const app = {
  status: null,
  scrapes: [],  // recent reductions of /metrics, oldest first
  on(kind, fn) { listeners[kind].push(fn); },
  canAct,
  notice(text, isError = false) {
    const box = document.getElementById('notice');
    box.textContent = text || '';
    box.className = isError ? 'error' : '';
  },
  async refresh() { await pollStatus(); },
};

function emit(kind, value) {
  for (const fn of listeners[kind]) {
    try { fn(value); } catch (exc) { console.warn(`panel failed on ${kind}:`, exc); }
  }
}

let statusProblem = '';
async function pollStatus() {
  if (config.admin_token && !secrets.admin) {  // no call bound to fail: ask first
    statusProblem = 'The admin API wants the admin token: enter it above (it stays in this tab only).';
    app.notice(statusProblem);
    return;
  }
  try {
    app.status = await admin('/status');
    if (statusProblem) app.notice('');
    statusProblem = '';
    emit('status', app.status);
  } catch (exc) {
    const text = exc.status === 401
      ? 'The admin API wants the admin token: enter it above (it stays in this tab only).'
      : `Cannot read the status: ${exc.message}`;
    if (text !== statusProblem) app.notice(text, exc.status !== 401);
    statusProblem = text;
  }
}

async function pollMetrics() {
  if (config.gateway === null) return;
  if (config.mode === 'cluster' && config.admin_token && !secrets.admin) return;  // the proxy wants the token
  try {
    const text = await (await gateway('/metrics')).text();
    app.scrapes.push(totals(parse(text), Date.now() / 1000));
    if (app.scrapes.length > 300) app.scrapes.shift();
    emit('metrics', app.scrapes);
  } catch { /* the next scrape may work; the charts keep what they have */ }
}

function authBox() {
  const box = document.getElementById('auth');
  const parts = [];
  if (config.read_only) parts.push(h('span', {class: 'state offline', title: 'served off loopback with no admin token'}, 'read-only'));
  if (config.admin_token) {
    const token = h('input', {type: 'password', placeholder: 'admin token', autocomplete: 'off', id: 'admin-token', value: secrets.admin});
    const actor = h('input', {type: 'text', placeholder: 'your name (audit)', id: 'actor', value: secrets.actor === 'console' ? '' : secrets.actor});
    parts.push(token, actor, h('button', {id: 'save-token', onclick: () => {
      secrets.admin = token.value.trim();
      secrets.actor = actor.value.trim();
      app.refresh();
    }}, 'Use'), h('button', {onclick: () => { secrets.admin = ''; token.value = ''; app.refresh(); }}, 'Forget'));
  }
  if (config.api_key) {
    const key = h('input', {type: 'password', placeholder: 'API key', autocomplete: 'off', id: 'api-key', value: secrets.apiKey});
    key.addEventListener('change', () => { secrets.apiKey = key.value.trim(); });
    parts.push(key);
  }
  clear(box, parts);
}

function tabs(sections) {
  const nav = document.getElementById('tabs');
  const show = () => {
    const wanted = (location.hash || '#overview').slice(1);
    const id = sections.has(wanted) ? wanted : 'overview';
    for (const [key, section] of sections) section.hidden = key !== id;
    for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.dataset.panel === id);
    emit('status', app.status);
  };
  clear(nav, PANELS.map(p => h('a', {href: `#${p.id}`, dataset: {panel: p.id}}, p.title)));
  window.addEventListener('hashchange', show);
  show();
}

async function main() {
  await loadConfig();
  authBox();
  const root = clear(document.getElementById('main'));
  const sections = new Map();
  for (const panel of PANELS) {
    const section = h('div', {id: `panel-${panel.id}`, class: 'panel'});
    root.append(section);
    sections.set(panel.id, section);
    panel.mount(section, app);
  }
  tabs(sections);
  await Promise.all([pollStatus(), pollMetrics()]);
  setInterval(pollStatus, STATUS_EVERY_MS);
  setInterval(pollMetrics, METRICS_EVERY_MS);
}

main().catch(exc => app.notice(`The console failed to start: ${exc.message}`, true));
