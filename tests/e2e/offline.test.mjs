// Offline pickup from the cold tier: the recipient goes offline, its messages wait until they
// have moved to MongoDB, then it comes back and picks them up with status / delivery-request /
// messages-received, in order, once.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { metric, pollUntil } from '../conformance/harness.mjs';
import { flavours } from './flavours.mjs';
import { assertReceived, assertSettled, newRun, queued, received, scenario, sendSequence, startWorld, stopWorld, waitForAll } from './world.mjs';

const COUNT = 10;

for (const flavour of flavours) {
  describe(`offline pickup: ${flavour.name}`, () => {
    let world;
    after(() => stopWorld(world));

    test(`${COUNT} messages sent while offline move to MongoDB and are picked up once, in order`, scenario(() => world, async () => {
      world = await startWorld(flavour, { instances: 1, cold: true });
      const [server] = world.servers;
      await world.recipient.call('stopPickup');
      const gone = await pollUntil(async () => !(await world.rpc.call('getLiveSession', { connectionId: world.recipientConnectionId })), { timeoutMs: 15_000, intervalMs: 100 });
      assert.ok(gone, 'the live session ended when the recipient went offline');

      // What the mediator itself still had for the recipient when it went (protocol messages).
      const before = await queued(world);
      const run = newRun();
      const movedBefore = await metric(server, 'mpr_cold_moved_total');
      await sendSequence(world, run, COUNT);
      const moved = await pollUntil(async () => (await metric(server, 'mpr_cold_moved_total')) - movedBefore >= COUNT, { timeoutMs: 30_000, intervalMs: 200 });
      assert.ok(moved, `all ${COUNT} messages moved to the cold tier`);
      assert.equal(await queued(world), before + COUNT, 'every message waits for the recipient, and nothing else came');
      assert.equal(received(world, run).length, 0, 'nothing reached the recipient while offline');

      await world.recipient.call('startPickup');
      await waitForAll(world, run, COUNT);
      assertReceived(world, run, COUNT, { ordered: flavour.batchOrder });
      await assertSettled(world, run);
    }));
  });
}
