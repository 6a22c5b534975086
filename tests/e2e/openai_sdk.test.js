// tollgate end to end, driven by the official `openai` SDK (and raw fetch where the SDK cannot
// express the request). Runs the real tollgate and tollgate-stub binaries; see harness.js.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';

import { closedPort, fromMicros, lit, psql, randomSuffix, readResponse, sleep, toMicros, tollgate, useHarness } from './harness.js';

const h = useHarness();

// ---------------------------------------------------------------------------------------------
// Helpers

const sdk = (apiKey, opts = {}) =>
  new OpenAI({ apiKey, baseURL: `${opts.url || h.url}/v1`, maxRetries: 0, timeout: 15_000, ...opts.client });

/** The stub's deterministic prompt tokens for chat messages (see bench/stub/README.md). */
function stubPromptTokens(messages) {
  const bytes = messages.reduce((n, m) => n + Buffer.byteLength(m.content, 'utf8'), 0);
  return Math.max(1, Math.floor((bytes + 3) / 4)) + 4 * messages.length;
}

/** The stub's content: chunk i carries "tok<i> ". */
const stubContent = (n) => Array.from({ length: n }, (_, i) => `tok${i} `);

/** Independent of the database: price = 1 µ$/prompt token, 2 µ$/completion token, +25 %, rounded up. */
function expectedCharge(prompt, completion) {
  const cost = BigInt(prompt) * 1n + BigInt(completion) * 2n; // micros (prices are whole micros)
  return { cost, charge: (cost * 125n + 99n) / 100n };
}

/** Asserts the OpenAI error shape {"error":{"message","type","param","code"}}. */
function assertErrorShape(body, { code, type } = {}) {
  assert.equal(typeof body, 'object', `error body is not JSON: ${JSON.stringify(body)}`);
  assert.deepEqual(Object.keys(body), ['error'], JSON.stringify(body));
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type'], JSON.stringify(body));
  assert.equal(typeof body.error.message, 'string');
  assert.ok(body.error.message.length > 0);
  assert.equal(typeof body.error.type, 'string');
  if (code !== undefined) assert.equal(body.error.code, code, JSON.stringify(body));
  if (type !== undefined) assert.equal(body.error.type, type, JSON.stringify(body));
}

/** fetch, with the network-level cause (EPIPE, ECONNRESET, …) in the error message. */
async function fetchOrExplain(url, init) {
  try {
    return await fetch(url, init);
  } catch (e) {
    const cause = e.cause?.code || e.cause?.message || 'unknown cause';
    throw new Error(`${init?.method || 'GET'} ${url}: ${e.message} (${cause}); no HTTP response was read`, { cause: e });
  }
}

/** Raw POST to the proxy; returns { status, headers, text, json }. */
async function post(path, body, { key = h.key, headers = {}, url = h.url, ...init } = {}) {
  const res = await fetchOrExplain(`${url}${path}`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(key === null ? {} : { authorization: `Bearer ${key}` }),
      ...headers,
    },
    body: typeof body === 'string' || body instanceof Uint8Array || body instanceof ReadableStream ? body : JSON.stringify(body),
    ...init,
  });
  return readResponse(res);
}

/** Runs an SDK streaming chat completion to its end (or error); collects chunks with arrival times. */
async function sdkStream(client, params) {
  const { data: stream, response } = await client.chat.completions
    .create({ ...params, stream: true })
    .withResponse();
  const chunks = [];
  const times = [];
  let error = null;
  try {
    for await (const chunk of stream) {
      chunks.push(chunk);
      times.push(performance.now());
    }
  } catch (e) {
    error = e;
  }
  return { response, requestId: response.headers.get('x-request-id'), chunks, times, error };
}

const contentOf = (chunks) =>
  chunks.map((c) => c.choices?.[0]?.delta?.content).filter((c) => typeof c === 'string' && c.length > 0);

/** Asserts that no usage row appears for the request / account within `ms`. */
async function assertNoUsage({ requestId, userId }, ms = 400) {
  await sleep(ms);
  if (requestId) assert.equal(await h.usageRowNow(requestId), null, `unexpected usage row for ${requestId}`);
  if (userId)
    assert.equal(await psql(`SELECT count(*) FROM usage_logs WHERE user_id = ${lit(userId)}`), '0');
}

async function catchError(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail('expected the request to fail');
}

const REQ_ID = /^[\w-]{8,}$/; // tollgate's x-request-id (usage_logs.request_id)

