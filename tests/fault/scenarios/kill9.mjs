// kill -9 under load: mixed streaming and non-streaming load on one instance, SIGKILL, restart
// on the same journal (replayed at start), load again. Every request the upstream answered
// (the stub's request counter) should have exactly one usage row: 0 lost, 0 duplicated.
import { performance } from 'node:perf_hooks';
import { Namespace, accountState, describeState, usd } from '../lib/accounts.mjs';
import { agent, chatBody, load, statusCounts } from '../lib/client.mjs';
import { lit, psql, sleep, startStub, startTollgate } from '../lib/procs.mjs';

/** Waits until the instance committed everything and the account's row count stops moving. */
export async function quiesce(instances, accountId, ms = 30_000) {
  for (const i of instances) await i.settled(ms);
  let last = -1;
  for (let n = 0; n < 60; ++n) {
    const rows = Number(await psql(`SELECT count(*) FROM usage_logs WHERE user_id = ${lit(accountId)}`));
    if (rows === last) return rows;
    last = rows;
    await sleep(250);
  }
  return last;
}

/** How many of these request ids have a usage row. */
export async function rowsFor(ids) {
  if (!ids.length) return 0;
  return Number(await psql(`SELECT count(*) FROM usage_logs WHERE request_id IN (${ids.map(lit).join(',')})`));
}

export default {
  name: 'kill9',
  about: 'kill -9 under mixed streaming/non-streaming load, restart on the same journal',
  async run(report) {
    const ns = new Namespace('k9');
    await ns.setup();
    try {
      const acct = await ns.account({ dollars: '1000' });
      const stub = await startStub();
      let tg = await startTollgate({ upstreamUrl: stub.apiUrl });
      const target = { base: tg.url };
      const model = ns.model();
      const ag = agent({ maxSockets: 64 });
      await stub.reset();
      // 24 clients: odd requests stream 8 chunks 25 ms apart (~200 ms), even ones wait 100 ms
      // for a JSON answer, so a few dozen requests are in flight at any moment.
      const L = load({
        workers: 24,
        next: (w, n) => ({
          base: target.base, key: acct.key, agent: ag, timeoutMs: 10_000,
          body: (w + n) % 2 ? chatBody(model, { stream: true, chunks: 8, intervalMs: 25 })
                            : chatBody(model, { chunks: 8, latencyMs: 100 }),
        }),
      });
      await sleep(4000);
      const active = (await tg.metrics())['tollgate_active_requests'];
      const killAt = performance.now() - L.t0;
      tg.child.proc.kill('SIGKILL');
      await tg.child.exit;
      const t1 = performance.now();
      tg = await tg.restart();
      const restartMs = performance.now() - t1;
      target.base = tg.url;
      await sleep(3000);
      await L.stop();
      ag.destroy();
      const rows = await quiesce([tg], acct.id);
      const upstream = await stub.requests();
      const st = await accountState(acct.id);

      const res = L.results;
      const cut = res.filter((r) => r.t < killAt && r.t + r.ms >= killAt - 1 && (r.status === 0 || r.error));
      const completed = res.filter((r) => r.status === 200 && !r.error && r.requestId);
      const completedWithRow = await rowsFor(completed.map((r) => r.requestId));
      const replayed = /replay/i.test(tg.child.log) ? (tg.child.log.match(/[^\n]*replay[^\n]*/i) || [''])[0].trim() : 'no replay line';
      const lost = upstream - rows;

      report.figure('command', 'bash tests/fault/run.sh kill9');
      report.figure('client requests (status counts)', `${res.length}: ${statusCounts(res)}`);
      report.figure('in flight at the kill (tollgate_active_requests)', active);
      report.figure('client requests cut by the kill', cut.length);
      report.figure('restart to listening', `${restartMs.toFixed(0)} ms`);
      report.figure('restart log', replayed.slice(0, 160));
      report.figure('requests the upstream answered (stub counter)', upstream);
      report.figure('usage rows', rows);
      report.figure('lost (upstream − rows)', lost);
      const interrupted = Number(await psql(`SELECT count(*) FROM usage_logs WHERE user_id = ${lit(acct.id)} AND status = 'interrupted'`));
      report.figure('rows recovered as interrupted at the restart', interrupted);
      report.figure('Redis holds left after the restart', `${st.redis.holds} (${usd(st.redis.held)} held)`);
      report.figure('money', describeState(st));
      report.check('0 usage records lost', lost === 0, `${lost} of ${upstream} upstream requests have no usage row`,
        '');
      report.check('no hold left in Redis (the restart settled the interrupted ones)', st.redis.holds === 0,
        `${st.redis.holds} holds, ${usd(st.redis.held)}`);
      report.check('0 duplicated (usage ledger rows per request ≤ 1)', st.duplicates === 0 && rows <= upstream,
        `${st.duplicates} request ids charged twice; rows ${rows} vs upstream ${upstream}`);
      report.check('every completed 200 has its usage row', completedWithRow === completed.length,
        `${completedWithRow} of ${completed.length}`);
      report.check('conservation: credits = Σ ledger; Σ usage ledger = Σ usage_logs charges', st.conserved && st.usageMatches, describeState(st));
      report.check("Redis' balance = Postgres, nothing pending", st.redisAgrees,
        st.redis.cached ? `Redis ${usd(st.redis.credits)} pending ${usd(st.redis.pending)} vs PG ${usd(st.credits)}` : 'not cached');
    } finally {
      await ns.drop();
    }
  },
};
