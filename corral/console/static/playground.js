// Playground panel: chat with a model, streamed, with system prompt, temperature and
// max tokens, showing the instance that served (x-corral-instance), latency, time to
// first token and tokens; small try-it forms for embedding and rerank models.

import {gateway} from './api.js';
import {clear, h, seconds} from './dom.js';
import {thumbs} from './feedback.js';

const kinds = (status, kind) => (status?.models || []).filter(m => m.kind === kind).map(m => m.name);

function modelSelect(id) {
  return h('select', {id});
}

function fillSelect(select, names) {
  const keep = select.value;
  if ([...select.options].map(o => o.value).join() === names.join()) return;
  clear(select, names.map(n => h('option', {value: n, selected: n === keep}, n)));
}

async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split('\n')) if (line.startsWith('data: ')) yield line.slice(6);
    }
  }
}

function chat(app) {
  const model = modelSelect('chat-model');
  const system = h('textarea', {id: 'chat-system', rows: 2, placeholder: 'system prompt (optional)'});
  const temperature = h('input', {id: 'chat-temperature', type: 'number', step: '0.1', min: '0', max: '2', value: '0.7'});
  const maxTokens = h('input', {id: 'chat-max-tokens', type: 'number', min: '1', value: '64'});
  const message = h('textarea', {id: 'chat-message', rows: 3, placeholder: 'your message'});
  const log = h('div', {id: 'chat-log'});
  const stats = h('div', {class: 'stats', id: 'chat-stats'});
  const send = h('button', {class: 'primary', id: 'chat-send', type: 'submit'}, 'Send');
  let history = [];

  const form = h('form', {id: 'chat-form'},
    h('div', {class: 'row'}, h('label', {class: 'field'}, 'model', model), h('label', {class: 'field'}, 'temperature', temperature),
      h('label', {class: 'field'}, 'max tokens', maxTokens)),
    h('label', {class: 'field'}, 'system prompt', system), h('label', {class: 'field'}, 'message', message),
    h('div', {class: 'row'}, send, h('button', {type: 'button', onclick: () => { history = []; clear(log); clear(stats); }}, 'Clear')));

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = message.value.trim();
    if (!text || !model.value) return;
    history.push({role: 'user', content: text});
    message.value = '';
    const answer = h('div', {class: 'answer assistant'});
    log.append(h('div', {class: 'muted'}, `you: ${text}`), answer);
    const messages = system.value.trim() ? [{role: 'system', content: system.value.trim()}, ...history] : history;
    const body = {model: model.value, messages, stream: true, stream_options: {include_usage: true},
                  temperature: Number(temperature.value), max_tokens: Number(maxTokens.value)};
    send.disabled = true;
    const started = performance.now();
    let ttft = null, chunks = 0, usage = null;
    try {
      const response = await gateway('/v1/chat/completions', {method: 'POST', body});
      const instance = response.headers.get('x-corral-instance') || '?';
      const requestId = response.headers.get('x-request-id');
      for await (const data of sseEvents(response)) {
        if (data === '[DONE]') break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) {
          if (ttft === null) ttft = (performance.now() - started) / 1000;
          chunks += 1;
          answer.textContent += delta;
        }
      }
      const latency = (performance.now() - started) / 1000;
      history.push({role: 'assistant', content: answer.textContent});
      const tokens = usage ? usage.completion_tokens : chunks;
      clear(stats, h('span', {id: 'chat-instance'}, `instance ${instance}`), ` · latency ${seconds(latency)} · TTFT ${seconds(ttft)} · `,
        h('span', {id: 'chat-tokens'}, `${tokens} tokens`), usage ? ` (${usage.prompt_tokens} prompt)` : '',
        requestId ? [' · ', h('span', {class: 'muted', id: 'chat-request'}, requestId), ' ', thumbs(app, requestId)] : '');
    } catch (exc) {
      answer.classList.add('field-error');
      answer.textContent += `\n[${exc.message}]`;
      history.pop();
    } finally {
      send.disabled = false;
    }
  });
  return {section: h('section', {}, h('h2', {}, 'Chat'), form, log, stats), model};
}

function tryIt(app, kind) {
  const model = modelSelect(`${kind}-model`);
  const first = h('textarea', {id: `${kind}-input`, rows: 2, placeholder: kind === 'embedding' ? 'text to embed' : 'query'});
  const docs = h('textarea', {id: 'rerank-documents', rows: 3, placeholder: 'documents, one per line'});
  const out = h('div', {class: 'answer', id: `${kind}-out`});
  const form = h('form', {}, h('label', {class: 'field'}, 'model', model), h('label', {class: 'field'}, kind === 'embedding' ? 'input' : 'query', first),
    kind === 'rerank' ? h('label', {class: 'field'}, 'documents', docs) : null,
    h('div', {class: 'row'}, h('button', {class: 'primary', type: 'submit', id: `${kind}-send`}, kind === 'embedding' ? 'Embed' : 'Rerank')), out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const started = performance.now();
    try {
      const documents = docs.value.split('\n').map(s => s.trim()).filter(Boolean);
      const response = kind === 'embedding'
        ? await gateway('/v1/embeddings', {method: 'POST', body: {model: model.value, input: first.value}})
        : await gateway('/v1/rerank', {method: 'POST', body: {model: model.value, query: first.value, documents}});
      const body = await response.json();
      const took = `instance ${response.headers.get('x-corral-instance') || '?'} · ${seconds((performance.now() - started) / 1000)}`;
      if (kind === 'embedding') {
        const v = body.data[0].embedding;
        out.textContent = `${v.length} dimensions: [${v.slice(0, 6).map(x => x.toFixed(4)).join(', ')}, …]\n${took}`;
      } else {
        out.textContent = body.results.map(r => `${r.relevance_score.toFixed(3)}  ${documents[r.index]}`).join('\n') + `\n${took}`;
      }
    } catch (exc) {
      out.textContent = exc.message;
    }
  });
  return {section: h('section', {}, h('h2', {}, kind === 'embedding' ? 'Embeddings' : 'Rerank'), form), model};
}

export default {
  id: 'playground',
  title: 'Playground',
  mount(root, app) {
    const parts = {llm: chat(app), embedding: tryIt(app, 'embedding'), rerank: tryIt(app, 'rerank')};
    for (const part of Object.values(parts)) root.append(part.section);
    app.on('status', (status) => {
      if (!status) return;
      for (const [kind, part] of Object.entries(parts)) {
        const names = kinds(status, kind);
        fillSelect(part.model, names);
        part.section.hidden = kind !== 'llm' && !names.length;
      }
    });
  },
};
