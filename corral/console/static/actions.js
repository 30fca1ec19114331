// Actions panel: deploy a model (the API validates; its message is shown next to the
// field it names), and per model scale, rolling restart, offline/online, routing and
// stop, each confirmed when it drops capacity and followed until done (ops.js); the
// audit trail below says who did what.

import {admin, modelPath} from './api.js';
import {clear, clock, h, table} from './dom.js';
import {perform, progressList, until} from './ops.js';

const ROUTING = ['power_of_two', 'round_robin', 'weighted', 'least_requests', 'latency', 'session', 'prefix'];
const FIELDS = ['name', 'kind', 'engine', 'source', 'replicas', 'routing', 'max_concurrency', 'options'];

function field(name, label, input) {
  input.name = name;
  input.id = `deploy-${name}`;
  return h('label', {}, label, input, h('span', {class: 'field-error', id: `deploy-${name}-error`}));
}

const select = (values, value) => h('select', {}, values.map(v => h('option', {value: v, selected: v === value}, v)));

function deployForm(app) {
  const inputs = {
    name: h('input', {placeholder: 'my-model', required: true}),
    kind: select(['llm', 'embedding', 'rerank'], 'llm'),
    engine: h('input', {placeholder: 'transformers', list: 'engines'}),
    source: h('input', {placeholder: 'demo:tiny-llama or org/model'}),
    replicas: h('input', {type: 'number', value: '1', min: '1'}),
    routing: select(ROUTING, 'power_of_two'),
    max_concurrency: h('input', {type: 'number', value: '0', min: '0'}),
    options: h('textarea', {rows: 2, placeholder: '{"n_ctx": 2048}'}),
  };
  const engines = h('datalist', {id: 'engines'});
  const formError = h('div', {class: 'field-error', id: 'deploy-error'});
  const form = h('form', {class: 'grid', id: 'deploy-form', novalidate: true},
    field('name', 'name', inputs.name), field('kind', 'kind', inputs.kind), field('engine', 'engine', inputs.engine),
    field('source', 'source', inputs.source), field('replicas', 'replicas', inputs.replicas),
    field('routing', 'routing', inputs.routing), field('max_concurrency', 'max concurrency', inputs.max_concurrency),
    field('options', 'engine options (JSON)', inputs.options),
    h('div', {class: 'field'}, ' ', h('button', {type: 'submit', class: 'primary', id: 'deploy-submit'}, 'Deploy')), engines);

  const showError = (param, message) => {
    const name = (param || '').split(/[.[]/)[0];
    const target = FIELDS.includes(name) ? form.querySelector(`#deploy-${name}-error`) : formError;
    target.textContent = message;
    if (FIELDS.includes(name)) inputs[name].classList.add('invalid');
  };
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    for (const el of form.querySelectorAll('.field-error')) el.textContent = '';
    formError.textContent = '';
    for (const el of Object.values(inputs)) el.classList.remove('invalid');
    const body = {name: inputs.name.value.trim(), kind: inputs.kind.value, engine: inputs.engine.value.trim(),
                  source: inputs.source.value.trim(), routing: inputs.routing.value,
                  replicas: Number(inputs.replicas.value), max_concurrency: Number(inputs.max_concurrency.value)};
    if (inputs.options.value.trim()) {
      try { body.options = JSON.parse(inputs.options.value); } catch (exc) { showError('options', `not JSON: ${exc.message}`); return; }
    }
    try {
      await perform(app, {label: `deploy ${body.name}`, call: () => admin('/models', {method: 'POST', body}),
                          wait: until.ready(body.name)});
    } catch (exc) {
      showError(exc.param, exc.message);
    }
  });
  app.on('status', (status) => {
    const known = new Set((status?.workers || []).flatMap(w => w.engines));
    clear(engines, [...known].sort().map(e => h('option', {value: e})));
  });
  return h('section', {}, h('h2', {}, 'Deploy a model'), form, formError);
}

