// Shared pieces of the issue 13 suites (responses_api, anthropic_sdk, ai_sdk, customer_cost,
// models_api): a harness whose models have every price component, optional routes that make the
// stub report an upstream cost of its own, the full usage row with tollgate_price() computed in
// SQL from its token columns, an independent charge, and the checks on what a client received
// (every "cost" is the request's charge; the upstream's cost and cost_details never arrive).
//
// Money is BigInt micro-dollars (credit units of 1e-6 USD) or picos (1e-12 USD), never floats.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';

import { Harness, lit, psql, psqlJson, randomSuffix, sleep, toMicros } from './harness.js';

export const REQ_ID = /^[\w-]{8,}$/; // x-request-id (usage_logs.request_id)

/**
 * Per-token prices (USD) of the `priced` model. Every part differs, so a charge that puts a token
 * in the wrong bucket shows: prompt 1 µ$, cache read 0.5 µ$, cache write 3 µ$, completion 2 µ$,
 * reasoning 4 µ$ (the harness' rule adds 25 %, rounded up to the micro-dollar per request).
 * A model's prices may also have `request`, `image`, `web_search`, `image_output`,
 * `image_generation` (USD) and `name`, `context_length` (model_prices columns).
 */
export const PRICED = {
  prompt: '0.000001',
  completion: '0.000002',
  cache_read: '0.0000005',
  cache_write: '0.000003',
  reasoning: '0.000004',
  request: null,
  context_length: 16384,
};

/** The catalogued stub model a `cost` route sends upstream, and its stub prices (picos/token). */
export const STUB_MODEL = 'openai/gpt-4o';
export const STUB_PRICES = { prompt: 2_500_000n, completion: 10_000_000n, cache_read: 1_250_000n, cache_write: 0n };

const KEY_VAR = 'TG_E2E_ROUTE_KEY';

/**
 * A Harness with extra priced models and (with `routes`) explicit upstream rows and routes:
 *   - `models`: { suffix: prices } inserted into model_prices before the proxy starts (so its
 *     first pricing snapshot has them), each under the run's namespace; `PRICED` by default for
 *     `priced`.
 *   - `routes`: true adds, once the proxy runs, the upstream `<ns>-plain` (the harness' stub, as
 *     it is) and `<ns>-cost` (the same stub, the model renamed to STUB_MODEL, so the stub reports a
 *     `usage.cost` and `cost_details` of its own, at its own prices). h.model routes to plain,
 *     `<ns>/priced` to cost, and `routeMap` adds { suffix: upstream-name } more. Any row in
 *     model_routes switches the configured default route off, so every model this suite uses
 *     gets its own route; they are removed at the end by the harness. `upstreams`: { suffix:
 *     [CLI args] } adds more upstream rows `<ns>-<suffix>` on the same stub (e.g. an x-api-key
 *     auth style) for routeMap to name (routeMap: { model suffix: upstream suffix ('plain', 'cost',
 *     one of `upstreams`) or [upstream suffix, model sent upstream] }).
 * Returns the harness, with h.m(suffix) naming a model and h.plain / h.cost the upstream names.
 */
