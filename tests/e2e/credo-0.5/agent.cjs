'use strict';
// Credo 0.5.19 agent process for the mpr end-to-end tests: roles mediator, recipient, sender.
// Protocol: ../README.md ("Agent process protocol"). Config is process.argv[2] (JSON); commands
// arrive over the IPC channel as {id, cmd, args} and are answered {id, ok, result|error}.
const path = require('node:path');
// aries-askar-nodejs 0.2 wants the DIRECTORY holding libaries_askar.so in LIB_ARIES_ASKAR_PATH; a
// path to the .so itself (as a harness may pass) is turned into its directory.
{
  const given = process.env.LIB_ARIES_ASKAR_PATH;
  if (!given) process.env.LIB_ARIES_ASKAR_PATH = path.join(__dirname, 'native');
  else if (given.endsWith('.so')) process.env.LIB_ARIES_ASKAR_PATH = path.dirname(given);
}

require('reflect-metadata');
const { ariesAskar } = require('@hyperledger/aries-askar-nodejs');
const { AskarModule } = require('@credo-ts/askar');
const {
  Agent, ConsoleLogger, LogLevel, KeyDerivationMethod, WsOutboundTransport, HttpOutboundTransport,
  ConnectionsModule, MediatorModule, MediationRecipientModule, MessagePickupModule, MediatorPickupStrategy,
  MessagePickupEventTypes, BasicMessageEventTypes, BasicMessageRole,
} = require('@credo-ts/core');
const { agentDependencies } = require('@credo-ts/node');
// not re-exported from the @credo-ts/core 0.5.19 index
const { MessageForwardingStrategy } = require('@credo-ts/core/build/modules/routing/MessageForwardingStrategy');
const { KeepOpenWsInboundTransport } = require('./ws-inbound.cjs');

const config = JSON.parse(process.argv[2] || '{}');
const tag = `[${config.label || config.role}]`;
const log = (...a) => console.log(new Date().toISOString(), tag, ...a);
const emit = (event) => process.send && process.send(event);

process.on('unhandledRejection', (reason) => log('unhandled rejection:', reason && reason.stack ? reason.stack : reason));
process.on('uncaughtException', (error) => log('uncaught exception:', error && error.stack ? error.stack : error));

let agent;
let wsOutbound;
let mprClient;
let mediatorRecord;

function walletConfig() {
  return {
    // the wallet id is Askar's profile name: processes sharing a wallet file must share it too
    id: config.walletId || (config.walletPath ? path.basename(config.walletPath).replace(/\.[^.]*$/, '') : config.role),
    key: config.walletKey || 'mpr-e2e-key',
    keyDerivationMethod: KeyDerivationMethod.Argon2IInt,
    storage: { type: 'sqlite', config: { path: config.walletPath } },
  };
}

async function buildMpr2060() {
  const { MessagePickupRepositoryClient } = require('./build/mpr-client');
  const client = new MessagePickupRepositoryClient({ url: config.mprUrl });
  await client.connect();
  return {
    repository: client,
    wire(agent) {
      // as a 2060 mediator does: pushes go to the live session on this instance
      client.messagesReceived(async ({ connectionId, messages }) => {
        try {
          const session = await agent.messagePickup.getLiveModeSession({ connectionId });
          if (!session) return log('messagesReceived without a live session for', connectionId);
          await agent.messagePickup.deliverMessages({ pickupSessionId: session.id, messages });
        } catch (error) {
          log('delivering pushed messages failed:', error);
        }
      });
      agent.events.on(MessagePickupEventTypes.LiveSessionSaved, async ({ payload: { session } }) => {
        try {
          await client.addLiveSession({ connectionId: session.connectionId, sessionId: session.id });
          emit({ event: 'liveSession', connectionId: session.connectionId, sessionId: session.id });
        } catch (error) {
          log('addLiveSession failed:', error);
        }
      });
      agent.events.on(MessagePickupEventTypes.LiveSessionRemoved, async ({ payload: { session } }) => {
        try {
          await client.removeLiveSession({ connectionId: session.connectionId });
          emit({ event: 'liveSessionRemoved', connectionId: session.connectionId, sessionId: session.id });
        } catch (error) {
          log('removeLiveSession failed:', error);
        }
      });
    },
  };
}

async function buildMprProject() {
  // This project's client (clients/credo): the same class, and the wiring in one call.
  const { MessagePickupRepositoryClient, attachToCredo05Agent } = require('../../../clients/credo/build');
  const { reportLiveSessions } = require('../observe.cjs');
  const client = new MessagePickupRepositoryClient({ url: config.mprUrl, token: config.mprToken });
  await client.connect();
  reportLiveSessions(client.connection, emit);
  return {
    repository: client,
    wire(agent) {
      attachToCredo05Agent(agent, client, { logger: agent.config.logger });
    },
  };
}

