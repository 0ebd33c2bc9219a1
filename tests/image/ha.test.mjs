// The HA composition (deploy/compose/ha.yml) started for real, with CI's override on top
// (deploy/compose/ci.yml: host networking, every port a free one chosen here): two SocketDock,
// two mpr servers, two mediators on one PostgreSQL wallet, Redis (AOF), MongoDB-wire and the
// public proxy, from the images scripts/image-test built. The mediators are ha.yml's Credo ones,
// or with MPR_HA_MEDIATOR=acapy the ACA-Py ones of deploy/compose/acapy.yml (applied between
// the two). Every container turns healthy; a real Credo 0.6 recipient outside the containers
// (tests/e2e's agent) connects through the public port's SocketDock path and receives what a
// real Credo sender sends over the public HTTP endpoint; then one server container and one
// mediator container are killed (docker kill) and what is sent afterwards still arrives:
// content and count asserted (not the order: two mediators and two servers, every message once).
//
// Environment (scripts/image-test sets it): DOCKER and DOCKER_HOST (scripts/ensure-docker);
// MPR_IMAGE, SOCKETDOCK_IMAGE, MEDIATOR_IMAGE, ACAPY_MEDIATOR_IMAGE, REDIS_IMAGE, MONGO_IMAGE,
// POSTGRES_IMAGE and HAPROXY_IMAGE (the compose files' variables; CI's stand-ins for the
// official ones come from scripts/build-base-images); DOCKER_COMPOSE (default docker-compose);
// MPR_HA_MEDIATOR (credo, the default, or acapy).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO, freePort, pollUntil } from '../conformance/harness.mjs';
import { FLAVOURS, agentLogs, scratchDir, startAgent, stopAgents } from '../e2e/agents.mjs';
import { assertReceived, newRun, sendAcknowledged, waitForAll, withLogTails } from '../e2e/world.mjs';

const DOCKER = process.env.DOCKER || 'docker';
const COMPOSE = process.env.DOCKER_COMPOSE || 'docker-compose';
const CREDO = FLAVOURS.find((f) => f.dir === 'credo-0.6');
const execFileAsync = promisify(execFile);

/** The composition's files (ci.yml, CI's addresses, always last) and its mediators' image, by its mediators. */
const COMPOSITIONS = {
  credo: { mediators: 'Credo', files: ['ha.yml', 'ci.yml'], image: process.env.MEDIATOR_IMAGE || 'mpr-credo-mediator:local' },
  acapy: { mediators: 'ACA-Py', files: ['ha.yml', 'acapy.yml', 'ci.yml'], image: process.env.ACAPY_MEDIATOR_IMAGE || 'mpr-acapy-mediator:local' },
};
const COMPOSITION = COMPOSITIONS[process.env.MPR_HA_MEDIATOR || 'credo'];
if (!COMPOSITION) throw new Error(`MPR_HA_MEDIATOR must be one of ${Object.keys(COMPOSITIONS).join(', ')}`);

// ci.yml runs ha.yml's proxy as ci-proxy.
const SERVICES = ['redis', 'mongodb', 'postgres', 'mpr-1', 'mpr-2', 'socketdock-1', 'socketdock-2', 'mediator-1', 'mediator-2', 'ci-proxy'];
/** ci.yml's port variables; PUBLIC_PORT is ha.yml's own. */
const PORTS = [
  'PUBLIC_PORT', 'CI_REDIS_PORT', 'CI_MONGODB_PORT', 'CI_POSTGRES_PORT',
  'CI_MPR_1_WS_PORT', 'CI_MPR_1_APP_PORT', 'CI_MPR_2_WS_PORT', 'CI_MPR_2_APP_PORT',
  'CI_SOCKETDOCK_1_PORT', 'CI_SOCKETDOCK_2_PORT',
  'CI_MEDIATOR_1_HTTP_PORT', 'CI_MEDIATOR_1_FRAMES_PORT', 'CI_MEDIATOR_2_HTTP_PORT', 'CI_MEDIATOR_2_FRAMES_PORT',
  'CI_CALLBACKS_PORT', 'CI_RPC_PORT', 'CI_FRAMES_PORT',
];
// A loaded two-core machine: generous bounds, each ended early by the event waited for.
const UP_MS = 10 * 60_000;
const HEALTHY_MS = 5 * 60_000;

const project = `mprha${randomBytes(4).toString('hex')}`;
const env = { ...process.env };

/** docker-compose with the composition's files, this run's project name and environment. */
async function compose(...args) {
  const files = COMPOSITION.files.flatMap((file) => ['-f', `deploy/compose/${file}`]);
  const { stdout } = await execFileAsync(
    COMPOSE,
    ['-p', project, ...files, ...args],
    { cwd: REPO, env, maxBuffer: 64 * 1024 * 1024, timeout: UP_MS },
  );
  return stdout.trim();
}

const docker = async (...args) => (await execFileAsync(DOCKER, args, { env, maxBuffer: 16 * 1024 * 1024 })).stdout.trim();
const containerOf = async (service) => compose('ps', '-q', service);
const healthOf = async (service) => docker('inspect', '-f', '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}', await containerOf(service));

