// The e2e world's plumbing on its own: the failover TCP balancer (agents.mjs) and the real
// SocketDock's starter (socketdock.mjs).

import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, test } from 'node:test';
import { WebSocket, pollUntil } from '../conformance/harness.mjs';
import { startFailoverBalancer } from './agents.mjs';
import { startSocketDock, stopSocketDocks } from './socketdock.mjs';

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

/** An HTTP server standing in for mpr's /socketdock/* routes: records each callback. */
async function callbackRecorder() {
  const calls = [];
  const waiters = new Set();
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const url = new URL(req.url, 'http://x');
      calls.push({ route: url.pathname, secret: url.searchParams.get('secret'), body: JSON.parse(body || 'null') });
      res.end();
      for (const waiter of waiters) waiter();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    calls,
    /** Resolves with the first call to `route` (seen or to come). */
    next: (route) => new Promise((resolve) => {
      const check = () => {
        const call = calls.find((c) => c.route === route);
        if (call) waiters.delete(check), resolve(call);
      };
      waiters.add(check);
      check();
    }),
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

test('startSocketDock: callbacks with the secret, its send URL under its own endpoint, SIGTERM exits 0, kill -9', async () => {
  const backend = await callbackRecorder();
  closers.push(backend.close, stopSocketDocks);
  const dock = await startSocketDock({ backend: backend.url, secret: 's3cr3t' });

  const socket = new WebSocket(dock.wsUrl);
  const frames = [];
  socket.on('message', (data) => frames.push(String(data)));
  await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject));
  const connected = await backend.next('/socketdock/connect');
  assert.equal(connected.secret, 's3cr3t');
  assert.ok(connected.body.meta.send.startsWith(`${dock.endpoint}/socket/`), `send URL under --endpoint: ${connected.body.meta.send}`);
  socket.send('hello');
  const message = await backend.next('/socketdock/message');
  assert.equal(message.secret, 's3cr3t');
  assert.equal(message.body.message, 'hello');
  const sent = await fetch(connected.body.meta.send, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'back' });
  assert.equal(sent.status, 200);
  await pollUntil(async () => frames.length > 0, { timeoutMs: 10_000 });
  assert.deepEqual(frames, ['back']);
  socket.terminate();

  assert.deepEqual(await dock.stop(), { code: 0, signal: null }, 'SIGTERM: exits 0');
  const crashed = await startSocketDock({ backend: backend.url, secret: 's3cr3t' });
  await crashed.kill();
  assert.deepEqual(await crashed.exited(), { code: null, signal: 'SIGKILL' });
  await assert.rejects(fetch(`${crashed.endpoint}/`), 'nothing answers once it is killed');
});
