// The Anthropic Messages API (POST /v1/messages, issue 13) through the official
// `@anthropic-ai/sdk`: messages.create and messages.stream, the SDK's error classes for tollgate's
// refusals (401, 402, 429, 400, 404 and an upstream's 529), the key as `x-api-key` or
// `Authorization: Bearer`, anthropic-version / anthropic-beta passed through, an upstream that
// takes its key as x-api-key, cache tokens, a client that leaves and a mid-stream error.
// Money: the usage row's charge = tollgate_price() of its token columns = the charge computed
// here, and `usage.cost` (the JSON's, every message_delta's) is that charge. The `priced` model is
// routed to the stub as a catalogued model, so the stub reports a cost of its own that must not
// reach the client.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';

import { lit, psql, sleep } from './harness.js';
import {
  PRICED, REQ_ID, assertOnlyCharge, assertRowPriced, costMicros, expectedCharge, freshAccount, fullRow, parseSse,
  picosToDecimal, rawPost, recordingFetch, rowCount, stubCostPicos, tokens, useApiHarness,
} from './api_checks.js';

const h = useApiHarness({
  models: { priced: PRICED, direct: PRICED },
  routes: true,
  upstreams: { xkey: ['--auth-style', 'x-api-key'] },
  routeMap: { direct: 'xkey' },
});
const priced = () => h.m('priced');
// <ns>/direct goes to the upstream row <ns>-xkey, whose auth_style is x-api-key (Anthropic directly).

const client = (apiKey = h.key, rec, opts = {}) =>
  new Anthropic({ apiKey, baseURL: h.url, maxRetries: 0, timeout: 15_000, ...(rec ? { fetch: rec.fetch } : {}), ...opts });

/** The stub's prompt tokens (uncached part) for string-content messages plus an optional system. */
function stubInputTokens(messages, system) {
  const texts = [...messages.map((m) => m.content), ...(system === undefined ? [] : [system])];
  const bytes = texts.reduce((n, t) => n + Buffer.byteLength(t, 'utf8'), 0);
  return Math.max(1, Math.floor((bytes + 3) / 4)) + 4 * texts.length;
}
const stubText = (n) => Array.from({ length: n }, (_, i) => `tok${i} `).join('');

async function catchError(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail('expected the request to fail');
}

/** The Anthropic error shape, exactly: {"type":"error","error":{"type","message"}}. */
function assertAnthropicError(body, type) {
  assert.equal(typeof body, 'object', `not JSON: ${body}`);
  assert.deepEqual(Object.keys(body).sort(), ['error', 'type'], JSON.stringify(body));
  assert.equal(body.type, 'error');
  assert.deepEqual(Object.keys(body.error).sort(), ['message', 'type'], JSON.stringify(body));
  assert.equal(body.error.type, type, JSON.stringify(body));
  assert.ok(typeof body.error.message === 'string' && body.error.message.length > 0);
}

const hello = [{ role: 'user', content: 'Hello, Claude via tollgate' }];

// ---------------------------------------------------------------------------------------------

test('1. messages.create: the text, usage, and usage.cost = the usage row\'s charge; the upstream\'s cost stays behind', async (t) => {
  const acct = await freshAccount(h, 'a1');
  const rec = recordingFetch();
  const { data: msg, response } = await client(acct.key, rec)
    .messages.create({ model: priced(), max_tokens: 100, system: 'You are terse.', messages: hello })
    .withResponse();
  t.diagnostic(`the SDK sent its key as ${rec.last().requestHeaders.has('x-api-key') ? 'x-api-key' : 'Authorization'}; ` +
    `anthropic-version ${rec.last().requestHeaders.get('anthropic-version')}`);
  assert.equal(response.status, 200);
  const requestId = response.headers.get('x-request-id');
  assert.match(requestId ?? '', REQ_ID);
  assert.equal(msg.type, 'message');
  assert.equal(msg.role, 'assistant');
  assert.equal(msg.content[0].text, stubText(8));
  assert.equal(msg.stop_reason, 'end_turn');
  const U = stubInputTokens(hello, 'You are terse.');
  assert.equal(msg.usage.input_tokens, U);
  assert.equal(msg.usage.output_tokens, 8);

  const row = await fullRow(requestId);
  assert.equal(row.status, 'success');
  assert.equal(row.upstream, h.cost);
  assert.deepEqual(tokens(row), { prompt: U, completion: 8, cached: 0, cache_write: 0, reasoning: 0 });
  assertRowPriced(row);
  assert.equal(row.charge, expectedCharge(tokens(row)));
  assert.equal(costMicros(msg.usage.cost), row.charge, 'usage.cost is not the charge');
  assertOnlyCharge(await rec.last().text, row.charge, { upstreamCost: picosToDecimal(stubCostPicos(tokens(row))) });
  assert.equal(await rowCount(h, acct.id), 1);
});

