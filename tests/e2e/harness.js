// End-to-end harness: runs the real tollgate-stub and `tollgate serve` as child processes
// against the Postgres in TOLLGATE_DATABASE_URL, with a unique account, key and model namespace
// per run so that several runs (and other suites) can share one database.
//
//   const h = useHarness();          // registers before/after hooks on node:test
//   test('...', async () => { h.url; h.key; h.model; await h.usageRow(id); ... });
//
// Money is handled as BigInt micro-dollars (1e-6 USD), never as JS numbers.

import { spawn, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before } from 'node:test';

const HERE = dirname(fileURLToPath(import.meta.url));

export const DATABASE_URL = process.env.TOLLGATE_DATABASE_URL;
if (!DATABASE_URL) {
  // Fail loudly: an e2e suite that silently skips is worse than none.
  throw new Error(
    'TOLLGATE_DATABASE_URL is not set: the e2e suite needs a migrated Postgres ' +
      '(bash deploy/local/services.sh start DIR && source DIR/env && tollgate migrate)',
  );
}
export const TOLLGATE_BIN = resolve(process.env.TOLLGATE_BIN || join(HERE, '../../build/bin/tollgate'));
export const STUB_BIN = resolve(process.env.TOLLGATE_STUB_BIN || join(HERE, '../../build/bin/tollgate-stub'));

