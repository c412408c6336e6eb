// posthog-js in Debian's headless chromium against idstitch (identify-users.txt, sections 1-3).
//
// Usage: node browser_flow.mjs STATE_DIR
//
// A tiny HTTP server on 127.0.0.1 serves a page and the SDK bundle shipped by the posthog-js
// package (dist/array.full.js: the snippet build with every extension bundled; at init it loads
// <api_host>/array/<token>/config.js as a script, then GETs /array/<token>/config and POSTs
// /flags/?v=2). The page is on another port than the daemon, so every request to the daemon is
// cross-origin (CORS).
// Default person_profiles ('identified_only'): anonymous events are personless until identify().
//
// Context "main" (token phc_sdk_js), one browser profile:
//   $pageview + viewed_pricing as anonymous A1 -> identify('user-js-1', {...}, {...}) -> purchase,
//   setPersonProperties -> reset() and reload -> $pageview + viewed_pricing as A2 ->
//   identify('user-js-2') -> purchase.
// Context "gzip" (token phc_sdk_js_gzip), a fresh profile where the config answer is extended with
//   supportedCompression ['gzip-js'] as PostHog Cloud answers it, so every batch goes out as a gzip
//   body with Content-Type text/plain and no Content-Encoding: $pageview as A3 -> identify('user-js-3') -> done.
//
// Every request to the daemon is recorded from the browser's network events (body decoded as the
// daemon must decode it); then check_recorded.py compares the daemon with identity.md.
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { decodeBody, eventsOf, writeJson } from './lib/recorder.mjs';
import { readDaemon, runChecker, waitFor, check } from './lib/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const state = process.argv[2];
const daemon = readDaemon(state);
const FLOW = 'browser';
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const DELIVERY_TIMEOUT_MS = 20000;

const sdkFile = path.join(path.dirname(require.resolve('posthog-js/package.json')), 'dist', 'array.full.js');
const sdk = fs.readFileSync(sdkFile);
const sdkVersion = JSON.parse(fs.readFileSync(path.join(path.dirname(sdkFile), '..', 'package.json'), 'utf8')).version;

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>idstitch sdk test</title>
<script src="/posthog.js"></script>
<script>
  const q = new URLSearchParams(location.search);
  window.__sent = [];
  window.__loaded = false;
  posthog.init(q.get('token'), {
    api_host: q.get('api'),
    opt_out_useragent_filter: true,       // HeadlessChrome would be filtered as a bot
    person_profiles: 'identified_only',   // the default, spelled out
    capture_pageview: true,
    capture_pageleave: false,             // no beacon on navigation: keeps the event list exact
    autocapture: false,
    capture_heatmaps: false,
    capture_dead_clicks: false,
    capture_exceptions: false,
    capture_performance: false,
    disable_session_recording: true,
    disable_surveys: true,
    request_queue_config: { flush_interval_ms: 200 },
    before_send: (ev) => { if (ev) window.__sent.push(JSON.parse(JSON.stringify(ev))); return ev; },
    loaded: () => { window.__loaded = true; },
  });
