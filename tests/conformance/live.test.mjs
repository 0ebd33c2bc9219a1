// Live sessions across instances: pushes of messagesReceived to the socket that called
// addLiveSession (whichever instance holds it), in-flight accounting, the end of a session when
// its socket closes or drops, and when its instance is killed (bounded by LIVENESS_TIMEOUT_MS).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRedis, startServer, stopAll, uniquePrefix, withLogs, connect, closeClient, closeAllClients, call,
  rawConnect, sleep, uuid, didKey, payload, add, take, count, assertTaken, assertQueuedMessage, pollUntil,
  liveSocket, assertPush,
} from './harness.mjs';

const VISIBILITY_MS = 1500;
const LIVENESS_MS = 2000;

let redis;
let A;
let B;
let K; // the instance that gets SIGKILLed
const extra = [];
const logs = () => [A, B, K, ...extra];
const test = (name, fn) => it(name, { timeout: 30_000 }, withLogs(logs, fn));

describe('live sessions (instances A, B, K on one Redis)', { concurrency: true }, () => {
  before(async () => {
    redis = await startRedis();
    const prefix = uniquePrefix();
    const env = { VISIBILITY_TIMEOUT_MS: String(VISIBILITY_MS), LIVENESS_TIMEOUT_MS: String(LIVENESS_MS) };
    [A, B, K] = await Promise.all([
      startServer({ redis, prefix, env, name: 'A' }),
      startServer({ redis, prefix, env, name: 'B' }),
      startServer({ redis, prefix, env, name: 'K' }),
    ]);
    // Let the three instances learn of each other before the tests below bind sessions; the
    // cold-start case (a session bound on an instance that just joined) has its own test.
    await sleep(LIVENESS_MS / 2);
  });
  after(async () => {
    await closeAllClients();
    await stopAll();
  });

  test('a message added through B is pushed to the live socket on A; in flight until removed', async () => {
    const c = uuid();
    const live = await liveSocket(A, c);
    const other = await connect(B.url);
    assert.equal(await call(other, 'getLiveSession', { connectionId: c }), true, 'B sees the session bound on A');

    const m = await add(other, c);
    const got = await live.waitMessages(1);
    assert.equal(got.length, 1, 'no messagesReceived push within 3 s');
    assert.equal(live.pushes.length, 1);
    assertPush(live.pushes[0], c);
    assertQueuedMessage(got[0], { id: m.id, payload: m.payload, notBefore: m.sentAt, notAfter: m.ackAt });

    // in flight: not counted, not handed out again
    assert.equal(await count(other, { connectionId: c }), 0);
    assert.deepEqual(await take(other, { connectionId: c }), []);

    assert.equal(await call(live.client, 'removeMessages', { connectionId: c, messageIds: [m.id] }), true);
    await sleep(VISIBILITY_MS + 500);
    assert.equal(await count(other, { connectionId: c }), 0, 'a removed pushed message came back');
    assert.deepEqual(await take(other, { connectionId: c }), []);
    assert.equal(live.messages().length, 1, 'the message was pushed more than once');
  });

  test('a message added on the same instance is pushed too; several arrive in order', async () => {
    const c = uuid();
    const live = await liveSocket(A, c);
    const other = await connect(A.url);
    const m = [];
    for (let i = 0; i < 3; i++) m.push(await add(other, c));
    const got = await live.waitMessages(3);
    for (const push of live.pushes) assertPush(push, c);
    assertTaken(got, m);
    assert.equal(await count(other, { connectionId: c }), 0);
    assert.equal(await call(live.client, 'removeMessages', { connectionId: c, messageIds: m.map((x) => x.id) }), true);
    await sleep(300);
    assert.equal(live.messages().length, 3);
  });

  test('raw push frame: {"jsonrpc":"2.0","method":"messagesReceived","params":{...}} with no id', async () => {
    const c = uuid();
    const raw = await rawConnect(A.url);
    raw.send({ jsonrpc: '2.0', method: 'rpc.on', params: ['messagesReceived'], id: 1 });
    assert.deepEqual((await raw.next()).value, { jsonrpc: '2.0', result: { messagesReceived: 'ok' }, id: 1 });
    raw.send({ jsonrpc: '2.0', method: 'addLiveSession', params: { connectionId: c, sessionId: uuid() }, id: 2 });
    assert.deepEqual((await raw.next()).value, { jsonrpc: '2.0', result: true, id: 2 });

    const other = await connect(B.url);
    const m = await add(other, c);
    const frame = await raw.next(3000);
    assert.equal(frame.isBinary, false);
    assert.deepEqual(Object.keys(frame.value).sort(), ['jsonrpc', 'method', 'params'], `push frame: ${frame.text}`);
    assert.equal(frame.value.jsonrpc, '2.0');
    assert.equal(frame.value.method, 'messagesReceived');
    assertPush(frame.value.params, c);
    assertTaken(frame.value.params.messages, [m]);

    raw.send({ jsonrpc: '2.0', method: 'removeMessages', params: { connectionId: c, messageIds: [m.id] }, id: 3 });
    assert.deepEqual((await raw.next()).value, { jsonrpc: '2.0', result: true, id: 3 });
  });

  test('removeLiveSession stops pushes: the next message stays pending', async () => {
    const c = uuid();
    const live = await liveSocket(A, c);
    assert.equal(await call(live.client, 'removeLiveSession', { connectionId: c }), true);
    const other = await connect(B.url);
    assert.equal(await call(other, 'getLiveSession', { connectionId: c }), false);
    const m = await add(other, c);
    await sleep(300);
    assert.equal(live.pushes.length, 0, 'pushed after removeLiveSession');
    assert.equal(await count(other, { connectionId: c }), 1);
    assertTaken(await take(other, { connectionId: c, deleteMessages: true }), [m]);
  });

  test('a socket that closes ends its live session; messages then stay pending', async (t) => {
    const c = uuid();
    const live = await liveSocket(A, c);
    const observer = await connect(B.url);
    assert.equal(await call(observer, 'getLiveSession', { connectionId: c }), true);
    const closedAt = Date.now();
    await closeClient(live.client);
    const ended = await pollUntil(async () => (await call(observer, 'getLiveSession', { connectionId: c })) === false, { timeoutMs: 2000 });
    assert.ok(ended, 'getLiveSession still true 2 s after the socket closed');
    const elapsed = Date.now() - closedAt;
    t.diagnostic(`session ended ${elapsed} ms after close`);
    const m = await add(observer, c);
    assert.equal(await count(observer, { connectionId: c }), 1, `message not pending after the session ended (${elapsed} ms)`);
    assertTaken(await take(observer, { connectionId: c, deleteMessages: true }), [m]);
  });

  test('a socket that drops without a close frame ends its live session', async () => {
    const c = uuid();
    const raw = await rawConnect(A.url);
    raw.send({ jsonrpc: '2.0', method: 'rpc.on', params: ['messagesReceived'], id: 1 });
    await raw.next();
    raw.send({ jsonrpc: '2.0', method: 'addLiveSession', params: { connectionId: c, sessionId: uuid() }, id: 2 });
    assert.deepEqual((await raw.next()).value, { jsonrpc: '2.0', result: true, id: 2 });
    const observer = await connect(B.url);
    assert.equal(await call(observer, 'getLiveSession', { connectionId: c }), true);
    raw.terminate(); // TCP reset, no close handshake
    const ended = await pollUntil(async () => (await call(observer, 'getLiveSession', { connectionId: c })) === false, { timeoutMs: 2000 });
    assert.ok(ended, 'getLiveSession still true 2 s after the socket dropped');
    const m = await add(observer, c);
    assert.equal(await count(observer, { connectionId: c }), 1);
    assertTaken(await take(observer, { connectionId: c, deleteMessages: true }), [m]);
  });

  test('one socket holding sessions for several connections gets each push with its connectionId', async () => {
    const c1 = uuid();
    const c2 = uuid();
    const live = await liveSocket(A, c1);
    assert.equal(await call(live.client, 'addLiveSession', { connectionId: c2, sessionId: uuid() }), true);
    const other = await connect(B.url);
    const m2 = await add(other, c2);
    const m1 = await add(other, c1);
    await live.waitMessages(2);
    assert.equal(live.messages().length, 2);
    const byConnection = new Map();
    for (const push of live.pushes) {
      assertPush(push, push.connectionId);
      byConnection.set(push.connectionId, [...(byConnection.get(push.connectionId) ?? []), ...push.messages]);
    }
    assertTaken(byConnection.get(c1) ?? [], [m1]);
    assertTaken(byConnection.get(c2) ?? [], [m2]);
    await closeClient(live.client);
    const ended = await pollUntil(
      async () =>
        (await call(other, 'getLiveSession', { connectionId: c1 })) === false &&
        (await call(other, 'getLiveSession', { connectionId: c2 })) === false,
      { timeoutMs: 2000 },
    );
    assert.ok(ended, 'closing the socket must end all of its sessions');
    assert.equal(await call(other, 'removeMessages', { connectionId: c1, messageIds: [m1.id] }), true);
    assert.equal(await call(other, 'removeMessages', { connectionId: c2, messageIds: [m2.id] }), true);
  });

  test('a newer addLiveSession from another socket takes the session over; the old socket cannot remove it', async () => {
    const c = uuid();
    const first = await liveSocket(A, c);
    const second = await liveSocket(B, c);
    const observer = await connect(A.url);
    assert.equal(await call(observer, 'getLiveSession', { connectionId: c }), true);
    assert.equal(await call(first.client, 'removeLiveSession', { connectionId: c }), false, 'the session now belongs to the second socket');
    assert.equal(await call(observer, 'getLiveSession', { connectionId: c }), true);
    const m = await add(observer, c);
    assertTaken(await second.waitMessages(1), [m]);
    await sleep(200);
    assert.equal(first.pushes.length, 0, 'pushed to the socket that no longer holds the session');
    // the first socket going away does not end the second socket's session
    await closeClient(first.client);
    await sleep(500);
    assert.equal(await call(observer, 'getLiveSession', { connectionId: c }), true);
    assert.equal(await call(second.client, 'removeLiveSession', { connectionId: c }), true);
    assert.equal(await call(observer, 'getLiveSession', { connectionId: c }), false);
    assert.equal(await call(observer, 'removeMessages', { connectionId: c, messageIds: [m.id] }), true);
  });

  test('a pushed message that is never acknowledged is pending again as soon as its socket closes', async () => {
    const c = uuid();
    const live = await liveSocket(A, c);
    const other = await connect(B.url);
    const m = await add(other, c);
    assertTaken(await live.waitMessages(1), [m]);
    assert.equal(await count(other, { connectionId: c }), 0, 'in flight right after the push');
    const closedAt = Date.now();
    await closeClient(live.client); // the mediator went away without removeMessages
    // Waited for less than the visibility timeout: only the close can bring it back this soon.
    const back = await pollUntil(async () => (await count(other, { connectionId: c })) === 1, { timeoutMs: VISIBILITY_MS - 300 });
    assert.ok(back, `the unacknowledged pushed message was not pending ${Date.now() - closedAt} ms after the close`);
    assertTaken(await take(other, { connectionId: c, deleteMessages: true }), [m]);
    assert.deepEqual(await take(other, { connectionId: c, deleteMessages: true }), []);
  });

  test('a session bound on an instance that just started is live for instances already running', async () => {
    // Both with the default-like liveness timeout of 10 s, so that "just started" lasts a while.
    const prefix = uniquePrefix();
    const env = { VISIBILITY_TIMEOUT_MS: String(VISIBILITY_MS), LIVENESS_TIMEOUT_MS: '10000' };
    const old = await startServer({ redis, prefix, env, name: 'old' });
    await sleep(100);
    const fresh = await startServer({ redis, prefix, env, name: 'fresh' });
    extra.push(old, fresh);
    const clients = [];
    try {
      const c = uuid();
      const live = await liveSocket(fresh, c);
      const observer = await connect(old.url);
      clients.push(live.client, observer);
      assert.equal(await call(observer, 'getLiveSession', { connectionId: c }), true, 'a running instance does not see the session bound on the new instance');
      assert.equal(await call(live.client, 'getLiveSession', { connectionId: c }), true, 'the session was destroyed by another instance\'s getLiveSession');
      const m = await add(observer, c);
      const got = await live.waitMessages(1, 2000);
      assertTaken(got, [m]);
      assert.equal(await call(live.client, 'removeMessages', { connectionId: c, messageIds: [m.id] }), true);
    } finally {
      await Promise.all(clients.map(closeClient));
      await Promise.all([old.stop(), fresh.stop()]);
    }
  });

  test('SIGTERM: the instance closes its sockets, ends their sessions at once and exits 0', async (t) => {
    const prefix = uniquePrefix();
    // its own pair of instances, so that a shutdown cannot disturb the other tests
    const env = { VISIBILITY_TIMEOUT_MS: String(VISIBILITY_MS), LIVENESS_TIMEOUT_MS: '10000', SHUTDOWN_TIMEOUT_MS: '2000' };
    const [G, H] = await Promise.all([
      startServer({ redis, prefix, env, name: 'G' }),
      startServer({ redis, prefix, env, name: 'H' }),
    ]);
    extra.push(G, H);
    const clients = [];
    try {
      await sleep(300);
      const c = uuid();
      const live = await liveSocket(G, c);
      const closed = new Promise((resolve) => live.client.once('close', (code) => resolve(code)));
      const observer = await connect(H.url);
      clients.push(live.client, observer);
      assert.equal(await call(observer, 'getLiveSession', { connectionId: c }), true);

      const stoppedAt = Date.now();
      G.kill('SIGTERM');
      const exited = await Promise.race([G.exited().then(() => true), sleep(5000).then(() => false)]);
      assert.ok(exited, 'still running 5 s after SIGTERM (SHUTDOWN_TIMEOUT_MS=2000)');
      t.diagnostic(`exited ${Date.now() - stoppedAt} ms after SIGTERM with ${G.child.exitCode ?? G.child.signalCode}`);
      assert.equal(G.child.exitCode, 0, `exit status after SIGTERM: ${G.child.exitCode ?? G.child.signalCode}`);
      const code = await Promise.race([closed, sleep(1000).then(() => 'not closed')]);
      assert.notEqual(code, 'not closed', 'the client socket was not closed');

      // ended without waiting for the 10 s liveness timeout
      const ended = await pollUntil(async () => (await call(observer, 'getLiveSession', { connectionId: c })) === false, { timeoutMs: 1000 });
      assert.ok(ended, 'the session of a gracefully stopped instance is still live');
      const m = await add(observer, c);
      assert.equal(await count(observer, { connectionId: c }), 1);
      assertTaken(await take(observer, { connectionId: c, deleteMessages: true }), [m]);
    } finally {
      await Promise.all(clients.map(closeClient));
      await Promise.all([G.stop(), H.stop()]);
    }
  });

  test(`SIGKILL of an instance ends its sessions within LIVENESS_TIMEOUT_MS (${LIVENESS_MS}) and loses no message`, async (t) => {
    const c = uuid();
    const live = await liveSocket(K, c);
    const observer = await connect(B.url);
    assert.equal(await call(observer, 'getLiveSession', { connectionId: c }), true);
    // let K heartbeat at least once after the session was bound
    await sleep(200);

    K.kill('SIGKILL');
    const killedAt = Date.now();
    await K.exited();

    // added while the session may still look live: it must not be lost
    const m1 = await add(observer, c);

    const endedAt = await pollUntil(
      async () => ((await call(observer, 'getLiveSession', { connectionId: c })) === false ? Date.now() : 0),
      { timeoutMs: LIVENESS_MS + 3000, intervalMs: 50 },
    );
    assert.ok(endedAt, `session still live ${LIVENESS_MS + 3000} ms after SIGKILL`);
    const took = endedAt - killedAt;
    t.diagnostic(`session ended ${took} ms after SIGKILL (LIVENESS_TIMEOUT_MS=${LIVENESS_MS})`);
    assert.ok(took <= LIVENESS_MS + 1000, `session ended ${took} ms after SIGKILL; bound is ${LIVENESS_MS} ms (+1 s slack)`);

    // added after the session ended: pending at once
    const m2 = await add(observer, c);
    assert.ok((await count(observer, { connectionId: c })) >= 1, 'a message added after the session ended is not pending');

    // both come out exactly once, m1 at the latest when its visibility timeout has passed
    const seen = [];
    const deadline = Date.now() + VISIBILITY_MS + 3000;
    while (seen.length < 2 && Date.now() < deadline) {
      seen.push(...(await take(observer, { connectionId: c, deleteMessages: true })));
      if (seen.length < 2) await sleep(100);
    }
    assert.deepEqual(seen.map((x) => x.id).sort(), [m1.id, m2.id].sort(), 'each message exactly once');
    for (const x of seen) {
      const expected = x.id === m1.id ? m1 : m2;
      assertQueuedMessage(x, { id: expected.id, payload: expected.payload });
    }
    await sleep(VISIBILITY_MS + 300);
    assert.deepEqual(await take(observer, { connectionId: c, deleteMessages: true }), [], 'a message was handed out twice');
    assert.equal(await count(observer, { connectionId: c }), 0);

    // pushes resume for a new live socket on a surviving instance
    const again = await liveSocket(B, c);
    const m3 = await add(observer, c);
    const got = await again.waitMessages(1);
    assertTaken(got, [m3]);
    assert.equal(await call(again.client, 'removeMessages', { connectionId: c, messageIds: [m3.id] }), true);
  });
});
