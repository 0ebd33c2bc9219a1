// Builds and drives the Credo 0.6.3 agent for one role. Imported after LIB_ASKAR_PATH is set.
import { createHash } from 'node:crypto'
import { createServer } from 'node:net'
import { askar, Store } from '@openwallet-foundation/askar-nodejs' // before @credo-ts/askar
import { AskarModule } from '@credo-ts/askar'
import { Agent, ConsoleLogger, LogLevel } from '@credo-ts/core'
import { agentDependencies } from '@credo-ts/node'
import {
  DidCommBasicMessageEventTypes,
  DidCommBasicMessageRole,
  DidCommMediatorPickupStrategy,
  DidCommMessageForwardingStrategy,
  DidCommMessagePickupEventTypes,
  DidCommModule,
  DidCommWsOutboundTransport,
} from '@credo-ts/didcomm'
import { KeepOpenWsInboundTransport } from './ws-inbound.mjs'

const logLevel = LogLevel[process.env.E2E_CREDO_LOG ?? 'warn'] ?? LogLevel.warn

// Raw key derivation: the same walletKey gives the same raw key in every process sharing a wallet.
const rawKey = (walletKey) => Store.generateRawKey(createHash('sha256').update(String(walletKey)).digest())

function askarModule(config) {
  if (!config.walletPath) throw new Error('walletPath is required')
  return new AskarModule({
    askar,
    store: {
      id: config.walletId ?? 'mpr-e2e',
      key: rawKey(config.walletKey ?? 'mpr-e2e'),
      keyDerivationMethod: 'raw',
      database: { type: 'sqlite', config: { path: config.walletPath } },
    },
  })
}

// An outbound WebSocket transport that can drop its sockets (the phone goes offline).
class ClosableWsOutboundTransport extends DidCommWsOutboundTransport {
  async closeSockets() {
    const closing = []
    for (const [, socket] of this.transportTable) {
      if (socket.readyState === this.WebSocketClass.CLOSED) continue
      closing.push(new Promise((resolve) => socket.addEventListener('close', () => resolve())))
      socket.close()
    }
    await Promise.all(closing)
  }
}

const freePort = () =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })

async function queueRepository(config, log) {
  const client = config.client ?? 'memory'
  if (client === 'memory') {
    // DEV AID ONLY: Credo's in-memory queue (the default when none is given); two instances cannot share it.
    return { repository: undefined, attach: async () => {}, forwarding: DidCommMessageForwardingStrategy.QueueAndLiveModeDelivery }
  }
  if (client === 'project') {
    // INTEGRATION POINT: this project's DidCommQueueTransportRepository (clients/credo, branch `client`).
    const mod = await import('../../../clients/credo/build/index.js')
    const Repo = mod.MprQueueTransportRepository ?? mod.DidCommMprQueueTransportRepository ?? mod.default
    if (!Repo) throw new Error(`clients/credo/build exports no repository class (exports: ${Object.keys(mod)})`)
    const repository = new Repo({ url: config.mprUrl, token: config.mprToken, logger: { log } })
    await repository.connect()
    return {
      repository,
      attach: async (agent, emit) => {
        await repository.attach(agent)
        repository.on?.('reconnected', () => emit({ event: 'mprReconnected' }))
      },
      forwarding: DidCommMessageForwardingStrategy.QueueOnly,
    }
  }
  throw new Error(`client ${client} is not available for Credo 0.6`)
}

