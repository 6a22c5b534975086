// Balance and limit alerts to the operator (issue 14, part 4): events from Postgres' alert_outbox
// POSTed to a local receiver (node:http) that verifies Tollgate-Signature the way a Stripe
// webhook receiver does: balance.low once per crossing, retried while the receiver is down then
// delivered once, delivered after a tollgate restart, and spend_limit.reached once per limit and
// period. The retry schedule is lowered (alerts.retry_base_ms = 100) so the test takes seconds.
import assert from 'node:assert/strict';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';
import { after, test } from 'node:test';

import { closedPort, lit, psql, psqlJson, randomSuffix, sleep, tollgate, useHarness } from './harness.js';

const SECRET = `whsec_e2e_${randomSuffix(12)}`;

/** Verifies `t=<unix s>,v1=<hex>`: HMAC-SHA256 of "<t>.<raw body>" with SECRET, t within 300 s. */
function verify(header, raw) {
  const parts = Object.fromEntries(String(header ?? '').split(',').map((kv) => kv.split('=')));
  const t = Number(parts.t);
  if (!Number.isInteger(t) || Math.abs(Date.now() / 1000 - t) > 300 || !/^[0-9a-f]{64}$/.test(parts.v1 ?? ''))
    return false;
  const want = createHmac('sha256', SECRET).update(`${t}.${raw}`).digest();
  return timingSafeEqual(want, Buffer.from(parts.v1, 'hex'));
}

/** The operator's endpoint: records every verified delivery; can be taken down and brought back on its port. */
class Receiver {
  constructor(port) {
    this.port = port;
    this.deliveries = []; // parsed bodies, one per verified POST (duplicates kept)
    this.rejected = 0;
    this.server = null;
  }
  async up() {
    this.server = createServer((req, res) => {
      let raw = '';
      req.setEncoding('utf8');
      req.on('data', (d) => (raw += d));
      req.on('end', () => {
        const ok = req.method === 'POST' && req.headers['content-type'] === 'application/json' &&
                   verify(req.headers['tollgate-signature'], raw);
        if (!ok) this.rejected++;
        else this.deliveries.push(JSON.parse(raw));
        res.writeHead(ok ? 200 : 400).end();
      });
    });
    await new Promise((res, rej) => this.server.once('error', rej).listen(this.port, '127.0.0.1', res));
  }
  async down() {
    if (!this.server) return;
    const server = this.server;
    this.server = null;
    server.closeAllConnections();
    await new Promise((res) => server.close(res));
  }
  /** Verified deliveries matching `pred`. */
  of(pred) {
    return this.deliveries.filter(pred);
  }
}

const receiver = new Receiver(await closedPort());
await receiver.up();
const env = {
  TOLLGATE_ALERTS_URL: `http://127.0.0.1:${receiver.port}/hooks/tollgate?source=e2e`,
  TOLLGATE_ALERTS_SECRET: SECRET,
  TOLLGATE_ALERTS_RETRY_BASE_MS: '100',
  TOLLGATE_ALERTS_POLL_MS: '100',
};
after(() => receiver.down());
const h = useHarness({ env });
h.watch(SECRET);
let url; // the running proxy (the restart test replaces it)

