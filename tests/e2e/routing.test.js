// Upstreams as data (issue 12, section 2), against real processes: several tollgate-stubs as
// upstreams, rows in `upstreams` / `model_routes` written with the `tollgate upstreams|routes`
// CLI (or SQL), and the real `tollgate serve`. Each stub is started with its own `--chunks N`,
// so the completion tokens of a response tell which upstream served it; its `/__stub/last`
// request counter tells which upstreams were tried.
//
// Every routed upstream reads its key from env:TG_E2E_UPSTREAM_KEY (a random secret in the
// proxies' environment) and its stub demands that key, so a routed request succeeds only if
// tollgate sent it; test 7 checks the secret never shows anywhere else.
//
// Test 0 needs model_routes to be empty when it runs (the suite runs first, on its own database,
// as tests/run.sh gives it); the other tests add routes under this run's model namespace only
// and remove them at the end. Default configuration everywhere, except test 4's small circuit
// threshold and cooldown (a test about those settings).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import OpenAI from 'openai';

import { closedPort, lit, psql, randomSuffix, readResponse, sleep, tollgate, toMicros, useHarness } from './harness.js';

const exec = promisify(execFile);
const SERVICES = fileURLToPath(new URL('../../deploy/local/services.sh', import.meta.url));
const KEY_VAR = 'TG_E2E_UPSTREAM_KEY';
const KEY_REF = `env:${KEY_VAR}`;
const SECRET = `sk-e2e-upstream-secret-${randomSuffix(16)}`;
const ENV = { [KEY_VAR]: SECRET };

const h = useHarness({
  env: ENV,
  models: ['t1/openai-gpt', 't1/other', 't1/llama-3', 't2/refused', 't2/s503', 't2/s429', 't2/s503-stream',
    't2/all-fail', 't2/max', 't3/mid', 't4/cb', 't5/split', 't6/switch', 't7/secret', 't8/replay'],
});
h.watch(SECRET); // every child's output, from its first byte
const CANARY = 'tollgate listening on'; // every instance prints it: proves the watch sees their output
h.watch(CANARY);

const M = (suffix) => `${h.namespace}/${suffix}`; // a model of this run
const U = (suffix) => `${h.namespace}-${suffix}`; // an upstream of this run

/** A stub that demands SECRET and answers `chunks` completion tokens (its fingerprint). */
const stub = (name, chunks, args = [], extra = {}) =>
  h.startStub({ name, requireKey: SECRET, args: ['--chunks', String(chunks), ...args], ...extra });

/** Runs `change` (route/upstream rows), then waits until every running proxy has reloaded. */
async function changeRoutes(change) {
  const marks = h.logMarks();
  const r = await change();
  await h.routesSettled(marks);
  return r;
}

/** Raw chat completion to a proxy: { status, headers, text, json, requestId, sentAt, doneAt }. */
async function chat(url, key, model, extra = {}) {
  const sentAt = Date.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'route me' }], ...extra }),
  });
  const r = await readResponse(res);
  return { ...r, requestId: res.headers.get('x-request-id'), sentAt, doneAt: Date.now() };
}

const sdk = (url, key) => new OpenAI({ apiKey: key, baseURL: `${url}/v1`, maxRetries: 0, timeout: 15_000 });

/** Streams a chat completion with the SDK: { response, requestId, content[], error }. */
async function sdkStream(client, params) {
  const { data: stream, response } = await client.chat.completions.create({ ...params, stream: true }).withResponse();
  const content = [];
  let error = null;
  try {
    for await (const chunk of stream) if (chunk.choices?.[0]?.delta?.content) content.push(chunk.choices[0].delta.content);
  } catch (e) {
    error = e;
  }
  return { response, requestId: response.headers.get('x-request-id'), content, error };
}

/** The request counters of some stubs. */
const counts = (stubs) => Promise.all(stubs.map((s) => s.requests()));

/** The JSON body a stub received last. */
async function lastBody(s) {
  const last = await s.last();
  return { last, body: typeof last.body === 'string' ? JSON.parse(last.body) : last.body };
}

/** The circuit state gauge of an upstream in a /metrics text: the state whose value is 1. */
function circuitState(metrics, upstream) {
  const states = [...metrics.matchAll(/^tollgate_upstream_circuit_state\{([^}]*)\} (\d+)$/gm)]
    .filter((m) => m[1].includes(`upstream="${upstream}"`) && m[2] === '1')
    .map((m) => /state="([^"]+)"/.exec(m[1])?.[1]);
  return states.length === 1 ? states[0] : `${states.length} states at 1 (${states.join(',')})`;
}

/** Upstream names of the attempts listed in a usage row's response_metadata. */
function attemptsOf(row) {
  const attempts = row.response_metadata?.attempts;
  assert.ok(Array.isArray(attempts),
    `response_metadata.attempts is not an array: ${JSON.stringify(row.response_metadata)}`);
  return attempts;
}

