// Small DOM helpers shared by every panel: element building (text only, never HTML
// strings, so nothing a server or model sends is ever parsed as markup) and formatting.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter(c => c !== null && c !== undefined && c !== false));
  return el;
}

export function table(headers, rows, empty = 'none') {
  if (!rows.length) return h('p', {class: 'muted'}, empty);
  return h('table', {}, h('thead', {}, h('tr', {}, headers.map(t => h('th', {}, t)))),
           h('tbody', {}, rows));
}

export const state = (text) => h('span', {class: `state ${text}`}, text);

export function seconds(value) {
  if (value === null || value === undefined) return '–';
  if (value < 1) return `${(value * 1000).toFixed(0)} ms`;
  if (value < 120) return `${value.toFixed(1)} s`;
  if (value < 7200) return `${(value / 60).toFixed(0)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

export const clock = (t) => new Date(t * 1000).toLocaleTimeString();
export const dash = (v) => (v === null || v === undefined ? '–' : v);