function modelActions(app, m) {
  const replicas = h('input', {type: 'number', min: '0', value: String(m.replicas), class: 'replicas'});
  replicas.size = 4;
  const routing = select(ROUTING, m.routing);
  const path = modelPath(m.name);
  const go = (options) => perform(app, options).catch(() => {});
  const scale = () => {
    const n = Number(replicas.value);
    go({label: `scale ${m.name} to ${n}`, call: () => admin(`${path}/scale`, {method: 'POST', body: {replicas: n}}),
        confirm: n < m.replicas ? `Scale ${m.name} down from ${m.replicas} to ${n} instance(s)?` : null,
        wait: until.ready(m.name, n)});
  };
  const managed = m.managed;
  return h('tr', {dataset: {model: m.name}},
    h('td', {}, m.name), h('td', {}, `${m.ready}/${m.replicas}`),
    h('td', {}, h('div', {class: 'row'}, replicas, h('button', {class: 'scale', onclick: scale, disabled: !managed || !!m.autoscale}, 'Scale'))),
    h('td', {}, h('div', {class: 'row'}, routing, h('button', {class: 'routing', disabled: !managed, onclick: () => go({
      label: `routing of ${m.name} to ${routing.value}`, call: () => admin(path, {method: 'PATCH', body: {routing: routing.value}})})}, 'Set'))),
    h('td', {}, h('div', {class: 'row'},
      h('button', {class: 'restart', disabled: !managed, onclick: () => go({label: `restart ${m.name}`,
        confirm: `Restart every instance of ${m.name}, one at a time?`,
        call: () => admin(`${path}/restart`, {method: 'POST'}), wait: until.ready(m.name)})}, 'Restart'),
      m.offline
        ? h('button', {class: 'online', disabled: !managed, onclick: () => go({label: `online ${m.name}`,
            call: () => admin(`${path}/online`, {method: 'POST'}), wait: until.ready(m.name)})}, 'Online')
        : h('button', {class: 'offline danger', disabled: !managed, onclick: () => go({label: `offline ${m.name}`,
            confirm: `Take every instance of ${m.name} offline? It stops serving.`,
            call: () => admin(`${path}/offline`, {method: 'POST'}), wait: until.modelOffline(m.name)})}, 'Offline'),
      h('button', {class: 'stop danger', disabled: !managed, onclick: () => go({label: `stop ${m.name}`,
        confirm: `Stop ${m.name} and remove it? Its instances are drained and stopped.`,
        call: () => admin(path, {method: 'DELETE'}), wait: until.gone(m.name)})}, 'Stop'))));
}

export default {
  id: 'actions',
  title: 'Actions',
  mount(root, app) {
    const models = h('div', {id: 'model-actions'});
    const audit = h('div', {id: 'audit'});
    const editing = () => root.contains(document.activeElement) && document.activeElement.tagName !== 'BUTTON';
    if (!app.canAct()) {
      root.append(h('section', {}, h('p', {class: 'muted'}, 'This console is read-only: the server is bound off loopback with no admin token.')));
    } else {
      root.append(deployForm(app), h('section', {}, h('h2', {}, 'Models'), models), h('section', {}, h('h2', {}, 'Progress'), progressList));
    }
    root.append(h('section', {}, h('h2', {}, 'Audit'), audit));
    let auditing = false;
    app.on('status', async (status) => {
      if (!status || root.hidden) return;
      if (app.canAct() && !editing()) {
        clear(models, table(['model', 'ready', 'replicas', 'routing', ''], status.models.map(m => modelActions(app, m))));
      }
      if (auditing) return;
      auditing = true;
      try {
        const {events} = await admin('/audit?limit=50');
        clear(audit, table(['time', 'actor', 'action', 'target', 'detail'], events.map(e => h('tr', {},
          h('td', {}, clock(e.time)), h('td', {class: 'actor'}, e.actor), h('td', {}, e.action), h('td', {}, e.target),
          h('td', {class: 'error'}, JSON.stringify(e.detail))))));
      } catch (exc) {
        clear(audit, h('p', {class: 'field-error'}, exc.message));
      } finally {
        auditing = false;
      }
    });
  },
};