</script></head><body><h1>shop</h1></body></html>`;

function servePage() {
  const srv = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    if (u.pathname === '/posthog.js') {
      res.writeHead(200, { 'Content-Type': 'application/javascript' });
      return res.end(sdk);
    }
    if (u.pathname === '/favicon.ico') { res.writeHead(204); return res.end(); }
    if (u.pathname === '/' || u.pathname === '/shop') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      return res.end(PAGE);
    }
    res.writeHead(404); res.end();
  });
  return new Promise((r) => srv.listen(0, '127.0.0.1', () => r(srv)));
}

// Record every request the page makes to the daemon.
function recordNetwork(page, requests, pageOrigin) {
  const byReq = new Map();
  page.on('request', (req) => {
    if (!req.url().startsWith(daemon.url)) return;
    const u = new URL(req.url());
    const h = req.headers();
    const rec = {
      path: u.pathname + u.search, method: req.method(),
      content_type: h['content-type'] || null, content_encoding: h['content-encoding'] || null,
      body_encoding: null, status: null, error: null, events: [], cors: null,
    };
    const body = req.postDataBuffer();
    if (body && req.method() === 'POST') {
      try {
        const { encoding, json } = decodeBody(body, h, req.url());
        rec.body_encoding = encoding;
        rec.events = eventsOf(json);
        if (!rec.events.length) rec.body = json;
      } catch (e) { rec.body_encoding = 'undecodable: ' + e.message; }
    }
    byReq.set(req, rec);
    requests.push(rec);
  });
  page.on('requestfinished', async (req) => {
    const rec = byReq.get(req);
    if (!rec) return;
    const res = await req.response();
    rec.status = res ? res.status() : null;
    const acao = res ? (await res.allHeaders())['access-control-allow-origin'] : undefined;
    rec.cors = acao ?? null;
    rec.cors_ok = acao === pageOrigin || acao === '*';
  });
  page.on('requestfailed', (req) => {
    const rec = byReq.get(req);
    if (rec) rec.error = req.failure()?.errorText || 'failed';
  });
}

async function collectSent(page, into) {
  const sent = await page.evaluate(() => window.__sent);
  for (const ev of sent) if (!into.some((e) => e.uuid === ev.uuid)) into.push(ev);
  return into;
}

// Wait until every event the SDK produced was in a capture request the daemon answered 200.
async function waitDelivered(page, requests, sent, what) {
  await collectSent(page, sent);
  const delivered = () => {
    const ok = new Set();
    for (const r of requests) if (r.status === 200) for (const e of r.events) ok.add(e.uuid);
    return sent.filter((e) => !ok.has(e.uuid));
  };
  try {
    await waitFor(async () => { await collectSent(page, sent); return delivered().length === 0; },
      DELIVERY_TIMEOUT_MS, what);
    check(FLOW, `${what}: every event so far (${sent.length}) acknowledged with 200`, true);
  } catch (e) {
    const pending = delivered().map((x) => x.event);
    const recent = requests.filter((r) => r.status !== 200).slice(-5)
      .map((r) => `${r.method} ${r.path} status=${r.status} error=${r.error} cors=${r.cors}`);
    check(FLOW, `${what}: every event so far (${sent.length}) acknowledged with 200`, false,
      `undelivered ${JSON.stringify(pending)}; non-200 requests: ${JSON.stringify(recent)}`);
  }
}

// No request to the daemon in flight, and none started for QUIET_MS (so a reload aborts
// nothing): posthog-js starts some requests a moment after the call that causes them (reset()
// reloads the feature flags), and a reload at that moment aborted a /flags/ request
// (net::ERR_ABORTED) on a slow host.
const QUIET_MS = 500;
async function waitIdle(requests, what) {
  let seen = -1;
  let since = Date.now();
  const quiet = () => {
    const open = requests.some((r) => r.status === null && r.error === null);
    if (open || requests.length !== seen) {
      seen = requests.length;
      since = Date.now();
      return false;
    }
    return Date.now() - since >= QUIET_MS;
  };
  try {
    await waitFor(quiet, DELIVERY_TIMEOUT_MS, what);
  } catch (e) {
    const open = requests.filter((r) => r.status === null && r.error === null).map((r) => `${r.method} ${r.path}`);
    check(FLOW, `${what}: daemon answered every request`, false, JSON.stringify(open));
  }
}

async function openPage(context, pageUrl, requests, pageOrigin, consoleLines) {
  const page = await context.newPage();
  recordNetwork(page, requests, pageOrigin);
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') consoleLines.push(`${m.type()}: ${m.text()}`); });
  page.on('pageerror', (e) => consoleLines.push('pageerror: ' + e.message));
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.__loaded === true, null, { timeout: 15000 });
  return page;
}

async function runMain(browser, base) {
  const token = 'phc_sdk_js';
  const requests = []; const sent = []; const consoleLines = [];
  const context = await browser.newContext();
  const pageUrl = `${base}/shop?token=${token}&api=${encodeURIComponent(daemon.url)}`;
  let page = await openPage(context, pageUrl, requests, base, consoleLines);
  const a1 = await page.evaluate(() => posthog.get_distinct_id());
  await page.evaluate(() => posthog.capture('viewed_pricing', { plan_viewed: 'pro' }));
  await waitDelivered(page, requests, sent, 'main: anonymous events of A1');
  // Each identify() is delivered before the events after it are sent: the checker feeds the
  // model the events in the order their requests started, which two requests in flight at once
  // do not fix (the daemon may take either first; a gzip run once had `done` processed before
  // the `$identify` sent 5 ms earlier, so `done` created the person).
  await page.evaluate(() => {
    posthog.identify('user-js-1', { email: 'max@hedgehogmail.com', name: 'Max Hedgehog' }, { signup_source: 'browser' });
  });
  await waitDelivered(page, requests, sent, 'main: identify user-js-1');
  await page.evaluate(() => {
    posthog.capture('purchase', { amount: 42 });
    posthog.setPersonProperties({ plan: 'pro' }, { first_purchase: '2024-05-01' });
  });
  await waitDelivered(page, requests, sent, 'main: identify user-js-1 and its events');
  const afterIdentify = await page.evaluate(() => posthog.get_distinct_id());
  check(FLOW, 'main: after identify() the SDK uses the new distinct ID', afterIdentify === 'user-js-1', afterIdentify);
  // a second user on the same browser
  await page.evaluate(() => posthog.reset());
  await collectSent(page, sent);
  await waitIdle(requests, 'main: before reload');
  await page.reload();
  await page.waitForFunction(() => window.__loaded === true, null, { timeout: 15000 });
  const a2 = await page.evaluate(() => posthog.get_distinct_id());
  check(FLOW, 'main: reset() gives a new anonymous distinct ID', a2 && a2 !== a1 && a2 !== 'user-js-1', `${a1} -> ${a2}`);
  await page.evaluate(() => posthog.capture('viewed_pricing', { plan_viewed: 'team' }));
  await waitDelivered(page, requests, sent, 'main: anonymous events of A2');
  await page.evaluate(() => posthog.identify('user-js-2', { email: 'second@example.com' }));
  await waitDelivered(page, requests, sent, 'main: identify user-js-2');
  await page.evaluate(() => posthog.capture('purchase', { amount: 7 }));
  await waitDelivered(page, requests, sent, 'main: identify user-js-2 and its events');
  await page.close();
  await context.close();
  return {
    name: 'main', token, requests, sent, console: consoleLines,
    ids: [['user-js-1', a1], ['user-js-2', a2]],
    props: {
      'user-js-1': { email: 'max@hedgehogmail.com', name: 'Max Hedgehog', signup_source: 'browser', plan: 'pro',
        first_purchase: '2024-05-01', $browser: 'Chrome', $initial_pathname: '/shop' },
      'user-js-2': { email: 'second@example.com', name: null, plan: null },  // null: absent
    },
  };
}

async function runGzip(browser, base) {
  const token = 'phc_sdk_js_gzip';
  const requests = []; const sent = []; const consoleLines = [];
  const context = await browser.newContext();
  let configSeen = null;
  // Ask the daemon for the real config, then add supportedCompression as PostHog Cloud does.
  await context.route(`${daemon.url}/array/**`, async (route) => {
    const res = await route.fetch();
    let body = {};
    try { body = await res.json(); } catch { body = {}; }
    configSeen = { status: res.status(), body };
    if (res.status() !== 200 || route.request().url().includes('config.js')) return route.fulfill({ response: res });
    const merged = { ...body, supportedCompression: ['gzip', 'gzip-js'] };
    return route.fulfill({ response: res, json: merged });
  });
  const pageUrl = `${base}/shop?token=${token}&api=${encodeURIComponent(daemon.url)}`;
  const page = await openPage(context, pageUrl, requests, base, consoleLines);
  const a3 = await page.evaluate(() => posthog.get_distinct_id());
  await waitDelivered(page, requests, sent, 'gzip: anonymous $pageview of A3');
  await page.evaluate(() => posthog.identify('user-js-3', { email: 'three@example.com' }));
  await waitDelivered(page, requests, sent, 'gzip: identify user-js-3');
  await page.evaluate(() => posthog.capture('done', {}));
  await waitDelivered(page, requests, sent, 'gzip: identify user-js-3 and its events');
  await page.close();
  await context.close();
  return {
    name: 'gzip', token, requests, sent, console: consoleLines, config_seen: configSeen,
    ids: [['user-js-3', a3]], expect_gzip_magic: true,
    props: { 'user-js-3': { email: 'three@example.com' } },
  };
}

function checkTransport(ctx) {
  const tag = `${ctx.name}`;
  const caps = ctx.requests.filter((r) => r.method === 'POST' && /^\/(e|batch|capture|i\/v0\/e)\/?(\?|$)/.test(r.path));
  const cfg = ctx.requests.filter((r) => r.method === 'GET' && /^\/array\/[^/]+\/config\/?(\?|$)/.test(r.path));
  const cfgJs = ctx.requests.filter((r) => r.method === 'GET' && /^\/array\/[^/]+\/config\.js/.test(r.path));
  const flags = ctx.requests.filter((r) => r.method === 'POST' && /^\/(flags|decide)\//.test(r.path));
  check(FLOW, `${tag}: posthog-js sent its events to the daemon (${caps.length} capture requests)`, caps.length > 0, '');
  const noCors = ctx.requests.filter((r) => r.status !== null && !r.cors_ok && !/config\.js/.test(r.path)).map((r) => `${r.method} ${r.path} -> ${r.status} ACAO=${r.cors}`);
  check(FLOW, `${tag}: every daemon answer carries Access-Control-Allow-Origin for the page`, noCors.length === 0, JSON.stringify(noCors.slice(0, 5)));
  const cfgBad = cfg.filter((r) => r.status !== 200).map((r) => `${r.path} -> ${r.status} ${r.error || ''}`);
  const gotConfig = cfg.some((r) => r.status === 200) || cfgJs.some((r) => r.status === 200);
  check(FLOW, `${tag}: the SDK got its remote config (GET /array/<token>/config: ${cfg.length}, config.js: ${cfgJs.length} requests)`,
    gotConfig && cfgBad.length === 0, `config: ${JSON.stringify(cfgBad)}; config.js: ${JSON.stringify(cfgJs.map((r) => r.status))}`);
  console.log(`INFO ${FLOW}: ${tag}: GET /array/<token>/config.js answered ${JSON.stringify(cfgJs.map((r) => r.status))} (not in api.md; posthog-js falls back to /config)`);
  const flagsBad = flags.filter((r) => r.status !== 200).map((r) => `${r.path} -> ${r.status} ${r.error || ''}`);
  check(FLOW, `${tag}: POST /flags/ answered 200 (${flags.length} requests)`, flags.length > 0 && flagsBad.length === 0, JSON.stringify(flagsBad));
  const failed = ctx.requests.filter((r) => r.error).map((r) => `${r.method} ${r.path}: ${r.error}`);
  check(FLOW, `${tag}: no request to the daemon failed in the browser`, failed.length === 0, JSON.stringify(failed.slice(0, 5)));
  const noJs = ctx.sent.filter((e) => e.properties?.$lib !== 'web');
  check(FLOW, `${tag}: events come from posthog-js ${sdkVersion} ($lib web)`, noJs.length === 0 && ctx.sent.length > 0, JSON.stringify(noJs.slice(0, 2)));
}

let browser; let browserServer; let server;
async function cleanup() {
  try { if (browser) await browser.close(); } catch { /* already gone */ }
  try { if (browserServer) await browserServer.close(); } catch { /* already gone */ }
  try { if (server) server.close(); } catch { /* ignore */ }
}
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, async () => { await cleanup(); process.exit(130); });

