// Concurrency smoke: many clients on two instances writing and taking on one connectionId.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRedis, startServer, stopAll, uniquePrefix, withLogs, connect, closeAllClients, call,
  uuid, didKey, payload, take, count, assertAddResult, assertQueuedMessage,
} from './harness.mjs';

let redis;
let A;
let B;
const logs = () => [A, B];
const test = (name, fn) => it(name, { timeout: 30_000 }, withLogs(logs, fn));

describe('concurrency (instances A, B on one Redis)', () => {
  before(async () => {
    redis = await startRedis();
    const prefix = uniquePrefix();
    // a long visibility timeout: nothing may come back during these tests
    const env = { VISIBILITY_TIMEOUT_MS: '60000' };
    [A, B] = await Promise.all([
      startServer({ redis, prefix, env, name: 'A' }),
      startServer({ redis, prefix, env, name: 'B' }),
    ]);
  });
  after(async () => {
    await closeAllClients();
    await stopAll();
  });

  test('8 clients x 50 addMessage in parallel: one takeFromQueue returns all 400 exactly once, per-client order kept', async () => {
    const c = uuid();
    const did = didKey();
    const clients = await Promise.all(Array.from({ length: 8 }, (_, i) => connect((i % 2 ? B : A).url)));
    const sent = new Map(); // id -> {client, seq, payload}
    await Promise.all(
      clients.map(async (client, k) => {
        for (let seq = 0; seq < 50; seq++) {
          const body = payload({ extra: { client: k, seq } });
          const id = assertAddResult(await call(client, 'addMessage', { connectionId: c, recipientDids: [did], payload: body }, 5000));
          assert.ok(!sent.has(id), `duplicate message id ${id}`);
          sent.set(id, { k, seq, body });
        }
      }),
    );
    assert.equal(sent.size, 400);
    assert.equal(await count(clients[0], { connectionId: c }), 400);
    assert.equal(await count(clients[1], { connectionId: c, recipientDid: did }), 400);

    const taken = await take(clients[3], { connectionId: c, deleteMessages: true });
    assert.equal(taken.length, 400, `takeFromQueue returned ${taken.length} of 400`);
    const ids = taken.map((m) => m.id);
    assert.equal(new Set(ids).size, 400, 'a message was returned twice');
    for (const id of sent.keys()) assert.ok(ids.includes(id), `message ${id} missing`);
    const lastSeq = new Array(8).fill(-1);
    for (const m of taken) {
      const { k, seq, body } = sent.get(m.id);
      assertQueuedMessage(m, { id: m.id, payload: body });
      assert.equal(seq, lastSeq[k] + 1, `client ${k}: message ${seq} came out after ${lastSeq[k]} (FIFO)`);
      lastSeq[k] = seq;
    }
    assert.deepEqual(await take(clients[4], { connectionId: c, deleteMessages: true }), []);
    assert.equal(await count(clients[5], { connectionId: c }), 0);
  });

  test('4 clients taking concurrently without delete never get the same message twice', async () => {
    const c = uuid();
    const writer = await connect(A.url);
    const added = await Promise.all(
      Array.from({ length: 200 }, () => call(writer, 'addMessage', { connectionId: c, recipientDids: [didKey()], payload: payload() }, 5000)),
    );
    const addedIds = added.map(assertAddResult);
    const takers = await Promise.all(Array.from({ length: 4 }, (_, i) => connect((i % 2 ? B : A).url)));
    const seen = new Set();
    const duplicates = [];
    const perTaker = await Promise.all(
      takers.map(async (client) => {
        const got = [];
        // bounded: 200 messages in batches of 7 need 29 calls in all
        for (let calls = 0; calls < 60 && !duplicates.length; calls++) {
          const batch = await take(client, { connectionId: c, limit: 7 });
          assert.ok(batch.length <= 7);
          if (!batch.length) return got;
          for (const m of batch) {
            if (seen.has(m.id)) duplicates.push(m.id);
            seen.add(m.id);
            got.push(m.id);
          }
        }
        return got;
      }),
    );
    assert.deepEqual(duplicates, [], 'messages handed out twice');
    const all = perTaker.flat();
    assert.equal(all.length, 200, `taken ${all.length} messages, 200 added`);
    assert.equal(new Set(all).size, 200, 'a message was handed out twice');
    assert.deepEqual([...all].sort(), [...addedIds].sort());
    assert.equal(await count(writer, { connectionId: c }), 0);
    assert.equal(await call(writer, 'removeMessages', { connectionId: c, messageIds: addedIds }), true);
    assert.equal(await count(writer, { connectionId: c }), 0);
  });

  test('concurrent calls on one socket are all answered, each with its own id', async () => {
    const client = await connect(B.url);
    const c = uuid();
    const results = await Promise.all([
      ...Array.from({ length: 100 }, () => call(client, 'ping', undefined, 5000)),
      ...Array.from({ length: 100 }, () => call(client, 'getAvailableMessageCount', { connectionId: c }, 5000)),
    ]);
    assert.deepEqual(results.slice(0, 100), new Array(100).fill('pong'));
    assert.deepEqual(results.slice(100), new Array(100).fill(0));
  });
});
