// PostgreSQL down for 60 s under load (services.sh stop-pg / start-pg). Requests are still
// served — keys whose cache entry expires during the outage from the stale-if-error cache —,
// a key never seen before the outage is refused (503: that is the bound), no usage record is
// lost once PostgreSQL is back, and a key revoked then stops working at once.
import { performance } from 'node:perf_hooks';
import { Namespace, accountState, describeState, usd } from '../lib/accounts.mjs';
import { agent, chatBody, fmtMs, load, send, statusCounts } from '../lib/client.mjs';
import { services, sleep, startStub, startTollgate, tollgateCli } from '../lib/procs.mjs';
import { quiesce } from './kill9.mjs';

const OUTAGE_MS = Number(process.env.FAULT_PG_OUTAGE_MS || 60_000);
const KEY_TTL_MS = 60_000;  // keys.cache_ttl_ms default
// FAULT_STALE_IF_ERROR_MS=0 runs it without stale-if-error (keys.stale_if_error_ms), as before.
const STALE = process.env.FAULT_STALE_IF_ERROR_MS;

export default {
  name: 'pg_down',
  about: `PostgreSQL stopped ${OUTAGE_MS / 1000} s under load: served from the key cache (stale-if-error), nothing lost, revocation on return`,
  async run(report) {
    const ns = new Namespace('pg');
    await ns.setup();
    try {
      const acct = await ns.account({ dollars: '1000', keys: 10 });
      const unseen = await ns.account({ dollars: '10' });
      const stub = await startStub();
      const tg = await startTollgate({ upstreamUrl: stub.apiUrl,
        ...(STALE !== undefined ? { config: `[keys]\nstale_if_error_ms = ${Number(STALE)}\n` } : {}) });
      const model = ns.model();
      const ag = agent({ maxSockets: 16 });
      await stub.reset();
      const t0 = performance.now();
      const rel = () => performance.now() - t0;
      const cachedBy = [];  // each key's entry was put before its warm-up answer: expires 60 s later
      for (const k of acct.keys) {
        const r = await send({ base: tg.url, key: k.key, agent: ag, body: chatBody(model) });
        if (r.status !== 200) throw new Error(`warm-up: ${r.status} ${r.text}`);
        cachedBy.push(rel());
      }
      const loadKeys = acct.keys.slice(0, 9);
      const revocable = acct.keys[9];
      const L = load({
        workers: 6, pauseMs: 20,
        next: (w, n) => ({
          tag: (w * 7 + n) % loadKeys.length,
          base: tg.url, key: loadKeys[(w * 7 + n) % loadKeys.length].key, agent: ag, timeoutMs: 10_000,
          body: chatBody(model, n % 2 ? { stream: true, chunks: 4 } : { chunks: 4 }),
        }),
      });
      // The revocable key is probed every 200 ms all along (so it is served stale too).
      const probes = [];
      let probing = true;
      const prober = (async () => {
        while (probing) {
          const t = rel();
          probes.push({ t, ...(await send({ base: tg.url, key: revocable.key, agent: ag, body: chatBody(model), timeoutMs: 10_000 })) });
          await sleep(200);
        }
      })();
      await sleep(5000);
      const down0 = rel();
      await services('stop-pg');
      const down = rel();
      await sleep(OUTAGE_MS / 2);
      const unseenProbe = await send({ base: tg.url, key: unseen.key, agent: ag, body: chatBody(model) });
      await sleep(Math.max(0, OUTAGE_MS - (rel() - down)));
      const appendedAtReturn = (await tg.metrics())['tollgate_usage_records_appended_total'];
      const up0 = rel();
      await services('start-pg');
      const up = rel();
      let revoked = NaN;
      for (let i = 0; i < 50 && !Number.isFinite(revoked); ++i) {
        try {
          await tollgateCli('keys', 'revoke', revocable.keyId);
          revoked = rel();
        } catch { await sleep(100); }
      }
      // Every record appended before PostgreSQL returned is committed when the committed count
      // reaches what was appended then (the load goes on meanwhile).
      let committed = NaN;
      for (const deadline = rel() + 30_000; rel() < deadline;) {
        if ((await tg.metrics())['tollgate_usage_records_committed_total'] >= appendedAtReturn) { committed = rel(); break; }
        await sleep(50);
      }
      await sleep(5000);
      probing = false;
      await L.stop();
      await prober;
      ag.destroy();
      const rows = await quiesce([tg], acct.id);
      const upstream = await stub.requests();
      const st = await accountState(acct.id);
      const unseenState = await accountState(unseen.id);

      const shift = L.t0 - t0;  // load results count from the load's start, the rest from t0
      const stale = L.results.filter((r) => r.t + shift >= down && r.t + shift < up0);
      const expiredAt = (r) => cachedBy[r.tag] + KEY_TTL_MS;
      const phase = {
        'before the outage': L.results.filter((r) => r.t < down0 - shift),
        'outage, key entries fresh (< 60 s TTL)': stale.filter((r) => r.t + shift < expiredAt(r)),
        'outage, key entries expired (stale-if-error)': stale.filter((r) => r.t + shift >= expiredAt(r)),
        'after PostgreSQL returned': L.results.filter((r) => r.t + shift >= up),
      };
      const fmtPhase = (rs) => `${rs.length}: ${statusCounts(rs)}`;
      const firstDenied = probes.find((p) => p.t >= revoked && p.status === 401);
      const servedAfterRevoke = probes.filter((p) => p.t >= revoked && p.status === 200).length;
      const outage = [...phase['outage, key entries fresh (< 60 s TTL)'], ...phase['outage, key entries expired (stale-if-error)']];
      // 503 rate_limiter_unavailable is Redis' deadline (issue 10 point 4), not PostgreSQL.
      const pgErrors = outage.filter((r) => r.status !== 200 && r.code !== 'rate_limiter_unavailable').length;
      const redisDeadline = L.results.filter((r) => r.code === 'rate_limiter_unavailable').length;
      const expired = phase['outage, key entries expired (stale-if-error)'];

      report.figure('command', `${STALE !== undefined ? `FAULT_STALE_IF_ERROR_MS=${STALE} ` : ''}bash tests/fault/run.sh pg_down`);
      report.figure('keys.stale_if_error_ms', STALE ?? 'default (600000)');
      report.figure('PostgreSQL down', `${((up0 - down) / 1000).toFixed(1)} s (stop took ${fmtMs(down - down0)}); key entries expired ${((cachedBy[0] + KEY_TTL_MS - down) / 1000).toFixed(1)}–${((cachedBy.at(-1) + KEY_TTL_MS - down) / 1000).toFixed(1)} s into it`);
      for (const [name, rs] of Object.entries(phase)) report.figure(name, fmtPhase(rs));
      report.figure('revocable key probes (every 200 ms)', statusCounts(probes));
      report.figure('key never used before the outage', `${unseenProbe.status} ${unseenProbe.code || ''}`.trim());
      report.figure('revoked after PostgreSQL returned', `${fmtMs(revoked - up)} after start-pg; first 401 ${firstDenied ? fmtMs(firstDenied.t + firstDenied.ms - revoked) : 'never'} after the revoke, ${servedAfterRevoke} × 200 after it`);
      report.figure('stale-if-error uses (tollgate_key_cache_stale_served_total: failed lookups answered from the cache, ≤ 1 per key and second)', (await tg.metrics())['tollgate_key_cache_stale_served_total'] ?? 'not exported by this build');
      report.figure('journal committed after PostgreSQL returned', `${appendedAtReturn} records appended by then, all committed ${Number.isFinite(committed) ? `${fmtMs(committed - up)} after start-pg returned` : 'not within 30 s'}`);
      report.figure('requests the upstream answered / usage rows', `${upstream} / ${rows + unseenState.rows}`);
      report.figure('money', describeState(st));
      report.figure('503 rate_limiter_unavailable (whole run)', `${redisDeadline} of ${L.results.length}: the 50 ms admission deadline on a busy 2-core box (issue 10 point 4), not PostgreSQL`);
      report.check('requests served during the outage (none refused for PostgreSQL)', pgErrors === 0, `${pgErrors} of ${outage.length} failed otherwise`);
      report.check('keys expired during the outage served stale (stale-if-error)', expired.length > 0 && expired.every((r) => r.status === 200),
        `${expired.filter((r) => r.status === 200).length} of ${expired.length} × 200`);
      report.check('a key never confirmed before the outage is not let in', unseenProbe.status === 503 && unseenProbe.code === 'auth_unavailable',
        `${unseenProbe.status} ${unseenProbe.code}`);
      report.check('revocation applies within 1 s of PostgreSQL being back', firstDenied && firstDenied.t + firstDenied.ms - revoked <= 1000 && servedAfterRevoke <= 5,
        firstDenied ? `first 401 after ${fmtMs(firstDenied.t + firstDenied.ms - revoked)}` : 'never refused');
      report.check('0 usage records lost', rows + unseenState.rows === upstream, `${upstream - rows - unseenState.rows} of ${upstream} missing`);
      report.check('conservation: credits = Σ ledger; Σ usage ledger = Σ usage_logs charges', st.conserved && st.usageMatches, describeState(st));
      report.check("Redis' balance = Postgres, nothing pending or held", st.redisAgrees && st.redis.holds === 0,
        `Redis ${usd(st.redis.credits ?? 0n)} pending ${usd(st.redis.pending)} holds ${st.redis.holds} vs PG ${usd(st.credits)}`);
    } finally {
      await services('start-pg').catch(() => {});
      await ns.drop();
    }
  },
};
