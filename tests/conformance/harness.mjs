// Shared helpers for the wire-conformance suite: free ports, a private redis-server, mpr
// instances as child processes, the real rpc-websockets v7 Client, and raw `ws` sockets.
//
// Every child process started here is recorded and killed by pid when the test file is done
// (stopAll in `after`), and again on process exit as a last resort.
//
// rpc-websockets 7.11.2 is CommonJS: its default export carries { Client, Server } (a named ESM
// import does not work). Node 20 has no global WebSocket without --experimental-websocket, so
// raw frames go through `ws`, the library rpc-websockets itself uses.
//
// Environment: MPR_BIN (default <repo>/target/debug/mpr); MPR_TEST_REDIS=cluster runs against a
// Redis Cluster of six instead of one redis-server (startRedis, singleNodeOnly);
// MPR_TEST_REDIS_SERVER names another server binary to start as Redis (e.g. a valkey-server).

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomUUID, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import rpcWebsockets from 'rpc-websockets';
import WebSocket from 'ws';

export const { Client } = rpcWebsockets;
export { WebSocket, sleep };

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..');
export const MPR_BIN = process.env.MPR_BIN || path.join(REPO, 'target', 'debug', 'mpr');
const REDIS_SERVER = process.env.MPR_TEST_REDIS_SERVER || 'redis-server';

// ---------------------------------------------------------------------------------------------
// child processes

const children = new Set();

function killNow(child) {
  if (child.exitCode === null && child.signalCode === null) {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

process.on('exit', () => {
  for (const child of children) killNow(child);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    for (const child of children) killNow(child);
    process.exit(130);
  });
}

function exited(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

async function stopChild(child, graceMs = 3000) {
  if (child.exitCode === null && child.signalCode === null) {
    try {
      process.kill(child.pid, 'SIGTERM');
    } catch {
      // already gone
    }
    const done = await Promise.race([exited(child).then(() => true), sleep(graceMs).then(() => false)]);
    if (!done) {
      killNow(child);
      await exited(child);
    }
  }
  children.delete(child);
}

/** Directories of clusters started here, removed with their nodes. */
const clusterDirs = new Set();

/** Kills (SIGTERM, then SIGKILL after a grace period) every child this process started. */
export async function stopAll() {
  await Promise.all([...children].map((child) => stopChild(child)));
  for (const dir of clusterDirs) fs.rmSync(dir, { recursive: true, force: true });
  clusterDirs.clear();
}

// ---------------------------------------------------------------------------------------------
// ports

/** A free TCP port on 127.0.0.1 (never 6379). */
export async function freePort() {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const server = net.createServer();
      server.unref();
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const { port } = server.address();
        server.close(() => resolve(port));
      });
    });
    if (port !== 6379) return port;
  }
}

/** Whether 127.0.0.1:`port` can be bound right now. */
function bindable(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** How far above its port a Redis Cluster node binds its cluster bus port. */
const CLUSTER_BUS_OFFSET = 10_000;

/** Ports handed out by freeClusterPort (bus ports included), never handed out again here. */
const clusterPortsHandedOut = new Set();

/**
 * A port for a Redis Cluster node: it and its bus port (port + 10000) are free right now. Both
 * lie below the range the system hands out to bind(0) and outgoing connections (testkit's
 * free_cluster_port does the same), so no connection takes them before the node binds them;
 * other processes picking the same way can still race, which startRedisCluster retries.
 */
async function freeClusterPort() {
  const ephemeralLow = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').split(/\s+/)[0]) || 32768;
  const [low, end] = ephemeralLow - CLUSTER_BUS_OFFSET >= 12_000 ? [10_000, ephemeralLow - CLUSTER_BUS_OFFSET] : [1024, 65535 - CLUSTER_BUS_OFFSET];
  for (;;) {
    const port = low + Math.floor(Math.random() * (end - low));
    const pair = [port, port + CLUSTER_BUS_OFFSET];
    if (pair.some((p) => p === 6379 || clusterPortsHandedOut.has(p))) continue;
    if ((await bindable(pair[0])) && (await bindable(pair[1]))) {
      pair.forEach((p) => clusterPortsHandedOut.add(p));
      return port;
    }
  }
}

/**
 * Whether the redis-server answering on `port` is the process `pid` (INFO server names it): not
 * another server holding the port while ours fails to bind it.
 */
function answersAs(port, pid, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let buffer = '';
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('error', () => done(false));
    socket.once('close', () => done(false));
    socket.on('data', (chunk) => {
      buffer += chunk.toString();
      const found = buffer.match(/process_id:(\d+)\r\n/);
      if (found) done(Number(found[1]) === pid);
      else if (buffer.startsWith('-')) done(false);
    });
    socket.once('connect', () => socket.write('INFO server\r\n'));
  });
}

