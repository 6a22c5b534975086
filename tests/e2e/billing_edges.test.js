// Exact billing at the edges (issue 10, point 9), driven by the official `openai` SDK against the
// real tollgate and tollgate-stub (harness.js): a client that stops reading mid-stream is billed
// for what reached it, an upstream's Retry-After survives, and upstream errors reach the client in
// OpenAI's envelope with the upstream's code and metadata, never the operator's key or the cost.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';

import { readResponse, toMicros, useHarness } from './harness.js';

const h = useHarness();

const sdk = (apiKey = h.key) => new OpenAI({ apiKey, baseURL: `${h.url}/v1`, maxRetries: 0, timeout: 15_000 });
const REQ_ID = /^[\w-]{8,}$/;

async function catchError(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail('expected the request to fail');
}

/** Raw POST to the proxy: { status, headers, text, json }. */
async function post(body) {
  const res = await fetch(`${h.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${h.key}` },
    body: JSON.stringify(body),
  });
  return readResponse(res);
}

/** What must never reach a client: the operator's upstream key, and the upstream's cost. */
function assertNothingLeaks(text) {
  assert.ok(!text.includes(h.upstreamKey), `the operator's upstream key reached the client: ${text}`);
  assert.ok(!/cost/i.test(text), `the upstream's cost reached the client: ${text}`);
}

/** Asserts an error row: status upstream_error, the upstream's status, nothing charged. */
async function assertUnchargedError(requestId, status) {
  assert.match(requestId ?? '', REQ_ID);
  const row = await h.usageRow(requestId);
  assert.equal(row.status, 'upstream_error');
  assert.equal(row.response_metadata.status_code, status);
  assert.equal(toMicros(row.credits_deducted), 0n, 'an upstream error before any output was charged');
}

const chat = (extra) => ({ model: h.model, messages: [{ role: 'user', content: 'edge' }], ...extra });

// ---------------------------------------------------------------------------------------------
// A client that stops reading: billed for the chunks that reached it, not for what was written
// after it left nor for the write that failed.

for (const wanted of [1, 3]) {
  test(`client stops after ${wanted} chunk(s): delivered_chunks = the chunks it could receive, billed for those`, async (t) => {
    const interval = 400; // ms between the stub's chunks: the abort lands well inside a gap
    const { data: stream, response } = await sdk()
      .chat.completions.create(chat({ stream: true, stub_chunks: 12, stub_interval_ms: interval }))
      .withResponse();
    const requestId = response.headers.get('x-request-id');
    assert.match(requestId ?? '', REQ_ID);
    let read = 0;
    let lastReadAt = 0;
    for await (const chunk of stream) {
      if (chunk.choices?.[0]?.delta?.content) {
        read += 1;
        lastReadAt = performance.now();
      }
      if (read === wanted) break; // the SDK aborts the request: the socket closes
    }
    const abortedAt = performance.now();
    assert.equal(read, wanted);

    const row = await h.usageRow(requestId);
    const delivered = row.response_metadata.delivered_chunks;
    // Chunk wanted+1 leaves the stub `interval` ms after the last one read (less its trip through
    // the proxy, < 100 ms here): the client could have received it only if it took that long to
    // abort. Normally it could receive exactly the chunks it read.
    const couldHave = wanted + Math.floor((abortedAt - lastReadAt + 100) / interval);
    t.diagnostic(`read ${read}, aborted ${(abortedAt - lastReadAt).toFixed(1)} ms after the last one; ` +
      `delivered_chunks ${delivered}, completion_tokens ${row.completion_tokens}, charge ${row.credits_deducted}`);
    assert.equal(row.status, 'client_aborted');
    assert.ok(delivered >= read, `delivered_chunks ${delivered} < the ${read} chunks the client read`);
    assert.ok(delivered <= couldHave, `delivered_chunks ${delivered} > the ${couldHave} chunks the client could have received`);
    assert.equal(row.response_metadata.usage_reported, false);
    // Billed: the delivered chunks as completion tokens, the prompt at 4 body bytes per token.
    assert.equal(row.completion_tokens, delivered);
    assert.equal(row.prompt_tokens, Math.ceil(row.request_metadata.body_bytes / 4));
    assert.equal(toMicros(row.credits_deducted), (await h.price(h.model, row.prompt_tokens, delivered)).charge);
  });
}

// ---------------------------------------------------------------------------------------------
// A mid-stream upstream error: the error event in OpenAI's envelope, billed for what was delivered.

