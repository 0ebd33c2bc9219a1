// ACA-Py 1.7 mediator processes with the mpr_acapy plugin (clients/acapy), as scripts/ensure-acapy
// installs them: askar wallets in the PostgreSQL at 127.0.0.1:5432, one database per mediator
// (instances of one mediator share it), HTTP and WebSocket inbound on free 127.0.0.1 ports.

import { execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO, captureOutput, freePort } from '../conformance/harness.mjs';

export const ACAPY_VENV = process.env.MPR_ACAPY_VENV || path.join(REPO, 'tmp', 'acapy-venv');
const ACAPY = path.join(ACAPY_VENV, 'bin', 'aca-py');
const here = path.dirname(new URL(import.meta.url).pathname);
const POSTGRES = { host: '127.0.0.1', port: 5432, user: 'postgres' };

const mediators = new Set();
const databases = new Set();
const dirs = new Set();

process.on('exit', () => {
  for (const m of mediators) m.killNow();
});

/** A new mediator identity: its wallet database, created by the first instance started with it. */
export function newWallet() {
  const name = `mpr_acapy_${randomBytes(5).toString('hex')}`;
  databases.add(name);
  return { name, key: randomBytes(16).toString('hex') };
}

/**
 * Starts one ACA-Py mediator instance and resolves once its admin API says ready.
 * `endpoints`: what it advertises (the first is its mediation grants' routing endpoint);
 * `httpPort`: its mpr_acapy.http port (default a free one); `socketdockPort`: adds
 * `-it mpr_acapy.socketdock` there;
 * `plugin: false` runs core ACA-Py (its in-memory undelivered queue) for comparison.
 */
