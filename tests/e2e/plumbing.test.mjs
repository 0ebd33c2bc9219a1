// The e2e world's plumbing on its own: the failover TCP balancer (agents.mjs).

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, test } from 'node:test';
import { startFailoverBalancer } from './agents.mjs';

/** A TCP server answering each connection's first chunk with `name:chunk`. */
async function namedEcho(name) {
  const server = net.createServer((socket) => socket.once('data', (d) => socket.end(`${name}:${d}`)).on('error', () => {}));
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: server.address().port, close: () => new Promise((resolve) => server.close(resolve)) };
}

/** Sends `text` through the balancer at once (before any backend accepted) and reads the answer until the end. */
function ask(port, text) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => socket.write(text));
    let answer = '';
    socket.on('data', (d) => { answer += d; });
    socket.on('close', () => resolve(answer));
    socket.on('error', reject);
  });
}

const closers = [];
after(() => Promise.all(closers.map((close) => close())));

test('failover balancer: preferred backend first, a dead one skipped, none alive closes the connection', async () => {
  const a = await namedEcho('a');
  const b = await namedEcho('b');
  closers.push(a.close, b.close);
  const balancer = await startFailoverBalancer([a.port, b.port]);
  closers.push(async () => balancer.close());

  assert.equal(await ask(balancer.port, 'one'), 'a:one', 'the first backend by default');
  balancer.route(b.port);
  assert.equal(await ask(balancer.port, 'two'), 'b:two', 'the routed backend');
  await b.close();
  assert.equal(await ask(balancer.port, 'three'), 'a:three', 'a dead preferred backend is skipped');
  await a.close();
  assert.equal(await ask(balancer.port, 'four'), '', 'no backend accepts: the connection is closed');
  assert.throws(() => balancer.route(1), /not a backend/);
});