let exitCode = 0;
try {
  server = await servePage();
  const base = `http://127.0.0.1:${server.address().port}`;
  // launchServer (not launch) so that the browser's pid is known: run.sh's exit trap kills that
  // process group if this script dies without closing it.
  browserServer = await chromium.launchServer({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const bpid = browserServer.process()?.pid;
  if (bpid) fs.appendFileSync(path.join(state, 'chromium.pids'), `${bpid}\n`);
  browser = await chromium.connect(browserServer.wsEndpoint());
  const contexts = [];
  for (const run of [runMain, runGzip]) {
    try {
      contexts.push(await run(browser, base));
    } catch (e) {
      check(FLOW, `${run.name} ran to completion`, false, String(e?.stack || e).split('\n').slice(0, 3).join(' | '));
    }
  }
  await cleanup();
  for (const ctx of contexts) {
    checkTransport(ctx);
    if (ctx.console.length) console.log(`INFO ${FLOW}: ${ctx.name} browser console: ${JSON.stringify(ctx.console.slice(0, 8))}`);
  }
  const out = path.join(state, 'browser_sent.json');
  writeJson(out, { flow: FLOW, sdk_version: sdkVersion, contexts });
  exitCode = runChecker(here, FLOW, state, out);
} catch (e) {
  check(FLOW, 'browser flow ran to completion', false, String(e?.stack || e).split('\n').slice(0, 4).join(' | '));
  exitCode = 1;
} finally {
  await cleanup();
}
process.exit(exitCode);