/** Reads a fetch Response whole: { status, headers, text, json } (json undefined if not JSON). */
export async function readResponse(res) {
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const randomSuffix = (bytes = 6) => randomBytes(bytes).toString('hex');

// ---------------------------------------------------------------------------------------------
// Money: decimal strings <-> BigInt micro-dollars.

/** "0.000123" / "-5.000000" / "0.00012300000000" -> BigInt micros; throws on sub-micro digits. */
export function toMicros(text) {
  const s = String(text).trim();
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(s);
  if (!m) throw new Error(`not a decimal: ${JSON.stringify(text)}`);
  const frac = (m[3] || '').padEnd(6, '0');
  if (/[1-9]/.test(frac.slice(6))) throw new Error(`${s} has non-zero digits below 1e-6`);
  const v = BigInt(m[2]) * 1_000_000n + BigInt(frac.slice(0, 6));
  return m[1] === '-' ? -v : v;
}

/** BigInt micros -> "1.234567" */
export function fromMicros(micros) {
  const neg = micros < 0n;
  const a = neg ? -micros : micros;
  return `${neg ? '-' : ''}${a / 1_000_000n}.${(a % 1_000_000n).toString().padStart(6, '0')}`;
}

// ---------------------------------------------------------------------------------------------
// Processes

function run(file, args, { env, input } = {}) {
  return new Promise((resolveRun, reject) => {
    const child = execFile(
      file,
      args,
      { env: env || process.env, maxBuffer: 16 << 20, timeout: 30_000 },
      (err, stdout, stderr) => {
        if (err) {
          err.message = `${file} ${args.join(' ')} failed: ${err.message}\nstdout: ${stdout}\nstderr: ${stderr}`;
          reject(err);
        } else resolveRun({ stdout, stderr });
      },
    );
    if (input !== undefined) child.stdin.end(input);
  });
}

/** SQL string literal (standard_conforming_strings is on by default). */
export const lit = (s) => `'${String(s).replace(/'/g, "''")}'`;

/** Runs one SQL statement with psql; returns the unaligned, tuples-only output, trimmed. */
export async function psql(sql) {
  const { stdout } = await run('psql', ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', DATABASE_URL, '-c', sql]);
  return stdout.trim();
}

/** Runs a query that returns a single json value (or no row); returns the parsed value or null. */
export async function psqlJson(sql) {
  const out = await psql(sql);
  return out === '' ? null : JSON.parse(out);
}

async function waitForFile(path, ms, what) {
  const deadline = Date.now() + ms;
  while (!existsSync(path)) {
    if (Date.now() > deadline) throw new Error(`${what}: ${path} did not appear within ${ms} ms`);
    await sleep(100);
  }
}

/** Runs the tollgate CLI (waits up to 60 s for the binary, which may be mid-rebuild). */
export async function tollgate(...args) {
  await waitForFile(TOLLGATE_BIN, 60_000, 'tollgate binary');
  return run(TOLLGATE_BIN, args);
}

/** A port nothing listens on (bound and released at once). */
export function closedPort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** A child process with its output kept (last 64 KiB) for failure messages. */
class Child {
  constructor(name, file, args, env) {
    this.name = name;
    this.log = '';
    this.bytes = 0; // everything it ever wrote (this.log keeps the last 64 KiB of it)
    this.needles = []; // strings that must never appear in its output (see watch())
    this.found = new Set();
    this.exited = null;
    this.proc = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let tail = '';
    const keep = (d) => {
      const text = d.toString();
      // A needle split across two reads is still found: scan the end of the last read with this one.
      for (const n of this.needles) if ((tail + text).includes(n)) this.found.add(n);
      tail = (tail + text).slice(-4096);
      this.bytes += text.length;
      this.log = (this.log + text).slice(-65536);
      if (process.env.E2E_VERBOSE) process.stderr.write(`[${name}] ${d}`);
    };
    this.proc.stdout.on('data', keep);
    this.proc.stderr.on('data', keep);
    this.exitPromise = new Promise((res) => {
      this.proc.on('exit', (code, signal) => {
        this.exited = { code, signal };
        res(this.exited);
      });
      this.proc.on('error', (err) => {
        this.exited = { error: err };
        res(this.exited);
      });
    });
  }

  /** Waits for the port file, then until GET `path` answers 200 (10 s bound in total). */
  async ready(portFile, path) {
    const deadline = Date.now() + 10_000;
    let lastErr = 'no port file yet';
    while (Date.now() < deadline) {
      if (this.exited) throw new Error(`${this.name} exited early (${JSON.stringify(this.exited)}):\n${this.log}`);
      if (existsSync(portFile)) {
        const port = Number(readFileSync(portFile, 'utf8').trim());
        if (port > 0) {
          try {
            const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(1000) });
            await res.arrayBuffer();
            if (res.status === 200) return port;
            lastErr = `GET ${path} -> ${res.status}`;
          } catch (e) {
            lastErr = e.message;
          }
        }
      }
      await sleep(50);
    }
    throw new Error(`${this.name} not ready within 10 s (${lastErr}):\n${this.log}`);
  }

  /** Its output since `mark` (a this.bytes value), as far as the last 64 KiB reach. */
  logSince(mark) {
    const n = this.bytes - mark;
    return n <= 0 ? '' : this.log.slice(-Math.min(n, this.log.length));
  }

  /** Records from now on whether `needle` ever appears in its stdout or stderr (this.found). */
  watch(needle) {
    if (!this.needles.includes(needle)) this.needles.push(needle);
    if (this.log.includes(needle)) this.found.add(needle);
  }

  async stop() {
    if (this.exited) return this.exited;
    this.proc.kill('SIGTERM');
    const killer = setTimeout(() => this.proc.kill('SIGKILL'), 12_000);
    const r = await this.exitPromise;
    clearTimeout(killer);
    return r;
  }
}

// ---------------------------------------------------------------------------------------------
// The harness

export class Harness {
  /**
   * `defaultAdmissionTimeout`: every proxy started keeps tollgate's default admission deadline
   * (50 ms) instead of the 2 s the other suites use (for tests about the deadline itself).
   */
  constructor({ defaultAdmissionTimeout = false } = {}) {
    this.defaultAdmissionTimeout = defaultAdmissionTimeout;
    this.run = `e2e${randomSuffix(5)}`;
    this.namespace = this.run; // model namespace and pricing-rule glob prefix
    this.model = `${this.namespace}/small`;
    this.promptPrice = '0.000001';
    this.completionPrice = '0.000002';
    this.markupPercent = '25';
    this.upstreamKey = `sk-or-upstream-${randomSuffix(16)}`;
    this.children = [];
    this.proxies = [];
    this.tmpDirs = [];
    this.emails = [];
    this.upstreamNames = []; // `upstreams` rows this run added (removed with their routes at stop)
    this.watched = []; // strings no child's output may contain (Child.watch)
  }

