// The request corpus of tollgate issue 10, replayed against the built binary. tollgate runs
// (tests/e2e/harness.js) with its upstream pointing at a logging relay in front of the real
// tollgate-stub (logging_upstream.js). Every case of cases.js is sent as raw bytes on its own
// connection; the runner checks the answers (status, OpenAI error envelope, Connection: close),
// the connection state afterwards (closed, or a follow-up GET /v1/models answered on the same
// socket), and what the upstream received: nothing at all for a refused request; for a forwarded
// one, exactly one request framed by tollgate itself (one Content-Length, no Transfer-Encoding,
// no client field, the operator's key). After the corpus the process must still be alive and
// serve. A table of results per category is printed at the end (and written to
// $CORPUS_SUMMARY when set; every case's outcome goes to $CORPUS_RESULTS as JSON).

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { sleep, useHarness } from '../e2e/harness.js';
import cases, { KEY_LEN } from './cases.js';
import { expandCase } from './expand.js';
import { fieldValues, RawConnection, show } from './http_wire.js';
import { startLoggingUpstream } from './logging_upstream.js';

const RESPONSE_MS = 5000; // to read one response
const CLOSE_MS = 2000; // for the peer to close after the last response
const ANY_CLOSE_MS = 150; // conn 'any' without Connection: close: closed by then, or treated as open
const SETTLE_MS = 30; // after a case, for upstream bytes still in flight to be logged
const PART_GAP_MS = 30; // between the parts of a case sent in pieces

let upstream;
let h;
let key2;
let proxy; // the tollgate under test: { child, port, url }
let port;
const crashes = []; // { id, exited, log }: a case that ended the process (a new one is started)

/** Inside the top-level suite: the harness and the logging upstream, started once. */
function setUp() {
  h = useHarness({
    upstream: async (stubUrl) => {
      upstream = await startLoggingUpstream(stubUrl);
      return `${upstream.url}/api/v1`;
    },
  });
  before(async () => {
    key2 = (await h.newKey(h.account.id, 'corpus-second')).key;
    proxy = h.proxy;
    port = proxy.port;
    assert.equal(h.key.length, KEY_LEN, 'the limit cases assume 41-byte API keys');
  });
  after(async () => {
    printSummary();
    await upstream?.close();
  });
}

/** A case's parts to send, for this run's key, host and model. */
const expand = (c) => expandCase(c, { key: h.key, key2, host: `127.0.0.1:${port}`, model: h.model });

/** The self-checks of cases.js (byte counts of the expanded request). */
function selfCheck(c, bytes) {
  if (!c.check) return;
  let s = bytes;
  while (s.startsWith('\r\n')) s = s.slice(2);
  const lineEnd = s.indexOf('\r\n');
  const headEnd = s.indexOf('\r\n\r\n');
  const got = {
    requestLine: lineEnd,
    headerSection: headEnd + 4 - (lineEnd + 2),
    fields: s.slice(lineEnd + 2, headEnd).split('\r\n').length,
    chunkLine: s.indexOf('\r\n', headEnd + 4) - (headEnd + 4),
  };
  for (const [k, v] of Object.entries(c.check))
    assert.equal(got[k], v, `case ${c.id} is malformed: its ${k} is ${got[k]} bytes, not ${v}`);
}

// ---------------------------------------------------------------------------------------------
// Checks

const FORBIDDEN_UPSTREAM_FIELDS = [
  'transfer-encoding', 'te', 'trailer', 'keep-alive', 'upgrade', 'proxy-authorization', 'proxy-connection',
  'expect', 'x-corpus-client', 'x-a', 'x-pad', 'x-folded',
];

