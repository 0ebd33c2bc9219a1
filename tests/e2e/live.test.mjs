// Live mode across instances: the recipient holds a live session on mediator A (server 1), the
// sender's messages enter through mediator B (server 2); server 2 queues them and server 1
// pushes them to A, which delivers them over the recipient's open socket.

import { after, describe, test } from 'node:test';
import { flavours } from './flavours.mjs';
import { worldLogs, assertReceived, assertSettled, newRun, percentile, scenario, sendSequence, startWorld, stopWorld, waitForAll } from './world.mjs';

const COUNT = Number(process.env.MPR_E2E_MESSAGES || 30);
/** Messages sent one at a time for the latency figure; MPR_E2E_LATENCY_MESSAGES=300 for docs/performance.md. */
const ONE_BY_ONE = Number(process.env.MPR_E2E_LATENCY_MESSAGES || 20);

for (const flavour of flavours) {
  describe(`live mode: ${flavour.name}`, () => {
    let world;
    after(() => stopWorld(world));

    test(`${COUNT} messages through mediator B reach the recipient live on mediator A once, in order`, scenario(() => world, async (t) => {
      world = await startWorld(flavour, { instances: 2 });
      const run = newRun();
      await sendSequence(world, run, COUNT);
      await waitForAll(world, run, COUNT);
      const arrivals = assertReceived(world, run, COUNT, { ordered: flavour.pushOrder });
      await assertSettled(world, run);
      const latencies = arrivals.map((m) => m.receivedAt - m.sentAt).sort((a, b) => a - b);
      if (process.env.E2E_TRACE) console.log(worldLogs(world));
      t.diagnostic(`burst of ${COUNT}: sender send -> recipient receive p50 ${percentile(latencies, 50)} ms, max ${latencies.at(-1)} ms (queued behind each other)`);
    }));

    // One message in flight at a time: the path's own latency, not a queue's.
    test(`${ONE_BY_ONE} messages one at a time: each arrives once; latency from send to receive`, scenario(() => world, async (t) => {
      const run = newRun();
      for (let seq = 0; seq < ONE_BY_ONE; seq++) {
        await sendSequence(world, run, 1, { from: seq });
        await waitForAll(world, run, seq + 1);
      }
      const arrivals = assertReceived(world, run, ONE_BY_ONE);
      const latencies = arrivals.map((m) => m.receivedAt - m.sentAt).sort((a, b) => a - b);
      t.diagnostic(`${flavour.name}: sender send -> recipient receive over ${latencies.length} messages one at a time: p50 ${percentile(latencies, 50)} ms, p99 ${percentile(latencies, 99)} ms, max ${latencies.at(-1)} ms`);
    }));
  });
}
