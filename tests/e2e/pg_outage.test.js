// PostgreSQL down (services.sh stop-pg / start-pg): keys PostgreSQL confirmed before the outage
// keep working from the cache once their entry expired (stale-if-error, keys.stale_if_error_ms),
// a key never looked up is refused with 503, the usage recorded meanwhile reaches PostgreSQL
// when it is back, and a key revoked then is refused at once. The key cache TTL is 1 s here
// (keys.cache_ttl_ms) so that entries expire during a short outage; the stale bound is the
// default. The fault suite (tests/fault, pg_down) runs the same with defaults for 60 s.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { sleep, tollgate, useHarness } from './harness.js';

const h = useHarness();
const exec = promisify(execFile);
const SERVICES = fileURLToPath(new URL('../../deploy/local/services.sh', import.meta.url));

async function chat(url, key, body) {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let code = null;
  try { code = JSON.parse(text).error?.code ?? null; } catch { /* a completion */ }
  return { status: res.status, code, id: res.headers.get('x-request-id'), text };
}

test('PostgreSQL down: cached keys served stale, unknown keys 503, usage kept, revocation on return', async (t) => {
  const services = process.env.TOLLGATE_SERVICES_DIR;
  assert.ok(services, 'TOLLGATE_SERVICES_DIR is not set: run through tests/run.sh');
  const dir = h.tmp('pg-outage');
  const config = join(dir, 'tollgate.toml');
  writeFileSync(config, '[keys]\ncache_ttl_ms = 1000\n');
  const proxy = await h.startProxy({ name: 'tollgate-pg-outage', args: ['--config', config] });
  const body = { model: h.model, max_tokens: 5, messages: [{ role: 'user', content: 'outage?' }] };
  const unseen = await h.newAccount({ usd: '1', label: 'unseen' });
  const warm = await chat(proxy.url, h.key, body);
  assert.equal(warm.status, 200, warm.text);

  await exec('bash', [SERVICES, 'stop-pg', services]);
  const ids = [];
  try {
    await sleep(1200);  // the key's entry (1 s TTL) has expired: its lookup fails now
    for (let i = 0; i < 5; ++i) {
      const r = await chat(proxy.url, h.key, body);
      assert.equal(r.status, 200, `request ${i} during the outage: ${r.status} ${r.text}`);
      ids.push(r.id);
      await sleep(300);  // spans several re-checks (one failing lookup per second)
    }
    const never = await chat(proxy.url, unseen.key, body);
    assert.equal(never.status, 503, never.text);
    assert.equal(never.code, 'auth_unavailable');
  } finally {
    await exec('bash', [SERVICES, 'start-pg', services]);
  }

  // Back: revoke the key; it is refused at once (a lookup that now succeeds, or the listener's
  // reconnect, which drops the cache).
  await tollgate('keys', 'revoke', h.account.keyId);
  const revokedAt = Date.now();
  let refused;
  while (Date.now() - revokedAt < 3000) {
    const r = await chat(proxy.url, h.key, body);
    if (r.status === 401) { refused = Date.now() - revokedAt; break; }
    await sleep(20);
  }
  const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
  const stale = Number(/^tollgate_key_cache_stale_served_total (\d+)$/m.exec(metrics)?.[1]);
  assert.ok(stale >= 1, `tollgate_key_cache_stale_served_total ${stale}`);
  assert.ok(refused !== undefined, 'the revoked key was still served 3 s after the revocation');
  t.diagnostic(`revoked key refused ${refused} ms after the revocation`);
  assert.ok(refused <= 1000, `revoked key refused only after ${refused} ms`);
  for (const id of [warm.id, ...ids]) await h.usageRow(id, 15_000);  // journaled, then recorded
});