function checkUpstreamRequest(c, r, fail) {
  const tag = `upstream request #${r.seq}`;
  if (r.unparsed) return fail(`${tag} is not HTTP/1.1 (${r.why}): ${show(r.unparsed)}`);
  const cl = r.framing.contentLength;
  if (cl.length !== 1) fail(`${tag} has ${cl.length} Content-Length fields: ${show(r.head)}`);
  else if (Number(cl[0]) !== r.body.length || !/^\d+$/.test(cl[0])) fail(`${tag} Content-Length ${cl[0]} for a ${r.body.length}-byte body`);
  if (r.framing.transferEncoding.length) fail(`${tag} carries Transfer-Encoding: ${r.framing.transferEncoding.join(' | ')}`);
  const auth = fieldValues(r.fields, 'authorization');
  if (auth.length !== 1 || auth[0] !== `Bearer ${h.upstreamKey}`) fail(`${tag} Authorization is ${JSON.stringify(auth)}, not the operator's key`);
  for (const [name] of r.fields)
    if (FORBIDDEN_UPSTREAM_FIELDS.includes(name.toLowerCase())) fail(`${tag} carries the client's ${name} field`);
  const conn = fieldValues(r.fields, 'connection');
  if (conn.some((v) => !/^(keep-alive|close)$/i.test(v))) fail(`${tag} Connection: ${conn.join(', ')}`);
  if (r.head.includes(h.key) || r.head.includes(key2)) fail(`${tag} carries the client's API key in its head`);
  const body = r.body.toString('latin1');
  if (body.includes(`corpus:${c.id}:smuggled`)) fail(`${tag} is the SMUGGLED request: ${show(body)}`);
  else if (!body.includes(`"corpus:${c.id}"`)) fail(`${tag} is not this case's request: ${show(body)}`);
  if (c.expect.path && !r.startLine.startsWith(`POST ${c.expect.path} HTTP/1.1`)) fail(`${tag} request line ${show(r.startLine)}, expected POST ${c.expect.path}`);
}

/** True if a response carries the `close` connection option. */
const saysClose = (res) =>
  fieldValues(res.fields, 'connection').join(',').toLowerCase().split(',').some((t) => t.trim() === 'close');

function checkResponse(c, res, want, isLast, fail) {
  const allowed = Array.isArray(want) ? want : [want];
  const tag = `response ${res.status}`;
  if (!allowed.includes(res.status)) fail(`status ${res.status}, expected ${allowed.join(' or ')}: ${show(res.head)} ${show(res.body, 200)}`);
  if (res.status >= 400) {
    let e;
    try {
      e = JSON.parse(res.body.toString('utf8'));
    } catch {
      fail(`${tag} body is not JSON: ${show(res.body)}`);
    }
    if (e && (typeof e.error?.message !== 'string' || typeof e.error?.type !== 'string' || !('code' in e.error) || !('param' in e.error)))
      fail(`${tag} body is not OpenAI's error envelope: ${show(res.body)}`);
  }
  if (isLast && c.expect.conn === 'closed' && c.expect.closeHeader !== false && !saysClose(res))
    fail(`${tag} lacks Connection: close (the connection must close after it)`);
  if (c.expect.conn === 'open' && saysClose(res)) fail(`${tag} says Connection: close, the connection should stay open`);
  if (c.expect.sse && res.status === 200) {
    if (!/^text\/event-stream/.test(fieldValues(res.fields, 'content-type')[0] || '')) fail(`${tag} is not an event stream`);
    if (!res.body.toString('latin1').includes('data: [DONE]')) fail(`${tag} stream does not end with data: [DONE]`);
  }
}

// ---------------------------------------------------------------------------------------------
// One case

const results = []; // { category, id, pass, got, failures }

