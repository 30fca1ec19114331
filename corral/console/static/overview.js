// Overview panel: workers, models (desired/ready, state, operation, autoscale) and
// instances (state, in-flight, queued, uptime, last error), redrawn on every status
// poll; instance offline/online buttons; the per-model charts below (charts.js).

import {admin} from './api.js';
import {clear, dash, h, seconds, state, table} from './dom.js';
import {mountCharts} from './charts.js';
import {perform, until} from './ops.js';

function modelState(m) {
  if (m.offline) return 'offline';
  if (m.replicas === 0) return 'scaled to zero';
  if (m.instances.some(i => i.state === 'failed')) return 'failed';
  return m.ready >= m.replicas ? 'ready' : 'starting';
}

function autoscale(m) {
  const a = m.autoscale;
  if (!a) return 'off';
  return `${a.min_replicas}–${a.max_replicas} (target ${a.target_in_flight} in flight)`;
}

function instanceButton(app, m, i) {
  if (!app.canAct() || !m.managed || !['ready', 'offline'].includes(i.state)) return null;
  const off = i.state === 'ready';
  return h('button', {class: off ? 'danger' : '', dataset: {action: off ? 'offline' : 'online', instance: i.id},
    onclick: () => perform(app, {
      label: `${off ? 'offline' : 'online'} ${i.id}`,
      confirm: off ? `Take instance ${i.id} offline? It stops taking requests.` : null,
      call: () => admin(`/instances/${encodeURIComponent(i.id)}/${off ? 'offline' : 'online'}`, {method: 'POST'}),
      wait: until.instance(m.name, i.id, off ? 'offline' : 'ready'),
    }).catch(() => {}),
  }, off ? 'Offline' : 'Online');
}

function render(app, parts, status) {
  const models = status.models || [];
  clear(parts.workers, table(['worker', 'state', 'engines', 'node', 'instances', 'last seen'], (status.workers || []).map(w =>
    h('tr', {}, h('td', {}, w.id), h('td', {}, state(w.alive ? 'alive' : 'dead')), h('td', {class: 'wrap'}, w.engines.join(', ')),
      h('td', {}, dash(w.node)), h('td', {}, w.instances), h('td', {}, seconds(w.last_seen_s))))));
  clear(parts.models, table(['model', 'kind', 'engine', 'routing', 'desired', 'ready', 'state', 'operation', 'autoscale'],
    models.map(m => h('tr', {dataset: {model: m.name}},
      h('td', {}, m.name), h('td', {}, m.kind), h('td', {}, m.engine), h('td', {}, m.routing),
      h('td', {class: 'desired'}, m.replicas), h('td', {class: 'ready'}, m.ready), h('td', {}, state(modelState(m))),
      h('td', {}, dash(m.operation)), h('td', {}, autoscale(m))))));
  const rows = models.flatMap(m => m.instances.map(i => h('tr', {dataset: {instance: i.id, model: m.name, state: i.state}},
    h('td', {}, i.id), h('td', {}, m.name), h('td', {}, dash(i.worker_id)), h('td', {}, state(i.state)),
    h('td', {}, dash(i.in_flight)), h('td', {}, dash(i.queued)), h('td', {}, seconds(i.uptime_s)),
    h('td', {class: 'error'}, i.last_error || ''), h('td', {}, instanceButton(app, m, i)))));
  clear(parts.instances, table(['instance', 'model', 'worker', 'state', 'in flight', 'queued', 'uptime', 'last error', ''], rows));
  parts.mode.textContent = `${status.mode} · ${models.length} model(s) · ${rows.length} instance(s)`;
}

export default {
  id: 'overview',
  title: 'Overview',
  mount(root, app) {
    const parts = {workers: h('div'), models: h('div', {id: 'models'}), instances: h('div', {id: 'instances'}), mode: h('span', {class: 'muted'})};
    root.append(
      h('section', {}, h('h2', {}, 'Models ', parts.mode), parts.models),
      h('section', {}, h('h2', {}, 'Instances'), parts.instances),
      h('section', {}, h('h2', {}, 'Workers'), parts.workers),
      mountCharts(app),
    );
    app.on('status', (status) => { if (status && !root.hidden) render(app, parts, status); });
  },
};
