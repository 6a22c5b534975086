// The customer's cost in every response, and nothing of the upstream's (issue 13), over raw HTTP
// so that the exact bytes a client receives are checked: chat completions (JSON, streams with and
// without stream_options), the Responses API, the Anthropic Messages API (JSON and streams) and
// the Images API. For each: exactly one usage row per request that reached the upstream, its
// credits_deducted equal to tollgate_price() of the row's own token columns (and to the charge
// computed here), `usage.cost` in the response equal to that charge, and no cost_details,
// upstream_inference_cost or upstream `cost` anywhere in the bytes. The same for a client that
// leaves mid-stream, an upstream that fails mid-stream, and cached / cache-write / reasoning
// tokens; and the Images API's hold covers its `n` images.
//
// The models are routed to the stub as a catalogued model (openai/gpt-4o), so the stub reports a
// `usage.cost` and `cost_details` of its own, at its own prices (not the customer's): the row's
// upstream_cost_usd must be that cost (else the leak checks would prove nothing), and the bytes
// must not hold it.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { fromMicros, tollgate, toMicros } from './harness.js';
import {
  PRICED, REQ_ID, STUB_MODEL, assertOnlyCharge, assertRowPriced, costMicros, expectedCharge, freshAccount, fullRow,
  parseSse, picosToDecimal, rawPost, rowCount, stubCostPicos, toPicos, tokens, useApiHarness,
} from './api_checks.js';

// Image models: `img` prices image output tokens and each generated image; `img-cost` has no
// image-output price, so its image tokens are charged from the upstream's usage.cost under the
// pricing rule (README, "What a request costs, exactly").
const IMG = { prompt: '0.000001', completion: '0.000002', image_output: '0.000003', image_generation: '0.01', context_length: 4000 };
const IMG_COST = { prompt: '0.000001', completion: '0.000002', context_length: 4000 };
const h = useApiHarness({
  models: { priced: PRICED, img: IMG, 'img-cost': IMG_COST },
  routes: true,
  routeMap: { img: ['cost', STUB_MODEL], 'img-cost': ['cost', STUB_MODEL] },
});

const say = 'What does this cost me?';
const BODIES = {
  chat: (extra) => ({ model: h.m('priced'), messages: [{ role: 'user', content: say }], ...extra }),
  responses: (extra) => ({ model: h.m('priced'), input: say, ...extra }),
  messages: (extra) => ({ model: h.m('priced'), max_tokens: 200, messages: [{ role: 'user', content: say }], ...extra }),
  images: (extra) => ({ model: h.m('img'), prompt: 'a lighthouse at dusk', n: 2, response_format: 'url', ...extra }),
};
const PATHS = { chat: '/v1/chat/completions', responses: '/v1/responses', messages: '/v1/messages', images: '/v1/images/generations' };
/** An output event of each stream (one billed token when a stream breaks off). */
const OUTPUT_EVENT = {
  chat: /"content":"tok\d+ "/g,
  responses: /^event: response\.output_text\.delta$/gm,
  messages: /^event: content_block_delta$/gm,
};

/**
 * The final usage a client got, in the endpoint's own shape, as { prompt, completion, cost }
 * (prompt with cache reads and writes, completion with reasoning); null when none arrived.
 */
function reportedUsage(endpoint, r, stream) {
  let u;
  if (!stream) u = r.json?.usage;
  else if (endpoint === 'chat') u = parseSse(r.text).map((e) => e.data).filter((d) => d?.usage).at(-1)?.usage;
  else if (endpoint === 'responses')
    u = parseSse(r.text).filter((e) => e.event === 'response.completed' || e.event === 'response.incomplete').at(-1)?.data.response.usage;
  else if (endpoint === 'messages') u = parseSse(r.text).filter((e) => e.event === 'message_delta').at(-1)?.data.usage;
  if (!u) return null;
  if (endpoint === 'chat') return { prompt: u.prompt_tokens, completion: u.completion_tokens, cost: u.cost };
  if (endpoint === 'messages')
    return { prompt: u.input_tokens + (u.cache_creation_input_tokens ?? 0) + (u.cache_read_input_tokens ?? 0), completion: u.output_tokens, cost: u.cost };
  return { prompt: u.input_tokens, completion: u.output_tokens, cost: u.cost };
}

