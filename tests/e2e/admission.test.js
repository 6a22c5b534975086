// Admission end to end (issue: one Redis round trip, sliding windows, balance holds): several
// tollgate instances share one Redis and one Postgres; limits and balances must simply hold.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { fromMicros, lit, psql, sleep, tollgate, toMicros, useHarness } from './harness.js';

const h = useHarness();
const exec = promisify(execFile);
const SERVICES = fileURLToPath(new URL('../../deploy/local/services.sh', import.meta.url));

async function redis(...args) {
  const { stdout } = await exec('redis-cli', ['-u', process.env.TOLLGATE_REDIS_URL, ...args]);
  return stdout.trim();
}

/** POSTs a chat completion and reads the whole answer; never throws for HTTP statuses. */
async function chat(url, key, body) {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text };
}

/** balance = Σ ledger and Σ usage ledger = −Σ usage_logs.credits_deducted, in micro-dollars. */
async function assertConservation(account) {
  const row = await psql(
    `SELECT b.credits::text || ' ' ||
            (SELECT coalesce(sum(amount), 0) FROM credit_transactions WHERE user_id = b.user_id)::text || ' ' ||
            (SELECT coalesce(sum(amount), 0) FROM credit_transactions WHERE user_id = b.user_id AND transaction_type = 'usage')::text || ' ' ||
            (SELECT coalesce(sum(credits_deducted), 0) FROM usage_logs WHERE user_id = b.user_id)::text
     FROM balances b WHERE b.user_id = ${lit(account)}`,
  );
  const [balance, ledger, usageLedger, usageLogs] = row.split(' ').map(toMicros);
  assert.equal(balance, ledger, 'balance != Σ ledger');
  assert.equal(-usageLedger, usageLogs, 'Σ usage ledger != Σ usage_logs.credits_deducted');
  return balance;
}

/** Waits until Redis' cached balance of the account agrees with Postgres and nothing is held. */
async function assertRedisAgrees(account) {
  const deadline = Date.now() + 5000;
  let last;
  for (;;) {
    const [credits, held, pending] = (await redis('HMGET', `tg:{${account}}:bal`, 'credits', 'held', 'pending')).split('\n');
    const pg = await h.balance(account);
    last = { credits, held, pending, pg: pg.toString() };
    if (BigInt(credits || '0') === pg && BigInt(held || '0') === 0n && BigInt(pending || '0') === 0n) return;
    if (Date.now() > deadline) assert.fail(`Redis disagrees with Postgres: ${JSON.stringify(last)}`);
    await sleep(50);
  }
}

test('3 instances, 1000 requests at once on a key with 100/min: at most 100 admitted, headers count down', async () => {
  const others = [await h.startProxy({ name: 'tollgate-2' }), await h.startProxy({ name: 'tollgate-3' })];
  const urls = [h.url, ...others.map((p) => p.url)];
  const acct = await h.newAccount({ usd: '100', label: 'rpm' });
  await psql(`UPDATE api_keys SET requests_per_minute = 100 WHERE id = ${lit(acct.keyId)}`);
  const body = { model: h.model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 };
  const results = await Promise.all(Array.from({ length: 1000 }, (_, i) => chat(urls[i % 3], acct.key, body)));
  const ok = results.filter((r) => r.status === 200);
  const limited = results.filter((r) => r.status === 429);
  console.log(`# admitted ${ok.length}, rate limited ${limited.length}, other ${1000 - ok.length - limited.length}`);
  assert.equal(ok.length + limited.length, 1000, JSON.stringify(results.find((r) => r.status !== 200 && r.status !== 429)));
  assert.ok(ok.length <= 100, `over-admitted: ${ok.length}`);
  assert.ok(ok.length >= 98, `under-admitted beyond the bound: ${ok.length}`);
  // Each admission saw a different remaining count: 99, 98, … (the tightest request window).
  const remaining = ok.map((r) => Number(r.headers.get('x-ratelimit-remaining-requests'))).sort((a, b) => b - a);
  assert.deepEqual(remaining, Array.from({ length: ok.length }, (_, i) => 99 - i));
  for (const r of ok) {
    assert.equal(r.headers.get('x-ratelimit-limit-requests'), '100');
    assert.match(r.headers.get('x-ratelimit-reset-requests'), /^(\d+ms|\d+(\.\d+)?s|\d+m\d+(\.\d+)?s)$/);
  }
  const l = limited[0];
  const err = JSON.parse(l.text).error;
  assert.equal(err.type, 'requests');
  assert.equal(err.code, 'key_requests_per_minute');
  assert.ok(Number(l.headers.get('retry-after')) >= 1, 'Retry-After (seconds) missing');
  assert.equal(l.headers.get('x-ratelimit-remaining-requests'), '0');
  for (const p of others) await p.child.stop();
});

