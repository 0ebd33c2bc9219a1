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
import { dockedLogs, joinPair, metricSum, offlineThenBack, sendAcknowledged, startDockedWorld, stopDockedWorld } from './docked.mjs';
import { SERVER_ENV, assertReceived, newRun, received, waitForAll, withLogTails } from './world.mjs';

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

  after(() => stopDockedWorld());

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
});
