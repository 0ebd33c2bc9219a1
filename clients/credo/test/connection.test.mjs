// The core and the Credo 0.5 client against a real mpr server: every method, errors, shapes, token.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WebSocketServer } from 'ws';

import { MessagePickupRepositoryClient, MprConnection, MprConnectionError, MprError, MprProtocolError } from '../build/index.js';
import {
  MESSAGE_ID,
  call,
  closeAllClients,
  connect,
  didKey,
  event,
  freePort,
  payload,
  recorder,
  startRedis,
  startServer,
  stopAll,
  uniquePrefix,
  uuid,
} from './helpers.mjs';

let redis;
let server;
const clients = [];

function newClient(options = {}) {
  const client = new MessagePickupRepositoryClient({ url: server.url, ...options });
  clients.push(client);
  return client;
}

before(async () => {
  redis = await startRedis();
  server = await startServer({ redis, prefix: uniquePrefix() });
});

after(async () => {
  await Promise.all(clients.map((c) => c.disconnect()));
  await closeAllClients();
  await stopAll();
});

describe('Credo 0.5 MessagePickupRepositoryClient round trips', () => {
  test('ping, add, count, take (receivedAt a Date), remove, removeAll', async () => {
    const client = newClient();
    await client.connect();
    assert.equal(await client.ping(), 'pong');

    const connectionId = uuid();
    const did = didKey();
    const bodies = [payload(), payload(), payload()];
    const ids = [];
    for (const body of bodies) {
      const id = await client.addMessage({ connectionId, recipientDids: [did], payload: body });
      assert.match(id, MESSAGE_ID);
      ids.push(id);
    }
    assert.equal(await client.getAvailableMessageCount({ connectionId }), 3);
    assert.equal(await client.getAvailableMessageCount({ connectionId, recipientDid: didKey() }), 0);

    const taken = await client.takeFromQueue({ connectionId, limit: 2 });
    assert.deepEqual(taken.map((m) => m.id), ids.slice(0, 2));
    for (const [i, m] of taken.entries()) {
      assert.ok(m.receivedAt instanceof Date && !Number.isNaN(m.receivedAt.getTime()));
      assert.deepEqual(m.encryptedMessage, bodies[i]);
    }
    assert.equal(await client.getAvailableMessageCount({ connectionId }), 1, 'taken messages are in flight');
    assert.equal(await client.removeMessages({ connectionId, messageIds: taken.map((m) => m.id) }), undefined);

    const rest = await client.takeFromQueue({ connectionId, deleteMessages: true });
    assert.deepEqual(rest.map((m) => m.id), [ids[2]]);
    assert.equal(await client.getAvailableMessageCount({ connectionId }), 0);

    await client.addMessage({ connectionId, recipientDids: [did], payload: payload() });
    assert.equal(await client.removeAllMessages({ connectionId, recipientDid: did }), undefined);
    assert.equal(await client.getAvailableMessageCount({ connectionId }), 0);
  });

  test('getQueueStatus: count, bytes, oldest and newest pending as Dates; null for one DID / when empty', async () => {
    const client = newClient();
    await client.connect();
    const connectionId = uuid();
    const did = didKey();
    const bodies = [payload(), payload({ ciphertextLength: 300 })];
    for (const body of bodies) await client.addMessage({ connectionId, recipientDids: [did], payload: body });
    const status = await client.getQueueStatus({ connectionId });
    assert.equal(status.messageCount, 2);
    assert.equal(status.totalBytes, bodies.reduce((sum, body) => sum + JSON.stringify(body).length, 0));
    const [first, second] = await client.takeFromQueue({ connectionId });
    assert.deepEqual(status.oldestReceivedAt, first.receivedAt);
    assert.deepEqual(status.newestReceivedAt, second.receivedAt);
    const forDid = await client.getQueueStatus({ connectionId, recipientDid: did });
    assert.deepEqual(forDid, { messageCount: 0, totalBytes: null, oldestReceivedAt: null, newestReceivedAt: null });
  });

  test('connection info: maxReceiveBytes becomes limitBytes, the push token goes with addMessage', async () => {
    const client = newClient();
    await client.connect();
    const connectionId = uuid();
    const body = payload({ ciphertextLength: 200 });
    const size = JSON.stringify(body).length;
    const asked = [];
    client.setConnectionInfo(async (id) => {
      asked.push(id);
      return { maxReceiveBytes: size + 10, pushNotificationToken: { type: 'fcm', token: 'device-1' } };
    });
    await client.addMessage({ connectionId, recipientDids: [didKey()], payload: body });
    await client.addMessage({ connectionId, recipientDids: [didKey()], payload: payload({ ciphertextLength: 200 }) });
    const taken = await client.takeFromQueue({ connectionId, limit: 10 });
    assert.equal(taken.length, 1, 'limitBytes from maxReceiveBytes holds one message');
    assert.deepEqual(asked, [connectionId, connectionId, connectionId]);
  });

  test('live sessions: add, get (through another socket), remove; pushes reach messagesReceived', async () => {
    const client = newClient();
    await client.connect();
    const other = await connect(server.url);
    const connectionId = uuid();
    const pushes = recorder();
    client.messagesReceived(pushes);

    assert.equal(await client.getLiveSession({ connectionId }), false);
    assert.equal(await client.addLiveSession({ connectionId, sessionId: uuid() }), true);
    assert.equal(await call(other, 'getLiveSession', { connectionId }), true);
    assert.equal(await client.getLiveSession({ connectionId }), true);

    const body = payload();
    const { messageId } = await call(other, 'addMessage', { connectionId, recipientDids: [didKey()], payload: body });
    const [push] = await pushes.waitFor(1);
    assert.equal(push.connectionId, connectionId);
    assert.equal(push.messages.length, 1);
    assert.equal(push.messages[0].id, messageId);
    assert.ok(push.messages[0].receivedAt instanceof Date);
    assert.deepEqual(push.messages[0].encryptedMessage, body);

    assert.equal(await client.removeLiveSession({ connectionId }), true);
    assert.equal(await call(other, 'getLiveSession', { connectionId }), false);
    assert.equal(client.connection.heldLiveSessions().size, 0);
  });
});