// ---------------------------------------------------------------------------------------------
// 1

test('1. non-streaming chat completion: stub content, usage row with exact charge, balance debited', async () => {
  const acct = h.account;
  const balanceBefore = await h.balance(acct.id);
  const messages = [{ role: 'user', content: 'Hello, tollgate! How are you?' }];

  const { data, response } = await sdk(h.key)
    .chat.completions.create({ model: h.model, messages })
    .withResponse();

  assert.equal(response.status, 200);
  const requestId = response.headers.get('x-request-id');
  assert.match(requestId, REQ_ID);
  assert.equal(data.object, 'chat.completion');
  assert.equal(data.choices[0].message.content, stubContent(8).join(''));
  assert.equal(data.choices[0].finish_reason, 'stop');
  assert.equal(data.usage.prompt_tokens, stubPromptTokens(messages));
  assert.equal(data.usage.completion_tokens, 8);

  const row = await h.usageRow(requestId);
  assert.equal(row.status, 'success');
  assert.equal(row.user_id, acct.id);
  assert.equal(row.api_key_id, acct.keyId);
  assert.equal(row.model, h.model);
  assert.equal(row.prompt_tokens, data.usage.prompt_tokens);
  assert.equal(row.completion_tokens, data.usage.completion_tokens);
  assert.equal(row.total_tokens, data.usage.prompt_tokens + data.usage.completion_tokens);

  const ref = await h.price(h.model, row.prompt_tokens, row.completion_tokens);
  // The namespace's rule (+25 %) must be what applied: check the SQL reference independently.
  assert.deepEqual(ref, expectedCharge(row.prompt_tokens, row.completion_tokens));
  assert.equal(toMicros(row.credits_deducted), ref.charge, 'credits_deducted != tollgate_price().charge_usd');
  assert.equal(toMicros(row.cost_usd), ref.cost, 'cost_usd != tollgate_price().cost_usd');
  assert.ok(ref.charge > 0n);

  const balanceAfter = await h.balance(acct.id);
  assert.equal(fromMicros(balanceBefore - balanceAfter), fromMicros(ref.charge), 'balance did not drop by the charge');

  const ledger = await h.ledger(requestId);
  assert.equal(ledger.length, 1, JSON.stringify(ledger));
  assert.equal(ledger[0].transaction_type, 'usage');
  assert.equal(toMicros(ledger[0].amount), -ref.charge);
  assert.equal(toMicros(ledger[0].balance_after), balanceAfter);
});

// ---------------------------------------------------------------------------------------------
// 2

test('2a. streaming without stream_options: content chunk by chunk, usage on the finish_reason chunk (no choices:[] chunk), usage recorded', async () => {
  const messages = [{ role: 'user', content: 'Stream to me, please.' }];
  const chunksWanted = 6;
  const interval = 40;
  const s = await sdkStream(sdk(h.key), {
    model: h.model,
    messages,
    stub_chunks: chunksWanted,
    stub_interval_ms: interval,
  });
  assert.equal(s.error, null, `stream failed: ${s.error}`);
  assert.equal(s.response.status, 200);
  assert.match(s.requestId, REQ_ID);

  assert.deepEqual(contentOf(s.chunks), stubContent(chunksWanted));
  // Each event is its own chunk, delivered as it is produced (not buffered to the end).
  for (const c of s.chunks) assert.equal(c.object, 'chat.completion.chunk');
  const contentTimes = s.chunks.map((c, i) => (c.choices?.[0]?.delta?.content ? s.times[i] : null)).filter((t) => t !== null);
  const spread = contentTimes.at(-1) - contentTimes[0];
  assert.ok(spread >= (chunksWanted - 1) * interval * 0.6, `content arrived within ${spread.toFixed(0)} ms: buffered?`);

  // Without stream_options the usage rides on the finish_reason chunk (OpenRouter's convention,
  // issue 13), with the customer's charge as its cost; no choices:[] chunk breaks choices[0].
  const usageChunks = s.chunks.filter((c) => c.usage != null);
  assert.equal(usageChunks.length, 1, `expected the usage on one chunk, got ${JSON.stringify(usageChunks)}`);
  assert.ok(usageChunks[0].choices?.[0]?.finish_reason, 'the usage is not on the finish_reason chunk');
  assert.equal(s.chunks.filter((c) => c.choices?.length === 0).length, 0, 'a choices:[] chunk leaked through');

  const row = await h.usageRow(s.requestId);
  assert.equal(row.status, 'success');
  assert.equal(row.prompt_tokens, stubPromptTokens(messages));
  assert.equal(row.completion_tokens, chunksWanted);
  assert.equal(usageChunks[0].usage.prompt_tokens, row.prompt_tokens);
  assert.equal(usageChunks[0].usage.completion_tokens, row.completion_tokens);
  assert.equal(row.request_metadata.stream, true);
  const ref = await h.price(h.model, row.prompt_tokens, row.completion_tokens);
  assert.deepEqual(ref, expectedCharge(row.prompt_tokens, row.completion_tokens));
  assert.equal(toMicros(row.credits_deducted), ref.charge);
  assert.equal(BigInt(Math.round(usageChunks[0].usage.cost * 1e6)), ref.charge, 'usage.cost is not the charge');
  assert.equal(usageChunks[0].usage.cost_details, undefined);
});

