// AUTH_TOKENS through the real rpc-websockets client: it carries the token in its URL
// (`?token=`), as an unmodified MPR client can; without one, or with a wrong one, it cannot
// connect.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRedis, startServer, stopAll, uniquePrefix, withLogs, connect, closeAllClients, call, didKey, payload,
  add, count,
} from './harness.mjs';

let redis;
let server;
const logs = () => [server];
const test = (name, fn) => it(name, { timeout: 30_000 }, withLogs(logs, fn));

describe('tokens', () => {
  before(async () => {
    redis = await startRedis();
    server = await startServer({
      redis, prefix: uniquePrefix(), env: { AUTH_TOKENS: 'mediator-a,mediator-b' },
    });
  });
  after(async () => {
    await closeAllClients();
    await stopAll();
  });

  test('the MPR client connects with the token in its URL and works as usual', async () => {
    const client = await connect(`${server.url}/?token=mediator-b`);
    const connectionId = `c-${Date.now()}`;
    await add(client, connectionId, { recipientDids: [didKey()], body: payload() });
    assert.equal(await count(client, { connectionId }), 1);
    assert.equal(await call(client, 'ping', []), 'pong');
  });

  test('without a token, or with a wrong one, it cannot connect', async () => {
    await assert.rejects(connect(server.url, 3000));
    await assert.rejects(connect(`${server.url}/?token=mediator-c`, 3000));
  });
});
