// The real SocketDock (../shared/tools/socketdock-run) for the e2e world: on a free 127.0.0.1
// port, its `--endpoint` its own address, calling back an mpr server's /socketdock/* routes.
// Its wire behaviour: ../shared/reference/socketdock.md.
//
// MPR_SOCKETDOCK_RUN names another launcher (as for the Rust tests' testkit).

import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { captureOutput, freePort } from '../conformance/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const LAUNCHER = process.env.MPR_SOCKETDOCK_RUN || path.join(here, '..', '..', '..', 'shared', 'tools', 'socketdock-run');

const docks = new Set();

process.on('exit', () => {
  for (const dock of docks) dock.killNow();
});

/**
 * Starts a SocketDock whose callbacks go to `backend` (an mpr server from the harness, or its
 * HTTP base URL) with `?secret=` (default: the server's SOCKETDOCK_SECRET), and resolves once it
 * answers HTTP (any status: it serves no `/`). Allows 3 minutes: a first call builds the
 * launcher's virtualenv from PyPI (`scripts/ensure-socketdock` does that ahead).
 */
export async function startSocketDock({ backend, secret = backend?.env?.SOCKETDOCK_SECRET, name, logLevel = 'INFO', readyTimeoutMs = 180_000, port: requestedPort }) {
  const base = typeof backend === 'string' ? backend : backend?.httpUrl;
  if (!base) throw new Error('startSocketDock: backend must be an mpr server or its http:// base URL');
  if (!secret) throw new Error('startSocketDock: no secret (give one, or a backend started with SOCKETDOCK_SECRET)');
  const callback = (route) => `${base}/socketdock/${route}?secret=${encodeURIComponent(secret)}`;
  const port = requestedPort ?? (await freePort());
  const endpoint = `http://127.0.0.1:${port}`;
  const label = name ?? `socketdock-${port}`;
  const child = spawn(LAUNCHER, [
    '--bindip', '127.0.0.1', '--bindport', String(port), '--backend', 'http', '--endpoint', endpoint,
    '--connect-uri', callback('connect'), '--message-uri', callback('message'), '--disconnect-uri', callback('disconnect'),
    '--log-level', logLevel,
  ], {
    env: { ...process.env },
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group: a kill also reaches pip when the launcher is still building its venv.
    detached: true,
  });
  const { log, append } = captureOutput(child);
  let spawnError;
  child.once('error', (error) => { spawnError = error; });
  const gone = new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
  gone.then(({ code, signal }) => append(`\n[exited: ${code ?? signal}]\n`));
  const running = () => child.exitCode === null && child.signalCode === null && !spawnError;

  const dock = {
    name: label,
    port,
    pid: child.pid,
    /** Its `--endpoint`: the base of the send/disconnect URLs it hands out (SOCKETDOCK_ENDPOINTS). */
    endpoint,
    /** Where agents connect. */
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    log,
    exited: () => gone,
    killNow() {
      if (!running()) return;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    },
    /** kill -9 (a crash), resolved once it is gone. */
    async kill() {
      dock.killNow();
      await gone;
    },
    /** SIGTERM to its pid (the launcher execs SocketDock); how it exited (killed after timeoutMs). */
    async stop(timeoutMs = 10_000) {
      if (running()) child.kill('SIGTERM');
      const exited = await Promise.race([gone, sleep(timeoutMs).then(() => null)]);
      if (!exited) dock.killNow();
      docks.delete(dock);
      return exited ?? (await gone);
    },
  };
  docks.add(dock);

  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (!running()) {
      if (!spawnError) await gone;
      throw new Error(`${label} (${LAUNCHER}) exited before it answered HTTP${spawnError ? `: ${spawnError.message}` : ''}\n--- its log ---\n${log().slice(-4000)}`);
    }
    try {
      const response = await fetch(`${endpoint}/`, { signal: AbortSignal.timeout(1000) });
      await response.arrayBuffer();
      return dock;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await dock.kill();
      throw new Error(`${label} did not answer HTTP within ${readyTimeoutMs} ms\n--- its log ---\n${log().slice(-4000)}`);
    }
    await Promise.race([gone, sleep(100)]);
  }
}

/** kill -9 every SocketDock started here. */
export async function stopSocketDocks() {
  await Promise.all([...docks].map((dock) => dock.kill()));
  docks.clear();
}

/** The tail of each running SocketDock's log, for a failed test's message. */
export function socketDockLogs() {
  return [...docks].map((d) => `--- ${d.name} (pid ${d.pid}) log tail ---\n${d.log().slice(-4000) || '(empty)'}`).join('\n');
}
