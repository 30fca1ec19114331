// Requests panel: recent request records (GET /admin/v1/requests) filtered by model,
// status, instance and time; a request's trace as a tree with timings; thumbs up/down
// (POST /v1/feedback); corral report's HTML page for the last 24 hours.

import {admin, config} from './api.js';
import {clear, clock, dash, h, seconds, table} from './dom.js';
import {thumbs} from './feedback.js';

const REFRESH_MS = 5000;
const WINDOWS = [['5 min', 300], ['1 hour', 3600], ['24 hours', 86400], ['7 days', 604800]];

function traceTree(spans) {
  if (!spans.length) return h('p', {class: 'muted'}, 'no spans recorded for this request');
  const ids = new Set(spans.map(s => s.span_id));
  const children = new Map();
  for (const s of spans) {
    const parent = ids.has(s.parent_span_id) ? s.parent_span_id : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(s);
  }
  const start = Math.min(...spans.map(s => s.start));
  const total = Math.max(...spans.map(s => s.end)) - start || 1;
  const rows = [];
  const walk = (parent, depth) => {
    for (const s of (children.get(parent) || []).sort((a, b) => a.start - b.start)) {
      const offset = s.start - start, took = s.end - s.start;
      const bar = h('span', {class: 'bar'});
      bar.style.width = `${Math.max(2, 160 * took / total)}px`;
      bar.style.marginLeft = `${160 * offset / total}px`;
      rows.push(h('tr', {class: 'span'}, h('td', {}, '\u00a0\u00a0'.repeat(depth), s.name),
        h('td', {}, `+${(offset * 1000).toFixed(1)} ms`), h('td', {}, `${(took * 1000).toFixed(1)} ms`), h('td', {}, bar)));
      walk(s.span_id, depth + 1);
    }
  };
  walk(null, 0);
  return h('table', {class: 'tree'}, h('tbody', {}, rows));
}

export default {
  id: 'requests',
  title: 'Requests',
  mount(root, app) {
    if (!config.records) {
      root.append(h('section', {}, h('h2', {}, 'Requests'), h('p', {class: 'muted'},
        'Request records are kept by each gateway; read them there with corral trace and corral report.')));
      return;
    }
    const model = h('select', {id: 'filter-model'}, h('option', {value: ''}, 'any model'));
    const status = h('select', {id: 'filter-status'}, [['', 'any status'], ['ok', 'ok'], ['error', 'errors'], ['400', '400'], ['429', '429'], ['503', '503']]
      .map(([v, t]) => h('option', {value: v}, t)));
    const instance = h('input', {id: 'filter-instance', placeholder: 'instance id'});
    const since = h('select', {id: 'filter-since'}, WINDOWS.map(([t, s]) => h('option', {value: String(s), selected: s === 3600}, t)));
    const list = h('div', {id: 'request-list'});
    const trace = h('div', {id: 'trace'});
    const reportNote = h('span', {class: 'muted'});
    let last = 0;

    const show = async (rid) => {
      clear(trace, h('p', {class: 'muted'}, 'loading…'));
      try {
        const {request, spans} = await admin(`/requests/${encodeURIComponent(rid)}`);
        clear(trace, h('h3', {}, `trace of ${rid}`), h('p', {class: 'muted'}, `${request.model} · ${request.route} · ${request.outcome} · ${seconds(request.latency_s)}`),
          traceTree(spans));
      } catch (exc) { clear(trace, h('p', {class: 'field-error'}, exc.message)); }
    };
    const load = async () => {
      last = Date.now();
      const q = new URLSearchParams({since_s: since.value, limit: '100'});
      if (model.value) q.set('model', model.value);
      if (status.value) q.set('status', status.value);
      if (instance.value.trim()) q.set('instance', instance.value.trim());
      try {
        const {requests} = await admin(`/requests?${q}`);
        clear(list, table(['time', 'model', 'instance', 'route', 'status', 'latency', 'TTFT', 'tokens', 'feedback', ''], requests.map(r =>
          h('tr', {dataset: {request: r.request_id}},
            h('td', {}, clock(r.time)), h('td', {}, dash(r.model)), h('td', {}, dash(r.instance_id)), h('td', {}, r.route),
            h('td', {class: r.outcome === 'ok' ? '' : 'error'}, `${r.http_status} ${r.outcome}`), h('td', {}, seconds(r.latency_s)),
            h('td', {}, seconds(r.ttft_s)), h('td', {}, `${dash(r.prompt_tokens)} / ${dash(r.completion_tokens)}`),
            h('td', {}, thumbs(app, r.request_id, r.feedback_rating)),
            h('td', {}, h('button', {class: 'show-trace', onclick: () => show(r.request_id)}, 'Trace')))), 'no recorded requests match'));
      } catch (exc) { clear(list, h('p', {class: 'field-error'}, exc.message)); }
    };
    const report = async () => {
      reportNote.textContent = 'building…';
      try {
        const blob = await admin('/requests/report?since_s=86400');
        const a = h('a', {href: URL.createObjectURL(blob), download: 'corral-report.html'});
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
        reportNote.textContent = 'downloaded (the same page as `corral report --since 24h`)';
      } catch (exc) { reportNote.textContent = exc.message; }
    };
    for (const el of [model, status, since]) el.addEventListener('change', load);
    instance.addEventListener('change', load);
    root.append(
      h('section', {}, h('h2', {}, 'Recent requests'),
        h('div', {class: 'row'}, model, status, instance, since, h('button', {id: 'requests-refresh', onclick: load}, 'Refresh'),
          h('button', {id: 'report', onclick: report}, 'Report (24 h)'), reportNote), list),
      h('section', {}, trace));
    app.on('status', (s) => {
      if (!s) return;
      const names = s.models.map(m => m.name);
      if ([...model.options].slice(1).map(o => o.value).join() !== names.join()) {
        const keep = model.value;
        clear(model, h('option', {value: ''}, 'any model'), names.map(n => h('option', {value: n, selected: n === keep}, n)));
      }
      if (!root.hidden && Date.now() - last > REFRESH_MS && !root.contains(document.activeElement)) load();
    });
  },
};