test('2. messages.stream: text events, finalMessage() usage; message_delta carries the charge, message_start no cost', async () => {
  const acct = await freshAccount(h, 'a2');
  const rec = recordingFetch();
  const stream = client(acct.key, rec).messages.stream({
    model: priced(), max_tokens: 100, messages: hello, stub_chunks: 5, stub_interval_ms: 20,
  });
  const texts = [];
  stream.on('text', (d) => texts.push(d));
  const final = await stream.finalMessage();
  assert.equal(texts.join(''), stubText(5));
  assert.equal(final.content[0].text, stubText(5));
  assert.equal(final.stop_reason, 'end_turn');
  const U = stubInputTokens(hello);
  assert.equal(final.usage.input_tokens, U);
  assert.equal(final.usage.output_tokens, 5);

  const ex = rec.last();
  const row = await fullRow(ex.headers.get('x-request-id'));
  assert.equal(row.status, 'success');
  assert.deepEqual(tokens(row), { prompt: U, completion: 5, cached: 0, cache_write: 0, reasoning: 0 });
  assertRowPriced(row);
  assert.equal(row.charge, expectedCharge(tokens(row)));

  const raw = await ex.text;
  const events = parseSse(raw);
  assert.deepEqual(events.map((e) => e.event), [
    'message_start', 'content_block_start', 'ping', ...Array(5).fill('content_block_delta'),
    'content_block_stop', 'message_delta', 'message_stop',
  ]);
  for (const e of events) assert.equal(e.data.type, e.event);
  assert.equal(events[0].data.message.usage.cost, undefined, 'message_start carries a cost');
  const deltas = events.filter((e) => e.event === 'message_delta');
  for (const d of deltas) assert.equal(costMicros(d.data.usage.cost), row.charge, 'message_delta usage.cost is not the charge');
  assertOnlyCharge(raw, row.charge, { upstreamCost: picosToDecimal(stubCostPicos(tokens(row))) });
});

test('3. cache reads and writes: prompt = input + cache_creation + cache_read (once, also in a stream), each at its price', async () => {
  const acct = await freshAccount(h, 'a3');
  const params = { model: priced(), max_tokens: 50, messages: hello, stub_chunks: 4, stub_cached_tokens: 6, stub_cache_write_tokens: 2 };
  const U = stubInputTokens(hello);
  const want = { prompt: U + 6 + 2, completion: 4, cached: 6, cache_write: 2, reasoning: 0 };

  const rec = recordingFetch();
  const msg = await client(acct.key, rec).messages.create(params);
  assert.equal(msg.usage.input_tokens, U);
  assert.equal(msg.usage.cache_read_input_tokens, 6);
  assert.equal(msg.usage.cache_creation_input_tokens, 2);
  let row = await fullRow(rec.last().headers.get('x-request-id'));
  assert.deepEqual(tokens(row), want);
  assertRowPriced(row);
  assert.equal(row.charge, expectedCharge(want, PRICED), 'cache tokens not at their own prices');
  assert.equal(costMicros(msg.usage.cost), row.charge);

  // In a stream the input counts come in message_start and again in message_delta (cumulative):
  // counted once.
  const rec2 = recordingFetch();
  const final = await client(acct.key, rec2).messages.stream(params).finalMessage();
  assert.equal(final.usage.cache_read_input_tokens, 6);
  row = await fullRow(rec2.last().headers.get('x-request-id'));
  assert.deepEqual(tokens(row), want, 'stream usage (input double-counted?)');
  assertRowPriced(row);
  assert.equal(row.charge, expectedCharge(want, PRICED));
  const deltas = parseSse(await rec2.last().text).filter((e) => e.event === 'message_delta');
  assert.equal(costMicros(deltas.at(-1).data.usage.cost), row.charge);
  assert.equal(await rowCount(h, acct.id), 2);
});

