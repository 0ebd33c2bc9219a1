// The server dies (SIGKILL) under a client holding live sessions; another comes up on the same
// port and Redis: the client reconnects, re-adds the sessions it holds, and gets pushes again.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { MessagePickupRepositoryClient, MprConnectionError } from '../build/index.js';
import {
  call,
  closeAllClients,
  connect,
  didKey,
  event,
  payload,
  recorder,
  startRedis,
  startServer,
  stopAll,
  uniquePrefix,
  uuid,
} from './helpers.mjs';

let redis;
const prefix = uniquePrefix();
let client;

before(async () => {
  redis = await startRedis();
});

after(async () => {
  await client?.disconnect();
  await closeAllClients();
  await stopAll();
});

test('reconnects after SIGKILL, re-adds held live sessions, then receives pushes', async () => {
  const first = await startServer({ redis, prefix, name: 'first' });
  client = new MessagePickupRepositoryClient({ url: first.url, reconnectIntervalMs: 100, maxReconnectIntervalMs: 500 });
  const pushes = recorder();
  client.messagesReceived(pushes);
  await client.connect();

  const live = uuid();
  const ended = uuid();
  const liveSession = uuid();
  assert.equal(await client.addLiveSession({ connectionId: live, sessionId: liveSession }), true);
  assert.equal(await client.addLiveSession({ connectionId: ended, sessionId: uuid() }), true);
  assert.equal(await client.removeLiveSession({ connectionId: ended }), true);

  const disconnected = event(client.connection, 'disconnected');
  first.kill('SIGKILL');
  await first.exited();
  await disconnected;
  await assert.rejects(client.getLiveSession({ connectionId: live }), MprConnectionError);
  // Credo saved a session while the server was away: refused now, bound once it is back.
  const lateSession = uuid();
  const late = uuid();
  await assert.rejects(client.addLiveSession({ connectionId: late, sessionId: lateSession }), MprConnectionError);

  const reconnected = event(client.connection, 'reconnected', 30_000);
  const second = await startServer({ redis, prefix, name: 'second', env: { WS_PORT: String(first.wsPort) } });
  await reconnected;

  // startServer's url names the port it picked; WS_PORT overrode it.
  const other = await connect(first.url);
  assert.ok(second.pid);
  assert.equal(await call(other, 'getLiveSession', { connectionId: live }), true, 'the held session is bound again');
  assert.equal(await call(other, 'getLiveSession', { connectionId: ended }), false, 'a removed session is not re-added');
  assert.equal(await call(other, 'getLiveSession', { connectionId: late }), true, 'a session added while down is bound');
  assert.deepEqual([...client.connection.heldLiveSessions()].sort(), [[live, liveSession], [late, lateSession]].sort());

  const body = payload();
  const { messageId } = await call(other, 'addMessage', { connectionId: live, recipientDids: [didKey()], payload: body });
  const [push] = await pushes.waitFor(1, 20_000);
  assert.equal(push.connectionId, live);
  assert.deepEqual(push.messages.map((m) => m.id), [messageId]);
  assert.deepEqual(push.messages[0].encryptedMessage, body);
  assert.equal(await client.ping(), 'pong');
});

test('with waitForReconnectMs, a call made while the server is away is answered once it is back', async () => {
  const first = await startServer({ redis, prefix, name: 'first-wait' });
  const waiting = new MessagePickupRepositoryClient({ url: first.url, reconnectIntervalMs: 100, maxReconnectIntervalMs: 200, waitForReconnectMs: 20_000 });
  try {
    await waiting.connect();
    const disconnected = event(waiting.connection, 'disconnected');
    first.kill('SIGKILL');
    await first.exited();
    await disconnected;
    // Made while nothing listens: it waits, and is answered by the server that comes up.
    const connectionId = uuid();
    const added = waiting.addMessage({ connectionId, recipientDids: [didKey()], payload: payload() });
    await startServer({ redis, prefix, name: 'second-wait', env: { WS_PORT: String(first.wsPort) } });
    const messageId = await added;
    assert.match(messageId, /^[0-9a-f]{24}$/);
    assert.equal(await waiting.getAvailableMessageCount({ connectionId }), 1);
  } finally {
    await waiting.disconnect();
  }
});
