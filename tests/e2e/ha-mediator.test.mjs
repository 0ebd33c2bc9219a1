// The runnable Credo mediator (mediators/credo), highly available: two instances on one
// PostgreSQL wallet, each on its own mpr server, behind failover balancers (one for the HTTP
// endpoint senders use, one for the WebSocket endpoint recipients use). A Credo 0.6.3 recipient
// (WebSocket outbound only, as a phone) and a Credo 0.5.19 recipient in Pickup V2 live mode; a
// stock Credo 0.6.3 sender, which reaches the recipients' mediator through its HTTP endpoint.
// - the instances start together on an empty wallet and are one mediator (one invitation);
// - live mode across instances: recipients live on A, the sender's forwards enter through B;
// - A killed -9 while the recipients are live: they reconnect through the balancer to B and
//   every message sent after the kill arrives exactly once;
// - A restarted on the wallet rejoins; B killed -9 while the sender streams through it: every
//   send the mediator acknowledged (its HTTP POST answered) arrives, none a third time.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { closeAllClients, freePort, metric, pollUntil, startRedis, startServer, stopAll, uniquePrefix } from '../conformance/harness.mjs';
import { FLAVOURS, agentLogs, connectSender, scratchDir, startAgent, startFailoverBalancer, stopAgents } from './agents.mjs';
import { walletDatabaseName, mediatorLogs, startMediator, stopMediators } from './mediator.mjs';
import { SERVER_ENV, assertReceived, messagesAddedBy, newRun, percentile, received, sendSequence, waitForAll, withLogTails } from './world.mjs';

const COUNT = 10;
const RECIPIENT_FLAVOURS = [
  FLAVOURS.find((f) => f.dir === 'credo-0.6'),
  FLAVOURS.find((f) => f.dir === 'credo-0.5' && f.client === 'project'),
];
const SENDER_FLAVOUR = FLAVOURS.find((f) => f.dir === 'credo-0.6');

