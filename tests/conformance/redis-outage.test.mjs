// Truthful replies when Redis is unreachable: every call that needs Redis answers a JSON-RPC
// error (never a success such as [], 0, true or an id, and never silence), and the server
// recovers by itself when Redis is back.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRedis, startServer, stopAll, uniquePrefix, withLogs, connect, closeAllClients, call,
  uuid, didKey, payload, add, take, count, assertTaken, pollUntil, singleNodeOnly,
} from './harness.mjs';

let redis;
let server;
const logs = () => [server];
const test = (name, fn) => it(name, { timeout: 30_000 }, withLogs(logs, fn));

/** The call must be rejected with a JSON-RPC error object within timeoutMs. */
async function mustFail(client, method, params, timeoutMs = 4000) {
  const started = Date.now();
  let outcome;
  try {
    outcome = { result: await client.call(method, params, timeoutMs) };
  } catch (error) {
    outcome = { error };
  }
  const took = Date.now() - started;
  assert.ok(!('result' in outcome), `${method} answered ${JSON.stringify(outcome.result)} while Redis is down`);
  assert.ok(!(outcome.error instanceof Error), `${method}: no reply within ${timeoutMs} ms while Redis is down (${outcome.error?.message})`);
  assert.ok(Number.isInteger(outcome.error.code), `${method}: error ${JSON.stringify(outcome.error)}`);
  assert.ok(outcome.error.code <= -32000 && outcome.error.code >= -32768, `${method}: error code ${outcome.error.code}`);
  assert.notEqual(outcome.error.code, -32602, `${method}: a Redis failure is not invalid params`);
  assert.equal(typeof outcome.error.message, 'string');
  return { error: outcome.error, took };
}

describe('Redis outage', { skip: singleNodeOnly('kills and restarts its redis-server') }, () => {
  before(async () => {
    redis = await startRedis();
    server = await startServer({ redis, prefix: uniquePrefix(), env: { REDIS_TIMEOUT_MS: '500' } });
  });
  after(async () => {
    await closeAllClients();
    await stopAll();
  });

  test('calls fail with an error reply while Redis is down, and work again once it is back', async (t) => {
    const client = await connect(server.url);
    const c = uuid();
    const before = await add(client, c);

    redis.kill('SIGKILL');
    await redis.exited();

    const params = {
      addMessage: { connectionId: c, recipientDids: [didKey()], payload: payload() },
      takeFromQueue: { connectionId: c, deleteMessages: true },
      getAvailableMessageCount: { connectionId: c },
      removeMessages: { connectionId: c, messageIds: [before.id] },
      removeAllMessages: { connectionId: c },
      addLiveSession: { connectionId: c, sessionId: uuid() },
      getLiveSession: { connectionId: uuid() },
    };
    for (const [method, p] of Object.entries(params)) {
      const { error, took } = await mustFail(client, method, p);
      t.diagnostic(`${method}: ${JSON.stringify(error)} after ${took} ms`);
    }
    // the socket is still usable
    assert.equal(await call(client, 'ping'), 'pong');

    redis = await startRedis({ port: redis.port });
    const recovered = await pollUntil(
      async () => {
        try {
          await count(client, { connectionId: c });
          return true;
        } catch {
          return false;
        }
      },
      { timeoutMs: 10_000, intervalMs: 200 },
    );
    assert.ok(recovered, 'calls still failing 10 s after Redis came back');
    // the restarted Redis is empty (no persistence): nothing from before, and no message
    // from a failed addMessage was stored anyway
    assert.equal(await count(client, { connectionId: c }), 0);
    const m = await add(client, c);
    assertTaken(await take(client, { connectionId: c, deleteMessages: true }), [m]);
  });
});
