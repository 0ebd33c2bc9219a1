// The seed's HA mediator for real (docked.mjs): Credo 0.6.3 and 0.5.19 recipients whose
// mediator endpoint is a SocketDock WebSocket, stock Credo senders over the mediator's HTTP
// endpoint, two mediators/credo instances on one PostgreSQL wallet behind SocketDock, two
// servers. Recipients in Pickup V2 live mode get acknowledged deliveries (wrapped by the
// mediator, removed on messages-received). What the recipient received is asserted: content,
// count, order.

import assert from 'node:assert/strict';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { closeAllClients, freePort, pollUntil, startRedis, startServer, stopAll, uniquePrefix } from '../conformance/harness.mjs';
import { FLAVOURS, agentLogs, connectSender, scratchDir, startAgent, stopAgents } from './agents.mjs';
import { dockedLogs, joinPair, joinWorld, metricSum, offlineThenBack, startDockedWorld, stopDockedWorld, wokenWhileAway } from './docked.mjs';
import { startMediator, walletDatabaseName } from './mediator.mjs';
import { startSocketDock, stopSocketDocks } from './socketdock.mjs';
import { SERVER_ENV, assertReceived, newRun, percentile, received, sendAcknowledged, waitForAll, withLogTails } from './world.mjs';

const F06 = FLAVOURS.find((f) => f.dir === 'credo-0.6');
const F05 = FLAVOURS.find((f) => f.dir === 'credo-0.5' && f.client === 'project');
/** Messages sent one at a time, per path, for the latency figure (docs/performance.md: 100). */
const ONE_BY_ONE = Number(process.env.MPR_E2E_LATENCY_MESSAGES || 10);
/** After the last expected message: anything more would be a duplicate (or a re-delivery). */
const SETTLE_MS = Number(SERVER_ENV.VISIBILITY_TIMEOUT_MS) + 2000;