// ---------------------------------------------------------------------------------------------
// 0. No rows: the configured [upstream] is the single route.

test('0: with no route rows, the configured [upstream] serves every model; usage row upstream = "default"', async () => {
  assert.equal(await psql('SELECT count(*) FROM model_routes'), '0',
    'precondition: model_routes must be empty (run this suite on its own database, as tests/run.sh does)');
  const before = await h.stub.requests();
  const r = await chat(h.url, h.key, h.model);
  assert.equal(r.status, 200, r.text);
  assert.equal(await h.stub.requests(), before + 1, 'the configured upstream (the harness stub) served it');
  const row = await h.usageRow(r.requestId);
  assert.equal(row.status, 'success');
  assert.equal(row.upstream, 'default');
});

// ---------------------------------------------------------------------------------------------
// 1. Routing by pattern, with a rename.

test('1: routes by pattern and priority, renames the model for the upstream, records the serving upstream', async (t) => {
  const [A, B, C] = await Promise.all([stub('stub-A', 3), stub('stub-B', 5), stub('stub-C', 7)]);
  const renamed = 'gpt-4o-t1-renamed';
  await changeRoutes(async () => {
    await h.addUpstream(U('t1-a'), A.base, { keyRef: KEY_REF });
    await h.addUpstream(U('t1-b'), B.base, { keyRef: KEY_REF, args: ['--header', 'X-Title: tollgate e2e'] });
    await h.addUpstream(U('t1-c'), `${C.url}/v1`, { keyRef: KEY_REF }); // another base path
    await h.addRoute(M('t1/openai-*'), U('t1-a'), { priority: 10, upstreamModel: renamed });
    await h.addRoute(M('t1/*'), U('t1-b'));
    await h.addRoute(M('t1/llama-*'), U('t1-c'), { priority: 10 });
  });
  const listed = (await tollgate('routes', 'list')).stdout;
  assert.match(listed, new RegExp(`${M('t1/openai-\\*')}\\s+${U('t1-a')}\\s+${renamed}\\s+10\\s+1\\s+active`));

  const cases = [
    { model: M('t1/openai-gpt'), serving: A, upstream: U('t1-a'), sent: renamed, chunks: 3, path: '/api/v1' },
    { model: M('t1/other'), serving: B, upstream: U('t1-b'), sent: M('t1/other'), chunks: 5, path: '/api/v1' },
    { model: M('t1/llama-3'), serving: C, upstream: U('t1-c'), sent: M('t1/llama-3'), chunks: 7, path: '/v1' },
  ];
  for (const c of cases) {
    const before = await counts([A, B, C]);
    const r = await chat(h.url, h.key, c.model);
    assert.equal(r.status, 200, `${c.model}: ${r.text}`);
    const after = await counts([A, B, C]);
    assert.deepEqual(after.map((n, i) => n - before[i]), [A, B, C].map((s) => (s === c.serving ? 1 : 0)),
      `${c.model}: requests per stub A, B, C`);
    const { last, body } = await lastBody(c.serving);
    assert.equal(body.model, c.sent, `${c.model}: the model sent upstream`);
    assert.equal(last.authorization, `Bearer ${SECRET}`, 'the upstream key from env: was sent');
    assert.equal(last.target, `${c.path}/chat/completions`, "the upstream's own base path");
    assert.equal(r.json.usage.completion_tokens, c.chunks);
    // The response is relayed as the upstream wrote it: its model is the one the upstream saw.
    assert.equal(r.json.model, c.sent, `${c.model}: the client sees the model the upstream returned`);
    t.diagnostic(`${c.model} -> ${c.upstream}: sent model ${body.model}, client saw model ${r.json.model}`);

    const row = await h.usageRow(r.requestId);
    assert.equal(row.status, 'success');
    assert.equal(row.upstream, c.upstream);
    assert.equal(row.model, c.model, 'the usage row names the model asked for');
    assert.equal(row.completion_tokens, c.chunks);
    assert.equal(toMicros(row.credits_deducted), (await h.price(c.model, row.prompt_tokens, c.chunks)).charge);
  }

  // Streamed, through the SDK, on the renamed route.
  const before = await counts([A, B, C]);
  const s = await sdkStream(sdk(h.url, h.key), { model: M('t1/openai-gpt'), messages: [{ role: 'user', content: 's' }] });
  assert.equal(s.error, null, String(s.error));
  assert.equal(s.content.length, 3);
  assert.deepEqual((await counts([A, B, C])).map((n, i) => n - before[i]), [1, 0, 0]);
  assert.equal((await lastBody(A)).body.model, renamed);
  assert.equal((await h.usageRow(s.requestId)).upstream, U('t1-a'));
});

// ---------------------------------------------------------------------------------------------
// 2. Fallback before the first byte: connect refused, 503, 429.

