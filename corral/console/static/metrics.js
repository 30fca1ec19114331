// Reading what /metrics exposes (Prometheus text format) into the numbers the charts
// draw: per model, request and error rates, completion tokens per second and time to
// first token p50/p90 from the histogram's buckets over a recent window.

export function parse(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const pair of (m[2] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2].replace(/\\(.)/g, '$1');
    samples.push({name: m[1], labels, value: Number(m[3])});
  }
  return samples;
}

/** One scrape reduced to per-model totals: {time, models: {name: {requests, errors, tokens, ttft: {le: count}}}}. */
export function totals(samples, time) {
  const models = {};
  const of = (name) => (models[name] ??= {requests: 0, errors: 0, tokens: 0, ttft: {}});
  for (const s of samples) {
    const model = s.labels.model;
    if (!model) continue;
    if (s.name === 'corral_requests_total') {
      of(model).requests += s.value;
      if (s.labels.outcome !== 'ok') of(model).errors += s.value;
    } else if (s.name === 'corral_completion_tokens_total') {
      of(model).tokens += s.value;
    } else if (s.name === 'corral_time_to_first_token_seconds_bucket') {
      const buckets = of(model).ttft;
      buckets[s.labels.le] = (buckets[s.labels.le] || 0) + s.value;
    }
  }
  return {time, models};
}

/** The q-quantile of the observations between two cumulative bucket maps (linear within a bucket). */
export function quantile(q, before, after) {
  const bounds = Object.keys(after).map(le => [le === '+Inf' ? Infinity : Number(le), le]).sort((a, b) => a[0] - b[0]);
  const counts = bounds.map(([, le]) => (after[le] || 0) - (before?.[le] || 0));
  const total = counts[counts.length - 1] || 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (let i = 0; i < bounds.length; i++) {
    const upper = bounds[i][0];
    if (counts[i] >= rank) {
      if (upper === Infinity) return lower;
      const inBucket = counts[i] - below;
      return inBucket > 0 ? lower + (upper - lower) * (rank - below) / inBucket : upper;
    }
    lower = upper === Infinity ? lower : upper;
    below = counts[i];
  }
  return lower;
}

/** Points for one model between scrape ``prev`` and ``cur`` (rates per second); TTFT over ``window``. */
export function point(model, prev, cur, window) {
  const a = prev.models[model], b = cur.models[model];
  if (!b) return null;
  const dt = Math.max(0.001, cur.time - prev.time);
  const rate = (key) => Math.max(0, (b[key] - (a ? a[key] : 0)) / dt);
  const w = window?.models[model];
  return {
    reqs: rate('requests'), errors: rate('errors'), tokens: rate('tokens'),
    p50: quantile(0.5, w?.ttft, b.ttft), p90: quantile(0.9, w?.ttft, b.ttft),
  };
}