test('2b. streaming with stream_options.include_usage: exactly one usage chunk, matching the usage row', async () => {
  const acct = h.account;
  const balanceBefore = await h.balance(acct.id);
  const messages = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Count for me.' },
  ];
  const s = await sdkStream(sdk(h.key), {
    model: h.model,
    messages,
    stream_options: { include_usage: true },
    stub_chunks: 5,
  });
  assert.equal(s.error, null, `stream failed: ${s.error}`);
  assert.deepEqual(contentOf(s.chunks), stubContent(5));

  const usageChunks = s.chunks.filter((c) => c.usage != null);
  assert.equal(usageChunks.length, 1, `expected exactly one usage chunk, got ${usageChunks.length}`);
  const u = usageChunks[0];
  assert.deepEqual(u.choices, []);
  assert.equal(s.chunks.at(-1), u, 'the usage chunk is not the last chunk');
  assert.equal(u.usage.prompt_tokens, stubPromptTokens(messages));
  assert.equal(u.usage.completion_tokens, 5);

  const row = await h.usageRow(s.requestId);
  assert.equal(row.status, 'success');
  assert.equal(row.prompt_tokens, u.usage.prompt_tokens);
  assert.equal(row.completion_tokens, u.usage.completion_tokens);
  const ref = await h.price(h.model, row.prompt_tokens, row.completion_tokens);
  assert.equal(toMicros(row.credits_deducted), ref.charge);
  assert.equal(balanceBefore - (await h.balance(acct.id)), ref.charge);
});

test('2c. streaming with stream_options.include_usage=false: no usage chunk, still billed', async () => {
  const messages = [{ role: 'user', content: 'no usage for me' }];
  const s = await sdkStream(sdk(h.key), {
    model: h.model,
    messages,
    stream_options: { include_usage: false },
    stub_chunks: 3,
  });
  assert.equal(s.error, null, `stream failed: ${s.error}`);
  assert.deepEqual(contentOf(s.chunks), stubContent(3));
  assert.equal(s.chunks.filter((c) => c.usage != null).length, 0, 'usage chunk leaked to a client that declined it');
  const row = await h.usageRow(s.requestId);
  assert.equal(row.status, 'success');
  assert.equal(row.prompt_tokens, stubPromptTokens(messages));
  assert.equal(row.completion_tokens, 3);
  assert.equal(toMicros(row.credits_deducted), (await h.price(h.model, row.prompt_tokens, 3)).charge);
});

// ---------------------------------------------------------------------------------------------
// 3

test("3. the upstream receives the operator's key, never the client's", async () => {
  const messages = [{ role: 'user', content: 'whose key?' }];
  const s = await sdkStream(sdk(h.key), { model: h.model, messages, stub_chunks: 2 });
  assert.equal(s.error, null, `stream failed: ${s.error}`);
  const last = await h.stubLast();
  assert.equal(last.authorization, `Bearer ${h.upstreamKey}`);
  assert.ok(!JSON.stringify(last).includes(h.key), 'the client key reached the upstream');
  assert.match(last.target, /\/api\/v1\/chat\/completions$/);
  const sent = JSON.parse(last.body);
  assert.equal(sent.model, h.model);
  assert.deepEqual(sent.messages, messages);
  // To bill a stream the proxy asks for usage, and caps max_tokens when the client did not.
  assert.equal(sent.stream, true);
  assert.equal(sent.stream_options?.include_usage, true);
  assert.equal(sent.max_tokens, 4096);
});

// ---------------------------------------------------------------------------------------------
// 4

