// ACA-Py mediators behind SocketDock: docked.mjs's world (two real SocketDock instances, two mpr
// servers with the adapter on, Redis, SecantusDB, a failover balancer at every hop) with two
// ACA-Py 1.7 instances of one mediator (mpr_acapy, `-it mpr_acapy.socketdock` serving the
// servers' MEDIATOR_URL) on one PostgreSQL wallet. Credo 0.6.3 and 0.5.19 recipients are phones
// (WebSocket only) whose mediator endpoint is SocketDock's; stock Credo senders reach the
// mediator over its HTTP endpoint. Asserts what the recipient received: content, count, order.

import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { acapyLogs, newWallet, startAcapyMediator } from './acapy.mjs';
import { FLAVOURS } from './agents.mjs';
import { dockedLogs, joinPair, metricSum, offlineThenBack, startDockedWorld, stopDockedWorld, wokenWhileAway } from './docked.mjs';
import { SERVER_ENV, assertReceived, newRun, received, sendAcknowledged, waitForAll, withLogTails } from './world.mjs';

const wanted = (process.env.MPR_E2E_FLAVOURS || '').split(',').filter(Boolean);
const CREDO = [FLAVOURS.find((f) => f.dir === 'credo-0.6'), FLAVOURS.find((f) => f.dir === 'credo-0.5' && f.client === 'project')]
  .filter((f) => !wanted.length || wanted.some((w) => f.name.includes(w)));
/** After the last expected message: anything more would be a re-delivery. */
const SETTLE_MS = Number(SERVER_ENV.VISIBILITY_TIMEOUT_MS) + 2000;

/** Two ACA-Py instances of one mediator (one wallet), as docked.mjs's startMediators. */
async function startAcapyMediators({ rpcUrls, httpPorts, framePorts, endpoints }) {
  const wallet = newWallet();
  const mediators = [];
  // One after the other: the first provisions the shared wallet.
  for (const i of [0, 1]) {
    mediators.push(await startAcapyMediator({
      label: `acapy-${'AB'[i]}`, wallet, mprUrl: rpcUrls[i], endpoints, httpPort: httpPorts[i], socketdockPort: framePorts[i],
    }));
  }
  // ACA-Py's invitations carry its first endpoint only (the senders' HTTP, which is also what
  // its mediation grants name); phones are handed one whose service is SocketDock's WebSocket.
  const { url } = await mediators[0].createInvitation({ multiUse: true });
  const invitation = new URL(url);
  const oob = JSON.parse(Buffer.from(invitation.searchParams.get('oob'), 'base64url').toString());
  oob.services[0].serviceEndpoint = endpoints[1];
  invitation.searchParams.set('oob', Buffer.from(JSON.stringify(oob)).toString('base64url'));
  return { mediators, invitationUrl: invitation.href, logs: () => acapyLogs(mediators) };
}

