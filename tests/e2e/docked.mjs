// The seed's HA mediator, whole: mobile recipients' WebSockets in two real SocketDock
// instances, two mpr servers (SocketDock adapter on), two instances of the runnable Credo
// mediator (mediators/credo, INBOUND_MODE=socketdock) on one PostgreSQL wallet, Redis and
// SecantusDB. Every hop goes through a failover balancer, as a deployment's load balancers:
//
//   recipient ─ws─▶ [agents] ─▶ SocketDock 1|2 ─callbacks─▶ [callbacks] ─▶ mpr 1|2
//   sender ─http─▶ [senders] ─▶ mediator A|B (HTTP_PORT)
//   mpr 1|2 ─frames, pickup deliveries─▶ [frames] ─▶ mediator A|B (SOCKETDOCK_PORT)
//   mediator A ─rpc─▶ [rpc A] ─▶ mpr 1|2;  mediator B ─rpc─▶ [rpc B] ─▶ mpr 2|1
//   mpr 1|2 ─POST send URL─▶ SocketDock 1|2 (direct: its --endpoint)
//
// The mediator advertises the senders' HTTP endpoint first and the agents' WebSocket second.

import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { freePort, startMongo, startRedis, startServer, uniquePrefix } from '../conformance/harness.mjs';
import { scratchDir, startAgent, startFailoverBalancer } from './agents.mjs';
import { startMediator, walletDatabaseName } from './mediator.mjs';
import { startSocketDock } from './socketdock.mjs';
import { SERVER_ENV } from './world.mjs';

const SECRET = 'e2e-socketdock-secret';

export async function startDockedWorld() {
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
  const env = {
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

  const database = walletDatabaseName();
  const walletKey = randomBytes(16).toString('hex');
  const endpoints = `http://127.0.0.1:${world.senders.port},ws://127.0.0.1:${world.agentsBalancer.port}/ws`;
  // One after the other: the first makes the wallet (two at once on a new one race; ha-mediator.test.mjs covers that).
  for (const [i, name] of ['A', 'B'].entries()) {
    world.mediators.push(await startMediator({
      label: `mediator-${name}`,
      env: {
        MPR_URL: `ws://127.0.0.1:${rpc[i].port}`,
        WALLET_ID: database,
        WALLET_KEY: walletKey,
        HTTP_PORT: String(httpPorts[i]),
        INBOUND_MODE: 'socketdock',
        SOCKETDOCK_PORT: String(framePorts[i]),
        BIND_ADDRESS: '127.0.0.1',
        ENDPOINTS: endpoints,
      },
    }));
  }
  world.invitationUrl = world.mediators[0].invitationUrl;
  world.dir = scratchDir();
  world.rpc = rpc;
  return world;
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