test('mid-stream error: OpenAI envelope with the upstream code and metadata, billed for the delivered chunks', async () => {
  const upstreamError = {
    code: 502,
    message: `Provider returned error (upstream key ${h.upstreamKey})`,
    metadata: { provider_name: 'StubProvider', raw: 'connection reset', cost: 0.0042 },
  };
  const expected = {
    message: 'Provider returned error (upstream key [redacted])',
    type: 'upstream_error',
    param: null,
    code: 502,
    metadata: { provider_name: 'StubProvider', raw: 'connection reset' },
  };
  const { data: stream, response } = await sdk()
    .chat.completions.create(chat({ stream: true, stub_chunks: 8, stub_fail: 'midstream', stub_error: upstreamError }))
    .withResponse();
  const content = [];
  let error = null;
  try {
    for await (const chunk of stream) if (chunk.choices?.[0]?.delta?.content) content.push(chunk.choices[0].delta.content);
  } catch (e) {
    error = e;
  }
  assert.equal(response.status, 200);
  assert.equal(content.length, 4, 'the first half of the chunks');
  assert.ok(error instanceof OpenAI.APIError, `${error?.constructor?.name}: ${error}`);
  assert.deepEqual(error.error, expected);
  assert.equal(error.code, 502);
  assert.equal(error.type, 'upstream_error');

  const row = await h.usageRow(response.headers.get('x-request-id'));
  assert.equal(row.status, 'upstream_error');
  assert.equal(row.response_metadata.delivered_chunks, 4);
  assert.equal(row.completion_tokens, 4, 'bill the 4 delivered chunks');
  assert.equal(toMicros(row.credits_deducted), (await h.price(h.model, row.prompt_tokens, 4)).charge);
  assert.ok(toMicros(row.credits_deducted) > 0n);

  // The raw event stream: the same envelope, and nothing of the key or the cost.
  const raw = await post(chat({ stream: true, stub_chunks: 2, stub_fail: 'midstream', stub_error: upstreamError }));
  assert.equal(raw.status, 200);
  assertNothingLeaks(raw.text);
  const errorEvent = raw.text.split('\n').find((l) => l.startsWith('data: ') && l.includes('"error"'));
  assert.deepEqual(JSON.parse(errorEvent.slice(6)).error, expected);
});

// ---------------------------------------------------------------------------------------------
// Retry-After

for (const [status, cls, type] of [
  [429, OpenAI.RateLimitError, 'rate_limit_error'],
  [503, OpenAI.InternalServerError, 'upstream_error'],
]) {
  for (const stream of [false, true]) {
    test(`upstream ${status} (${stream ? 'streaming' : 'non-streaming'} request) keeps its Retry-After`, async () => {
      const err = await catchError(
        sdk().chat.completions.create(chat({ stream, stub_fail: `status:${status}`, stub_retry_after: 7 })),
      );
      assert.ok(err instanceof cls, `${err?.constructor?.name}: ${err}`);
      assert.equal(err.status, status);
      assert.equal(err.headers.get('retry-after'), '7');
      assert.deepEqual(err.error, { message: 'stub failure', type, param: null, code: status });
      await assertUnchargedError(err.requestID, status);
    });
  }
}

test('an HTTP-date Retry-After and one on an empty 503 body pass through as sent', async () => {
  const date = 'Wed, 21 Oct 2037 07:28:00 GMT';
  let r = await post(chat({ stub_fail: 'status:429', stub_retry_after: date }));
  assert.equal(r.status, 429);
  assert.equal(r.headers.get('retry-after'), date);
  r = await post(chat({ stub_fail: 'status:503', stub_retry_after: '30', stub_error_body: '' }));
  assert.equal(r.status, 503);
  assert.equal(r.headers.get('retry-after'), '30');
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
  assert.deepEqual(r.json, {
    error: { message: 'The upstream answered HTTP 503 with an empty body.', type: 'upstream_error', param: null, code: 503 },
  });
  await assertUnchargedError(r.headers.get('x-request-id'), 503);
});

// ---------------------------------------------------------------------------------------------
// Upstream error bodies in OpenAI's envelope

test("OpenRouter's error envelope arrives as OpenAI's, with the upstream code and metadata", async () => {
  const metadata = { reasons: ['violence'], flagged_input: 'edge', provider_name: 'Mod', model_slug: 'x/y' };
  const err = await catchError(
    sdk().chat.completions.create(
      chat({ stub_fail: 'status:403', stub_error: { code: 403, message: 'Input was flagged', metadata } }),
    ),
  );
  assert.ok(err instanceof OpenAI.PermissionDeniedError, `${err?.constructor?.name}: ${err}`);
  assert.equal(err.status, 403);
  assert.deepEqual(err.error, { message: 'Input was flagged', type: 'permission_denied', param: null, code: 403, metadata });
  assert.equal(err.code, 403);
  await assertUnchargedError(err.requestID, 403);

  // Raw: exactly {"error":{message,type,param,code,metadata}}, in that order; OpenRouter's other
  // top-level fields (its user id) are not passed on.
  const r = await post(chat({ stub_fail: 'status:402', stub_error_body: JSON.stringify({
    error: { code: 402, message: 'Insufficient credits', metadata: { needed: 3 } }, user_id: 'user_operator',
  }), stub_error_content_type: 'application/json' }));
  assert.equal(r.status, 402);
  assert.deepEqual(Object.keys(r.json), ['error']);
  assert.deepEqual(Object.keys(r.json.error), ['message', 'type', 'param', 'code', 'metadata']);
  assert.deepEqual(r.json.error, {
    message: 'Insufficient credits', type: 'insufficient_quota', param: null, code: 402, metadata: { needed: 3 },
  });
  assert.ok(!r.text.includes('user_operator'));
});

