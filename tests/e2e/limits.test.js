// Bounded resources and the admin listener (issue 10, points 3-5), over raw sockets against the
// built binary. Tests of a setting start their own instance with a config file; the rest use the
// default configuration.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';

import { sleep, useHarness } from './harness.js';

const h = useHarness();

/** An instance with `[server]` settings from `toml` (a test about a setting). */
async function proxyWith(name, toml) {
  const file = join(h.tmp(name), 'tollgate.toml');
  writeFileSync(file, `[server]\n${toml}\n`);
  return h.startProxy({ name, args: ['--config', file] });
}

/**
 * Opens a connection (from `localAddress` when given), writes `bytes` and collects what comes
 * back until the peer closes or `waitMs` passes: { data, closed, ms }.
 */
function exchange(url, bytes, { waitMs = 2000, localAddress } = {}) {
  const { port } = new URL(url);
  return new Promise((resolve) => {
    const started = Date.now();
    const sock = connect({ host: '127.0.0.1', port: Number(port), localAddress });
    let data = '';
    let done = false;
    const finish = (closed) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ data, closed, ms: Date.now() - started });
    };
    const timer = setTimeout(() => finish(false), waitMs);
    sock.on('connect', () => bytes && sock.write(bytes));
    sock.on('data', (d) => (data += d.toString('latin1')));
    sock.on('end', () => finish(true));
    sock.on('close', () => finish(true));
    sock.on('error', () => finish(true));
  });
}

const status = (data) => Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0);

test('the public listener serves the API only; /metrics, /healthz and /readyz are on the admin listener', async () => {
  for (const path of ['/metrics', '/healthz', '/readyz']) {
    const r = await fetch(`${h.url}${path}`);
    assert.equal(r.status, 404, `${path} on the public listener`);
    await r.arrayBuffer();
  }
  const metrics = await fetch(`${h.adminUrl}/metrics`);
  assert.equal(metrics.status, 200);
  assert.match(await metrics.text(), /^tollgate_requests_total \d+$/m);
  const ready = await fetch(`${h.adminUrl}/readyz`);
  assert.equal(ready.status, 200);
  assert.deepEqual(await ready.json(), { status: 'ready' });
  const health = await fetch(`${h.adminUrl}/healthz`);
  assert.equal(health.status, 200);
  await health.arrayBuffer();
});

test('a client that sends its head one byte a second is answered 408 and closed at the 10 s header deadline', async () => {
  const { port } = new URL(h.url);
  const started = Date.now();
  const head = 'GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n';
  const result = await new Promise((resolve) => {
    const sock = connect({ host: '127.0.0.1', port: Number(port) });
    let data = '';
    let i = 0;
    const drip = setInterval(() => {
      if (i < head.length) sock.write(head[i++]);
    }, 1000);
    sock.on('data', (d) => (data += d.toString('latin1')));
    const end = () => {
      clearInterval(drip);
      resolve({ data, ms: Date.now() - started });
    };
    sock.on('close', end);
    sock.on('error', () => {});
  });
  assert.equal(status(result.data), 408, result.data);
  assert.match(result.data, /"code":"request_timeout"/);
  assert.ok(result.ms >= 9_500 && result.ms < 13_000, `closed after ${result.ms} ms`);
  // the server still serves everyone else
  const r = await fetch(`${h.url}/v1/models`, { headers: { authorization: `Bearer ${h.key}` } });
  assert.equal(r.status, 200);
  await r.arrayBuffer();
}, { timeout: 20_000 });

test('max_connections_per_address: connections above the cap are closed at accept; other addresses are served', async () => {
  const p = await proxyWith('per-address', 'max_connections_per_address = 4');
  const { port } = new URL(p.url);
  const socks = await Promise.all(
    Array.from({ length: 4 }, () => new Promise((res) => {
      const s = connect({ host: '127.0.0.1', port: Number(port) }, () => res(s));
    })),
  );
  await sleep(100);
  const over = await exchange(p.url, 'GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n', { waitMs: 2000 });
  assert.ok(over.closed && over.data === '', `the fifth connection got ${JSON.stringify(over.data.slice(0, 60))}`);
  const other = await exchange(p.url, 'GET /v1/models HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n',
    { localAddress: '127.0.0.2' });
  assert.equal(status(other.data), 401, 'another address is served');
  for (const s of socks) s.destroy();
  await sleep(100);
  const again = await exchange(p.url, 'GET /v1/models HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
  assert.equal(status(again.data), 401, 'slots are given back when connections close');
});

test('max_connections: above the cap a connection gets 503 overloaded with Retry-After, at accept', async () => {
  const p = await proxyWith('total-cap', 'max_connections = 3');
  const { port } = new URL(p.url);
  const socks = await Promise.all(
    Array.from({ length: 3 }, () => new Promise((res) => {
      const s = connect({ host: '127.0.0.1', port: Number(port) }, () => res(s));
    })),
  );
  await sleep(100);
  const over = await exchange(p.url, null);
  assert.equal(status(over.data), 503, over.data);
  assert.match(over.data, /\r\nRetry-After: 1\r\n/);
  assert.match(over.data, /"code":"overloaded"/);
  assert.ok(over.closed);
  for (const s of socks) s.destroy();
  const metrics = await (await fetch(`${p.adminUrl}/metrics`)).text();
  assert.match(metrics, /^tollgate_connections_refused_total\{cap="total"\} [1-9]/m);
});

test('max_requests_per_connection: the last answer says Connection: close and the connection ends', async () => {
  const p = await proxyWith('requests-per-conn', 'max_requests_per_connection = 3');
  const one = 'GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n';
  const r = await exchange(p.url, one.repeat(5), { waitMs: 3000 });
  const answers = r.data.match(/HTTP\/1\.1 \d{3} /g) || [];
  assert.equal(answers.length, 3, r.data);
  assert.equal((r.data.match(/\r\nConnection: close\r\n/gi) || []).length, 1);
  assert.ok(r.closed, 'the connection stays open after the third answer');
});

test('max_queued_requests: a saturated event loop sheds at once with 503 overloaded and Retry-After', async () => {
  const p = await proxyWith('shed', 'threads = 1\nmax_queued_requests = 1');
  const body = JSON.stringify({ model: h.model, max_tokens: 5, messages: [{ role: 'user', content: 'x' }] });
  const results = await Promise.all(
    Array.from({ length: 40 }, async () => {
      const res = await fetch(`${p.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${h.key}`, 'content-type': 'application/json' },
        body,
      });
      return { status: res.status, retry: res.headers.get('retry-after'), text: await res.text() };
    }),
  );
  const shed = results.filter((r) => r.status === 503);
  assert.ok(results.every((r) => r.status === 200 || r.status === 503), JSON.stringify(results.map((r) => r.status)));
  assert.ok(shed.length > 0 && results.some((r) => r.status === 200), `statuses ${results.map((r) => r.status)}`);
  for (const r of shed) {
    assert.equal(JSON.parse(r.text).error.code, 'overloaded');
    assert.equal(r.retry, '1');
  }
});