export function useApiHarness({ models = { priced: PRICED }, routes = false, routeMap = {}, upstreams = {}, ...options } = {}) {
  const h = new Harness(options);
  h.m = (suffix) => `${h.namespace}/${suffix}`;
  h.plain = `${h.namespace}-plain`;
  h.cost = `${h.namespace}-cost`;
  // Routed upstreams read their key (the harness' upstream key, which its stub demands) from the
  // proxy's environment.
  const env = { ...(options.env || {}), [KEY_VAR]: h.upstreamKey };
  before(async () => {
    h.startedAt = Math.floor(Date.now() / 1000);
    const rows = Object.entries(models).map(([suffix, p]) =>
      `(${lit(h.m(suffix))}, ${p.prompt}, ${p.completion}, ${p.context_length ?? 'NULL'}, ${p.cache_read ?? 'NULL'},
        ${p.cache_write ?? 'NULL'}, ${p.reasoning ?? 'NULL'}, ${p.request ?? 'NULL'}, ${p.image ?? 'NULL'}, ${p.web_search ?? 'NULL'},
        ${p.image_output ?? 'NULL'}, ${p.image_generation ?? 'NULL'}, ${p.name ? lit(p.name) : 'NULL'})`);
    if (rows.length)
      await psql(`INSERT INTO model_prices (model, prompt_price, completion_price, context_length, input_cache_read_price,
                    input_cache_write_price, internal_reasoning_price, request_price, image_price, web_search_price,
                    image_output_price, image_generation_price, name)
                  VALUES ${rows.join(', ')}`);
    await h.start({ ...options, env });
    if (routes) {
      const marks = h.logMarks();
      await h.addUpstream(h.plain, h.stub.base, { keyRef: `env:${KEY_VAR}` });
      await h.addUpstream(h.cost, h.stub.base, { keyRef: `env:${KEY_VAR}` });
      for (const [suffix, args] of Object.entries(upstreams))
        await h.addUpstream(`${h.namespace}-${suffix}`, h.stub.base, { keyRef: `env:${KEY_VAR}`, args });
      await h.addRoute(h.model, h.plain);
      if (models.priced) await h.addRoute(h.m('priced'), h.cost, { upstreamModel: STUB_MODEL });
      for (const [suffix, target] of Object.entries(routeMap)) {
        const [upstream, upstreamModel] = Array.isArray(target) ? target : [target];
        await h.addRoute(h.m(suffix), `${h.namespace}-${upstream}`, upstreamModel ? { upstreamModel } : {});
      }
      await h.routesSettled(marks, 5000);
    }
  }, { timeout: 60_000 });
  after(async () => {
    await h.stop();
  }, { timeout: 60_000 });
  h.keyVar = KEY_VAR;
  return h;
}

// ---------------------------------------------------------------------------------------------
// Usage rows

/**
 * The usage row of a request with every token column, and `sql_charge` / `sql_cost`:
 * tollgate_price() (its eleven-argument form, sql/migrations/0009) computed in SQL from the row's
 * own model and token columns: one request, no image inputs or web searches (metered 0), the
 * row's image_tokens and images_generated. Polls up to `ms`; throws if no row appears.
 */
export async function fullRow(requestId, { ms = 5000 } = {}) {
  assert.match(requestId ?? '', REQ_ID, 'no x-request-id');
  const deadline = Date.now() + ms;
  for (;;) {
    const row = await psqlJson(
      `SELECT json_build_object(
         'request_id', u.request_id, 'user_id', u.user_id, 'model', u.model, 'status', u.status,
         'upstream', u.upstream, 'prompt_tokens', u.prompt_tokens, 'completion_tokens', u.completion_tokens,
         'cached_tokens', u.cached_tokens, 'cache_write_tokens', u.cache_write_tokens,
         'reasoning_tokens', u.reasoning_tokens, 'image_tokens', u.image_tokens,
         'images_generated', u.images_generated, 'cost_usd', u.cost_usd::text,
         'credits_deducted', u.credits_deducted::text, 'upstream_cost_usd', u.upstream_cost_usd::text,
         'request_metadata', u.request_metadata, 'response_metadata', u.response_metadata,
         'sql_cost', p.cost_usd::text, 'sql_charge', p.charge_usd::text)
       FROM usage_logs u
       LEFT JOIN LATERAL tollgate_price(u.model, u.prompt_tokens, u.completion_tokens, u.cached_tokens,
                                        u.cache_write_tokens, u.reasoning_tokens, 1, 0, 0,
                                        u.image_tokens, u.images_generated) p ON true
       WHERE u.request_id = ${lit(requestId)}`,
    );
    if (row) {
      row.charge = toMicros(row.credits_deducted);
      if (row.sql_charge == null) throw new Error(`tollgate_price(${row.model}) gave no row: is it priced?`);
      return row;
    }
    if (Date.now() > deadline) throw new Error(`no usage_logs row for ${requestId} within ${ms} ms`);
    await sleep(25);
  }
}

/** Asserts credits_deducted (and cost_usd) = tollgate_price() of the row's own token columns. */
export function assertRowPriced(row) {
  assert.equal(row.charge, toMicros(row.sql_charge),
    `credits_deducted ${row.credits_deducted} != tollgate_price() ${row.sql_charge} for ${JSON.stringify(tokens(row))}`);
  assert.equal(toMicros(row.cost_usd), toMicros(row.sql_cost), 'cost_usd != tollgate_price().cost_usd');
}