test('4. the key as x-api-key or as Bearer; anthropic-version and anthropic-beta reach the upstream, the client key does not', async () => {
  const acct = await freshAccount(h, 'a4');
  const body = { model: h.model, max_tokens: 20, messages: hello, stub_chunks: 2 };
  for (const [auth, version, beta] of [
    ['x-api-key', '2023-06-01', 'prompt-caching-2024-07-31'],
    ['bearer', '2024-10-22', 'token-efficient-tools-2025-02-19,interleaved-thinking-2025-05-14'],
  ]) {
    const r = await rawPost(h, '/v1/messages', body, {
      key: acct.key, auth, headers: { 'anthropic-version': version, 'anthropic-beta': beta },
    });
    assert.equal(r.status, 200, `${auth}: ${r.text}`);
    assert.equal(r.json.content[0].text, stubText(2));
    const last = await h.stubLast();
    assert.match(last.target, /\/messages$/);
    assert.equal(last.headers['anthropic-version'], version, `${auth}: anthropic-version`);
    assert.equal(last.headers['anthropic-beta'], beta, `${auth}: anthropic-beta`);
    assert.equal(last.authorization, `Bearer ${h.upstreamKey}`, 'a bearer upstream gets the operator key as Bearer');
    assert.equal(last.headers['x-api-key'], undefined, `${auth}: an x-api-key reached a bearer upstream`);
    assert.ok(!JSON.stringify(last).includes(acct.key), `${auth}: the client's key reached the upstream`);
    const row = await fullRow(r.requestId);
    assert.equal(row.status, 'success');
    assertRowPriced(row);
  }
  // Without anthropic-version, a bearer upstream gets none added.
  const r = await rawPost(h, '/v1/messages', body, { key: acct.key, auth: 'x-api-key' });
  assert.equal(r.status, 200, r.text);
  assert.equal((await h.stubLast()).headers['anthropic-version'], undefined);

  // The SDK with only an x-api-key header (as Claude Code and older SDKs send it).
  const sdkX = new Anthropic({
    apiKey: null, authToken: null, baseURL: h.url, maxRetries: 0, timeout: 15_000, defaultHeaders: { 'x-api-key': acct.key },
  });
  const msg = await sdkX.messages.create({ model: h.model, max_tokens: 10, messages: hello, stub_chunks: 1 });
  assert.equal(msg.content[0].text, stubText(1));
  assert.equal(await rowCount(h, acct.id), 4);
});

test('5. an upstream with auth_style x-api-key gets the operator key as x-api-key, with anthropic-version (2023-06-01 unless sent)', async () => {
  const acct = await freshAccount(h, 'a5');
  const body = { model: h.m('direct'), max_tokens: 20, messages: hello, stub_chunks: 2 };
  let r = await rawPost(h, '/v1/messages', body, { key: acct.key });
  assert.equal(r.status, 200, r.text);
  let last = await h.stubLast();
  assert.equal(last.headers['x-api-key'], h.upstreamKey);
  assert.equal(last.headers['anthropic-version'], '2023-06-01');
  assert.ok(!(last.authorization ?? '').includes(acct.key), 'the client key reached the upstream');
  let row = await fullRow(r.requestId);
  assert.equal(row.upstream, `${h.namespace}-xkey`);
  assertRowPriced(row);

  r = await rawPost(h, '/v1/messages', body, {
    key: acct.key, auth: 'x-api-key', headers: { 'anthropic-version': '2024-10-22', 'anthropic-beta': 'output-128k-2025-02-19' },
  });
  assert.equal(r.status, 200, r.text);
  last = await h.stubLast();
  assert.equal(last.headers['x-api-key'], h.upstreamKey);
  assert.equal(last.headers['anthropic-version'], '2024-10-22');
  assert.equal(last.headers['anthropic-beta'], 'output-128k-2025-02-19');
  row = await fullRow(r.requestId);
  assertRowPriced(row);
});

