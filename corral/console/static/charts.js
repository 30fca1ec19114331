// Live charts per model, drawn with the vendored uPlot from the numbers /metrics
// exposes (metrics.js): requests/s, errors/s, time to first token p50/p90 (over the
// last 30 s) and completion tokens/s. Each chart's element carries data-points, the
// count of drawn values, so a test (or a curious operator) can see it is not empty.

import uPlot from './vendor/uplot/uPlot.esm.js';
import {clear, h} from './dom.js';
import {point} from './metrics.js';

const KEEP = 150;  // points per series (5 minutes at one scrape per 2 s)
const TTFT_WINDOW_S = 30;
const CHARTS = [
  {key: 'reqs', title: 'requests/s', series: [['req/s', 'reqs', '#2458c6']]},
  {key: 'errors', title: 'errors/s', series: [['errors/s', 'errors', '#c8372d']]},
  {key: 'ttft', title: 'time to first token (s)', series: [['p50', 'p50', '#2458c6'], ['p90', 'p90', '#e08a00']]},
  {key: 'tokens', title: 'completion tokens/s', series: [['tokens/s', 'tokens', '#1f8a4c']]},
];

function windowStart(scrapes, now) {
  for (let i = scrapes.length - 1; i >= 0; i--) if (now - scrapes[i].time >= TTFT_WINDOW_S) return scrapes[i];
  return scrapes[0];
}

class ModelCharts {
  constructor(name) {
    this.name = name;
    this.times = [];
    this.values = {reqs: [], errors: [], p50: [], p90: [], tokens: []};
    this.plots = new Map();
    this.el = h('div', {class: 'model-charts', dataset: {model: name}}, h('h3', {}, name));
    this.grid = h('div', {class: 'charts'});
    this.el.append(this.grid);
    this.boxes = CHARTS.map(c => {
      const box = h('div', {class: 'chart', dataset: {chart: c.key, points: '0'}}, h('div', {class: 'title'}, c.title));
      this.grid.append(box);
      return box;
    });
  }

  add(t, p) {
    this.times.push(t);
    for (const key of Object.keys(this.values)) this.values[key].push(p[key]);
    if (this.times.length > KEEP) {
      this.times.shift();
      for (const v of Object.values(this.values)) v.shift();
    }
  }

  draw() {
    CHARTS.forEach((c, n) => {
      const box = this.boxes[n];
      const width = Math.max(200, box.clientWidth - 4);
      if (!box.clientWidth || this.times.length < 2) return;  // hidden (drawn when shown), or no line yet
      const data = [this.times, ...c.series.map(([, key]) => this.values[key])];
      let plot = this.plots.get(c.key);
      if (!plot) {
        plot = new uPlot({
          width, height: 150, legend: {show: true}, cursor: {show: true},
          scales: {x: {time: true}, y: {range: (u, min, max) => [0, Math.max(max || 0, c.key === 'ttft' ? 0.01 : 1)]}},
          series: [{}, ...c.series.map(([label, , stroke]) => ({label, stroke, width: 2, spanGaps: true, points: {show: false}}))],
          axes: [{}, {size: 44}],
        }, data, box);
        this.plots.set(c.key, plot);
      } else {
        if (Math.abs(plot.width - width) > 8) plot.setSize({width, height: 150});
        plot.setData(data);
      }
      const drawn = data.slice(1).reduce((n, s) => n + s.filter(v => v !== null && v !== undefined).length, 0);
      box.dataset.points = String(drawn);
      box.dataset.nonzero = String(data.slice(1).reduce((n, s) => n + s.filter(v => v > 0).length, 0));
    });
  }
}

export function mountCharts(app) {
  const holder = h('div', {id: 'charts'}, h('p', {class: 'muted'}, 'Collecting /metrics…'));
  const section = h('section', {}, h('h2', {}, 'Live charts'), holder);
  const byModel = new Map();
  app.on('metrics', (scrapes) => {
    if (scrapes.length < 2) return;
    const cur = scrapes[scrapes.length - 1], prev = scrapes[scrapes.length - 2];
    const start = windowStart(scrapes, cur.time);
    const names = Object.keys(cur.models).filter(n => n !== '_other').sort();
    if (!byModel.size && names.length) clear(holder);
    for (const name of names) {
      if (!byModel.has(name)) {
        byModel.set(name, new ModelCharts(name));
        holder.append(byModel.get(name).el);
      }
      byModel.get(name).add(cur.time, point(name, prev, cur, start));
    }
    if (section.offsetParent !== null) for (const charts of byModel.values()) charts.draw();
  });
  return section;
}
