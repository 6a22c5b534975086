// SIGTERM under load (a deploy): mixed load on one instance, with streams that end inside the
// drain deadline and streams that outlast it; SIGTERM; the instance must stop accepting, let the
// short ones finish, cut the long ones with a well-formed error event, record and settle
// everything, and exit 0. Every request the upstream received has exactly one usage row, and no
// hold is left in Redis — without a restart (nothing is left for the journal to replay).
import { performance } from 'node:perf_hooks';
import { Namespace, accountState, describeState, usd } from '../lib/accounts.mjs';
import { agent, chatBody, load, send, statusCounts } from '../lib/client.mjs';
import { sleep, startStub, startTollgate } from '../lib/procs.mjs';
import { quiesce, rowsFor } from './kill9.mjs';

const DRAIN_MS = 3000;  // test-sized server.drain_timeout_ms (default 30 s)

export default {
  name: 'sigterm',
  about: `SIGTERM under mixed load with drain_timeout_ms = ${DRAIN_MS}: exit 0, one row per upstream request, no hold`,
  async run(report) {
    const ns = new Namespace('st');
    await ns.setup();
    try {
      const acct = await ns.account({ dollars: '1000' });
      const stub = await startStub();
      const tg = await startTollgate({ upstreamUrl: stub.apiUrl, config: `[server]\ndrain_timeout_ms = ${DRAIN_MS}\n` });
      const model = ns.model();
      const ag = agent({ maxSockets: 64 });
      await stub.reset();
      // 24 clients: odd requests stream 8 chunks 25 ms apart, even ones wait 100 ms for JSON.
      const L = load({
        workers: 24,
        next: (w, n) => ({
          base: tg.url, key: acct.key, agent: ag, timeoutMs: 20_000,
          body: (w + n) % 2 ? chatBody(model, { stream: true, chunks: 8, intervalMs: 25 })
                            : chatBody(model, { chunks: 8, latencyMs: 100 }),
        }),
      });
      // 10 streams that outlast the drain: 400 chunks 25 ms apart (10 s).
      const long = [];
      for (let i = 0; i < 10; ++i)
        long.push(send({ base: tg.url, key: acct.key, timeoutMs: 30_000,
                         body: chatBody(model, { stream: true, maxTokens: 1000, chunks: 400, intervalMs: 25 }) }));
      await sleep(3000);
      const active = (await tg.metrics())['tollgate_active_requests'];
      const t0 = performance.now();
      tg.child.proc.kill('SIGTERM');
      const exited = await tg.child.exit;
      const stopMs = performance.now() - t0;
      await L.stop();
      const longRes = await Promise.all(long);
      ag.destroy();
      const rows = await quiesce([], acct.id);
      const upstream = await stub.requests();
      const st = await accountState(acct.id);

      const res = L.results;
      const completed = res.filter((r) => r.status === 200 && !r.error && r.requestId);
      const completedWithRow = await rowsFor(completed.map((r) => r.requestId));
      const cutWell = longRes.filter((r) => {
        if (r.status !== 200 || !r.lastEvent?.startsWith('data: ')) return false;
        try { return JSON.parse(r.lastEvent.slice(6)).error?.code === 'server_shutting_down'; } catch { return false; }
      });
      const longRows = await rowsFor(longRes.map((r) => r.requestId).filter(Boolean));
      const lost = upstream - rows;

      report.figure('command', 'bash tests/fault/run.sh sigterm');
      report.figure('client requests (status counts)', `${res.length}: ${statusCounts(res)}`);
      report.figure('in flight at SIGTERM (tollgate_active_requests)', active);
      report.figure('exit', `${JSON.stringify(exited)} after ${stopMs.toFixed(0)} ms (drain ${DRAIN_MS} ms)`);
      report.figure('long streams', `${longRes.length}: ${statusCounts(longRes)}; ${cutWell.length} ended with a server_shutting_down error event; events received ${longRes.map((r) => r.events).join(' ')}`);
      report.figure('requests the upstream received (stub counter)', upstream);
      report.figure('usage rows', rows);
      report.figure('Redis holds left', `${st.redis.holds} (${usd(st.redis.held)} held)`);
      report.figure('money', describeState(st));
      report.check('exit status 0 (graceful stop ran)', exited.code === 0, JSON.stringify(exited));
      report.check('stopped within the drain deadline + 6 s', stopMs < DRAIN_MS + 6000, `${stopMs.toFixed(0)} ms`);
      report.check('0 usage records lost', lost === 0, `${lost} of ${upstream} upstream requests have no usage row`);
      report.check('0 duplicated', st.duplicates === 0 && rows <= upstream, `${st.duplicates} charged twice; rows ${rows} vs upstream ${upstream}`);
      report.check('every completed 200 has its usage row', completedWithRow === completed.length, `${completedWithRow} of ${completed.length}`);
      report.check('streams past the deadline end with a well-formed server_shutting_down event and have a row',
        cutWell.length === long.length && longRows === long.length, `${cutWell.length} cut well, ${longRows} rows of ${long.length}`);
      report.check('no hold left in Redis', st.redis.holds === 0, `${st.redis.holds} holds`);
      report.check('conservation: credits = Σ ledger; Σ usage ledger = Σ usage_logs charges', st.conserved && st.usageMatches, describeState(st));
      report.check("Redis' balance = Postgres, nothing pending", st.redisAgrees,
        st.redis.cached ? `Redis ${usd(st.redis.credits)} pending ${usd(st.redis.pending)} vs PG ${usd(st.credits)}` : 'not cached');
    } finally {
      await ns.drop();
    }
  },
};
