// The seed's HA mediator, whole: mobile recipients' WebSockets in two real SocketDock
// instances, two mpr servers (SocketDock adapter on), two instances of the runnable Credo
// mediator (mediators/credo, INBOUND_MODE=socketdock) on one PostgreSQL wallet, Redis and
// SecantusDB, Google (FCM) played by google.mjs (or, given startMediators, other mediators: acapy-socketdock.test.mjs runs ACA-Py
// with mpr_acapy). Every hop goes through a failover balancer, as a deployment's load balancers:
//
//   recipient ─ws─▶ [agents] ─▶ SocketDock 1|2 ─callbacks─▶ [callbacks] ─▶ mpr 1|2
//   sender ─http─▶ [senders] ─▶ mediator A|B (HTTP_PORT)
//   mpr 1|2 ─frames, pickup deliveries─▶ [frames] ─▶ mediator A|B (SOCKETDOCK_PORT)
//   mediator A ─rpc─▶ [rpc A] ─▶ mpr 1|2;  mediator B ─rpc─▶ [rpc B] ─▶ mpr 2|1
//   mpr 1|2 ─POST send URL─▶ SocketDock 1|2 (direct: its --endpoint)
//
// The mediator advertises the senders' HTTP endpoint first and the agents' WebSocket second.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { closeAllClients, freePort, pollUntil, sleep, startMongo, startRedis, startServer, stopAll, uniquePrefix } from '../conformance/harness.mjs';
import { stopAcapyMediators } from './acapy.mjs';
import { agentLogs, connectSender, scratchDir, startAgent, startFailoverBalancer, stopAgents } from './agents.mjs';
import { mediatorLogs, startMediator, stopMediators, walletDatabaseName } from './mediator.mjs';
import { startGoogle } from './google.mjs';
import { startSocketDock, stopSocketDocks } from './socketdock.mjs';
import { SERVER_ENV, assertReceived, newRun, received, sendAcknowledged, waitForAll } from './world.mjs';

const SECRET = 'e2e-socketdock-secret';

/**
 * `startMediators({ rpcUrls, httpPorts, framePorts, endpoints })` starts the mediator instances
 * (instance i: RPC through rpcUrls[i], senders' HTTP on httpPorts[i], the servers' frames on
 * framePorts[i], advertising `endpoints`) and resolves with them, a reusable invitation URL and
 * `logs()` (their log tails); by default two mediators/credo instances on one PostgreSQL wallet.
 */
export async function startDockedWorld({ startMediators = startCredoMediators } = {}) {
  const world = { servers: [], docks: [], mediators: [], agents: [] };
  const [redis, mongo] = await Promise.all([startRedis(), startMongo()]);
  const prefix = uniquePrefix();

  // The callback balancer exists before the servers: SocketDock is started with its address,
  // the servers with SocketDock's.
  world.callbacks = await startFailoverBalancer([await freePort()]);
  for (const name of ['sd-1', 'sd-2']) {
    world.docks.push(await startSocketDock({ backend: `http://127.0.0.1:${world.callbacks.port}`, secret: SECRET, name, logLevel: 'WARNING' }));
  }
  const framePorts = [await freePort(), await freePort()];
  world.frames = await startFailoverBalancer(framePorts);
  // FCM: phones that gave their mediator a device token are woken while away.
  world.google = await startGoogle();
  world.dir = scratchDir();
  const env = {
    FIREBASE_CFG_FILE: world.google.serviceAccountFile(world.dir),
    FCM_BASE_URL: world.google.url,
    ...SERVER_ENV,
    MEDIATOR_URL: `http://127.0.0.1:${world.frames.port}/`,
    SOCKETDOCK_SECRET: SECRET,
    SOCKETDOCK_ENDPOINTS: world.docks.map((d) => d.endpoint).join(','),
    SOCKETDOCK_SEND_TIMEOUT_MS: '3000',
    MONGODB_URI: mongo.url('e2e'),
    THRESHOLD_TIMESTAMP: '1000',
    MOVER_INTERVAL_MS: '100',
    LOG_LEVEL: process.env.E2E_MPR_LOG || 'warn',
  };
  for (const name of ['mpr-1', 'mpr-2']) world.servers.push(await startServer({ redis, prefix, env, name }));
  const [s1, s2] = world.servers;
  world.callbacks.setBackends([s1.appPort, s2.appPort]);
  const rpc = [await startFailoverBalancer([s1.wsPort, s2.wsPort]), await startFailoverBalancer([s2.wsPort, s1.wsPort])];
  world.agentsBalancer = await startFailoverBalancer(world.docks.map((d) => d.port));
  const httpPorts = [await freePort(), await freePort()];
  world.senders = await startFailoverBalancer(httpPorts);

  const { mediators, invitationUrl, logs } = await startMediators({
    rpcUrls: rpc.map((balancer) => `ws://127.0.0.1:${balancer.port}`),
    httpPorts,
    framePorts,
    endpoints: [`http://127.0.0.1:${world.senders.port}`, `ws://127.0.0.1:${world.agentsBalancer.port}/ws`],
  });
  world.mediators = mediators;
  world.invitationUrl = invitationUrl;
  world.mediatorLogs = logs;
  world.rpc = rpc;
  return world;
}