test('4. bad or missing key: 401 AuthenticationError', async () => {
  const alphabet = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
  const garbage = 'tg_' + Array.from({ length: 38 }, () => alphabet[Math.floor(Math.random() * 62)]).join('');
  const params = { model: h.model, messages: [{ role: 'user', content: 'hi' }] };
  const stubBefore = (await h.stubLast()).requests;

  for (const [label, client] of [
    ['garbage tg_ key', sdk(garbage)],
    ['a non-tollgate key (the upstream key)', sdk(h.upstreamKey)],
    ['no Authorization header', sdk('unused', { client: { defaultHeaders: { Authorization: null } } })],
  ]) {
    const err = await catchError(client.chat.completions.create(params));
    assert.ok(err instanceof OpenAI.AuthenticationError, `${label}: ${err?.constructor?.name}: ${err}`);
    assert.equal(err.status, 401, label);
    assert.equal(err.error?.code, 'invalid_api_key', label);
    assert.match(err.requestID ?? '', REQ_ID, `${label}: x-request-id`);
  }

  // Raw: the body is OpenAI-shaped.
  for (const key of [null, garbage]) {
    const r = await post('/v1/chat/completions', params, { key });
    assert.equal(r.status, 401);
    assertErrorShape(r.json, { code: 'invalid_api_key' });
    assert.match(r.headers.get('x-request-id') ?? '', REQ_ID);
  }
  assert.equal((await h.stubLast()).requests, stubBefore, 'an unauthenticated request reached the upstream');
});

// ---------------------------------------------------------------------------------------------
// 5

test('5a. zero balance: 402 insufficient_credits, upstream not called, no usage row', async () => {
  const broke = await h.newAccount({ usd: '0', label: 'broke' });
  assert.equal(await h.balance(broke.id), 0n);
  const stubBefore = (await h.stubLast()).requests;

  const err = await catchError(
    sdk(broke.key).chat.completions.create({ model: h.model, messages: [{ role: 'user', content: 'free lunch?' }] }),
  );
  assert.ok(err instanceof OpenAI.APIError, String(err));
  assert.equal(err.status, 402);
  assert.equal(err.error?.code, 'insufficient_credits');
  assert.match(err.requestID ?? '', REQ_ID);

  const raw = await post('/v1/chat/completions', { model: h.model, messages: [{ role: 'user', content: 'x' }] }, { key: broke.key });
  assert.equal(raw.status, 402);
  assertErrorShape(raw.json, { code: 'insufficient_credits' });

  assert.equal((await h.stubLast()).requests, stubBefore, 'the upstream was called for a refused request');
  await assertNoUsage({ requestId: err.requestID, userId: broke.id });
  assert.equal(await h.balance(broke.id), 0n);
});

test('5b. admission boundary: worst case = body bytes as prompt tokens + max_tokens, with the pricing rule', async () => {
  const acct = await h.newAccount({ usd: '0', label: 'edge' });
  const maxTokens = 300;
  const body = JSON.stringify({ model: h.model, max_tokens: maxTokens, messages: [{ role: 'user', content: 'edge case' }] });
  const bytes = Buffer.byteLength(body);
  const worstLow = (await h.price(h.model, bytes, maxTokens)).charge; // body bytes as prompt tokens
  const worstHigh = (await h.price(h.model, bytes + 1, maxTokens)).charge; // allow one token of slack
  assert.ok(worstLow > 1n);

  // One micro-dollar short of the worst case: refused.
  await tollgate('credits', 'add', acct.id, fromMicros(worstLow - 1n));
  let r = await post('/v1/chat/completions', body, { key: acct.key });
  assert.equal(r.status, 402, `balance ${fromMicros(worstLow - 1n)} < worst case ${fromMicros(worstLow)}: ${r.text}`);
  assertErrorShape(r.json, { code: 'insufficient_credits' });

  // Exactly the worst case (with one token of slack): admitted — once the top-up reached Redis
  // (its NOTIFY; the README promises every instance within 1 s). A 402 before that charges nothing.
  await tollgate('credits', 'add', acct.id, fromMicros(worstHigh - (worstLow - 1n)));
  const deadline = Date.now() + 1000;
  do {
    r = await post('/v1/chat/completions', body, { key: acct.key });
    if (r.status !== 402) break;
    await sleep(50);
  } while (Date.now() < deadline);
  assert.equal(r.status, 200, `balance ${fromMicros(worstHigh)} covers the worst case: ${r.text}`);
  const row = await h.usageRow(r.headers.get('x-request-id'));
  assert.equal(row.status, 'success');
  assert.equal(await h.balance(acct.id), worstHigh - toMicros(row.credits_deducted));
});

