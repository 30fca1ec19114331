// Thumbs up/down for one recorded request: POST /v1/feedback (rating 1 or -1), the
// same route any client of the public API uses.

import {gateway} from './api.js';
import {h} from './dom.js';

export function thumbs(app, requestId, current = null) {
  const note = h('span', {class: 'muted feedback-state'}, current === null || current === undefined ? '' : (current > 0 ? 'rated good' : 'rated bad'));
  const send = (rating) => async () => {
    note.textContent = 'sending…';
    try {
      await gateway('/v1/feedback', {method: 'POST', body: {request_id: requestId, rating}});
      note.textContent = rating > 0 ? 'rated good' : 'rated bad';
    } catch (exc) {
      note.textContent = exc.message;
      app.notice(`feedback on ${requestId}: ${exc.message}`, true);
    }
  };
  return h('span', {class: 'row thumbs', dataset: {request: requestId}},
    h('button', {class: 'thumb-up', title: 'good answer', onclick: send(1)}, 'Good'),
    h('button', {class: 'thumb-down', title: 'bad answer', onclick: send(-1)}, 'Bad'), note);
}