describe('errors', () => {
  test('invalid params become MprError -32602 (and the session is not kept)', async () => {
    const client = newClient();
    await client.connect();
    await assert.rejects(
      client.addMessage({ connectionId: '', recipientDids: [didKey()], payload: payload() }),
      (error) => error instanceof MprError && error.code === -32602 && /connectionId/.test(error.message),
    );
    await assert.rejects(
      client.removeMessages({ connectionId: uuid(), messageIds: [2] }),
      (error) => error instanceof MprError && error.code === -32602,
    );
    await assert.rejects(client.addLiveSession({ connectionId: '{bad}', sessionId: uuid() }), (e) => e instanceof MprError && e.code === -32602);
    assert.equal(client.connection.heldLiveSessions().size, 0);
  });

  test('before connect, and once the server is gone, calls reject at once', async () => {
    const own = await startServer({ redis, prefix: uniquePrefix(), name: 'doomed' });
    const client = newClient({ url: own.url, reconnectIntervalMs: 100 });
    await assert.rejects(client.ping(), (e) => e instanceof MprConnectionError && e.reason === 'not-connected');
    await client.connect();
    assert.equal(await client.ping(), 'pong');
    const dropped = new Promise((resolve) => client.connection.once('disconnected', resolve));
    own.kill('SIGKILL');
    await own.exited();
    await dropped;
    await assert.rejects(client.addMessage({ connectionId: uuid(), recipientDids: [didKey()], payload: payload() }), MprConnectionError);
    await assert.rejects(client.takeFromQueue({ connectionId: uuid() }), MprConnectionError);
    await client.disconnect();
  });

  test('connect rejects when nothing listens; disconnect during connect rejects it', async () => {
    const client = newClient({ url: `ws://127.0.0.1:${await freePort()}` });
    await assert.rejects(client.connect(), (e) => e instanceof MprConnectionError && e.reason === 'not-connected');
    const pending = newClient().connect();
    const closing = clients.at(-1).disconnect();
    await assert.rejects(pending, MprConnectionError);
    await closing;
  });

  test('a call without a reply times out; wrong result shapes throw MprProtocolError', async () => {
    // A stand-in server answering every method with a configured (wrong) result.
    const answers = {
      addMessage: null,
      takeFromQueue: { messages: [] },
      getAvailableMessageCount: '3',
      removeMessages: 'ok',
      getLiveSession: 1,
      addLiveSession: null,
      ping: 42,
    };
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((resolve) => wss.once('listening', resolve));
    wss.on('connection', (ws) =>
      ws.on('message', (data) => {
        const request = JSON.parse(data.toString());
        if (request.method === 'silent') return;
        if (request.method === 'drop') return ws.terminate();
        const result = request.method === 'rpc.on' ? { messagesReceived: 'ok' } : answers[request.method];
        ws.send(JSON.stringify({ jsonrpc: '2.0', id: request.id, result: result ?? null }));
      }),
    );
    const client = newClient({ url: `ws://127.0.0.1:${wss.address().port}`, callTimeoutMs: 300 });
    try {
      await client.connect();
      const connectionId = uuid();
      const isShape = (e) => e instanceof MprProtocolError;
      await assert.rejects(client.addMessage({ connectionId, recipientDids: [didKey()], payload: payload() }), isShape);
      await assert.rejects(client.takeFromQueue({ connectionId }), isShape);
      await assert.rejects(client.getAvailableMessageCount({ connectionId }), isShape);
      await assert.rejects(client.removeMessages({ connectionId, messageIds: ['a'] }), isShape);
      await assert.rejects(client.getLiveSession({ connectionId }), isShape);
      await assert.rejects(client.addLiveSession({ connectionId, sessionId: 's' }), isShape);
      await assert.rejects(client.ping(), isShape);
      answers.takeFromQueue = [{ id: 'x', receivedAt: 'not a date', encryptedMessage: {} }];
      await assert.rejects(client.takeFromQueue({ connectionId }), isShape);
      await assert.rejects(client.connection['call']('silent'), (e) => e instanceof MprConnectionError && e.reason === 'timeout');
      // A call running when the socket drops fails at once, not at its (here: 60 s) timeout.
      const patient = newClient({ url: client.connection.url, callTimeoutMs: 60_000 });
      await patient.connect();
      const running = patient.connection['call']('silent');
      const dropped = patient.connection['call']('drop');
      await assert.rejects(running, (e) => e instanceof MprConnectionError && e.reason === 'connection-lost');
      await assert.rejects(dropped, (e) => e instanceof MprConnectionError && e.reason === 'connection-lost');
    } finally {
      await client.disconnect();
      await new Promise((resolve) => wss.close(resolve));
    }
  });
});

