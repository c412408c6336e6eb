// posthog-node retries against idstitch: the daemon is killed while the SDK flushes, restarted on
// the same port and data dir, and an acknowledged batch whose answer is lost is resent.
// Same phases as retries_flow.py (see lib/retries.py); the checks run in check_recorded.py.
//
// Usage: node node_retries_flow.mjs STATE_DIR
import { PostHog } from 'posthog-node';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeRecordingFetch, writeJson } from './lib/recorder.mjs';
import { readDaemon, runChecker, ctl, waitFor, check } from './lib/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const state = process.argv[2];
const daemon = readDaemon(state);
const TOKEN = 'phc_sdk_retry_node';
const FLOW = 'retries/node';

const requests = [];
const sent = [];
const phases = {};
function client(host) {
  const c = new PostHog(TOKEN, {
    host, flushAt: 1000, flushInterval: 0,
    fetchRetryCount: 40, fetchRetryDelay: 250,   // up to ~10 s of retries
    requestTimeout: 5000,
    fetch: makeRecordingFetch(requests),
  });
  return c;
}
// capture() with our own uuid, so we know which events each phase sent
function capture(c, props) {
  const uuid = crypto.randomUUID();
  c.capture({ ...props, uuid });
  return uuid;
}
const tick = () => new Promise((r) => setTimeout(r, 0));
const sameUuids = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

let proxy = null;
let exitCode = 0;
try {
  const ph = client(daemon.url);
  const base = capture(ph, { distinctId: 'retry-anon', event: '$pageview', properties: { $set: { phase: 'before' } } });
  phases.baseline = [base];
  await tick(); await ph.flush();

  // outage: kill, flush, restart on the same port and data dir
  ctl('kill', state);
  const outage = [
    capture(ph, { distinctId: 'retry-user', event: '$identify', properties: {
      $anon_distinct_id: 'retry-anon', $set: { phase: 'outage', email: 'retry@example.com' } } }),
    capture(ph, { distinctId: 'retry-user', event: 'clicked', properties: { n: 1 } }),
    capture(ph, { distinctId: 'retry-user', event: 'clicked', properties: { n: 2 } }),
  ];
  phases.outage = outage;
  await tick();
  const flushing = ph.flush().then(() => 'ok', (e) => 'error: ' + (e?.message || e));
  await waitFor(() => requests.some((r) => r.error && sameUuids(r.events.map((e) => e.uuid), outage)), 15000,
    'a failed upload attempt while the daemon is down');
  ctl('start', state);
  const flushResult = await flushing;
  check(FLOW, 'the flush begun during the outage succeeded after the restart', flushResult === 'ok', flushResult);
  await ph.shutdown();

  // lost answer
  const plog = path.join(state, 'retries_node_proxy.jsonl');
  const pport = path.join(state, 'retries_node_proxy.port');
  proxy = spawn(process.env.SDK_PYTHON || 'python3', [path.join(here, 'lib', 'dropproxy.py'),
    '--upstream', String(daemon.port), '--drop', '1', '--log', plog, '--port-file', pport], { stdio: 'inherit' });
  await waitFor(() => fs.existsSync(pport), 10000, 'the proxy to listen');
  const ph2 = client(`http://127.0.0.1:${fs.readFileSync(pport, 'utf8').trim()}`);
  const lost = [
    capture(ph2, { distinctId: 'retry-user', event: 'purchase', properties: {
      amount: 5, $set: { phase: 'lost' }, $set_once: { first_lost: 'a' } } }),
    capture(ph2, { distinctId: 'retry-user', event: 'purchase', properties: { amount: 6, $set_once: { first_lost: 'b' } } }),
  ];
  phases.lost = lost;
  await tick(); await ph2.flush();
  await ph2.shutdown();

  // events in the order they were first put on the wire
  const seen = new Set();
  for (const r of requests) for (const e of r.events) if (!seen.has(e.uuid)) { seen.add(e.uuid); sent.push(e); }
  const attempts = requests.filter((r) => r.method === 'POST')
    .map((r) => ({ uuids: r.events.map((e) => e.uuid), status: r.status, error: r.error }));
  const out = path.join(state, 'node_retries_sent.json');
  writeJson(out, { flow: 'node_retries', token: TOKEN, sent, phases, attempts, proxy_log: plog });
  exitCode = runChecker(here, 'node_retries', state, out);
} catch (e) {
  check(FLOW, 'retries flow ran to completion', false, String(e?.stack || e).split('\n').slice(0, 3).join(' | '));
  exitCode = 1;
} finally {
  if (proxy) proxy.kill('SIGTERM');
}
process.exit(exitCode);