test('funded for exactly 10 worst cases, 200 concurrent streams on 3 instances: at most 10 admitted, conservation holds', async () => {
  const others = [await h.startProxy({ name: 'tollgate-b2' }), await h.startProxy({ name: 'tollgate-b3' })];
  const urls = [h.url, ...others.map((p) => p.url)];
  const acct = await h.newAccount({ usd: '0', label: 'holds' });
  const body = {
    model: h.model, stream: true, max_tokens: 50, stub_chunks: 20, stub_interval_ms: 50,
    messages: [{ role: 'user', content: 'hold me' }],
  };
  const bytes = Buffer.byteLength(JSON.stringify(body));
  const worst = (await h.price(h.model, bytes + 1, 50)).charge;
  await tollgate('credits', 'add', acct.id, fromMicros(worst * 10n));
  const results = await Promise.all(Array.from({ length: 200 }, (_, i) => chat(urls[i % 3], acct.key, body)));
  const ok = results.filter((r) => r.status === 200);
  const refused = results.filter((r) => r.status === 402);
  console.log(`# admitted ${ok.length}, refused 402 ${refused.length}`);
  assert.equal(ok.length + refused.length, 200, JSON.stringify(results.find((r) => r.status !== 200 && r.status !== 402)));
  assert.ok(ok.length <= 10, `over-admitted: ${ok.length}`);
  assert.equal(ok.length, 10, 'each of the 10 funded worst cases should have been admitted');
  assert.equal(JSON.parse(refused[0].text).error.code, 'insufficient_credits');
  for (const r of ok) await h.usageRow(r.headers.get('x-request-id'));
  const balance = await assertConservation(acct.id);
  assert.ok(balance >= 0n, `overspent: ${balance}`);
  await assertRedisAgrees(acct.id);
  for (const p of others) await p.child.stop();
});

test('a top-up becomes spendable on every instance within 1 s', async () => {
  const second = await h.startProxy({ name: 'tollgate-topup' });
  const acct = await h.newAccount({ usd: '0', label: 'topup' });
  const body = { model: h.model, max_tokens: 5, messages: [{ role: 'user', content: 'top me up' }] };
  // Both instances have the (empty) balance cached in Redis now.
  assert.equal((await chat(h.url, acct.key, body)).status, 402);
  assert.equal((await chat(second.url, acct.key, body)).status, 402);
  await tollgate('credits', 'add', acct.id, '1');
  const t0 = Date.now();
  const seen = new Set();
  while (seen.size < 2 && Date.now() - t0 < 3000) {
    for (const url of [h.url, second.url]) {
      if (!seen.has(url) && (await chat(url, acct.key, body)).status === 200) seen.add(url);
    }
    if (seen.size < 2) await sleep(20);
  }
  const elapsed = Date.now() - t0;
  console.log(`# top-up spendable on both instances after ${elapsed} ms`);
  assert.equal(seen.size, 2, 'the top-up never became spendable on both instances');
  assert.ok(elapsed < 1000, `took ${elapsed} ms`);
  await second.child.stop();
});