// ---------------------------------------------------------------------------------------------
// redis

/**
 * The Redis this run uses: `cluster` with MPR_TEST_REDIS=cluster (a Redis Cluster of six,
 * three primaries with a replica each), otherwise one redis-server.
 */
export const CLUSTER_MODE = (() => {
  const mode = process.env.MPR_TEST_REDIS || 'single';
  if (mode !== 'single' && mode !== 'cluster') throw new Error(`MPR_TEST_REDIS=${mode}: use single or cluster`);
  return mode === 'cluster';
})();

/**
 * For a describe/test that needs one redis-server of its own (kills, restarts or freezes it):
 * `describe(name, { skip: singleNodeOnly('kills Redis') }, ...)` skips it in a cluster run.
 */
export function singleNodeOnly(why) {
  return CLUSTER_MODE ? `needs a single redis-server (${why}); MPR_TEST_REDIS=cluster` : false;
}

/** Spawns one redis-server on `port` with `args` after the defaults; resolves once it answers as itself. */
async function spawnRedis(port, args = [], { cwd } = {}) {
  if (port === 6379) throw new Error('never use port 6379');
  const child = spawn(
    REDIS_SERVER,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', os.tmpdir(), ...args],
    { stdio: ['ignore', 'pipe', 'pipe'], cwd },
  );
  children.add(child);
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  // Generous: many servers may start at once on a loaded machine; one that cannot bind its
  // ports exits at once, which ends the wait early.
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && child.exitCode === null) {
    if (await answersAs(port, child.pid)) return child;
    await sleep(50);
  }
  await stopChild(child, 500);
  throw new Error(`redis-server on port ${port} did not start:\n${output}`);
}

/**
 * Starts a private, non-persistent redis-server on a free port (not daemonized); with
 * MPR_TEST_REDIS=cluster a Redis Cluster instead (see startRedisCluster). Either way `url` and
 * `env` are what startServer({ redis }) hands a server.
 */
export async function startRedis({ port: fixedPort } = {}) {
  if (CLUSTER_MODE) {
    if (fixedPort !== undefined) throw new Error('a cluster run has no single redis-server to start on a fixed port');
    return startRedisCluster();
  }
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = fixedPort ?? (await freePort());
    try {
      const child = await spawnRedis(port);
      return {
        port,
        url: `redis://127.0.0.1:${port}`,
        env: {},
        child,
        pid: child.pid,
        stop: () => stopChild(child),
        /** Sends a signal to this redis-server only, by pid. */
        kill: (signal = 'SIGKILL') => process.kill(child.pid, signal),
        exited: () => exited(child),
        cli: (...args) => redisCli(port, args),
      };
    } catch (error) {
      lastError = error;
    }
  }
  throw lastError;
}

const execFileAsync = promisify(execFile);

/** stdout of redis-cli with `args` against `port` (`-c`: following a key to its node). */
async function redisCli(port, args, { cluster = false } = {}) {
  const { stdout } = await execFileAsync('redis-cli', [...(cluster ? ['-c'] : []), '-p', String(port), ...args]);
  return stdout.trim();
}

/**
 * What one node says about the cluster: its state, the slot ranges of the primaries not taken
 * for failing ("start-end@port", sorted) and the replicas' ports.
 */
