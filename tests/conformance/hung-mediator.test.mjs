// A mediator that hangs: a real OS process (mediator-process.mjs) holding a live session is
// SIGSTOPped, so its socket stays open but answers nothing, not even pings. Nothing pushed to it
// may be lost or duplicated, and the recipient's next session gets it promptly and in order:
//
// - detected first (the pings drop the frozen socket): what it held is pending again at once,
//   in its original place. addLiveSession pushes only what a previous socket of the connection
//   was given and still holds (docs/api.md "Live sessions"), so here the new mediator picks the
//   queue up with takeFromQueue right after binding, as a Credo mediator does when a recipient
//   opens a live session;
// - rebound first (the recipient is back through another instance before any ping notices the
//   hang): addLiveSession itself pushes everything the frozen socket was given.
//
// VISIBILITY_TIMEOUT_MS stays at its 30 s default, far beyond every wait here, so only the
// re-delivery on unbind / rebind can explain a message coming back, never its expiry.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import {
  startRedis, startServer, stopAll, uniquePrefix, withLogs, connect, closeAllClients, call, sleep, uuid,
  payload, add, take, count, assertTaken, assertPush, liveSocket, pollUntil, metric, wakeOrTimeout,
} from './harness.mjs';

const MEDIATOR_SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'mediator-process.mjs');
const VISIBILITY_MS = 30_000; // the default, stated so that no harness default shortens it
const LIVENESS_MS = 2000;
const PING_MS = 300;
const PING_MISSES = 2;
const DETECT_BOUND_MS = 10_000; // generous bound on the ping detection (300 ms x 2 expected)
const TAKEOVER_BOUND_MS = 2000; // the bound from addLiveSession's answer to the last message
const QUIET_MS = 700; // after the last expected push: nothing more may come
const PING_TIMEOUTS = 'mpr_sockets_dropped_total{reason="ping_timeout"}';

let redis;
let A; // holds the hung mediator (fast pings)
let B; // the sender and the recipient's next mediator (fast pings)
let C; // holds the hung mediator (pings effectively off)
let D; // the sender and the next mediator for C's connection
const logs = () => [A, B, C, D];
const test = (name, fn) => it(name, { timeout: 30_000 }, withLogs(logs, fn));

// ---------------------------------------------------------------------------------------------
// the mediator process

const mediators = new Set();

function killMediator(m) {
  if (m.child.exitCode === null && m.child.signalCode === null) {
    try {
      process.kill(m.pid, 'SIGKILL'); // also ends a SIGSTOPped process
    } catch {
      // already gone
    }
  }
}
process.on('exit', () => {
  for (const m of mediators) killMediator(m);
});

/**
 * Spawns mediator-process.mjs bound to `connectionId` on `server`; resolves once its
 * addLiveSession answered. `messages` collects what it printed ({id, receivedAt, encryptedMessage}).
 */
async function startMediator(server, connectionId) {
  const child = spawn(process.execPath, [MEDIATOR_SCRIPT, server.url, connectionId, uuid()], {
    stdio: ['pipe', 'pipe', 'pipe'], // stdin only so that it exits when this process goes
  });
  const waiters = [];
  const wake = () => {
    for (const w of waiters.splice(0)) w();
  };
  const m = {
    child,
    pid: child.pid,
    ready: false,
    messages: [],
    connectionIds: new Set(),
    errors: [],
    stderr: '',
    signal: (sig) => process.kill(child.pid, sig),
    /** Resolves once pred() holds; rejects after timeoutMs or when the process ended first. */
    async until(pred, timeoutMs, what) {
      const deadline = Date.now() + timeoutMs;
      while (!pred()) {
        const gone = child.exitCode !== null || child.signalCode !== null;
        if (gone || m.errors.length || Date.now() >= deadline) {
          throw new Error(
            `mediator process (pid ${child.pid}): ${what} not seen within ${timeoutMs} ms` +
              ` (exit ${child.exitCode ?? child.signalCode ?? 'none'}, errors ${JSON.stringify(m.errors)},` +
              ` ${m.messages.length} messages printed)\nstderr: ${m.stderr.slice(-2000)}`,
          );
        }
        await wakeOrTimeout(waiters, deadline);
      }
    },
    exited: () =>
      child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', () => r())),
  };
  mediators.add(m);
  child.stderr.on('data', (d) => (m.stderr += d));
  child.on('exit', wake);
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    let event;
    try {
      event = JSON.parse(line);
    } catch {
      event = { type: 'error', message: `unparsable line: ${line}` };
    }
    if (event.type === 'ready') m.ready = true;
    else if (event.type === 'message') {
      m.connectionIds.add(event.connectionId);
      m.messages.push({ id: event.id, receivedAt: event.receivedAt, encryptedMessage: event.encryptedMessage });
    } else if (event.type === 'error') m.errors.push(event.message);
    wake();
  });
  await m.until(() => m.ready, 10_000, 'ready');
  return m;
}

// ---------------------------------------------------------------------------------------------
// helpers

