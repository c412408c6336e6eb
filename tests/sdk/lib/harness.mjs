// Small helpers shared by the node and browser flows.
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';

export function readDaemon(state) {
  if (!state) throw new Error('usage: node <flow>.mjs STATE_DIR');
  const port = Number(fs.readFileSync(path.join(state, 'port'), 'utf8').trim());
  const adminKey = fs.readFileSync(path.join(state, 'admin.key'), 'utf8').trim();
  return { state, port, adminKey, url: `http://127.0.0.1:${port}` };
}

// lib/daemon.sh start|kill|stop STATE
export function ctl(cmd, state) {
  const script = process.env.IDSTITCH_CTL || path.join(path.dirname(new URL(import.meta.url).pathname), 'daemon.sh');
  const r = spawnSync(script, [cmd, state], { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error(`daemon.sh ${cmd} failed (exit ${r.status})`);
}

// The checks are written once, in Python (lib/spec_model.py, lib/checks.py): hand over.
export function runChecker(here, flow, state, file) {
  const py = process.env.SDK_PYTHON || 'python3';
  const r = spawnSync(py, [path.join(here, 'check_recorded.py'), flow, state, file], { stdio: 'inherit' });
  if (r.error) { console.log(`FAIL ${flow}: checker could not run -- ${r.error.message}`); return 1; }
  return r.status ?? 1;
}

export async function waitFor(pred, timeoutMs, what, intervalMs = 25) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export function pass(flow, what) { console.log(`PASS ${flow}: ${what}`); }
export function fail(flow, what, detail) { console.log(`FAIL ${flow}: ${what} -- ${detail}`); }
export function check(flow, what, ok, detail = '') { (ok ? pass : fail)(flow, what, detail); return ok; }
