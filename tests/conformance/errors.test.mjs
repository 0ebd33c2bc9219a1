// Error replies and raw framing: -32601 / -32602 through the real client, then raw `ws` frames
// for -32700, notifications, batches, id echo, odd inputs and the frame size limit (1009).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRedis, startServer, stopAll, uniquePrefix, withLogs, connect, closeAllClients, call, callError,
  rawConnect, sleep, uuid, didKey, payload, add, count, take, assertTaken, assertAddResult,
} from './harness.mjs';

const MAX_FRAME = 65536;

let redis;
let server;
const logs = () => [server];
const test = (name, fn) => it(name, { timeout: 30_000 }, withLogs(logs, fn));

/** JSON-RPC error object: integer code, string message, optional data, nothing else. */
function assertErrorObject(error, code) {
  assert.equal(typeof error, 'object');
  assert.notEqual(error, null);
  assert.equal(error.code, code, `error ${JSON.stringify(error)}`);
  assert.equal(typeof error.message, 'string');
  assert.ok(error.message.length > 0);
  for (const key of Object.keys(error)) assert.ok(['code', 'message', 'data'].includes(key), `unexpected error member ${key}`);
}

describe('errors and framing', { concurrency: true }, () => {
  before(async () => {
    redis = await startRedis();
    server = await startServer({
      redis,
      prefix: uniquePrefix(),
      env: { WS_MAX_MESSAGE_BYTES: String(MAX_FRAME) },
    });
  });
  after(async () => {
    await closeAllClients();
    await stopAll();
  });

  test('unknown method -> -32601, socket still usable', async () => {
    const client = await connect(server.url);
    assertErrorObject(await callError(client, 'noSuchMethod', { connectionId: uuid() }), -32601);
    assertErrorObject(await callError(client, 'noSuchMethod'), -32601);
    assertErrorObject(await callError(client, 'TakeFromQueue', { connectionId: uuid() }), -32601);
    assert.equal(await call(client, 'ping'), 'pong');
  });

  // [title, method, params(connectionId), field the message must name]
  const good = (c) => ({ connectionId: c, recipientDids: [didKey()], payload: payload() });
  const without = (object, key) => {
    const copy = { ...object };
    delete copy[key];
    return copy;
  };
  const invalid = [
    ['addMessage without connectionId', 'addMessage', (c) => without(good(c), 'connectionId'), 'connectionId'],
    ['addMessage with numeric connectionId', 'addMessage', (c) => ({ ...good(c), connectionId: 42 }), 'connectionId'],
    ['addMessage with recipientDids not an array', 'addMessage', (c) => ({ ...good(c), recipientDids: 'did:key:z6Mkabc' }), 'recipientDids'],
    ['addMessage with a non-string recipientDid', 'addMessage', (c) => ({ ...good(c), recipientDids: [7] }), 'recipientDids'],
    ['addMessage with payload not an object', 'addMessage', (c) => ({ ...good(c), payload: 'not-an-object' }), 'payload'],
    ['addMessage with payload an array', 'addMessage', (c) => ({ ...good(c), payload: [1, 2] }), 'payload'],
    ['addMessage without payload', 'addMessage', (c) => without(good(c), 'payload'), 'payload'],
    ['takeFromQueue without connectionId', 'takeFromQueue', () => ({ limit: 1 }), 'connectionId'],
    ['takeFromQueue with limit -1', 'takeFromQueue', (c) => ({ connectionId: c, limit: -1 }), 'limit'],
    ['takeFromQueue with limit "ten"', 'takeFromQueue', (c) => ({ connectionId: c, limit: 'ten' }), 'limit'],
    ['takeFromQueue with limitBytes -1', 'takeFromQueue', (c) => ({ connectionId: c, limitBytes: -1 }), 'limitBytes'],
    ['takeFromQueue with deleteMessages "yes"', 'takeFromQueue', (c) => ({ connectionId: c, deleteMessages: 'yes' }), 'deleteMessages'],
    ['takeFromQueue with numeric recipientDid', 'takeFromQueue', (c) => ({ connectionId: c, recipientDid: 7 }), 'recipientDid'],
    ['getAvailableMessageCount without connectionId', 'getAvailableMessageCount', () => ({}), 'connectionId'],
    ['removeMessages with a number among messageIds', 'removeMessages', (c) => ({ connectionId: c, messageIds: ['aaaaaaaaaaaaaaaaaaaaaaaa', 1] }), 'messageIds'],
    ['removeMessages without messageIds', 'removeMessages', (c) => ({ connectionId: c }), 'messageIds'],
    ['removeMessages with messageIds not an array', 'removeMessages', (c) => ({ connectionId: c, messageIds: 'aaaaaaaaaaaaaaaaaaaaaaaa' }), 'messageIds'],
    ['removeAllMessages without connectionId', 'removeAllMessages', () => ({ recipientDid: didKey() }), 'connectionId'],
    ['addLiveSession without sessionId', 'addLiveSession', (c) => ({ connectionId: c }), 'sessionId'],
    ['addLiveSession with numeric sessionId', 'addLiveSession', (c) => ({ connectionId: c, sessionId: 5 }), 'sessionId'],
    ['getLiveSession with numeric connectionId', 'getLiveSession', () => ({ connectionId: 42 }), 'connectionId'],
    ['removeLiveSession without connectionId', 'removeLiveSession', () => ({}), 'connectionId'],
  ];
  for (const [title, method, makeParams, field] of invalid) {
    test(`invalid params: ${title} -> -32602 naming ${field}`, async () => {
      const client = await connect(server.url);
      const c = uuid();
      const error = await callError(client, method, makeParams(c));
      assertErrorObject(error, -32602);
      assert.ok(error.message.includes(field), `message must name ${field}: ${JSON.stringify(error)}`);
      // the socket is still usable, and the rejected call changed nothing
      assert.equal(await call(client, 'ping'), 'pong');
      assert.equal(await count(client, { connectionId: c }), 0);
      assert.equal(await call(client, 'getLiveSession', { connectionId: c }), false);
    });
  }

  test('params missing or not an object -> -32602', async () => {
    const client = await connect(server.url);
    for (const method of ['takeFromQueue', 'getAvailableMessageCount', 'addMessage', 'removeMessages', 'removeAllMessages', 'getLiveSession', 'addLiveSession', 'removeLiveSession']) {
      assertErrorObject(await callError(client, method), -32602);
      assertErrorObject(await callError(client, method, [uuid()]), -32602);
    }
    assert.equal(await call(client, 'ping'), 'pong');
  });

  test('a valid call right after an invalid one on the same socket works', async () => {
    const client = await connect(server.url);
    const conn = uuid();
    const [bad, ok] = await Promise.allSettled([
      call(client, 'addMessage', { connectionId: conn, recipientDids: 'x', payload: payload() }),
      call(client, 'addMessage', { connectionId: conn, recipientDids: [didKey()], payload: payload() }),
    ]);
    assert.equal(bad.status, 'rejected');
    assert.equal(bad.reason.code, -32602);
    assert.equal(ok.status, 'fulfilled');
    assertAddResult(ok.value);
    assert.equal(await count(client, { connectionId: conn }), 1);
  });

  test('raw: non-JSON text -> {"jsonrpc":"2.0","error":{"code":-32700,...},"id":null}', async () => {
    const raw = await rawConnect(server.url);
    raw.send('this is not json {');
    const reply = await raw.next();
    assert.equal(reply.isBinary, false, 'replies are text frames');
    assert.deepEqual(Object.keys(reply.value).sort(), ['error', 'id', 'jsonrpc']);
    assert.equal(reply.value.jsonrpc, '2.0');
    assert.equal(reply.value.id, null);
    assertErrorObject(reply.value.error, -32700);
    raw.send({ jsonrpc: '2.0', method: 'ping', id: 1 });
    assert.deepEqual((await raw.next()).value, { jsonrpc: '2.0', result: 'pong', id: 1 });
  });

  test('raw: responses have exactly jsonrpc/result/id, and echo the id as sent', async () => {
    const raw = await rawConnect(server.url);
    raw.send({ jsonrpc: '2.0', method: 'ping', id: 41 });
    assert.deepEqual((await raw.next()).value, { jsonrpc: '2.0', result: 'pong', id: 41 });
    raw.send({ jsonrpc: '2.0', method: 'ping', id: 'abc-7' });
    assert.deepEqual((await raw.next()).value, { jsonrpc: '2.0', result: 'pong', id: 'abc-7' });
    raw.send({ jsonrpc: '2.0', method: 'nope', params: {}, id: 42 });
    const error = (await raw.next()).value;
    assert.deepEqual(Object.keys(error).sort(), ['error', 'id', 'jsonrpc']);
    assert.equal(error.id, 42);
    assertErrorObject(error.error, -32601);
  });

  test('raw: a notification (no id) gets no reply', async () => {
    const raw = await rawConnect(server.url);
    raw.send({ jsonrpc: '2.0', method: 'ping' });
    raw.send({ jsonrpc: '2.0', method: 'noSuchMethod' });
    raw.send({ jsonrpc: '2.0', method: 'takeFromQueue', params: { limit: -1 } });
    await sleep(300);
    assert.deepEqual(raw.pending(), [], 'no frame may answer a notification');
    raw.send({ jsonrpc: '2.0', method: 'ping', id: 2 });
    assert.deepEqual((await raw.next()).value, { jsonrpc: '2.0', result: 'pong', id: 2 });
    await sleep(100);
    assert.deepEqual(raw.pending(), []);
  });

  test('raw: a batch of two pings -> an array of two responses', async () => {
    const raw = await rawConnect(server.url);
    raw.send([
      { jsonrpc: '2.0', method: 'ping', id: 1 },
      { jsonrpc: '2.0', method: 'ping', id: 2 },
    ]);
    const reply = (await raw.next()).value;
    assert.ok(Array.isArray(reply), `batch reply must be an array: ${JSON.stringify(reply)}`);
    assert.equal(reply.length, 2);
    const byId = [...reply].sort((a, b) => a.id - b.id);
    assert.deepEqual(byId, [
      { jsonrpc: '2.0', result: 'pong', id: 1 },
      { jsonrpc: '2.0', result: 'pong', id: 2 },
    ]);
    await sleep(100);
    assert.deepEqual(raw.pending(), [], 'one frame for the whole batch');
  });

  test('raw: batch edge cases (with a notification, with an error, empty)', async () => {
    const raw = await rawConnect(server.url);
    raw.send([
      { jsonrpc: '2.0', method: 'ping', id: 'a' },
      { jsonrpc: '2.0', method: 'ping' },
      { jsonrpc: '2.0', method: 'noSuchMethod', id: 'b' },
    ]);
    const reply = (await raw.next()).value;
    assert.ok(Array.isArray(reply), JSON.stringify(reply));
    assert.equal(reply.length, 2, `the notification gets no response: ${JSON.stringify(reply)}`);
    const a = reply.find((r) => r.id === 'a');
    const b = reply.find((r) => r.id === 'b');
    assert.deepEqual(a, { jsonrpc: '2.0', result: 'pong', id: 'a' });
    assertErrorObject(b.error, -32601);

    raw.send([]);
    const empty = (await raw.next()).value;
    assert.ok(!Array.isArray(empty), 'an empty batch is answered with one error object');
    assert.equal(empty.id, null);
    assertErrorObject(empty.error, -32600);

    raw.send([{ jsonrpc: '2.0', method: 'ping' }]);
    await sleep(300);
    assert.deepEqual(raw.pending(), [], 'a batch of notifications gets no reply');
    raw.send({ jsonrpc: '2.0', method: 'ping', id: 3 });
    assert.deepEqual((await raw.next()).value, { jsonrpc: '2.0', result: 'pong', id: 3 });
  });

  test('raw: malformed requests get error replies and never break the socket', async () => {
    const raw = await rawConnect(server.url);
    // [frame, acceptable reply ids, acceptable error codes]
    const invalidRequest = [-32600];
    const cases = [
      ['42', [null], invalidRequest],
      ['"just a string"', [null], invalidRequest],
      ['null', [null], invalidRequest],
      ['true', [null], invalidRequest],
      // not Request objects even without an id: JSON-RPC 2.0 answers them (its own examples)
      ['{}', [null], invalidRequest],
      ['{"foo":"boo"}', [null], invalidRequest],
      ['{"jsonrpc":"2.0","method":1,"params":"bar"}', [null], invalidRequest],
      // invalid requests with an id: echoed (as rpc-websockets does) or null (JSON-RPC allows it)
      ['{"jsonrpc":"2.0","id":9}', [9, null], [-32600, -32602]],
      ['{"jsonrpc":"1.0","method":"ping","id":10}', [10, null], invalidRequest],
      ['{"jsonrpc":"2.0","method":5,"id":11}', [11, null], invalidRequest],
      ['{"jsonrpc":"2.0","method":"getAvailableMessageCount","params":"x","id":12}', [12], [-32602, -32600]],
      ['{"jsonrpc":"2.0","method":"ping","id":13', [null], [-32700]],
      ['\u0000\u0001\u0002', [null], [-32700]],
    ];
    const problems = [];
    let pingId = 1000;
    for (const [frame, ids, codes] of cases) {
      raw.send(frame);
      const marker = ++pingId;
      raw.send({ jsonrpc: '2.0', method: 'ping', id: marker });
      const replies = [];
      for (;;) {
        const reply = (await raw.next()).value;
        if (reply && reply.id === marker && reply.result === 'pong') break;
        replies.push(reply);
      }
      const ok =
        replies.length === 1 &&
        replies[0].jsonrpc === '2.0' &&
        ids.includes(replies[0].id) &&
        !('result' in replies[0]) &&
        codes.includes(replies[0].error?.code) &&
        typeof replies[0].error?.message === 'string';
      if (!ok) problems.push(`${frame} -> ${replies.length ? replies.map((r) => JSON.stringify(r)).join(' ') : 'no reply'} (expected one error ${codes.join('|')} with id ${ids.map(String).join('|')})`);
    }
    raw.send('[1,2]');
    const batch = (await raw.next()).value;
    if (!(Array.isArray(batch) && batch.length === 2 && batch.every((r) => r.id === null && r.error?.code === -32600))) {
      problems.push(`[1,2] -> ${JSON.stringify(batch)} (expected two -32600 errors with id null)`);
    }
    raw.send({ jsonrpc: '2.0', method: 'ping', id: 14 });
    assert.deepEqual((await raw.next()).value, { jsonrpc: '2.0', result: 'pong', id: 14 });
    assert.deepEqual(problems, [], `malformed frames answered wrongly:\n${problems.join('\n')}`);
  });

  test(`frames up to WS_MAX_MESSAGE_BYTES (${MAX_FRAME}) are accepted`, async () => {
    const client = await connect(server.url);
    const conn = uuid();
    const body = payload({ ciphertextLength: MAX_FRAME - 2000 });
    const m = await add(client, conn, { body });
    assertTaken(await take(client, { connectionId: conn, deleteMessages: true }), [m]);
  });

  test(`a frame larger than WS_MAX_MESSAGE_BYTES closes the socket with 1009`, async () => {
    const raw = await rawConnect(server.url);
    const params = { connectionId: uuid(), recipientDids: [didKey()], payload: payload({ ciphertextLength: MAX_FRAME + 4000 }) };
    raw.send({ jsonrpc: '2.0', method: 'addMessage', params, id: 1 });
    const closed = await raw.closed(5000);
    assert.ok(closed, 'socket was not closed');
    assert.equal(closed.code, 1009);
    // nothing was queued and the server still serves new sockets
    const client = await connect(server.url);
    assert.equal(await call(client, 'ping'), 'pong');
    assert.equal(await count(client, { connectionId: params.connectionId }), 0);
  });
});