/**
 * Adds messages numbered from..to (in the ciphertext, so that a mix-up shows). Sent back to back
 * on one socket, which keeps their order (calls naming one connection take effect in the order
 * sent) and lands a batch sent after SIGSTOP well inside the ping detection.
 */
function addNumbered(sender, connectionId, from, to) {
  const adds = [];
  for (let n = from; n <= to; n++) adds.push(add(sender, connectionId, { body: { ...payload(), ciphertext: `message-${n}` } }));
  return Promise.all(adds);
}

/** Polls `observer` until the connection has no live session; returns the time it saw that, or 0. */
function sessionEnded(observer, connectionId, timeoutMs) {
  return pollUntil(
    async () => ((await call(observer, 'getLiveSession', { connectionId })) === false ? Date.now() : 0),
    { timeoutMs, intervalMs: 25 },
  );
}

/**
 * Binds a fresh rpc-websockets Client on `server` (after `pickUpQueued`, takes what is pending,
 * without delete, like a mediator's delivery) and waits for `expected`: asserts they come once
 * each, in add order, the last within TAKEOVER_BOUND_MS of addLiveSession's answer, and that
 * nothing follows for QUIET_MS. Returns the live socket and every message it got.
 */
async function bindAndReceiveAll(t, server, connectionId, expected, label, { pickUpQueued = false } = {}) {
  const live = await liveSocket(server, connectionId);
  const boundAt = Date.now();
  const taken = pickUpQueued ? await take(live.client, { connectionId, limit: 100 }) : [];
  await live.waitMessages(expected.length - taken.length, TAKEOVER_BOUND_MS + 3000);
  const tookMs = Date.now() - boundAt;
  const got = [...live.messages(), ...taken]; // a push at bind would carry the oldest
  t.diagnostic(
    `${label}: ${got.length}/${expected.length} messages (${live.messages().length} pushed in ${live.pushes.length} push(es),` +
      ` ${taken.length} taken), the last ${tookMs} ms after addLiveSession answered`,
  );
  for (const push of live.pushes) assertPush(push, connectionId);
  assertTaken(got, expected); // content, count, order: each exactly once
  assert.ok(tookMs <= TAKEOVER_BOUND_MS, `the last message came ${tookMs} ms after addLiveSession answered (bound ${TAKEOVER_BOUND_MS} ms)`);
  await sleep(QUIET_MS); // a quiet period, not synchronisation: a duplicate would show here
  const extra = live.messages().slice(got.length - taken.length);
  assert.deepEqual(extra.map((m) => m.id), [], 'pushed again during the quiet period');
  assert.deepEqual(await take(live.client, { connectionId }), [], 'handed out again by a take');
  return { ...live, got };
}

function assertPrinted(mediator, connectionId, expected) {
  assert.deepEqual([...mediator.connectionIds], [connectionId]);
  assertTaken(mediator.messages, expected);
}

// ---------------------------------------------------------------------------------------------

