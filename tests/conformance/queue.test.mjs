// The queue methods through the real rpc-websockets v7 Client: ping, addMessage, takeFromQueue
// (FIFO, limit, limitBytes, recipientDid, deleteMessages, visibility timeout),
// getAvailableMessageCount, removeMessages, removeAllMessages, live-session bookkeeping on one
// instance, and rpc.on / rpc.off.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRedis, startServer, stopAll, uniquePrefix, withLogs, connect, closeAllClients, call, sleep,
  uuid, didKey, payload, jsonSize, add, take, count, assertTaken, assertAddResult, assertQueuedMessage,
  pollUntil, MESSAGE_ID,
} from './harness.mjs';

const VISIBILITY_MS = 2000;

let redis;
let server;
const logs = () => [server];
const test = (name, fn) => it(name, { timeout: 30_000 }, withLogs(logs, fn));

/** Adds n messages (sequentially, so their order is defined) and returns them. */
async function seed(client, connectionId, n, options = () => ({})) {
  const added = [];
  for (let i = 0; i < n; i++) added.push(await add(client, connectionId, options(i)));
  return added;
}

describe('queue methods (one instance)', { concurrency: true }, () => {
  before(async () => {
    redis = await startRedis();
    server = await startServer({
      redis,
      prefix: uniquePrefix(),
      env: { VISIBILITY_TIMEOUT_MS: String(VISIBILITY_MS) },
    });
  });
  after(async () => {
    await closeAllClients();
    await stopAll();
  });

  test('ping answers "pong"', async () => {
    const client = await connect(server.url);
    assert.equal(await call(client, 'ping'), 'pong');
    assert.equal(await call(client, 'ping', undefined), 'pong');
  });

  test('any path and query string on the WebSocket port is accepted', async () => {
    const client = await connect(`${server.url}/some/path?token=abc&x=1`);
    assert.equal(await call(client, 'ping'), 'pong');
    const c = uuid();
    const m = await add(client, c);
    assert.equal(await count(client, { connectionId: c }), 1);
    assertTaken(await take(client, { connectionId: c, deleteMessages: true }), [m]);
  });

  test('addMessage answers {messageId: 24 lowercase hex}, unique per message', async () => {
    const client = await connect(server.url);
    const c = uuid();
    const results = await Promise.all(
      Array.from({ length: 40 }, () => call(client, 'addMessage', { connectionId: c, recipientDids: [didKey()], payload: payload() })),
    );
    const ids = results.map(assertAddResult);
    for (const id of ids) assert.match(id, MESSAGE_ID);
    assert.equal(new Set(ids).size, 40, 'message ids must be unique');
    // ids are unique across connections too
    const other = await add(client, uuid());
    assert.ok(!ids.includes(other.id));
    assert.equal(await count(client, { connectionId: c }), 40);
  });

  test('addMessage accepts pushNotificationToken as the MPR client sends it', async () => {
    const client = await connect(server.url);
    const c = uuid();
    const m1 = await add(client, c, { extraParams: { pushNotificationToken: { type: 'fcm', token: 'fcm-device-token' } } });
    const m2 = await add(client, c, { extraParams: { pushNotificationToken: { type: 'apns' } } });
    assert.equal(await count(client, { connectionId: c }), 2);
    assertTaken(await take(client, { connectionId: c, deleteMessages: true }), [m1, m2]);
  });

  test('unknown connection: takeFromQueue [] and count 0', async () => {
    const client = await connect(server.url);
    const c = uuid();
    assert.deepEqual(await take(client, { connectionId: c }), []);
    assert.deepEqual(await take(client, { connectionId: c, recipientDid: didKey(), limit: 5, limitBytes: 1000, deleteMessages: true }), []);
    assert.equal(await count(client, { connectionId: c }), 0);
    assert.equal(await count(client, { connectionId: c, recipientDid: didKey() }), 0);
  });

  test('takeFromQueue returns QueuedMessages FIFO with the payload byte-for-byte', async () => {
    const client = await connect(server.url);
    const c = uuid();
    const bodies = [
      payload(),
      // extra members, members out of alphabetical order, nested values, non-ASCII text
      { tag: 'dGFn', ciphertext: 'Y2lwaGVy', iv: 'aXY', protected: 'cHJvdA', recipients: [{ header: { kid: 'did:key:z6Mk#k', alg: 'ECDH-1PU' }, encrypted_key: 'ZWs' }], aad: 'YWFk', unprotected: { n: 12.5, t: true, z: null } },
      payload({ extra: { note: 'héllo wörld – ✓ 😀 \\ "quoted" \u2028 <tag>' } }),
      payload({ ciphertextLength: 5000 }),
    ];
    const added = [];
    for (const body of bodies) added.push(await add(client, c, { body }));
    const other = await add(client, uuid()); // another connection is not mixed in
    assert.equal(await count(client, { connectionId: c }), bodies.length);
    const taken = await take(client, { connectionId: c, deleteMessages: true });
    assertTaken(taken, added);
    assert.ok(!taken.some((m) => m.id === other.id));
    for (let i = 1; i < taken.length; i++) {
      assert.ok(Date.parse(taken[i].receivedAt) >= Date.parse(taken[i - 1].receivedAt), 'receivedAt must not go backwards in FIFO order');
    }
    assert.equal(await count(client, { connectionId: c }), 0);
    assert.deepEqual(await take(client, { connectionId: c }), []);
  });

  test('limit bounds the number of messages returned', async () => {
    const client = await connect(server.url);
    const c = uuid();
    const m = await seed(client, c, 5);
    assertTaken(await take(client, { connectionId: c, limit: 2, deleteMessages: true }), m.slice(0, 2));
    assert.equal(await count(client, { connectionId: c }), 3);
    assertTaken(await take(client, { connectionId: c, limit: 2, deleteMessages: true }), m.slice(2, 4));
    assertTaken(await take(client, { connectionId: c, limit: 10, deleteMessages: true }), m.slice(4));
    assert.deepEqual(await take(client, { connectionId: c, limit: 10, deleteMessages: true }), []);
  });

  test('limitBytes bounds the JSON size of the returned encryptedMessages (strict, FIFO)', async () => {
    const client = await connect(server.url);
    const sizes = [300, 700, 500];
    const make = async () => {
      const c = uuid();
      const m = await seed(client, c, 3, (i) => ({ body: payload({ ciphertextLength: sizes[i] }) }));
      return { c, m, s: m.map((x) => jsonSize(x.payload)) };
    };

    // exactly fits two
    let q = await make();
    assertTaken(await take(client, { connectionId: q.c, limitBytes: q.s[0] + q.s[1], deleteMessages: true }), q.m.slice(0, 2));
    assertTaken(await take(client, { connectionId: q.c, deleteMessages: true }), q.m.slice(2));

    // one byte short of two: only the first
    q = await make();
    assertTaken(await take(client, { connectionId: q.c, limitBytes: q.s[0] + q.s[1] - 1, deleteMessages: true }), q.m.slice(0, 1));
    assert.equal(await count(client, { connectionId: q.c }), 2);

    // smaller than the first message: nothing, and nothing is hidden or deleted
    q = await make();
    assert.deepEqual(await take(client, { connectionId: q.c, limitBytes: q.s[0] - 1, deleteMessages: true }), []);
    assert.deepEqual(await take(client, { connectionId: q.c, limitBytes: q.s[0] - 1 }), []);
    assert.equal(await count(client, { connectionId: q.c }), 3);

    // the big second message does not fit: the third (which would) is not taken out of order
    q = await make();
    assertTaken(await take(client, { connectionId: q.c, limitBytes: q.s[0] + q.s[2], deleteMessages: true }), q.m.slice(0, 1));
    assert.equal(await count(client, { connectionId: q.c }), 2);

    // limit and limitBytes together: whichever bounds first
    q = await make();
    assertTaken(await take(client, { connectionId: q.c, limit: 1, limitBytes: 1_000_000, deleteMessages: true }), q.m.slice(0, 1));
    assertTaken(await take(client, { connectionId: q.c, limit: 5, limitBytes: q.s[1], deleteMessages: true }), q.m.slice(1, 2));
    assertTaken(await take(client, { connectionId: q.c, limit: 5, limitBytes: 1_000_000, deleteMessages: true }), q.m.slice(2));
  });

  test('recipientDid filters takeFromQueue and getAvailableMessageCount', async () => {
    const client = await connect(server.url);
    const c = uuid();
    const A = didKey();
    const B = didKey();
    const X = didKey();
    const dids = [[A], [B], [A, B], [A]];
    const m = await seed(client, c, 4, (i) => ({ recipientDids: dids[i] }));
    assert.equal(await count(client, { connectionId: c }), 4);
    assert.equal(await count(client, { connectionId: c, recipientDid: A }), 3);
    assert.equal(await count(client, { connectionId: c, recipientDid: B }), 2);
    assert.equal(await count(client, { connectionId: c, recipientDid: X }), 0);
    assert.deepEqual(await take(client, { connectionId: c, recipientDid: X }), []);

    // B's oldest goes in flight: no longer counted anywhere
    assertTaken(await take(client, { connectionId: c, recipientDid: B, limit: 1 }), [m[1]]);
    assert.equal(await count(client, { connectionId: c }), 3);
    assert.equal(await count(client, { connectionId: c, recipientDid: B }), 1);
    assert.equal(await count(client, { connectionId: c, recipientDid: A }), 3);

    // all of A's, deleted; the [A, B] message leaves B's view too
    assertTaken(await take(client, { connectionId: c, recipientDid: A, deleteMessages: true }), [m[0], m[2], m[3]]);
    assert.equal(await count(client, { connectionId: c, recipientDid: A }), 0);
    assert.equal(await count(client, { connectionId: c, recipientDid: B }), 0);
    assert.equal(await count(client, { connectionId: c }), 0);
    assert.deepEqual(await take(client, { connectionId: c, recipientDid: B }), []);
    assert.equal(await call(client, 'removeMessages', { connectionId: c, messageIds: [m[1].id] }), true);
  });

  test('messages taken without deleteMessages are hidden for the visibility timeout, then return in order', async () => {
    const client = await connect(server.url);
    const c = uuid();
    const m = await seed(client, c, 4);
    const takenAt = Date.now();
    const first = await take(client, { connectionId: c, limit: 3 });
    assertTaken(first, m.slice(0, 3));
    assert.equal(await count(client, { connectionId: c }), 1);
    assert.equal(await call(client, 'removeMessages', { connectionId: c, messageIds: [m[1].id] }), true);
    assert.equal(await count(client, { connectionId: c }), 1);

    // halfway through the timeout they are still hidden
    await sleep(Math.max(0, takenAt + VISIBILITY_MS * 0.6 - Date.now()));
    assert.equal(await count(client, { connectionId: c }), 1, 'in-flight messages came back before the visibility timeout');

    const backAt = await pollUntil(async () => ((await count(client, { connectionId: c })) === 3 ? Date.now() : 0), {
      timeoutMs: takenAt + VISIBILITY_MS + 2000 - Date.now(),
      intervalMs: 25,
    });
    assert.ok(backAt, `messages did not come back within ${VISIBILITY_MS} ms + 2 s`);
    assert.ok(backAt - takenAt >= VISIBILITY_MS - 50, `messages came back after ${backAt - takenAt} ms < ${VISIBILITY_MS} ms`);

    // same messages (ids, receivedAt, payloads) in their original order; the removed one is gone
    const again = await take(client, { connectionId: c, deleteMessages: true });
    assertTaken(again, [m[0], m[2], m[3]]);
    assert.equal(again[0].receivedAt, first[0].receivedAt);
    assert.equal(again[1].receivedAt, first[2].receivedAt);
    assert.equal(await count(client, { connectionId: c }), 0);
  });

  test('an expired in-flight message goes back to its original place, before later arrivals', async () => {
    const client = await connect(server.url);
    const c = uuid();
    const m = await seed(client, c, 2);
    assertTaken(await take(client, { connectionId: c, limit: 1 }), [m[0]]);
    m.push(await add(client, c));
    assert.equal(await count(client, { connectionId: c }), 2);
    const back = await pollUntil(async () => (await count(client, { connectionId: c })) === 3, { timeoutMs: VISIBILITY_MS + 2000 });
    assert.ok(back, 'the in-flight message never came back');
    assertTaken(await take(client, { connectionId: c, deleteMessages: true }), m);
  });

  test('in-flight messages are not handed out twice', async () => {
    const client = await connect(server.url);
    const c = uuid();
    const m = await seed(client, c, 3);
    assertTaken(await take(client, { connectionId: c, limit: 2 }), m.slice(0, 2));
    assertTaken(await take(client, { connectionId: c }), m.slice(2));
    assert.deepEqual(await take(client, { connectionId: c }), []);
    assert.deepEqual(await take(client, { connectionId: c, deleteMessages: true }), []);
    assert.equal(await count(client, { connectionId: c }), 0);
    assert.equal(await call(client, 'removeMessages', { connectionId: c, messageIds: m.map((x) => x.id) }), true);
  });

  test('deleteMessages: true removes the messages for good', async () => {
    const client = await connect(server.url);
    const c = uuid();
    const m = await seed(client, c, 3);
    assertTaken(await take(client, { connectionId: c, limit: 2, deleteMessages: true }), m.slice(0, 2));
    assertTaken(await take(client, { connectionId: c, deleteMessages: false }), m.slice(2));
    await sleep(VISIBILITY_MS + 500);
    // only the one taken without delete comes back
    assert.equal(await count(client, { connectionId: c }), 1);
    assertTaken(await take(client, { connectionId: c, deleteMessages: true }), m.slice(2));
    assert.equal(await count(client, { connectionId: c }), 0);
  });

  test('removeMessages answers true and removes exactly the given ids, at any depth', async () => {
    const client = await connect(server.url);
    const c = uuid();
    const m = await seed(client, c, 30);
    const removeIdx = [0, 14, 27, 28, 29];
    const result = await call(client, 'removeMessages', {
      connectionId: c,
      messageIds: [...removeIdx.map((i) => m[i].id), 'ffffffffffffffffffffffff', 'not-an-existing-id'],
    });
    assert.equal(result, true);
    assert.equal(await count(client, { connectionId: c }), 25);
    assert.equal(await call(client, 'removeMessages', { connectionId: c, messageIds: [] }), true);
    assert.equal(await call(client, 'removeMessages', { connectionId: c, messageIds: [m[0].id] }), true, 'removing again answers true');
    assert.equal(await call(client, 'removeMessages', { connectionId: uuid(), messageIds: [m[1].id] }), true);
    assert.equal(await count(client, { connectionId: c }), 25, 'removeMessages on another connection must not touch this one');
    assertTaken(await take(client, { connectionId: c, deleteMessages: true }), m.filter((_, i) => !removeIdx.includes(i)));
  });

  test('removeAllMessages answers true; with recipientDid only that recipient\'s messages go', async () => {
    const client = await connect(server.url);
    const c = uuid();
    const A = didKey();
    const B = didKey();
    const m = await seed(client, c, 5, (i) => ({ recipientDids: [i < 3 ? A : B] }));
    const bystander = uuid();
    const kept = await add(client, bystander, { recipientDids: [A] });

    // one of A's is in flight: it goes too
    assertTaken(await take(client, { connectionId: c, recipientDid: A, limit: 1 }), [m[0]]);
    assert.equal(await call(client, 'removeAllMessages', { connectionId: c, recipientDid: A }), true);
    assert.equal(await count(client, { connectionId: c, recipientDid: A }), 0);
    assert.equal(await count(client, { connectionId: c, recipientDid: B }), 2);
    assert.equal(await count(client, { connectionId: c }), 2);

    await sleep(VISIBILITY_MS + 500);
    assert.equal(await count(client, { connectionId: c }), 2, 'a removed in-flight message came back');
    assertTaken(await take(client, { connectionId: c, recipientDid: B, limit: 1 }), [m[3]]);

    assert.equal(await call(client, 'removeAllMessages', { connectionId: c }), true);
    assert.equal(await count(client, { connectionId: c }), 0);
    assert.deepEqual(await take(client, { connectionId: c }), []);
    assert.equal(await call(client, 'removeAllMessages', { connectionId: c }), true, 'on an empty queue');
    assert.equal(await call(client, 'removeAllMessages', { connectionId: uuid(), recipientDid: A }), true, 'on an unknown connection');

    await sleep(VISIBILITY_MS + 500);
    assert.deepEqual(await take(client, { connectionId: c }), [], 'removeAllMessages must also remove in-flight messages');
    assert.equal(await count(client, { connectionId: bystander }), 1, 'other connections are untouched');
    assertTaken(await take(client, { connectionId: bystander, deleteMessages: true }), [kept]);
  });

  test('queue survives an empty/refill cycle and stays FIFO', async () => {
    const client = await connect(server.url);
    const c = uuid();
    for (let round = 0; round < 3; round++) {
      const m = await seed(client, c, 3);
      assertTaken(await take(client, { connectionId: c, deleteMessages: true }), m);
      assert.equal(await count(client, { connectionId: c }), 0);
    }
  });

  test('live-session bookkeeping: add / get / remove, owned by the registering socket', async () => {
    const owner = await connect(server.url);
    const other = await connect(server.url);
    const c = uuid();
    assert.equal(await call(other, 'getLiveSession', { connectionId: c }), false);
    assert.equal(await call(owner, 'removeLiveSession', { connectionId: c }), false, 'no session yet');
    assert.equal(await call(owner, 'addLiveSession', { connectionId: c, sessionId: uuid() }), true);
    assert.equal(await call(owner, 'getLiveSession', { connectionId: c }), true);
    assert.equal(await call(other, 'getLiveSession', { connectionId: c }), true);
    assert.equal(await call(other, 'removeLiveSession', { connectionId: c }), false, 'a session belongs to the socket that added it');
    assert.equal(await call(other, 'getLiveSession', { connectionId: c }), true);
    assert.equal(await call(owner, 'removeLiveSession', { connectionId: c }), true);
    assert.equal(await call(other, 'getLiveSession', { connectionId: c }), false);
    assert.equal(await call(owner, 'removeLiveSession', { connectionId: c }), false, 'already removed');

    // with no session, a message is simply pending
    const m = await add(other, c);
    assert.equal(await count(other, { connectionId: c }), 1);
    assertTaken(await take(other, { connectionId: c, deleteMessages: true }), [m]);
  });

  test('rpc.on / rpc.off answer like the rpc-websockets server', async () => {
    const client = await connect(server.url);
    assert.deepEqual(await client.subscribe('messagesReceived'), { messagesReceived: 'ok' });
    assert.deepEqual(await client.subscribe('messagesReceived'), { messagesReceived: 'socket has already been subscribed to event' });
    assert.deepEqual(await client.subscribe('noSuchEvent'), { noSuchEvent: 'provided event invalid' });
    assert.deepEqual(await client.unsubscribe('messagesReceived'), { messagesReceived: 'ok' });
    assert.deepEqual(await client.unsubscribe('messagesReceived'), { messagesReceived: 'not subscribed' });
    assert.deepEqual(await client.subscribe('messagesReceived'), { messagesReceived: 'ok' });
    assert.equal(await call(client, 'ping'), 'pong');
  });

  test('getAvailableMessageCount counts pending messages only', async () => {
    const client = await connect(server.url);
    const c = uuid();
    const m = await seed(client, c, 4);
    assert.equal(await count(client, { connectionId: c }), 4);
    assertTaken(await take(client, { connectionId: c, limit: 1 }), m.slice(0, 1));
    assert.equal(await count(client, { connectionId: c }), 3);
    assertTaken(await take(client, { connectionId: c, limit: 1, deleteMessages: true }), m.slice(1, 2));
    assert.equal(await count(client, { connectionId: c }), 2);
    assert.equal(await call(client, 'removeMessages', { connectionId: c, messageIds: [m[2].id] }), true);
    assert.equal(await count(client, { connectionId: c }), 1);
    assertQueuedMessage((await take(client, { connectionId: c, deleteMessages: true }))[0], { id: m[3].id, payload: m[3].payload });
    assert.equal(await call(client, 'removeMessages', { connectionId: c, messageIds: [m[0].id] }), true);
  });
});