async function chat(key, body = { model: h.model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 8 }, at = url ?? h.url) {
  const res = await fetch(`${at}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: await res.json().catch(() => null) };
}

/** Polls `fn` every 50 ms until it returns a truthy value; throws after `ms`. */
async function until(fn, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(50);
  }
}

const lowFor = (account) => (e) => e.type === 'balance.low' && e.data.account === account;

/** A fresh account with $1 and a threshold 1 micro-dollar under it: its first charge crosses it. */
async function accountWithThreshold(label) {
  const a = await h.newAccount({ usd: '1', label });
  const { stdout } = await tollgate('accounts', 'set-low-balance-alert', a.email, '0.999999');
  assert.match(stdout, /below \$0\.999999/);
  assert.equal(await psql(`SELECT low_balance_alert_usd::text FROM balances WHERE user_id = ${lit(a.id)}`), '0.999999');
  return a;
}

async function outboxRow(account) {
  return psqlJson(`SELECT json_build_object('event_id', event_id, 'attempts', attempts, 'last_error', last_error,
                     'delivered', delivered_at IS NOT NULL) FROM alert_outbox
                   WHERE account = ${lit(account)} AND type = 'balance.low'`);
}

test('balance.low: delivered once, signed, when spending crosses the threshold; spending further sends no second', async () => {
  const a = await accountWithThreshold('low');
  for (let i = 0; i < 3; i++) assert.equal((await chat(a.key)).status, 200);
  await h.settled();
  const [e] = await until(() => receiver.of(lowFor(a.id)).length && receiver.of(lowFor(a.id)), 10_000, 'balance.low');
  await sleep(1000); // a second delivery would come within the poll interval
  assert.equal(receiver.of(lowFor(a.id)).length, 1);
  assert.match(e.id, /^evt_[0-9a-f]{32}$/);
  assert.equal(typeof e.created, 'number');
  assert.equal(e.data.threshold_usd, '0.999999');
  const balance = await psql(`SELECT credits::text FROM balances WHERE user_id = ${lit(a.id)}`);
  assert.ok(Number(e.data.balance_usd) < 0.999999 && Number(e.data.balance_usd) >= Number(balance));
  const row = await outboxRow(a.id);
  assert.equal(row.event_id, e.id);
  assert.equal(row.delivered, true);
  assert.equal(receiver.rejected, 0);
});

test('receiver down: retried with backoff, then delivered once when it is back', async () => {
  await receiver.down();
  const a = await accountWithThreshold('down');
  assert.equal((await chat(a.key)).status, 200);
  await h.settled();
  const failing = await until(async () => {
    const r = await outboxRow(a.id);
    return r && r.attempts >= 3 && r;
  }, 15_000, 'three failed attempts');
  assert.equal(failing.delivered, false);
  assert.ok(failing.last_error, 'the failure is recorded');
  const failed = Number(/^tollgate_alerts_total\{result="failed"\} (\d+)$/m.exec(await h.metrics())?.[1]);
  assert.ok(failed >= 3, `tollgate_alerts_total{result="failed"} ${failed}`);
  assert.equal(receiver.of(lowFor(a.id)).length, 0);
  await receiver.up();
  await until(() => receiver.of(lowFor(a.id)).length, 15_000, 'delivery after the receiver came back');
  await sleep(1000);
  assert.equal(receiver.of(lowFor(a.id)).length, 1);
  assert.equal(receiver.of(lowFor(a.id))[0].id, failing.event_id);
  assert.equal((await outboxRow(a.id)).delivered, true);
});

test('an undelivered alert survives a tollgate restart and is delivered after it', async () => {
  const a = await accountWithThreshold('restart');
  await receiver.down();
  assert.equal((await chat(a.key)).status, 200);
  await h.settled();
  await until(async () => (await outboxRow(a.id))?.attempts >= 1, 10_000, 'a failed attempt');
  assert.equal((await h.proxy.child.stop()).code, 0);
  await receiver.up();
  await sleep(700);
  assert.equal(receiver.of(lowFor(a.id)).length, 0, 'nobody delivers while tollgate is down');
  assert.equal((await outboxRow(a.id)).delivered, false);
  url = (await h.startProxy({ name: 'tollgate-restarted', env })).url;
  await until(() => receiver.of(lowFor(a.id)).length, 15_000, 'delivery after the restart');
  await sleep(1000);
  assert.equal(receiver.of(lowFor(a.id)).length, 1);
});

test('spend_limit.reached: one event per limit and period, however many refusals on 2 instances', async () => {
  const second = await h.startProxy({ name: 'tollgate-2', env });
  const a = await h.newAccount({ usd: '10', label: 'limit' });
  await tollgate('keys', 'set-limit', a.keyId, '0.000001', '--limit-reset', 'daily');
  for (let i = 0; i < 6; i++) {
    const r = await chat(a.key, undefined, i % 2 ? second.url : undefined);
    assert.equal(r.status, 402);
    assert.equal(r.json.error.code, 'key_spend_limit_reached');
  }
  const mine = (e) => e.type === 'spend_limit.reached' && e.data.key_id === a.keyId;
  const [e] = await until(() => receiver.of(mine).length && receiver.of(mine), 10_000, 'spend_limit.reached');
  await sleep(1000);
  assert.equal(receiver.of(mine).length, 1);
  const today = new Date().toISOString().slice(0, 10);
  assert.equal(e.id, `spend_limit:key:${a.keyId}:${today}T00:00:00Z`);
  assert.deepEqual(
    { scope: e.data.scope, account: e.data.account, limit_usd: e.data.limit_usd, period_start: e.data.period_start },
    { scope: 'key', account: a.id, limit_usd: '0.000001', period_start: `${today}T00:00:00Z` },
  );
  assert.match(e.data.resets_at, /^\d{4}-\d{2}-\d{2}T00:00:00Z$/);
  assert.equal(Number(await psql(`SELECT count(*) FROM alert_outbox WHERE event_id = ${lit(e.id)}`)), 1);
  // Both instances wrote the event (the second insert was a no-op), and neither's alert task failed.
  for (const p of h.proxies) assert.doesNotMatch(p.child.log, /alerts: .*retrying/, p.name);
});

test('the signing secret appears in no log', async () => {
  assert.deepEqual(h.leakedTo(SECRET), []);
});