test('2: fallback on connect refused, 503 and 429: one usage row naming the serving upstream, the failed attempts listed, one charge', async (t) => {
  const [G, S503, S429] = await Promise.all([
    stub('stub-G2', 4), stub('stub-503', 2, ['--fail', 'status:503']), stub('stub-429', 2, ['--fail', 'status:429']),
  ]);
  const refused = await closedPort();
  await changeRoutes(async () => {
    await h.addUpstream(U('t2-good'), G.base, { keyRef: KEY_REF });
    await h.addUpstream(U('t2-refused'), `http://127.0.0.1:${refused}/api/v1`, { keyRef: KEY_REF });
    await h.addUpstream(U('t2-503'), S503.base, { keyRef: KEY_REF });
    await h.addUpstream(U('t2-429'), S429.base, { keyRef: KEY_REF });
    for (const [model, bad] of [['t2/refused', 't2-refused'], ['t2/s503', 't2-503'], ['t2/s429', 't2-429'],
      ['t2/s503-stream', 't2-503']]) {
      await h.addRoute(M(model), U(bad), { priority: 10 });
      await h.addRoute(M(model), U('t2-good'), { priority: 0 });
    }
  });

  const variants = [
    { name: 'connect refused', model: M('t2/refused'), bad: U('t2-refused'), badStub: null, status: undefined },
    { name: '503', model: M('t2/s503'), bad: U('t2-503'), badStub: S503, status: 503 },
    { name: '429', model: M('t2/s429'), bad: U('t2-429'), badStub: S429, status: 429 },
    { name: '503, streamed', model: M('t2/s503-stream'), bad: U('t2-503'), badStub: S503, status: 503, stream: true },
  ];
  for (const v of variants) {
    const acct = await h.newAccount({ usd: '10', label: `t2-${v.status ?? 'refused'}` });
    const balanceBefore = await h.balance(acct.id);
    const stubs = v.badStub ? [G, v.badStub] : [G];
    const before = await counts(stubs);
    const startedAt = Date.now();
    let requestId;
    if (v.stream) {
      const s = await sdkStream(sdk(h.url, acct.key), { model: v.model, messages: [{ role: 'user', content: 'fall back' }] });
      assert.equal(s.error, null, `${v.name}: ${s.error}`);
      assert.equal(s.response.status, 200);
      assert.equal(s.content.length, 4, `${v.name}: the good upstream's 4 chunks, nothing of the failed attempt`);
      requestId = s.requestId;
    } else {
      const r = await chat(h.url, acct.key, v.model);
      assert.equal(r.status, 200, `${v.name}: ${r.text}`);
      assert.equal(r.json.usage.completion_tokens, 4, `${v.name}: served by the good upstream`);
      requestId = r.requestId;
    }
    const ms = Date.now() - startedAt;
    assert.deepEqual((await counts(stubs)).map((n, i) => n - before[i]), stubs.map(() => 1),
      `${v.name}: one attempt on ${v.badStub ? 'the failing stub and ' : ''}the good one`);

    const row = await h.usageRow(requestId);
    t.diagnostic(`${v.name}: ${ms} ms; row upstream ${row.upstream}, status ${row.status}, ` +
      `response_metadata ${JSON.stringify(row.response_metadata)}`);
    assert.equal(row.status, 'success');
    assert.equal(row.upstream, U('t2-good'));
    const failed = attemptsOf(row).filter((a) => a.upstream === v.bad);
    assert.equal(failed.length, 1, `${v.name}: the failed attempt on ${v.bad} is listed once`);
    if (v.status !== undefined) assert.equal(failed[0].status, v.status);
    else assert.ok(!(failed[0].status >= 100), `connect refused has no HTTP status: ${JSON.stringify(failed[0])}`);

    // Exactly one row and one charge: the serving attempt's, at one request's price.
    const charge = (await h.price(v.model, row.prompt_tokens, 4)).charge;
    assert.ok(charge > 0n);
    assert.equal(row.completion_tokens, 4);
    assert.equal(toMicros(row.credits_deducted), charge);
    const rows = await h.usageRows(acct.id);
    assert.equal(rows.length, 1, `${v.name}: usage rows of the account: ${JSON.stringify(rows)}`);
    const ledger = await h.ledger(requestId);
    assert.equal(ledger.length, 1, JSON.stringify(ledger));
    assert.equal(toMicros(ledger[0].amount), -charge);
    assert.equal(balanceBefore - (await h.balance(acct.id)), charge, `${v.name}: the balance went down by one charge`);
  }
});