test("a killed instance's hold expires and the balance becomes spendable again", async () => {
  const dir = h.tmp('holdttl');
  const config = join(dir, 'tollgate.toml');
  writeFileSync(config, '[admission]\nhold_ttl_ms = 1500\n');
  const doomed = await h.startProxy({ name: 'tollgate-doomed', args: ['--config', config] });
  const acct = await h.newAccount({ usd: '0', label: 'ttl' });
  const body = { model: h.model, max_tokens: 20, messages: [{ role: 'user', content: 'x' }] };
  const long = { ...body, stream: true, stub_chunks: 100, stub_interval_ms: 100 };
  const worst = (await h.price(h.model, Buffer.byteLength(JSON.stringify(long)) + 1, 20)).charge;
  await tollgate('credits', 'add', acct.id, fromMicros(worst));

  const res = await fetch(`${doomed.url}/v1/chat/completions`, {
    method: 'POST', headers: { authorization: `Bearer ${acct.key}`, 'content-type': 'application/json' },
    body: JSON.stringify(long),
  });
  assert.equal(res.status, 200);
  const admittedAt = Date.now();
  const reader = res.body.getReader();
  await reader.read(); // the stream is running: its worst case is held
  doomed.child.proc.kill('SIGKILL');
  await doomed.child.exitPromise;
  reader.cancel().catch(() => {});

  const blocked = await chat(h.url, acct.key, body);
  assert.equal(blocked.status, 402, 'the hold of the in-flight request should still be in place');
  let after;
  while (Date.now() - admittedAt < 6000) {
    after = await chat(h.url, acct.key, body);
    if (after.status === 200) break;
    await sleep(100);
  }
  assert.equal(after.status, 200, after.text);
  assert.ok(Date.now() - admittedAt >= 1400, 'the hold expired before its TTL');
});

test('Redis stopped mid-run: answers within the timeout (503 fail closed, or open with Postgres balance)', async (t) => {
  const services = process.env.TOLLGATE_SERVICES_DIR;
  assert.ok(services, 'TOLLGATE_SERVICES_DIR is not set: run through tests/run.sh');
  // The default 50 ms Redis deadline here: what an operator gets.
  const closedProxy = await h.startProxy({ name: 'tollgate-closed', env: { TOLLGATE_ADMISSION_TIMEOUT_MS: '50' } });
  const open = await h.startProxy({ name: 'tollgate-open', env: { TOLLGATE_ADMISSION: 'open', TOLLGATE_ADMISSION_TIMEOUT_MS: '50' } });
  const poor = await h.newAccount({ usd: '0', label: 'poor' });
  const body = { model: h.model, max_tokens: 5, messages: [{ role: 'user', content: 'redis?' }] };
  assert.equal((await chat(closedProxy.url, h.key, body)).status, 200);

  // Slow: Redis stops answering for 1.5 s (CLIENT PAUSE); admission gives up after 50 ms.
  await redis('CLIENT', 'PAUSE', '1500', 'ALL');
  const t0 = Date.now();
  const slow = await chat(closedProxy.url, h.key, body);
  const slowMs = Date.now() - t0;
  t.diagnostic(`Redis paused: fail closed answered ${slow.status} in ${slowMs} ms`);
  assert.equal(slow.status, 503, slow.text);
  assert.ok(slowMs < 500, `a paused Redis held the request for ${slowMs} ms`);
  await sleep(1600);

  // Down: Redis stopped.
  await exec('bash', [SERVICES, 'stop-redis', services]);
  try {
    for (let i = 0; i < 5; ++i) {
      const t0 = Date.now();
      const closed = await chat(closedProxy.url, h.key, body);
      const elapsed = Date.now() - t0;
      t.diagnostic(`fail closed answered ${closed.status} in ${elapsed} ms`);
      assert.equal(closed.status, 503, closed.text);
      assert.equal(JSON.parse(closed.text).error.code, 'rate_limiter_unavailable');
      assert.ok(elapsed < 1000, `took ${elapsed} ms`);
    }
    const opened = await chat(open.url, h.key, body);
    assert.equal(opened.status, 200, opened.text);
    assert.equal((await chat(open.url, poor.key, body)).status, 402, 'fail open must still check the balance');
    const metrics = await (await fetch(`${open.adminUrl}/metrics`)).text();
    assert.match(metrics, /tollgate_admission_total\{result="failure_mode_allowed"\} [1-9]/);
    await h.usageRow(opened.headers.get('x-request-id'));
  } finally {
    await exec('bash', [SERVICES, 'start-redis', services]);
  }
  let back;
  const deadline = Date.now() + 5000;
  do {
    back = await chat(h.url, h.key, body);
    if (back.status === 200) break;
    await sleep(100);
  } while (Date.now() < deadline);
  assert.equal(back.status, 200, `after Redis came back: ${back.text}`);
  await open.child.stop();
  await closedProxy.child.stop();
});
