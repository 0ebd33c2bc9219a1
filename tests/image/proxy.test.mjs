// The HA composition's public proxy (deploy/compose/haproxy.cfg, run by the real HAProxy) in
// front of two real SocketDock instances. scripts/image-test runs this file in a network and
// mount namespace of its own (unshare) whose /etc/hosts gives the composition's service names
// loopback addresses (socketdock-1 = 127.0.0.2, socketdock-2 = 127.0.0.3), so the file is used
// as it is, its fixed ports included. It checks that agents' WebSockets pass to SocketDock, that
// SocketDock's unauthenticated /socket/<id>/send is refused from outside (while SocketDock
// itself serves it), and that with one SocketDock instance killed new sockets go to the other.
//
// Environment: MPR_IN_PROXY_NAMESPACE=1 (set by scripts/image-test; the file refuses to bind the
// machine's own ports otherwise), HAPROXY_CFG (default deploy/compose/haproxy.cfg).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { WebSocket, REPO, pollUntil } from '../conformance/harness.mjs';

const CFG = process.env.HAPROXY_CFG || path.join(REPO, 'deploy', 'compose', 'haproxy.cfg');
const SOCKETDOCK_RUN = process.env.MPR_SOCKETDOCK_RUN || path.resolve(REPO, '..', 'shared', 'tools', 'socketdock-run');
const PUBLIC = '127.0.0.1:8080';
const SOCKETDOCKS = { 'socketdock-1': '127.0.0.2', 'socketdock-2': '127.0.0.3' };

const children = [];
function start(command, args) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.output = '';
  child.stdout.on('data', (chunk) => (child.output += chunk));
  child.stderr.on('data', (chunk) => (child.output += chunk));
  child.exited = new Promise((resolve) => child.once('exit', resolve));
  children.push(child);
  return child;
}

/** Opens a WebSocket, sends `text`, resolves with the first frame answered (or rejects). */
function echoThrough(url, text, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    const timer = setTimeout(() => {
      socket.terminate();
      reject(new Error(`no answer through ${url} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('open', () => socket.send(text));
    socket.once('message', (data) => {
      clearTimeout(timer);
      socket.close();
      resolve(data.toString());
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

async function status(url, init) {
  return (await fetch(url, init)).status;
}

describe('the public proxy of deploy/compose/ha.yml', { skip: process.env.MPR_IN_PROXY_NAMESPACE !== '1' && 'run by scripts/image-test in a namespace of its own' }, () => {
  const socketdocks = {};

  before(async () => {
    for (const [name, ip] of Object.entries(SOCKETDOCKS)) {
      // The loopback backend answers each frame through the instance's own /socket/<id>/send.
      socketdocks[name] = start(SOCKETDOCK_RUN, [
        '--bindip', ip, '--bindport', '8765', '--backend', 'loopback', '--endpoint', `http://${ip}:8765`,
      ]);
    }
    start('haproxy', ['-db', '-f', CFG]);
    // Up once each SocketDock answers a frame directly; through the proxy once its health checks
    // (every 2 s) see an instance up.
    for (const ip of Object.values(SOCKETDOCKS)) {
      const up = await pollUntil(() => echoThrough(`ws://${ip}:8765/ws`, 'hi', 2000).then(() => true, () => false), {
        timeoutMs: 90_000,
        intervalMs: 500,
      });
      assert.ok(up, `SocketDock on ${ip} did not start:\n${children.map((c) => c.output).join('\n')}`);
    }
  });

  after(async () => {
    for (const child of children) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await child.exited;
    }
  });

  it("passes agents' WebSockets at /ws to SocketDock", async () => {
    const answered = await pollUntil(
      () => echoThrough(`ws://${PUBLIC}/ws`, 'hello', 3000).then((text) => text, () => null),
      { timeoutMs: 30_000, intervalMs: 500 },
    );
    assert.equal(answered, 'Hello yourself');
  });

  it("refuses SocketDock's /socket/<id>/send and /disconnect from outside, which SocketDock itself serves", async () => {
    const id = 'a'.repeat(32);
    const send = { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'spoofed' };
    // SocketDock serves the route (500 FAIL: no such socket), so the 403 is the proxy's.
    assert.equal(await status(`http://127.0.0.2:8765/socket/${id}/send`, send), 500);
    assert.equal(await status(`http://${PUBLIC}/socket/${id}/send`, send), 403);
    assert.equal(await status(`http://${PUBLIC}/socket/${id}/disconnect`, { method: 'POST' }), 403);
    assert.equal(await status(`http://${PUBLIC}//socket/${id}/send`, send), 403, 'a doubled slash');
  });

  it('sends new sockets to the SocketDock instance left when one is killed', async () => {
    socketdocks['socketdock-1'].kill('SIGKILL');
    await socketdocks['socketdock-1'].exited;
    // Each of several new sockets is answered, whichever instance the proxy first picks: a
    // refused connection is retried on the other one.
    for (let i = 0; i < 6; i++) assert.equal(await echoThrough(`ws://${PUBLIC}/ws`, `after kill ${i}`), 'Hello yourself');
  });
});
