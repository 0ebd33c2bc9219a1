// One scenario's world: Redis (and MongoDB for the cold tier), `instances` mpr servers, as many
// instances of one Credo mediator (sharing one wallet, each on its own mpr server) behind a
// plain TCP load balancer, a recipient with a mediator, and a sender connected to the recipient
// through the mediator. Messages carry `{run, seq, sentAt}` so the recipient's log says what
// arrived, how often, in which order and how late.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  call, closeAllClients, connect, startMongo, startRedis, startServer, stopAll, uniquePrefix, freePort, pollUntil,
} from '../conformance/harness.mjs';
import { agentLogs, connectSender, scratchDir, startAgent, startBalancer, stopAgents } from './agents.mjs';

/**
 * Server settings every scenario shares: dead mediator sockets are found within about a
 * second (pings 300 ms × 3). A pushed message unacknowledged after the visibility timeout is
 * pushed again: 8 s is long enough for a Credo recipient working through a backlog (about
 * 70 ms per message here) and short enough to see in a test that nothing comes again.
 */
export const SERVER_ENV = {
  WS_PING_INTERVAL_MS: '300',
  WS_PING_MISSES: '3',
  VISIBILITY_TIMEOUT_MS: '8000',
  REDELIVERY_INTERVAL_MS: '200',
  LIVENESS_TIMEOUT_MS: '2000',
};

export async function startWorld(flavour, { instances = 1, cold = false, serverEnv = {} } = {}) {
  const world = { flavour, servers: [], mediators: [], recipient: null, sender: null };
  try {
    const [redis, mongo] = await Promise.all([startRedis(), cold ? startMongo() : null]);
    const prefix = uniquePrefix();
    const env = {
      ...SERVER_ENV,
      ...(cold ? { MONGODB_URI: mongo.url('e2e'), THRESHOLD_TIMESTAMP: '1000', MOVER_INTERVAL_MS: '100' } : {}),
      ...serverEnv,
    };
    for (let i = 0; i < instances; i++) world.servers.push(await startServer({ redis, prefix, env, name: `mpr-${i + 1}` }));
    world.redis = redis;
    world.mongo = mongo;

    const dir = scratchDir();
    const mediatorWallet = { walletPath: path.join(dir, 'mediator.sqlite'), walletKey: randomBytes(16).toString('hex') };
    const inboundPorts = [];
    for (let i = 0; i < instances; i++) inboundPorts.push(await freePort());
    world.inboundPorts = inboundPorts;
    world.balancer = await startBalancer(inboundPorts[0]);
    // One after the other: the first creates the shared wallet's records, the others find them.
    for (let i = 0; i < instances; i++) {
      world.mediators.push(
        await startAgent(flavour, {
          role: 'mediator',
          label: `mediator-${'AB'[i] ?? i}`,
          ...mediatorWallet,
          inboundPort: inboundPorts[i],
          endpoints: [world.balancer.url],
          mprUrl: world.servers[i].url,
        }),
      );
    }

    world.recipient = await startAgent(flavour, {
      role: 'recipient',
      label: 'recipient',
      walletPath: path.join(dir, 'recipient.sqlite'),
      walletKey: randomBytes(16).toString('hex'),
      pickup: 'live',
    });
    const mediation = await world.mediators[0].call('createInvitation');
    await world.recipient.call('connectMediator', { url: mediation.url });
    const session = await world.mediators[0].waitFor('liveSession');
    world.recipientConnectionId = session.connectionId;

    // The sender's messages enter through the last instance: with two, recipient on A, sender on B.
    world.balancer.route(inboundPorts[instances - 1]);
    world.sender = await startAgent(flavour, {
      role: 'sender',
      label: 'sender',
      walletPath: path.join(dir, 'sender.sqlite'),
      walletKey: randomBytes(16).toString('hex'),
    });
    world.senderConnectionId = await connectSender(world.sender, world.recipient);
    world.rpc = await connect(world.servers[instances - 1].url);
    return world;
  } catch (error) {
    error.message += `\n${worldLogs(world)}`;
    await stopWorld(world);
    throw error;
  }
}

export async function stopWorld() {
  await stopAgents();
  await closeAllClients();
  await stopAll();
}

/** Logs of everything in the world, for a failed assertion's message. */
export function worldLogs(world) {
  const servers = world.servers.map((s) => `--- ${s.name} (pid ${s.pid}) log tail ---\n${s.log().slice(-3000) || '(empty)'}`);
  return [agentLogs([...world.mediators, world.recipient, world.sender]), ...servers].join('\n');
}

/** Wraps a test body so that a failure's error carries `logs()` (every process's log tail; a string or its promise). */
export function withLogTails(logs) {
  return (fn) => async (t) => {
    try {
      await fn(t);
    } catch (error) {
      if (error && typeof error === 'object') {
        try {
          error.message += `\n${await logs()}`;
        } catch {
          // a frozen error
        }
      }
      throw error;
    }
  };
}

/** Runs a scenario body; on failure its error carries every process's log tail. */
export function scenario(getWorld, fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (error) {
      const world = getWorld();
      if (world && error && typeof error === 'object') {
        try {
          error.message += `\n${worldLogs(world)}`;
        } catch {
          // a frozen error
        }
      }
      throw error;
    }
  };
}

export const newRun = () => randomBytes(4).toString('hex');

/** One server's successful addMessage calls so far (a server that does not answer counts 0). */
export async function messagesAddedBy(server) {
  try {
    const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
    return text.split('\n')
      .filter((line) => line.startsWith('mpr_calls_total{') && line.includes('method="addMessage"') && line.includes('outcome="ok"'))
      .reduce((sum, line) => sum + Number(line.split(' ').at(-1)), 0);
  } catch {
    return 0;
  }
}