/** Each service's health, and the tail of the logs of those not healthy (for a failure's message). */
async function diagnosis() {
  const lines = [];
  for (const service of SERVICES) {
    const health = await healthOf(service).catch((error) => `unknown (${error.message.split('\n')[0]})`);
    lines.push(`${service}: ${health}`);
    if (health !== 'healthy') lines.push(await compose('logs', '--no-color', '--tail', '40', service).catch((error) => String(error)));
  }
  return lines.join('\n');
}

describe(`the HA composition with ${COMPOSITION.mediators} mediators (${COMPOSITION.files.join(' + ')}) started for real`, () => {
  const agents = {};
  let connectionId;
  const withLogs = withLogTails(async () => `${agentLogs(Object.values(agents))}\n${await diagnosis()}`);
  /** The view tests/e2e/world.mjs's received / assertReceived / waitForAll take. */
  const view = () => ({ recipient: agents.recipient });

  before(async () => {
    const ports = new Set();
    while (ports.size < PORTS.length) ports.add(await freePort());
    PORTS.forEach((name, i) => (env[name] = String([...ports][i])));
    const secret = () => randomBytes(32).toString('hex');
    Object.assign(env, {
      SOCKETDOCK_SECRET: secret(),
      MPR_TOKEN: secret(),
      MEDIATOR_WALLET_KEY: secret(),
      POSTGRES_PASSWORD: secret(),
      // As agents reach the proxy from outside: the senders' HTTP first, then SocketDock's path.
      MEDIATOR_ENDPOINTS: `http://127.0.0.1:${env.PUBLIC_PORT},ws://127.0.0.1:${env.PUBLIC_PORT}/ws`,
    });
    // No build: scripts/image-test built the images the files name (through the *_IMAGE variables).
    await compose('up', '-d', '--no-build');
  });

  after(async () => {
    await stopAgents();
    await compose('down', '--volumes', '--timeout', '5').catch((error) => console.error(`docker-compose down: ${error.message}`));
  });

  it('turns every container healthy', async () => {
    const healthy = await pollUntil(
      async () => (await Promise.all(SERVICES.map((s) => healthOf(s).catch(() => 'absent')))).every((h) => h === 'healthy'),
      { timeoutMs: HEALTHY_MS, intervalMs: 1000 },
    );
    assert.ok(healthy, `not every container turned healthy:\n${await diagnosis()}`);
    for (const service of ['mediator-1', 'mediator-2']) {
      assert.equal(await docker('inspect', '-f', '{{.Config.Image}}', await containerOf(service)), COMPOSITION.image, `${service}'s image`);
    }
  });

  it('refuses SocketDock\'s own routes on the public port', async () => {
    const response = await fetch(`http://127.0.0.1:${env.PUBLIC_PORT}/socket/any/send`, { method: 'POST', body: 'x' });
    assert.equal(response.status, 403);
  });

  it('delivers what a real Credo sender sends to a real Credo recipient on the public SocketDock path', withLogs(async () => {
    const invitation = await fetch(`http://127.0.0.1:${env.PUBLIC_PORT}/invitation`);
    assert.equal(invitation.status, 200, 'the mediators\' invitation through the public port');
    const invitationUrl = await invitation.text();
    const dir = scratchDir();
    const wallet = (label) => ({ label, walletPath: path.join(dir, `${label}.sqlite`), walletKey: randomBytes(16).toString('hex') });
    // A phone: WebSocket only, so its mediator endpoint is the public ws://…/ws (SocketDock).
    agents.recipient = await startAgent(CREDO, { role: 'recipient', pickup: 'live', wsOnly: true, ...wallet('recipient') });
    await agents.recipient.call('connectMediator', { url: invitationUrl });
    agents.sender = await startAgent(CREDO, { role: 'sender', ...wallet('sender') });
    ({ connectionId } = await agents.sender.call('receiveInvitation', { url: (await agents.recipient.call('createInvitation')).url }));

    const run = newRun();
    await sendAcknowledged(agents.sender, connectionId, run, 10);
    await waitForAll(view(), run, 10, 120_000);
    // Each once; not in order: consecutive messages are queued through either mediator and
    // server, and their live deliveries take separate paths (seen: 5 before 4, 1 run in 3).
    assertReceived(view(), run, 10, { ordered: false });
  }));

  it('keeps delivering, nothing lost, with one server container and one mediator container killed', withLogs(async () => {
    assert.ok(agents.recipient, 'the recipient of the previous test');
    await Promise.all(['mpr-1', 'mediator-1'].map(async (service) => docker('kill', await containerOf(service))));
    // A sender's POST that reached the killed mediator is retried (HAProxy marks it down within
    // two checks); a message queued before the kill then arrives twice, never not at all.
    const run = newRun();
    const retried = await sendAcknowledged(agents.sender, connectionId, run, 10, { retries: 20 });
    await waitForAll(view(), run, 10, 180_000);
    assertReceived(view(), run, 10, { ordered: false, mayRepeat: (seq) => retried.has(seq) });
    for (const service of ['mpr-1', 'mediator-1']) {
      assert.equal(await docker('inspect', '-f', '{{.State.Running}}', await containerOf(service)), 'false', `${service} stayed killed`);
    }
  }));
});
