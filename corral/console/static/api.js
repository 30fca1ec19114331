// The console's only way out: the admin API (/admin/v1, admin token in a header) and
// the public API (chat, embeddings, rerank, feedback, /metrics: the API key in a
// header). Secrets live in sessionStorage, for this browser tab's session only; they
// never go into a URL or a cookie, so a forged cross-site request carries nothing.

const ADMIN_TOKEN = 'corral.adminToken';
const API_KEY = 'corral.apiKey';
const ACTOR = 'corral.actor';

export const config = {mode: 'standalone', read_only: false, admin_token: false, api_key: false, gateway: '', records: true};

export const secrets = {
  get admin() { return sessionStorage.getItem(ADMIN_TOKEN) || ''; },
  set admin(v) { v ? sessionStorage.setItem(ADMIN_TOKEN, v) : sessionStorage.removeItem(ADMIN_TOKEN); },
  get apiKey() { return sessionStorage.getItem(API_KEY) || ''; },
  set apiKey(v) { v ? sessionStorage.setItem(API_KEY, v) : sessionStorage.removeItem(API_KEY); },
  get actor() { return sessionStorage.getItem(ACTOR) || 'console'; },
  set actor(v) { v ? sessionStorage.setItem(ACTOR, v) : sessionStorage.removeItem(ACTOR); },
};

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.param = error?.param || null;
    this.code = error?.code || null;
  }
}

export async function loadConfig() {
  const answer = await fetch('config.json', {cache: 'no-store'});
  Object.assign(config, await answer.json());
  return config;
}

export const canAct = () => !config.read_only;

async function failure(answer) {
  let body = null;
  try { body = await answer.json(); } catch { /* not JSON */ }
  return new ApiError(answer.status, body?.error || (body?.detail ? {message: body.detail} : null));
}

/** An admin API call: path under /admin/v1; body as JSON; resolves to the parsed answer. */
export async function admin(path, {method = 'GET', body} = {}) {
  const headers = {'x-corral-actor': secrets.actor};
  if (secrets.admin) headers.authorization = `Bearer ${secrets.admin}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const answer = await fetch(`/admin/v1${path}`, {method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store'});
  if (!answer.ok) throw await failure(answer);
  return answer.headers.get('content-type')?.includes('json') ? answer.json() : answer.blob();
}

/** The public API (or /metrics): the raw Response, for streaming; throws ApiError when not ok. */
export async function gateway(path, {method = 'GET', body, signal} = {}) {
  if (config.gateway === null) throw new ApiError(0, {message: 'no gateway configured for this console (start the controller with --ui-gateway URL)'});
  const headers = {};
  if (secrets.apiKey) headers.authorization = `Bearer ${secrets.apiKey}`;
  if (config.mode === 'cluster' && secrets.admin) headers['x-corral-admin-token'] = secrets.admin;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const answer = await fetch(`${config.gateway}${path}`, {method, headers, signal, cache: 'no-store',
                                                           body: body === undefined ? undefined : JSON.stringify(body)});
  if (!answer.ok) throw await failure(answer);
  return answer;
}

export const modelPath = (name) => `/models/${encodeURIComponent(name)}`;
