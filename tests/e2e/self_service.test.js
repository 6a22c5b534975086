// OpenRouter's self-service endpoints (issue 14 part 5) against the real tollgate: after a JSON
// chat completion and a stream, GET /api/v1/key, /api/v1/credits and /api/v1/generation (and
// their /v1/… aliases) report, field by field, what usage_logs and credit_transactions say,
// read here with SQL. Amounts are compared exactly, from the number literals in the response
// text (BigInt micro-dollars), never through floats. The operator's cost never appears.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { lit, psql, psqlJson, readResponse, toMicros, useHarness } from './harness.js';

const h = useHarness();

/** GET on the proxy with `key` (null: none) as Bearer, or as x-api-key with { header: 'x-api-key' }. */
async function get(path, key = h.key, { header = 'authorization' } = {}) {
  const headers = key === null ? {} : { [header]: header === 'authorization' ? `Bearer ${key}` : key };
  return readResponse(await fetch(`${h.url}${path}`, { headers }));
}

/** The number literal of `"name":` in a JSON text, as BigInt micro-dollars (exact), or null. */
function usdOf(text, name) {
  const m = new RegExp(`"${name}":(null|-?\\d+(?:\\.\\d+)?)(?=[,}])`).exec(text);
  assert.ok(m, `no number "${name}" in ${text}`);
  if (m[1] === 'null') return null;
  assert.ok(!/\.\d{7,}/.test(m[1]), `${name} = ${m[1]} has more than 6 decimals`);
  return toMicros(m[1]);
}

/** The SQL sum of a key's charges since `since` (an SQL timestamptz expression), BigInt micros. */
async function keyCharged(keyId, since = "'-infinity'") {
  const out = await psql(
    `SELECT coalesce(sum(credits_deducted), 0)::text FROM usage_logs
     WHERE api_key_id = ${lit(keyId)} AND created_at >= ${since}`,
  );
  return toMicros(out);
}
const DAY = "date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'";
const WEEK = "date_trunc('week', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'";
const MONTH = "date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'";