async function clusterView(port) {
  const info = await redisCli(port, ['CLUSTER', 'INFO']);
  const slots = [];
  const replicas = [];
  let myselfReplica = false;
  for (const line of (await redisCli(port, ['CLUSTER', 'NODES'])).split('\n')) {
    const [, address, flagList, , , , , , ...ranges] = line.split(' ');
    const nodePort = Number(address.split(/[@,]/)[0].split(':').pop());
    const flags = flagList.split(',');
    const failing = flags.some((flag) => ['fail', 'fail?', 'handshake', 'noaddr'].includes(flag));
    if (flags.includes('slave')) {
      replicas.push(nodePort);
      if (flags.includes('myself')) myselfReplica = true;
    } else if (!failing) {
      for (const range of ranges.filter((r) => !r.startsWith('['))) slots.push(`${range}@${nodePort}`);
    }
  }
  const covered = slots.reduce((sum, entry) => {
    const [start, end = start] = entry.split('@')[0].split('-').map(Number);
    return sum + end - start + 1;
  }, 0);
  const linkUp = !myselfReplica || (await redisCli(port, ['INFO', 'replication'])).includes('master_link_status:up');
  return {
    ok: info.includes('cluster_state:ok') && covered === 16384 && linkUp,
    agreed: JSON.stringify([slots.sort(), replicas.sort()]),
  };
}

/**
 * Starts six redis-servers (AOF always, node timeout 2 s) in a directory of their own, makes
 * them a cluster with `redis-cli --cluster create --cluster-replicas 1`, and resolves once every
 * node says cluster_state:ok, agrees with the others on slots and replicas, and (a replica) has
 * its link to its primary up. `env` carries REDIS_TYPE=cluster and REDIS_NODES.
 */
export async function startRedisCluster() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mpr-conformance-cluster-'));
  const ports = [];
  let nodes;
  const nodeArgs = (port) => [
    '--cluster-enabled', 'yes', '--cluster-node-timeout', '2000',
    '--appendonly', 'yes', '--appendfsync', 'always',
    // A primary need not wait for more replicas before a full sync (default 5 s).
    '--repl-diskless-sync-delay', '0',
    // The nodes share `dir`; every file of theirs is named by port.
    '--dir', dir, '--cluster-config-file', path.join(dir, `nodes-${port}.conf`),
    '--appenddirname', `appendonly-${port}`, '--dbfilename', `dump-${port}.rdb`,
  ];
  clusterDirs.add(dir);
  const stop = async () => {
    await Promise.all(nodeChildren.map((child) => stopChild(child)));
    fs.rmSync(dir, { recursive: true, force: true });
    clusterDirs.delete(dir);
  };
  const nodeChildren = [];
  try {
    // A node that does not come up (its port or bus port taken after it was picked) is
    // started again on a fresh one, a few times.
    while (ports.length < 6) {
      for (let attempt = 1; ; attempt++) {
        const port = await freeClusterPort();
        try {
          nodeChildren.push(await spawnRedis(port, nodeArgs(port)));
          ports.push(port);
          break;
        } catch (error) {
          if (attempt === 4) throw error;
        }
      }
    }
    nodes = ports.map((port) => `127.0.0.1:${port}`);
    await execFileAsync('redis-cli', ['--cluster', 'create', ...nodes, '--cluster-replicas', '1', '--cluster-yes']);
    // Generous, as testkit's settle_within: forming a cluster under load takes a while.
    const deadline = Date.now() + 90_000;
    let last;
    for (;;) {
      last = await Promise.all(ports.map((port) => clusterView(port).catch((error) => ({ ok: false, agreed: error.message }))));
      if (last.every((view) => view.ok && view.agreed === last[0].agreed)) break;
      if (Date.now() >= deadline) throw new Error(`the cluster did not settle within 90 s: ${JSON.stringify(last)}`);
      await sleep(100);
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    cluster: true,
    ports,
    nodes,
    port: ports[0],
    // The server takes only scheme and credentials from REDIS_URL in a cluster.
    url: `redis://127.0.0.1:${ports[0]}`,
    env: { REDIS_TYPE: 'cluster', REDIS_NODES: nodes.join(',') },
    stop,
    /** redis-cli -c on the first node: a key's command goes to its primary. */
    cli: (...args) => redisCli(ports[0], args, { cluster: true }),
  };
}

// ---------------------------------------------------------------------------------------------
// MongoDB-wire server (SecantusDB, a test stand-in for MongoDB; `scripts/ensure-secantusdb`)

