// A Credo 0.6 mediator whose recipients' messages live in mpr (README.md). Every instance given
// the same wallet (one PostgreSQL database) and an mpr server of one deployment is the same
// mediator: nothing about a recipient is held in the process.
import 'reflect-metadata'
import { dirname, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { ConfigError, loadConfig } from './config.mjs'

const here = dirname(fileURLToPath(import.meta.url))
process.env.LIB_ASKAR_PATH ??= join(here, '..', 'native')

let config
try {
  config = loadConfig()
} catch (error) {
  if (!(error instanceof ConfigError)) throw error
  console.error(`mediator: ${error.message}`)
  process.exit(2)
}

// Askar's Node binding must be loaded before @credo-ts/askar.
const { askar } = await import('@openwallet-foundation/askar-nodejs')
const { AskarModule } = await import('@credo-ts/askar')
const { Agent, ConsoleLogger, LogLevel } = await import('@credo-ts/core')
const { agentDependencies } = await import('@credo-ts/node')
const { DidCommHttpOutboundTransport, DidCommMessageForwardingStrategy, DidCommModule, DidCommWsOutboundTransport } =
  await import('@credo-ts/didcomm')
const { MprHttpInboundTransport, MprQueueTransportRepository } = await import('@mpr/credo-client')
const { KeepOpenWsInboundTransport } = await import('./keep-open-ws-inbound.mjs')
const { mediatorInvitationUrl } = await import('./invitation.mjs')
const { pushNotificationsFcm } = await import('./push.mjs')

const logger = new ConsoleLogger(LogLevel[config.logLevel])

/** The inbound transport recipients' sockets come through, per INBOUND_MODE. */
async function recipientsTransport(repository) {
  if (config.inboundMode === 'websocket') {
    return new KeepOpenWsInboundTransport({ host: config.bindAddress, port: config.wsPort })
  }
  // INBOUND_MODE=socketdock: recipients' sockets are held by SocketDock; the server POSTs their
  // frames (and the pickup deliveries it wants wrapped) to this instance on SOCKETDOCK_PORT,
  // its MEDIATOR_URL. The transport is clients/credo's.
  const { MprSocketDockInboundTransport } = await import('@mpr/credo-client')
  const didcomm = await import('@credo-ts/didcomm')
  return new MprSocketDockInboundTransport({ host: config.bindAddress, port: config.socketDockPort, didcomm })
}

function newAgent(repository, recipients, http) {
  return new Agent({
    config: { logger, autoUpdateStorageOnStartup: true },
    dependencies: agentDependencies,
    modules: {
      askar: new AskarModule({
        askar,
        store: { id: config.walletId, key: config.walletKey, keyDerivationMethod: 'kdf:argon2i:mod', database: config.database },
      }),
      didcomm: new DidCommModule({
        endpoints: config.endpoints,
        transports: { inbound: [http, recipients], outbound: [new DidCommHttpOutboundTransport(), new DidCommWsOutboundTransport()] },
        connections: { autoAcceptConnections: true },
        queueTransportRepository: repository,
        mediator: { autoAcceptMediationRequests: true, messageForwardingStrategy: DidCommMessageForwardingStrategy.QueueOnly },
        mediationRecipient: false,
      }),
    },
  })
}

/** How long an instance keeps trying to start while others are creating the wallet. */
const START_RETRY_MS = 60_000

/**
 * Opens the wallet and starts the agent. Instances starting together on a new wallet race to
 * create its one-per-wallet records (the store and its tables, the mediator's routing keys, the
 * storage version): a loser finds the store half made, or its write fails on the wallet's
 * uniqueness, and it starts again until it finds the winner's records. A wrong key is final.
 */
async function startAgent(repository) {
  const deadline = Date.now() + START_RETRY_MS
  for (let attempt = 1; ; attempt++) {
    // Senders' endpoint: a forward is answered once it is queued (Credo's own HTTP inbound
    // answers before), so a sender is never told "delivered" for a message nobody stored.
    const http = new MprHttpInboundTransport({
      host: config.bindAddress,
      port: config.httpPort,
      didcomm: await import('@credo-ts/didcomm'),
      onGet: (path) => (path === '/invitation' ? (invitationUrl ? { status: 200, body: invitationUrl } : { status: 503, body: 'starting' }) : undefined),
    })
    const recipients = await recipientsTransport(repository)
    const agent = newAgent(repository, recipients, http)
    try {
      await agent.initialize()
      return agent
    } catch (error) {
      await Promise.race([agent.shutdown().catch(() => {}), sleep(5000)])
      // The inbound transports this attempt started may still listen (a shutdown that failed
      // before the didcomm module's never stops them): the next attempt would find its ports
      // taken, attempt after attempt.
      await Promise.race([Promise.all([http, recipients].map((t) => t.stop().catch(() => {}))), sleep(5000)])
      if (chain(error).some((e) => e.name === 'AskarStoreInvalidKeyError')) {
        throw new Error(`WALLET_KEY does not open the wallet WALLET_ID=${config.walletId}`, { cause: error })
      }
      if (Date.now() > deadline) throw error
      logger.warn(`starting the agent failed (attempt ${attempt}), retrying: ${causes(error)}`)
      await sleep(500 + Math.random() * 1000)
    }
  }
}

/** An error and its causes (Credo wraps Askar's errors). */
function chain(error) {
  const errors = []
  for (let e = error; e && errors.length < 8; e = e.cause) errors.push(e)
  return errors
}

/** An error's message with those of its causes. */
const causes = (error) => chain(error).map((e) => e.message ?? String(e)).join(': ')

let invitationUrl
let agent
let repository
let stopping = false

async function stop(signal) {
  if (stopping) return
  stopping = true
  logger.info(`${signal}: shutting down`)
  const deadline = setTimeout(() => {
    console.error('mediator: shutdown took longer than 10 s, exiting')
    process.exit(1)
  }, 10_000)
  deadline.unref()
  await agent?.shutdown().catch((error) => console.error(`mediator: agent shutdown: ${error.message}`))
  await repository?.disconnect().catch((error) => console.error(`mediator: mpr disconnect: ${error.message}`))
  process.exit(0)
}
process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))

try {
  // A call made while the server connection is being re-opened (a server's failover) waits for
  // it a few seconds rather than failing the frame or forward it serves.
  const push = pushNotificationsFcm(await import('@credo-ts/didcomm'))
  repository = new MprQueueTransportRepository({
    url: config.mprUrl, token: config.mprToken, logger, waitForReconnectMs: 3000, connectionInfo: push.connectionInfo,
  })
  try {
    await repository.connect()
  } catch (error) {
    throw new Error(`cannot reach mpr at MPR_URL=${config.mprUrl}: ${error.message}`)
  }
  agent = await startAgent(repository)
  agent.didcomm.registerMessageHandlers([push.handler])
  repository.attach(agent, { logger })
  const sendersEndpoint = config.endpoints.find((e) => e.startsWith('http')) ?? config.endpoints[0]
  invitationUrl = await mediatorInvitationUrl(agent, { label: config.label, domain: sendersEndpoint })
  console.log(`mediator ready: HTTP ${config.httpPort}, ${config.inboundMode} ${config.inboundMode === 'websocket' ? config.wsPort : config.socketDockPort}, endpoints ${config.endpoints.join(' ')}`)
  console.log(`invitation: ${invitationUrl}`)
} catch (error) {
  console.error(`mediator: start failed: ${causes(error)}\n${error?.stack ?? ''}`)
  await agent?.shutdown().catch(() => {})
  process.exit(1)
}