async function chat(stream) {
  const res = await fetch(`${h.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${h.key}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: h.model,
      messages: [{ role: 'user', content: `self-service ${stream ? 'stream' : 'json'} request` }],
      max_tokens: 20,
      stream,
      ...(stream ? { stream_options: { include_usage: true } } : {}),
    }),
  });
  const r = await readResponse(res);
  assert.equal(r.status, 200, r.text);
  const requestId = r.headers.get('x-request-id');
  assert.match(requestId, /^req_/);
  return { requestId, generationId: r.headers.get('x-generation-id') };
}

/** The usage row as the generation endpoint should report it (numbers as text). */
async function generationRow(requestId) {
  await h.usageRow(requestId);
  return psqlJson(
    `SELECT json_build_object('request_id', request_id, 'gen', response_metadata->>'generation_id', 'model', model,
       'upstream', upstream, 'prompt', prompt_tokens, 'completion', completion_tokens, 'cached', cached_tokens,
       'reasoning', reasoning_tokens, 'charge', credits_deducted::text, 'cost', cost_usd::text,
       'upstream_cost', upstream_cost_usd::text, 'stream', request_metadata->'stream', 'status', status,
       'finish', response_metadata->>'finish_reason', 'duration_us', response_metadata->'duration_us',
       'created_at', to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
     FROM usage_logs WHERE request_id = ${lit(requestId)}`,
  );
}

let json, stream;

test('a JSON completion and a stream are recorded first', async () => {
  json = await chat(false);
  stream = await chat(true);
  assert.ok(json.generationId && stream.generationId, 'the stub names its generations (X-Generation-Id)');
  await h.settled();
});

test('GET /api/v1/generation by request id and by generation id equals the usage row', async () => {
  for (const made of [json, stream]) {
    const row = await generationRow(made.requestId);
    for (const path of [
      `/api/v1/generation?id=${made.requestId}`,
      `/api/v1/generation?id=${encodeURIComponent(made.generationId)}`,
      `/v1/generation?id=${made.requestId}`,
    ]) {
      const r = await get(path);
      assert.equal(r.status, 200, `${path}: ${r.text}`);
      const d = r.json.data;
      assert.equal(d.id, row.gen ?? row.request_id);
      assert.equal(d.id, made.generationId);
      assert.equal(d.request_id, made.requestId);
      assert.equal(d.model, row.model);
      assert.equal(d.upstream, row.upstream);
      assert.equal(d.tokens_prompt, row.prompt);
      assert.equal(d.tokens_completion, row.completion);
      assert.equal(d.native_tokens_cached, row.cached);
      assert.equal(d.native_tokens_reasoning, row.reasoning);
      assert.equal(usdOf(r.text, 'total_cost'), toMicros(row.charge));
      assert.equal(d.streamed, row.stream === true);
      assert.equal(d.streamed, made === stream);
      assert.equal(d.cancelled, row.status === 'client_aborted');
      assert.equal(d.finish_reason, row.finish);
      assert.equal(d.latency, Math.floor(Number(row.duration_us) / 1000));
      assert.equal(typeof d.generation_time, 'number');
      assert.equal(d.created_at, row.created_at);
      assert.ok(Math.abs(Date.parse(d.created_at) - Date.now()) < 120_000, d.created_at);
      // The customer's charge only: the markup makes it differ from the operator's cost.
      assert.notEqual(toMicros(row.charge), toMicros(row.cost));
      assert.equal(usdOf(r.text, 'usage'), toMicros(row.charge));
      assert.ok(!/cost_usd|upstream_cost|upstream_inference/.test(r.text), r.text);
    }
  }
});

test('GET /api/v1/key: label, usage per period and rate limit as the database says', async () => {
  const keyId = h.account.keyId;
  const limits = await psqlJson(
    `SELECT json_build_object('rpm', requests_per_minute) FROM rate_limits WHERE user_id = ${lit(h.account.id)}`,
  );
  for (const path of ['/api/v1/key', '/v1/key']) {
    const r = await get(path);
    assert.equal(r.status, 200, r.text);
    const d = r.json.data;
    assert.deepEqual(Object.keys(d).sort(), ['expires_at', 'is_free_tier', 'label', 'limit', 'limit_remaining',
      'limit_reset', 'rate_limit', 'usage', 'usage_daily', 'usage_monthly', 'usage_weekly']);
    assert.equal(d.label, 'e2e'); // the name given at `tollgate keys create --name`
    assert.equal(d.limit, null);
    assert.equal(d.limit_remaining, null);
    assert.equal(d.limit_reset, null);
    assert.equal(d.is_free_tier, false);
    assert.equal(d.expires_at, null);
    const usage = usdOf(r.text, 'usage');
    assert.ok(usage > 0n);
    assert.equal(usage, await keyCharged(keyId));
    assert.equal(usdOf(r.text, 'usage_daily'), await keyCharged(keyId, DAY));
    assert.equal(usdOf(r.text, 'usage_weekly'), await keyCharged(keyId, WEEK));
    assert.equal(usdOf(r.text, 'usage_monthly'), await keyCharged(keyId, MONTH));
    assert.deepEqual(
      { requests: d.rate_limit.requests, interval: d.rate_limit.interval },
      { requests: limits.rpm, interval: '1m' }, // the account's default requests per minute
    );
    assert.equal(typeof d.rate_limit.note, 'string');
  }
  // x-api-key authenticates as Bearer does.
  assert.equal((await get('/api/v1/key', h.key, { header: 'x-api-key' })).json.data.label, 'e2e');
});

test('GET /api/v1/key: spend limit, its reset period and what remains of it', async () => {
  const keyId = h.account.keyId;
  try {
    for (const [reset, since] of [['daily', DAY], ['weekly', WEEK], ['monthly', MONTH], ['never', "'-infinity'"]]) {
      await psql(`UPDATE api_keys SET spend_limit_usd = 1.5, limit_reset = ${lit(reset)},
                    expires_at = '2031-02-03 04:05:06+00' WHERE id = ${lit(keyId)}`);
      const r = await get('/api/v1/key');
      assert.equal(r.status, 200, r.text);
      assert.equal(usdOf(r.text, 'limit'), 1_500_000n);
      assert.equal(r.json.data.limit_reset, reset === 'never' ? null : reset);
      assert.equal(usdOf(r.text, 'limit_remaining'), 1_500_000n - (await keyCharged(keyId, since)));
      assert.equal(r.json.data.expires_at, '2031-02-03T04:05:06.000000Z');
    }
    // Spent beyond the limit: 0 remains, never less.
    await psql(`UPDATE api_keys SET spend_limit_usd = 0.000001, limit_reset = 'monthly' WHERE id = ${lit(keyId)}`);
    const r = await get('/api/v1/key');
    assert.equal(usdOf(r.text, 'limit'), 1n);
    assert.equal(usdOf(r.text, 'limit_remaining'), 0n);
  } finally {
    await psql(`UPDATE api_keys SET spend_limit_usd = NULL, limit_reset = 'never', expires_at = NULL
                WHERE id = ${lit(keyId)}`);
  }
});

test('GET /api/v1/credits: purchases and usage of the account, from its ledger', async () => {
  await h.settled();
  const ledger = await psqlJson(
    `SELECT json_build_object(
       'credits', coalesce(sum(amount) FILTER (WHERE transaction_type <> 'usage'), 0)::text,
       'usage', coalesce(-sum(amount) FILTER (WHERE transaction_type = 'usage'), 0)::text,
       'balance', (SELECT credits::text FROM balances WHERE user_id = ${lit(h.account.id)}))
     FROM credit_transactions WHERE user_id = ${lit(h.account.id)}`,
  );
  for (const path of ['/api/v1/credits', '/v1/credits']) {
    const r = await get(path);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(Object.keys(r.json.data).sort(), ['total_credits', 'total_usage']);
    assert.equal(usdOf(r.text, 'total_credits'), toMicros(ledger.credits));
    assert.equal(usdOf(r.text, 'total_credits'), 10_000_000n); // the harness funds $10
    assert.equal(usdOf(r.text, 'total_usage'), toMicros(ledger.usage));
    assert.ok(usdOf(r.text, 'total_usage') > 0n);
    assert.equal(usdOf(r.text, 'total_credits') - usdOf(r.text, 'total_usage'), toMicros(ledger.balance));
  }
});

test("another account's key: 404 for this account's generations, its own key and credits are its own", async () => {
  const other = await h.newAccount({ usd: '3', label: 'other' });
  for (const id of [json.requestId, json.generationId, stream.generationId]) {
    const r = await get(`/api/v1/generation?id=${encodeURIComponent(id)}`, other.key);
    assert.equal(r.status, 404, r.text);
    assert.deepEqual(Object.keys(r.json.error).sort(), ['code', 'message', 'param', 'type']);
    assert.equal(r.json.error.code, 'generation_not_found');
    assert.equal(r.json.error.type, 'invalid_request_error');
  }
  const k = await get('/api/v1/key', other.key);
  assert.equal(usdOf(k.text, 'usage'), 0n);
  const c = await get('/api/v1/credits', other.key);
  assert.equal(usdOf(c.text, 'total_credits'), 3_000_000n);
  assert.equal(usdOf(c.text, 'total_usage'), 0n);
});

test('401 without a key or with a wrong one, 400 without an id, 404 for an id never recorded', async () => {
  for (const path of ['/api/v1/key', '/api/v1/credits', `/api/v1/generation?id=${json.requestId}`, '/v1/key',
    '/v1/credits', `/v1/generation?id=${json.requestId}`]) {
    for (const key of [null, 'tg_notakey', `${h.key.slice(0, -1)}${h.key.endsWith('A') ? 'B' : 'A'}`]) {
      const r = await get(path, key);
      assert.equal(r.status, 401, `${path} with ${key}: ${r.text}`);
      assert.equal(r.json.error.code, 'invalid_api_key');
    }
  }
  for (const path of ['/api/v1/generation', '/api/v1/generation?id=', '/v1/generation?other=1']) {
    const r = await get(path);
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.error.code, 'missing_id');
  }
  const r = await get('/api/v1/generation?id=req_never_recorded_here');
  assert.equal(r.status, 404, r.text);
});
