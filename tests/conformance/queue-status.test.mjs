// getQueueStatus: the figures a Pickup 2.0 status reports (count, bytes, oldest and newest
// received time), for the connection and for one recipient DID, through the real client.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRedis, startServer, stopAll, uniquePrefix, withLogs, connect, closeAllClients, call, callError,
  uuid, didKey, payload, jsonSize, add, take, ISO_MS,
} from './harness.mjs';

let server;
const test = (name, fn) => it(name, { timeout: 30_000 }, withLogs(() => [server], fn));
const status = (client, params) => call(client, 'getQueueStatus', params);

describe('getQueueStatus', () => {
  before(async () => {
    server = await startServer({ redis: await startRedis(), prefix: uniquePrefix(), env: { VISIBILITY_TIMEOUT_MS: '60000' } });
  });
  after(async () => {
    await closeAllClients();
    await stopAll();
  });

  test('an unknown connection: nothing pending, no bytes, no times', async () => {
    const client = await connect(server.url);
    assert.deepEqual(await status(client, { connectionId: uuid() }), {
      messageCount: 0, totalBytes: 0, oldestReceivedAt: null, newestReceivedAt: null,
    });
  });

  test('count, bytes and the oldest / newest pending, for the connection and for one DID', async () => {
    const client = await connect(server.url);
    const connectionId = uuid();
    const [a, b] = [didKey(), didKey()];
    const bodies = [payload({ ciphertextLength: 10 }), payload({ ciphertextLength: 200 }), payload({ ciphertextLength: 30 })];
    const dids = [[a], [b], [a]];
    for (let i = 0; i < 3; i++) await add(client, connectionId, { recipientDids: dids[i], body: bodies[i] });
    const bytes = bodies.reduce((sum, body) => sum + jsonSize(body), 0);

    const all = await status(client, { connectionId });
    assert.equal(all.messageCount, 3);
    assert.equal(all.totalBytes, bytes, 'the bytes of the three encryptedMessages');
    assert.match(all.oldestReceivedAt, ISO_MS);
    assert.match(all.newestReceivedAt, ISO_MS);
    const forB = await status(client, { connectionId, recipientDid: b });
    assert.equal(forB.messageCount, 1);
    assert.equal(forB.totalBytes, null, 'bytes are not kept per DID');
    assert.equal(forB.oldestReceivedAt, forB.newestReceivedAt);

    // The times are those the messages carry (the first and the last of the queue).
    const taken = await take(client, { connectionId, limit: 1 });
    assert.equal(all.oldestReceivedAt, taken[0].receivedAt);
    const afterOne = await status(client, { connectionId });
    assert.equal(afterOne.messageCount, 2, 'in flight is not pending');
    assert.equal(afterOne.totalBytes, bytes, 'in flight is still held');
    assert.ok(afterOne.oldestReceivedAt >= all.oldestReceivedAt);
    const rest = await take(client, { connectionId });
    assert.equal(all.newestReceivedAt, rest.at(-1).receivedAt);
    assert.equal(forB.oldestReceivedAt, rest[0].receivedAt, "b's one message is the second");
    assert.deepEqual(await status(client, { connectionId, recipientDid: a }), {
      messageCount: 0, totalBytes: null, oldestReceivedAt: null, newestReceivedAt: null,
    });

    await call(client, 'removeMessages', { connectionId, messageIds: [taken[0].id, ...rest.map((m) => m.id)] });
    assert.deepEqual(await status(client, { connectionId }), {
      messageCount: 0, totalBytes: 0, oldestReceivedAt: null, newestReceivedAt: null,
    });
  });

  test('bad params name the field', async () => {
    const client = await connect(server.url);
    const error = await callError(client, 'getQueueStatus', { recipientDid: didKey() });
    assert.equal(error.code, -32602);
    assert.match(error.message, /connectionId/);
    const bad = await callError(client, 'getQueueStatus', { connectionId: uuid(), recipientDid: 'has space' });
    assert.equal(bad.code, -32602);
    assert.match(bad.message, /recipientDid/);
  });
});
