// Live mode across instances: the recipient holds a live session on mediator A (server 1), the
// sender's messages enter through mediator B (server 2); server 2 queues them and server 1
// pushes them to A, which delivers them over the recipient's open socket.

import { after, describe, test } from 'node:test';
import { flavours } from './flavours.mjs';
import { assertReceived, assertSettled, newRun, percentile, scenario, sendSequence, startWorld, stopWorld, waitForAll } from './world.mjs';

/** MPR_E2E_MESSAGES raises the count for a latency measurement (docs/performance.md). */
const COUNT = Number(process.env.MPR_E2E_MESSAGES || 30);

for (const flavour of flavours) {
  describe(`live mode: ${flavour.name}`, () => {
    let world;
    after(() => stopWorld(world));

    test(`${COUNT} messages through mediator B reach the recipient live on mediator A once, in order`, scenario(() => world, async (t) => {
      world = await startWorld(flavour, { instances: 2 });
      const run = newRun();
      await sendSequence(world, run, COUNT);
      await waitForAll(world, run, COUNT);
      const arrivals = assertReceived(world, run, COUNT);
      await assertSettled(world, run);
      const latencies = arrivals.map((m) => m.receivedAt - m.sentAt).sort((a, b) => a - b);
      t.diagnostic(`sender send -> recipient receive over ${latencies.length} messages: p50 ${percentile(latencies, 50)} ms, p99 ${percentile(latencies, 99)} ms, max ${latencies.at(-1)} ms`);
    }));
  });
}