test('2b: when every route fails the client gets the last answer, one uncharged row; at most 3 attempts by default', async (t) => {
  const [G, S503, S429] = await Promise.all([
    stub('stub-G2b', 4), stub('stub-503b', 2, ['--fail', 'status:503']), stub('stub-429b', 2, ['--fail', 'status:429']),
  ]);
  const refused = await closedPort();
  await changeRoutes(async () => {
    await h.addUpstream(U('t2b-good'), G.base, { keyRef: KEY_REF });
    await h.addUpstream(U('t2b-refused'), `http://127.0.0.1:${refused}/api/v1`, { keyRef: KEY_REF });
    await h.addUpstream(U('t2b-503'), S503.base, { keyRef: KEY_REF });
    await h.addUpstream(U('t2b-429'), S429.base, { keyRef: KEY_REF });
    // all fail: refused, then 503
    await h.addRoute(M('t2/all-fail'), U('t2b-refused'), { priority: 10 });
    await h.addRoute(M('t2/all-fail'), U('t2b-503'), { priority: 0 });
    // four routes, three attempts (the default routing.max_attempts): the good one is never tried
    await h.addRoute(M('t2/max'), U('t2b-refused'), { priority: 30 });
    await h.addRoute(M('t2/max'), U('t2b-503'), { priority: 20 });
    await h.addRoute(M('t2/max'), U('t2b-429'), { priority: 10 });
    await h.addRoute(M('t2/max'), U('t2b-good'), { priority: 0 });
  });
  const cases = [
    { model: M('t2/all-fail'), status: 503, last: U('t2b-503'), failed: [U('t2b-refused')], deltas: [0, 1, 0] },
    { model: M('t2/max'), status: 429, last: U('t2b-429'), failed: [U('t2b-refused'), U('t2b-503')], deltas: [0, 1, 1] },
  ];
  for (const c of cases) {
    const acct = await h.newAccount({ usd: '10', label: 't2b' });
    const balanceBefore = await h.balance(acct.id);
    const before = await counts([G, S503, S429]);
    const r = await chat(h.url, acct.key, c.model);
    assert.equal(r.status, c.status, `${c.model}: ${r.text}`);
    assert.equal(r.json?.error?.code, c.status, r.text);
    assert.deepEqual((await counts([G, S503, S429])).map((n, i) => n - before[i]), c.deltas,
      `${c.model}: attempts on the good, 503 and 429 stubs`);
    const row = await h.usageRow(r.requestId);
    t.diagnostic(`${c.model}: HTTP ${r.status}; row upstream ${row.upstream}, status ${row.status}, ` +
      `attempts ${JSON.stringify(row.response_metadata?.attempts)}`);
    assert.equal(row.upstream, c.last, 'the row names the upstream whose answer the client got');
    assert.equal(row.status, 'upstream_error');
    for (const f of c.failed) assert.ok(attemptsOf(row).some((a) => a.upstream === f), `${f} is not among the attempts`);
    assert.equal(toMicros(row.credits_deducted), 0n);
    assert.equal((await h.usageRows(acct.id)).length, 1);
    const ledger = await h.ledger(r.requestId);
    assert.ok(ledger.length <= 1 && ledger.every((l) => toMicros(l.amount) === 0n), JSON.stringify(ledger));
    assert.equal(await h.balance(acct.id), balanceBefore);
  }
});

// ---------------------------------------------------------------------------------------------
// 3. After the first streamed byte there is no fallback.

test('3: no fallback after the first streamed byte: the client gets the error event, billed as delivered; the next route gets nothing', async (t) => {
  const [T, L] = await Promise.all([stub('stub-top3', 8, ['--fail', 'drop_midstream']), stub('stub-low3', 6)]);
  await changeRoutes(async () => {
    await h.addUpstream(U('t3-top'), T.base, { keyRef: KEY_REF });
    await h.addUpstream(U('t3-low'), L.base, { keyRef: KEY_REF });
    await h.addRoute(M('t3/mid'), U('t3-top'), { priority: 10 });
    await h.addRoute(M('t3/mid'), U('t3-low'), { priority: 0 });
  });
  const variants = [
    // the stub's --fail: the connection is closed after 4 of 8 chunks
    { mode: 'drop_midstream', extra: {}, code: 'upstream_disconnected', status: 'upstream_aborted' },
    // per request: an error event after 4 of 8 chunks, then the end of the stream
    { mode: 'midstream', extra: { stub_fail: 'midstream' }, code: 502, status: 'upstream_error' },
  ];
  for (const v of variants) {
    const acct = await h.newAccount({ usd: '10', label: `t3-${v.mode}` });
    const balanceBefore = await h.balance(acct.id);
    const before = await counts([T, L]);
    const s = await sdkStream(sdk(h.url, acct.key),
      { model: M('t3/mid'), messages: [{ role: 'user', content: 'cut' }], stub_chunks: 8, ...v.extra });
    assert.equal(s.response.status, 200);
    assert.equal(s.content.length, 4, `${v.mode}: the first half of the top upstream's chunks, nothing more`);
    assert.ok(s.error instanceof OpenAI.APIError, `${v.mode}: ${s.error?.constructor?.name}: ${s.error}`);
    assert.equal(s.error.error?.code, v.code, `${v.mode}: ${JSON.stringify(s.error.error)}`);
    await sleep(200); // a fallback, if any, would have reached the low stub by now
    assert.deepEqual((await counts([T, L])).map((n, i) => n - before[i]), [1, 0], `${v.mode}: requests on top, low`);

    const row = await h.usageRow(s.requestId);
    t.diagnostic(`${v.mode}: row status ${row.status}, upstream ${row.upstream}, ` +
      `completion_tokens ${row.completion_tokens}, charge ${row.credits_deducted}`);
    assert.equal(row.status, v.status);
    assert.equal(row.upstream, U('t3-top'));
    assert.equal(row.completion_tokens, 4, 'billed for the 4 delivered chunks');
    const charge = (await h.price(M('t3/mid'), row.prompt_tokens, 4)).charge;
    assert.equal(toMicros(row.credits_deducted), charge);
    assert.equal((await h.usageRows(acct.id)).length, 1);
    assert.equal(balanceBefore - (await h.balance(acct.id)), charge);
  }
});