export async function startAcapyMediator({
  label, wallet, mprUrl, endpoints, plugin = true, readyTimeoutMs = 90_000, httpPort: givenHttpPort, socketdockPort,
}) {
  if (!fs.existsSync(ACAPY)) throw new Error(`${ACAPY} missing: run scripts/ensure-acapy`);
  const [httpPort, wsPort, adminPort] = [givenHttpPort ?? (await freePort()), await freePort(), await freePort()];
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'mpr-acapy-'));
  dirs.add(home);
  const args = [
    'start', '--label', label,
    // Core too gets the transport that answers after processing, so rates compare like for like.
    '-it', 'mpr_acapy.http', '127.0.0.1', String(httpPort),
    '-it', 'ws', '127.0.0.1', String(wsPort),
    // The servers' MEDIATOR_URL (frames through SocketDock, pickup deliveries to wrap).
    ...(socketdockPort ? ['-it', 'mpr_acapy.socketdock', '127.0.0.1', String(socketdockPort)] : []),
    '-ot', 'http', '-ot', 'ws',
    '-e', ...(endpoints ?? [`http://127.0.0.1:${httpPort}`, `ws://127.0.0.1:${wsPort}`]),
    '--admin', '127.0.0.1', String(adminPort), '--admin-insecure-mode',
    '--no-ledger', '--wallet-type', 'askar', '--wallet-name', wallet.name, '--wallet-key', wallet.key,
    '--wallet-storage-type', 'postgres_storage',
    '--wallet-storage-config', JSON.stringify({ url: `${POSTGRES.host}:${POSTGRES.port}`, max_connections: 5 }),
    '--wallet-storage-creds', JSON.stringify({ account: POSTGRES.user, password: 'x', admin_account: POSTGRES.user, admin_password: 'x' }),
    '--auto-provision', '--open-mediation', '--auto-accept-requests', '--auto-accept-invites',
    '--emit-new-didcomm-mime-type', '--log-level', process.env.E2E_ACAPY_LOG || 'info',
    ...(plugin ? ['--plugin', 'mpr_acapy', '-o', `mpr_acapy.url=${mprUrl}`] : ['--enable-undelivered-queue']),
  ];
  const child = spawn(ACAPY, args, {
    env: { PATH: process.env.PATH, HOME: home, PYTHONUNBUFFERED: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const { log } = captureOutput(child);
  const gone = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  const admin = `http://127.0.0.1:${adminPort}`;
  const mediator = {
    label,
    pid: child.pid,
    httpPort,
    wsPort,
    socketdockPort,
    admin,
    log,
    exited: () => gone,
    killNow() {
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid, 'SIGTERM');
        if ((await Promise.race([gone.then(() => true), sleep(10_000).then(() => false)])) === false) mediator.killNow();
        await gone;
      }
      mediators.delete(mediator);
    },
    async get(pathname) {
      const res = await fetch(`${admin}${pathname}`);
      if (!res.ok) throw new Error(`${label} GET ${pathname}: ${res.status} ${await res.text()}`);
      return res.json();
    },
    async post(pathname, body = {}) {
      const res = await fetch(`${admin}${pathname}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      if (!res.ok) throw new Error(`${label} POST ${pathname}: ${res.status} ${await res.text()}`);
      return res.json();
    },
    /** An out-of-band invitation (DID exchange 1.1) a recipient can accept, then ask mediation on. */
    async createInvitation({ multiUse = false } = {}) {
      const oob = await mediator.post(`/out-of-band/create-invitation?auto_accept=true&multi_use=${multiUse}`, {
        handshake_protocols: ['https://didcomm.org/didexchange/1.1'],
      });
      return { url: oob.invitation_url };
    },
    /** The mediator's connection id of its (one) granted mediation: the server's connectionId. */
    async grantedConnectionId() {
      const { results } = await mediator.get('/mediation/requests?state=granted');
      if (results.length !== 1) throw new Error(`${label}: ${results.length} granted mediations`);
      return results[0].connection_id;
    },
  };
  mediators.add(mediator);
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    const exit = await Promise.race([gone, sleep(250).then(() => undefined)]);
    if (exit !== undefined) throw new Error(`${label} exited (${exit}) before ready:\n${log().slice(-6000)}`);
    try {
      const res = await fetch(`${admin}/status/ready`, { signal: AbortSignal.timeout(1000) });
      if (res.ok && (await res.json()).ready) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      mediator.killNow();
      throw new Error(`${label} not ready within ${readyTimeoutMs} ms:\n${log().slice(-6000)}`);
    }
  }
  // The plugin's mpr connection opens on ACA-Py's startup event, after the admin API answers.
  if (plugin) {
    while (!/mpr_acapy: queue in/.test(log())) {
      if (Date.now() > deadline) throw new Error(`${label}: the plugin did not connect to ${mprUrl}:\n${log().slice(-6000)}`);
      await sleep(100);
    }
  }
  return mediator;
}

/** Stops every mediator started here, drops their wallet databases, removes their homes. */
export async function stopAcapyMediators() {
  await Promise.all([...mediators].map((m) => m.stop()));
  for (const name of databases) {
    try {
      execFileSync('psql', ['-h', POSTGRES.host, '-p', String(POSTGRES.port), '-U', POSTGRES.user, '-qc', `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`], { stdio: 'ignore' });
    } catch {
      // left for the machine's next cleanup; names are random
    }
  }
  databases.clear();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  dirs.clear();
}

/** The tail of each mediator's log, for a failed test's message. */
export function acapyLogs(list) {
  return list.filter(Boolean).map((m) => `--- ACA-Py ${m.label} (pid ${m.pid}) log tail ---\n${m.log().slice(-6000)}`).join('\n');
}

/** Posts one forward for `recipientKey` to a mediator's HTTP `endpoint` (acapy-forward.py); resolves with the HTTP status. */
export function postForward(endpoint, routingKey, recipientKey) {
  return forwardScript([endpoint, routingKey, recipientKey]).then(Number);
}

/** Posts `count` forwards from `concurrency` threads; resolves with {statuses, seconds}. */
export function postForwards(endpoint, routingKey, recipientKey, count, concurrency) {
  return forwardScript([endpoint, routingKey, recipientKey, String(count), String(concurrency)]).then(JSON.parse);
}

function forwardScript(args) {
  return new Promise((resolve, reject) => {
    execFile(path.join(ACAPY_VENV, 'bin', 'python'), [path.join(here, 'acapy-forward.py'), ...args], { timeout: 600_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`acapy-forward.py: ${error.message}\n${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

/**
 * Runs tests/e2e/acapy-recipient.py against a mediator (its admin API and HTTP endpoint) and
 * resolves with the JSON report it prints.
 */
export function runPythonRecipient(mediator) {
  return new Promise((resolve, reject) => {
    const args = [path.join(here, 'acapy-recipient.py'), mediator.admin, `http://127.0.0.1:${mediator.httpPort}`];
    execFile(path.join(ACAPY_VENV, 'bin', 'python'), args, { timeout: 120_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`acapy-recipient.py: ${error.message}\n${stderr}`));
      else resolve(JSON.parse(stdout.trim().split('\n').at(-1)));
    });
  });
}