function freePort() {
  const net = require('node:net');
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function init() {
  // A sender needs an inbound endpoint of its own: the recipient's DID exchange response and
  // acks come back to it (it has no mediator). `inboundPort` optional; a free port otherwise.
  if (config.role === 'sender') {
    if (!config.inboundPort) config.inboundPort = await freePort();
    if (!config.endpoints) config.endpoints = [`ws://127.0.0.1:${config.inboundPort}`];
  }
  const modules = {
    askar: new AskarModule({ ariesAskar }),
    connections: new ConnectionsModule({ autoAcceptConnections: true }),
  };
  let mpr;
  if (config.role === 'mediator') {
    mpr = config.client === 'project' ? await buildMprProject() : await buildMpr2060();
    mprClient = mpr.repository;
    modules.mediator = new MediatorModule({ autoAcceptMediationRequests: true, messageForwardingStrategy: MessageForwardingStrategy.QueueOnly });
    modules.messagePickup = new MessagePickupModule({ messagePickupRepository: mpr.repository });
  } else if (config.role === 'recipient') {
    modules.mediationRecipient = new MediationRecipientModule({
      mediatorPickupStrategy: { poll: MediatorPickupStrategy.PickUpV2, implicit: MediatorPickupStrategy.Implicit }[config.pickup] ?? MediatorPickupStrategy.PickUpV2LiveMode,
      mediatorPollingInterval: 1000,
    });
  }
  agent = new Agent({
    config: {
      label: config.label || config.role,
      walletConfig: walletConfig(),
      endpoints: config.role === 'recipient' ? undefined : config.endpoints,
      logger: new ConsoleLogger((process.env.CREDO_LOG || process.env.E2E_CREDO_LOG) === 'debug' ? LogLevel.debug : LogLevel.warn),
    },
    dependencies: agentDependencies,
    modules,
  });
  wsOutbound = new WsOutboundTransport();
  agent.registerOutboundTransport(wsOutbound);
  // A mobile recipient reaches its mediator over WebSocket only (wsOnly).
  if (!(config.role === 'recipient' && config.wsOnly)) agent.registerOutboundTransport(new HttpOutboundTransport());
  if (config.role === 'mediator' && config.socketdockPort) {
    // Behind SocketDock: the server's MEDIATOR_URL, and HTTP for senders.
    const { Credo05SocketDockInboundTransport } = require('../../../clients/credo/build');
    const { HttpInboundTransport } = require('@credo-ts/node');
    agent.registerInboundTransport(new Credo05SocketDockInboundTransport({ port: config.socketdockPort, core: require('@credo-ts/core') }));
    agent.registerInboundTransport(new HttpInboundTransport({ port: config.inboundPort }));
  } else if (config.role !== 'recipient') {
    agent.registerInboundTransport(new KeepOpenWsInboundTransport({ port: config.inboundPort }));
  }
  if (config.role === 'recipient') {
    agent.events.on(BasicMessageEventTypes.BasicMessageStateChanged, ({ payload: { basicMessageRecord } }) => {
      if (basicMessageRecord.role === BasicMessageRole.Receiver) emit({ event: 'basicMessage', content: basicMessageRecord.content, receivedAt: Date.now() });
    });
  }
  await agent.initialize();
  if (mpr) mpr.wire(agent);
}

async function invitationUrl() {
  const oob = await agent.oob.createInvitation({ multiUseInvitation: config.role === 'mediator' });
  return { url: oob.outOfBandInvitation.toUrl({ domain: 'https://example.org' }) };
}

async function connectTo(url) {
  const { connectionRecord } = await agent.oob.receiveInvitationFromUrl(url);
  if (!connectionRecord) throw new Error('invitation gave no connection');
  const connection = await agent.connections.returnWhenIsConnected(connectionRecord.id, { timeoutMs: 20000 });
  return connection;
}

function closeMediatorSockets() {
  const closing = [];
  for (const socket of wsOutbound.transportTable.values()) {
    closing.push(new Promise((resolve) => {
      if (socket.readyState === 3) return resolve();
      socket.addEventListener('close', () => resolve());
      setTimeout(resolve, 3000);
    }));
    socket.close();
  }
  return Promise.all(closing);
}

const commands = {
  createInvitation: () => invitationUrl(),
  async connectMediator({ url }) {
    const connection = await connectTo(url);
    mediatorRecord = await agent.mediationRecipient.provision(connection);
    await agent.mediationRecipient.setDefaultMediator(mediatorRecord);
    if (config.pickup !== 'poll') await agent.mediationRecipient.initiateMessagePickup(mediatorRecord);
    return { connectionId: connection.id };
  },
  async startPickup() {
    const mediator = mediatorRecord || (await agent.mediationRecipient.findDefaultMediator());
    await agent.mediationRecipient.initiateMessagePickup(mediator);
    return {};
  },
  async stopPickup() {
    await agent.mediationRecipient.stopMessagePickup();
    await closeMediatorSockets();
    return {};
  },
  async receiveInvitation({ url }) {
    const connection = await connectTo(url);
    return { connectionId: connection.id };
  },
  async connections() {
    return (await agent.connections.getAll()).map((c) => ({ id: c.id, state: c.state }));
  },
  async send({ connectionId, content }) {
    await agent.basicMessages.sendMessage(connectionId, content);
    return {};
  },
  async shutdown() {
    setTimeout(async () => {
      try {
        await agent.shutdown();
        if (mprClient && mprClient.disconnect) await mprClient.disconnect();
      } catch (error) {
        log('shutdown:', error);
      }
      process.exit(0);
    }, 10);
    return {};
  },
};

process.on('message', async ({ id, cmd, args }) => {
  try {
    const fn = commands[cmd];
    if (!fn) throw new Error(`unknown command ${cmd}`);
    if (!agent && cmd !== 'shutdown') throw new Error('agent not initialised');
    const result = await fn(args || {});
    process.send({ id, ok: true, result });
  } catch (error) {
    log(`${cmd} failed:`, error && error.stack ? error.stack : error);
    process.send({ id, ok: false, error: String((error && error.message) || error) });
  }
});
process.on('disconnect', () => process.exit(0));

const t0 = Date.now();
init().then(
  () => {
    log(`ready in ${Date.now() - t0} ms`);
    emit({ event: 'ready' });
  },
  (error) => {
    log('init failed:', error && error.stack ? error.stack : error);
    emit({ event: 'error', error: String(error && error.message) });
    process.exit(1);
  },
);
