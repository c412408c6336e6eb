// posthog-node against idstitch: the scenario of lib/scenario.py with posthog-node's own calls
// (identify, alias, setPersonProperties, unsetPersonProperties, groupIdentify, capture).
// gzip is posthog-node's default (Content-Encoding: gzip on every POST /batch/).
//
// Usage: node node_flow.mjs STATE_DIR
// Records every request the SDK makes (custom `fetch` option), writes STATE_DIR/node_sent.json,
// then runs check_recorded.py, which compares the daemon with identity.md.
import { PostHog } from 'posthog-node';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeRecordingFetch, writeJson } from './lib/recorder.mjs';
import { readDaemon, runChecker } from './lib/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const state = process.argv[2];
const daemon = readDaemon(state);
const TOKEN = 'phc_sdk_node';

const requests = [];
const errors = [];
const client = new PostHog(TOKEN, {
  host: daemon.url,
  flushAt: 1000,          // we flush ourselves, so requests go out in a known order
  flushInterval: 0,
  fetchRetryCount: 2,
  fetchRetryDelay: 200,
  fetch: makeRecordingFetch(requests),
});
client.on('error', (e) => errors.push(String(e?.message || e)));

// Let queued calls reach the queue (they pass through a promise), then send them in one request.
async function send() {
  await new Promise((r) => setTimeout(r, 0));
  try {
    await client.flush();
  } catch (e) {
    errors.push(`flush: ${e?.message || e}`);   // reported by the checker; keep going
  }
}

// 1
client.capture({ distinctId: 'anon-1', event: '$pageview', properties: {
  $current_url: 'https://shop.example/landing', $pathname: '/landing',
  $set: { plan: 'free' }, $set_once: { first_seen: 'landing' } } });
await send();
// 2: one $set event carrying both $set and $set_once
client.setPersonProperties({ distinctId: 'anon-1', properties: { plan: 'trial', color: 'red' },
  propertiesOnce: { first_seen: 'later', source: 'ads' } });
await send();
// 3
client.identify({ distinctId: 'user-1', properties: {
  $anon_distinct_id: 'anon-1',
  $set: { email: 'max@hedgehogmail.com', name: 'Max Hedgehog' },
  $set_once: { signup_date: '2024-01-01' } } });
await send();
// 4
client.unsetPersonProperties({ distinctId: 'user-1', properties: ['color'] });
client.capture({ distinctId: 'user-1', event: 'purchase', properties: { amount: 10 } });
client.setPersonProperties({ distinctId: 'user-1', properties: { plan: 'trial' } });
await send();
// 5: with a distinct ID, and without one (posthog-node then uses "$<type>_<key>")
client.groupIdentify({ groupType: 'company', groupKey: 'acme',
  properties: { name: 'Acme Inc', employees: 11 }, distinctId: 'user-1' });
client.groupIdentify({ groupType: 'company', groupKey: 'globex', properties: { name: 'Globex' } });
await send();
// 6: alias merges two unidentified persons
client.capture({ distinctId: 'anon-2', event: 'signed_up', properties: {
  $set: { plan: 'pro', shared: 'from-anon-2', only_anon_2: 1 } } });
client.capture({ distinctId: 'user-2', event: 'logged_in', properties: {
  $set: { shared: 'from-user-2', email: 'second@example.com' } } });
await send();
client.alias({ distinctId: 'user-2', alias: 'anon-2' });
await send();
// 7: alias onto an identified person is refused
client.alias({ distinctId: 'user-1', alias: 'user-2' });
await send();
// 8
client.identify({ distinctId: 'user-3', properties: { $anon_distinct_id: 'anon-3', $set: { team: 'red', d: 1 } } });
client.identify({ distinctId: 'user-4', properties: { $anon_distinct_id: 'anon-4', $set: { team: 'blue', e: 1 } } });
await send();
client.capture({ distinctId: 'user-3', event: '$merge_dangerously', properties: { alias: 'user-4', $set: { merged: true } } });
await send();
// 9-13 in one batch (array order is processing order)
client.identify({ distinctId: 'user-5', properties: { $anon_distinct_id: 'null', k: 'v' } });
client.identify({ distinctId: 'user-6', properties: { x: 1 } });
client.identify({ distinctId: 'user-7', properties: { $anon_distinct_id: 'user-7' } });
client.capture({ event: 'viewed_docs', properties: { page: '/docs' } });                 // personless
client.capture({ event: '$identify', properties: { $anon_distinct_id: 'anon-9' } });      // personless $identify
client.capture({ distinctId: 'anon-10', event: '$pageview', properties: {
  $process_person_profile: false, $current_url: 'https://shop.example/' } });
client.identify({ distinctId: 'user-10', properties: { $anon_distinct_id: 'anon-10', email: 'ten@example.com' } });
client.capture({ distinctId: 'anon-11', event: 'clicked', properties: { $process_person_profile: 'false' } });
await send();
try { await client.shutdown(); } catch (e) { errors.push(`shutdown: ${e?.message || e}`); }

writeJson(path.join(state, 'node_sent.json'), { flow: 'node', token: TOKEN, requests, sdk_errors: errors });
process.exit(runChecker(here, 'node', state, path.join(state, 'node_sent.json')));