async function runCase(c) {
  const parts = expand(c);
  selfCheck(c, parts.join(''));
  const upFrom = upstream.requests.length;
  const bytesFrom = upstream.bytes;
  const failures = [];
  const fail = (m) => failures.push(m);
  const seen = [];
  let firstStatus;
  let lastSaysClose = false;
  const conn = await RawConnection.open(port);
  try {
    const wants = c.expect.responses ?? [c.expect.status];
    let interim = [];
    if (c.expect.continue) {
      await conn.write(Buffer.from(parts[0], 'latin1'));
      const got100 = await conn.waitFor(() => /^HTTP\/1\.1 100 /.test(conn.buf.toString('latin1', 0, 16)) || conn.gone, RESPONSE_MS);
      if (!got100 || !/^HTTP\/1\.1 100 /.test(conn.buf.toString('latin1', 0, 16))) fail(`no 100 Continue before the body (got ${show(conn.buf, 120)})`);
      conn.write(Buffer.from(parts.slice(1).join(''), 'latin1'));
    } else {
      for (let i = 0; i < parts.length; ++i) {
        const w = conn.write(Buffer.from(parts[i], 'latin1'));
        // the last part may never be read whole (a refused request): do not wait for it
        if (i < parts.length - 1) {
          await Promise.race([w, sleep(RESPONSE_MS)]);
          await sleep(PART_GAP_MS);
        }
      }
    }
    // The answers
    for (let i = 0; i < wants.length; ++i) {
      if (wants[i] === null) break;
      const r = await conn.readResponse(RESPONSE_MS);
      interim = interim.concat(r.interim);
      if (r.error) {
        fail(`response ${i + 1} of ${wants.length}: ${r.error}${r.partial?.length ? ` after ${show(r.partial, 200)}` : ''}${conn.reset ? ` (${conn.reset})` : ''}`);
        break;
      }
      seen.push(r.response.status);
      firstStatus ??= r.response.status;
      lastSaysClose = saysClose(r.response);
      checkResponse(c, r.response, wants[i], i === wants.length - 1, fail);
    }
    if (c.expect.noContinue && interim.some((r) => r.status === 100)) fail('sent 100 Continue for a request it refuses');
    if (wants[0] === null && conn.buf.length) fail(`expected no response, got ${show(conn.buf)}`);
    // The connection afterwards
    if (!failures.length) {
      let mode = c.expect.conn;
      // 'any': the server's own word decides (Connection: close), or an early close
      if (mode === 'any') mode = lastSaysClose || (await conn.waitClosed(ANY_CLOSE_MS)) ? 'closed' : 'open';
      if (mode === 'closed') {
        if (!(await conn.waitClosed(CLOSE_MS))) fail(`connection still open ${CLOSE_MS} ms after the last response`);
        if (conn.buf.length) fail(`bytes after the last response (a second answer?): ${show(conn.buf)}`);
        seen.push('closed');
      } else {
        await sleep(10);
        if (conn.buf.length) fail(`bytes after the last response (a second answer?): ${show(conn.buf)}`);
        if (conn.gone) fail('connection closed; it should have stayed open');
        else {
          await conn.write(Buffer.from(expand({ id: c.id, raw: '{models}' })[0], 'latin1'));
          const r = await conn.readResponse(RESPONSE_MS);
          if (r.error) fail(`follow-up GET /v1/models on the kept connection: ${r.error}`);
          else if (r.response.status !== 200) fail(`follow-up GET /v1/models answered ${r.response.status}: ${show(r.response.body, 200)}`);
          else seen.push('open');
        }
      }
    }
  } finally {
    conn.destroy();
  }
  // The upstream
  await sleep(SETTLE_MS);
  const ups = upstream.requests.slice(upFrom);
  const want = typeof c.expect.upstream === 'object' ? (c.expect.upstream[firstStatus] ?? 0) : c.expect.upstream;
  if (want === 0 && upstream.bytes !== bytesFrom)
    fail(`the upstream received ${upstream.bytes - bytesFrom} bytes, expected none:\n${upstream.describe(upFrom)}`);
  else if (ups.length !== want) fail(`the upstream received ${ups.length} requests, expected ${want}:\n${upstream.describe(upFrom)}`);
  for (const r of ups) checkUpstreamRequest(c, r, fail);
  seen.push(`upstream ${ups.length}`);
  // The process: if this case ended it, say so and start another for the cases after it
  if (failures.length) await Promise.race([proxy.child.exitPromise, sleep(200)]); // an abort takes a moment
  if (proxy.child.exited) {
    const log = proxy.child.log.slice(-1500);
    crashes.push({ id: c.id, exited: proxy.child.exited, log });
    fail(`tollgate EXITED (${JSON.stringify(proxy.child.exited)}):\n${log}`);
    proxy = await h.startProxy({ upstreamUrl: `${upstream.url}/api/v1`, name: `tollgate-after-${crashes.length}` });
    port = proxy.port;
  }
  return { got: seen.join(', '), failures };
}