describe('ACA-Py mediators (mpr_acapy) behind SocketDock: 2 SocketDock, 2 mpr, 2 ACA-Py instances on one PostgreSQL wallet', () => {
  let world;
  const withLogs = withLogTails(() => dockedLogs(world));
  const view = (pair) => ({ recipient: pair.recipient });
  const pair = (flavour, label) => joinPair(world, flavour, { pickup: 'live', label });

  before(withLogs(async () => {
    world = await startDockedWorld({ startMediators: startAcapyMediators });
  }));

  after(() => stopDockedWorld(world));

  const pairs = [];

  test('mediation through SocketDock, live mode: every message once, in order, as acknowledged deliveries', withLogs(async () => {
    const framesBefore = await metricSum(world, 'mpr_socketdock_frames_total', 'outcome="forwarded"');
    for (const flavour of CREDO) pairs.push(await pair(flavour, `recipient-${flavour.dir}`));
    // DID exchange, mediate-request, keylist-update and live-delivery-change went through SocketDock.
    assert.ok((await metricSum(world, 'mpr_socketdock_frames_total', 'outcome="forwarded"')) - framesBefore >= 4 * pairs.length, 'frames forwarded to ACA-Py');
    const run = newRun();
    for (const p of pairs) await sendAcknowledged(p.sender, p.connectionId, run, 10);
    for (const p of pairs) {
      await waitForAll(view(p), run, 10);
      assertReceived(view(p), run, 10, { ordered: p.flavour.pushOrder });
    }
    assert.ok((await metricSum(world, 'mpr_socketdock_deliveries_total', 'mode="pickup",outcome="ok"')) >= 1, 'wrapped by ACA-Py, acknowledged deliveries');
    assert.equal(await metricSum(world, 'mpr_socketdock_deliveries_total', 'mode="raw"'), 0, 'no raw frame to a live-mode recipient');
    // Acknowledged (messages-received reached ACA-Py, which removed them): nothing comes again.
    const counts = pairs.map((p) => received(view(p), run).length);
    await sleep(SETTLE_MS);
    assert.deepEqual(pairs.map((p) => received(view(p), run).length), counts, 'nothing delivered again');
  }));

  test('a clean close, messages sent meanwhile (moved to MongoDB), back through the other SocketDock and ACA-Py instance: the backlog oldest first, then live ones, each once', withLogs(async () => {
    const p = pairs[0] ?? (pairs[0] = await pair(CREDO[0], `recipient-${CREDO[0].dir}`));
    // And instance B takes the frames, the wraps and the forwards: nothing was held in A.
    const B = world.mediators[1];
    await offlineThenBack(world, p, {
      whileAway: () => {
        world.frames.route(B.socketdockPort);
        world.senders.route(B.httpPort);
      },
    });
  }));

  test('a recipient that gave its mediator an FCM token (RFC 0734) is woken while away, then gets what waited, once, in order', withLogs(async (t) => {
    // The set-device-info handler is mpr_acapy's (push.py); the token goes with every addMessage.
    const F06 = FLAVOURS.find((f) => f.dir === 'credo-0.6');
    if (!CREDO.includes(F06)) return t.skip('Credo 0.6 only (its recipient sends set-device-info)');
    await wokenWhileAway(world, await pair(F06, 'recipient-push'), t);
  }));

  test('garbage on the MEDIATOR_URL port: 400 naming what is wrong, 404 for an unknown connection', withLogs(async () => {
    const A = world.mediators[0];
    const post = async (headers, body) => {
      const res = await fetch(`http://127.0.0.1:${A.socketdockPort}/`, { method: 'POST', headers, body });
      return `${res.status} ${await res.text()}`;
    };
    const wrap = (body, connectionId = 'c-1') => post({ 'content-type': 'application/json', 'x-mpr-deliver': connectionId }, body);
    const message = { id: 'a'.repeat(24), receivedAt: new Date().toISOString(), encryptedMessage: { protected: 'x' } };
    assert.match(await post({ 'content-type': 'application/didcomm-envelope-enc' }, '{}'), /^400 .*X-Mpr-Socket-Id or X-Mpr-Deliver is required/);
    assert.match(await wrap('not json'), /^400 .*the body is not JSON/);
    assert.match(await wrap(JSON.stringify({ connectionId: 'other', messages: [message] })), /^400 .*connectionId must be the X-Mpr-Deliver header's/);
    assert.match(await wrap(JSON.stringify({ connectionId: 'c-1', messages: [] })), /^400 .*messages must be a non-empty array/);
    assert.match(await wrap(JSON.stringify({ connectionId: 'c-1', messages: [message, { id: 'b' }] })), /^400 .*messages\[1\] must be \{id, receivedAt, encryptedMessage\}/);
    assert.match(await wrap(JSON.stringify({ connectionId: 'c-1', messages: [message] })), /^404 .*no connection c-1/);
    assert.match(await post({ 'content-type': 'application/didcomm-envelope-enc', 'x-mpr-socket-id': 'f'.repeat(32) }, 'garbage'), /^400 /);
  }));

  test('the ACA-Py instance taking the frames killed -9 under a live recipient: the other takes frames, wraps and forwards; every message arrives', withLogs(async () => {
    const p = pairs[0] ?? (pairs[0] = await pair(CREDO[0], `recipient-${CREDO[0].dir}`));
    const [A, B] = world.mediators;
    world.frames.route(B.socketdockPort);
    world.senders.route(B.httpPort);
    const run = newRun();
    await sendAcknowledged(p.sender, p.connectionId, run, 5);
    await waitForAll(view(p), run, 5);
    B.killNow();
    await B.exited();
    // The balancers now find only A.
    await sendAcknowledged(p.sender, p.connectionId, run, 5, { from: 5 });
    await waitForAll(view(p), run, 10, 90_000);
    assert.ok(world.frames.openTo(A.socketdockPort) >= 1, 'A takes the frames');
    // At least once: a messages-received B had not handled when it died makes its delivery
    // come again; what was sent after the kill comes once.
    assertReceived(view(p), run, 10, { mayRepeat: (seq) => seq < 5, ordered: false });
  }));
});