describe('HA mediator behind SocketDock: 2 SocketDock, 2 mpr, 2 mediators/credo on one PostgreSQL wallet', () => {
  let world;
  const pairs = {};
  const withLogs = withLogTails(() => dockedLogs(world));
  /** The view world.mjs's received / assertReceived / waitForAll take. */
  const view = (pair) => ({ recipient: pair.recipient });
  const pair = (flavour, pickup, label) => joinPair(world, flavour, { pickup, label });

  before(withLogs(async () => {
    world = await startDockedWorld();
  }));

  after(() => stopDockedWorld(world));

  test('mediation through SocketDock, live mode: every message once, in order, acknowledged (stock 0.6 and 0.5 senders)', withLogs(async () => {
    for (const flavour of [F06, F05]) pairs[flavour.dir] = await pair(flavour, 'live', `recipient-${flavour.dir}`);
    // Mediation (DID exchange, mediate-request, keylist-update, live-delivery-change) went through SocketDock.
    assert.ok((await metricSum(world, 'mpr_socketdock_frames_total', 'outcome="forwarded"')) >= 8, 'frames forwarded to the mediator');
    const run = newRun();
    for (const p of Object.values(pairs)) await sendAcknowledged(p.sender, p.connectionId, run, 10);
    for (const p of Object.values(pairs)) {
      await waitForAll(view(p), run, 10);
      assertReceived(view(p), run, 10, { ordered: p.flavour.pushOrder });
    }
    assert.ok((await metricSum(world, 'mpr_socketdock_deliveries_total', 'mode="pickup",outcome="ok"')) >= 1, 'acknowledged deliveries');
    // Acknowledged: nothing comes again once an unacknowledged message would have.
    const counts = Object.values(pairs).map((p) => received(view(p), run).length);
    await sleep(SETTLE_MS);
    assert.deepEqual(Object.values(pairs).map((p) => received(view(p), run).length), counts, 'nothing delivered again');
  }));

  test('offline, then back through the other SocketDock: the backlog oldest first (some from MongoDB), then live ones, each once; the clean close lost nothing', withLogs(async () => {
    await offlineThenBack(world, await live06());
  }));

  test('a recipient that gave its mediator an FCM token (RFC 0734) is woken while away, then gets what waited, once, in order', withLogs(async (t) => {
    await wokenWhileAway(world, await pair(F06, 'live', 'recipient-push'), t);
  }));

  test('implicit pickup and polling through SocketDock', withLogs(async () => {
    const implicit = await pair(F06, 'implicit', 'recipient-implicit');
    const polling = await pair(F06, 'poll', 'recipient-poll');
    const run = newRun();
    for (const p of [implicit, polling]) await sendAcknowledged(p.sender, p.connectionId, run, 5);
    for (const p of [implicit, polling]) {
      await waitForAll(view(p), run, 5);
      assertReceived(view(p), run, 5, { ordered: true });
    }
  }));

  /** The 0.6 live recipient of the first test (made here when that one did not run). */
  const live06 = async () => (pairs[F06.dir] ??= await pair(F06, 'live', `recipient-${F06.dir}`));

  test('latency, one message at a time: through SocketDock beside a recipient on a mediator\'s own WebSocket, same run', withLogs(async (t) => {
    const docked = await live06();
    // A second mediator (a wallet of its own) on the same servers, recipients on its WebSocket.
    const [httpPort, wsPort] = [await freePort(), await freePort()];
    const direct = await startMediator({
      label: 'mediator-websocket',
      env: {
        MPR_URL: world.servers[1].url, WALLET_ID: walletDatabaseName(), WALLET_KEY: 'direct', HTTP_PORT: String(httpPort),
        WS_PORT: String(wsPort), BIND_ADDRESS: '127.0.0.1', ENDPOINTS: `http://127.0.0.1:${httpPort},ws://127.0.0.1:${wsPort}`,
      },
    });
    const recipient = await joinWorld(world, F06, { role: 'recipient', label: 'recipient-websocket' });
    await recipient.call('connectMediator', { url: direct.invitationUrl });
    const connectionId = await connectSender(docked.sender, recipient);
    const onWebSocket = { recipient, sender: docked.sender, connectionId };
    const run = newRun();
    for (let seq = 0; seq < ONE_BY_ONE; seq++) {
      for (const p of [docked, onWebSocket]) {
        await sendAcknowledged(p.sender, p.connectionId, run, 1, { from: seq });
        await waitForAll(view(p), run, seq + 1);
      }
    }
    const figures = [['through SocketDock (acknowledged delivery)', docked], ['on the mediator\'s WebSocket', onWebSocket]].map(([path, p]) => {
      const latencies = assertReceived(view(p), run, ONE_BY_ONE).map((m) => m.receivedAt - m.sentAt).sort((a, b) => a - b);
      return `${path}: p50 ${percentile(latencies, 50)} ms, p99 ${percentile(latencies, 99)} ms`;
    });
    t.diagnostic(`sender send -> recipient receive, ${ONE_BY_ONE} messages one at a time each, interleaved: ${figures.join('; ')}`);
  }));

  test('the recipient frozen while messages go to its socket, killed, started again on its wallet: every message arrives', withLogs(async () => {
    const p = await live06();
    const delivered = await metricSum(world, 'mpr_socketdock_deliveries_total', 'mode="pickup",outcome="ok"');
    p.recipient.signal('SIGSTOP');
    const run = newRun();
    await sendAcknowledged(p.sender, p.connectionId, run, 5);
    // SocketDock took them for the frozen phone's socket (its 200 is no acknowledgement).
    const taken = await pollUntil(async () => (await metricSum(world, 'mpr_socketdock_deliveries_total', 'mode="pickup",outcome="ok"')) > delivered, { timeoutMs: 20_000, intervalMs: 100 });
    assert.ok(taken, 'deliveries were sent to the frozen recipient\'s socket');
    p.recipient.killNow();
    await p.recipient.exited();
    // The same wallet: the recipient starts pickup (live mode) by itself.
    p.recipient = await joinWorld(world, F06, { role: 'recipient', label: `${p.label}-again`, walletPath: p.recipient.config.walletPath, walletKey: p.recipient.config.walletKey });
    await waitForAll(view(p), run, 5, 90_000);
    assertReceived(view(p), run, 5, { ordered: true });
  }));

  // A wrap lease (MEDIATOR_TIMEOUT_MS + 2 x the send timeout) longer than the visibility
  // timeout used to leave the messages of a killed server's delivery loop waiting for the next
  // add (docs/architecture.md, "SocketDock sockets as peers"); this test caught it.
  test('kill -9 in turn a SocketDock, a server and a mediator under a steady stream: every acknowledged message arrives', withLogs(async (t) => {
    const p = await live06();
    const run = newRun();
    const per = 8;
    const retried = new Set();
    const send = async (from) => (await sendAcknowledged(p.sender, p.connectionId, run, per, { from, retries: 5 })).forEach((s) => retried.add(s));
    await send(0);
    // The SocketDock holding the recipient's socket.
    const dock = world.docks.find((d) => world.agentsBalancer.openTo(d.port) > 0);
    assert.ok(dock, 'the recipient is on a SocketDock');
    await dock.kill();
    await send(per);
    await world.servers[0].kill('SIGKILL');
    await send(2 * per);
    await world.mediators[0].kill();
    await send(3 * per);
    const total = 4 * per;
    await waitForAll(view(p), run, total, 120_000);
    await sleep(SETTLE_MS);
    const arrivals = received(view(p), run);
    const seqs = arrivals.map((m) => m.seq);
    const duplicates = seqs.length - new Set(seqs).size;
    t.diagnostic(`acknowledged ${total}, received ${seqs.length}, duplicates ${duplicates}, sends retried ${retried.size}`);
    console.log(`kill -9 of a SocketDock, a server and a mediator: acknowledged ${total}, received ${seqs.length}, duplicates ${duplicates}, sends retried ${retried.size}`);
    // Every message arrives; repeats only of what was in flight at a kill (a window's worth at most).
    assertReceived(view(p), run, total, { mayRepeat: () => true, ordered: false });
    assert.ok(duplicates <= 3 * 10, `at most a delivery's worth repeated per kill (${duplicates})`);
  }));
});

