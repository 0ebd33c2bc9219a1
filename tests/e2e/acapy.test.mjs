// ACA-Py 1.7 mediators with the mpr_acapy plugin (clients/acapy): forwards queued in real mpr
// servers on a real redis-server, real Credo recipients and senders (tests/e2e agents) picking
// up with Message Pickup 2.0. Asserts what the recipient received: content, count, order.

import assert from 'node:assert/strict';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { after, describe, test } from 'node:test';
import { call, closeAllClients, connect, startRedis, startServer, stopAll, uniquePrefix, pollUntil } from '../conformance/harness.mjs';
import { FLAVOURS, agentLogs, scratchDir, startAgent, stopAgents, startBalancer } from './agents.mjs';
import { acapyLogs, newWallet, postForward, postForwards, runPythonRecipient, startAcapyMediator, stopAcapyMediators } from './acapy.mjs';

const SERVER_ENV = { WS_PING_INTERVAL_MS: '300', WS_PING_MISSES: '3', VISIBILITY_TIMEOUT_MS: '8000', REDELIVERY_INTERVAL_MS: '200', LIVENESS_TIMEOUT_MS: '2000' };
const wanted = (process.env.MPR_E2E_FLAVOURS || '').split(',').filter(Boolean);
// Recipients and senders only: the project client does not matter, one per Credo line.
const CREDO = FLAVOURS.filter((f) => f.client === 'project').filter((f) => !wanted.length || wanted.some((w) => f.name.includes(w)));

/**
 * Redis, `instances` mpr servers, as many ACA-Py instances of one mediator (one wallet),
 * each on its own server, behind one balancer per transport; a Credo recipient (`pickup`)
 * mediated by instance A; a Credo sender connected to it whose forwards enter through the last.
 */
async function startWorld(flavour, { instances = 1, pickup = 'live', core = false } = {}) {
  const world = { flavour, servers: [], mediators: [] };
  try {
    const redis = core ? null : await startRedis();
    const prefix = uniquePrefix();
    Object.assign(world, { redis, prefix });
    for (let i = 0; i < (core ? 0 : instances); i++) world.servers.push(await startServer({ redis, prefix, env: SERVER_ENV, name: `mpr-${i + 1}` }));
    world.http = await startBalancer(0);
    world.ws = await startBalancer(0);
    const wallet = newWallet();
    for (let i = 0; i < instances; i++) {
      // One after the other: the first provisions the shared wallet.
      world.mediators.push(await startAcapyMediator({
        label: `acapy-${'AB'[i]}`, wallet, mprUrl: world.servers[i]?.url, plugin: !core,
        endpoints: [world.ws.url, `http://127.0.0.1:${world.http.port}`],
      }));
    }
    world.route = (i) => {
      world.http.route(world.mediators[i].httpPort);
      world.ws.route(world.mediators[i].wsPort);
    };
    world.route(0);
    const dir = scratchDir();
    world.recipient = await startAgent(flavour, {
      role: 'recipient', label: 'recipient', pickup,
      walletPath: path.join(dir, 'recipient.sqlite'), walletKey: randomBytes(16).toString('hex'),
    });
    await world.recipient.call('connectMediator', { url: (await world.mediators[0].createInvitation()).url });
    world.connectionId = await world.mediators[0].grantedConnectionId();
    world.route(instances - 1);
    world.sender = await startAgent(flavour, {
      role: 'sender', label: 'sender',
      walletPath: path.join(dir, 'sender.sqlite'), walletKey: randomBytes(16).toString('hex'),
    });
    const invitation = await world.recipient.call('createInvitation');
    // A polling recipient picks up the DID exchange through its mediator, then goes offline.
    if (pickup === 'poll') await world.recipient.call('startPickup');
    world.senderConnectionId = (await world.sender.call('receiveInvitation', { url: invitation.url })).connectionId;
    if (!core) world.rpc = await connect(world.servers[0].url);
    // The DID exchange's last message reaches the recipient after the sender's connection is
    // complete; queued during a run it would count as one of the run's in sendSequence.
    if (pickup !== 'poll') await settle(world);
    return world;
  } catch (error) {
    error.message += `\n${logs(world)}`;
    throw error;
  }
}

