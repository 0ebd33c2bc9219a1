// The Credo 0.6 queue transport repository and the agent wiring of both versions, with stand-in
// agents (an EventEmitter-like `events`, a recording `deliverMessages`); real agents: tests/e2e.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  CREDO05_LIVE_SESSION_EVENTS,
  CREDO06_LIVE_SESSION_EVENTS,
  MessagePickupRepositoryClient,
  MprError,
  MprQueueTransportRepository,
  attachToCredo05Agent,
} from '../build/index.js';
import {
  MESSAGE_ID,
  call,
  closeAllClients,
  connect,
  didKey,
  fakeEvents,
  fakePickup,
  payload,
  pollUntil,
  startRedis,
  startServer,
  stopAll,
  uniquePrefix,
  uuid,
} from './helpers.mjs';

let server;
let other;
const closers = [];
const agentContext = { contextCorrelationId: 'default' };

before(async () => {
  const redis = await startRedis();
  server = await startServer({ redis, prefix: uniquePrefix() });
  other = await connect(server.url);
});

after(async () => {
  await Promise.all(closers.map((close) => close()));
  await closeAllClients();
  await stopAll();
});

async function repository(options = {}) {
  const repo = new MprQueueTransportRepository({ url: server.url, ...options });
  closers.push(() => repo.disconnect());
  await repo.connect();
  return repo;
}

const isLive = (connectionId) => call(other, 'getLiveSession', { connectionId });

describe('Credo 0.6 MprQueueTransportRepository', () => {
  test('add → id string; count; take → receivedAt a Date; remove', async () => {
    const repo = await repository();
    const connectionId = uuid();
    const did = didKey();
    const body = payload();
    const id = await repo.addMessage(agentContext, { connectionId, recipientDids: [did], payload: body, receivedAt: new Date() });
    assert.equal(typeof id, 'string');
    assert.match(id, MESSAGE_ID);
    assert.equal(await repo.getAvailableMessageCount(agentContext, { connectionId }), 1);
    assert.equal(await repo.getAvailableMessageCount(agentContext, { connectionId, recipientDid: did }), 1);

    const taken = await repo.takeFromQueue(agentContext, { connectionId, recipientDid: did, limit: 10 });
    assert.equal(taken.length, 1);
    assert.equal(taken[0].id, id);
    assert.ok(taken[0].receivedAt instanceof Date && !Number.isNaN(taken[0].receivedAt.getTime()));
    assert.deepEqual(taken[0].encryptedMessage, body);

    await repo.removeMessages(agentContext, { connectionId, messageIds: [id] });
    assert.equal(await repo.getAvailableMessageCount(agentContext, { connectionId }), 0);
    assert.deepEqual(await repo.takeFromQueue(agentContext, { connectionId, deleteMessages: true }), []);
  });

  test('connectionInfo: maxReceiveBytes limits a take; errors are MprError', async () => {
    const seen = [];
    const repo = await repository({
      connectionInfo: async (connectionId, context) => {
        seen.push(context);
        return { maxReceiveBytes: 1 };
      },
    });
    const connectionId = uuid();
    await repo.addMessage(agentContext, { connectionId, recipientDids: [didKey()], payload: payload() });
    assert.deepEqual(await repo.takeFromQueue(agentContext, { connectionId }), [], 'no message fits in 1 byte');
    assert.equal(seen[0], agentContext);
    await assert.rejects(repo.getAvailableMessageCount(agentContext, { connectionId: '' }), (e) => e instanceof MprError && e.code === -32602);
  });

  test('attach: MessageHolder live-session events bind and unbind; pushes go to deliverMessages', async () => {
    const repo = await repository();
    const events = fakeEvents();
    const pickup = fakePickup();
    const detach = repo.attach({ events, didcomm: { messagePickup: pickup } });

    const connectionId = uuid();
    const session = { id: uuid(), connectionId, protocolVersion: 'v2', role: 'MessageHolder', transportSessionId: uuid() };
    pickup.sessions.set(connectionId, session);
    events.emit(CREDO06_LIVE_SESSION_EVENTS.saved, { session });
    assert.equal(await pollUntil(() => isLive(connectionId), { timeoutMs: 10_000 }), true);

    // The recipient side of a pickup session is not the server's business.
    const recipientSide = { ...session, id: uuid(), connectionId: uuid(), role: 'Recipient' };
    events.emit(CREDO06_LIVE_SESSION_EVENTS.saved, { session: recipientSide });
    assert.equal(repo.connection.heldLiveSessions().has(recipientSide.connectionId), false);

    const body = payload();
    const { messageId } = await call(other, 'addMessage', { connectionId, recipientDids: [didKey()], payload: body });
    const [delivery] = await pickup.delivered.waitFor(1);
    assert.equal(delivery.pickupSessionId, session.id);
    assert.deepEqual(delivery.messages.map((m) => m.id), [messageId]);
    assert.ok(delivery.messages[0].receivedAt instanceof Date);
    assert.deepEqual(delivery.messages[0].encryptedMessage, body);

    // A removal naming an older session of the connection leaves the current binding alone.
    events.emit(CREDO06_LIVE_SESSION_EVENTS.removed, { session: { ...session, id: uuid() } });
    assert.equal(repo.connection.heldLiveSessions().get(connectionId), session.id);

    events.emit(CREDO06_LIVE_SESSION_EVENTS.removed, { session });
    assert.equal(await pollUntil(async () => !(await isLive(connectionId)), { timeoutMs: 10_000 }), true);

    detach();
    assert.equal(events.count(CREDO06_LIVE_SESSION_EVENTS.saved), 0);
    assert.equal(events.count(CREDO06_LIVE_SESSION_EVENTS.removed), 0);
  });
});

describe('Credo 0.5 attachToCredo05Agent', () => {
  test('LiveSessionSaved / LiveSessionRemoved and pushes into agent.messagePickup', async () => {
    const client = new MessagePickupRepositoryClient({ url: server.url });
    closers.push(() => client.disconnect());
    await client.connect();
    const events = fakeEvents();
    const pickup = fakePickup();
    const detach = attachToCredo05Agent({ events, messagePickup: pickup }, client);
    assert.deepEqual(CREDO05_LIVE_SESSION_EVENTS, { saved: 'LiveSessionSaved', removed: 'LiveSessionRemoved' });

    const connectionId = uuid();
    const session = { id: uuid(), connectionId, protocolVersion: 'v2', role: 'MessageHolder' };
    pickup.sessions.set(connectionId, session);
    events.emit('LiveSessionSaved', { session });
    assert.equal(await pollUntil(() => isLive(connectionId), { timeoutMs: 10_000 }), true);

    const ids = [];
    for (let i = 0; i < 3; i++) {
      ids.push((await call(other, 'addMessage', { connectionId, recipientDids: [didKey()], payload: payload() })).messageId);
    }
    await pollUntil(() => pickup.delivered.calls.flatMap((d) => d.messages).length >= 3, { timeoutMs: 10_000 });
    assert.ok(pickup.delivered.calls.every((d) => d.pickupSessionId === session.id));
    assert.deepEqual(pickup.delivered.calls.flatMap((d) => d.messages.map((m) => m.id)), ids);

    events.emit('LiveSessionRemoved', { session });
    assert.equal(await pollUntil(async () => !(await isLive(connectionId)), { timeoutMs: 10_000 }), true);
    detach();
    assert.equal(events.count('LiveSessionSaved'), 0);
  });
});