  tmp(prefix) {
    const d = mkdtempSync(join(tmpdir(), `tollgate-${prefix}-`));
    this.tmpDirs.push(d);
    return d;
  }

  /**
   * Starts a tollgate-stub: { child, port, url, base, name, last(), requests(), reset(), stop() }.
   * `args` are extra flags (`--fail status:503`, `--chunks 3`…); `requireKey` the bearer token it
   * demands (null: any); `port` a fixed port (0: a free one), e.g. to restart a stub in place.
   */
  async startStub({ name = 'stub', args = [], requireKey = this.upstreamKey, port: wantedPort = 0 } = {}) {
    await waitForFile(STUB_BIN, 60_000, 'tollgate-stub binary');
    const dir = this.tmp('stub');
    const portFile = join(dir, 'port');
    const child = new Child(name, STUB_BIN, [
      '--listen', `127.0.0.1:${wantedPort}`, '--port-file', portFile,
      ...(requireKey == null ? [] : ['--require-key', requireKey]), ...args,
    ], process.env);
    this.children.push(child);
    for (const n of this.watched) child.watch(n);
    const port = await child.ready(portFile, '/__stub/last');
    const url = `http://127.0.0.1:${port}`;
    return {
      child, port, url, name,
      base: `${url}/api/v1`, // what an upstream's base URL points at
      /** {method, target, authorization, body, requests} of its last API request. */
      last: async () => (await fetch(`${url}/__stub/last`)).json(),
      /** How many API requests it has served since it started or was reset. */
      requests: async () => (await (await fetch(`${url}/__stub/last`)).json()).requests,
      reset: async () => {
        const r = await fetch(`${url}/__stub/reset`, { method: 'POST' });
        await r.arrayBuffer();
        if (r.status !== 200) throw new Error(`${name}: /__stub/reset -> ${r.status}`);
      },
      stop: () => child.stop(),
    };
  }

  /**
   * Starts one `tollgate serve`; `upstreamUrl` defaults to the stub. `defaultAdmissionTimeout`
   * (default: the harness') leaves TOLLGATE_ADMISSION_TIMEOUT_MS unset.
   */
  async startProxy({ upstreamUrl = `${this.stubUrl}/api/v1`, name = 'tollgate', env: extraEnv = {}, args = [],
                     defaultAdmissionTimeout = this.defaultAdmissionTimeout } = {}) {
    await waitForFile(TOLLGATE_BIN, 60_000, 'tollgate binary');
    const dir = this.tmp(name);
    const portFile = join(dir, 'port');
    const adminPortFile = join(dir, 'admin-port');
    const env = {
      ...process.env,
      TOLLGATE_DATABASE_URL: DATABASE_URL,
      TOLLGATE_LISTEN: '127.0.0.1:0',
      TOLLGATE_ADMIN_LISTEN: '127.0.0.1:0',
      TOLLGATE_UPSTREAM_URL: upstreamUrl,
      TOLLGATE_UPSTREAM_KEY: this.upstreamKey,
      TOLLGATE_JOURNAL_DIR: join(dir, 'journal'),
      // These tests check what is admitted, on a loaded 2-core box running several instances,
      // Redis, Postgres and the load at once: a generous Redis deadline keeps bursts from turning
      // into 503s. Latency under the 50 ms default is the bench suite's job.
      TOLLGATE_ADMISSION_TIMEOUT_MS: '2000',
      ...extraEnv,
    };
    if (defaultAdmissionTimeout) delete env.TOLLGATE_ADMISSION_TIMEOUT_MS;
    const child = new Child(name, TOLLGATE_BIN,
      [...args, 'serve', '--port-file', portFile, '--admin-port-file', adminPortFile], env);
    this.children.push(child);
    for (const n of this.watched) child.watch(n);
    // Ready once the admin listener's /readyz says Postgres, Redis and the caches are; the API
    // port file is written just before it starts serving.
    const adminPort = await child.ready(adminPortFile, '/readyz');
    const port = Number(readFileSync(portFile, 'utf8').trim());
    const adminUrl = `http://127.0.0.1:${adminPort}`;
    this.proxies.push({ child, url: `http://127.0.0.1:${port}`, adminUrl, name });
    // serve announces itself; the line may trail the port file by a moment.
    const deadline = Date.now() + 2000;
    while (!/tollgate listening on/.test(child.log) && Date.now() < deadline) await sleep(20);
    if (!/tollgate listening on/.test(child.log))
      throw new Error(`${name} answers /readyz but never logged "tollgate listening on":\n${child.log}`);
    return { child, port, url: `http://127.0.0.1:${port}`, adminUrl };
  }

