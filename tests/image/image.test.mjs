// The server's Docker image, run for real (scripts/image-test builds it and runs this file):
// against a private redis-server on free 127.0.0.1 ports, with host networking, as in
// docker-compose.yml (read-only root filesystem). It checks /ready, an add and a take through
// the real rpc-websockets client, the user the process runs as, the image's HEALTHCHECK turning
// healthy, a clean SIGTERM, and that a bad setting stops the container naming it.
//
// SocketDock's image is checked for its user and HEALTHCHECK (tests/image/proxy.test.mjs runs
// SocketDock behind the public proxy); the mediators' images, Credo's (MEDIATOR_IMAGE) and
// ACA-Py's (ACAPY_MEDIATOR_IMAGE), each skipped when not given, for their wallet and invitation
// against the server's image, their user, HEALTHCHECK and SIGTERM.
//
// Environment: MPR_IMAGE (the image, default mpr:ci), SOCKETDOCK_IMAGE (socketdock:ci), DOCKER (the client, default docker) with
// DOCKER_HOST as scripts/ensure-docker prints them.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import {
  startRedis, stopAll, freePort, connect, closeAllClients, call, add, take, count, assertTaken,
  pollUntil, uuid,
} from '../conformance/harness.mjs';

const IMAGE = process.env.MPR_IMAGE || 'mpr:ci';
const SOCKETDOCK_IMAGE = process.env.SOCKETDOCK_IMAGE || 'socketdock:ci';
/** The mediators' images: the same settings, but for where a one-instance wallet is kept. */
const MEDIATORS = [
  // Its SQLite wallet in the container's /tmp.
  { name: 'Credo', image: process.env.MEDIATOR_IMAGE, variable: 'MEDIATOR_IMAGE', wallet: { SQLITE_PATH: '/tmp/mediator.sqlite' } },
  // ACA-Py's SQLite wallet in the user's home.
  { name: 'ACA-Py', image: process.env.ACAPY_MEDIATOR_IMAGE, variable: 'ACAPY_MEDIATOR_IMAGE', wallet: {} },
];
const DOCKER = process.env.DOCKER || 'docker';
const execFileAsync = promisify(execFile);

/** Runs the Docker client; resolves with its trimmed stdout. */
async function docker(...args) {
  const { stdout } = await execFileAsync(DOCKER, args, { maxBuffer: 16 * 1024 * 1024 });
  return stdout.trim();
}

const containers = new Set();

/** Starts the image detached with host networking and `env`; resolves with the container name. */
async function runImage(env, { image = IMAGE, network = 'host', readOnly = true } = {}) {
  const name = `mpr-image-test-${uuid().slice(0, 8)}`;
  const envArgs = Object.entries(env).flatMap(([key, value]) => ['-e', `${key}=${value}`]);
  containers.add(name);
  const readOnlyArgs = readOnly ? ['--read-only'] : [];
  await docker('run', '-d', '--name', name, '--network', network, ...readOnlyArgs, ...envArgs, image);
  return name;
}

/** The uids (real, effective, saved, filesystem) of a container's process, as the host sees them. */
async function uidsOf(name) {
  const pid = await inspect(name, '{{.State.Pid}}');
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return status.match(/^Uid:\s+(.*)$/m)[1].split(/\s+/);
}

async function untilHealthy(name) {
  const healthy = await pollUntil(async () => (await inspect(name, '{{.State.Health.Status}}')) === 'healthy', {
    timeoutMs: HEALTHY_MS,
    intervalMs: 500,
  });
  assert.ok(healthy, `not healthy: ${await inspect(name, '{{json .State.Health}}')}\n${await logsOf(name)}`);
}

const inspect = (name, format) => docker('inspect', '-f', format, name);
const logsOf = (name) =>
  execFileAsync(DOCKER, ['logs', name]).then(({ stdout, stderr }) => stdout + stderr, (error) => String(error));

async function httpStatus(url) {
  try {
    return (await fetch(url)).status;
  } catch {
    return 0;
  }
}

// A loaded two-core CI machine: generous bounds, each ended early by the event waited for.
const START_MS = 60_000;
// The HEALTHCHECK's first probe runs one interval (10 s) after the start.
const HEALTHY_MS = 90_000;