// ---------------------------------------------------------------------------------------------
// 4. Circuit breaker: opens after N failures, skips the upstream for the cooldown, closes on a good probe.

test('4: the circuit opens after 3 failures, no attempt on that upstream during the cooldown, closes after a good probe', async (t) => {
  const THRESHOLD = 3;
  const COOLDOWN = 2000;
  const [X, G] = await Promise.all([stub('stub-X4', 2, ['--fail', 'status:503']), stub('stub-G4', 4)]);
  await changeRoutes(async () => {
    await h.addUpstream(U('t4-x'), X.base, { keyRef: KEY_REF });
    await h.addUpstream(U('t4-good'), G.base, { keyRef: KEY_REF });
    await h.addRoute(M('t4/cb'), U('t4-x'), { priority: 10 });
    await h.addRoute(M('t4/cb'), U('t4-good'), { priority: 0 });
  });
  // A test of the circuit settings: its own instance with a small threshold and cooldown.
  const file = join(h.tmp('circuit'), 'tollgate.toml');
  writeFileSync(file, `[routing]\ncircuit_failure_threshold = ${THRESHOLD}\ncircuit_cooldown_ms = ${COOLDOWN}\n`);
  const p = await h.startProxy({ name: 'tollgate-circuit', env: ENV, args: ['--config', file] });
  const req = () => chat(p.url, h.key, M('t4/cb'));
  const servedBy = (r) => ({ 2: 'X', 4: 'G' })[r.json?.usage?.completion_tokens] ?? `?(${r.status} ${r.text.slice(0, 200)})`;

  assert.equal(circuitState(await h.metrics(p.adminUrl), U('t4-x')), 'closed', 'closed at start');
  // Phase 1: THRESHOLD requests, each tried on X (503), then served by G.
  let last;
  for (let i = 0; i < THRESHOLD; i++) {
    last = await req();
    assert.equal(last.status, 200, last.text);
    assert.equal(servedBy(last), 'G');
  }
  assert.equal(await X.requests(), THRESHOLD, `X was tried by each of the ${THRESHOLD} requests`);
  assert.equal(circuitState(await h.metrics(p.adminUrl), U('t4-x')), 'open', `open after ${THRESHOLD} failures`);
  const openedAfter = last.sentAt; // the circuit opened while the last failing request ran
  const openedBy = last.doneAt;

  // Phase 2: during the cooldown every request goes straight to G; X sees none.
  let during = 0;
  while (Date.now() < openedBy + COOLDOWN * 0.4) {
    const r = await req();
    assert.equal(r.status, 200, r.text);
    assert.equal(servedBy(r), 'G');
    during += 1;
    await sleep(20);
  }
  assert.ok(during >= 5, `only ${during} requests during the cooldown`);
  assert.equal(await X.requests(), THRESHOLD, 'no attempt on X while its circuit is open');
  const row = await h.usageRow(last.requestId);
  assert.equal(row.upstream, U('t4-good'));

  // X recovers: restarted healthy on the same port, well before the cooldown ends.
  await X.stop();
  const X2 = await stub('stub-X4-healthy', 2, [], { port: X.port });
  assert.ok(Date.now() < openedAfter + COOLDOWN - 300, 'the restart took too long for this test to mean anything');

  // Phase 3: after the cooldown one probe goes to X, succeeds and closes the circuit.
  let probe = null;
  let servedByGAfterCooldown = 0;
  while (!probe && Date.now() < openedBy + COOLDOWN * 3) {
    const r = await req();
    assert.equal(r.status, 200, r.text);
    if (servedBy(r) === 'X') probe = r;
    else {
      assert.equal(servedBy(r), 'G');
      if (r.sentAt > openedBy + COOLDOWN) servedByGAfterCooldown += 1;
    }
    await sleep(20);
  }
  assert.ok(probe, `no request reached X within ${COOLDOWN * 3} ms of the circuit opening`);
  const openFor = { min: probe.sentAt - openedBy, max: probe.doneAt - openedAfter };
  t.diagnostic(`circuit: opened after ${THRESHOLD} failures; ${during} requests during the cooldown, X untouched; ` +
    `first request to reach X again ${openFor.min}..${openFor.max} ms after opening (cooldown ${COOLDOWN} ms); ` +
    `${servedByGAfterCooldown} request(s) sent after the cooldown still went to G`);
  // The breaker keeps its deadline in whole milliseconds and Date.now() is one too: 2 ms of slack.
  assert.ok(openFor.max >= COOLDOWN - 2, `X was tried again ${openFor.max} ms after the circuit opened, before the ${COOLDOWN} ms cooldown`);
  assert.ok(openFor.min <= COOLDOWN + 500, `the probe came ${openFor.min} ms after opening (cooldown ${COOLDOWN} ms)`);
  assert.equal(await X2.requests(), 1, 'exactly one probe');
  assert.equal((await h.usageRow(probe.requestId)).upstream, U('t4-x'));
  // Closed again: X (the higher priority) serves every request.
  for (let i = 0; i < 3; i++) assert.equal(servedBy(await req()), 'X');
  assert.equal(await X2.requests(), 4);
  assert.equal(circuitState(await h.metrics(p.adminUrl), U('t4-x')), 'closed', 'closed after the good probe');
  const opened = new RegExp(`^tollgate_upstream_circuit_opened_total\\{upstream="${U('t4-x')}"\\} (\\d+)$`, 'm')
    .exec(await h.metrics(p.adminUrl));
  assert.equal(opened?.[1], '1', 'opened once');
  await p.child.stop();
});

