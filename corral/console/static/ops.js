// Running an admin change from any panel: ask for confirmation when it drops capacity,
// make the call, then follow the model until the change is done, in a progress list
// (the Actions panel shows it) and the notice line.

import {admin, modelPath} from './api.js';
import {h} from './dom.js';

export const progressList = h('ul', {id: 'progress', class: 'muted'});
const POLL_MS = 500;
const GIVE_UP_MS = 300_000;

const sleep = (ms) => new Promise(r => setTimeout(r, ms));

/** The model's view, or null once it is gone (404). */
export async function model(name) {
  try { return (await admin(modelPath(name))).model; } catch (exc) { if (exc.status === 404) return null; throw exc; }
}

const live = (m) => (m?.instances || []).filter(i => i.state !== 'draining');

/** Conditions a change waits for: each gives [done, what to show meanwhile]. */
export const until = {
  ready: (name, replicas) => async () => {
    const m = await model(name);
    const n = replicas ?? m?.replicas ?? 0;
    const inst = live(m);
    return [!!m && !m.operation && m.ready === n && inst.length === n, m ? `${m.ready}/${n} ready${m.operation ? `, ${m.operation}` : ''}` : 'not deployed'];
  },
  modelOffline: (name) => async () => {
    const m = await model(name);
    const inst = live(m);
    return [inst.every(i => i.state === 'offline'), `${inst.filter(i => i.state === 'offline').length}/${inst.length} offline`];
  },
  instance: (name, id, state) => async () => {
    const i = (await model(name))?.instances.find(x => x.id === id);
    return [i?.state === state, i ? i.state : 'gone'];
  },
  gone: (name) => async () => {
    const m = await model(name);
    return [m === null || (m.instances.length === 0 && !m.managed), m ? `${m.instances.length} instance(s) left` : 'removed'];
  },
};

export async function perform(app, {label, call, confirm, wait}) {
  if (confirm && !window.confirm(confirm)) return null;
  const line = h('li', {}, `${label}: sending…`);
  progressList.prepend(line);
  const say = (text, isError = false) => {
    line.textContent = `${label}: ${text}`;
    line.className = isError ? 'field-error' : '';
    app.notice(`${label}: ${text}`, isError);
  };
  let result;
  try {
    result = await call();
  } catch (exc) {
    say(`refused: ${exc.message}`, true);
    throw exc;
  }
  say('accepted');
  app.refresh();
  if (wait) {
    const deadline = Date.now() + GIVE_UP_MS;
    for (;;) {
      let done = false, text = '';
      try { [done, text] = await wait(); } catch (exc) { text = exc.message; }
      if (done) break;
      if (Date.now() > deadline) { say(`still not done after ${GIVE_UP_MS / 1000} s (${text})`, true); return result; }
      say(`in progress: ${text}`);
      await sleep(POLL_MS);
    }
  }
  say('done');
  app.refresh();
  return result;
}
