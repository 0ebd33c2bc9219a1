// Instances of the runnable Credo mediator (mediators/credo) as child processes, configured by
// environment as in production, and the PostgreSQL database their shared wallet lives in.
//
// PostgreSQL: POSTGRES_HOST (default 127.0.0.1), POSTGRES_PORT (5432), POSTGRES_USER (postgres,
// trust auth): each world's wallet gets a database of its own, dropped at the end.

import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { captureOutput } from '../conformance/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const MEDIATOR_DIR = path.join(here, '..', '..', 'mediators', 'credo');

export const POSTGRES = {
  host: process.env.POSTGRES_HOST || '127.0.0.1',
  port: process.env.POSTGRES_PORT || '5432',
  user: process.env.POSTGRES_USER || 'postgres',
};

const psql = (sql) =>
  promisify(execFile)('psql', ['-h', POSTGRES.host, '-p', POSTGRES.port, '-U', POSTGRES.user, '-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-Atc', sql]);

const databases = new Set();
const mediators = new Set();

process.on('exit', () => {
  for (const mediator of mediators) mediator.killNow();
});

/**
 * A fresh name for one world's wallet database (WALLET_ID), dropped by stopMediators. Askar
 * creates the database when the first instance starts, as in production: it only provisions
 * a store whose database does not exist yet (an empty one made beforehand will not open).
 */
export function walletDatabaseName() {
  const name = `mpr_e2e_${randomBytes(6).toString('hex')}`;
  databases.add(name);
  return name;
}

/**
 * Starts one mediator instance with `env` (mediators/credo/README.md) on top of defaults for a
 * test (PostgreSQL wallet named WALLET_ID, LOG_LEVEL warn) and resolves once GET /invitation on
 * its HTTP_PORT answers 200: it is then connected to mpr, listening, and its invitation exists.
 */
export async function startMediator({ label, env, readyTimeoutMs = 120_000 }) {
  if (!fs.existsSync(path.join(MEDIATOR_DIR, 'node_modules')) || !fs.existsSync(path.join(MEDIATOR_DIR, 'native', 'libaries_askar.so'))) {
    throw new Error('mediators/credo is not installed: run scripts/ensure-credo');
  }
  if (!env.HTTP_PORT) throw new Error('startMediator: env.HTTP_PORT is required (readiness is asked there)');
  const child = spawn(process.execPath, ['src/main.mjs'], {
    cwd: MEDIATOR_DIR,
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      POSTGRES_HOST: POSTGRES.host,
      POSTGRES_PORT: POSTGRES.port,
      POSTGRES_USER: POSTGRES.user,
      AGENT_LABEL: label,
      LOG_LEVEL: process.env.E2E_CREDO_LOG || 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const { log, append } = captureOutput(child);
  const gone = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  gone.then(({ code, signal }) => append(`\n[exited: ${code ?? signal}]\n`));
  const running = () => child.exitCode === null && child.signalCode === null;

  const mediator = {
    label,
    pid: child.pid,
    /** What it was started with (start another instance on the same settings). */
    env,
    httpPort: Number(env.HTTP_PORT),
    wsPort: Number(env.WS_PORT),
    invitationUrl: undefined,
    log,
    exited: () => gone,
    killNow() {
      if (running()) child.kill('SIGKILL');
    },
    /** kill -9, resolved once the process is gone. */
    async kill() {
      mediator.killNow();
      await gone;
    },
    /** SIGTERM; resolves with how it exited (kills it after timeoutMs). */
    async terminate(timeoutMs = 15_000) {
      if (running()) child.kill('SIGTERM');
      const exited = await Promise.race([gone, sleep(timeoutMs).then(() => null)]);
      if (!exited) mediator.killNow();
      return exited ?? (await gone);
    },
  };
  mediators.add(mediator);

  const deadline = Date.now() + readyTimeoutMs;
  while (!mediator.invitationUrl) {
    if (!running()) {
      await gone;
      throw new Error(`mediator ${label} exited before it was ready\n--- its log ---\n${log().slice(-4000)}`);
    }
    if (Date.now() > deadline) {
      mediator.killNow();
      throw new Error(`mediator ${label} not ready within ${readyTimeoutMs} ms\n--- its log ---\n${log().slice(-4000)}`);
    }
    try {
      const response = await fetch(`http://127.0.0.1:${mediator.httpPort}/invitation`);
      if (response.status === 200) mediator.invitationUrl = await response.text();
    } catch {
      // not listening yet
    }
    if (!mediator.invitationUrl) await Promise.race([gone, sleep(200)]);
  }
  return mediator;
}

/** kill -9 every mediator started here, then drop the wallet databases. */
export async function stopMediators() {
  await Promise.all([...mediators].map((m) => m.kill()));
  mediators.clear();
  for (const name of databases) await psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  databases.clear();
}

/** The tail of each mediator's log, for a failed test's message. */
export function mediatorLogs() {
  return [...mediators].map((m) => `--- mediator ${m.label} (pid ${m.pid}) log tail ---\n${m.log().slice(-6000) || '(empty)'}`).join('\n');
}
