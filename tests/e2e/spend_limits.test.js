// Spend limits that reset (issue 14, part 2): a key's or an account's spend per calendar UTC
// period, enforced in the admission round trip across instances (the worst case held, corrected
// to the charge at settle), refused with 402 naming the limit, seeded from what Postgres says
// was charged. The period boundary is tested with an injected clock in
// tests/integration/spend_limit_test.cpp.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { lit, psql, sleep, tollgate, toMicros, useHarness } from './harness.js';

const h = useHarness({ defaultAdmissionTimeout: true });  // the default 50 ms admission deadline

/** POSTs a chat completion; never throws for HTTP statuses. */
async function chat(url, key, body) {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, json, requestId: res.headers.get('x-request-id') };
}

const usd = (micros) => `${micros / 1_000_000n}.${String(micros % 1_000_000n).padStart(6, '0')}`;

/** The worst case (hold, micro-dollars) tollgate admits `body` with: one request's usage row says it. */
async function holdOf(body) {
  const probe = await h.newAccount({ usd: '10', label: 'probe' });
  const r = await chat(h.url, probe.key, body);
  assert.equal(r.status, 200, JSON.stringify(r.json));
  const row = await h.usageRow(r.requestId);
  return BigInt(row.response_metadata.hold_micros);
}

async function chargedBy(keyId) {
  await h.settled();
  return toMicros(await psql(`SELECT coalesce(sum(credits_deducted), 0)::text FROM usage_logs WHERE api_key_id = ${lit(keyId)}`));
}

test('3 instances, 300 requests at once on a key whose daily limit covers exactly 7 worst cases: 7 admitted, the rest 402', async () => {
  const others = [await h.startProxy({ name: 'tollgate-2' }), await h.startProxy({ name: 'tollgate-3' })];
  const urls = [h.url, ...others.map((p) => p.url)];
  // The stub holds every answer 800 ms: all 300 are decided before any settles.
  const body = { model: h.model, messages: [{ role: 'user', content: 'spend' }], max_tokens: 16, stub_latency_ms: 800 };
  const hold = await holdOf(body);
  const acct = await h.newAccount({ usd: '10', label: 'daily' });
  const { stdout } = await tollgate('keys', 'set-limit', acct.keyId, usd(7n * hold), '--limit-reset', 'daily');
  assert.match(stdout, /daily/);
  const results = await Promise.all(Array.from({ length: 300 }, (_, i) => chat(urls[i % 3], acct.key, body)));
  const ok = results.filter((r) => r.status === 200);
  const refused = results.filter((r) => r.status === 402);
  console.log(`# worst case $${usd(hold)}, limit $${usd(7n * hold)}: admitted ${ok.length}, refused ${refused.length}`);
  assert.equal(ok.length + refused.length, 300, JSON.stringify(results.find((r) => r.status !== 200 && r.status !== 402)));
  assert.equal(ok.length, 7);
  for (const r of refused) {
    assert.equal(r.json.error.code, 'key_spend_limit_reached');
    assert.equal(r.json.error.type, 'insufficient_quota');
    assert.match(r.json.error.message, /resets at \d{4}-\d{2}-\d{2}T00:00:00Z/);
  }
  const charged = await chargedBy(acct.keyId);
  assert.ok(charged <= 7n * hold, `charged ${charged} > limit ${7n * hold}`);
  const rows = await psql(`SELECT count(*) FROM usage_logs WHERE api_key_id = ${lit(acct.keyId)}`);
  assert.equal(Number(rows), 7);
});

test('after settle the limit counts charges, not holds: what the 7 did not spend is spendable again', async () => {
  const body = { model: h.model, messages: [{ role: 'user', content: 'spend' }], max_tokens: 16 };
  const hold = await holdOf(body);
  const acct = await h.newAccount({ usd: '10', label: 'settle' });
  await tollgate('keys', 'set-limit', acct.keyId, usd(2n * hold), '--limit-reset', 'monthly');
  const statuses = [];
  // Sequential: each settles (the stub charges far less than the worst case) before the next.
  for (let i = 0; i < 6; i++) statuses.push((await chat(h.url, acct.key, body)).status);
  await h.settled();
  const charged = await chargedBy(acct.keyId);
  assert.ok(charged <= 2n * hold, `charged ${charged} > limit`);
  const admitted = statuses.filter((s) => s === 200).length;
  assert.ok(admitted > 2, `only ${admitted} admitted: holds were not corrected to charges (${statuses})`);
  // Spending on until the limit: the last refusal leaves less than one worst case.
  let last;
  for (let i = 0; i < 200; i++) {
    last = await chat(h.url, acct.key, body);
    if (last.status !== 200) break;
    await sleep(5);
  }
  assert.equal(last.status, 402);
  assert.equal(last.json.error.code, 'key_spend_limit_reached');
  const spent = await chargedBy(acct.keyId);
  assert.ok(spent <= 2n * hold && spent > hold, `spent ${spent} of ${2n * hold}: refused with a worst case still left`);
});

test("a limit set mid-period counts what the key was already charged in it (seeded from Postgres)", async () => {
  const body = { model: h.model, messages: [{ role: 'user', content: 'seed' }], max_tokens: 16 };
  const acct = await h.newAccount({ usd: '10', label: 'seed' });
  for (let i = 0; i < 3; i++) assert.equal((await chat(h.url, acct.key, body)).status, 200);
  const before = await chargedBy(acct.keyId);
  assert.ok(before > 0n);
  // A weekly limit just below what was spent this week: the next request is refused at once.
  await tollgate('keys', 'set-limit', acct.keyId, usd(before - 1n), '--limit-reset', 'weekly');
  await sleep(300);  // the key's NOTIFY reaches the instance's key cache
  const r = await chat(h.url, acct.key, body);
  assert.equal(r.status, 402, JSON.stringify(r.json));
  assert.equal(r.json.error.code, 'key_spend_limit_reached');
  // Lifting it: served again.
  await tollgate('keys', 'set-limit', acct.keyId, 'none');
  await sleep(300);
  assert.equal((await chat(h.url, acct.key, body)).status, 200);
});

test("an account's limit covers all its keys and names itself", async () => {
  const body = { model: h.model, messages: [{ role: 'user', content: 'acct' }], max_tokens: 16 };
  const hold = await holdOf(body);
  const acct = await h.newAccount({ usd: '10', label: 'acctlimit' });
  const second = await h.newKey(acct.id, 'second');
  await psql(`INSERT INTO rate_limits (user_id, spend_limit_usd, limit_reset) VALUES (${lit(acct.id)}, ${usd(hold + hold / 2n)}, 'daily')
              ON CONFLICT (user_id) DO UPDATE SET spend_limit_usd = EXCLUDED.spend_limit_usd, limit_reset = 'daily'`);
  await sleep(300);
  const body2 = { ...body, stub_latency_ms: 500 };
  const [a, b] = await Promise.all([chat(h.url, acct.key, body2), chat(h.url, second.key, body2)]);
  const statuses = [a.status, b.status].sort();
  assert.deepEqual(statuses, [200, 402]);
  const refusal = a.status === 402 ? a : b;
  assert.equal(refusal.json.error.code, 'account_spend_limit_reached');
  assert.match(refusal.json.error.message, /account/);
});