/** One request on a fresh account; the common money and leak checks. Returns { r, row }. */
async function billedOnce(endpoint, { stream = false, extra = {}, prices = endpoint === 'images' ? IMG : PRICED, present = true } = {}) {
  const acct = await freshAccount(h, endpoint);
  const before = await h.stub.requests();
  const r = await rawPost(h, PATHS[endpoint], BODIES[endpoint]({ ...(stream ? { stream: true } : {}), ...extra }), { key: acct.key });
  assert.equal(r.status, 200, `${endpoint}: ${r.text.slice(0, 500)}`);
  assert.match(r.requestId ?? '', REQ_ID);
  if (stream) assert.match(r.headers.get('content-type') ?? '', /^text\/event-stream/);
  assert.equal(await h.stub.requests(), before + 1, 'one upstream request');
  const row = await fullRow(r.requestId);
  assert.equal(row.status, 'success');
  assert.equal(row.upstream, h.cost);
  assertRowPriced(row);
  assert.equal(row.charge, expectedCharge(tokens(row), prices), `charge computed here for ${JSON.stringify(tokens(row))}`);
  assert.ok(row.charge > 0n);
  const upstreamCost = stubCostPicos(tokens(row));
  assert.equal(row.upstream_cost_usd === null ? null : toPicos(row.upstream_cost_usd), upstreamCost,
    'the stub did not report its cost (or tollgate did not record it): the leak checks would prove nothing');
  assertOnlyCharge(r.text, row.charge, { present, upstreamCost: picosToDecimal(upstreamCost), what: `${endpoint}${stream ? ' stream' : ''}` });
  if (present) {
    const u = reportedUsage(endpoint, r, stream);
    assert.ok(u, 'no usage in the response');
    assert.equal(u.prompt, Number(row.prompt_tokens), 'reported prompt tokens != the row');
    assert.equal(u.completion, Number(row.completion_tokens), 'reported completion tokens != the row');
    assert.equal(costMicros(u.cost), row.charge, 'usage.cost != the charge');
  }
  assert.equal(await rowCount(h, acct.id), 1, 'exactly one usage row');
  return { r, row };
}

// ---------------------------------------------------------------------------------------------
// Every endpoint, JSON and stream

