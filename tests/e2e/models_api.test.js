// GET /v1/models and GET /v1/models/{id} (issue 13) through the official `openai` SDK and raw
// HTTP: only models that have a price and a route are listed; each entry has OpenAI's fields
// (id, object, created = when the price was added, owned_by) and OpenRouter's (name,
// context_length, pricing: the customer's per-unit prices after the pricing rule, as decimal
// strings in USD); retrieve works with the slash URL-encoded or not, and an unknown model is a
// 404 in OpenAI's shape (the SDK's NotFoundError).
//
// This suite's models are all routed explicitly (a route row switches the configured default
// route off), so a priced model without a route can be shown to be left out.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';

import { lit, psql } from './harness.js';
import { PRICED, useApiHarness } from './api_checks.js';

const FEES = {
  prompt: '0.000001', completion: '0.000002', request: '0.0001', image: '0.002', web_search: '0.004',
  context_length: 32000, name: 'Fees Everywhere (e2e)',
};
const h = useApiHarness({
  models: {
    priced: { ...PRICED, name: 'Priced Model (e2e)' },
    fees: FEES,
    'priced-unrouted': PRICED,
  },
  routes: true,
  routeMap: { fees: 'plain', 'routed-unpriced': 'plain' },
});

const sdk = (key = h.key) => new OpenAI({ apiKey: key, baseURL: `${h.url}/v1`, maxRetries: 0, timeout: 15_000 });

/** A decimal string in 1e-18 units (exact); refuses exponents and signs. */
function dec(s) {
  assert.equal(typeof s, 'string', `a price is ${JSON.stringify(s)}, not a decimal string`);
  const m = /^(\d+)(?:\.(\d{1,18}))?$/.exec(s);
  assert.ok(m, `a price is ${JSON.stringify(s)}, not a plain decimal string`);
  return BigInt(m[1]) * 10n ** 18n + BigInt((m[2] || '').padEnd(18, '0'));
}
/** USD per unit (a decimal string, or null = 0) × 1.25 (the namespace rule), in 1e-18 units. */
const marked = (usd) => (usd == null ? 0n : (dec(usd) * 125n) / 100n);

/** The expected pricing of a model (PRICED-shaped prices; NULL parts fall back as billing does). */
function expectedPricing(p) {
  return {
    prompt: marked(p.prompt),
    completion: marked(p.completion),
    request: marked(p.request),
    image: marked(p.image),
    web_search: marked(p.web_search),
    internal_reasoning: marked(p.reasoning ?? p.completion),
    input_cache_read: marked(p.cache_read ?? p.prompt),
    input_cache_write: marked(p.cache_write ?? p.prompt),
  };
}

async function catchError(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail('expected the request to fail');
}

