// Builds and drives the Credo 0.6.3 agent for one role. Imported after LIB_ASKAR_PATH is set.
import { createHash } from 'node:crypto'
import { createServer } from 'node:net'
import { askar, Store } from '@openwallet-foundation/askar-nodejs' // before @credo-ts/askar
import { AskarModule } from '@credo-ts/askar'
import { Agent, ConsoleLogger, LogLevel } from '@credo-ts/core'
import { agentDependencies, DidCommHttpInboundTransport } from '@credo-ts/node'
import * as didcommModule from '@credo-ts/didcomm'
import {
  DidCommBasicMessageEventTypes,
  DidCommBasicMessageRole,
  DidCommMediatorPickupStrategy,
  DidCommMessageForwardingStrategy,
  DidCommHttpOutboundTransport,
  DidCommModule,
  DidCommWsOutboundTransport,
} from '@credo-ts/didcomm'
import { KeepOpenWsInboundTransport } from './ws-inbound.mjs'
import observe from '../observe.cjs'

const { reportLiveSessions } = observe

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
  const client = config.client
  if (client === 'project') {
    // This project's DidCommQueueTransportRepository (clients/credo, built to clients/credo/build).
    const mod = await import('../../../clients/credo/build/index.js')
    const Repo = mod.MprQueueTransportRepository ?? mod.default?.MprQueueTransportRepository
    if (!Repo) throw new Error(`clients/credo/build exports no MprQueueTransportRepository (exports: ${Object.keys(mod)})`)
    if (!config.mprUrl) throw new Error('mprUrl is required')
    const repository = new Repo({ url: config.mprUrl, token: config.mprToken })
    await repository.connect()
    return {
      repository,
      attach: async (agent, emit) => {
        reportLiveSessions(repository.connection, emit)
        repository.attach(agent, { logger: agent.config.logger })
      },
      forwarding: DidCommMessageForwardingStrategy.QueueOnly,
    }
  }
  throw new Error(`client ${client} is not available for Credo 0.6`)
}

const strategy = (pickup) =>
  ({ poll: DidCommMediatorPickupStrategy.PickUpV2, implicit: DidCommMediatorPickupStrategy.Implicit })[pickup] ??
  DidCommMediatorPickupStrategy.PickUpV2LiveMode

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
    if (config.socketdockPort) {
      // Behind SocketDock: the server's MEDIATOR_URL, and HTTP for senders.
      const { MprSocketDockInboundTransport } = await import('../../../clients/credo/build/index.js')
      didcomm.transports.inbound = [
        new MprSocketDockInboundTransport({ port: config.socketdockPort, didcomm: didcommModule }),
        new DidCommHttpInboundTransport({ port: config.inboundPort }),
      ]
      didcomm.transports.outbound.push(new DidCommHttpOutboundTransport())
    } else {
      didcomm.transports.inbound = [new KeepOpenWsInboundTransport({ port: config.inboundPort })]
    }
    didcomm.queueTransportRepository = queue.repository
    didcomm.mediator = { autoAcceptMediationRequests: true, messageForwardingStrategy: queue.forwarding }
  } else if (role === 'recipient') {
    didcomm.mediationRecipient = {
      mediatorPickupStrategy: strategy(config.pickup),
      mediatorPollingInterval: config.pollingIntervalMs ?? 1000,
    }
  } else if (role === 'sender') {
    // The sender needs an endpoint of its own for the recipient's DID exchange response.
    const port = config.inboundPort ?? (await freePort())
    didcomm.endpoints = [`ws://127.0.0.1:${port}`]
    didcomm.transports.inbound = [new KeepOpenWsInboundTransport({ port })]
    // Senders reach a mediator that advertises HTTP for them first (mediators/credo) over HTTP.
    didcomm.transports.outbound.push(new DidCommHttpOutboundTransport())
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

  if (role === 'mediator' && process.env.E2E_TRACE) {
    // diagnostics: the order in which this instance queues and delivers
    const pickup = api.messagePickup
    const deliver = pickup.deliverMessages.bind(pickup)
    pickup.deliverMessages = async (options) => {
      const ids = options.messages.map((m) => m.id).join(',')
      log(`trace deliverMessages start ${ids}`)
      try { return await deliver(options) } finally { log(`trace deliverMessages end ${ids}`) }
    }
    const repo = queue.repository
    if (repo) {
      const addMessage = repo.addMessage.bind(repo)
      repo.addMessage = async (ctx, options) => {
        const t = Date.now()
        const id = await addMessage(ctx, options)
        log(`trace addMessage ${id} (${Date.now() - t} ms)`)
        return id
      }
    }
  }
  if (role === 'mediator') await queue.attach(agent, emit)

  if (role === 'recipient' && process.env.E2E_TRACE) {
    const { DidCommEventTypes } = await import('@credo-ts/didcomm')
    let seq = 0
    agent.events.on(DidCommEventTypes.DidCommMessageReceived, () => { seq += 1 })
    agent.events.on(DidCommEventTypes.DidCommMessageProcessed, ({ payload: { message } }) => {
      if (!message.type.includes('messagepickup/2.0/delivery')) return
      log(`trace delivery processed (received so far ${seq}): ${(message.appendedAttachments ?? message.attachments ?? []).map((a) => a.id).join(',')}`)
    })
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
      if (config.pickup !== 'poll') await api.mediationRecipient.initiateMessagePickup(mediation, strategy(config.pickup))
      return { connectionId: connection.id }
    }
    handlers.startPickup = async ({ pickup } = {}) => {
      mediation ??= await api.mediationRecipient.findDefaultMediator()
      if (!mediation) throw new Error('no mediator')
      // args.pickup ("live" | "poll", optional) overrides the configured strategy for this start
      await api.mediationRecipient.initiateMessagePickup(mediation, strategy(pickup ?? config.pickup))
      return {}
    }
    handlers.stopPickup = async () => {
      await api.mediationRecipient.stopMessagePickup()
      await outbound.closeSockets()
      return {}
    }
    // Aries RFC 0734: the device's FCM token, for the mediator to wake the phone with.
    handlers.setDeviceToken = async ({ token }) => {
      mediation ??= await api.mediationRecipient.findDefaultMediator()
      if (!mediation) throw new Error('no mediator')
      const message = new didcommModule.DidCommMessage()
      message.id = message.generateId()
      message.type = 'https://didcomm.org/push-notifications-fcm/1.0/set-device-info'
      Object.assign(message, { device_token: token, device_platform: 'android' })
      const connection = await api.connections.getById(mediation.connectionId)
      await agent.dependencyManager.resolve(didcommModule.DidCommMessageSender)
        .sendMessage(new didcommModule.DidCommOutboundMessageContext(message, { agentContext: agent.context, connection }))
      return {}
    }
  }

  if (role === 'sender' || role === 'recipient') {
    handlers.receiveInvitation = async ({ url }) => ({ connectionId: (await connectByUrl(url)).id })
  }
  handlers.connections = async () => (await api.connections.getAll()).map((c) => ({ id: c.id, state: c.state }))
  if (role === 'sender') {
    handlers.send = async ({ connectionId, content }) => {
      await api.basicMessages.sendMessage(connectionId, content)
      return {}
    }
  }
  return agent
}