describe('a Credo 0.5 mediator behind SocketDock (the 0.5 transport)', () => {
  let world;
  after(async () => {
    await stopAgents();
    await stopSocketDocks();
    await closeAllClients();
    await stopAll();
  });

  test('mediation and live mode through SocketDock with a Credo 0.5.19 mediator and recipient', async () => {
    world = { agents: [] };
    try {
      const redis = await startRedis();
      const [framePort, httpPort] = [await freePort(), await freePort()];
      const dockPort = await freePort();
      const server = await startServer({
        redis,
        prefix: uniquePrefix(),
        name: 'mpr',
        env: { ...SERVER_ENV, MEDIATOR_URL: `http://127.0.0.1:${framePort}/`, SOCKETDOCK_SECRET: 's', SOCKETDOCK_ENDPOINTS: `http://127.0.0.1:${dockPort}` },
      });
      const dock = await startSocketDock({ backend: server, port: dockPort, name: 'sd' });
      const dir = scratchDir();
      const mediator = await startAgent(F05, {
        role: 'mediator', label: 'mediator-0.5', walletPath: path.join(dir, 'm.sqlite'), walletKey: 'm',
        inboundPort: httpPort, socketdockPort: framePort, mprUrl: server.url,
        endpoints: [`http://127.0.0.1:${httpPort}`, `ws://127.0.0.1:${dock.port}/ws`],
      });
      const recipient = await startAgent(F05, { role: 'recipient', label: 'recipient-0.5', walletPath: path.join(dir, 'r.sqlite'), walletKey: 'r', pickup: 'live', wsOnly: true });
      const sender = await startAgent(F05, { role: 'sender', label: 'sender-0.5', walletPath: path.join(dir, 's.sqlite'), walletKey: 's' });
      world.agents.push(mediator, recipient, sender);
      await recipient.call('connectMediator', { url: (await mediator.call('createInvitation')).url });
      const connectionId = await connectSender(sender, recipient);
      const run = newRun();
      await sendAcknowledged(sender, connectionId, run, 5);
      await waitForAll({ recipient }, run, 5);
      assertReceived({ recipient }, run, 5, { ordered: false });
      const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
      assert.match(text, /mpr_socketdock_deliveries_total\{mode="pickup",outcome="ok"\} [1-9]/, 'acknowledged deliveries wrapped by the 0.5 mediator');
    } catch (error) {
      error.message += `\n${agentLogs(world.agents)}`;
      throw error;
    }
  });
});
