// Drives a built Cinny web app in headless Chromium against a Myelin this
// script starts itself, step by step, and fails if any step fails. See
// README.md. Screenshots, the server's log and the browser's console go to a
// temporary folder, printed at the start and the end.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');

// Bounded waits: the UI gets this long for each thing it must show.
const UI_TIMEOUT = Number(process.env.UI_TIMEOUT_MS || 20000);

function fail(msg) {
  console.error(`browser-test: ${msg}`);
  process.exit(2);
}

const cinnyDist = process.env.CINNY_DIST;
if (!cinnyDist) fail('set CINNY_DIST to the dist/ folder of a built Cinny web app');
if (!fs.existsSync(path.join(cinnyDist, 'index.html'))) fail(`${cinnyDist}/index.html missing: not a built Cinny`);
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!fs.existsSync(chromiumPath)) fail(`${chromiumPath} missing (apt-get install -y chromium, or set CHROMIUM)`);

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'myelin-browser-'));
const shots = path.join(work, 'screenshots');
fs.mkdirSync(shots);
console.log(`browser-test: screenshots and logs under ${work}`);

// freePort asks the kernel for a free loopback port.
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// poll calls fn until it returns a truthy value or the deadline passes.
async function poll(what, timeoutMs, fn) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      // An endpoint the server does not have will not appear by waiting.
      if (/-> 404 .*M_UNRECOGNIZED/.test(e.message)) throw new Error(`${what}: ${e.message}`);
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (${last.message})` : ''}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// ---- Myelin ----

async function startMyelin() {
  let bin = process.env.MYELIN_BIN;
  if (!bin) {
    bin = path.join(work, 'myelin');
    console.log('browser-test: building ./cmd/myelin');
    execFileSync('go', ['build', '-o', bin, './cmd/myelin'], { cwd: repo, stdio: 'inherit' });
  }
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const log = fs.openSync(path.join(work, 'myelin.log'), 'w');
  const proc = spawn(bin, ['--config', '/dev/null'], {
    cwd: work,
    stdio: ['ignore', log, log],
    env: {
      ...process.env,
      MYELIN_SERVER_NAME: 'localhost',
      MYELIN_DATA_DIR: path.join(work, 'data'),
      MYELIN_CLIENT_API_LISTEN: `127.0.0.1:${port}`,
      MYELIN_CLIENT_API_PUBLIC_BASEURL: url,
      MYELIN_REGISTRATION_OPEN: 'true',
      MYELIN_REGISTRATION_BCRYPT_COST: '4',
      MYELIN_RATE_LIMITS_ENABLED: 'false',
    },
  });
  let exited = null;
  proc.on('exit', (code, sig) => {
    exited = `exited (${code ?? sig})`;
  });
  await poll('Myelin answering /_matrix/client/versions', 60000, async () => {
    if (exited) throw new Error(`Myelin ${exited}; see ${work}/myelin.log`);
    const r = await fetch(`${url}/_matrix/client/versions`);
    return r.ok;
  });
  return { url, proc, exited: () => exited };
}

// ---- Cinny, served from CINNY_DIST ----

const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.mjs': 'text/javascript',
  '.css': 'text/css',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.ttf': 'font/ttf',
  '.webmanifest': 'application/manifest+json',
};

// serveCinny serves the built app, its /config.json replaced by one naming
// only the Myelin under test, and index.html for the app's own routes.
async function serveCinny(myelinURL) {
  const root = path.resolve(cinnyDist);
  const config = JSON.stringify({
    defaultHomeserver: 0,
    homeserverList: [myelinURL],
    allowCustomHomeservers: false,
    featuredCommunities: { openAsDefault: false, spaces: [], rooms: [], servers: [] },
    hashRouter: { enabled: false, basename: '/' },
  });
  const server = http.createServer((req, res) => {
    let p;
    try {
      p = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      res.writeHead(400).end();
      return;
    }
    if (p === '/config.json') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(config);
      return;
    }
    // The app asks for olm.wasm relative to the route it is on
    // (/home/olm.wasm): it is the one at the root.
    const rel = p.endsWith('/olm.wasm') ? '/olm.wasm' : p;
    let file = path.join(root, path.normalize(rel));
    if (!file.startsWith(root + path.sep)) {
      res.writeHead(403).end();
      return;
    }
    if (!fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      // A missing asset is a 404; any other path is a route of the app.
      if (/^\/(assets|public)\//.test(rel)) {
        res.writeHead(404).end();
        return;
      }
      file = path.join(root, 'index.html');
    }
    res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${port}`, server };
}