async function startCredoMediators({ rpcUrls, httpPorts, framePorts, endpoints }) {
  const database = walletDatabaseName();
  const walletKey = randomBytes(16).toString('hex');
  const mediators = [];
  // One after the other: the first makes the wallet (two at once on a new one race; ha-mediator.test.mjs covers that).
  for (const [i, name] of ['A', 'B'].entries()) {
    mediators.push(await startMediator({
      label: `mediator-${name}`,
      env: {
        MPR_URL: rpcUrls[i],
        WALLET_ID: database,
        WALLET_KEY: walletKey,
        HTTP_PORT: String(httpPorts[i]),
        INBOUND_MODE: 'socketdock',
        SOCKETDOCK_PORT: String(framePorts[i]),
        BIND_ADDRESS: '127.0.0.1',
        ENDPOINTS: endpoints.join(','),
      },
    }));
  }
  return { mediators, invitationUrl: mediators[0].invitationUrl, logs: mediatorLogs };
}

/** A Credo agent of `flavour` in the world (`role` recipient or sender); recipients are phones: WebSocket only. */
export async function joinWorld(world, flavour, { role, label, pickup = 'live', walletPath, walletKey }) {
  const agent = await startAgent(flavour, {
    role,
    label,
    walletPath: walletPath ?? path.join(world.dir, `${label}.sqlite`),
    walletKey: walletKey ?? randomBytes(16).toString('hex'),
    ...(role === 'recipient' ? { pickup, wsOnly: true } : {}),
  });
  world.agents.push(agent);
  return agent;
}

/**
 * A recipient of `flavour` with `pickup`, mediated through SocketDock, and the world's sender of
 * the same Credo line (one per line) connected to it.
 */
export async function joinPair(world, flavour, { pickup = 'live', label }) {
  const recipient = await joinWorld(world, flavour, { role: 'recipient', label, pickup });
  await recipient.call('connectMediator', { url: world.invitationUrl });
  if (pickup === 'poll') await recipient.call('startPickup', {});
  world.senderAgents ??= {};
  world.senderAgents[flavour.dir] ??= await joinWorld(world, flavour, { role: 'sender', label: `sender-${flavour.dir}` });
  const sender = world.senderAgents[flavour.dir];
  const connectionId = await connectSender(sender, recipient);
  return { flavour, recipient, sender, connectionId, label };
}

/** The tails of every log of the world, for a failed test's message. */
export function dockedLogs(world) {
  return [agentLogs(world?.agents ?? []), world?.mediatorLogs?.() ?? '',
    ...(world?.docks ?? []).map((d) => `--- ${d.name} log tail ---\n${d.log().slice(-2500)}`),
    ...(world?.servers ?? []).map((s) => `--- ${s.name} (pid ${s.pid}) log tail ---\n${s.log().slice(-3000) || '(empty)'}`)].join('\n');
}

/** Stops everything a docked world started (either kind of mediator). */
export async function stopDockedWorld(world) {
  await world?.google?.close();
  await stopAgents();
  await stopMediators();
  await stopAcapyMediators();
  await stopSocketDocks();
  await closeAllClients();
  await stopAll();
}

/**
 * The pair `p` (a live recipient) closes its socket cleanly; six messages sent meanwhile are
 * moved to MongoDB; it comes back through the other SocketDock (after `whileAway`): asserts the
 * backlog oldest first, once, then four live ones, each once. (Their order is not asserted:
 * sent while the recipient may still be ending its pickup, one can come in a delivery-request's
 * reply and the next in a delivery.)
 */