async function stopWorld() {
  await stopAgents();
  await stopAcapyMediators();
  await closeAllClients();
  await stopAll();
}

function logs(world) {
  if (!world) return '';
  return [agentLogs([world.recipient, world.sender]), acapyLogs(world.mediators),
    ...world.servers.map((s) => `--- ${s.name} log tail ---\n${s.log().slice(-3000)}`)].join('\n');
}

function scenario(getWorld, fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (error) {
      if (error && typeof error === 'object') error.message += `\n${logs(getWorld())}`;
      throw error;
    }
  };
}

const queued = (world) => call(world.rpc, 'getAvailableMessageCount', { connectionId: world.connectionId });
const addsOk = async (world) => {
  let sum = 0;
  for (const server of world.servers) {
    let text = '';
    try {
      text = await (await fetch(`${server.httpUrl}/metrics`)).text();
    } catch {
      continue; // a stopped server added nothing more
    }
    for (const line of text.split('\n')) {
      if (line.startsWith('mpr_calls_total{') && line.includes('method="addMessage"') && line.includes('outcome="ok"')) sum += Number(line.split(' ').at(-1));
    }
  }
  return sum;
};

/** Sends seq 0..count-1, each once a server queued the one before (the send order is the queue order). */
async function sendSequence(world, run, count, { from = 0 } = {}) {
  for (let seq = from; seq < from + count; seq++) {
    const before = await addsOk(world);
    await world.sender.call('send', { connectionId: world.senderConnectionId, content: JSON.stringify({ run, seq, sentAt: Date.now() }) });
    assert.ok(await pollUntil(async () => (await addsOk(world)) > before, { timeoutMs: 20_000, intervalMs: 20 }), `seq ${seq} queued within 20 s`);
  }
}

function received(world, run) {
  return world.recipient.events.filter((e) => e.event === 'basicMessage').map((e) => {
    try {
      return { ...JSON.parse(e.content), receivedAt: e.receivedAt };
    } catch {
      return {};
    }
  }).filter((m) => m.run === run);
}

async function waitForAll(world, run, count, timeoutMs = 60_000) {
  const complete = () => new Set(received(world, run).map((m) => m.seq)).size >= count;
  if (!complete()) await world.recipient.waitFor('basicMessage', complete, timeoutMs);
}

function assertOnceInOrder(world, run, count, { ordered = true } = {}) {
  const seqs = received(world, run).map((m) => m.seq);
  assert.deepEqual([...new Set(seqs)].sort((a, b) => a - b), [...Array(count).keys()], 'every message arrived');
  assert.equal(seqs.length, count, `each once (got ${seqs.join(',')})`);
  if (ordered) assert.deepEqual(seqs, [...Array(count).keys()], 'in send order');
}

const newRun = () => randomBytes(4).toString('hex');

/**
 * Takes the recipient offline once everything before is delivered: the DID exchange's last
 * message reaches the recipient after the sender's connection is complete, and queued later it
 * would count as one of a run's messages in sendSequence.
 */
async function settle(world) {
  const run = newRun();
  await world.sender.call('send', { connectionId: world.senderConnectionId, content: JSON.stringify({ run, seq: 0 }) });
  await waitForAll(world, run, 1);
}

async function goOffline(world) {
  await settle(world);
  assert.ok(await pollUntil(async () => (await queued(world)) === 0, { timeoutMs: 20_000 }), 'all delivered before going offline');
  await world.recipient.call('stopPickup');
  // A delivery whose messages-received the closing socket cut off would be pending again after
  // the visibility timeout, inside the next run's count.
  await call(world.rpc, 'removeAllMessages', { connectionId: world.connectionId });
}