describe(`the image ${IMAGE}`, () => {
  let redis;
  let name;
  let wsPort;
  let appPort;

  before(async () => {
    redis = await startRedis();
    [wsPort, appPort] = [await freePort(), await freePort()];
    name = await runImage({
      REDIS_URL: redis.url,
      WS_PORT: wsPort,
      APP_PORT: appPort,
      BIND_ADDRESS: '127.0.0.1',
      LOG_FORMAT: 'json',
    });
    const ready = await pollUntil(async () => (await httpStatus(`http://127.0.0.1:${appPort}/ready`)) === 200, {
      timeoutMs: START_MS,
      intervalMs: 200,
    });
    assert.ok(ready, `/ready never answered 200; the container's log:\n${await logsOf(name)}`);
  });

  after(async () => {
    await closeAllClients();
    for (const container of containers) await docker('rm', '-f', container).catch(() => {});
    await stopAll();
  });

  it('prints its size', async () => {
    const bytes = Number(await docker('image', 'inspect', '-f', '{{.Size}}', IMAGE));
    assert.ok(bytes > 0);
    console.log(`image ${IMAGE}: ${(bytes / 1e6).toFixed(1)} MB`);
  });

  it('runs the server as user 10001, not root', async () => {
    assert.equal(await inspect(name, '{{.Config.User}}'), '10001:10001');
    assert.deepEqual(await uidsOf(name), ['10001', '10001', '10001', '10001']);
  });

  it('takes what was added, through the real MPR client', async () => {
    const client = await connect(`ws://127.0.0.1:${wsPort}`);
    assert.equal(await call(client, 'ping'), 'pong');
    const connectionId = uuid();
    const added = [await add(client, connectionId), await add(client, connectionId)];
    assert.equal(await count(client, { connectionId }), 2);
    assertTaken(await take(client, { connectionId, limit: 10, deleteMessages: true }), added);
    assert.equal(await count(client, { connectionId }), 0);
    // In Redis, not in the container: the queue outlives it.
    assert.ok(Number(await redis.cli('DBSIZE')) > 0);
  });

  it("turns healthy by the image's HEALTHCHECK", () => untilHealthy(name));

  it('stops cleanly on SIGTERM: open sockets closed with 1001, exit code 0', async () => {
    const client = await connect(`ws://127.0.0.1:${wsPort}`);
    const closed = new Promise((resolve) => client.socket.once('close', (code) => resolve(code)));
    // Longer than SHUTDOWN_TIMEOUT_MS (10 s): docker stop sends SIGKILL only after it.
    await docker('stop', '-t', '30', name);
    assert.equal(await closed, 1001);
    assert.equal(await inspect(name, '{{.State.ExitCode}}'), '0', await logsOf(name));
    assert.equal(await inspect(name, '{{.State.OOMKilled}}'), 'false');
  });

  it('stops at start naming a bad setting', async () => {
    const bad = await runImage({ REDIS_URL: redis.url, WS_PORT: 'not-a-port', APP_PORT: await freePort() });
    const exited = await pollUntil(async () => (await inspect(bad, '{{.State.Status}}')) === 'exited', {
      timeoutMs: START_MS,
      intervalMs: 200,
    });
    assert.ok(exited, 'the container exited');
    assert.notEqual(await inspect(bad, '{{.State.ExitCode}}'), '0');
    assert.match(await logsOf(bad), /WS_PORT|ws-port/);
  });
});

describe(`the image ${SOCKETDOCK_IMAGE}`, () => {
  after(async () => {
    for (const container of containers) await docker('rm', '-f', container).catch(() => {});
  });

  it("runs SocketDock as user 10001 and turns healthy by the image's HEALTHCHECK", async () => {
    // No network of the host's: the image's fixed port 8765 stays inside the container.
    const name = await runImage({}, { image: SOCKETDOCK_IMAGE, network: 'none' });
    await untilHealthy(name);
    assert.deepEqual(await uidsOf(name), ['10001', '10001', '10001', '10001']);
  });
});

for (const { name, image, variable, wallet } of MEDIATORS) describe(`the ${name} mediator's image ${image ?? ''}`, { skip: !image && `${variable} not given` }, () => {
  let redis;
  let mpr;
  let mediator;
  let httpPort;

  before(async () => {
    redis = await startRedis();
    const [wsPort, appPort] = [await freePort(), await freePort()];
    mpr = await runImage({ REDIS_URL: redis.url, WS_PORT: wsPort, APP_PORT: appPort, BIND_ADDRESS: '127.0.0.1' });
    const ready = await pollUntil(async () => (await httpStatus(`http://127.0.0.1:${appPort}/ready`)) === 200, {
      timeoutMs: START_MS,
      intervalMs: 200,
    });
    assert.ok(ready, `the server's /ready never answered 200:\n${await logsOf(mpr)}`);
    httpPort = await freePort();
    // A SQLite wallet: one instance (ha.yml gives the PostgreSQL one).
    mediator = await runImage(
      {
        MPR_URL: `ws://127.0.0.1:${wsPort}`,
        WALLET_KEY: 'image-test-wallet-key',
        ...wallet,
        HTTP_PORT: httpPort,
        WS_PORT: await freePort(),
        BIND_ADDRESS: '127.0.0.1',
      },
      // Writable, as in ha.yml: the wallet is a file.
      { image, readOnly: false },
    );
  });

  after(async () => {
    for (const container of containers) await docker('rm', '-f', container).catch(() => {});
    await stopAll();
  });

  it('opens its wallet, connects to the server and serves its invitation', async () => {
    let invitation;
    const served = await pollUntil(
      async () => {
        const response = await fetch(`http://127.0.0.1:${httpPort}/invitation`).catch(() => null);
        if (response?.status === 200) invitation = await response.text();
        return Boolean(invitation);
      },
      { timeoutMs: START_MS * 2, intervalMs: 500 },
    );
    assert.ok(served, `no invitation:\n${await logsOf(mediator)}`);
    assert.match(invitation, /\?oob=/);
  });

  it("runs as user 10001, turns healthy by the image's HEALTHCHECK and stops with 0 on SIGTERM", async () => {
    assert.deepEqual(await uidsOf(mediator), ['10001', '10001', '10001', '10001']);
    await untilHealthy(mediator);
    await docker('stop', '-t', '30', mediator);
    assert.equal(await inspect(mediator, '{{.State.ExitCode}}'), '0', await logsOf(mediator));
  });
});