test('6. a bad or missing key: Anthropic.AuthenticationError, authentication_error in Anthropic\'s shape', async () => {
  const before = (await h.stubLast()).requests;
  const garbage = `tg_${'Q'.repeat(38)}`;
  const err = await catchError(client(garbage).messages.create({ model: priced(), max_tokens: 10, messages: hello }));
  assert.ok(err instanceof Anthropic.AuthenticationError, `${err?.constructor?.name}: ${err}`);
  assert.equal(err.status, 401);
  assertAnthropicError(err.error, 'authentication_error');
  assert.match(err.headers.get('x-request-id') ?? '', REQ_ID);
  for (const [key, auth] of [[garbage, 'x-api-key'], [null, 'bearer'], [h.upstreamKey, 'x-api-key']]) {
    const r = await rawPost(h, '/v1/messages', { model: priced(), max_tokens: 10, messages: hello }, { key, auth });
    assert.equal(r.status, 401, r.text);
    assertAnthropicError(r.json, 'authentication_error');
  }
  assert.equal((await h.stubLast()).requests, before, 'an unauthenticated request reached the upstream');
});

test('7. too little balance: 402 billing_error, the SDK\'s PaymentRequiredError (an APIError with status 402)', async () => {
  const broke = await h.newAccount({ usd: '0', label: 'broke' });
  const before = (await h.stubLast()).requests;
  const err = await catchError(client(broke.key).messages.create({ model: priced(), max_tokens: 100, messages: hello }));
  assert.ok(err instanceof Anthropic.APIError, String(err));
  assert.ok(err instanceof Anthropic.PaymentRequiredError, `${err?.constructor?.name}: ${err}`);
  assert.equal(err.status, 402);
  assertAnthropicError(err.error, 'billing_error');
  const r = await rawPost(h, '/v1/messages', { model: priced(), max_tokens: 100, messages: hello }, { key: broke.key, auth: 'x-api-key' });
  assert.equal(r.status, 402);
  assertAnthropicError(r.json, 'billing_error');
  assert.equal((await h.stubLast()).requests, before);
  assert.equal(await rowCount(h, broke.id), 0);
});

test('8. a key over its rate limit: 429 rate_limit_error with Retry-After, the SDK\'s RateLimitError', async () => {
  const acct = await freshAccount(h, 'a8');
  await psql(`UPDATE api_keys SET requests_per_minute = 1 WHERE id = ${lit(acct.keyId)}`);
  const c = client(acct.key);
  await c.messages.create({ model: h.model, max_tokens: 5, messages: hello, stub_chunks: 1 });
  const err = await catchError(c.messages.create({ model: h.model, max_tokens: 5, messages: hello }));
  assert.ok(err instanceof Anthropic.RateLimitError, `${err?.constructor?.name}: ${err}`);
  assert.equal(err.status, 429);
  assertAnthropicError(err.error, 'rate_limit_error');
  assert.ok(Number(err.headers.get('retry-after')) >= 1, `retry-after: ${err.headers.get('retry-after')}`);
  assert.equal(await rowCount(h, acct.id), 1, 'a rate-limited request has a usage row');
});

test('9. a missing max_tokens is Anthropic\'s own 400 invalid_request_error, before the upstream', async () => {
  const before = (await h.stubLast()).requests;
  const err = await catchError(client().messages.create({ model: priced(), messages: hello }));
  assert.ok(err instanceof Anthropic.BadRequestError, `${err?.constructor?.name}: ${err}`);
  assertAnthropicError(err.error, 'invalid_request_error');
  assert.match(err.error.error.message, /max_tokens/);
  const r = await rawPost(h, '/v1/messages', { model: priced(), messages: hello }, { auth: 'x-api-key' });
  assert.equal(r.status, 400);
  assertAnthropicError(r.json, 'invalid_request_error');
  assert.equal((await h.stubLast()).requests, before, 'the upstream was asked');
});

