// The suite's HTTP client and load driver (node:http only, no npm packages): one request with
// its status, error code, request id, content events received and duration; a closed-loop
// load of N workers; percentiles.
import http from 'node:http';
import { performance } from 'node:perf_hooks';

/** A keep-alive agent; `localAddress` picks the client's source address (e.g. 127.0.0.2). */
export const agent = ({ maxSockets = 64, localAddress } = {}) =>
  new http.Agent({ keepAlive: true, maxSockets, ...(localAddress ? { localAddress } : {}) });

/** An OpenAI chat body; the stub reads stub_* fields (bench/stub/README.md). */
export function chatBody(model, { stream = false, maxTokens = 16, chunks, intervalMs, latencyMs, content = 'fault suite' } = {}) {
  const b = { model, messages: [{ role: 'user', content }], max_tokens: maxTokens, stream };
  if (chunks !== undefined) b.stub_chunks = chunks;
  if (intervalMs !== undefined) b.stub_interval_ms = intervalMs;
  if (latencyMs !== undefined) b.stub_latency_ms = latencyMs;
  return b;
}

/**
 * POSTs `body` (an object, or a string sent as is) to `${base}/v1/chat/completions` with the key. Resolves (never
 * rejects) { status (0 = no response), error, code (OpenAI error code), requestId, events
 * (SSE data events with content), ms, aborted, text (the first 4 KiB), lastEvent (SSE) }. `abortAfterEvents`: destroy the socket
 * once that many content events arrived (a client abort mid-stream). `timeoutMs`: give up.
 */
export function send({ base, key, body, agent: ag, localAddress, timeoutMs = 30_000, abortAfterEvents, path = '/v1/chat/completions' }) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const data = typeof body === 'string' ? body : JSON.stringify(body);  // a string: sent as is (duplicate keys)
    const out = { status: 0, error: null, code: null, requestId: null, events: 0, ms: 0, aborted: false, text: '' };
    let done = false;
    const finish = (extra = {}) => {
      if (done) return;
      done = true;
      Object.assign(out, extra);
      out.ms = performance.now() - t0;
      resolve(out);
    };
    let req;
    try {
      req = http.request(`${base}${path}`, {
        method: 'POST', agent: ag, ...(localAddress && !ag ? { localAddress } : {}),
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) },
      });
    } catch (e) {
      finish({ error: e.code || e.message });
      return;
    }
    const timer = setTimeout(() => { req.destroy(); finish({ error: 'client_timeout' }); }, timeoutMs);
    req.on('error', (e) => { clearTimeout(timer); finish({ error: e.code || e.message }); });
    req.on('response', (res) => {
      out.status = res.statusCode;
      out.requestId = res.headers['x-request-id'] || null;
      const sse = /text\/event-stream/.test(res.headers['content-type'] || '');
      let pending = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        if (!sse) { out.text += chunk; return; }
        pending += chunk;
        let i;
        while ((i = pending.indexOf('\n\n')) >= 0) {
          const ev = pending.slice(0, i);
          pending = pending.slice(i + 2);
          if (/"(content|text)":"[^"]/.test(ev)) ++out.events;
          if (out.text.length < 4096) out.text += `${ev}\n\n`;
          out.lastEvent = ev;
          if (abortAfterEvents && out.events >= abortAfterEvents) {
            clearTimeout(timer);
            req.destroy();
            finish({ aborted: true });
            return;
          }
        }
      });
      res.on('end', () => {
        clearTimeout(timer);
        if (!sse && out.status >= 400) {
          try { out.code = JSON.parse(out.text).error?.code ?? null; } catch { /* not JSON */ }
        }
        finish();
      });
      res.on('error', (e) => { clearTimeout(timer); finish({ error: e.code || e.message }); });
      res.on('aborted', () => { clearTimeout(timer); finish({ error: 'response_aborted' }); });
    });
    req.end(data);
  });
}

/**
 * Closed-loop load: `workers` loops, each calling `next(i, n)` for the request options of its
 * n-th request and awaiting send(), then pausing `pauseMs`, until stop() is called. Returns
 * {results, stop, done, t0}: results gets {…send result, t (ms since t0), worker, stream, and
 * the options' `tag`}.
 */
export function load({ workers, next, pauseMs = 0 }) {
  const results = [];
  let stopping = false;
  const t0 = performance.now();
  const loops = [];
  for (let w = 0; w < workers; ++w) {
    loops.push((async () => {
      for (let n = 0; !stopping; ++n) {
        const opts = next(w, n);
        const t = performance.now() - t0;
        const r = await send(opts);
        results.push({ ...r, t, worker: w, stream: !!opts.body.stream, tag: opts.tag });
        const pause = r.status === 0 ? Math.max(pauseMs, 20) : pauseMs;  // down: do not spin
        if (pause) await new Promise((s) => setTimeout(s, pause));
      }
    })());
  }
  const done = Promise.all(loops);
  return { results, stop: () => { stopping = true; return done; }, done, t0 };
}

/** Percentile q (0..1) of numbers, nearest-rank. */
export function pct(values, q) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

/** "200×812 503×12 ECONNREFUSED×3" from results. */
export function statusCounts(results) {
  const c = new Map();
  for (const r of results) {
    const k = r.status ? `${r.status}${r.code ? ` ${r.code}` : ''}${r.error ? ` then ${r.error}` : ''}${r.aborted ? ' (client abort)' : ''}`
                       : (r.error || 'no response');
    c.set(k, (c.get(k) || 0) + 1);
  }
  return [...c.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}×${v}`).join(', ') || 'none';
}

export const fmtMs = (v) => (Number.isFinite(v) ? `${v.toFixed(v < 10 ? 2 : 1)} ms` : 'n/a');
