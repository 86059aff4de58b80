// A Jupyter client nbfleet did not write, run against a notebook's URL: @jupyterlab/services,
// the library JupyterLab's front end and VS Code's Jupyter extension talk to a Jupyter server
// with (package.json pins the version that extension ships).
//
//   NBFLEET_JUPYTER_TOKEN=... node client.mjs --base-url URL --auth token|bearer|query|none
//
// --auth says how the token travels:
//   token   Authorization: token T, as @jupyterlab/services sends it; the WebSocket URL gets
//           ?token=T (services' appendToken, on by default outside a browser) and its handshake
//           the same header (as VS Code's Jupyter extension adds)
//   bearer  Authorization: Bearer T on every request and on the WebSocket handshake, nowhere else
//   query   ?token=T on every request URL and the WebSocket URL, never in a header; HTTP
//           redirects are followed keeping cookies, as a browser or requests.Session does
//   none    no token at all
//
// It lists the kernelspecs, starts the default kernel in a session (as JupyterLab and VS Code
// do), runs `21*2` and waits for its execute_result over the kernel's WebSocket, writes a file
// through the Contents API, reads it back and deletes it, and shuts the session and its kernel
// down. It prints one JSON line on stdout:
//   {"ok": true, "kernelspecs": [...], "execute_result": "42", "file": {...}, ...}
// or, on failure, {"ok": false, "step": ..., "status": HTTP status or null, "error": ...}
// and exits 1 (2 when --timeout ran out). The token never appears in what it prints.
//
// With --leave-running CODE it starts the kernel the same way, sends CODE to it, waits until
// the kernel says it is busy with it and exits, leaving the kernel running the cell (a user
// who starts a long cell and closes the tab): {"ok": true, "kernel_id": ..., "busy": true}.

import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import {
  ContentsManager,
  KernelAPI,
  KernelManager,
  KernelSpecAPI,
  ServerConnection,
  SessionAPI,
  SessionManager
} from '@jupyterlab/services';
import WebSocket from 'ws';

const AUTH_FORMS = ['token', 'bearer', 'query', 'none'];
const CODE = '21*2';

const { values: args } = parseArgs({
  options: {
    'base-url': { type: 'string' },
    auth: { type: 'string', default: 'token' },
    timeout: { type: 'string', default: '120' },
    'leave-running': { type: 'string' }
  }
});
const baseUrl = args['base-url'];
const auth = args.auth;
const token = process.env.NBFLEET_JUPYTER_TOKEN ?? '';
const timeoutS = Number(args.timeout);

let step = 'arguments';
/** Every HTTP exchange, `METHOD /path -> status`, for the error report. */
const trail = [];
let lastSocketError = null;

// stdout carries the one JSON line; what services logs (console.debug included) goes to stderr.
for (const name of ['log', 'info', 'debug', 'warn', 'error']) {
  console[name] = (...parts) => process.stderr.write(redact(parts.join(' ')) + '\n');
}

function redact(text) {
  const s = String(text);
  return token ? s.split(token).join('<token>').split(encodeURIComponent(token)).join('<token>') : s;
}

/** An error's message with its causes ("fetch failed: connect ECONNREFUSED ..."). */
function describe(error) {
  const parts = [];
  for (let e = error; e && parts.length < 4; e = e.cause) parts.push(e.message ?? String(e));
  return parts.join(': ');
}

function finish(code, report) {
  process.stdout.write(redact(JSON.stringify({ auth, base_url: baseUrl, ...report })) + '\n');
  process.exit(code);
}

function fail(error, status = null, code = 1) {
  finish(code, {
    ok: false,
    step,
    status,
    error: redact(describe(error)),
    websocket_error: lastSocketError,
    http: trail.slice(-20)
  });
}

if (!baseUrl || !/^https?:\/\//.test(baseUrl)) {
  fail('--base-url must be the notebook URL, http(s)://.../');
}
if (!AUTH_FORMS.includes(auth)) {
  fail(`--auth must be one of ${AUTH_FORMS.join(', ')}, not ${auth}`);
}
if (auth !== 'none' && !token) {
  fail(`--auth ${auth} needs the token in NBFLEET_JUPYTER_TOKEN`);
}
if (!(timeoutS > 0)) {
  fail('--timeout must be a number of seconds');
}

// Never hang CI: the kernel's WebSocket reconnects on its own for a long while.
setTimeout(
  () => fail(`timed out after ${timeoutS} s while at step "${step}"`, null, 2),
  timeoutS * 1000
).unref();
process.on('unhandledRejection', (reason) => fail(reason, reason?.response?.status ?? null));

// ------------------------------------------------------------------------------------ HTTP

/** Cookies by name, for the query form only (a browser's cookie jar, one origin). */
const cookies = new Map();

function keepCookies(response) {
  const lines = response.headers.getSetCookie?.() ?? [response.headers.get('set-cookie') ?? ''];
  for (const line of lines.filter(Boolean)) {
    const [pair, ...attributes] = line.split(';');
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    const expired = attributes.some((a) => /^\s*max-age\s*=\s*0\s*$/i.test(a));
    if (expired || value === '' || value === '""') cookies.delete(name);
    else cookies.set(name, value);
  }
}

/** services keeps only the message of a failed fetch: put the cause (ECONNREFUSED...) in it. */
function networkError(error) {
  throw new TypeError(describe(error));
}

function record(method, url, response) {
  const redirected = response.redirected ? ' (after a redirect)' : '';
  trail.push(`${method} ${new URL(url).pathname} -> ${response.status}${redirected}`);
}

/** The query form: the token in the URL of every request, redirects followed by hand so the
 * cookies they set are kept (Node's fetch has no cookie jar). */
