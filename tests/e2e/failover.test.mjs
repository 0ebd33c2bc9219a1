// Mediator instances dying under a live recipient. Two mediator instances of one mediator
// behind a load balancer, each on its own server; the recipient is live on A, the sender
// enters through B.
// - A killed mid-stream: the recipient's socket closes, it reconnects through the balancer to
//   B, and gets every message; only messages delivered but not yet acknowledged when A died
//   may come twice.
// - A hung (SIGSTOP) while messages are pushed to it: the server finds it dead by pings and
//   puts its pushed messages back; when A is then killed the recipient moves to B and gets
//   every message exactly once.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { pollUntil } from '../conformance/harness.mjs';
import { flavours } from './flavours.mjs';
import { assertReceived, assertSettled, newRun, received, scenario, sendSequence, startWorld, stopWorld, waitForAll } from './world.mjs';

const COUNT = 40;

for (const flavour of flavours) {
  describe(`mediator failover: ${flavour.name}`, () => {
    let world;
    after(() => stopWorld(world));

    test('mediator A killed while the recipient is live: every message arrives, none twice once acknowledged', scenario(() => world, async (t) => {
      world = await startWorld(flavour, { instances: 2 });
      const [a, b] = world.mediators;
      const run = newRun();
      const sending = sendSequence(world, run, COUNT);
      await world.recipient.waitFor('basicMessage', () => received(world, run).length >= COUNT / 4, 60_000);
      a.signal('SIGKILL');
      await sending;
      const onB = await b.waitFor('liveSession', (e) => e.connectionId === world.recipientConnectionId, 60_000);
      await waitForAll(world, run, COUNT);
      // Only what A delivered (first arrivals before the recipient's session on B) can have been
      // unacknowledged when A died, so only that may come again.
      const first = new Map();
      for (const m of received(world, run)) if (!first.has(m.seq)) first.set(m.seq, m.receivedAt);
      const arrivals = assertReceived(world, run, COUNT, { mayRepeat: (seq) => first.get(seq) <= onB.at, ordered: false });
      t.diagnostic(`${arrivals.length - COUNT} repeated after the kill, ${[...first.values()].filter((at) => at <= onB.at).length} delivered by A`);
      await assertSettled(world, run);
    }));
  });

  describe(`hung mediator: ${flavour.name}`, () => {
    let world;
    after(() => stopWorld(world));

    test('mediator A hung while messages are pushed to it, then killed: the recipient gets every message once from B', scenario(() => world, async () => {
      world = await startWorld(flavour, { instances: 2 });
      const [a, b] = world.mediators;
      const [serverA] = world.servers;
      const run = newRun();
      a.signal('SIGSTOP');
      await sendSequence(world, run, 10);
      // The server stops pushing to A once its pings go unanswered: the session ends.
      const ended = await pollUntil(async () => !(await world.rpc.call('getLiveSession', { connectionId: world.recipientConnectionId })), { timeoutMs: 15_000, intervalMs: 100 });
      assert.ok(ended, `the hung mediator's live session ended (${serverA.name})`);
      assert.equal(received(world, run).length, 0, 'nothing reached the recipient through the hung mediator');
      a.signal('SIGKILL');
      await b.waitFor('liveSession', (e) => e.connectionId === world.recipientConnectionId, 60_000);
      await waitForAll(world, run, 10);
      assertReceived(world, run, 10);
      await assertSettled(world, run);
    }));
  });
}
