// Processes of the fault suite: the stub upstream and tollgate instances as children, the
// PostgreSQL/Redis started by run.sh (services.sh), and the tollgate CLI.
//
// Environment (run.sh sets it): TOLLGATE_DATABASE_URL, TOLLGATE_REDIS_URL,
// TOLLGATE_SERVICES_DIR (for stop-pg/start-pg/stop-redis/start-redis), optionally
// TOLLGATE_BIN / TOLLGATE_STUB_BIN (default build/bin/…), FAULT_VERBOSE=1 (echo child logs).
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, '../../..');
export const TOLLGATE_BIN = resolve(process.env.TOLLGATE_BIN || join(ROOT, 'build/bin/tollgate'));
export const STUB_BIN = resolve(process.env.TOLLGATE_STUB_BIN || join(ROOT, 'build/bin/tollgate-stub'));
export const DATABASE_URL = process.env.TOLLGATE_DATABASE_URL;
export const REDIS_URL = process.env.TOLLGATE_REDIS_URL;
export const SERVICES_DIR = process.env.TOLLGATE_SERVICES_DIR;
const SERVICES = join(ROOT, 'deploy/local/services.sh');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const rand = (bytes = 5) => randomBytes(bytes).toString('hex');

const tmpDirs = [];
/** A temporary folder removed by cleanupTmp(). */
export function tmp(prefix) {
  const d = mkdtempSync(join(tmpdir(), `tollgate-fault-${prefix}-`));
  tmpDirs.push(d);
  return d;
}
export function cleanupTmp() {
  for (const d of tmpDirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

/** Runs a program; resolves {stdout, stderr}, rejects with both in the message. */
export function run(file, args, { env = process.env, timeout = 120_000 } = {}) {
  return new Promise((res, rej) => {
    execFile(file, args, { env, maxBuffer: 64 << 20, timeout }, (err, stdout, stderr) => {
      if (err) {
        err.message = `${file} ${args.join(' ')}: ${err.message}\n${stdout}\n${stderr}`;
        rej(err);
      } else res({ stdout, stderr });
    });
  });
}

/** One SQL statement through psql: unaligned, tuples only, trimmed. */
export async function psql(sql) {
  return (await run('psql', ['-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1', DATABASE_URL, '-c', sql])).stdout.trim();
}
export const lit = (s) => `'${String(s).replace(/'/g, "''")}'`;

/** A Redis command through redis-cli (raw output lines). */
export async function redis(...args) {
  const { stdout } = await run('redis-cli', ['-u', REDIS_URL, '--raw', ...args]);
  return stdout.replace(/\n$/, '').split('\n');
}

/** deploy/local/services.sh CMD on the suite's services (stop-pg, start-pg, stop-redis, …). */
export const services = (cmd) => run('bash', [SERVICES, cmd, SERVICES_DIR]);

export const tollgateCli = (...args) => run(TOLLGATE_BIN, args, { timeout: 30_000 });

/** A child process with the tail of its output kept (for failure messages and log checks). */
export class Child {
  constructor(name, file, args, env) {
    this.name = name;
    this.log = '';
    this.exited = null;
    this.proc = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (d) => {
      this.log = (this.log + d.toString()).slice(-256 * 1024);
      if (process.env.FAULT_VERBOSE) process.stderr.write(`[${name}] ${d}`);
    };
    this.proc.stdout.on('data', keep);
    this.proc.stderr.on('data', keep);
    this.exit = new Promise((res) => {
      this.proc.on('exit', (code, signal) => res((this.exited = { code, signal })));
      this.proc.on('error', (error) => res((this.exited = { error: error.message })));
    });
  }
  get pid() { return this.proc.pid; }
  /** Sends `signal` and waits for the exit (SIGKILL after `ms`). */
  async stop(signal = 'SIGTERM', ms = 15_000) {
    if (this.exited) return this.exited;
    this.proc.kill(signal);
    const t = setTimeout(() => this.proc.kill('SIGKILL'), ms);
    const r = await this.exit;
    clearTimeout(t);
    return r;
  }
}

async function waitPortFile(child, file, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (child.exited) throw new Error(`${child.name} exited (${JSON.stringify(child.exited)}):\n${child.log}`);
    if (existsSync(file)) {
      const port = Number(readFileSync(file, 'utf8').trim());
      if (port > 0 && (await tcpOpen(port))) return port;
    }
    await sleep(50);
  }
  throw new Error(`${child.name}: no port in ${file} within ${ms} ms:\n${child.log}`);
}
function tcpOpen(port, host = '127.0.0.1') {
  return new Promise((res) => {
    const s = connect({ port, host });
    s.once('connect', () => { s.destroy(); res(true); });
    s.once('error', () => res(false));
  });
}

const children = [];
/** Every child still running is killed (end of a scenario, or of the suite). */
export async function stopAll() {
  for (const c of children.splice(0).reverse()) await c.stop('SIGTERM', 12_000);
}

export const upstreamKey = `sk-fault-${rand(12)}`;

/** Starts tollgate-stub on a free port with extra flags; returns {child, url, reset, last}. */
export async function startStub(flags = []) {
  const dir = tmp('stub');
  const pf = join(dir, 'port');
  const child = new Child('stub', STUB_BIN, ['--listen', '127.0.0.1:0', '--port-file', pf,
    '--require-key', upstreamKey, ...flags], process.env);
  children.push(child);
  const port = await waitPortFile(child, pf, 10_000);
  const url = `http://127.0.0.1:${port}`;
  return {
    child, url, apiUrl: `${url}/api/v1`,
    reset: async () => (await fetch(`${url}/__stub/reset`, { method: 'POST' })).arrayBuffer(),
    requests: async () => (await (await fetch(`${url}/__stub/last`)).json()).requests,
  };
}

let adminFlag;  // does this build have `serve --admin-port-file` (issue 10's admin listener)?
async function hasAdminListener() {
  if (adminFlag === undefined) {
    const out = await run(TOLLGATE_BIN, ['serve', '--help']).catch((e) => ({ stdout: e.message }));
    adminFlag = /admin-port-file/.test(out.stdout);
  }
  return adminFlag;
}

/**
 * Starts `tollgate serve` against `upstreamUrl`. `config` (TOML text) goes to a file passed with
 * --config; `journal` reuses a journal folder (a restart); `nofile` sets the open-file limit.
 * Returns an Instance.
 */
export async function startTollgate({ name = 'tollgate', upstreamUrl, config, journal, env = {}, nofile } = {}) {
  const dir = tmp(name);
  const journalDir = journal || join(dir, 'journal');
  const pf = join(dir, 'port');
  const apf = join(dir, 'admin-port');
  const args = [];
  if (config) {
    writeFileSync(join(dir, 'tollgate.toml'), config);
    args.push('--config', join(dir, 'tollgate.toml'));
  }
  args.push('serve', '--port-file', pf);
  const admin = await hasAdminListener();
  if (admin) args.push('--admin-port-file', apf);
  // `nofile`: the open-file limit (soft = hard, so tollgate cannot raise it), through prlimit(1).
  const [file, argv] = nofile ? ['prlimit', [`--nofile=${nofile}:${nofile}`, '--', TOLLGATE_BIN, ...args]] : [TOLLGATE_BIN, args];
  const child = new Child(name, file, argv, {
    ...process.env,
    TOLLGATE_LISTEN: '127.0.0.1:0',
    TOLLGATE_ADMIN_LISTEN: '127.0.0.1:0',  // several instances: no clash on the default 9464
    TOLLGATE_UPSTREAM_URL: upstreamUrl,
    TOLLGATE_UPSTREAM_KEY: upstreamKey,
    TOLLGATE_JOURNAL_DIR: journalDir,
    ...env,
  });
  children.push(child);
  const port = await waitPortFile(child, pf, 20_000);
  const adminPort = admin ? await waitPortFile(child, apf, 5_000) : port;
  const deadline = Date.now() + 5000;
  while (!/tollgate listening on/.test(child.log) && Date.now() < deadline) await sleep(20);
  return new Instance(child, `http://127.0.0.1:${port}`, `http://127.0.0.1:${adminPort}`, journalDir,
                      { name, upstreamUrl, config, env, nofile });
}

export class Instance {
  constructor(child, url, adminUrl, journalDir, opts) {
    Object.assign(this, { child, url, adminUrl, journalDir, opts });
  }
  /** Prometheus text from /metrics as {name{labels}: number}. */
  async metrics() {
    const text = await (await fetch(`${this.adminUrl}/metrics`, { signal: AbortSignal.timeout(3000) })).text();
    const m = {};
    for (const line of text.split('\n')) {
      const x = /^([a-z_]+(?:\{[^}]*\})?) (-?[0-9.e+]+)$/.exec(line);
      if (x) m[x[1]] = Number(x[2]);
    }
    return m;
  }
  /** Waits until the usage writer has committed everything it journaled. */
  async settled(ms = 30_000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const q = (await this.metrics())['tollgate_usage_records_queued'];
      if (q === 0) return;
      if (Date.now() > deadline) throw new Error(`${this.child.name}: ${q} usage record(s) still queued after ${ms} ms`);
      await sleep(50);
    }
  }
  /** The same instance again on the same journal (a restart after a crash). */
  restart() {
    return startTollgate({ ...this.opts, journal: this.journalDir });
  }
}
