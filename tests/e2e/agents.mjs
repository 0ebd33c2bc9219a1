// Real Credo agents as child processes (the protocol in README.md), the flavours the scenarios
// run for, and a plain TCP load balancer in front of the mediator instances.
//
// Every agent speaks the same protocol whatever its Credo version, so a scenario is written once
// and run for each flavour. Agents are forked with an IPC channel; their output goes to a log
// kept per agent and appended to a failed test's error (agentLogs).

import { fork } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { captureOutput, pollUntil } from '../conformance/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

/**
 * Credo version × MPR client, each run by every scenario. What reaches the recipient's
 * application keeps the server's order only where both sides keep it:
 * - `pushOrder`: live pushes arrive in order. The 2060 client starts the mediator's handler for
 *   each push without waiting for the previous one, so two deliveries can overtake each other
 *   in the mediator; and Credo 0.5's recipient works on the deliveries it receives at the same
 *   time, so even deliveries sent in order (this project's client) can swap there.
 * - `batchOrder`: the messages of one delivery (a pickup of several) arrive in order. Credo
 *   0.5's recipient hands a delivery's messages on concurrently; 0.6 does so one by one.
 */
export const FLAVOURS = [
  { name: 'Credo 0.5.19, unmodified 2060 client', dir: 'credo-0.5', entry: 'agent.cjs', client: '2060', pushOrder: false, batchOrder: false },
  { name: 'Credo 0.5.19, project client', dir: 'credo-0.5', entry: 'agent.cjs', client: 'project', pushOrder: false, batchOrder: false },
  { name: 'Credo 0.6.3, project client', dir: 'credo-0.6', entry: 'agent.mjs', client: 'project', pushOrder: true, batchOrder: true },
];

/** Native Askar each Credo line loads, as its install script leaves it. */
function nativeEnv(flavour) {
  const dir = path.join(here, flavour.dir, 'native');
  if (!fs.existsSync(path.join(dir, 'libaries_askar.so')) || !fs.existsSync(path.join(here, flavour.dir, 'node_modules'))) {
    throw new Error(`${flavour.dir} is not installed: run scripts/ensure-credo`);
  }
  // Both name the directory holding libaries_askar.so; 0.6 renamed the variable.
  return flavour.dir === 'credo-0.5' ? { LIB_ARIES_ASKAR_PATH: dir } : { LIB_ASKAR_PATH: dir };
}

const agents = new Set();

process.on('exit', () => {
  for (const agent of agents) agent.killNow();
});

/** A scratch directory for one scenario's wallets, removed by stopAgents. */
const scratchDirs = new Set();
export function scratchDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mpr-e2e-'));
  scratchDirs.add(dir);
  return dir;
}

/**
 * Starts one agent process of `flavour` with `config` (README.md) and resolves once it sent
 * `ready`. The result: call(cmd, args), waitFor(event, predicate), received events, signals.
 */