// ---- steps ----

const results = [];
let current = 'setup';

// step runs one named step: a failure is recorded with its message, the
// Matrix requests the server refused meanwhile, and a screenshot.
async function step(name, needs, fn) {
  const n = String(results.length + 1).padStart(2, '0');
  const rec = { n, name, status: 'PASS', message: '', refused: [] };
  results.push(rec);
  const missing = needs.filter((d) => results.find((r) => r.name === d)?.status !== 'PASS');
  if (missing.length) {
    rec.status = 'SKIP';
    rec.message = `needs ${missing.join(', ')}`;
    console.log(`[${n}] SKIP ${name}: ${rec.message}`);
    return;
  }
  current = rec;
  const t0 = Date.now();
  console.log(`[${n}] ${name} ...`);
  try {
    await fn();
  } catch (e) {
    rec.status = 'FAIL';
    rec.message = e.message.split('\n')[0];
  }
  rec.ms = Date.now() - t0;
  // With Myelin's pprof listener on, a failed step keeps the server's
  // goroutines: a request that never answers shows where it waits.
  const pprof = process.env.MYELIN_DEBUG_PPROF_LISTEN;
  if (rec.status === 'FAIL' && pprof) {
    try {
      const r = await fetch(`http://${pprof}/debug/pprof/goroutine?debug=2`);
      fs.writeFileSync(path.join(work, `goroutines-${n}-${name}.txt`), await r.text());
    } catch (e) {
      console.log(`       (no goroutine dump: ${e.message})`);
    }
  }
  for (const p of pages) {
    await p.page.screenshot({ path: path.join(shots, `${n}-${name}-${p.who}.png`) }).catch(() => {});
  }
  current = 'between steps';
  console.log(`[${n}] ${rec.status} ${name} (${rec.ms} ms)${rec.message ? `: ${rec.message}` : ''}`);
  for (const r of rec.refused) console.log(`       server refused: ${r}`);
}

// endpoint names a request's path with its IDs replaced by their kind.
function endpoint(p) {
  return p
    .split('/')
    .map((seg) => {
      let d = seg;
      try {
        d = decodeURIComponent(seg);
      } catch {
        // left as sent
      }
      return { '!': '{roomId}', $: '{eventId}', '@': '{userId}', '#': '{roomAlias}' }[d[0]] ?? seg;
    })
    .join('/');
}

const refusedAll = new Map();
const pages = [];
const consoleLog = fs.createWriteStream(path.join(work, 'browser-console.log'));
const requestLog = fs.createWriteStream(path.join(work, 'requests.log'));

// watch logs every /_matrix request the server answered with >= 400 against
// the running step, and the page's console into browser-console.log.
function watch(page, who) {
  pages.push({ page, who });
  page.on('request', (req) => {
    const u = new URL(req.url());
    if (process.env.TRACE_E2EE && u.pathname.startsWith('/_matrix/')) requestLog.write(`${new Date().toISOString()} ${who} sent ${req.method()} ${u.pathname}${u.search}\n`);
  });
  page.on('response', async (resp) => {
    const u = new URL(resp.url());
    if (!u.pathname.startsWith('/_matrix/')) return;
    // The step running when the answer came, not when its body is read.
    const owner = current;
    requestLog.write(`${new Date().toISOString()} ${who} ${resp.request().method()} ${u.pathname} ${resp.status()}\n`);
    if (process.env.TRACE_E2EE && /keys\/(claim|upload|query)|sendToDevice|\/sync/.test(u.pathname)) {
      const body = await resp.text().catch(() => '');
      if (!u.pathname.endsWith('/sync') || body.length > 400) {
        requestLog.write(`  request: ${resp.request().postData() ?? ''}\n  answer: ${body}\n`);
      }
    }
    if (resp.status() < 400) return;
    let body = '';
    try {
      body = (await resp.text()).trim().slice(0, 300);
    } catch {
      body = '(no body)';
    }
    // A 401 listing flows is user-interactive auth asking for its next
    // stage, not a refusal.
    if (resp.status() === 401 && body.includes('"flows"')) {
      consoleLog.write(`[uia] ${who}: ${resp.request().method()} ${u.pathname}\n`);
      return;
    }
    const line = `${who}: ${resp.request().method()} ${u.pathname} -> ${resp.status()} ${body}`;
    consoleLog.write(`[refused] ${line}\n`);
    const shape = `${resp.request().method()} ${endpoint(u.pathname)} -> ${resp.status()} ${/"errcode":"(\w+)"/.exec(body)?.[1] ?? ''}`;
    refusedAll.set(shape, (refusedAll.get(shape) ?? 0) + 1);
    if (typeof owner === 'object') owner.refused.push(line);
    else console.log(`       server refused (${owner}): ${line}`);
  });
  page.on('console', (m) => consoleLog.write(`${who} ${m.type()}: ${m.text()}\n`));
  page.on('pageerror', (e) => consoleLog.write(`${who} pageerror: ${e.message}\n`));
}