// ---------------------------------------------------------------------------------------------
// 6

test('6. a revoked key is refused within 1 s', async (t) => {
  const { key, keyId } = await h.newKey(h.account.id, 'to-revoke');
  const client = sdk(key);
  // Use it first so that the proxy has it cached as valid.
  const ok = await client.chat.completions.create({ model: h.model, messages: [{ role: 'user', content: 'soon revoked' }] });
  assert.equal(ok.choices[0].message.content, stubContent(8).join(''));
  const list = await client.models.list();
  assert.ok(list.data.length > 0);

  await tollgate('keys', 'revoke', keyId);
  const t0 = performance.now();
  let refusedAt = null;
  let lastErr = null;
  while (performance.now() - t0 < 3000) {
    try {
      await client.models.list();
    } catch (e) {
      lastErr = e;
      if (e instanceof OpenAI.AuthenticationError) {
        refusedAt = performance.now() - t0;
        break;
      }
      throw e;
    }
    await sleep(50);
  }
  assert.notEqual(refusedAt, null, 'the revoked key was still accepted after 3 s');
  t.diagnostic(`revoked key refused ${refusedAt.toFixed(0)} ms after the revoke command returned`);
  assert.ok(refusedAt < 1000, `the revoked key was accepted for ${refusedAt.toFixed(0)} ms (limit 1000 ms)`);
  assert.equal(lastErr.status, 401);
  assert.equal(lastErr.error?.code, 'invalid_api_key');

  // Generation is refused too, and the upstream never sees it.
  const stubBefore = (await h.stubLast()).requests;
  const err = await catchError(client.chat.completions.create({ model: h.model, messages: [{ role: 'user', content: 'x' }] }));
  assert.ok(err instanceof OpenAI.AuthenticationError, String(err));
  assert.equal((await h.stubLast()).requests, stubBefore);
  // The account's other key still works.
  const still = await sdk(h.key).models.list();
  assert.ok(still.data.some((m) => m.id === h.model));
});

// ---------------------------------------------------------------------------------------------
// 7

test('7. upstream errors are passed through with status and body (no retries)', async () => {
  const acct = h.account;
  const client = sdk(h.key);
  for (const [status, cls] of [
    [429, OpenAI.RateLimitError],
    [503, OpenAI.InternalServerError],
    [400, OpenAI.BadRequestError],
  ]) {
    const balanceBefore = await h.balance(acct.id);
    const stubBefore = (await h.stubLast()).requests;
    const err = await catchError(
      client.chat.completions.create({
        model: h.model,
        messages: [{ role: 'user', content: 'fail please' }],
        stub_fail: `status:${status}`,
      }),
    );
    assert.ok(err instanceof cls, `status ${status}: ${err?.constructor?.name}: ${err}`);
    assert.equal(err.status, status);
    assert.equal(err.error?.message, 'stub failure', 'the upstream error body was not passed through');
    assert.equal(err.error?.code, status);
    assert.equal((await h.stubLast()).requests, stubBefore + 1, 'expected exactly one upstream call (no retry)');
    assert.match(err.requestID ?? '', REQ_ID);

    const row = await h.usageRow(err.requestID);
    assert.equal(row.status, 'upstream_error');
    assert.equal(row.response_metadata?.status_code, status);
    assert.equal(toMicros(row.credits_deducted), 0n, 'a failed upstream call was charged');
    assert.equal(await h.balance(acct.id), balanceBefore);
  }
});

// ---------------------------------------------------------------------------------------------
// 8

test('8. mid-stream upstream error: first chunks, then the error event; usage recorded', async () => {
  const s = await sdkStream(sdk(h.key), {
    model: h.model,
    messages: [{ role: 'user', content: 'break halfway' }],
    stub_chunks: 8,
    stub_fail: 'midstream',
  });
  assert.equal(s.response.status, 200);
  assert.deepEqual(contentOf(s.chunks), stubContent(4), 'expected the first half of the chunks');
  assert.ok(s.error, 'the SDK did not surface the mid-stream error');
  assert.ok(s.error instanceof OpenAI.APIError, `${s.error?.constructor?.name}: ${s.error}`);
  assert.equal(s.error.error?.message, 'stub mid-stream error');

  const row = await h.usageRow(s.requestId);
  assert.equal(row.status, 'upstream_error');
  assert.equal(row.completion_tokens, 4, 'bill the 4 delivered chunks');
  assert.ok(row.prompt_tokens > 0);
  const ref = await h.price(h.model, row.prompt_tokens, row.completion_tokens);
  assert.equal(toMicros(row.credits_deducted), ref.charge);
});