export async function startAgent(flavour, config, { readyTimeoutMs = 90_000 } = {}) {
  const child = fork(path.join(here, flavour.dir, flavour.entry), [JSON.stringify({ client: flavour.client, ...config })], {
    cwd: path.join(here, flavour.dir),
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      NODE_ENV: 'test',
      // Diagnostics the agents understand: E2E_TRACE=1 (queue and delivery order), E2E_CREDO_LOG=debug.
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('E2E_'))),
      ...nativeEnv(flavour),
    },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  const { log, append } = captureOutput(child);

  const pending = new Map();
  const events = [];
  const waiters = new Set();
  let nextId = 1;
  const gone = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  gone.then(({ code, signal }) => {
    append(`\n[exited: ${code ?? signal}]\n`);
    for (const { reject } of pending.values()) reject(new Error(`${config.label} exited (${code ?? signal})`));
    pending.clear();
    for (const waiter of waiters) waiter.fail(new Error(`${config.label} exited (${code ?? signal}) while waiting for ${waiter.what}`));
  });
  child.on('message', (message) => {
    if (message && message.id !== undefined && pending.has(message.id)) {
      const { resolve, reject } = pending.get(message.id);
      pending.delete(message.id);
      if (message.ok) resolve(message.result);
      else reject(new Error(`${config.label}: ${message.error}`));
    } else if (message && message.event) {
      message.at = Date.now(); // when the harness saw it (one clock for every process)
      events.push(message);
      for (const waiter of waiters) waiter.check(message);
    }
  });

  const agent = {
    label: config.label,
    config,
    pid: child.pid,
    events,
    log,
    exited: () => gone,
    /** Sends a command; rejects with the agent's error, on exit or after timeoutMs. */
    call(cmd, args = {}, timeoutMs = 60_000) {
      const id = nextId++;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new Error(`${config.label}: ${cmd} did not answer within ${timeoutMs} ms`));
        }, timeoutMs);
        pending.set(id, {
          resolve: (v) => (clearTimeout(timer), resolve(v)),
          reject: (e) => (clearTimeout(timer), reject(e)),
        });
        child.send({ id, cmd, args });
      });
    },
    /**
     * Resolves with the first `event` (already received or still to come) that satisfies
     * `predicate`; rejects after timeoutMs or when the agent exits.
     */
    waitFor(event, predicate = () => true, timeoutMs = 60_000, { since = 0 } = {}) {
      const match = (m) => m.event === event && predicate(m);
      const seen = events.slice(since).find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const waiter = {
          what: event,
          check: (m) => match(m) && (waiters.delete(waiter), clearTimeout(timer), resolve(m)),
          fail: (e) => (waiters.delete(waiter), clearTimeout(timer), reject(e)),
        };
        const timer = setTimeout(() => waiter.fail(new Error(`${config.label}: no ${event} within ${timeoutMs} ms`)), timeoutMs);
        waiters.add(waiter);
      });
    },
    signal(name) {
      process.kill(child.pid, name);
    },
    killNow() {
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    },
    /** Asks the agent to shut down; kills it if it does not exit in time. */
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGCONT');
        } catch {
          // already gone
        }
        const asked = agent.call('shutdown', {}, 10_000).catch(() => {});
        const done = await Promise.race([gone.then(() => true), sleep(10_000).then(() => false)]);
        await asked;
        if (!done) agent.killNow();
        await gone;
      }
      agents.delete(agent);
    },
  };
  agents.add(agent);
  try {
    await agent.waitFor('ready', () => true, readyTimeoutMs);
  } catch (error) {
    agent.killNow();
    error.message += `\n--- agent ${config.label} (pid ${child.pid}) log tail ---\n${log().slice(-4000)}`;
    throw error;
  }
  return agent;
}

/** Stops every agent (and load balancer) started here and removes the scratch directories. */
export async function stopAgents() {
  await Promise.all([...agents].map((agent) => agent.stop()));
  for (const balancer of balancers) balancer.close();
  balancers.clear();
  for (const dir of scratchDirs) fs.rmSync(dir, { recursive: true, force: true });
  scratchDirs.clear();
}

/**
 * Connects `sender` to `recipient` by the recipient's invitation and returns the sender's
 * connection id once the recipient has completed the connection too. The DID exchange's last
 * message (the sender's `complete`) travels through the recipient's mediator and its queue
 * after the sender's side is complete; still on its way, it would be queued among a scenario's
 * first messages, and be counted as one of them by a wait for "a message was queued".
 */
export async function connectSender(sender, recipient, { timeoutMs = 30_000 } = {}) {
  const { url } = await recipient.call('createInvitation');
  const { connectionId } = await sender.call('receiveInvitation', { url });
  let connections;
  const complete = await pollUntil(async () => {
    connections = await recipient.call('connections');
    return connections.every((c) => c.state === 'completed');
  }, { timeoutMs, intervalMs: 50 });
  if (!complete) throw new Error(`${recipient.label}: connections not completed within ${timeoutMs} ms: ${JSON.stringify(connections)}`);
  return connectionId;
}

