// Chat completions through the Vercel AI SDK (issue 13): OpenRouter's own provider
// `@openrouter/ai-sdk-provider` in its default settings (it sends no stream_options and reads the
// usage from whichever chunk carries it, OpenRouter's convention) and `@ai-sdk/openai-compatible`
// (includeUsage left out, and true), with generateText and streamText. Each must report the usage
// the request was billed for, and the cost it sees must be the charge. Beside them, a client that
// reads choices[0] of every chunk (OpenAI's quickstart) must not break.
//
// The `priced` model is routed to the stub as a catalogued model, so the stub reports a cost and
// cost_details of its own; none of it may reach these clients.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createOpenRouter } from '@openrouter/ai-sdk-provider';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { generateText, streamText } from 'ai';
import OpenAI from 'openai';

import {
  PRICED, assertOnlyCharge, assertRowPriced, costMicros, expectedCharge, freshAccount, fullRow, parseSse,
  picosToDecimal, recordingFetch, rowCount, stubCostPicos, tokens, useApiHarness,
} from './api_checks.js';

const h = useApiHarness({ routes: true });
const priced = () => h.m('priced');
const prompt = 'Say something through the AI SDK';

const openrouter = (key, rec) => createOpenRouter({ apiKey: key, baseURL: `${h.url}/v1`, fetch: rec.fetch });
const compatible = (key, rec, extra = {}) =>
  createOpenAICompatible({ name: 'tollgate', baseURL: `${h.url}/v1`, apiKey: key, fetch: rec.fetch, ...extra });
const stubText = (n) => Array.from({ length: n }, (_, i) => `tok${i} `).join('');

/** Runs a streamText to its end: { text, usage, providerMetadata, response, errors }. */
async function runStream(options) {
  const errors = [];
  const result = streamText({ ...options, onError: ({ error }) => errors.push(error) });
  let text = '';
  for await (const part of result.textStream) text += part;
  return {
    text,
    usage: await result.usage,
    providerMetadata: await result.providerMetadata,
    response: await result.response,
    finishReason: await result.finishReason,
    errors,
  };
}

/** The chat chunks (data: JSON) of a raw SSE text, [DONE] left out. */
const chunksOf = (raw) => parseSse(raw).map((e) => e.data).filter((d) => typeof d === 'object');

/** Shared checks of a completed chat stream's raw bytes: the usage's chunk, and only the charge. */
function checkRawStream(raw, row, { usageChunk }) {
  const chunks = chunksOf(raw);
  const withUsage = chunks.filter((c) => c.usage != null);
  assert.equal(withUsage.length, 1, `usage on ${withUsage.length} chunks`);
  const u = withUsage[0];
  if (usageChunk === 'finish_reason') {
    assert.ok(u.choices?.[0]?.finish_reason, 'the usage is not on the finish_reason chunk');
    assert.equal(chunks.filter((c) => Array.isArray(c.choices) && c.choices.length === 0).length, 0, 'a choices:[] chunk was sent');
  } else {
    assert.deepEqual(u.choices, [], 'include_usage: the usage is not on a choices:[] chunk');
  }
  assert.equal(u.usage.prompt_tokens, Number(row.prompt_tokens));
  assert.equal(u.usage.completion_tokens, Number(row.completion_tokens));
  assert.equal(costMicros(u.usage.cost), row.charge);
  assertOnlyCharge(raw, row.charge, { upstreamCost: picosToDecimal(stubCostPicos(tokens(row))) });
}

// ---------------------------------------------------------------------------------------------

test('1. @openrouter/ai-sdk-provider, default settings, streamText: usage reported and equal to the usage row; cost = the charge', async () => {
  const acct = await freshAccount(h, 'or1');
  const rec = recordingFetch();
  const s = await runStream({ model: openrouter(acct.key, rec)(priced()), prompt });
  assert.deepEqual(s.errors, []);
  assert.equal(s.text, stubText(8));
  assert.equal(s.finishReason, 'stop');
  const ex = rec.last();
  const sent = JSON.parse(ex.requestBody);
  assert.equal(sent.stream, true);
  assert.equal(sent.stream_options, undefined, 'default settings sent stream_options: the case under test is gone');

  const row = await fullRow(ex.headers.get('x-request-id'));
  assert.equal(row.status, 'success');
  assertRowPriced(row);
  assert.equal(row.charge, expectedCharge(tokens(row)));
  assert.ok(s.usage.inputTokens > 0 && s.usage.outputTokens > 0, `usage not reported: ${JSON.stringify(s.usage)}`);
  assert.equal(s.usage.inputTokens, Number(row.prompt_tokens));
  assert.equal(s.usage.outputTokens, Number(row.completion_tokens));
  const orUsage = s.providerMetadata?.openrouter?.usage;
  assert.equal(costMicros(orUsage?.cost), row.charge, `providerMetadata.openrouter.usage: ${JSON.stringify(orUsage)}`);
  assert.equal(orUsage?.costDetails, undefined, 'the upstream cost details reached the provider');
  checkRawStream(await ex.text, row, { usageChunk: 'finish_reason' });
  assert.equal(await rowCount(h, acct.id), 1);
});

