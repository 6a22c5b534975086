// Redis restarted under load (services.sh stop-redis, 5 s, start-redis: it comes back empty,
// no persistence). What clients see meanwhile (statuses, how long the refusals take), and at
// rest Redis' balance equals Postgres' with nothing held or pending.
// With 20 holds in flight (issue 11): a second account's balance covers 22 worst cases; 20
// streams of 12 s hold 20 of them across the restart while 4 clients keep asking for more.
// Redis comes back empty: unless the 20 holds are registered again before anyone is admitted,
// the 4 clients spend the whole balance again and the streams' charges overspend it.
import { performance } from 'node:perf_hooks';
import { Namespace, accountState, describeState, usd } from '../lib/accounts.mjs';
import { agent, chatBody, fmtMs, load, pct, send, statusCounts } from '../lib/client.mjs';
import { services, sleep, startStub, startTollgate } from '../lib/procs.mjs';
import { quiesce } from './kill9.mjs';

const DOWN_MS = 5000;
const IN_FLIGHT = 20;
const COVERED = 22;          // worst cases the second account's balance covers
const MAX_TOKENS = 60;       // the stub sends this many chunks (= completion tokens)
const STREAM_INTERVAL_MS = 200;  // 12 s streams: in flight from before the stop to after the start

export default {
  name: 'redis_restart',
  about: `Redis stopped for ${DOWN_MS / 1000} s and restarted empty under load`,
  async run(report) {
    const ns = new Namespace('rd');
    await ns.setup();
    try {
      const acct = await ns.account({ dollars: '1000' });
      const model = ns.model();
      const streamBody = chatBody(model, { stream: true, maxTokens: MAX_TOKENS, chunks: MAX_TOKENS, intervalMs: STREAM_INTERVAL_MS });
      const shortBody = chatBody(model, { maxTokens: MAX_TOKENS, chunks: MAX_TOKENS, latencyMs: 20 });
      const bodyBytes = Math.max(Buffer.byteLength(JSON.stringify(streamBody)), Buffer.byteLength(JSON.stringify(shortBody)));
      const worst = await ns.charge(model, bodyBytes + 1, MAX_TOKENS);  // admission's worst case (bound)
      const small = await ns.account({ dollars: (Number(worst * BigInt(COVERED)) / 1e6).toFixed(6) });
      const stub = await startStub();
      const tg = await startTollgate({ upstreamUrl: stub.apiUrl });
      const ag = agent({ maxSockets: 16 });
      const ag2 = agent({ maxSockets: 32 });
      await stub.reset();
      const smallStart = await accountState(small.id);
      // The 20 streams first (each holds its worst case for 12 s), then the clients that want more.
      const streams = Array.from({ length: IN_FLIGHT }, () =>
        send({ base: tg.url, key: small.key, agent: ag2, body: streamBody, timeoutMs: 60_000 }));
      // Until the 20 are admitted (a fresh Redis makes admissions wait 1 s for its new epoch).
      for (let i = 0; i < 50 && (await accountState(small.id)).redis.holds < IN_FLIGHT; ++i) await sleep(100);
      const more = load({
        workers: 4, pauseMs: 20,
        next: () => ({ base: tg.url, key: small.key, agent: ag2, timeoutMs: 10_000, body: shortBody }),
      });
      const L = load({
        workers: 8, pauseMs: 5,
        next: (w, n) => ({
          base: tg.url, key: acct.key, agent: ag, timeoutMs: 10_000,
          body: chatBody(model, (w + n) % 2 ? { stream: true, chunks: 8, intervalMs: 10 } : { chunks: 8, latencyMs: 20 }),
        }),
      });
      const rel = () => performance.now() - L.t0;
      await sleep(2500);
      const heldBefore = (await accountState(small.id)).redis;
      const down0 = rel();
      await services('stop-redis');
      const down = rel();
      await sleep(DOWN_MS);
      const up0 = rel();
      await services('start-redis');
      const up = rel();
      await sleep(1500);
      const heldAfter = (await accountState(small.id)).redis;
      await sleep(3500);
      await L.stop();
      const streamRes = await Promise.all(streams);
      await more.stop();
      ag.destroy();
      ag2.destroy();
      const rows = await quiesce([tg], acct.id);
      const smallRows = await quiesce([tg], small.id);
      await sleep(500);  // the writer's balance sync to Redis follows its commit
      const upstream = await stub.requests();
      const st = await accountState(acct.id);
      const sm = await accountState(small.id);
      const moreAfter = more.results.filter((r) => r.t >= up);

      const res = L.results;
      const phases = {
        'before': res.filter((r) => r.t < down0),
        'Redis stopping': res.filter((r) => r.t >= down0 && r.t < down),
        'Redis down': res.filter((r) => r.t >= down && r.t < up0),
        'Redis starting': res.filter((r) => r.t >= up0 && r.t < up),
        'after': res.filter((r) => r.t >= up),
      };
      const firstOk = res.filter((r) => r.t >= up0 && r.status === 200).sort((a, b) => a.t - b.t)[0];
      const refused = phases['Redis down'].filter((r) => r.status === 503);
      const durations = (rs) => `p50 ${fmtMs(pct(rs.map((r) => r.ms), 0.5))}, p99 ${fmtMs(pct(rs.map((r) => r.ms), 0.99))}, max ${fmtMs(Math.max(...rs.map((r) => r.ms)))}`;

      report.figure('command', 'bash tests/fault/run.sh redis_restart');
      report.figure('Redis down', `${((up0 - down) / 1000).toFixed(1)} s (stop took ${fmtMs(down - down0)}, start ${fmtMs(up - up0)})`);
      for (const [name, rs] of Object.entries(phases)) report.figure(`${name}: statuses`, `${rs.length}: ${statusCounts(rs)}`);
      report.figure('Redis down: time to the 503', refused.length ? durations(refused) : 'no 503');
      report.figure('before: 200 durations', durations(phases.before.filter((r) => r.status === 200)));
      report.figure('first 200 after start-redis began', firstOk ? `${fmtMs(firstOk.t + firstOk.ms - up0)}` : 'none');
      const late = phases.after.filter((r) => r.status === 503).sort((x, y) => y.t - x.t)[0];
      report.figure('last 503 after Redis was up', late ? `${fmtMs(late.t + late.ms - up)} after start-redis returned` : 'none');
      report.figure('before: 503s with a healthy Redis', `${phases.before.filter((r) => r.status === 503).length} (the 50 ms admission deadline also counts tollgate's own busy event loop: issue 10 point 4)`);
      report.figure('requests the upstream answered / usage rows', `${upstream} / ${rows + smallRows}`);
      report.figure('money', describeState(st));
      report.figure('20 holds in flight: account', `${usd(smallStart.credits)} = ${COVERED} worst cases of ${usd(worst)}; ` +
        `${IN_FLIGHT} streams of ${MAX_TOKENS} chunks ${STREAM_INTERVAL_MS} ms apart: ${statusCounts(streamRes)}` +
        `${streamRes.some((r) => r.status === 402) ? ` (${/\$[0-9.]+ is available/.exec(streamRes.find((r) => r.status === 402).text)?.[0]})` : ''}`);
      report.figure('20 holds in flight: Redis before the stop / 1.5 s after the start',
        `${heldBefore.holds} holds ${usd(heldBefore.held)} / ${heldAfter.holds} holds ${usd(heldAfter.held)}`);
      report.figure('20 holds in flight: the 4 other clients', `before the stop ${statusCounts(more.results.filter((r) => r.t < down0))}; ` +
        `after the start ${statusCounts(moreAfter)}`);
      report.figure('20 holds in flight: money', describeState(sm));
      const down503 = phases['Redis down'];
      report.check('while Redis is down every request is refused 503 rate_limiter_unavailable (fail closed)',
        down503.length > 0 && down503.every((r) => r.status === 503 && r.code === 'rate_limiter_unavailable'),
        statusCounts(down503));
      report.check('the refusals come within the 50 ms admission deadline (+50 ms)', refused.every((r) => r.ms <= 100),
        refused.length ? durations(refused) : 'none');
      report.check('served again after Redis returned', phases.after.some((r) => r.status === 200), statusCounts(phases.after));
      report.check('0 usage records lost', rows + smallRows === upstream, `${upstream - rows - smallRows} of ${upstream} missing`);
      report.check('20 holds in flight: the holds are in Redis again after the restart', heldAfter.holds >= streamRes.filter((r) => r.status === 200).length,
        `${heldAfter.holds} holds after, ${streamRes.filter((r) => r.status === 200).length} streams served`);
      report.check('20 holds in flight: 0 overspend (balance ≥ −overdraft = 0)', sm.credits >= 0n,
        `balance after ${usd(sm.credits)} (spent ${usd(smallStart.credits - sm.credits)} of ${usd(smallStart.credits)})`);
      report.check("20 holds in flight: Redis = Postgres afterwards, no hold", sm.redisAgrees && sm.redis.holds === 0 && sm.redis.held === 0n && sm.conserved && sm.usageMatches,
        describeState(sm));
      report.check('conservation: credits = Σ ledger; Σ usage ledger = Σ usage_logs charges', st.conserved && st.usageMatches, describeState(st));
      report.check("afterwards Redis' balance = Postgres (credits equal, nothing pending)", st.redis.cached && st.redisAgrees,
        st.redis.cached ? `Redis ${usd(st.redis.credits)} pending ${usd(st.redis.pending)} vs PG ${usd(st.credits)}` : 'balance not cached in Redis');
      report.check('no hold left in Redis', st.redis.holds === 0 && st.redis.held === 0n, `${st.redis.holds} holds, ${usd(st.redis.held)} held`);
    } finally {
      await services('start-redis').catch(() => {});
      await ns.drop();
    }
  },
};
