// The SocketDock inbound transport's HTTP surface: what it refuses, before anything reaches
// Credo (the agent given here fails the test if it is asked anything). Frames and wraps handled
// by real Credo agents are tested end to end in tests/e2e/ha-socketdock.test.mjs.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { MprSocketDockInboundTransport } from '../build/index.js';
import { freePort } from './helpers.mjs';

const untouchable = new Proxy({}, { get: (_, name) => () => { throw new Error(`Credo was asked for ${String(name)}`); } });
const didcomm = Object.fromEntries(['DidCommMessageReceiver', 'DidCommTransportService', 'DidCommMessageSender', 'DidCommMessagePickupApi', 'DidCommConnectionService', 'DidCommOutboundMessageContext'].map((n) => [n, n]));
const agentContext = { dependencyManager: { resolve: () => untouchable }, config: { logger: { debug() {}, info() {}, warn() {}, error() {} } } };

let transport;
let url;

before(async () => {
  const port = await freePort();
  transport = new MprSocketDockInboundTransport({ port, didcomm, maxBodyBytes: 1024 });
  await transport.start(agentContext);
  url = `http://127.0.0.1:${port}/`;
});

after(() => transport.stop());

async function post(headers, body) {
  const response = await fetch(url, { method: 'POST', headers, body });
  return { status: response.status, text: await response.text() };
}

test('a frame without X-Mpr-Socket-Id is refused, naming the header', async () => {
  assert.deepEqual(await post({ 'content-type': 'application/didcomm-envelope-enc' }, '{}'), { status: 400, text: 'x-mpr-socket-id is required' });
});

test('a frame that is not JSON is refused', async () => {
  assert.deepEqual(await post({ 'x-mpr-socket-id': 'a'.repeat(32) }, 'not json'), { status: 400, text: 'the frame is not JSON' });
});

test('a body over maxBodyBytes is refused', async () => {
  assert.equal((await post({ 'x-mpr-socket-id': 'a'.repeat(32) }, 'x'.repeat(2048))).status, 413);
});

test('only POST is served', async () => {
  assert.equal((await fetch(url)).status, 405);
});

test('a wrap request names what is wrong with it', async () => {
  const wrap = (body) => post({ 'x-mpr-deliver': 'c-1', 'content-type': 'application/json' }, JSON.stringify(body));
  assert.deepEqual(await wrap({ connectionId: 'c-2', messages: [] }), { status: 400, text: "connectionId must be the x-mpr-deliver header's" });
  assert.deepEqual(await wrap({ connectionId: 'c-1', messages: [] }), { status: 400, text: 'messages must be a non-empty array' });
  const good = { id: 'm', receivedAt: new Date().toISOString(), encryptedMessage: { ciphertext: 'c' } };
  assert.deepEqual(await wrap({ connectionId: 'c-1', messages: [good, { id: 'n', receivedAt: 'yesterday', encryptedMessage: {} }] }), {
    status: 400,
    text: 'messages[1] must be {id, receivedAt, encryptedMessage}',
  });
});
