// Honest overload (issue 10, point 4), with tollgate's DEFAULT admission deadline (50 ms; the
// harness' 2 s lengthening is switched off): three instances share one Redis and one Postgres.
//  - Redis healthy: 1,000 requests at once at a key limited to 100/min give exactly 100 × 200 and
//    900 × 429, no 503: the deadline measures Redis, not the instances' own queues.
//  - Redis paused (SIGSTOP): every request that needs Redis gets 503 rate_limiter_unavailable
//    within the deadline plus SLACK_MS. (Requests on the first key would not: tollgate knows that
//    key's window is full until its oldest bucket leaves and answers 429 without Redis. So this
//    burst uses a second key of the account, which is under its limits.)
// Each request has a TCP connection of its own, 334/333/333 on the three instances (below the
// per-address cap of 512 and the per-loop queue of 1,024): tollgate-burst (tests/tools/burst.cpp)
// opens the 1,000 connections, then writes the 1,000 requests at once and reads every answer.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { lit, psql, useHarness } from './harness.js';

const h = useHarness({ defaultAdmissionTimeout: true });
const exec = promisify(execFile);
const BURST_BIN = resolve(process.env.TOLLGATE_BURST_BIN ||
                          join(dirname(fileURLToPath(import.meta.url)), '../../build/bin/tollgate-burst'));

const DEADLINE_MS = 50; // tollgate's default admission.timeout_ms (ratelimit/admission.hpp)
// What a request may take beyond the deadline with Redis paused: the time three instances need
// to take in 1,000 requests that arrive at once and to answer them, on 2 cores shared with
// Postgres, Redis and this client.
const SLACK_MS = 100;
const REQUESTS = 1000;
const LIMIT = 100;

async function redis(...args) {
  const { stdout } = await exec('redis-cli', ['-u', process.env.TOLLGATE_REDIS_URL, ...args]);
  return stdout.trim();
}

/** `REQUESTS` chat completions at once, request i to urls[i % 3]: [{ status, ms, body }]. */
async function burst(urls, key) {
  const body = JSON.stringify({ model: h.model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 });
  const args = [...urls.flatMap((u) => ['--url', u]), '--n', String(REQUESTS), '--path', '/v1/chat/completions',
                '--header', `Authorization: Bearer ${key}`, '--header', 'Content-Type: application/json',
                '--body', body, '--timeout-ms', '20000'];
  const { stdout } = await exec(BURST_BIN, args, { maxBuffer: 64 << 20 });
  return stdout.trim().split('\n').map((line) => {
    const r = JSON.parse(line);
    return { status: r.status, ms: r.us / 1000, body: r.body };
  });
}

/**
 * Redis' time on a CPU and waiting for one (runnable), in ms, from the kernel's
 * /proc/<pid>/schedstat: printed with each burst, so a failure on a loaded host shows whether
 * Redis was late because it was not given a CPU.
 */
function redisSched(pid) {
  const [onCpu, waiting] = readFileSync(`/proc/${pid}/schedstat`, 'utf8').trim().split(' ').map(Number);
  return { onCpu: onCpu / 1e6, waiting: waiting / 1e6 };
}
const schedText = (a, b) =>
  `Redis on a CPU ${(b.onCpu - a.onCpu).toFixed(0)} ms, waiting for one ${(b.waiting - a.waiting).toFixed(0)} ms`;

function counts(results) {
  const c = {};
  for (const r of results) c[r.status] = (c[r.status] || 0) + 1;
  return c;
}

function latency(results) {
  const ms = results.map((r) => r.ms).sort((a, b) => a - b);
  const at = (p) => ms[Math.min(ms.length - 1, Math.floor((ms.length * p) / 100))].toFixed(1);
  return { text: `p50 ${at(50)} ms, p99 ${at(99)} ms, max ${ms[ms.length - 1].toFixed(1)} ms`, max: ms[ms.length - 1] };
}

test(`3 instances, default deadline: ${REQUESTS} requests at once on a key with ${LIMIT}/min give exactly ` +
     `${LIMIT} × 200 and ${REQUESTS - LIMIT} × 429; with Redis paused every one gets 503 within ` +
     `${DEADLINE_MS} + ${SLACK_MS} ms`, async (t) => {
  const others = [await h.startProxy({ name: 'tollgate-2' }), await h.startProxy({ name: 'tollgate-3' })];
  const urls = [h.url, ...others.map((p) => p.url)];
  const acct = await h.newAccount({ usd: '100', label: 'overload' });
  await psql(`UPDATE api_keys SET requests_per_minute = ${LIMIT} WHERE id = ${lit(acct.keyId)}`);

  const pid = Number(/process_id:(\d+)/.exec(await redis('INFO', 'server'))[1]);
  assert.ok(pid > 0, 'redis process_id');

  // Redis healthy. Neither the key (in the instances) nor the account's balance (in Redis) is
  // cached yet.
  const s0 = redisSched(pid);
  const results = await burst(urls, acct.key);
  const c = counts(results);
  const healthy = `${JSON.stringify(c)}; latency ${latency(results).text}; ${schedText(s0, redisSched(pid))}`;
  t.diagnostic(`Redis healthy: ${healthy}`);
  const other = results.find((r) => r.status !== 200 && r.status !== 429);
  const why = `${healthy}; e.g. ${other?.status} ${other?.body}`;
  assert.equal(c[200], LIMIT, `200s: ${why}`);
  assert.equal(c[429], REQUESTS - LIMIT, `429s: ${why}`);
  for (const r of results.filter((x) => x.status === 429))
    assert.equal(JSON.parse(r.body).error.code, 'key_requests_per_minute');

  // Redis paused: the process stopped, its sockets open and silent (the kernel still accepts
  // connections into its backlog). The second key is known to every instance first (GET
  // /v1/models authenticates it), so what is measured is admission, not Postgres' key lookups.
  const second = await h.newKey(acct.id, 'overload-2');
  for (const u of urls) {
    const res = await fetch(`${u}/v1/models`, { headers: { authorization: `Bearer ${second.key}` } });
    await res.text();
    assert.equal(res.status, 200);
  }
  process.kill(pid, 'SIGSTOP');
  let paused;
  try {
    paused = await burst(urls, second.key);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  const pc = counts(paused);
  const pl = latency(paused);
  t.diagnostic(`Redis paused: ${JSON.stringify(pc)}; latency ${pl.text}`);
  const not503 = paused.find((r) => r.status !== 503);
  assert.equal(pc[503], REQUESTS, `${JSON.stringify(pc)}; e.g. ${not503?.status} ${not503?.body}`);
  for (const r of paused) assert.equal(JSON.parse(r.body).error.code, 'rate_limiter_unavailable');
  assert.ok(pl.max <= DEADLINE_MS + SLACK_MS, `slowest 503 after ${pl.max.toFixed(1)} ms`);
  for (const p of others) await p.child.stop();
});
