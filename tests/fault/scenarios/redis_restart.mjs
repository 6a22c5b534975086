// Redis restarted under load (services.sh stop-redis, 5 s, start-redis: it comes back empty,
// no persistence). What clients see meanwhile (statuses, how long the refusals take), and at
// rest Redis' balance equals Postgres' with nothing held or pending.
import { performance } from 'node:perf_hooks';
import { Namespace, accountState, describeState, usd } from '../lib/accounts.mjs';
import { agent, chatBody, fmtMs, load, pct, statusCounts } from '../lib/client.mjs';
import { services, sleep, startStub, startTollgate } from '../lib/procs.mjs';
import { quiesce } from './kill9.mjs';

const DOWN_MS = 5000;

export default {
  name: 'redis_restart',
  about: `Redis stopped for ${DOWN_MS / 1000} s and restarted empty under load`,
  async run(report) {
    const ns = new Namespace('rd');
    await ns.setup();
    try {
      const acct = await ns.account({ dollars: '1000' });
      const stub = await startStub();
      const tg = await startTollgate({ upstreamUrl: stub.apiUrl });
      const model = ns.model();
      const ag = agent({ maxSockets: 16 });
      await stub.reset();
      const L = load({
        workers: 8, pauseMs: 5,
        next: (w, n) => ({
          base: tg.url, key: acct.key, agent: ag, timeoutMs: 10_000,
          body: chatBody(model, (w + n) % 2 ? { stream: true, chunks: 8, intervalMs: 10 } : { chunks: 8, latencyMs: 20 }),
        }),
      });
      const rel = () => performance.now() - L.t0;
      await sleep(3000);
      const down0 = rel();
      await services('stop-redis');
      const down = rel();
      await sleep(DOWN_MS);
      const up0 = rel();
      await services('start-redis');
      const up = rel();
      await sleep(5000);
      await L.stop();
      ag.destroy();
      const rows = await quiesce([tg], acct.id);
      await sleep(500);  // the writer's balance sync to Redis follows its commit
      const upstream = await stub.requests();
      const st = await accountState(acct.id);

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
      report.figure('requests the upstream answered / usage rows', `${upstream} / ${rows}`);
      report.figure('money', describeState(st));
      const down503 = phases['Redis down'];
      report.check('while Redis is down every request is refused 503 rate_limiter_unavailable (fail closed)',
        down503.length > 0 && down503.every((r) => r.status === 503 && r.code === 'rate_limiter_unavailable'),
        statusCounts(down503));
      report.check('the refusals come within the 50 ms admission deadline (+50 ms)', refused.every((r) => r.ms <= 100),
        refused.length ? durations(refused) : 'none');
      report.check('served again after Redis returned', phases.after.some((r) => r.status === 200), statusCounts(phases.after));
      report.check('0 usage records lost', rows === upstream, `${upstream - rows} of ${upstream} missing`);
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