test("an OpenAI-shaped upstream error is passed on as it is", async () => {
  const error = { message: 'maximum context length is 8192 tokens', type: 'invalid_request_error', param: 'messages', code: 'context_length_exceeded' };
  const err = await catchError(sdk().chat.completions.create(chat({ stub_fail: 'status:400', stub_error: error })));
  assert.ok(err instanceof OpenAI.BadRequestError, `${err?.constructor?.name}: ${err}`);
  assert.deepEqual(err.error, error);
  assert.equal(err.code, 'context_length_exceeded');
  assert.equal(err.param, 'messages');
});

test("the operator's upstream key and the upstream's cost never reach the client in an error", async () => {
  const err = await catchError(sdk().chat.completions.create(chat({
    stub_fail: 'status:401',
    stub_error: {
      code: 401,
      message: `Incorrect API key provided: ${h.upstreamKey}`,
      metadata: { key: h.upstreamKey, usage: { cost: 0.5, total_cost: 0.5 }, cost_details: { upstream_inference_cost: 1 } },
    },
  })));
  assert.ok(err instanceof OpenAI.AuthenticationError, `${err?.constructor?.name}: ${err}`);
  assertNothingLeaks(JSON.stringify(err.error));
  assert.deepEqual(err.error, {
    message: 'Incorrect API key provided: [redacted]',
    type: 'authentication_error',
    param: null,
    code: 401,
    metadata: { key: '[redacted]', usage: {} },
  });
  // Not in a non-JSON body either.
  const r = await post(chat({ stub_fail: 'status:500', stub_error_body: `key=${h.upstreamKey} cost=1`, stub_error_content_type: 'text/plain' }));
  assert.equal(r.status, 500);
  assertNothingLeaks(r.text);
});

test('a non-JSON error body (an HTML 502 page) becomes a clear OpenAI error', async () => {
  const html = '<html><body><h1>502 Bad Gateway</h1></body></html>';
  const err = await catchError(sdk().chat.completions.create(chat({
    stub_fail: 'status:502', stub_error_body: html, stub_error_content_type: 'text/html',
  })));
  assert.ok(err instanceof OpenAI.InternalServerError, `${err?.constructor?.name}: ${err}`);
  assert.equal(err.status, 502);
  assert.deepEqual(err.error, {
    message: `The upstream answered HTTP 502 with a body that is not JSON (text/html, ${html.length} bytes).`,
    type: 'upstream_error',
    param: null,
    code: 502,
  });
  assert.match(err.headers.get('content-type') ?? '', /^application\/json/);
  await assertUnchargedError(err.requestID, 502);
});

// ---------------------------------------------------------------------------------------------
// A long stream (issue 11): 100,000 tokens is ~14 MiB of SSE, past Beast's default 8 MiB body
// limit that used to cut it. Delivered whole, every event well-formed, billed exactly.

test('a 100,000-token stream is delivered whole and billed exactly', async () => {
  const tokens = 100_000;
  const { data: stream, response } = await sdk()
    .chat.completions.create(chat({ stream: true, max_tokens: tokens, stub_chunks: tokens, stream_options: { include_usage: true } }))
    .withResponse();
  const requestId = response.headers.get('x-request-id');
  let content = 0, bytes = 0, usage = null, finish = null;
  for await (const chunk of stream) {  // the SDK throws on an event that is not JSON
    const delta = chunk.choices?.[0]?.delta?.content;
    if (delta) {
      content += 1;
      bytes += delta.length;
    }
    if (chunk.choices?.[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(content, tokens, 'every content event reached the client');
  assert.equal(finish, 'stop');
  assert.equal(usage?.completion_tokens, tokens);
  assert.ok(bytes > 500_000, `${bytes} bytes of content`);
  const row = await h.usageRow(requestId);
  assert.equal(row.status, 'success');
  assert.equal(Number(row.completion_tokens), tokens);
  assert.equal(row.response_metadata.delivered_chunks, tokens);
  assert.equal(toMicros(row.credits_deducted), (await h.price(h.model, row.prompt_tokens, tokens)).charge);
});