export async function offlineThenBack(world, p, { whileAway = () => {} } = {}) {
  const view = { recipient: p.recipient };
  const docks = world.docks.map((d) => d.port);
  const before = docks.find((port) => world.agentsBalancer.openTo(port) > 0);
  await p.recipient.call('stopPickup');
  const run = newRun();
  const moved = await metricSum(world, 'mpr_cold_moved_total');
  await sendAcknowledged(p.sender, p.connectionId, run, 6);
  // Old enough to move to MongoDB (THRESHOLD_TIMESTAMP 1 s).
  assert.ok(await pollUntil(async () => (await metricSum(world, 'mpr_cold_moved_total')) >= moved + 6, { timeoutMs: 20_000, intervalMs: 200 }), 'the backlog moved to MongoDB');
  const other = docks.find((port) => port !== before) ?? docks[1];
  world.agentsBalancer.route(other);
  whileAway();
  await p.recipient.call('startPickup', {});
  await waitForAll(view, run, 6);
  assert.ok(world.agentsBalancer.openTo(other) >= 1, 'the recipient came back through the other SocketDock');
  assert.deepEqual(received(view, run).map((m) => m.seq), [0, 1, 2, 3, 4, 5], 'the backlog, oldest first, once');
  await sendAcknowledged(p.sender, p.connectionId, run, 4, { from: 6 });
  await waitForAll(view, run, 10);
  assertReceived(view, run, 10, { ordered: false });
}

/**
 * Aries RFC 0734: the pair `p` (a live Credo 0.6 recipient) gives its mediator an FCM token with
 * set-device-info, then stops its pickup; messages sent while it is away wake it through Google
 * (google.mjs: a push to its token, every request well formed); back, it gets what waited, once,
 * in order. `t` is the test's context (for a diagnostic line).
 */
export async function wokenWhileAway(world, p, t) {
  const view = { recipient: p.recipient };
  const token = `fcm-device-${newRun()}`;
  // set-device-info goes as a frame through SocketDock (the phone has no HTTP transport); its
  // socket must stay open until the server forwarded it (SocketDock drops a frame whose socket
  // closed), and the mediator answers a frame once it processed it.
  const forwarded = () => metricSum(world, 'mpr_socketdock_frames_total', 'outcome="forwarded"');
  // The pair was just made: the recipient may still be acknowledging the DID exchange's last
  // message, a frame of its own. Counted in place of set-device-info, it would let stopPickup
  // close the socket while SocketDock still held the token's frame, which it then drops.
  const frames = await quiet(forwarded, 2000);
  await p.recipient.call('setDeviceToken', { token });
  assert.ok(await pollUntil(async () => (await forwarded()) > frames, { timeoutMs: 20_000, intervalMs: 100 }), 'set-device-info reached the mediator');
  await p.recipient.call('stopPickup');
  const run = newRun();
  const pushed = () => world.google.messages.filter((m) => m.token === token);
  // Each message queued for a phone without a socket wakes it; the mediator takes the token
  // from its wallet with every add, so one sent before set-device-info was processed is not.
  let sent = 0;
  while (sent < 3 && pushed().length === 0) {
    await sendAcknowledged(p.sender, p.connectionId, run, 1, { from: sent });
    sent += 1;
    await pollUntil(async () => pushed().length > 0, { timeoutMs: 15_000, intervalMs: 100 });
  }
  assert.ok(pushed().length > 0, `a push to the device's token reached FCM (${world.google.messages.length} pushes in all)`);
  assert.deepEqual(world.google.refusals, [], 'every request to Google was well formed');
  t.diagnostic(`${sent} sent while away, ${pushed().length} pushes to the device's token: ${JSON.stringify(pushed()[0])}`);
  await p.recipient.call('startPickup', {});
  await waitForAll(view, run, sent);
  assertReceived(view, run, sent, { ordered: true });
}

/** `fn()`'s value once it stayed the same for `quietMs` (polled; at most 30 s). */
export async function quiet(fn, quietMs) {
  const deadline = Date.now() + 30_000;
  let value = await fn();
  let since = Date.now();
  while (Date.now() - since < quietMs) {
    assert.ok(Date.now() < deadline, `still changing after 30 s (last ${value})`);
    await sleep(100);
    const next = await fn();
    if (next !== value) [value, since] = [next, Date.now()];
  }
  return value;
}

/** Server metric lines of `name` (with labels), summed over the servers still running. */
export async function metricSum(world, name, labels = '') {
  let sum = 0;
  for (const server of world.servers) {
    try {
      const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
      for (const line of text.split('\n')) {
        if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) {
          if (labels && !line.includes(labels)) continue;
          sum += Number(line.split(' ').at(-1));
        }
      }
    } catch {
      // a killed server counts nothing
    }
  }
  return sum;
}