export async function startAgent(config, { log, emit, handlers }) {
  const role = config.role
  const outbound = new ClosableWsOutboundTransport()
  const didcomm = {
    transports: { inbound: [], outbound: [outbound] },
    connections: { autoAcceptConnections: true },
    mediator: false,
    mediationRecipient: false,
  }
  let queue
  if (role === 'mediator') {
    if (!config.inboundPort) throw new Error('inboundPort is required')
    queue = await queueRepository(config, log)
    didcomm.endpoints = config.endpoints ?? [`ws://127.0.0.1:${config.inboundPort}`]
    didcomm.transports.inbound = [new KeepOpenWsInboundTransport({ port: config.inboundPort })]
    if (queue.repository) didcomm.queueTransportRepository = queue.repository
    didcomm.mediator = { autoAcceptMediationRequests: true, messageForwardingStrategy: queue.forwarding }
  } else if (role === 'recipient') {
    didcomm.mediationRecipient = {
      mediatorPickupStrategy: config.pickup === 'poll' ? DidCommMediatorPickupStrategy.PickUpV2 : DidCommMediatorPickupStrategy.PickUpV2LiveMode,
      mediatorPollingInterval: config.pollingIntervalMs ?? 1000,
    }
  } else if (role === 'sender') {
    // The sender needs an endpoint of its own for the recipient's DID exchange response.
    const port = config.inboundPort ?? (await freePort())
    didcomm.endpoints = [`ws://127.0.0.1:${port}`]
    didcomm.transports.inbound = [new KeepOpenWsInboundTransport({ port })]
  } else {
    throw new Error(`unknown role ${role}`)
  }

  const agent = new Agent({
    config: { logger: new ConsoleLogger(logLevel), autoUpdateStorageOnStartup: true },
    dependencies: agentDependencies,
    modules: { askar: askarModule(config), didcomm: new DidCommModule(didcomm) },
  })
  const started = Date.now()
  await agent.initialize()
  log(`initialised in ${Date.now() - started} ms`)
  const api = agent.didcomm

  const connectByUrl = async (url) => {
    const { connectionRecord } = await api.oob.receiveInvitationFromUrl(url, { label: config.label })
    if (!connectionRecord) throw new Error('the invitation made no connection')
    const connection = await api.connections.returnWhenIsConnected(connectionRecord.id, { timeoutMs: 30000 })
    return connection
  }

  handlers.createInvitation = async () => {
    if (role === 'sender') throw new Error('a sender makes no invitations')
    const oob = await api.oob.createInvitation({ label: config.label, multiUseInvitation: role === 'mediator' })
    return { url: oob.outOfBandInvitation.toUrl({ domain: 'https://example.org' }) }
  }

  if (role === 'mediator') {
    agent.events.on(DidCommMessagePickupEventTypes.LiveSessionSaved, ({ payload: { session } }) =>
      emit({ event: 'liveSession', connectionId: session.connectionId, sessionId: session.id }))
    agent.events.on(DidCommMessagePickupEventTypes.LiveSessionRemoved, ({ payload: { session } }) =>
      emit({ event: 'liveSessionRemoved', connectionId: session.connectionId, sessionId: session.id }))
    await queue.attach(agent, emit)
  }

  if (role === 'recipient') {
    let mediation
    agent.events.on(DidCommBasicMessageEventTypes.DidCommBasicMessageStateChanged, ({ payload }) => {
      if (payload.basicMessageRecord.role !== DidCommBasicMessageRole.Receiver) return
      emit({ event: 'basicMessage', content: payload.message.content, receivedAt: Date.now() })
    })
    handlers.connectMediator = async ({ url }) => {
      const connection = await connectByUrl(url)
      mediation = await api.mediationRecipient.provision(connection)
      if (config.pickup !== 'poll') await api.mediationRecipient.initiateMessagePickup(mediation)
      return { connectionId: connection.id }
    }
    handlers.startPickup = async () => {
      mediation ??= await api.mediationRecipient.findDefaultMediator()
      if (!mediation) throw new Error('no mediator')
      await api.mediationRecipient.initiateMessagePickup(mediation)
      return {}
    }
    handlers.stopPickup = async () => {
      await api.mediationRecipient.stopMessagePickup()
      await outbound.closeSockets()
      return {}
    }
  }

  if (role === 'sender' || role === 'recipient') {
    handlers.receiveInvitation = async ({ url }) => ({ connectionId: (await connectByUrl(url)).id })
  }
  if (role === 'sender') {
    handlers.send = async ({ connectionId, content }) => {
      await api.basicMessages.sendMessage(connectionId, content)
      return {}
    }
  }
  return agent
}