test('10. not found and overloaded: an upstream 404 is NotFoundError (not_found_error), 529 OverloadedError; unknown model in Anthropic\'s shape', async () => {
  const acct = await freshAccount(h, 'a10');
  const nf = await catchError(client(acct.key).messages.create({ model: priced(), max_tokens: 10, messages: hello, stub_fail: 'status:404' }));
  assert.ok(nf instanceof Anthropic.NotFoundError, `${nf?.constructor?.name}: ${nf}`);
  assertAnthropicError(nf.error, 'not_found_error');
  let row = await fullRow(nf.headers.get('x-request-id'));
  assert.equal(row.status, 'upstream_error');
  assert.equal(row.charge, 0n);

  const ov = await catchError(client(acct.key).messages.create({ model: priced(), max_tokens: 10, messages: hello, stub_fail: 'status:529' }));
  assert.ok(ov instanceof Anthropic.OverloadedError, `${ov?.constructor?.name}: ${ov}`);
  assertAnthropicError(ov.error, 'overloaded_error');
  row = await fullRow(ov.headers.get('x-request-id'));
  assert.equal(row.charge, 0n);

  const unknown = await rawPost(h, '/v1/messages', { model: h.m('no-such-model'), max_tokens: 10, messages: hello }, { key: acct.key });
  assert.ok([400, 404].includes(unknown.status), unknown.text);
  assertAnthropicError(unknown.json, unknown.status === 404 ? 'not_found_error' : 'invalid_request_error');
  assert.match(unknown.json.error.message, /no-such-model/);
});

test('11. a client that leaves mid-stream: billed for the content_block_deltas that reached it and message_start\'s input', async (t) => {
  const acct = await freshAccount(h, 'a11');
  const interval = 400;
  const stream = await client(acct.key).messages.create({
    model: priced(), max_tokens: 100, messages: hello, stream: true, stub_chunks: 12, stub_interval_ms: interval,
  }).withResponse();
  const requestId = stream.response.headers.get('x-request-id');
  let read = 0;
  let lastAt = 0;
  let inputSeen = null;
  for await (const ev of stream.data) {
    if (ev.type === 'message_start') inputSeen = ev.message.usage.input_tokens + ev.message.usage.cache_read_input_tokens +
      ev.message.usage.cache_creation_input_tokens;
    if (ev.type === 'content_block_delta') {
      read += 1;
      lastAt = performance.now();
      if (read === 2) break;
    }
  }
  const abortedAt = performance.now();
  const row = await fullRow(requestId);
  const delivered = row.response_metadata?.delivered_chunks;
  const couldHave = 2 + Math.floor((abortedAt - lastAt + 100) / interval);
  t.diagnostic(`delivered_chunks ${delivered}, tokens ${JSON.stringify(tokens(row))}, charge ${row.credits_deducted}`);
  assert.equal(row.status, 'client_aborted');
  assert.ok(delivered >= 2 && delivered <= couldHave, `delivered_chunks ${delivered} not in [2, ${couldHave}]`);
  assert.equal(Number(row.completion_tokens), delivered);
  assert.equal(Number(row.prompt_tokens), inputSeen, 'the prompt is not message_start\'s input');
  assertRowPriced(row);
  assert.ok(row.charge > 0n);
});

test('12. the upstream fails mid-stream: the SDK raises the error event, billed for the delivered deltas', async () => {
  const acct = await freshAccount(h, 'a12');
  const rec = recordingFetch();
  const { data: stream, response } = await client(acct.key, rec).messages.create({
    model: priced(), max_tokens: 100, messages: hello, stream: true, stub_chunks: 8, stub_fail: 'midstream',
  }).withResponse();
  let deltas = 0;
  let error = null;
  try {
    for await (const ev of stream) if (ev.type === 'content_block_delta') deltas += 1;
  } catch (e) {
    error = e;
  }
  assert.equal(deltas, 4);
  assert.ok(error instanceof Anthropic.APIError, `${error?.constructor?.name}: ${error}`);
  assert.equal(error.error?.error?.type, 'overloaded_error');
  assert.equal(error.error?.error?.message, 'stub mid-stream error');
  const row = await fullRow(response.headers.get('x-request-id'));
  assert.equal(row.status, 'upstream_error');
  assert.equal(Number(row.completion_tokens), 4);
  assert.equal(Number(row.prompt_tokens), stubInputTokens(hello));
  assertRowPriced(row);
  assert.ok(row.charge > 0n);
  await sleep(50);
  assertOnlyCharge(await rec.last().text, row.charge, { present: false });
  assert.equal(await rowCount(h, acct.id), 1);
});