// ---------------------------------------------------------------------------------------------
// 5. Weights.

test('5: weights 3:1 split 4,000 requests 75 % ± 3 %', async (t) => {
  const N = 4000;
  const CONCURRENCY = 32;
  const [W3, W1] = await Promise.all([stub('stub-w3', 3), stub('stub-w1', 5)]);
  await changeRoutes(async () => {
    await h.addUpstream(U('t5-w3'), W3.base, { keyRef: KEY_REF });
    await h.addUpstream(U('t5-w1'), W1.base, { keyRef: KEY_REF });
    await h.addRoute(M('t5/split'), U('t5-w3'), { weight: 3 });
    await h.addRoute(M('t5/split'), U('t5-w1'), { weight: 1 });
  });
  // An account that the default request limit (600/min) does not stop.
  const acct = await h.newAccount({ usd: '100', label: 't5' });
  await psql(`UPDATE rate_limits SET requests_per_minute = 1000000, requests_per_hour = 1000000,
              requests_per_day = 1000000 WHERE user_id = ${lit(acct.id)}`);
  const body = JSON.stringify({ model: M('t5/split'), messages: [{ role: 'user', content: 'w' }] });
  const byChunks = { 3: 0, 5: 0 };
  const failures = [];
  let next = 0;
  const started = Date.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < N) {
      next += 1;
      const res = await fetch(`${h.url}/v1/chat/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${acct.key}` }, body,
      });
      const text = await res.text();
      if (res.status !== 200) failures.push(`${res.status} ${text.slice(0, 200)}`);
      else byChunks[JSON.parse(text).usage.completion_tokens] += 1;
    }
  }));
  const ms = Date.now() - started;
  assert.deepEqual(failures, [], `${failures.length} of ${N} failed`);
  const [n3, n1] = await counts([W3, W1]);
  const share = n3 / N;
  t.diagnostic(`${N} requests (${CONCURRENCY} in flight) in ${ms} ms: weight 3 got ${n3}, weight 1 got ${n1}: ` +
    `${(share * 100).toFixed(2)} %`);
  assert.equal(n3 + n1, N, 'the stubs served every request once');
  assert.deepEqual(byChunks, { 3: n3, 5: n1 }, 'responses agree with the stub counters');
  assert.ok(Math.abs(share - 0.75) <= 0.03, `weight 3 got ${(share * 100).toFixed(2)} %`);
  await h.settled();
  const rows = await psql(`SELECT upstream || '=' || count(*) FROM usage_logs WHERE user_id = ${lit(acct.id)}
                           GROUP BY upstream ORDER BY upstream`);
  assert.deepEqual(rows.split('\n').sort(), [`${U('t5-w1')}=${n1}`, `${U('t5-w3')}=${n3}`].sort());
}, { timeout: 60_000 });

// ---------------------------------------------------------------------------------------------
// 6. A route change by SQL applies on every instance within 1 s.