test('8b. upstream connection cut mid-stream: first chunks, then an upstream_disconnected error event', async () => {
  const s = await sdkStream(sdk(h.key), {
    model: h.model,
    messages: [{ role: 'user', content: 'cut me off' }],
    stub_chunks: 8,
    stub_fail: 'drop_midstream',
  });
  assert.equal(s.response.status, 200);
  assert.deepEqual(contentOf(s.chunks), stubContent(4));
  assert.ok(s.error instanceof OpenAI.APIError, `${s.error?.constructor?.name}: ${s.error}`);
  assert.equal(s.error.error?.code, 'upstream_disconnected');

  const row = await h.usageRow(s.requestId);
  assert.equal(row.status, 'upstream_aborted');
  assert.equal(row.completion_tokens, 4, 'bill the 4 delivered chunks');
  assert.equal(toMicros(row.credits_deducted), (await h.price(h.model, row.prompt_tokens, 4)).charge);
});

// ---------------------------------------------------------------------------------------------
// 9

test('9. client abort mid-stream: usage row client_aborted, 0 < charge <= worst case', async (t) => {
  const body = JSON.stringify({
    model: h.model,
    stream: true,
    messages: [{ role: 'user', content: 'a long story please' }],
    stub_chunks: 50,
    stub_interval_ms: 20,
  });
  const ac = new AbortController();
  const res = await fetch(`${h.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${h.key}` },
    body,
    signal: ac.signal,
  });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
  const requestId = res.headers.get('x-request-id');
  assert.match(requestId, REQ_ID);

  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let text = '';
  let contentEvents = 0;
  while (contentEvents < 3) {
    const { value, done } = await reader.read();
    assert.ok(!done, 'stream ended before 3 content events');
    text += dec.decode(value, { stream: true });
    contentEvents = (text.match(/"content":"tok\d+ "/g) || []).length;
  }
  ac.abort();
  await reader.cancel().catch(() => {});
  const abortedAt = performance.now();

  const row = await h.usageRow(requestId);
  const recordedAfter = performance.now() - abortedAt;
  t.diagnostic(`aborted after ${contentEvents} events; recorded ${row.completion_tokens} completion tokens, ${row.credits_deducted} USD, ${recordedAfter.toFixed(0)} ms after the abort`);
  assert.equal(row.status, 'client_aborted');
  assert.ok(row.completion_tokens >= 3, `completion_tokens ${row.completion_tokens} < the 3 chunks seen`);
  assert.ok(row.completion_tokens < 50, `completion_tokens ${row.completion_tokens}: the stream ran to its end`);
  const charge = toMicros(row.credits_deducted);
  assert.ok(charge > 0n, 'an aborted stream was not charged');
  const worst = (await h.price(h.model, Buffer.byteLength(body) + 1, 4096)).charge;
  assert.ok(charge <= worst, `charge ${fromMicros(charge)} > worst case ${fromMicros(worst)}`);
  const ref = await h.price(h.model, row.prompt_tokens, row.completion_tokens);
  assert.equal(charge, ref.charge);
  // 50 chunks at 20 ms would take 1 s: the abort must be noticed well before that.
  assert.ok(recordedAfter < 900, `usage recorded ${recordedAfter.toFixed(0)} ms after the abort`);
});

// ---------------------------------------------------------------------------------------------
// 10

test('10. upstream unreachable: 502 with the OpenAI error shape, nothing charged', async () => {
  const port = await closedPort();
  const dead = await h.startProxy({ upstreamUrl: `http://127.0.0.1:${port}/api/v1`, name: 'tollgate-dead-upstream' });
  try {
    const balanceBefore = await h.balance(h.account.id);
    const err = await catchError(
      sdk(h.key, { url: dead.url }).chat.completions.create({ model: h.model, messages: [{ role: 'user', content: 'anyone?' }] }),
    );
    assert.ok(err instanceof OpenAI.InternalServerError, `${err?.constructor?.name}: ${err}`);
    assert.equal(err.status, 502);
    assert.match(err.requestID ?? '', REQ_ID);

    const r = await post('/v1/chat/completions', { model: h.model, stream: true, messages: [{ role: 'user', content: 'x' }] }, { url: dead.url });
    assert.equal(r.status, 502);
    assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
    assertErrorShape(r.json);
    assert.match(r.headers.get('x-request-id') ?? '', REQ_ID);

    await assertNoUsage({ requestId: err.requestID });
    assert.equal(await h.usageRowNow(r.headers.get('x-request-id')), null);
    assert.equal(await h.balance(h.account.id), balanceBefore);
  } finally {
    await dead.child.stop();
  }
});