/** A row's metered counts; image_tokens and images_generated only when not 0 (text endpoints). */
export const tokens = (row) => ({
  prompt: Number(row.prompt_tokens), completion: Number(row.completion_tokens), cached: Number(row.cached_tokens),
  cache_write: Number(row.cache_write_tokens), reasoning: Number(row.reasoning_tokens),
  ...(Number(row.image_tokens) ? { image_tokens: Number(row.image_tokens) } : {}),
  ...(Number(row.images_generated) ? { images_generated: Number(row.images_generated) } : {}),
});

/** "0.0000005" -> BigInt picos (1e-12). */
export function toPicos(text) {
  const m = /^(\d+)(?:\.(\d*))?$/.exec(String(text).trim());
  if (!m) throw new Error(`not a decimal: ${text}`);
  const frac = (m[2] || '').padEnd(12, '0');
  if (/[1-9]/.test(frac.slice(12))) throw new Error(`${text} has digits below 1e-12`);
  return BigInt(m[1]) * 1_000_000_000_000n + BigInt(frac.slice(0, 12));
}

/** BigInt picos -> the shortest exact decimal ("0.0000975"), as the stub writes its cost. */
export function picosToDecimal(p) {
  const whole = p / 1_000_000_000_000n;
  const frac = (p % 1_000_000_000_000n).toString().padStart(12, '0').replace(/0+$/, '');
  return frac ? `${whole}.${frac}` : `${whole}`;
}

/**
 * The charge, computed here (not by tollgate, not by SQL): each token part at its price in
 * `prices` (PRICED-shaped, NULL parts at the prompt / completion price), marked up by `markup` %
 * and rounded up to the micro-dollar. `usage` = { prompt, completion, cached, cache_write,
 * reasoning, image_tokens, images_generated } (tokens(row) gives one).
 */
export function expectedCharge(usage, prices = PRICED, markup = 25n) {
  const P = (x, fallback) => toPicos(x ?? fallback);
  const { prompt, completion, cached = 0, cache_write: write = 0, reasoning = 0, image_tokens: img = 0, images_generated: gen = 0 } = usage;
  const cost =
    BigInt(prompt - cached - write) * P(prices.prompt) +
    BigInt(cached) * P(prices.cache_read, prices.prompt) +
    BigInt(write) * P(prices.cache_write, prices.prompt) +
    BigInt(completion - reasoning - img) * P(prices.completion) +
    BigInt(reasoning) * P(prices.reasoning, prices.completion) +
    BigInt(img) * P(prices.image_output, prices.completion) +
    BigInt(gen) * (prices.image_generation ? P(prices.image_generation) : 0n) +
    (prices.request ? P(prices.request) : 0n);
  const marked = cost * (100n + markup); // picos × 100
  const unit = 100n * 1_000_000n; // picos × 100 per micro-dollar
  return (marked + unit - 1n) / unit;
}

/** The stub's own cost (picos) for a usage under STUB_PRICES (what a `cost` route reports). */
export function stubCostPicos({ prompt, completion, cached = 0, cache_write: write = 0 }) {
  return BigInt(prompt - cached - write) * STUB_PRICES.prompt + BigInt(cached) * STUB_PRICES.cache_read +
    BigInt(write) * STUB_PRICES.cache_write + BigInt(completion) * STUB_PRICES.completion;
}

// ---------------------------------------------------------------------------------------------
// What the client received

/** Every `"cost": <literal>` in raw bytes (JSON or SSE), as the literal text. */
export const costLiterals = (text) => [...text.matchAll(/"cost"\s*:\s*([^,}\]\s]+)/g)].map((m) => m[1]);

/**
 * The raw bytes a client got carry no upstream cost: no cost_details, no
 * upstream_inference_cost, no other *cost* key than "cost", and every "cost" is a JSON number
 * with at most 6 decimals equal to `charge` (BigInt micros). `present`: at least one "cost"
 * must be there (a completed response), or none at all (`false`), or either (`null`).
 * `upstreamCost`: the decimal the upstream sent, which must not appear anywhere.
 */