async function get(path, key = h.key) {
  const res = await fetch(`${h.url}${path}`, { headers: key ? { authorization: `Bearer ${key}` } : {} });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

/** The Unix second (floored) at which a price was added (model_prices.created_at). */
async function createdAt(model) {
  return Number(await psql(`SELECT floor(extract(epoch FROM created_at))::bigint FROM model_prices WHERE model = ${lit(model)}`));
}

// ---------------------------------------------------------------------------------------------

test('1. /v1/models lists exactly the models with a price and a route', async () => {
  const ids = [];
  for await (const m of sdk().models.list()) ids.push(m.id);
  const mine = ids.filter((id) => id.startsWith(`${h.namespace}/`)).sort();
  assert.deepEqual(mine, [h.model, h.m('fees'), h.m('priced')].sort(),
    'priced-unrouted (no route) and routed-unpriced (no price) must not be listed');
  assert.equal(new Set(ids).size, ids.length, 'a model is listed twice');
});

test('2. each entry: id, object, created (when the price was added), owned_by, name, context_length, pricing after the markup', async () => {
  const list = await get('/v1/models');
  assert.equal(list.status, 200);
  assert.equal(list.json.object, 'list');
  const now = Math.floor(Date.now() / 1000);
  for (const [suffix, prices, name, contextLength] of [
    ['priced', PRICED, 'Priced Model (e2e)', PRICED.context_length],
    ['fees', FEES, FEES.name, FEES.context_length],
    [null, { prompt: h.promptPrice, completion: h.completionPrice }, h.model, 8192],
  ]) {
    const id = suffix ? h.m(suffix) : h.model;
    const m = list.json.data.find((e) => e.id === id);
    assert.ok(m, `${id} not listed`);
    for (const k of ['id', 'object', 'created', 'owned_by', 'name', 'context_length', 'pricing'])
      assert.ok(k in m, `${id}: no ${k} in ${JSON.stringify(m)}`);
    assert.equal(m.object, 'model');
    assert.equal(m.owned_by, h.namespace);
    assert.equal(m.name, name, `${id}: name`);
    assert.equal(m.context_length, contextLength, `${id}: context_length`);
    assert.ok(Number.isInteger(m.created), `${id}: created ${m.created} is not an integer`);
    assert.ok(m.created >= h.startedAt - 5 && m.created <= now + 5,
      `${id}: created ${m.created} is not when its price was added (~${h.startedAt})`);
    assert.equal(m.created, await createdAt(id), `${id}: created != model_prices.created_at`);
    const want = expectedPricing(prices);
    for (const [k, v] of Object.entries(want))
      assert.equal(dec(m.pricing[k]), v, `${id}: pricing.${k} = ${m.pricing[k]}, want the price × 1.25`);
  }
});

test('3. models.retrieve(id) and GET /v1/models/{id}, the slash encoded or not, return the listed entry', async () => {
  const list = (await get('/v1/models')).json.data;
  for (const id of [h.m('priced'), h.model]) {
    const listed = list.find((e) => e.id === id);
    const viaSdk = await sdk().models.retrieve(id);
    assert.deepEqual(JSON.parse(JSON.stringify(viaSdk)), listed, 'SDK retrieve');
    for (const path of [`/v1/models/${id}`, `/v1/models/${encodeURIComponent(id)}`, `/v1/models/${id.replace('/', '%2f')}`]) {
      const r = await get(path);
      assert.equal(r.status, 200, `${path}: ${r.text}`);
      assert.deepEqual(r.json, listed, path);
      assert.match(r.headers.get('x-request-id') ?? '', /^[\w-]{8,}$/);
    }
  }
});

test('4. an unknown, unrouted or unpriced model: 404 in OpenAI\'s shape, NotFoundError in the SDK', async () => {
  for (const id of [h.m('no-such-model'), h.m('priced-unrouted'), h.m('routed-unpriced')]) {
    const err = await catchError(sdk().models.retrieve(id));
    assert.ok(err instanceof OpenAI.NotFoundError, `${id}: ${err?.constructor?.name}: ${err}`);
    assert.equal(err.status, 404);
    const r = await get(`/v1/models/${encodeURIComponent(id)}`);
    assert.equal(r.status, 404);
    assert.deepEqual(Object.keys(r.json), ['error']);
    assert.deepEqual(Object.keys(r.json.error).sort(), ['code', 'message', 'param', 'type']);
    assert.equal(r.json.error.type, 'invalid_request_error');
  }
});

test('5. the catalogue needs a valid key', async () => {
  for (const path of ['/v1/models', `/v1/models/${encodeURIComponent(h.model)}`]) {
    for (const key of [null, `tg_${'z'.repeat(38)}`]) {
      const r = await get(path, key);
      assert.equal(r.status, 401, `${path} with ${key ? 'a bad' : 'no'} key: ${r.text}`);
      assert.equal(r.json?.error?.code, 'invalid_api_key');
    }
  }
  const err = await catchError(sdk(`tg_${'z'.repeat(38)}`).models.retrieve(h.model));
  assert.ok(err instanceof OpenAI.AuthenticationError, String(err));
});