/** The tail of every running or stopped agent's log, for a failed test's message. */
export function agentLogs(list) {
  return list
    .filter(Boolean)
    .map((a) => `--- agent ${a.label} (pid ${a.pid}) log tail ---\n${a.log().slice(-6000) || '(empty)'}`)
    .join('\n');
}

// ---------------------------------------------------------------------------------------------
// load balancer

const balancers = new Set();

/**
 * A plain TCP load balancer on a free 127.0.0.1 port, as mediator instances run behind one in
 * production: every instance advertises its address. Each new connection goes to the current
 * target (`route(port)`), and lives and dies with the backend connection it was paired with.
 */
export async function startBalancer(targetPort) {
  let target = targetPort;
  const pairs = new Set();
  const server = net.createServer((front) => {
    const back = net.connect({ host: '127.0.0.1', port: target });
    const pair = { front, back, target };
    pairs.add(pair);
    const close = () => {
      pairs.delete(pair);
      front.destroy();
      back.destroy();
    };
    front.on('error', close).on('close', close);
    back.on('error', close).on('close', close);
    front.pipe(back);
    back.pipe(front);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const balancer = {
    port: server.address().port,
    get url() {
      return `ws://127.0.0.1:${balancer.port}`;
    },
    /** New connections go to `port` from now on; open ones stay where they are. */
    route(port) {
      target = port;
    },
    /** How many open connections go to `port`. */
    openTo(port) {
      return [...pairs].filter((p) => p.target === port).length;
    },
    close() {
      for (const { front, back } of pairs) front.destroy(), back.destroy();
      server.close();
    },
  };
  balancers.add(balancer);
  return balancer;
}

/**
 * A TCP load balancer on a free 127.0.0.1 port in front of several backends that fails over:
 * each new connection goes to the first backend that accepts it, trying the preferred one
 * (`route(port)`, at first `ports[0]`) and then the others in order, so a dead backend is
 * skipped. A connection no backend accepts is closed. Open connections live and die with the
 * backend connection they were paired with.
 */
export async function startFailoverBalancer(ports) {
  if (!ports.length) throw new Error('startFailoverBalancer needs at least one backend port');
  let preferred = ports[0];
  const pairs = new Set();
  const order = () => [preferred, ...ports.filter((p) => p !== preferred)];
  const connectFirst = async (candidates) => {
    for (const port of candidates) {
      const back = net.connect({ host: '127.0.0.1', port });
      const accepted = await new Promise((resolve) => {
        back.once('connect', () => resolve(true));
        back.once('error', () => resolve(false));
      });
      if (accepted) return { back, port };
      back.destroy();
    }
    return null;
  };
  const server = net.createServer(async (front) => {
    front.pause(); // what the client sends first waits for a backend
    let frontGone = false;
    front.once('close', () => { frontGone = true; });
    front.on('error', () => {});
    const chosen = await connectFirst(order());
    if (!chosen || frontGone) {
      chosen?.back.destroy();
      front.destroy();
      return;
    }
    const { back, port } = chosen;
    const pair = { front, back, target: port };
    pairs.add(pair);
    const close = () => {
      pairs.delete(pair);
      front.destroy();
      back.destroy();
    };
    front.on('close', close);
    back.on('error', close).on('close', close);
    front.pipe(back);
    back.pipe(front);
    front.resume();
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const balancer = {
    port: server.address().port,
    ports,
    /** New connections try `port` first from now on; open ones stay where they are. */
    route(port) {
      if (!ports.includes(port)) throw new Error(`${port} is not a backend of this balancer (${ports.join(', ')})`);
      preferred = port;
    },
    /** Replaces the backends (for a balancer started before them); the first is preferred. */
    setBackends(newPorts) {
      ports.splice(0, ports.length, ...newPorts);
      preferred = ports[0];
    },
    /** How many open connections go to `port`. */
    openTo(port) {
      return [...pairs].filter((p) => p.target === port).length;
    },
    close() {
      for (const { front, back } of pairs) front.destroy(), back.destroy();
      server.close();
    },
  };
  balancers.add(balancer);
  return balancer;
}
