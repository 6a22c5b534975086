// The OpenAI Responses API (POST /v1/responses, issue 13) through the official `openai` SDK:
// responses.create streaming and not, the responses.stream() helper, the output cap and the hold,
// cached and reasoning tokens, a client that leaves, and the upstream's mid-stream failures.
// Money: every usage row's charge equals tollgate_price() of its own token columns and the
// charge computed here, and `usage.cost` in what the client got is that charge.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';

import { fromMicros, sleep, tollgate } from './harness.js';
import {
  PRICED, REQ_ID, assertOnlyCharge, assertRowPriced, costMicros, expectedCharge, freshAccount, fullRow, parseSse,
  rawPost, recordingFetch, rowCount, tokens, useApiHarness,
} from './api_checks.js';

const h = useApiHarness();
const priced = () => h.m('priced');

const sdk = (apiKey = h.key, rec) =>
  new OpenAI({ apiKey, baseURL: `${h.url}/v1`, maxRetries: 0, timeout: 15_000, ...(rec ? { fetch: rec.fetch } : {}) });

/** The stub's prompt tokens for a string `input` (plus `instructions`), bench/stub/README.md. */
function stubInputTokens(input, instructions) {
  const texts = [input, ...(instructions === undefined ? [] : [instructions])];
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

/** Runs a streaming responses.create to its end; { requestId, events, error, times }. */
async function streamEvents(client, params, { stopAfterDeltas } = {}) {
  const { data: stream, response } = await client.responses.create({ ...params, stream: true }).withResponse();
  const events = [];
  const times = [];
  let error = null;
  let deltas = 0;
  let lastDeltaAt = 0;
  try {
    for await (const ev of stream) {
      events.push(ev);
      times.push(performance.now());
      if (ev.type === 'response.output_text.delta') {
        deltas += 1;
        lastDeltaAt = performance.now();
        if (deltas === stopAfterDeltas) break; // the SDK aborts the request
      }
    }
  } catch (e) {
    error = e;
  }
  return { response, requestId: response.headers.get('x-request-id'), events, times, error, deltas, lastDeltaAt, endedAt: performance.now() };
}

// ---------------------------------------------------------------------------------------------

test('1. responses.create (non-streaming): the text, usage, and usage.cost = the usage row\'s charge', async () => {
  const acct = await freshAccount(h, 'r1');
  const rec = recordingFetch();
  const input = 'Hello from the Responses API';
  const { data, response } = await sdk(acct.key, rec)
    .responses.create({ model: priced(), input, instructions: 'Be brief.' })
    .withResponse();
  assert.equal(response.status, 200);
  const requestId = response.headers.get('x-request-id');
  assert.match(requestId ?? '', REQ_ID);
  assert.equal(data.object, 'response');
  assert.equal(data.status, 'completed');
  assert.equal(data.output_text, stubText(8));
  assert.equal(data.usage.input_tokens, stubInputTokens(input, 'Be brief.'));
  assert.equal(data.usage.output_tokens, 8);
  assert.equal(data.usage.cost_details, undefined);

  const row = await fullRow(requestId);
  assert.equal(row.status, 'success');
  assert.equal(row.model, priced());
  assert.deepEqual(tokens(row), { prompt: data.usage.input_tokens, completion: 8, cached: 0, cache_write: 0, reasoning: 0 });
  assertRowPriced(row);
  assert.equal(row.charge, expectedCharge(tokens(row)));
  assert.equal(costMicros(data.usage.cost), row.charge, 'usage.cost is not the charge');
  assertOnlyCharge(await rec.last().text, row.charge);
  assert.equal(await rowCount(h, acct.id), 1);
});

test('2. responses.create streaming: every typed event in order and unbuffered; usage.cost on response.completed = the charge', async () => {
  const acct = await freshAccount(h, 'r2');
  const rec = recordingFetch();
  const chunks = 6;
  const interval = 40;
  const s = await streamEvents(sdk(acct.key, rec), {
    model: priced(), input: 'stream the Responses API', stub_chunks: chunks, stub_interval_ms: interval,
  });
  assert.equal(s.error, null, `stream failed: ${s.error}`);
  assert.equal(s.response.status, 200);
  assert.match(s.response.headers.get('content-type') ?? '', /^text\/event-stream/);
  const types = s.events.map((e) => e.type);
  assert.deepEqual(types, [
    'response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added',
    ...Array(chunks).fill('response.output_text.delta'),
    'response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.completed',
  ]);
  assert.deepEqual(s.events.map((e) => e.sequence_number), types.map((_, i) => i), 'events lost or reordered');
  const deltas = s.events.filter((e) => e.type === 'response.output_text.delta');
  assert.equal(deltas.map((e) => e.delta).join(''), stubText(chunks));
  const deltaTimes = s.events.map((e, i) => (e.type === 'response.output_text.delta' ? s.times[i] : null)).filter((t) => t !== null);
  const spread = deltaTimes.at(-1) - deltaTimes[0];
  assert.ok(spread >= (chunks - 1) * interval * 0.6, `the deltas arrived within ${spread.toFixed(0)} ms: buffered?`);

  const completed = s.events.at(-1).response;
  assert.equal(completed.status, 'completed');
  const row = await fullRow(s.requestId);
  assert.equal(row.status, 'success');
  assert.equal(row.request_metadata.stream, true);
  assert.equal(Number(row.prompt_tokens), completed.usage.input_tokens);
  assert.equal(Number(row.completion_tokens), chunks);
  assert.equal(completed.usage.output_tokens, chunks);
  assertRowPriced(row);
  assert.equal(row.charge, expectedCharge(tokens(row)));
  assert.equal(costMicros(completed.usage.cost), row.charge, 'response.completed usage.cost is not the charge');

  // The raw stream: each event is `event: <type>` + `data: {"type":<type>…}`, and the only cost
  // is the charge on response.completed.
  const raw = await rec.last().text;
  const sse = parseSse(raw);
  assert.deepEqual(sse.map((e) => e.event), types, 'raw events (event: lines)');
  for (const e of sse) assert.equal(e.data.type, e.event, `event: ${e.event} carries data of type ${e.data.type}`);
  assertOnlyCharge(raw, row.charge);
  assert.equal((raw.match(/"cost"/g) || []).length, 1, 'a cost outside response.completed');
  assert.equal(await rowCount(h, acct.id), 1);
});

test('3. the responses.stream() helper: finalResponse() has the text and the usage with the charge', async () => {
  const acct = await freshAccount(h, 'r3');
  const rec = recordingFetch();
  const stream = sdk(acct.key, rec).responses.stream({ model: priced(), input: 'helper please', stub_chunks: 4 });
  const texts = [];
  stream.on('response.output_text.delta', (e) => texts.push(e.delta));
  const final = await stream.finalResponse();
  assert.equal(texts.join(''), stubText(4));
  assert.equal(final.output_text, stubText(4));
  assert.equal(final.status, 'completed');
  assert.equal(final.usage.output_tokens, 4);
  const requestId = rec.last().headers.get('x-request-id');
  const row = await fullRow(requestId);
  assertRowPriced(row);
  assert.equal(costMicros(final.usage.cost), row.charge);
});

test('4. max_output_tokens is sent as asked and ends the response as incomplete; without it the default cap is sent', async () => {
  const acct = await freshAccount(h, 'r4');
  // Non-streaming, capped: status incomplete, billed for the 3 tokens.
  const rec = recordingFetch();
  const capped = await sdk(acct.key, rec).responses.create({ model: priced(), input: 'cap me', max_output_tokens: 3 });
  let sent = JSON.parse((await h.stubLast()).body);
  assert.equal(sent.max_output_tokens, 3);
  assert.equal(capped.status, 'incomplete');
  assert.equal(capped.incomplete_details?.reason, 'max_output_tokens');
  assert.equal(capped.usage.output_tokens, 3);
  let row = await fullRow(rec.last().headers.get('x-request-id'));
  assert.equal(Number(row.completion_tokens), 3);
  assertRowPriced(row);
  assert.equal(costMicros(capped.usage.cost), row.charge);

  // Streaming, capped: the usage (and the cost) come on response.incomplete.
  const s = await streamEvents(sdk(acct.key), { model: priced(), input: 'cap me too', max_output_tokens: 2 });
  assert.equal(s.error, null, String(s.error));
  const last = s.events.at(-1);
  assert.equal(last.type, 'response.incomplete');
  assert.equal(last.response.usage.output_tokens, 2);
  row = await fullRow(s.requestId);
  assert.equal(Number(row.completion_tokens), 2);
  assertRowPriced(row);
  assert.equal(costMicros(last.response.usage.cost), row.charge, 'response.incomplete usage.cost is not the charge');

  // No cap from the client: tollgate sends its default (billing.default_max_tokens, 4096).
  await sdk(acct.key).responses.create({ model: priced(), input: 'no cap' });
  sent = JSON.parse((await h.stubLast()).body);
  assert.equal(sent.max_output_tokens, 4096);
  assert.equal(sent.model, priced());
  assert.equal(await rowCount(h, acct.id), 3);
});

test('5. the hold: body bytes as prompt tokens + max_output_tokens (or the default cap): a micro-dollar short is 402', async () => {
  for (const cap of [300, undefined]) {
    const acct = await h.newAccount({ usd: '0', label: `hold${cap ?? 'default'}` });
    const body = JSON.stringify({ model: h.model, input: 'hold me', ...(cap ? { max_output_tokens: cap } : {}) });
    const worst = (await h.price(h.model, Buffer.byteLength(body), cap ?? 4096)).charge;
    const worstHigh = (await h.price(h.model, Buffer.byteLength(body) + 1, cap ?? 4096)).charge; // a token of slack
    const before = await h.stubLast();
    await tollgate('credits', 'add', acct.id, fromMicros(worst - 1n));
    let r = await rawPost(h, '/v1/responses', body, { key: acct.key });
    assert.equal(r.status, 402, `cap ${cap}: balance ${fromMicros(worst - 1n)} < worst case ${fromMicros(worst)}: ${r.text}`);
    assert.equal(r.json?.error?.code, 'insufficient_credits', r.text);
    assert.equal((await h.stubLast()).requests, before.requests, 'a refused request reached the upstream');

    await tollgate('credits', 'add', acct.id, fromMicros(worstHigh - (worst - 1n)));
    const deadline = Date.now() + 1500;
    do {
      r = await rawPost(h, '/v1/responses', body, { key: acct.key });
      if (r.status !== 402) break;
      await sleep(50);
    } while (Date.now() < deadline);
    assert.equal(r.status, 200, `cap ${cap}: a balance of the worst case is admitted: ${r.text}`);
    const row = await fullRow(r.requestId);
    assertRowPriced(row);
    assert.equal(await h.balance(acct.id), worstHigh - row.charge);
  }
});

test('6. cached and reasoning tokens: read from input_tokens_details / output_tokens_details and priced apart', async () => {
  const acct = await freshAccount(h, 'r6');
  const params = { model: priced(), input: 'cache me if you can', stub_chunks: 5, stub_cached_tokens: 6, stub_reasoning_tokens: 3 };
  const U = stubInputTokens(params.input);
  const want = { prompt: U + 6, completion: 5 + 3, cached: 6, cache_write: 0, reasoning: 3 };

  const json = await sdk(acct.key).responses.create(params).withResponse();
  assert.equal(json.data.usage.input_tokens_details.cached_tokens, 6);
  assert.equal(json.data.usage.output_tokens_details.reasoning_tokens, 3);
  let row = await fullRow(json.response.headers.get('x-request-id'));
  assert.deepEqual(tokens(row), want);
  assertRowPriced(row);
  assert.equal(row.charge, expectedCharge(want, PRICED), 'cached / reasoning tokens not at their own prices');
  assert.equal(costMicros(json.data.usage.cost), row.charge);

  const s = await streamEvents(sdk(acct.key), params);
  assert.equal(s.error, null, String(s.error));
  const usage = s.events.at(-1).response.usage;
  row = await fullRow(s.requestId);
  assert.deepEqual(tokens(row), want);
  assertRowPriced(row);
  assert.equal(row.charge, expectedCharge(want, PRICED));
  assert.equal(costMicros(usage.cost), row.charge);
});

test('7. a client that leaves mid-stream is billed for the output_text deltas that reached it', async (t) => {
  const acct = await freshAccount(h, 'r7');
  const interval = 400;
  const wanted = 2;
  const s = await streamEvents(sdk(acct.key), {
    model: priced(), input: 'a long answer please', stub_chunks: 12, stub_interval_ms: interval,
  }, { stopAfterDeltas: wanted });
  assert.equal(s.deltas, wanted);
  const row = await fullRow(s.requestId);
  const delivered = row.response_metadata?.delivered_chunks;
  const couldHave = wanted + Math.floor((s.endedAt - s.lastDeltaAt + 100) / interval);
  t.diagnostic(`read ${wanted} deltas; delivered_chunks ${delivered}, tokens ${JSON.stringify(tokens(row))}, charge ${row.credits_deducted}`);
  assert.equal(row.status, 'client_aborted');
  assert.ok(delivered >= wanted && delivered <= couldHave, `delivered_chunks ${delivered} not in [${wanted}, ${couldHave}]`);
  assert.equal(Number(row.completion_tokens), delivered, 'billed output != the deltas delivered');
  assert.ok(Number(row.prompt_tokens) > 0);
  assertRowPriced(row);
  assert.ok(row.charge > 0n);
  assert.equal(await rowCount(h, acct.id), 1);
});

test('8. the upstream fails mid-stream (response.failed, then an error event): relayed, billed for the delivered deltas', async () => {
  for (const kind of ['response.failed', 'error']) {
    const acct = await freshAccount(h, `r8${kind === 'error' ? 'e' : 'f'}`);
    const rec = recordingFetch();
    const s = await streamEvents(sdk(acct.key, rec), {
      model: priced(), input: 'break halfway', stub_chunks: 8, stub_fail: 'midstream', stub_midstream_event: kind,
    });
    const deltas = s.events.filter((e) => e.type === 'response.output_text.delta');
    assert.equal(deltas.length, 4, `${kind}: the first half of the deltas`);
    // The SDK yields both events as they are (neither has a top-level `error` object).
    assert.equal(s.error, null, `${kind}: ${s.error}`);
    const failure = s.events.at(-1);
    assert.equal(failure.type, kind);
    if (kind === 'response.failed') {
      assert.equal(failure.response.status, 'failed');
      assert.equal(failure.response.error?.message, 'stub mid-stream error');
    } else {
      assert.equal(failure.message, 'stub mid-stream error');
      assert.equal(failure.code, 'server_error');
    }
    const row = await fullRow(s.requestId);
    assert.equal(row.status, 'upstream_error', kind);
    assert.equal(Number(row.completion_tokens), 4, `${kind}: bill the 4 delivered deltas`);
    assertRowPriced(row);
    assert.ok(row.charge > 0n);
    assertOnlyCharge(await rec.last().text, row.charge, { present: false, what: kind });
    assert.equal(await rowCount(h, acct.id), 1);
  }
});

test('9. refusals in OpenAI\'s shape: a bad key is AuthenticationError, no balance is 402, an upstream 429 keeps Retry-After', async () => {
  const before = (await h.stubLast()).requests;
  const bad = await catchError(sdk(`tg_${'x'.repeat(38)}`).responses.create({ model: priced(), input: 'x' }));
  assert.ok(bad instanceof OpenAI.AuthenticationError, `${bad?.constructor?.name}: ${bad}`);
  assert.equal(bad.error?.code, 'invalid_api_key');

  const broke = await h.newAccount({ usd: '0', label: 'broke' });
  const poor = await catchError(sdk(broke.key).responses.create({ model: priced(), input: 'free lunch' }));
  assert.ok(poor instanceof OpenAI.APIError, String(poor));
  assert.equal(poor.status, 402);
  assert.equal(poor.error?.code, 'insufficient_credits');
  assert.equal((await h.stubLast()).requests, before, 'a refused request reached the upstream');
  assert.equal(await rowCount(h, broke.id), 0);

  const acct = await freshAccount(h, 'r9');
  const limited = await catchError(sdk(acct.key).responses.create({
    model: priced(), input: 'x', stub_fail: 'status:429', stub_retry_after: 7,
  }));
  assert.ok(limited instanceof OpenAI.RateLimitError, `${limited?.constructor?.name}: ${limited}`);
  assert.equal(limited.headers.get('retry-after'), '7');
  const row = await fullRow(limited.requestID);
  assert.equal(row.status, 'upstream_error');
  assert.equal(row.charge, 0n);
});

test('10. an unknown model is refused before the upstream; x-request-id on every answer', async () => {
  const before = (await h.stubLast()).requests;
  const r = await rawPost(h, '/v1/responses', { model: h.m('nope'), input: 'x' });
  assert.equal(r.status, 400, r.text);
  assert.equal(r.json?.error?.code, 'model_not_found');
  assert.match(r.requestId ?? '', REQ_ID);
  const noInput = await rawPost(h, '/v1/responses', '{"input": "no model"}');
  assert.equal(noInput.status, 400);
  assert.equal(noInput.json?.error?.type, 'invalid_request_error');
  assert.equal((await h.stubLast()).requests, before);
  await sleep(300);
  assert.equal(await h.usageRowNow(r.requestId), null, 'a refused request has a usage row');
});