test('a socket that stops answering is dropped by the heartbeat and reconnected', async () => {
  // A stand-in server whose first socket goes silent (half-open) after the subscription.
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => wss.once('listening', resolve));
  let sockets = 0;
  wss.on('connection', (ws) => {
    const silent = sockets++ === 0;
    let answered = 0;
    ws.on('message', (data) => {
      const request = JSON.parse(data.toString());
      if (silent && answered++ > 0) return;
      const result = request.method === 'rpc.on' ? { messagesReceived: 'ok' } : 'pong';
      ws.send(JSON.stringify({ jsonrpc: '2.0', id: request.id, result }));
    });
  });
  const client = newClient({ url: `ws://127.0.0.1:${wss.address().port}`, callTimeoutMs: 500, heartbeatIntervalMs: 200, reconnectIntervalMs: 50 });
  try {
    await client.connect();
    const reconnected = event(client.connection, 'reconnected');
    await event(client.connection, 'disconnected');
    await reconnected;
    assert.equal(sockets, 2);
    assert.equal(await client.ping(), 'pong');
  } finally {
    await client.disconnect();
    for (const ws of wss.clients) ws.terminate();
    await new Promise((resolve) => wss.close(resolve));
  }
});

describe('token', () => {
  let guarded;
  before(async () => {
    guarded = await startServer({ redis, prefix: uniquePrefix(), env: { AUTH_TOKENS: 'first-token,s3cret-token' }, name: 'guarded' });
  });

  test('with the token (Authorization header) connect works; without it, or with another, it fails', async () => {
    const withToken = newClient({ url: guarded.url, token: 's3cret-token' });
    await withToken.connect();
    assert.equal(await withToken.ping(), 'pong');
    assert.match(await withToken.addMessage({ connectionId: uuid(), recipientDids: [didKey()], payload: payload() }), MESSAGE_ID);

    await assert.rejects(newClient({ url: guarded.url }).connect(), (e) => e instanceof MprConnectionError && /401/.test(e.message));
    await assert.rejects(newClient({ url: guarded.url, token: 'wrong' }).connect(), (e) => e instanceof MprConnectionError && /401/.test(e.message));
  });

  test('the core connection takes the token too', async () => {
    const connection = new MprConnection({ url: guarded.url, token: 'first-token' });
    await connection.connect();
    try {
      assert.equal(await connection.ping(), 'pong');
    } finally {
      await connection.close();
    }
  });
});