describe('HA Credo mediator (mediators/credo) on one PostgreSQL wallet', () => {
  const world = { servers: [], mediators: [], recipients: [], sender: null };

  const logs = () => [mediatorLogs(), agentLogs([...world.recipients.map((r) => r.agent), world.sender]),
    ...world.servers.map((s) => `--- ${s.name} (pid ${s.pid}) log tail ---\n${s.log().slice(-3000) || '(empty)'}`)].join('\n');
  const withLogs = withLogTails(logs);
  /** What sendSequence / received / assertReceived of world.mjs need for one recipient. */
  const view = (recipient) => ({ servers: world.servers, sender: world.sender, senderConnectionId: recipient.senderConnectionId, recipient: recipient.agent });
  const liveOn = (server) => metric(server, 'mpr_live_sessions');

  before(withLogs(async () => {
    const redis = await startRedis();
    const prefix = uniquePrefix();
    for (const name of ['mpr-1', 'mpr-2']) world.servers.push(await startServer({ redis, prefix, env: SERVER_ENV, name }));
    const database = walletDatabaseName();
    const walletKey = randomBytes(16).toString('hex');
    const httpPorts = [await freePort(), await freePort()];
    const wsPorts = [await freePort(), await freePort()];
    world.http = await startFailoverBalancer(httpPorts);
    world.ws = await startFailoverBalancer(wsPorts);
    const endpoints = `http://127.0.0.1:${world.http.port},ws://127.0.0.1:${world.ws.port}`;
    // Together, on an empty wallet: neither may trip over the other's first records.
    world.mediators = await Promise.all(['A', 'B'].map((name, i) => startMediator({
      label: `mediator-${name}`,
      env: {
        MPR_URL: world.servers[i].url,
        WALLET_ID: database,
        WALLET_KEY: walletKey,
        HTTP_PORT: String(httpPorts[i]),
        WS_PORT: String(wsPorts[i]),
        BIND_ADDRESS: '127.0.0.1',
        ENDPOINTS: endpoints,
      },
    })));
  }));

  after(async () => {
    await stopAgents();
    await stopMediators();
    await closeAllClients();
    await stopAll();
  });

  test('two instances started together on an empty wallet are one mediator: the same invitation', withLogs(async () => {
    const [a, b] = world.mediators;
    assert.ok(a.invitationUrl.startsWith(`http://127.0.0.1:${world.http.port}?oob=`), `the invitation names the HTTP endpoint: ${a.invitationUrl}`);
    assert.equal(b.invitationUrl, a.invitationUrl, 'both instances serve the same invitation');
  }));

  test('an instance given a wrong WALLET_KEY for the wallet stops at start, naming it', withLogs(async () => {
    const [a] = world.mediators;
    const env = { ...a.env, WALLET_KEY: 'not-the-key', HTTP_PORT: String(await freePort()), WS_PORT: String(await freePort()) };
    const error = await startMediator({ label: 'mediator-wrong-key', env }).then(() => assert.fail('it started'), (e) => e);
    assert.match(error.message, new RegExp(`WALLET_KEY does not open the wallet WALLET_ID=${a.env.WALLET_ID}`));
    assert.match(error.message, /\[exited: 1\]/);
  }));

  test('live mode across instances: recipients live on A, the sender over HTTP through B', withLogs(async (t) => {
    const [a, b] = world.mediators;
    const dir = scratchDir();
    for (const flavour of RECIPIENT_FLAVOURS) {
      const agent = await startAgent(flavour, {
        role: 'recipient',
        label: `recipient-${flavour.dir}`,
        walletPath: path.join(dir, `recipient-${flavour.dir}.sqlite`),
        walletKey: randomBytes(16).toString('hex'),
        pickup: 'live',
      });
      await agent.call('connectMediator', { url: a.invitationUrl });
      world.recipients.push({ flavour, agent });
    }
    const bothLive = await pollUntil(async () => (await liveOn(world.servers[0])) === 2, { timeoutMs: 30_000, intervalMs: 100 });
    assert.ok(bothLive, `both recipients live through A on mpr-1 (live sessions: ${await liveOn(world.servers[0])})`);
    assert.equal(world.ws.openTo(b.wsPort), 0, 'no recipient socket on B');

    // The sender's traffic to the mediator enters through B, over HTTP.
    world.http.route(b.httpPort);
    world.sender = await startAgent(SENDER_FLAVOUR, { role: 'sender', label: 'sender', walletPath: path.join(dir, 'sender.sqlite'), walletKey: randomBytes(16).toString('hex') });
    for (const recipient of world.recipients) {
      recipient.senderConnectionId = await connectSender(world.sender, recipient.agent);
    }

    const run = newRun();
    const addedThroughB = await messagesAddedBy(world.servers[1]);
    for (const recipient of world.recipients) await sendSequence(view(recipient), run, COUNT);
    for (const recipient of world.recipients) {
      await waitForAll(view(recipient), run, COUNT);
      assertReceived(view(recipient), run, COUNT, { ordered: recipient.flavour.pushOrder });
    }
    // B is on mpr-2 and takes only the HTTP balancer's connections now (the WebSocket one sends
    // to A): the forwards came over HTTP through B, and mpr-1 pushed them to A.
    // (More than the basic messages: a DID exchange's last message may still be on its way.)
    const throughB = (await messagesAddedBy(world.servers[1])) - addedThroughB;
    assert.ok(throughB >= 2 * COUNT, `every forward was queued by B on mpr-2 (${throughB} of ${2 * COUNT})`);
    assert.ok((await metric(world.servers[0], 'mpr_events_pushed_total')) >= 2 * COUNT, 'mpr-1 pushed the messages to A');
    for (const recipient of world.recipients) {
      const latencies = received(view(recipient), run).map((m) => m.receivedAt - m.sentAt).sort((x, y) => x - y);
      t.diagnostic(`${recipient.agent.label}: sender send -> recipient receive, ${COUNT} one at a time (HTTP in through B, WebSocket out through A): p50 ${percentile(latencies, 50)} ms, max ${latencies.at(-1)} ms`);
    }
    world.liveRun = run;
  }));

  test('A killed -9 while the recipients are live: they move to B and every later message arrives once', withLogs(async (t) => {
    assert.ok(world.sender, 'the live test set up the recipients and the sender');
    const [a, b] = world.mediators;
    const before = Object.fromEntries(world.recipients.map((r) => [r.agent.label, received(view(r), world.liveRun).length]));
    await a.kill();
    const moved = await pollUntil(async () => (await liveOn(world.servers[1])) === 2, { timeoutMs: 60_000, intervalMs: 100 });
    assert.ok(moved, `both recipients live through B on mpr-2 (live sessions: ${await liveOn(world.servers[1])})`);
    assert.equal(world.ws.openTo(b.wsPort), 2, 'both recipient sockets on B');

    const run = newRun();
    for (const recipient of world.recipients) await sendSequence(view(recipient), run, COUNT);
    for (const recipient of world.recipients) {
      await waitForAll(view(recipient), run, COUNT);
      assertReceived(view(recipient), run, COUNT, { ordered: recipient.flavour.pushOrder });
      // A message of the live run delivered by A whose acknowledgement A did not pass on comes
      // again from B (at least once); none was lost before.
      const again = received(view(recipient), world.liveRun).length - before[recipient.agent.label];
      t.diagnostic(`${recipient.agent.label}: ${again} message(s) of the live run delivered again after the kill`);
    }
  }));

  test('A restarted on the wallet rejoins; B killed -9 while the sender streams through it: every acknowledged send arrives', withLogs(async (t) => {
    assert.ok(world.sender, 'the live test set up the recipients and the sender');
    const [a, b] = world.mediators;
    const restarted = await startMediator({ label: 'mediator-A2', env: a.env });
    world.mediators.push(restarted);
    assert.equal(restarted.invitationUrl, a.invitationUrl, 'the restarted instance serves the same invitation');

    // One stream for both recipients, each send started when the one before was answered. B
    // dies right after answering the 0.5 recipient's seq COUNT-1 (the moment Credo's stock HTTP
    // transport would lose it: it answers before the forward is queued). A send is acknowledged
    // when its POST was answered, and must then arrive.
    const run = newRun();
    const acknowledged = new Map(world.recipients.map((r) => [r.agent.label, []]));
    let failed = 0;
    for (let seq = 0; seq < COUNT * 3; seq++) {
      if (seq === COUNT) await b.kill();
      for (const recipient of world.recipients) {
        const content = JSON.stringify({ run, seq, sentAt: Date.now() });
        try {
          await world.sender.call('send', { connectionId: recipient.senderConnectionId, content });
          acknowledged.get(recipient.agent.label).push(seq);
        } catch {
          failed += 1;
        }
      }
    }
    t.diagnostic(`${failed} send(s) failed when B died`);
    const moved = await pollUntil(async () => (await liveOn(world.servers[0])) === 2, { timeoutMs: 60_000, intervalMs: 100 });
    assert.ok(moved, `both recipients live again through A2 on mpr-1 (live sessions: ${await liveOn(world.servers[0])})`);
    for (const recipient of world.recipients) {
      const sent = acknowledged.get(recipient.agent.label);
      assert.ok(sent.length >= 2 * COUNT, `the sends after B died went through A2 (${sent.length} acknowledged)`);
      const arrived = () => new Set(received(view(recipient), run).map((m) => m.seq));
      const complete = () => sent.every((seq) => arrived().has(seq));
      if (!complete()) {
        await recipient.agent.waitFor('basicMessage', complete, 60_000).catch((error) => {
          error.message += ` (acknowledged but missing: ${sent.filter((seq) => !arrived().has(seq)).join(',')}; arrived: ${[...arrived()].join(',')})`;
          throw error;
        });
      }
      // A message B delivered whose acknowledgement died with it comes again; never a third time.
      const seqs = received(view(recipient), run).map((m) => m.seq);
      const copies = new Map();
      for (const seq of seqs) copies.set(seq, (copies.get(seq) ?? 0) + 1);
      assert.deepEqual([...copies].filter(([, n]) => n > 2), [], 'no message arrived three times');
      t.diagnostic(`${recipient.agent.label}: ${sent.length} acknowledged, ${copies.size} distinct arrived, ${seqs.length - copies.size} repeat(s)`);
    }
    const exit = await restarted.terminate();
    assert.deepEqual(exit, { code: 0, signal: null }, 'A2 stops cleanly on SIGTERM');
  }));
});