// ---------------------------------------------------------------------------------------------

const categories = [...new Set(cases.map((c) => c.category))];
describe('request corpus', () => {
  setUp();
  for (const category of categories) {
    describe(category, () => {
      for (const c of cases.filter((x) => x.category === category)) {
        it(c.id, { timeout: 60_000 }, async () => {
          const res = { category, id: c.id, pass: false, got: '', failures: [] };
          results.push(res);
          const { got, failures } = await runCase(c);
          res.got = got;
          res.failures = failures;
          res.pass = failures.length === 0;
          const want = c.expect.responses ?? c.expect.status;
          assert.ok(res.pass, `${c.id}${c.why ? ` (${c.why})` : ''}\nexpected ${JSON.stringify(want)} ${c.expect.conn}, upstream ${JSON.stringify(c.expect.upstream)}; got ${got}\n- ${failures.join('\n- ')}`);
        });
      }
    });
  }

  describe('after the corpus', () => {
    it('tollgate is still alive and serves a chat completion', async () => {
      assert.deepEqual(crashes.map((x) => `${x.id}: ${JSON.stringify(x.exited)}`), [], `cases ended the process:\n${crashes.map((x) => x.log).join('\n---\n')}`);
      assert.equal(proxy.child.exited, null, `tollgate exited: ${JSON.stringify(proxy.child.exited)}\n${proxy.child.log.slice(-2000)}`);
      assert.doesNotMatch(proxy.child.log, /terminate called/);
      const res = await fetch(`${proxy.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${h.key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: h.model, messages: [{ role: 'user', content: 'corpus:final' }], max_tokens: 3 }),
      });
      const text = await res.text();
      assert.equal(res.status, 200, text);
      assert.equal(JSON.parse(text).object, 'chat.completion');
    });
  });
});

/** Prints (and writes to $CORPUS_SUMMARY) the result table per category and the failures. */
function printSummary() {
  const rows = categories.map((cat) => {
    const r = results.filter((x) => x.category === cat);
    return [cat, r.length, r.filter((x) => x.pass).length];
  });
  const total = results.length;
  const passed = results.filter((x) => x.pass).length;
  const lines = [
    `request corpus: ${passed}/${total} cases passed (${cases.length} in the corpus)`,
    `${'category'.padEnd(16)} ${'cases'.padStart(5)} ${'passed'.padStart(6)}`,
    ...rows.map(([cat, n, p]) => `${cat.padEnd(16)} ${String(n).padStart(5)} ${String(p).padStart(6)}`),
    `${'total'.padEnd(16)} ${String(total).padStart(5)} ${String(passed).padStart(6)}`,
  ];
  const failed = results.filter((x) => !x.pass).map((x) => `FAIL ${x.id}: got ${x.got}; ${x.failures[0]?.split('\n')[0] ?? ''}`);
  const text = [...lines, ...failed].join('\n');
  console.log(`\n${text}\n`);
  if (process.env.CORPUS_SUMMARY) writeFileSync(process.env.CORPUS_SUMMARY, `${text}\n`);
  if (process.env.CORPUS_RESULTS) writeFileSync(process.env.CORPUS_RESULTS, `${JSON.stringify(results, null, 1)}\n`);
}