describe('a hung mediator process (SIGSTOP) on one instance, the recipient back through another', () => {
  before(async () => {
    redis = await startRedis();
    const prefix = uniquePrefix();
    const base = { VISIBILITY_TIMEOUT_MS: String(VISIBILITY_MS), LIVENESS_TIMEOUT_MS: String(LIVENESS_MS) };
    const fast = { ...base, WS_PING_INTERVAL_MS: String(PING_MS), WS_PING_MISSES: String(PING_MISSES) };
    const off = { ...base, WS_PING_INTERVAL_MS: '60000', WS_PING_MISSES: String(PING_MISSES) };
    [A, B, C, D] = await Promise.all([
      startServer({ redis, prefix, env: fast, name: 'A' }),
      startServer({ redis, prefix, env: fast, name: 'B' }),
      startServer({ redis, prefix, env: off, name: 'C' }),
      startServer({ redis, prefix, env: off, name: 'D' }),
    ]);
    // let the instances learn of each other before sessions are bound across them
    await sleep(LIVENESS_MS / 2);
  });
  afterEach(async () => {
    // a failed test must not leave a stopped process behind
    await Promise.all([...mediators].map(async (m) => {
      killMediator(m);
      await m.exited();
      mediators.delete(m);
    }));
  });
  after(async () => {
    await closeAllClients();
    await stopAll();
  });

  test('SIGSTOP, dropped by pings, SIGKILL: a new session on another instance gets all 10 once, in order', async (t) => {
    const c = uuid();
    const hung = await startMediator(A, c);
    const sender = await connect(B.url);
    assert.equal(await call(sender, 'getLiveSession', { connectionId: c }), true, 'B sees the session bound on A');

    const first = await addNumbered(sender, c, 1, 5);
    await hung.until(() => hung.messages.length >= 5, 5000, '5 pushed messages');
    assertPrinted(hung, c, first); // pushed to the process, which never removes them

    const droppedBefore = await metric(A, PING_TIMEOUTS);
    hung.signal('SIGSTOP');
    const stoppedAt = Date.now();
    const second = await addNumbered(sender, c, 6, 10);
    // in flight to the frozen socket, not pending (the pings have not dropped it yet)
    assert.equal(await count(sender, { connectionId: c }), 0, 'messages 6-10 were not pushed to the frozen socket');
    t.diagnostic(`messages 6-10 added and in flight ${Date.now() - stoppedAt} ms after SIGSTOP`);

    const endedAt = await sessionEnded(sender, c, DETECT_BOUND_MS);
    assert.ok(endedAt, `the frozen socket still holds the session ${DETECT_BOUND_MS} ms after SIGSTOP`);
    t.diagnostic(`ping detection: session ended ${endedAt - stoppedAt} ms after SIGSTOP (WS_PING_INTERVAL_MS=${PING_MS}, WS_PING_MISSES=${PING_MISSES})`);
    assert.equal(await metric(A, PING_TIMEOUTS), droppedBefore + 1, 'A did not drop the socket for missed pongs');
    assert.equal(hung.messages.length, 5, 'a stopped process printed');

    hung.signal('SIGKILL');
    await hung.exited();

    const live = await bindAndReceiveAll(t, B, c, [...first, ...second], 'rebind on B after the drop', { pickUpQueued: true });
    assert.equal(await call(live.client, 'removeMessages', { connectionId: c, messageIds: live.got.map((m) => m.id) }), true);
    assert.equal(await count(sender, { connectionId: c }), 0);
  });

  test('SIGSTOP, dropped by pings, nobody bound: everything is pending again in place, then picked up by the next session', async (t) => {
    const c = uuid();
    const hung = await startMediator(A, c);
    const sender = await connect(B.url);

    const pushed = await addNumbered(sender, c, 1, 5);
    await hung.until(() => hung.messages.length >= 5, 5000, '5 pushed messages');
    assertPrinted(hung, c, pushed);
    assert.equal(await count(sender, { connectionId: c }), 0, 'pushed messages must be in flight, not pending');

    hung.signal('SIGSTOP');
    const stoppedAt = Date.now();
    const endedAt = await sessionEnded(sender, c, DETECT_BOUND_MS);
    assert.ok(endedAt, `the frozen socket still holds the session ${DETECT_BOUND_MS} ms after SIGSTOP`);
    t.diagnostic(`ping detection: session ended ${endedAt - stoppedAt} ms after SIGSTOP`);

    // unbinding gave back at once what the frozen socket held: nothing lost, nothing left in flight
    const pendingAfterDrop = await count(sender, { connectionId: c });
    t.diagnostic(`pending right after the drop: ${pendingAfterDrop}`);
    assert.equal(pendingAfterDrop, pushed.length, 'the messages pushed to the frozen socket are not all pending again');
    // queued behind them while nobody is bound
    const queued = await addNumbered(sender, c, 6, 7);
    assert.equal(await count(sender, { connectionId: c }), pushed.length + queued.length);

    // the stopped process is still there, its socket gone: it must not matter
    assert.equal(hung.child.exitCode, null);
    const live = await bindAndReceiveAll(t, A, c, [...pushed, ...queued], 'new session on A', { pickUpQueued: true });
    assert.equal(await count(sender, { connectionId: c }), 0);
    assert.equal(await call(live.client, 'removeMessages', { connectionId: c, messageIds: live.got.map((m) => m.id) }), true);
    hung.signal('SIGKILL');
    await hung.exited();
  });

  test('SIGSTOP, not detected (pings every 60 s): addLiveSession on another instance takes all 10 at once', async (t) => {
    const c = uuid();
    const hung = await startMediator(C, c);
    const sender = await connect(D.url);

    const first = await addNumbered(sender, c, 1, 5);
    await hung.until(() => hung.messages.length >= 5, 5000, '5 pushed messages');
    assertPrinted(hung, c, first);

    hung.signal('SIGSTOP');
    const second = await addNumbered(sender, c, 6, 10);
    // still bound to the frozen socket: all 10 in flight there
    assert.equal(await call(sender, 'getLiveSession', { connectionId: c }), true);
    assert.equal(await count(sender, { connectionId: c }), 0, 'messages 6-10 were not pushed to the frozen socket');
    assert.equal(await metric(C, PING_TIMEOUTS), 0, 'C dropped a socket for missed pongs; the takeover must not need it');

    const live = await bindAndReceiveAll(t, D, c, [...first, ...second], 'rebind on D, old socket frozen');
    assert.equal(await metric(C, PING_TIMEOUTS), 0);

    // the old socket's end, once it comes, neither unbinds the new session nor re-pushes
    hung.signal('SIGKILL');
    await hung.exited();
    const closed = await pollUntil(async () => (await metric(C, 'mpr_open_sockets')) === 0, { timeoutMs: 5000 });
    assert.ok(closed, 'C still counts the killed process\'s socket as open');
    await sleep(QUIET_MS);
    assert.equal(await call(sender, 'getLiveSession', { connectionId: c }), true, 'the old socket\'s close ended the new session');
    assert.equal(live.messages().length, 10, 'pushed again after the old socket closed');
    assert.equal(await count(sender, { connectionId: c }), 0);
    assert.equal(await call(live.client, 'removeMessages', { connectionId: c, messageIds: live.got.map((m) => m.id) }), true);
  });
});