describe('mediators/credo refuses a bad configuration, naming the variable', () => {
  after(() => stopMediators());

  for (const [what, env, exitCode, pattern] of [
    ['no WALLET_KEY', { WALLET_KEY: '' }, 2, /WALLET_KEY is required/],
    ['a bad HTTP_PORT', { HTTP_PORT: '70000' }, 2, /HTTP_PORT must be a TCP port/],
    ['an unknown INBOUND_MODE', { INBOUND_MODE: 'carrier-pigeon' }, 2, /INBOUND_MODE must be one of websocket, socketdock/],
    ['an endpoint that is not a URL', { ENDPOINTS: 'http://127.0.0.1:1,nowhere' }, 2, /ENDPOINTS: "nowhere" is not a URL/],
    ['an mpr server that does not answer', {}, 1, /cannot reach mpr at MPR_URL=ws:\/\/127\.0\.0\.1:\d+/],
  ]) {
    test(what, async () => {
      const ports = { HTTP_PORT: String(await freePort()), WS_PORT: String(await freePort()), MPR_URL: `ws://127.0.0.1:${await freePort()}` };
      const error = await startMediator({ label: what, env: { WALLET_ID: walletDatabaseName(), WALLET_KEY: 'k', ...ports, ...env } }).then(
        () => assert.fail('the mediator started'),
        (e) => e,
      );
      assert.match(error.message, /exited before it was ready/);
      assert.match(error.message, pattern);
      assert.match(error.message, new RegExp(`\\[exited: ${exitCode}\\]`));
    });
  }
});