  /** A fresh account (unique email) with `usd` credits (a decimal string) and one key. */
  async newAccount({ usd = '10', label = 'acct' } = {}) {
    const email = `${this.run}-${label}-${randomSuffix(4)}@e2e.tollgate.test`;
    this.emails.push(email);
    const id = (await tollgate('accounts', 'create', email)).stdout.trim();
    if (!/^[0-9a-f-]{36}$/.test(id)) throw new Error(`accounts create printed ${JSON.stringify(id)}`);
    if (toMicros(usd) !== 0n) await tollgate('credits', 'add', id, usd, '--note', `e2e ${this.run}`);
    const key = await this.newKey(id);
    return { id, email, ...key };
  }

  /** A new key for an account: { key, keyId }. */
  async newKey(account, name = 'e2e') {
    const { stdout, stderr } = await tollgate('keys', 'create', account, '--name', name);
    const key = stdout.trim();
    const m = /key id ([0-9a-f-]{36})/.exec(stderr);
    if (!/^tg_[0-9A-Za-z]{38}$/.test(key) || !m) throw new Error(`keys create printed ${stdout} / ${stderr}`);
    return { key, keyId: m[1] };
  }

  /**
   * Prices, the stub, one `tollgate serve` and the main account. `upstream(stubUrl)`, when given,
   * returns the upstream base URL that proxy uses instead of the stub's own (e.g. a recording
   * relay in front of the stub). `env`: extra environment of that proxy. `models`: more models,
   * named relative to this.namespace (`t1/x` is `<namespace>/t1/x`), priced like this.model.
   */
  async start({ upstream, env = {}, models = [] } = {}) {
    // Prices and the pricing rule first, so the proxy's first pricing snapshot has them.
    await tollgate('prices', 'set', this.model, this.promptPrice, this.completionPrice, '--context-length', '8192');
    if (models.length)
      await psql(
        `INSERT INTO model_prices (model, prompt_price, completion_price, context_length) VALUES ${models
          .map((m) => `(${lit(`${this.namespace}/${m}`)}, ${this.promptPrice}, ${this.completionPrice}, 8192)`)
          .join(', ')}`,
      );
    await psql(
      `INSERT INTO pricing_rules (model_pattern, markup_percentage, min_cost_usd, is_active, priority)
       VALUES (${lit(`${this.namespace}/*`)}, ${this.markupPercent}, 0, true, 1000)`,
    );
    const stub = await this.startStub();
    this.stub = stub;
    this.stubUrl = stub.url;
    const proxy = await this.startProxy(upstream ? { upstreamUrl: await upstream(stub.url), env } : { env });
    this.proxy = proxy;
    this.url = proxy.url;
    this.adminUrl = proxy.adminUrl;
    this.account = await this.newAccount({ usd: '10', label: 'main' });
    this.key = this.account.key;
  }

  async stop() {
    const errors = [];
    for (const c of this.children.reverse()) {
      try {
        await c.stop();
      } catch (e) {
        errors.push(e);
      }
    }
    for (const d of this.tmpDirs) rmSync(d, { recursive: true, force: true });
    // Our rows only: the namespace's price and rule, and this run's accounts (cascades).
    try {
      if (this.upstreamNames.length) {
        const names = this.upstreamNames.map(lit).join(',');
        await psql(`DELETE FROM model_routes WHERE upstream IN (${names})`);
        await psql(`DELETE FROM upstreams WHERE name IN (${names})`);
      }
      await psql(`DELETE FROM pricing_rules WHERE model_pattern = ${lit(`${this.namespace}/*`)}`);
      await psql(`DELETE FROM model_prices WHERE model LIKE ${lit(`${this.namespace}/%`)}`);
      if (this.emails.length)
        await psql(`DELETE FROM users WHERE email IN (${this.emails.map(lit).join(',')})`);
    } catch (e) {
      errors.push(e);
    }
    if (errors.length) throw errors[0];
  }

  // ------------------------------------------------------------------------------------------
  // Database helpers

  /** The usage row of a request id as an object (numerics as strings), or null. */
  async usageRowNow(requestId) {
    return psqlJson(
      `SELECT json_build_object(
         'request_id', request_id, 'user_id', user_id, 'api_key_id', api_key_id, 'model', model,
         'prompt_tokens', prompt_tokens, 'completion_tokens', completion_tokens,
         'total_tokens', total_tokens, 'cost_usd', cost_usd::text,
         'credits_deducted', credits_deducted::text, 'status', status, 'upstream', upstream,
         'request_metadata', request_metadata, 'response_metadata', response_metadata)
       FROM usage_logs WHERE request_id = ${lit(requestId)}`,
    );
  }

  /** Polls (every 25 ms, up to `ms`) for the usage row of a request id; throws if none. */
  async usageRow(requestId, ms = 5000) {
    if (!requestId) throw new Error('no request id');
    const deadline = Date.now() + ms;
    for (;;) {
      const row = await this.usageRowNow(requestId);
      if (row) return row;
      if (Date.now() > deadline) throw new Error(`no usage_logs row for ${requestId} within ${ms} ms`);
      await sleep(25);
    }
  }

  /**
   * Waits (up to `ms`) until every running tollgate of this harness has committed all the usage
   * it journaled (`tollgate_usage_records_queued 0` in /metrics): its writer batches for up to
   * usage.max_delay_ms, so a balance read earlier could still change under a test.
   */
  async settled(ms = 10_000) {
    const deadline = Date.now() + ms;
    for (const p of this.proxies) {
      for (;;) {
        let queued = 0;
        try {
          const text = await (await fetch(`${p.adminUrl}/metrics`)).text();
          queued = Number(/^tollgate_usage_records_queued (\d+)$/m.exec(text)?.[1] ?? 0);
        } catch {
          break; // stopped or killed: its journal is replayed by whoever restarts it
        }
        if (queued === 0) break;
        if (Date.now() > deadline) throw new Error(`${p.url}: ${queued} usage record(s) still queued after ${ms} ms`);
        await sleep(10);
      }
    }
  }

  /** Balance of an account (uuid) in BigInt micros, once the usage sent so far is recorded. */
  async balance(userId) {
    await this.settled();
    return toMicros(await psql(`SELECT credits::text FROM balances WHERE user_id = ${lit(userId)}`));
  }

  /** tollgate_price(model, prompt, completion) -> { cost, charge } in BigInt micros. */
  async price(model, prompt, completion) {
    const out = await psql(
      `SELECT cost_usd::text || ' ' || charge_usd::text FROM tollgate_price(${lit(model)}, ${BigInt(prompt)}, ${BigInt(completion)})`,
    );
    if (!out) throw new Error(`tollgate_price(${model}) returned no row: is the model priced?`);
    const [cost, charge] = out.split(' ');
    return { cost: toMicros(cost), charge: toMicros(charge) };
  }

  /** The 'usage' ledger rows of a request id. */
  async ledger(requestId) {
    return (
      (await psqlJson(
        `SELECT json_agg(json_build_object('amount', amount::text, 'balance_after', balance_after::text,
                                           'transaction_type', transaction_type))
         FROM credit_transactions WHERE request_id = ${lit(requestId)}`,
      )) || []
    );
  }

  // ------------------------------------------------------------------------------------------
  // Stub helpers

  async stubLast() {
    const res = await fetch(`${this.stubUrl}/__stub/last`);
    return res.json();
  }

  // ------------------------------------------------------------------------------------------
  // Upstreams and model routes (issue 12)

  /**
   * `tollgate upstreams add NAME BASE_URL [--key-ref REF] [extra CLI args]`; the row (and its
   * routes) are removed at stop. Returns the CLI's { stdout, stderr }.
   */
  async addUpstream(name, baseUrl, { keyRef, args = [] } = {}) {
    this.upstreamNames.push(name);
    return tollgate('upstreams', 'add', name, baseUrl, ...(keyRef ? ['--key-ref', keyRef] : []), ...args);
  }

  /** `tollgate routes add PATTERN UPSTREAM …`; returns the route id it printed. */
  async addRoute(pattern, upstream, { priority, weight, upstreamModel } = {}) {
    const args = ['routes', 'add', pattern, upstream];
    if (priority !== undefined) args.push('--priority', String(priority));
    if (weight !== undefined) args.push('--weight', String(weight));
    if (upstreamModel !== undefined) args.push('--upstream-model', upstreamModel);
    const { stdout } = await tollgate(...args);
    const m = /^route (\d+) added$/m.exec(stdout);
    if (!m) throw new Error(`routes add printed ${JSON.stringify(stdout)}`);
    return Number(m[1]);
  }

  /**
   * Waits (up to `ms`) until every running tollgate has reloaded its route table since the route
   * rows were last changed: its last "routes loaded: … N route(s)" log line after `marks` (from
   * logMarks(), taken before the change) counts the active routes on active upstreams now in the
   * database. Throws if one has not, naming it.
   */
  async routesSettled(marks, ms = 3000) {
    const want = Number(await psql(
      `SELECT count(*) FROM model_routes r JOIN upstreams u ON u.name = r.upstream WHERE r.is_active AND u.is_active`));
    const deadline = Date.now() + ms;
    for (const p of this.proxies) {
      if (p.child.exited) continue;
      for (;;) {
        const lines = [...p.child.logSince(marks.get(p) ?? 0).matchAll(/routes loaded: .*?(\d+) route\(s\)/g)];
        const got = lines.length ? Number(lines[lines.length - 1][1]) : null;
        if (got === want || (got !== null && want === 0)) break;
        if (Date.now() > deadline)
          throw new Error(`${p.name} did not reload its routes within ${ms} ms (want ${want} routes, last loaded ${got}):\n${p.child.log.slice(-2000)}`);
        await sleep(10);
      }
    }
  }

  /** Where each running proxy's output is now, for routesSettled(). */
  logMarks() {
    return new Map(this.proxies.map((p) => [p, p.child.bytes]));
  }

  /** Every child from now on (and those started later) records whether `needle` is in its output. */
  watch(needle) {
    this.watched.push(needle);
    for (const c of this.children) c.watch(needle);
  }

  /** The children whose output contained `needle` (watched with watch()), by name. */
  leakedTo(needle) {
    return this.children.filter((c) => c.found.has(needle)).map((c) => c.name);
  }

  /** GET /metrics of a proxy (default: the main one), as text. */
  async metrics(adminUrl = this.adminUrl) {
    const res = await fetch(`${adminUrl}/metrics`);
    if (res.status !== 200) throw new Error(`${adminUrl}/metrics -> ${res.status}`);
    return res.text();
  }

  /** Every usage row of an account: [{request_id, upstream, status, credits_deducted, …}]. */
  async usageRows(userId) {
    return (
      (await psqlJson(
        `SELECT json_agg(json_build_object('request_id', request_id, 'model', model, 'upstream', upstream,
                 'status', status, 'prompt_tokens', prompt_tokens, 'completion_tokens', completion_tokens,
                 'credits_deducted', credits_deducted::text, 'response_metadata', response_metadata)
                 ORDER BY created_at)
         FROM usage_logs WHERE user_id = ${lit(userId)}`,
      )) || []
    );
  }
}

/**
 * Creates a Harness and registers node:test before/after hooks that start and stop it;
 * `options` go to its constructor and to Harness.start().
 */
export function useHarness(options = {}) {
  const h = new Harness(options);
  before(async () => {
    await h.start(options);
  }, { timeout: 60_000 });
  after(async () => {
    await h.stop();
  }, { timeout: 60_000 });
  return h;
}