test('2. @openrouter/ai-sdk-provider generateText: usage and cost = the charge', async () => {
  const acct = await freshAccount(h, 'or2');
  const rec = recordingFetch();
  const r = await generateText({ model: openrouter(acct.key, rec)(priced()), prompt });
  assert.equal(r.text, stubText(8));
  const ex = rec.last();
  const row = await fullRow(ex.headers.get('x-request-id'));
  assertRowPriced(row);
  assert.equal(r.usage.inputTokens, Number(row.prompt_tokens));
  assert.equal(r.usage.outputTokens, Number(row.completion_tokens));
  assert.equal(costMicros(r.providerMetadata?.openrouter?.usage?.cost), row.charge);
  assertOnlyCharge(await ex.text, row.charge, { upstreamCost: picosToDecimal(stubCostPicos(tokens(row))) });
});

test('3. @openrouter/ai-sdk-provider streamText with cached and reasoning tokens: reported as billed', async () => {
  const acct = await freshAccount(h, 'or3');
  const rec = recordingFetch();
  const s = await runStream({
    model: openrouter(acct.key, rec)(priced()), prompt,
    providerOptions: { openrouter: { stub_chunks: 4, stub_cached_tokens: 6, stub_reasoning_tokens: 2 } },
  });
  assert.deepEqual(s.errors, []);
  const row = await fullRow(rec.last().headers.get('x-request-id'));
  assert.equal(Number(row.cached_tokens), 6);
  assert.equal(Number(row.reasoning_tokens), 2);
  assertRowPriced(row);
  assert.equal(row.charge, expectedCharge(tokens(row), PRICED));
  assert.equal(s.usage.inputTokens, Number(row.prompt_tokens));
  assert.equal(s.usage.outputTokens, Number(row.completion_tokens));
  assert.equal(s.usage.inputTokenDetails?.cacheReadTokens, 6, JSON.stringify(s.usage));
  assert.equal(s.usage.outputTokenDetails?.reasoningTokens, 2, JSON.stringify(s.usage));
  assert.equal(costMicros(s.providerMetadata?.openrouter?.usage?.cost), row.charge);
});

test('4. @ai-sdk/openai-compatible generateText: usage = the usage row', async () => {
  const acct = await freshAccount(h, 'oc1');
  const rec = recordingFetch();
  const r = await generateText({ model: compatible(acct.key, rec)(priced()), prompt });
  assert.equal(r.text, stubText(8));
  const ex = rec.last();
  const row = await fullRow(ex.headers.get('x-request-id'));
  assert.equal(row.status, 'success');
  assertRowPriced(row);
  assert.equal(r.usage.inputTokens, Number(row.prompt_tokens));
  assert.equal(r.usage.outputTokens, Number(row.completion_tokens));
  assert.equal(costMicros(r.response.body?.usage?.cost), row.charge);
  assertOnlyCharge(await ex.text, row.charge, { upstreamCost: picosToDecimal(stubCostPicos(tokens(row))) });
});

for (const includeUsage of [undefined, true]) {
  test(`5${includeUsage ? 'b' : 'a'}. @ai-sdk/openai-compatible streamText, includeUsage ${includeUsage ?? 'left out'}: usage reported, = the usage row`, async () => {
    const acct = await freshAccount(h, `oc${includeUsage ? 't' : 'd'}`);
    const rec = recordingFetch();
    const provider = compatible(acct.key, rec, includeUsage === undefined ? {} : { includeUsage });
    const s = await runStream({ model: provider(priced()), prompt, providerOptions: { tollgate: { stub_chunks: 5 } } });
    assert.deepEqual(s.errors, []);
    assert.equal(s.text, stubText(5));
    const ex = rec.last();
    const sent = JSON.parse(ex.requestBody);
    assert.equal(sent.stub_chunks, 5);
    assert.deepEqual(sent.stream_options, includeUsage ? { include_usage: true } : undefined);
    const row = await fullRow(ex.headers.get('x-request-id'));
    assert.equal(row.status, 'success');
    assertRowPriced(row);
    assert.ok(s.usage.inputTokens > 0 && s.usage.outputTokens > 0, `usage not reported: ${JSON.stringify(s.usage)}`);
    assert.equal(s.usage.inputTokens, Number(row.prompt_tokens));
    assert.equal(s.usage.outputTokens, Number(row.completion_tokens));
    checkRawStream(await ex.text, row, { usageChunk: includeUsage ? 'choices_empty' : 'finish_reason' });
  });
}

test('6. a client that reads choices[0] of every chunk (OpenAI\'s quickstart) does not break without stream_options, and gets the usage', async () => {
  const acct = await freshAccount(h, 'qs');
  const rec = recordingFetch();
  const client = new OpenAI({ apiKey: acct.key, baseURL: `${h.url}/v1`, maxRetries: 0, timeout: 15_000, fetch: rec.fetch });
  const stream = await client.chat.completions.create({
    model: priced(), messages: [{ role: 'user', content: prompt }], stream: true, stub_chunks: 3,
  });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    text += chunk.choices[0].delta.content ?? ''; // throws a TypeError on a choices:[] chunk
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, stubText(3));
  const row = await fullRow(rec.last().headers.get('x-request-id'));
  assert.equal(usage?.completion_tokens, Number(row.completion_tokens));
  assert.equal(costMicros(usage.cost), row.charge);
  checkRawStream(await rec.last().text, row, { usageChunk: 'finish_reason' });
});