async function fetchWithQueryToken(request) {
  let url = new URL(request.url);
  url.searchParams.set('token', token);
  let method = request.method;
  let body = ['GET', 'HEAD'].includes(method) ? undefined : await request.arrayBuffer();
  const headers = new Headers(request.headers);
  for (let hop = 0; hop <= 5; hop++) {
    if (cookies.size) {
      headers.set('Cookie', [...cookies].map(([k, v]) => `${k}=${v}`).join('; '));
    }
    const response = await fetch(url, { method, headers, body, redirect: 'manual' }).catch(
      networkError
    );
    record(method, url, response);
    keepCookies(response);
    if (![301, 302, 303, 307, 308].includes(response.status)) return response;
    const next = new URL(response.headers.get('location'), url);
    if (next.origin !== url.origin) cookies.clear();
    if (response.status === 303 || (response.status <= 302 && method === 'POST')) {
      method = 'GET';
      body = undefined;
      headers.delete('Content-Type');
    }
    url = next;
  }
  throw new Error(`more than 5 redirects, last to ${url.pathname}`);
}

async function fetchWithHeader(request) {
  if (auth === 'bearer') request.headers.set('Authorization', `Bearer ${token}`);
  const response = await fetch(request).catch(networkError);
  record(request.method, response.url || request.url, response);
  return response;
}

// ------------------------------------------------------------------------------- WebSocket

/** `ws` with the token where this form puts it, failing fast on a refused handshake rather
 * than letting the kernel reconnect until the timeout. */
class ClientWebSocket extends WebSocket {
  constructor(url, protocols) {
    const target = new URL(url);
    const options = { handshakeTimeout: 30_000 };
    if (auth === 'query') target.searchParams.set('token', token);
    if (auth === 'token') options.headers = { Authorization: `token ${token}` };
    if (auth === 'bearer') options.headers = { Authorization: `Bearer ${token}` };
    super(target.href, protocols, options);
    this.on('error', (error) => {
      lastSocketError = redact(error.message);
      const refused = /Unexpected server response: (\d+)/.exec(error.message);
      if (refused) {
        fail(`the kernel WebSocket was refused: ${error.message}`, Number(refused[1]));
      }
    });
  }
}

// ------------------------------------------------------------------------------------ main

const serverSettings = ServerConnection.makeSettings({
  baseUrl,
  wsUrl: baseUrl.replace(/^http/, 'ws'),
  // services sends `Authorization: token T` itself when it has a token; the other forms
  // carry theirs on their own.
  token: auth === 'token' ? token : '',
  fetch: auth === 'query' ? fetchWithQueryToken : fetchWithHeader,
  WebSocket: ClientWebSocket
});

async function main() {
  step = 'kernelspecs';
  const specs = await KernelSpecAPI.getSpecs(serverSettings);
  const names = Object.keys(specs.kernelspecs).sort();
  if (!specs.default || !names.includes(specs.default)) {
    throw new Error(`no default kernelspec among ${JSON.stringify(names)}`);
  }

  // A session for a notebook path, as JupyterLab and VS Code start kernels.
  step = 'start kernel';
  const kernels = new KernelManager({ serverSettings });
  const sessions = new SessionManager({ kernelManager: kernels, serverSettings });
  await sessions.ready;
  const notebookPath = `nbfleet-client-check-${randomBytes(4).toString('hex')}.ipynb`;
  const session = await sessions.startNew({
    path: notebookPath,
    name: notebookPath,
    type: 'notebook',
    kernel: { name: specs.default }
  });
  const kernel = session.kernel;

  if (args['leave-running'] !== undefined) {
    step = 'start a cell and leave';
    const future = kernel.requestExecute({ code: args['leave-running'], store_history: false });
    await new Promise((resolve) => {
      future.onIOPub = (msg) => {
        if (msg.header.msg_type === 'status' && msg.content.execution_state === 'busy') resolve();
      };
    });
    finish(0, { ok: true, kernel_id: kernel.id, session_id: session.id, busy: true });
  }

  step = `execute ${CODE}`;
  const outputs = [];
  const future = kernel.requestExecute({ code: CODE, store_history: false });
  future.onIOPub = (msg) => {
    const type = msg.header.msg_type;
    if (type === 'execute_result') outputs.push(msg.content.data['text/plain']);
    if (type === 'error') outputs.push(`${msg.content.ename}: ${msg.content.evalue}`);
  };
  const reply = await future.done;
  if (reply.content.status !== 'ok') {
    throw new Error(`execute_reply is ${reply.content.status}: ${JSON.stringify(outputs)}`);
  }

  step = 'contents';
  const contents = new ContentsManager({ serverSettings });
  const path = `nbfleet-client-check-${randomBytes(4).toString('hex')}.txt`;
  const written = `written by @jupyterlab/services at ${new Date().toISOString()}\n`;
  await contents.save(path, { type: 'file', format: 'text', content: written });
  const read = await contents.get(path, { type: 'file', format: 'text', content: true });
  await contents.delete(path);

  step = 'shut kernel down';
  await session.shutdown();
  const running = await KernelAPI.listRunning(serverSettings);
  const open = await SessionAPI.listRunning(serverSettings);
  sessions.dispose();
  kernels.dispose();
  contents.dispose();

  finish(0, {
    ok: true,
    kernelspecs: names,
    default_kernelspec: specs.default,
    kernel: kernel.name,
    code: CODE,
    execute_result: outputs.length === 1 ? outputs[0] : outputs,
    file: { path, written, read: read.content, round_trip: read.content === written },
    kernel_shut_down:
      !running.some((model) => model.id === kernel.id) &&
      !open.some((model) => model.id === session.id),
    http: trail.length
  });
}

main().catch((error) => fail(error, error?.response?.status ?? null));