for (const flavour of CREDO) {
  describe(`ACA-Py mediator with mpr_acapy, live mode: ${flavour.name} recipient`, () => {
    let world;
    after(() => stopWorld());

    test('across two instances: sent through B, live on A, each once, in order', scenario(() => world, async () => {
      world = await startWorld(flavour, { instances: 2 });
      const run = newRun();
      await sendSequence(world, run, 20);
      await waitForAll(world, run, 20);
      assertOnceInOrder(world, run, 20, { ordered: flavour.pushOrder });
      assert.ok(await pollUntil(async () => (await queued(world)) === 0, { timeoutMs: 20_000 }), 'the queue drained (acknowledged)');
    }));

    test('instance A killed while live: the recipient reconnects to B and gets every message (again only what A delivered unacknowledged)', scenario(() => world, async () => {
      const run = newRun();
      await sendSequence(world, run, 5);
      await waitForAll(world, run, 5);
      assert.ok(await pollUntil(async () => (await queued(world)) === 0, { timeoutMs: 20_000 }), 'the first five acknowledged');
      world.mediators[0].killNow();
      await world.mediators[0].exited();
      // Sent while the recipient has no mediator socket: queued, then picked up through B.
      await sendSequence(world, run, 10, { from: 5 });
      await waitForAll(world, run, 15, 90_000);
      // At least once: one A delivered whose messages-received it had not handled when it died
      // comes again through B; a message sent after the kill comes once.
      const seqs = received(world, run).map((m) => m.seq);
      assert.deepEqual([...new Set(seqs)].sort((a, b) => a - b), [...Array(15).keys()], 'every message arrived');
      for (let seq = 0; seq < 15; seq++) {
        const times = seqs.filter((s) => s === seq).length;
        assert.ok(seq < 5 ? times <= 2 : times === 1, `seq ${seq} arrived ${times} times (${seqs.join(',')})`);
      }
      assert.ok(await pollUntil(async () => (await queued(world)) === 0, { timeoutMs: 20_000 }), 'the queue drained');
    }));

    test('B\'s server killed -9 and started again: the plugin reconnects, re-adds the live session, and the recipient keeps receiving', scenario(() => world, async () => {
      const old = world.servers[1];
      const run = newRun();
      await sendSequence(world, run, 3);
      await waitForAll(world, run, 3);
      // Acknowledged, not only delivered: the server holds no bytes, pending or in flight (an
      // acknowledgement cut off by the kill would make a message come again).
      const held = async () => (await call(world.rpc, 'getQueueStatus', { connectionId: world.connectionId })).totalBytes;
      assert.ok(await pollUntil(async () => (await held()) === 0, { timeoutMs: 20_000 }), 'the first three acknowledged');
      old.kill('SIGKILL');
      await old.exited();
      const B = world.mediators[1];
      const reconnects = () => (B.log().match(/mpr reconnected to/g) ?? []).length;
      const before = reconnects();
      world.servers[1] = await startServer({ redis: world.redis, prefix: world.prefix, env: SERVER_ENV, name: 'mpr-2-again', ports: { wsPort: old.wsPort, appPort: old.appPort } });
      assert.ok(await pollUntil(async () => reconnects() > before, { timeoutMs: 60_000, intervalMs: 100 }), 'B reconnected to its server');
      // Re-added on reconnect (server 1 answers for the shared Redis).
      assert.ok(await pollUntil(() => call(world.rpc, 'getLiveSession', { connectionId: world.connectionId }), { timeoutMs: 20_000, intervalMs: 100 }), 'the live session is bound again');
      await sendSequence(world, run, 5, { from: 3 });
      await waitForAll(world, run, 8);
      // Each once; the order is not asserted here: since the previous test's reconnect, the
      // recipient was seen (1 of 2 runs) to get neighbours swapped before the kill already.
      assertOnceInOrder(world, run, 8, { ordered: false });
      assert.ok(await pollUntil(async () => (await queued(world)) === 0, { timeoutMs: 20_000 }), 'the queue drained');
    }));

    test('the server unreachable: a forward is answered 503 and nothing is stored', scenario(() => world, async () => {
      // A fresh invitation of the recipient: its key is routed by the mediator (now instance B).
      const { url } = await world.recipient.call('createInvitation');
      const oob = JSON.parse(Buffer.from(new URL(url).searchParams.get('oob'), 'base64url').toString());
      const { recipientKeys: [recipientKey], routingKeys: [routingKey] } = oob.services[0];
      const B = world.mediators[1];
      const post = () => postForward(`http://127.0.0.1:${B.httpPort}`, routingKey, recipientKey);
      const before = await addsOk(world);
      assert.equal(await post(), 200, 'with the server up the forward is accepted');
      assert.equal(await addsOk(world), before + 1, 'and stored before the answer');
      await call(world.rpc, 'removeAllMessages', { connectionId: world.connectionId });
      await world.servers[1].stop();
      assert.equal(await post(), 503, 'with B\'s server gone the forward is refused');
      // Read through server 1 (same Redis): a message stored anyway would be pending here, as
      // the recipient's live session on B ended with B's server.
      assert.equal(await queued(world), 0, 'nothing is queued for the recipient');
    }));
  });

  describe(`ACA-Py mediator with mpr_acapy, polling: ${flavour.name} recipient`, () => {
    let world;
    after(() => stopWorld());

    test('sent while offline, then picked up in pages with status / delivery-request / messages-received', scenario(() => world, async () => {
      world = await startWorld(flavour, { pickup: 'poll' });
      await goOffline(world);
      const run = newRun();
      await sendSequence(world, run, 25);
      assert.equal(await queued(world), 25, 'all 25 queued on the server while the recipient is offline');
      assert.equal(received(world, run).length, 0);
      await world.recipient.call('startPickup');
      await waitForAll(world, run, 25);
      assertOnceInOrder(world, run, 25, { ordered: flavour.batchOrder });
      assert.ok(await pollUntil(async () => (await queued(world)) === 0, { timeoutMs: 20_000 }), 'the queue drained (messages-received removed them)');
    }));
  });

  describe(`ACA-Py mediator with mpr_acapy, implicit pickup: ${flavour.name} recipient`, () => {
    let world;
    after(() => stopWorld());

    test('a return-route socket gets the whole backlog in order, then new messages as they come', scenario(() => world, async () => {
      world = await startWorld(flavour, { pickup: 'implicit' });
      await goOffline(world);
      const run = newRun();
      await sendSequence(world, run, 15);
      assert.equal(await queued(world), 15, 'queued while the recipient is offline');
      assert.equal(received(world, run).length, 0);
      await world.recipient.call('startPickup');
      await waitForAll(world, run, 15);
      await sendSequence(world, run, 10, { from: 15 });
      await waitForAll(world, run, 25);
      assertOnceInOrder(world, run, 25, { ordered: flavour.pushOrder });
      assert.ok(await pollUntil(async () => (await queued(world)) === 0, { timeoutMs: 20_000 }), 'the queue drained');
    }));
  });
}