test('6: a route change by SQL (and `upstreams disable|enable`) applies on every instance within 1 s of its commit', async (t) => {
  const [X, Y] = await Promise.all([stub('stub-X6', 3), stub('stub-Y6', 5)]);
  const routeId = await changeRoutes(async () => {
    await h.addUpstream(U('t6-x'), X.base, { keyRef: KEY_REF });
    await h.addUpstream(U('t6-y'), Y.base, { keyRef: KEY_REF });
    await h.addRoute(M('t6/switch'), U('t6-x'), { priority: -10 }); // the fallback once Y is disabled
    return h.addRoute(M('t6/switch'), U('t6-x'));
  });
  const second = await h.startProxy({ name: 'tollgate-2', env: ENV });
  const instances = [h.proxy, second];
  const tokens = async (p) => {
    const r = await chat(p.url, h.key, M('t6/switch'));
    assert.equal(r.status, 200, r.text);
    return { chunks: r.json.usage.completion_tokens, sentAt: r.sentAt, doneAt: r.doneAt };
  };
  /**
   * Polls every instance until it is served by the stub with `want` chunks (the other one until
   * then): per instance [min, max] ms after `since` at which it switched. Gives up after 2 s.
   */
  const switchTimes = (since, want, other) => Promise.all(instances.map(async (p) => {
    let prev = null;
    for (;;) {
      const r = await tokens(p);
      if (r.chunks === want) return { min: Math.max(0, (prev ? prev.sentAt : since) - since), max: r.doneAt - since };
      assert.equal(r.chunks, other);
      if (r.sentAt - since > 2000) return { min: Infinity, max: Infinity };
      prev = r;
      await sleep(5);
    }
  }));
  const check = async (what, switched, want) => {
    t.diagnostic(`${what}: served by the new upstream ${switched.map((s) => `${s.min}..${s.max} ms`).join(' and ')} ` +
      'after the commit (instances 1 and 2)');
    for (const [i, s] of switched.entries())
      assert.ok(s.max <= 1000, `${what}: instance ${i + 1} still used the old route ${s.max} ms after the commit`);
    for (const p of instances) for (let i = 0; i < 3; i++) assert.equal((await tokens(p)).chunks, want, `${what}: it stays`);
  };
  for (const p of instances) assert.equal((await tokens(p)).chunks, 3, 'X serves before the change');

  // The commit's time by the database's clock (the same host clock as Date.now()): psql prints
  // every statement's result, the last line is the SELECT's.
  const committedAt = Number((await psql(
    `BEGIN; UPDATE model_routes SET upstream = ${lit(U('t6-y'))} WHERE id = ${routeId}; COMMIT;
     SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint`)).split('\n').pop());
  assert.ok(Math.abs(committedAt - Date.now()) < 1000, `commit time ${committedAt}`);
  await check('UPDATE model_routes', await switchTimes(committedAt, 5, 3), 5);

  // The CLI: timed from before the command started (its commit is a little later).
  let since = Date.now();
  await tollgate('upstreams', 'disable', U('t6-y'));
  await check('upstreams disable', await switchTimes(since, 3, 5), 3);
  since = Date.now();
  await tollgate('upstreams', 'enable', U('t6-y'));
  await check('upstreams enable', await switchTimes(since, 5, 3), 5);
  await second.child.stop();
});

// ---------------------------------------------------------------------------------------------
// 7. The upstream key from env: never leaks.

test('7a: the upstream key read from env: is sent upstream, and in no error body however the upstream echoes it', async () => {
  const S = await stub('stub-7', 3);
  await changeRoutes(async () => {
    await h.addUpstream(U('t7'), S.base, { keyRef: KEY_REF });
    await h.addRoute(M('t7/secret'), U('t7'));
  });
  const ok = await chat(h.url, h.key, M('t7/secret'));
  assert.equal(ok.status, 200, ok.text);
  assert.equal((await S.last()).authorization, `Bearer ${SECRET}`, 'tollgate holds and sends the key');

  // Upstream errors that echo the key, in every shape the stub can send them.
  const echo = `Incorrect API key provided: ${SECRET}. You can find your API key at https://example.test.`;
  const errorRequests = [
    { stub_fail: 'status:401', stub_error: { code: 401, message: echo } },
    { stub_fail: 'status:401', stub_error_body: `{"error":{"message":"${echo}","key":"${SECRET}"}}`, stub_error_content_type: 'application/json' },
    { stub_fail: 'status:401', stub_error_body: echo },
    { stub_fail: 'status:403', stub_error: { code: 403, message: 'forbidden', metadata: { raw: echo, key: SECRET } } },
    { stub_fail: 'status:500', stub_error: { code: 500, message: echo } },
    { stream: true, stub_fail: 'status:401', stub_error: { code: 401, message: echo } },
    { stream: true, stub_fail: 'midstream', stub_error: { code: 502, message: echo, metadata: { raw: SECRET } } },
  ];
  const before = await S.requests();
  for (const extra of errorRequests) {
    const r = await chat(h.url, h.key, M('t7/secret'), extra);
    assert.ok(r.text.length > 0, `${JSON.stringify(extra).slice(0, 80)}: empty answer`);
    assert.ok(!r.text.includes(SECRET), `the key reached the client (HTTP ${r.status}): ${r.text}`);
    for (const [name, value] of r.headers) assert.ok(!value.includes(SECRET), `the key is in the ${name} header`);
  }
  assert.equal(await S.requests(), before + errorRequests.length, 'every error came from the routed upstream');
  await h.settled();
  const rows = await psql(`SELECT count(*) FROM usage_logs WHERE response_metadata::text LIKE ${lit(`%${SECRET}%`)}
                           OR request_metadata::text LIKE ${lit(`%${SECRET}%`)}`);
  assert.equal(rows, '0', 'the key is in usage_logs');
});