/** Starts an in-memory SecantusDB on a free port; resolves once it accepts connections. */
export async function startMongo() {
  const port = await freePort();
  const child = spawn(
    process.env.MPR_SECANTUSD || 'secantusd-py',
    ['--host', '127.0.0.1', '--port', String(port), '--storage-path', ':memory:', '--log-level', 'ERROR'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.add(child);
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline && child.exitCode === null) {
    const open = await new Promise((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.once('connect', () => { socket.destroy(); resolve(true); });
      socket.once('error', () => resolve(false));
    });
    if (open) {
      return { port, url: (db) => `mongodb://127.0.0.1:${port}/${db}?directConnection=true`, child, stop: () => stopChild(child) };
    }
    await sleep(100);
  }
  await stopChild(child, 500);
  throw new Error(`SecantusDB on port ${port} did not start:\n${output}`);
}

/** The value of an unlabelled metric on an instance's /metrics. */
export async function metric(server, name) {
  const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : 0;
}

// ---------------------------------------------------------------------------------------------
// mpr instances

export function uniquePrefix() {
  return `conf${randomBytes(4).toString('hex')}`;
}

/**
 * Starts an mpr instance on `redis` (what startRedis resolved with: one redis-server or a
 * cluster; `redisUrl` alone: one redis-server there) and waits until GET /ready answers 200.
 * `env` adds to or overrides the defaults below.
 */
/**
 * A child process's stdout and stderr, kept in memory (the newest 200–400 kB) for the log tails
 * a failed test prints: `log()` is what it wrote so far, `append(text)` adds a note of ours.
 */
export function captureOutput(child) {
  let text = '';
  const append = (data) => {
    text += data;
    if (text.length > 400_000) text = text.slice(-200_000);
  };
  child.stdout.on('data', append);
  child.stderr.on('data', append);
  return { log: () => text, append };
}

export async function startServer({ redis, redisUrl = redis?.url, prefix, env = {}, name = 'mpr', ports } = {}) {
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    // `ports` ({wsPort, appPort}): a server started again where a killed one was.
    const wsPort = ports?.wsPort ?? (await freePort());
    let appPort = ports?.appPort ?? (await freePort());
    while (appPort === wsPort) appPort = await freePort();
    const childEnv = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      WS_PORT: String(wsPort),
      APP_PORT: String(appPort),
      BIND_ADDRESS: '127.0.0.1',
      REDIS_URL: redisUrl,
      ...redis?.env,
      REDIS_PREFIX: prefix,
      LIVENESS_TIMEOUT_MS: '2000',
      VISIBILITY_TIMEOUT_MS: '1500',
      SHUTDOWN_TIMEOUT_MS: '2000',
      LOG_LEVEL: 'warn',
      NO_COLOR: '1',
      ...env,
    };
    const child = spawn(MPR_BIN, [], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    const output = captureOutput(child);
    let spawnError = null;
    child.once('error', (e) => (spawnError = e));
    const server = {
      name,
      wsPort,
      appPort,
      url: `ws://127.0.0.1:${wsPort}`,
      httpUrl: `http://127.0.0.1:${appPort}`,
      child,
      pid: child.pid,
      env: childEnv,
      log: () => output.log().replace(/\x1b\[[0-9;]*m/g, ''),
      stop: () => stopChild(child),
      /** Sends a signal to this instance only, by pid. */
      kill: (signal = 'SIGKILL') => process.kill(child.pid, signal),
      exited: () => exited(child),
    };
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && child.exitCode === null && child.signalCode === null && !spawnError) {
      try {
        const res = await fetch(`${server.httpUrl}/ready`, { signal: AbortSignal.timeout(500) });
        await res.arrayBuffer();
        if (res.status === 200) return server;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    lastError = new Error(
      `${name} (${MPR_BIN}) not ready within 10 s (exit ${child.exitCode ?? child.signalCode ?? 'none'}` +
        `${spawnError ? `, ${spawnError.message}` : ''}):\n${output.log()}`,
    );
    await stopChild(child, 500);
    if (!/address.{0,20}in use/i.test(output.log())) break;
  }
  throw lastError;
}

/**
 * Wraps a test body: on failure the tail of every given server's log is appended to the error
 * (so the reporter prints it next to the failed assertion).
 */
export function withLogs(getServers, fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (error) {
      const servers = (typeof getServers === 'function' ? getServers() : getServers).filter(Boolean);
      const logs = servers
        .map((s) => `--- ${s.name} (pid ${s.pid}) log tail ---\n${s.log().slice(-4000) || '(empty)'}`)
        .join('\n');
      let attached = false;
      if (error && typeof error === 'object') {
        try {
          const original = String(error.message);
          error.message = `${original}\n${logs}`;
          // reporters that print the stack (spec) show it there too
          if (typeof error.stack === 'string' && error.stack.includes(original)) {
            error.stack = error.stack.replace(original, error.message);
          }
          attached = true;
        } catch {
          // a frozen error object
        }
      }
      if (!attached) console.error(logs);
      throw error;
    }
  };
}

// ---------------------------------------------------------------------------------------------
// the real rpc-websockets client

const openClients = new Set();

/** A connected rpc-websockets v7 Client (autoconnect, no reconnect). */
export async function connect(url, timeoutMs = 5000) {
  const client = new Client(url, { autoconnect: true, reconnect: false });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`connect to ${url} timed out`)), timeoutMs);
    client.once('open', () => {
      clearTimeout(timer);
      resolve();
    });
    client.once('error', (error) => {
      clearTimeout(timer);
      reject(error instanceof Error ? error : new Error(`connect to ${url} failed: ${error?.message ?? error}`));
    });
  });
  openClients.add(client);
  return client;
}