/** The servers' successful addMessage calls so far. */
async function messagesAdded(world) {
  const counts = await Promise.all(world.servers.map(messagesAddedBy));
  return counts.reduce((a, b) => a + b, 0);
}

/**
 * Sends seq 0..count-1 of `run` from the sender to the recipient, one after the other: each
 * once a server has queued the one before. A Credo mediator works on the forwards that reach
 * its socket together concurrently, so two sent back to back can reach the server swapped;
 * waiting makes the order the server accepts the send order, and the recipient's order then
 * tests what the server and the clients do with it. Pushes to the recipient stay pipelined.
 * "A server queued it" is any successful add: it is this message's only because nothing else is
 * on its way to a server (connectSender waits for the DID exchange's last message).
 */
export async function sendSequence(world, run, count, { from = 0 } = {}) {
  for (let seq = from; seq < from + count; seq++) {
    const before = await messagesAdded(world);
    await world.sender.call('send', { connectionId: world.senderConnectionId, content: JSON.stringify({ run, seq, sentAt: Date.now() }) });
    const queued = await pollUntil(async () => (await messagesAdded(world)) > before, { timeoutMs: 20_000, intervalMs: 10 });
    assert.ok(queued, `seq ${seq} of run ${run} was queued by a server within 20 s of sending`);
  }
}

/** Sends seq [from, from+count) of `run`, each once the sender's HTTP POST to the mediator was answered (queued). */
export async function sendAcknowledged(sender, connectionId, run, count, { from = 0, retries = 0 } = {}) {
  const retried = new Set();
  for (let seq = from; seq < from + count; seq++) {
    const content = JSON.stringify({ run, seq, sentAt: Date.now() });
    for (let attempt = 0; ; attempt++) {
      try {
        await sender.call('send', { connectionId, content }, 30_000);
        break;
      } catch (error) {
        // A mediator or server killed under the POST: the outcome is unknown, the sender retries
        // (a message queued before the kill then arrives twice).
        if (attempt >= retries) throw error;
        retried.add(seq);
        await sleep(500);
      }
    }
  }
  return retried;
}

/** The recipient's basic messages of `run`, in the order they arrived. */
export function received(world, run) {
  const out = [];
  for (const event of world.recipient.events) {
    if (event.event !== 'basicMessage') continue;
    let body;
    try {
      body = JSON.parse(event.content);
    } catch {
      continue;
    }
    if (body.run === run) out.push({ ...body, receivedAt: event.receivedAt });
  }
  return out;
}

/** Waits until the recipient has every seq in [0, count) of `run` at least once. */
export async function waitForAll(world, run, count, timeoutMs = 60_000) {
  const complete = () => new Set(received(world, run).map((m) => m.seq)).size >= count;
  if (complete()) return;
  await world.recipient.waitFor('basicMessage', complete, timeoutMs).catch((error) => {
    const seqs = [...new Set(received(world, run).map((m) => m.seq))].sort((a, b) => a - b);
    error.message += ` (run ${run}: ${seqs.length}/${count} received: ${seqs.join(',')})`;
    throw error;
  });
}

/**
 * Asserts that the recipient got every seq of `run` in [0, count), nothing else, and each
 * exactly once unless listed in `mayRepeat` (messages delivered but not yet acknowledged when
 * a mediator died come again: at least once, never lost). Returns the arrivals.
 */
export function assertReceived(world, run, count, { mayRepeat = () => false, ordered = true } = {}) {
  const arrivals = received(world, run);
  const seqs = arrivals.map((m) => m.seq);
  const distinct = [...new Set(seqs)];
  assert.deepEqual([...distinct].sort((a, b) => a - b), [...Array(count).keys()], `every message of run ${run} arrived`);
  const repeated = seqs.filter((s, i) => seqs.indexOf(s) !== i);
  assert.deepEqual(repeated.filter((s) => !mayRepeat(s)), [], 'no message arrived twice');
  if (ordered) assert.deepEqual(distinct, [...distinct].sort((a, b) => a - b), 'first arrivals in send order');
  return arrivals;
}

/** Messages still queued (hot and cold) for the recipient's connection on the server. */
export function queued(world) {
  return call(world.rpc, 'getAvailableMessageCount', { connectionId: world.recipientConnectionId });
}

/**
 * Asserts that every delivery of `run` was acknowledged: the server holds nothing for the
 * recipient, and nothing is delivered again once an unacknowledged message would have been
 * (the visibility timeout and a sweep later).
 */
export async function assertSettled(world, run) {
  const empty = await pollUntil(async () => (await queued(world)) === 0, { timeoutMs: 30_000, intervalMs: 200 });
  assert.ok(empty, `the recipient's queue drained (still ${await queued(world)})`);
  // A Credo recipient works through what it was sent long after it was sent (tens of ms per
  // message): count once it has been quiet for a while, well inside the visibility timeout.
  for (let waited = 0, seen = -1; seen !== world.recipient.events.length && waited < 60_000; waited += 2000) {
    seen = world.recipient.events.length;
    await sleep(2000);
  }
  const arrivals = received(world, run).length;
  await sleep(Number(SERVER_ENV.VISIBILITY_TIMEOUT_MS) + 4 * Number(SERVER_ENV.REDELIVERY_INTERVAL_MS) + 500);
  assert.equal(await queued(world), 0, 'nothing came back to the queue');
  assert.equal(received(world, run).length, arrivals, 'nothing was delivered again after the visibility timeout');
}

export function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