test('7b: `tollgate upstreams list` and `routes list` show the key ref, never the key', async () => {
  if (!(await psql(`SELECT 1 FROM upstreams WHERE name = ${lit(U('t7'))}`)))
    await changeRoutes(() => h.addUpstream(U('t7'), 'http://127.0.0.1:9/api/v1', { keyRef: KEY_REF }));
  for (const args of [['upstreams', 'list'], ['routes', 'list']]) {
    const { stdout, stderr } = await tollgate(...args);
    assert.ok(!(stdout + stderr).includes(SECRET), `tollgate ${args.join(' ')} printed the key`);
    if (args[0] === 'upstreams') assert.match(stdout, new RegExp(`^${U('t7')}\\s+active\\s+\\S+\\s+${KEY_REF}\\s`, 'm'));
  }
});

// ---------------------------------------------------------------------------------------------
// 8. A crash loses nothing, the serving upstream included.

test('8: a usage row replayed from the journal after a crash still names the upstream that served it', async (t) => {
  const services = process.env.TOLLGATE_SERVICES_DIR;
  assert.ok(services, 'TOLLGATE_SERVICES_DIR is not set: run through tests/run.sh');
  const S = await stub('stub-8', 3);
  await changeRoutes(async () => {
    await h.addUpstream(U('t8'), S.base, { keyRef: KEY_REF });
    await h.addRoute(M('t8/replay'), U('t8'));
  });
  const env = { ...ENV, TOLLGATE_JOURNAL_DIR: join(h.tmp('journal8'), 'journal') };
  const p = await h.startProxy({ name: 'tollgate-crash', env });
  const warm = await chat(p.url, h.key, M('t8/replay')); // the key is cached from here on
  assert.equal(warm.status, 200, warm.text);
  assert.equal((await h.usageRow(warm.requestId)).upstream, U('t8'), 'the row written live');

  // PostgreSQL down: the next request's usage stays in the journal; then the instance dies.
  await exec('bash', [SERVICES, 'stop-pg', services]);
  let r;
  try {
    r = await chat(p.url, h.key, M('t8/replay'));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.usage.completion_tokens, 3);
    await sleep(200); // journaled at once, its commit fails for as long as PostgreSQL is down
    p.child.proc.kill('SIGKILL');
    await p.child.exitPromise;
  } finally {
    await exec('bash', [SERVICES, 'start-pg', services]);
  }
  assert.equal(await h.usageRowNow(r.requestId), null, 'recorded before the crash: the replay is not tested');
  const restarted = await h.startProxy({ name: 'tollgate-replay', env }); // the same journal
  const row = await h.usageRow(r.requestId, 15_000);
  t.diagnostic(`replayed row: upstream ${row.upstream}, status ${row.status}, charge ${row.credits_deducted}`);
  assert.equal(row.status, 'success');
  assert.equal(row.upstream, U('t8'));
  assert.equal(toMicros(row.credits_deducted), (await h.price(M('t8/replay'), row.prompt_tokens, 3)).charge);
  await restarted.child.stop();
});

// Last: it looks at the output of every process of the suite (fallbacks, circuit, errors above).
test('7c: the upstream key appears in no log line of any tollgate instance and in no /metrics', async () => {
  for (const p of h.proxies.filter((x) => !x.child.exited))
    assert.ok(!(await h.metrics(p.adminUrl)).includes(SECRET), `${p.name}: the key is in /metrics`);
  const proxyChildren = h.proxies.map((p) => p.child);
  assert.ok(proxyChildren.length >= 1);
  assert.deepEqual(proxyChildren.filter((c) => !c.found.has(CANARY)).map((c) => c.name), [],
    `"${CANARY}" not seen in their output: the watch does not work`);
  const leaked = proxyChildren.filter((c) => c.found.has(SECRET)).map((c) => c.name);
  assert.deepEqual(leaked, [], `the key appeared in the output of ${leaked.join(', ')}`);
});