/** Closes a Client (code 1000) and waits for the close event. */
export async function closeClient(client) {
  openClients.delete(client);
  if (!client.socket) return;
  const closed = new Promise((resolve) => client.socket.once('close', () => resolve()));
  client.close();
  await Promise.race([closed, sleep(2000)]);
}

export async function closeAllClients() {
  await Promise.all([...openClients].map((c) => closeClient(c)));
  for (const ws of rawSockets) {
    try {
      ws.terminate();
    } catch {
      // ignore
    }
  }
  rawSockets.clear();
}

/** client.call with a timeout (ms). */
export function call(client, method, params, timeoutMs = 3000) {
  return client.call(method, params, timeoutMs);
}

/**
 * Calls a method that must fail; returns the error object the client rejected with.
 * Fails if the call succeeds or the rejection is a client-side Error (timeout, socket).
 */
export async function callError(client, method, params, timeoutMs = 3000) {
  let result;
  try {
    result = await client.call(method, params, timeoutMs);
  } catch (error) {
    if (error instanceof Error) {
      throw new Error(`${method}(${JSON.stringify(params)}) failed client-side instead of with an error reply: ${error.message}`);
    }
    return error;
  }
  throw new Error(`${method}(${JSON.stringify(params)}) succeeded with ${JSON.stringify(result)}; an error reply was expected`);
}

// ---------------------------------------------------------------------------------------------
// live sessions

/**
 * Resolves when one of `waiters` is called or at `deadline`; the timer is cleared on wake-up, so
 * that a finished wait does not keep the test process alive.
 */