describe('ACA-Py mediator with mpr_acapy: a Python recipient (status fields, recipient_key, partial messages-received)', () => {
  after(() => stopWorld());
  let world;

  test('status, delivery-request by recipient_key and in pages, messages-received of part of a delivery', scenario(() => world, async () => {
    world = { servers: [], mediators: [] };
    const redis = await startRedis();
    world.servers.push(await startServer({ redis, prefix: uniquePrefix(), env: SERVER_ENV }));
    world.mediators.push(await startAcapyMediator({ label: 'acapy-A', wallet: newWallet(), mprUrl: world.servers[0].url }));
    const r = await runPythonRecipient(world.mediators[0]);
    world.rpc = await connect(world.servers[0].url);
    world.connectionId = r.connectionId;
    assert.equal(r.grant, 'https://didcomm.org/coordinate-mediation/1.0/mediate-grant');
    assert.deepEqual(r.keylistUpdate, ['success', 'success']);
    assert.deepEqual(r.forwards, [200, 200, 200, 200, 200], 'five forwards (keys 0,1,0,1,0) stored');
    const [key0, key1] = r.keys;
    assert.equal(r.status['@type'], 'https://didcomm.org/messagepickup/2.0/status');
    assert.equal(r.status.message_count, 5);
    assert.equal(r.status.live_delivery, false);
    assert.equal(r.status.total_bytes, r.sizes.reduce((a, b) => a + b, 0), 'total_bytes: the five envelopes');
    assert.match(r.status.oldest_received_time, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    assert.match(r.status.newest_received_time, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    assert.ok(r.status.oldest_received_time <= r.status.newest_received_time);
    assert.ok(Number.isInteger(r.status.longest_waited_seconds) && r.status.longest_waited_seconds >= 0 && r.status.longest_waited_seconds < 120);
    assert.equal(r.statusKey1.total_bytes, undefined, 'no bytes per recipient key');
    assert.ok(r.statusKey1.oldest_received_time >= r.status.oldest_received_time, "key 1's oldest is the second message");
    assert.equal(r.afterAll.oldest_received_time, undefined, 'nothing pending: no times');
    assert.equal(r.status['~thread'].thid !== undefined, true, 'the status answers its request');
    assert.equal(r.statusKey1.message_count, 2, 'status for recipient_key counts only its messages');
    assert.equal(r.deliveryKey1.type, 'https://didcomm.org/messagepickup/2.0/delivery');
    assert.equal(r.deliveryKey1.ids.length, 2, 'delivery for recipient_key: only its two messages');
    assert.deepEqual(r.deliveryKey1.kids, [[key1], [key1]]);
    for (const id of r.deliveryKey1.ids) assert.match(id, /^[0-9a-f]{24}$/, 'attachment ids are the server\'s message ids');
    assert.equal(r.afterPartial.message_count, 3, 'one acknowledged, the other in flight: three pending');
    assert.deepEqual(r.deliveryFirstTwo.kids, [[key0], [key0]], 'a page of two, oldest first');
    assert.equal(r.afterTwo.message_count, 1);
    assert.deepEqual(r.deliveryRest.kids, [[key0]]);
    assert.equal(r.afterAll.message_count, 0);
    assert.equal(r.emptyDelivery['@type'], 'https://didcomm.org/messagepickup/2.0/status', 'nothing left: a status, not an empty delivery');
    assert.equal(r.emptyDelivery.message_count, 0);
    assert.equal(await call(world.rpc, 'getAvailableMessageCount', { connectionId: r.connectionId }), 0);
    const left = await call(world.rpc, 'takeFromQueue', { connectionId: r.connectionId });
    assert.deepEqual(left, [], 'the partially acknowledged delivery\'s second message was removed with the rest');
  }));
});

// docs/performance.md: MPR_E2E_ACAPY_BENCH=300 runs it (not in CI). Core ACA-Py (its in-memory
// queue, implicit pickup: the only pickup it has) beside the plugin (live mode), same machine,
// same run, Credo 0.6 recipient and sender.
describe('ACA-Py forward latency and rate: core vs mpr_acapy', { skip: !process.env.MPR_E2E_ACAPY_BENCH }, () => {
  const count = Number(process.env.MPR_E2E_ACAPY_BENCH);
  const flavour = FLAVOURS.find((f) => f.dir === 'credo-0.6');
  for (const core of [true, false]) {
    test(core ? 'core ACA-Py, implicit pickup' : 'mpr_acapy, live mode', async (t) => {
      const world = await startWorld(flavour, core ? { core, pickup: 'implicit' } : {});
      try {
        const run = newRun();
        for (let seq = 0; seq < count; seq++) {
          await world.sender.call('send', { connectionId: world.senderConnectionId, content: JSON.stringify({ run, seq, sentAt: Date.now() }) });
          await waitForAll(world, run, seq + 1);
        }
        const latencies = received(world, run).map((m) => m.receivedAt - m.sentAt).sort((a, b) => a - b);
        const at = (p) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))];
        const { url } = await world.recipient.call('createInvitation');
        const oob = JSON.parse(Buffer.from(new URL(url).searchParams.get('oob'), 'base64url').toString());
        const { recipientKeys: [recipientKey], routingKeys: [routingKey] } = oob.services[0];
        const forwards = count * 4;
        const rate = await postForwards(`http://127.0.0.1:${world.mediators[0].httpPort}`, routingKey, recipientKey, forwards, 8);
        t.diagnostic(`${core ? 'core' : 'mpr_acapy'}: send -> receive over ${latencies.length} one at a time: p50 ${at(50)} ms, p99 ${at(99)} ms; ${forwards} forwards from 8 threads: ${(forwards / rate.seconds).toFixed(0)}/s (${JSON.stringify(rate.statuses)})`);
      } finally {
        await stopWorld();
      }
    });
  }
});