// api calls the Client-Server API directly, as the user whose token it is.
async function api(base, token, method, p, body) {
  const r = await fetch(`${base}${p}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${p.split('?')[0]} -> ${r.status} ${text.slice(0, 200)}`);
  return text ? JSON.parse(text) : {};
}

// session reads the Matrix session Cinny keeps in localStorage.
async function session(page) {
  return page.evaluate(() => {
    const list = JSON.parse(localStorage.getItem('matrixSessions') || '[]');
    if (list.length) return list[0];
    return {
      accessToken: localStorage.getItem('cinny_access_token'),
      userId: localStorage.getItem('cinny_user_id'),
      deviceId: localStorage.getItem('cinny_device_id'),
    };
  });
}

function text(page, s, opts = {}) {
  return page.getByText(s, opts);
}

async function visible(locator, what) {
  try {
    await locator.first().waitFor({ state: 'visible', timeout: UI_TIMEOUT });
  } catch {
    throw new Error(`${what}: not shown within ${UI_TIMEOUT} ms`);
  }
}

// ---- main ----

const run = Date.now().toString(36);
const userA = `alice${run}`;
const userB = `bob${run}`;
const password = `pw-${run}-Secret!`;
const msg = `hello from cinny ${run}`;
const edited = `edited message ${run}`;
const threadFirst = `first in thread ${run}`;
const threadReply = `threaded answer ${run}`;
const dmA = `secret from alice ${run}`;
const dmB = `secret from bob ${run}`;

let myelin;
let cinny;
const cleanups = [];
try {
  myelin = await startMyelin();
  cleanups.push(() => myelin.proc.kill('SIGTERM'));
  cinny = await serveCinny(myelin.url);
  cleanups.push(() => cinny.server.close());
  console.log(`browser-test: Myelin at ${myelin.url}, Cinny at ${cinny.url}`);

  // Each user gets a browser of its own, with a fresh profile: Playwright
  // takes the profile directory as launchPersistentContext's argument.
  const launch = async (who) => {
    const ctx = await chromium.launchPersistentContext(path.join(work, `chromium-${who}`), {
      executablePath: chromiumPath,
      headless: true,
      viewport: { width: 1280, height: 900 },
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    cleanups.push(() => ctx.close());
    const page = ctx.pages()[0] ?? (await ctx.newPage());
    watch(page, who);
    return page;
  };
  const a = await launch('A');

  const steps = await import('./steps.mjs');
  await steps.run({ step, a, launch, watch, api, session, text, visible, poll, myelin, cinny, userA, userB, password, msg, edited, threadFirst, threadReply, runId: run, dmA, dmB, UI_TIMEOUT });
} catch (e) {
  results.push({ n: '--', name: `setup (${current?.name ?? current})`, status: 'FAIL', message: e.message, refused: [] });
  console.error(`browser-test: ${e.stack}`);
} finally {
  for (const c of cleanups.reverse()) {
    try {
      await c();
    } catch {
      // best effort: the process exits next
    }
  }
}

console.log('\nbrowser-test summary:');
for (const r of results) console.log(`  ${r.status.padEnd(4)} ${r.n} ${r.name}${r.message ? `: ${r.message}` : ''}`);
if (refusedAll.size) {
  console.log('requests the server refused (all steps):');
  for (const [shape, count] of [...refusedAll].sort()) console.log(`  ${String(count).padStart(3)} x ${shape}`);
}
console.log(`screenshots: ${shots}\nlogs: ${work}/myelin.log, ${work}/browser-console.log, ${work}/requests.log`);
const bad = results.filter((r) => r.status !== 'PASS');
process.exit(bad.length ? 1 : 0);
