// Record what an SDK puts on the wire: a fetch() wrapper for posthog-node (its `fetch` option).
// Each request becomes {path, method, content_type, content_encoding, body_encoding, status,
// error, events}. Bodies are decoded the way the daemon must decode them (api.md): gzip by
// Content-Encoding or magic bytes, `data=<base64>` forms, plain JSON.
import zlib from 'node:zlib';
import fs from 'node:fs';

export function decodeBody(buf, headers = {}, url = '') {
  const h = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  let encoding = 'json';
  let b = Buffer.from(buf);
  if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) {
    b = zlib.gunzipSync(b);
    encoding = h['content-encoding'] === 'gzip' ? 'gzip (Content-Encoding)' : 'gzip (magic bytes, no Content-Encoding)';
  }
  let text = b.toString('utf8');
  if (text.startsWith('data=')) {
    text = Buffer.from(decodeURIComponent(text.slice(5).replace(/\+/g, ' ')), 'base64').toString('utf8');
    encoding = 'form data=<base64>';
  } else if (/[?&]compression=base64/.test(url) && !text.startsWith('{') && !text.startsWith('[')) {
    text = Buffer.from(text, 'base64').toString('utf8');
    encoding = 'base64';
  }
  return { encoding, json: JSON.parse(text) };
}

export function eventsOf(json) {
  if (Array.isArray(json)) return json;
  if (json && Array.isArray(json.batch)) return json.batch;
  if (json && typeof json === 'object' && json.event) return [json];
  return [];
}

export function makeRecordingFetch(log, { onAttempt } = {}) {
  return async (url, options = {}) => {
    const u = new URL(url);
    const headers = { ...(options.headers || {}) };
    const rec = {
      path: u.pathname + u.search, method: options.method || 'GET',
      content_type: headers['Content-Type'] || headers['content-type'] || null,
      content_encoding: headers['Content-Encoding'] || headers['content-encoding'] || null,
      body_encoding: null, status: null, error: null, events: [],
    };
    if (options.body) {
      try {
        const raw = options.body instanceof Uint8Array || Buffer.isBuffer(options.body)
          ? options.body : Buffer.from(String(options.body));
        const { encoding, json } = decodeBody(raw, headers, url);
        rec.body_encoding = encoding;
        rec.events = eventsOf(json);
      } catch (e) { rec.body_encoding = 'undecodable: ' + e.message; }
    }
    log.push(rec);
    try {
      const res = await fetch(url, options);
      rec.status = res.status;
      if (onAttempt) onAttempt(rec);
      return res;
    } catch (e) {
      rec.error = String(e?.cause?.code || e?.cause?.message || e?.message || e);
      if (onAttempt) onAttempt(rec);
      throw e;
    }
  };
}

export function writeJson(path, obj) {
  fs.writeFileSync(path, JSON.stringify(obj, null, 1));
}