for (const [name, endpoint, stream, extra, present] of [
  ['chat completion, JSON', 'chat', false, {}, true],
  ['chat completion stream, no stream_options (usage on the finish_reason chunk)', 'chat', true, {}, true],
  ['chat completion stream, include_usage: true (the choices:[] usage chunk)', 'chat', true, { stream_options: { include_usage: true } }, true],
  ['chat completion stream, include_usage: false (no usage, no cost)', 'chat', true, { stream_options: { include_usage: false } }, false],
  ['Responses API, JSON', 'responses', false, {}, true],
  ['Responses API stream (response.completed)', 'responses', true, {}, true],
  ['Messages API, JSON', 'messages', false, {}, true],
  ['Messages API stream (message_delta)', 'messages', true, {}, true],
  ['Images API, JSON (2 images: image tokens and generated images at their prices)', 'images', false, {}, true],
]) {
  test(`${name}: one row, charge = tollgate_price(), usage.cost = the charge, nothing of the upstream's cost`, async () => {
    const { r, row } = await billedOnce(endpoint, { stream, extra, present });
    if (endpoint === 'chat' && stream) {
      const chunks = parseSse(r.text).map((e) => e.data).filter((d) => typeof d === 'object');
      const usageChunks = chunks.filter((c) => c.usage != null);
      if (extra.stream_options?.include_usage === true) assert.deepEqual(usageChunks.map((c) => c.choices), [[]]);
      else if (present) {
        assert.equal(usageChunks.length, 1);
        assert.ok(usageChunks[0].choices?.[0]?.finish_reason);
        assert.equal(chunks.filter((c) => c.choices?.length === 0).length, 0, 'a choices:[] chunk');
      } else assert.equal(usageChunks.length, 0);
    }
    if (endpoint === 'images') {
      assert.equal(r.json.data.length, 2);
      assert.equal(Number(row.images_generated), 2);
      assert.equal(Number(row.image_tokens), Number(row.completion_tokens), 'all image output tokens');
      assert.equal(Number(row.completion_tokens), 2 * 1056);
    }
    if (endpoint === 'messages' && stream) {
      const start = parseSse(r.text).find((e) => e.event === 'message_start');
      assert.equal(start.data.message.usage.cost, undefined, 'message_start carries a cost');
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Cached, cache-write and reasoning tokens

for (const [endpoint, extra, want] of [
  ['chat', { stub_chunks: 5, stub_cached_tokens: 6, stub_cache_write_tokens: 2, stub_reasoning_tokens: 3 }, { cached: 6, cache_write: 2, reasoning: 3 }],
  ['responses', { stub_chunks: 5, stub_cached_tokens: 6, stub_reasoning_tokens: 3 }, { cached: 6, cache_write: 0, reasoning: 3 }],
  ['messages', { stub_chunks: 5, stub_cached_tokens: 6, stub_cache_write_tokens: 2 }, { cached: 6, cache_write: 2, reasoning: 0 }],
]) {
  for (const stream of [false, true]) {
    test(`${endpoint}${stream ? ' stream' : ''} with cached${want.cache_write ? ', cache-write' : ''}${want.reasoning ? ', reasoning' : ''} tokens: each at its price, usage.cost = the charge`, async () => {
      const { row } = await billedOnce(endpoint, { stream, extra });
      const t = tokens(row);
      assert.deepEqual({ cached: t.cached, cache_write: t.cache_write, reasoning: t.reasoning }, want);
      assert.equal(t.completion, 5 + want.reasoning);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// A client that leaves mid-stream

/** Streams `body` from `path`, aborts after `n` output events: { requestId, text, lastAt, abortedAt }. */
async function readThenAbort(path, body, key, pattern, n) {
  const ac = new AbortController();
  const res = await fetch(`${h.url}${path}`, {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify(body), signal: ac.signal,
  });
  assert.equal(res.status, 200);
  const requestId = res.headers.get('x-request-id');
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let text = '';
  let lastAt = 0;
  while ((text.match(pattern) || []).length < n) {
    const { value, done } = await reader.read();
    assert.ok(!done, `the stream ended before ${n} output events`);
    text += dec.decode(value, { stream: true });
    lastAt = performance.now();
  }
  ac.abort();
  await reader.cancel().catch(() => {});
  return { requestId, text, lastAt, abortedAt: performance.now() };
}

for (const endpoint of ['chat', 'responses', 'messages']) {
  test(`${endpoint} stream, the client leaves after 2 output events: one row, billed for what reached it, = tollgate_price()`, async (t) => {
    const acct = await freshAccount(h, `abort-${endpoint}`);
    const interval = 400;
    const got = await readThenAbort(PATHS[endpoint], BODIES[endpoint]({ stream: true, stub_chunks: 10, stub_interval_ms: interval }),
      acct.key, OUTPUT_EVENT[endpoint], 2);
    const row = await fullRow(got.requestId);
    const delivered = row.response_metadata?.delivered_chunks;
    const couldHave = 2 + Math.floor((got.abortedAt - got.lastAt + 100) / interval);
    t.diagnostic(`delivered_chunks ${delivered}; tokens ${JSON.stringify(tokens(row))}; charge ${row.credits_deducted}`);
    assert.equal(row.status, 'client_aborted');
    assert.ok(delivered >= 2 && delivered <= couldHave, `delivered_chunks ${delivered} not in [2, ${couldHave}]`);
    assert.equal(Number(row.completion_tokens), delivered);
    assertRowPriced(row);
    assert.equal(row.charge, expectedCharge(tokens(row)));
    assert.ok(row.charge > 0n);
    assertOnlyCharge(got.text, row.charge, { present: false, what: 'the part that arrived' });
    assert.equal(await rowCount(h, acct.id), 1);
  });
}

// ---------------------------------------------------------------------------------------------
// The upstream fails mid-stream

for (const [endpoint, errorEvent] of [
  ['chat', /"error":\{"message":"stub mid-stream error"/],
  ['responses', /^event: response\.failed$/m],
  ['messages', /^event: error$/m],
]) {
  test(`${endpoint} stream, the upstream fails halfway: the error reaches the client; one row, billed for the 4 delivered, = tollgate_price()`, async () => {
    const acct = await freshAccount(h, `mid-${endpoint}`);
    const r = await rawPost(h, PATHS[endpoint], BODIES[endpoint]({ stream: true, stub_chunks: 8, stub_fail: 'midstream' }), { key: acct.key });
    assert.equal(r.status, 200);
    assert.equal((r.text.match(OUTPUT_EVENT[endpoint]) || []).length, 4);
    assert.match(r.text, errorEvent);
    const row = await fullRow(r.requestId);
    assert.equal(row.status, 'upstream_error');
    assert.equal(Number(row.completion_tokens), 4);
    assertRowPriced(row);
    assert.equal(row.charge, expectedCharge(tokens(row)));
    assert.ok(row.charge > 0n);
    assertOnlyCharge(r.text, row.charge, { present: false });
    assert.equal(await rowCount(h, acct.id), 1);
  });
}

// ---------------------------------------------------------------------------------------------
// Upstream errors carry none of its cost

test('an upstream error on /responses, /messages and /images/generations: its cost and cost_details stay behind, nothing charged', async () => {
  const acct = await freshAccount(h, 'err');
  const stubError = {
    code: 400, message: 'bad thing', metadata: { usage: { cost: 0.5 }, cost_details: { upstream_inference_cost: 0.4 }, cost: 0.5 },
  };
  for (const endpoint of ['responses', 'messages', 'images']) {
    const r = await rawPost(h, PATHS[endpoint], BODIES[endpoint]({ stub_fail: 'status:400', stub_error: stubError }), { key: acct.key });
    assert.equal(r.status, 400, `${endpoint}: ${r.text}`);
    assert.ok(!/cost/i.test(r.text), `${endpoint}: the upstream's cost in an error: ${r.text}`);
    if (endpoint === 'messages') assert.equal(r.json?.type, 'error');
    else assert.equal(typeof r.json?.error?.message, 'string');
    const row = await fullRow(r.requestId);
    assert.equal(row.status, 'upstream_error');
    assert.equal(row.charge, 0n);
  }
  assert.equal(await rowCount(h, acct.id), 3);
});

// ---------------------------------------------------------------------------------------------
// Images: the hold covers n images; image output without a price of its own

test('Images API: the hold covers n images (body bytes + n × 8,192 output tokens); more images than the balance holds is 402, upstream not asked', async () => {
  const acct = await h.newAccount({ usd: '0', label: 'imghold' });
  const body = (n) => JSON.stringify({ model: h.model, prompt: 'a cat', n, response_format: 'url' });
  const bytes = Buffer.byteLength(body(1));
  assert.equal(Buffer.byteLength(body(2)), bytes);
  // h.model has prompt 1 µ$ and completion 2 µ$ and no image prices: one image's hold.
  const oneImage = (await h.price(h.model, bytes + 1, 8192)).charge;
  await tollgate('credits', 'add', acct.id, fromMicros(oneImage));
  const before = await h.stub.requests();
  const two = await rawPost(h, PATHS.images, body(2), { key: acct.key });
  assert.equal(two.status, 402, `2 images on a balance of one image's hold (${fromMicros(oneImage)}): ${two.text}`);
  assert.equal(two.json?.error?.code, 'insufficient_credits');
  assert.equal(await h.stub.requests(), before, 'a refused request reached the upstream');
  let one;
  const deadline = Date.now() + 1500;
  do {
    one = await rawPost(h, PATHS.images, body(1), { key: acct.key });
  } while (one.status === 402 && Date.now() < deadline);
  assert.equal(one.status, 200, `1 image on a balance of its hold: ${one.text}`);
  const row = await fullRow(one.requestId);
  assertRowPriced(row);
  assert.equal(Number(row.images_generated), 1);
  assert.ok(row.charge <= oneImage);
  assert.equal(costMicros(one.json.usage.cost), row.charge);
  assert.ok((await h.balance(acct.id)) >= 0n);
  assert.equal(await rowCount(h, acct.id), 1);
});

test('Images API without an image-output price: charged from the upstream\'s usage.cost under the rule; stream is refused', async () => {
  const acct = await freshAccount(h, 'imgcost');
  const r = await rawPost(h, PATHS.images, BODIES.images({ model: h.m('img-cost') }), { key: acct.key });
  assert.equal(r.status, 200, r.text);
  const row = await fullRow(r.requestId);
  const upstream = stubCostPicos(tokens(row));
  assert.equal(toPicos(row.upstream_cost_usd), upstream);
  const unit = 100n * 1_000_000n;
  assert.equal(row.charge, (upstream * 125n + unit - 1n) / unit, 'not the upstream cost + 25 %, rounded up');
  assertOnlyCharge(r.text, row.charge, { upstreamCost: picosToDecimal(upstream) });
  assert.equal(costMicros(r.json.usage.cost), row.charge);

  const before = await h.stub.requests();
  const s = await rawPost(h, PATHS.images, BODIES.images({ stream: true }), { key: acct.key });
  assert.equal(s.status, 400, s.text);
  assert.equal(s.json?.error?.type, 'invalid_request_error');
  assert.equal(await h.stub.requests(), before);
  assert.equal(toMicros(row.credits_deducted), row.charge);
});