/** A non-streaming request the stub breaks with `mode`: expect a 502 OpenAI error and no charge. */
async function expectBadGatewayFor(mode, t) {
  await h.settled();  // earlier requests' usage (10b's warm-up) is committed before the balance is read
  const balanceBefore = await h.balance(h.account.id);
  const callsBefore = (await h.stubLast()).requests;
  const r = await post('/v1/chat/completions', {
    model: h.model,
    messages: [{ role: 'user', content: `non-streaming ${mode}` }],
    stub_fail: mode,
  });
  const calls = (await h.stubLast()).requests - callsBefore;
  t.diagnostic(`stub_fail=${mode}: the upstream received ${calls} request(s)`);
  assert.equal(calls, 1, 'the proxy re-sent a billable POST upstream');
  assert.equal(r.status, 502, r.text);
  assertErrorShape(r.json, { type: 'upstream_error' });
  const requestId = r.headers.get('x-request-id');
  assert.match(requestId ?? '', REQ_ID);
  const row = await h.usageRow(requestId);
  assert.equal(row.status, 'upstream_aborted');
  assert.equal(toMicros(row.credits_deducted), 0n, 'charged for a response the client never got');
  assert.equal(await h.balance(h.account.id), balanceBefore);
}

test('10b. upstream closes without any response (non-streaming): 502, usage row upstream_aborted, no charge', async (t) => {
  // Leave an idle pooled upstream connection first: the diagnostic then shows whether the proxy
  // re-sends the (non-idempotent, billable) POST after the upstream received it and hung up.
  await sdk(h.key).chat.completions.create({ model: h.model, messages: [{ role: 'user', content: 'warm' }], max_tokens: 1 });
  await expectBadGatewayFor('drop', t);
});

test('10c. upstream closes halfway through a non-streaming body: 502 (not a silent close), no charge', async (t) => {
  await expectBadGatewayFor('drop_midstream', t);
});

// ---------------------------------------------------------------------------------------------
// 11

test('11. GET /v1/models via client.models.list() includes the e2e model', async () => {
  const ids = [];
  for await (const m of sdk(h.key).models.list()) {
    assert.equal(m.object, 'model');
    ids.push(m.id);
  }
  assert.ok(ids.includes(h.model), `${h.model} not in ${JSON.stringify(ids)}`);
  const mine = (await sdk(h.key).models.list()).data.find((m) => m.id === h.model);
  assert.equal(mine.owned_by, h.namespace);
  // Auth is required for the catalogue too.
  const err = await catchError(sdk(`tg_${'x'.repeat(38)}`).models.list());
  assert.ok(err instanceof OpenAI.AuthenticationError, String(err));
});

// ---------------------------------------------------------------------------------------------
// 12

test('12a. malformed requests: bad JSON, missing model, unpriced model -> 400 (OpenAI error shape)', async () => {
  const stubBefore = (await h.stubLast()).requests;

  let r = await post('/v1/chat/completions', '{"model": "x", "messages": [');
  assert.equal(r.status, 400, r.text);
  assertErrorShape(r.json, { type: 'invalid_request_error' });
  assert.match(r.headers.get('x-request-id') ?? '', REQ_ID);

  r = await post('/v1/chat/completions', 'not json at all');
  assert.equal(r.status, 400, r.text);
  assertErrorShape(r.json, { type: 'invalid_request_error' });

  r = await post('/v1/chat/completions', '{"messages": []}');
  assert.equal(r.status, 400, r.text);
  assertErrorShape(r.json, { type: 'invalid_request_error' });

  const unpriced = `${h.namespace}/unpriced-${randomSuffix(3)}`;
  const err = await catchError(sdk(h.key).chat.completions.create({ model: unpriced, messages: [{ role: 'user', content: 'x' }] }));
  assert.ok(err instanceof OpenAI.BadRequestError, String(err));
  assert.equal(err.status, 400);
  assert.equal(err.error?.code, 'model_not_found');

  assert.equal((await h.stubLast()).requests, stubBefore, 'a malformed request reached the upstream');
});