export function assertOnlyCharge(text, charge, { present = true, upstreamCost, what = 'response' } = {}) {
  assert.ok(!text.includes('cost_details'), `${what}: cost_details reached the client:\n${text.slice(0, 4000)}`);
  assert.ok(!text.includes('upstream_inference_cost'), `${what}: upstream_inference_cost reached the client`);
  const keys = [...text.matchAll(/"([A-Za-z_]*cost[A-Za-z_]*)"\s*:/gi)].map((m) => m[1]).filter((k) => k !== 'cost');
  assert.deepEqual(keys, [], `${what}: other cost fields reached the client`);
  const lits = costLiterals(text);
  if (present === true) assert.ok(lits.length > 0, `${what}: no usage.cost in the response:\n${text.slice(0, 4000)}`);
  if (present === false) assert.deepEqual(lits, [], `${what}: a cost in a response that carries no usage`);
  for (const l of lits) {
    assert.match(l, /^\d+(\.\d{1,6})?$/, `${what}: "cost":${l} is not a plain decimal number with at most 6 decimals`);
    assert.equal(toMicros(l), charge, `${what}: "cost":${l} but the request was charged ${charge} µ$`);
  }
  if (upstreamCost !== undefined) {
    assert.notEqual(toPicos(upstreamCost), charge * 1_000_000n, 'test setup: the upstream cost equals the charge');
    const esc = upstreamCost.replace(/\./g, '\\.');
    assert.ok(!new RegExp(`"cost"\\s*:\\s*${esc}(?![0-9])`).test(text), `${what}: the upstream's cost ${upstreamCost} reached the client`);
  }
}

/** usage.cost (a JSON number of USD) in micros; fails unless it is a whole number of micros. */
export function costMicros(cost) {
  assert.equal(typeof cost, 'number', `usage.cost is ${JSON.stringify(cost)}, not a number`);
  const micros = Math.round(cost * 1e6);
  assert.ok(Math.abs(cost * 1e6 - micros) < 1e-6, `usage.cost ${cost} is not a whole number of micro-dollars`);
  return BigInt(micros);
}

/**
 * A fetch for an SDK's `fetch` option that keeps a copy of every response body the SDK reads:
 * rec.exchanges = [{ url, method, requestHeaders, requestBody (if a string), status, headers,
 * text: Promise<string> }].
 * The copy is read alongside the SDK (tee), so streams stay streams and aborts still abort.
 */
export function recordingFetch() {
  const rec = { exchanges: [] };
  rec.fetch = async (url, init = {}) => {
    const res = await fetch(url, init);
    const ex = {
      url: String(url), method: init.method || 'GET', requestHeaders: new Headers(init.headers),
      requestBody: typeof init.body === 'string' ? init.body : undefined, status: res.status, headers: res.headers,
    };
    rec.exchanges.push(ex);
    if (!res.body) {
      ex.text = Promise.resolve('');
      return res;
    }
    const [mine, theirs] = res.body.tee();
    ex.text = (async () => {
      const reader = theirs.getReader();
      const dec = new TextDecoder();
      let text = '';
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          text += dec.decode(value, { stream: true });
        }
      } catch {
        // aborted: what arrived so far
      }
      return text;
    })();
    return new Response(mine, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
  rec.last = () => rec.exchanges.at(-1);
  return rec;
}

/** Parses an SSE text into events [{ event, data (parsed JSON or the text), raw }]; comments dropped. */
export function parseSse(text) {
  const out = [];
  for (const block of text.split(/\r?\n\r?\n/)) {
    if (!block.trim()) continue;
    let event = null;
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(':')) continue;
      if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
    }
    if (event === null && data.length === 0) continue;
    const joined = data.join('\n');
    let parsed = joined;
    try {
      parsed = JSON.parse(joined);
    } catch {
      // [DONE] and the like
    }
    out.push({ event, data: parsed, raw: block });
  }
  return out;
}

/** Raw POST through the proxy: { status, headers, text, json, requestId }. */
export async function rawPost(h, path, body, { key = h.key, headers = {}, auth = 'bearer', signal } = {}) {
  const authHeader = key === null ? {} : auth === 'x-api-key' ? { 'x-api-key': key } : { authorization: `Bearer ${key}` };
  const res = await fetch(`${h.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...authHeader, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal,
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json, requestId: res.headers.get('x-request-id') };
}

/** How many usage rows an account has, once every proxy has written what it journaled. */
export async function rowCount(h, userId) {
  await h.settled();
  return Number(await psql(`SELECT count(*) FROM usage_logs WHERE user_id = ${lit(userId)}`));
}

/** A fresh funded account for one test (so "one row per request" can be counted). */
export const freshAccount = (h, label = 'one', usd = '5') => h.newAccount({ usd, label: `${label}-${randomSuffix(2)}` });