export function wakeOrTimeout(waiters, deadline) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()));
    waiters.push(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Collects messagesReceived pushes on a Client. */
export function collectPushes(client) {
  const pushes = [];
  const waiters = [];
  client.on('messagesReceived', (params) => {
    pushes.push(params);
    for (const w of waiters.splice(0)) w();
  });
  return {
    pushes,
    messages: () => pushes.flatMap((p) => p?.messages ?? []),
    /** Waits until `n` messages in total have been pushed (or timeoutMs passes). */
    async waitMessages(n, timeoutMs = 3000) {
      const deadline = Date.now() + timeoutMs;
      while (pushes.flatMap((p) => p?.messages ?? []).length < n && Date.now() < deadline) {
        await wakeOrTimeout(waiters, deadline);
      }
      return pushes.flatMap((p) => p?.messages ?? []);
    },
  };
}

/** A Client that subscribed to messagesReceived and holds a live session for `connectionId`. */
export async function liveSocket(server, connectionId) {
  const client = await connect(server.url);
  const collector = collectPushes(client);
  assert.deepEqual(await client.subscribe('messagesReceived'), { messagesReceived: 'ok' });
  assert.equal(await call(client, 'addLiveSession', { connectionId, sessionId: uuid() }), true);
  return { client, ...collector };
}

/** Asserts one messagesReceived params object: exactly {connectionId, id: '', messages: [≥ 1]}. */
export function assertPush(push, connectionId) {
  assert.equal(typeof push, 'object');
  assert.notEqual(push, null);
  assert.deepEqual(Object.keys(push).sort(), ['connectionId', 'id', 'messages'], `push params: ${JSON.stringify(push)}`);
  assert.equal(push.connectionId, connectionId);
  assert.equal(push.id, '');
  assert.ok(Array.isArray(push.messages) && push.messages.length >= 1);
}

// ---------------------------------------------------------------------------------------------
// raw sockets (the `ws` package rpc-websockets depends on)

const rawSockets = new Set();

/**
 * Opens a raw WebSocket; every text frame received is parsed (or kept as a string) and queued.
 * Returns { ws, next(timeoutMs), nothingWithin(ms), send(obj|string), closed, close() }.
 */
export async function rawConnect(url, timeoutMs = 5000) {
  const ws = new WebSocket(url);
  rawSockets.add(ws);
  const frames = [];
  const waiters = [];
  let closeInfo = null;
  const closeWaiters = [];
  ws.on('message', (data, isBinary) => {
    const text = data.toString();
    let value;
    try {
      value = JSON.parse(text);
    } catch {
      value = { unparsable: text };
    }
    const entry = { value, text, isBinary };
    const waiter = waiters.shift();
    if (waiter) waiter(entry);
    else frames.push(entry);
  });
  ws.on('error', () => {});
  ws.on('close', (code, reason) => {
    closeInfo = { code, reason: reason.toString() };
    rawSockets.delete(ws);
    for (const w of closeWaiters.splice(0)) w(closeInfo);
  });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`raw connect to ${url} timed out`)), timeoutMs);
    ws.once('open', () => {
      clearTimeout(timer);
      resolve();
    });
    ws.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
  return {
    ws,
    send(frame) {
      ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
    },
    /** The next frame ({value, text, isBinary}); rejects after timeoutMs. */
    next(timeoutMs = 3000) {
      if (frames.length) return Promise.resolve(frames.shift());
      return new Promise((resolve, reject) => {
        const waiter = (entry) => {
          clearTimeout(timer);
          resolve(entry);
        };
        const timer = setTimeout(() => {
          const i = waiters.indexOf(waiter);
          if (i >= 0) waiters.splice(i, 1);
          reject(new Error(`no frame within ${timeoutMs} ms${closeInfo ? ` (socket closed ${closeInfo.code})` : ''}`));
        }, timeoutMs);
        waiters.push(waiter);
      });
    },
    /** Frames received but not yet consumed. */
    pending: () => frames.slice(),
    /** Resolves with {code, reason} once closed, or null after timeoutMs. */
    closed(timeoutMs = 3000) {
      if (closeInfo) return Promise.resolve(closeInfo);
      return new Promise((resolve) => {
        const timer = setTimeout(() => resolve(null), timeoutMs);
        closeWaiters.push((info) => {
          clearTimeout(timer);
          resolve(info);
        });
      });
    },
    get closeInfo() {
      return closeInfo;
    },
    close() {
      ws.close(1000);
    },
    terminate() {
      ws.terminate();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// data

export const uuid = () => randomUUID();

export function didKey() {
  return `did:key:z6Mk${randomBytes(16).toString('hex')}`;
}

function b64url(bytes) {
  return randomBytes(bytes).toString('base64url');
}

/** A DIDComm v1 JWE-shaped payload; `ciphertextLength` sets its JSON size. */
export function payload({ ciphertextLength = 64, extra = {} } = {}) {
  return {
    protected: b64url(48),
    iv: b64url(12),
    ciphertext: 'A'.repeat(ciphertextLength),
    tag: b64url(16),
    ...extra,
  };
}

/** JSON size of an encryptedMessage as limitBytes counts it. */
export const jsonSize = (value) => JSON.stringify(value).length;

export const MESSAGE_ID = /^[0-9a-f]{24}$/;
export const ISO_MS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** Polls fn until it returns a truthy value or timeoutMs passes; returns the last value. */
export async function pollUntil(fn, { timeoutMs = 3000, intervalMs = 50 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let value;
  for (;;) {
    value = await fn();
    if (value || Date.now() >= deadline) return value;
    await sleep(intervalMs);
  }
}

// ---------------------------------------------------------------------------------------------
// shape assertions


/**
 * Asserts one QueuedMessage: exactly {id, receivedAt, encryptedMessage}, the expected id, an
 * ISO-8601 UTC millisecond timestamp inside [notBefore - 2 s, notAfter + 2 s], and the payload
 * returned byte-for-byte (same members, same order, same values).
 */
export function assertQueuedMessage(message, { id, payload, notBefore, notAfter } = {}) {
  assert.equal(typeof message, 'object');
  assert.notEqual(message, null);
  assert.deepEqual(Object.keys(message).sort(), ['encryptedMessage', 'id', 'receivedAt'], `QueuedMessage members: ${JSON.stringify(message)}`);
  assert.equal(typeof message.id, 'string');
  if (id !== undefined) assert.equal(message.id, id);
  assert.equal(typeof message.receivedAt, 'string');
  assert.match(message.receivedAt, ISO_MS, 'receivedAt must look like 2026-11-22T04:16:15.123Z');
  const at = Date.parse(message.receivedAt);
  assert.equal(new Date(at).toISOString(), message.receivedAt, 'receivedAt must be a valid UTC instant');
  if (notBefore !== undefined) assert.ok(at >= notBefore - 2000, `receivedAt ${message.receivedAt} is before the message was sent`);
  if (notAfter !== undefined) assert.ok(at <= notAfter + 2000, `receivedAt ${message.receivedAt} is after the message was acknowledged`);
  if (payload !== undefined) {
    assert.deepEqual(message.encryptedMessage, payload);
    assert.equal(JSON.stringify(message.encryptedMessage), JSON.stringify(payload), 'encryptedMessage must keep its members in order');
  }
}

/** Asserts an addMessage result: exactly {messageId: 24 lowercase hex}; returns the id. */
export function assertAddResult(result) {
  assert.equal(typeof result, 'object', `addMessage result: ${JSON.stringify(result)}`);
  assert.notEqual(result, null, 'addMessage result must not be null');
  assert.deepEqual(Object.keys(result), ['messageId'], `addMessage result: ${JSON.stringify(result)}`);
  assert.match(result.messageId, MESSAGE_ID);
  return result.messageId;
}

/** addMessage through the client, asserting the result shape; returns {id, payload, sentAt, ackAt}. */
export async function add(client, connectionId, { recipientDids = [didKey()], body = payload(), extraParams = {} } = {}) {
  const sentAt = Date.now();
  const result = await client.call('addMessage', { connectionId, recipientDids, payload: body, ...extraParams }, 3000);
  const ackAt = Date.now();
  return { id: assertAddResult(result), payload: body, sentAt, ackAt, recipientDids };
}

/** takeFromQueue that asserts an array result and every element's shape. */
export async function take(client, params) {
  const result = await client.call('takeFromQueue', params, 5000);
  assert.ok(Array.isArray(result), `takeFromQueue must answer an array, got ${JSON.stringify(result)}`);
  for (const m of result) assertQueuedMessage(m);
  return result;
}

/** getAvailableMessageCount asserting a non-negative integer result. */
export async function count(client, params) {
  const result = await client.call('getAvailableMessageCount', params, 3000);
  assert.equal(typeof result, 'number', `getAvailableMessageCount must answer a number, got ${JSON.stringify(result)}`);
  assert.ok(Number.isInteger(result) && result >= 0, `count ${result}`);
  return result;
}

/** Checks taken messages against the added ones: same ids in the same order, full shapes. */
export function assertTaken(taken, added) {
  assert.deepEqual(taken.map((m) => m.id), added.map((m) => m.id), 'ids / FIFO order');
  taken.forEach((m, i) =>
    assertQueuedMessage(m, { id: added[i].id, payload: added[i].payload, notBefore: added[i].sentAt, notAfter: added[i].ackAt }),
  );
}
