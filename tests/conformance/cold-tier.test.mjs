// The cold tier through the real client: messages moved to MongoDB come back through
// rpc-websockets exactly as they went in (ids, receive times, payload members in order), in
// FIFO order with the messages still in Redis, and removal reaches them.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRedis, startMongo, startServer, stopAll, uniquePrefix, withLogs, connect, closeAllClients,
  call, uuid, didKey, payload, add, take, count, assertTaken, pollUntil, metric,
} from './harness.mjs';

let server;
const test = (name, fn) => it(name, { timeout: 60_000 }, withLogs(() => [server], fn));

describe('cold tier', () => {
  before(async () => {
    const [redis, mongo] = await Promise.all([startRedis(), startMongo()]);
    server = await startServer({
      redis,
      prefix: uniquePrefix(),
      env: { MONGODB_URI: mongo.url('conformance'), THRESHOLD_TIMESTAMP: '1000', MOVER_INTERVAL_MS: '100' },
    });
  });
  after(async () => {
    await closeAllClients();
    await stopAll();
  });

  test('moved messages read back exactly, in order with the hot ones, and are removed', async () => {
    const client = await connect(server.url);
    const connectionId = uuid();
    const recipient = didKey();
    const odd = { extra: { zeta: 1, alpha: [1.5, null, true, { nested: 'x' }], header: { kid: 'k' } } };
    const old = [];
    for (let i = 0; i < 4; i++) old.push(await add(client, connectionId, { recipientDids: [recipient], body: payload(i === 1 ? odd : {}) }));
    const moved = await pollUntil(async () => (await metric(server, 'mpr_cold_moved_total')) >= 4, { timeoutMs: 30_000 });
    assert.ok(moved, 'the four messages moved to MongoDB');
    const fresh = [await add(client, connectionId, { recipientDids: [recipient] })];
    assert.equal(await count(client, { connectionId, recipientDid: recipient }), 5);

    const taken = await take(client, { connectionId, recipientDid: recipient, limit: 10 });
    assertTaken(taken, [...old, ...fresh]);
    assert.equal(await count(client, { connectionId }), 0, 'taken messages are in flight');
    assert.equal(await call(client, 'removeMessages', { connectionId, messageIds: taken.map((m) => m.id) }), true);
    await pollUntil(async () => (await count(client, { connectionId })) > 0, { timeoutMs: 2500 });
    assert.equal(await count(client, { connectionId }), 0, 'removed messages never come back');
    assert.deepEqual(await take(client, { connectionId }), []);
  });
});