const bigBody = () => JSON.stringify({ model: h.model, messages: [{ role: 'user', content: 'a'.repeat(11 << 20) }] });

test('12b. an 11 MiB body with Content-Length -> 413 response (fetch must see it, not a reset)', async () => {
  const stubBefore = (await h.stubLast()).requests;
  const r = await post('/v1/chat/completions', bigBody());
  assert.equal(r.status, 413, r.text);
  assertErrorShape(r.json, { code: 'request_too_large' });
  assert.equal((await h.stubLast()).requests, stubBefore);
});

test('12c. an 11 MiB chunked body (no Content-Length) -> 413 response', async () => {
  const stubBefore = (await h.stubLast()).requests;
  const bytes = new TextEncoder().encode(bigBody());
  const stream = new ReadableStream({
    start(controller) {
      for (let i = 0; i < bytes.length; i += 1 << 20) controller.enqueue(bytes.subarray(i, i + (1 << 20)));
      controller.close();
    },
  });
  const r = await post('/v1/chat/completions', stream, { duplex: 'half' });
  assert.equal(r.status, 413, r.text);
  assertErrorShape(r.json, { code: 'request_too_large' });
  assert.equal((await h.stubLast()).requests, stubBefore);
});

test('12d. the openai SDK sees an oversized request as a 413 APIError, not a connection error', async () => {
  const err = await catchError(
    sdk(h.key).chat.completions.create({ model: h.model, messages: [{ role: 'user', content: 'a'.repeat(11 << 20) }] }),
  );
  assert.ok(err instanceof OpenAI.APIError && !(err instanceof OpenAI.APIConnectionError),
    `expected a 413 APIError, got ${err?.constructor?.name}: ${err?.message} (cause: ${err?.cause?.cause?.code ?? err?.cause?.code ?? err?.cause?.message})`);
  assert.equal(err.status, 413);
  assert.equal(err.error?.code, 'request_too_large');
});

// ---------------------------------------------------------------------------------------------
// 13 (beyond the brief's list): the other billable endpoints through the SDK

test('13. legacy completions and embeddings are billed from the upstream usage', async () => {
  const client = sdk(h.key);

  const { data: comp, response: compRes } = await client.completions
    .create({ model: h.model, prompt: 'Once upon a time', max_tokens: 5 })
    .withResponse();
  assert.equal(comp.choices[0].text, stubContent(5).join(''));
  assert.equal(comp.usage.prompt_tokens, Math.floor((16 + 3) / 4));
  assert.equal(comp.usage.completion_tokens, 5);
  let row = await h.usageRow(compRes.headers.get('x-request-id'));
  assert.equal(row.status, 'success');
  assert.equal(row.request_metadata.endpoint, '/completions');
  assert.deepEqual([row.prompt_tokens, row.completion_tokens], [comp.usage.prompt_tokens, 5]);
  assert.equal(toMicros(row.credits_deducted), expectedCharge(row.prompt_tokens, 5).charge);

  const { data: emb, response: embRes } = await client.embeddings
    .create({ model: h.model, input: ['first input', 'second input text'], encoding_format: 'float' })
    .withResponse();
  assert.equal(emb.data.length, 2);
  assert.equal(emb.data[0].embedding.length, 8);
  row = await h.usageRow(embRes.headers.get('x-request-id'));
  assert.equal(row.status, 'success');
  assert.equal(row.prompt_tokens, emb.usage.prompt_tokens);
  assert.equal(row.prompt_tokens, Math.floor((11 + 3) / 4) + Math.floor((17 + 3) / 4));
  assert.equal(row.completion_tokens, 0);
  assert.equal(toMicros(row.credits_deducted), expectedCharge(row.prompt_tokens, 0).charge);
});

// ---------------------------------------------------------------------------------------------
// Keys never leak

test('14. raw API keys appear in no log line and no metric', async () => {
  // Provoke the paths that log: a bad key, an upstream error, a revoked key's refusal.
  await fetch(`${h.url}/v1/models`, { headers: { authorization: `Bearer ${h.key}x` } });
  await post('/v1/chat/completions', { model: h.model, messages: [{ role: 'user', content: 'x' }], stub_fail: 'status:500' });
  const metrics = await (await fetch(`${h.adminUrl}/metrics`)).text();
  for (const secret of [h.key, h.key.slice(3), h.upstreamKey]) {
    assert.ok(!h.proxy.child.log.includes(secret), 'a key appears in the proxy log');
    assert.ok(!metrics.includes(secret), 'a key appears in /metrics');
  }
});
