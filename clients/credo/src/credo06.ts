// Credo 0.6: a DidCommQueueTransportRepository (@credo-ts/didcomm 0.6.3,
// transport/queue/DidCommQueueTransportRepository) over the same connection. Live sessions are
// events in 0.6, not repository methods: attach() turns them into addLiveSession/removeLiveSession.

import { wireAgent, withLimitBytes } from './agent'
import type { AgentEventsLike, ConnectionInfo, LiveSessionEventTypes, MessagePickupApiLike } from './agent'
import { MprConnection } from './connection'
import type { EncryptedMessage, MprConnectionOptions, MprLogger, MprQueuedMessage, MprQueueStatus } from './connection'
import { captureWrapped } from './relay'
import { SocketDockEndpoint, credoRelay } from './socketdock'
import type { SocketDockTransportOptions } from './socketdock'

export type QueuedDidCommMessage = MprQueuedMessage

/** What addMessage returns for a pickup delivery being wrapped (it is not queued). */
const WRAPPED = 'wrapped-pickup-delivery'

export interface MprQueueTransportRepositoryOptions extends MprConnectionOptions {
  /** Push token and maxReceiveBytes of a connection (as the 0.5 client's setConnectionInfo). */
  connectionInfo?: (connectionId: string, agentContext: unknown) => Promise<ConnectionInfo | undefined>
}

/** Credo 0.6's DidCommMessagePickupEventTypes (@credo-ts/didcomm 0.6.3, modules/message-pickup/DidCommMessagePickupEvents). */
export const CREDO06_LIVE_SESSION_EVENTS: LiveSessionEventTypes = {
  saved: 'DidCommMessagePickupLiveSessionSaved',
  removed: 'DidCommMessagePickupLiveSessionRemoved',
}

export interface Credo06AgentLike {
  events: AgentEventsLike
  didcomm: { messagePickup: MessagePickupApiLike }
}

export class MprQueueTransportRepository {
  readonly connection: MprConnection
  private readonly connectionInfo?: MprQueueTransportRepositoryOptions['connectionInfo']

  constructor(options: MprQueueTransportRepositoryOptions) {
    this.connection = new MprConnection(options)
    this.connectionInfo = options.connectionInfo
  }

  connect(): Promise<void> {
    return this.connection.connect()
  }

  disconnect(): Promise<void> {
    return this.connection.close()
  }

  getAvailableMessageCount(_agentContext: unknown, options: { connectionId: string; recipientDid?: string }): Promise<number> {
    return this.connection.getAvailableMessageCount(options)
  }

  /** Not part of Credo's interface: the figures of a Pickup 2.0 status (docs/api.md, getQueueStatus). */
  getQueueStatus(_agentContext: unknown, options: { connectionId: string; recipientDid?: string }): Promise<MprQueueStatus> {
    return this.connection.getQueueStatus(options)
  }

  async takeFromQueue(
    agentContext: unknown,
    options: { connectionId: string; recipientDid?: string; limit?: number; deleteMessages?: boolean },
  ): Promise<QueuedDidCommMessage[]> {
    const info = await this.connectionInfo?.(options.connectionId, agentContext)
    return this.connection.takeFromQueue(withLimitBytes(options, info))
  }

  /** `receivedAt` is not sent: the server stamps the time it stored the message. */
  async addMessage(
    agentContext: unknown,
    options: { connectionId: string; recipientDids: string[]; payload: EncryptedMessage; receivedAt?: Date },
  ): Promise<string> {
    if (captureWrapped(options.connectionId, options.payload)) return WRAPPED
    const info = await this.connectionInfo?.(options.connectionId, agentContext)
    return this.connection.addMessage({
      connectionId: options.connectionId,
      recipientDids: options.recipientDids,
      payload: options.payload,
      pushNotificationToken: info?.pushNotificationToken,
    })
  }

  removeMessages(_agentContext: unknown, options: { connectionId: string; messageIds: string[] }): Promise<void> {
    return this.connection.removeMessages(options)
  }

  /**
   * Wires the agent: DidCommMessagePickupEventTypes.LiveSessionSaved / LiveSessionRemoved →
   * addLiveSession / removeLiveSession, and pushes → agent.didcomm.messagePickup.deliverMessages
   * into the connection's MessageHolder live session. Returns a function that detaches.
   */
  attach(agent: Credo06AgentLike, options: { eventTypes?: LiveSessionEventTypes; logger?: MprLogger } = {}): () => void {
    return wireAgent(
      this.connection,
      agent.events,
      agent.didcomm.messagePickup,
      options.eventTypes ?? CREDO06_LIVE_SESSION_EVENTS,
      options.logger ?? this.connection.logger,
    )
  }
}

/**
 * The classes of `@credo-ts/didcomm` 0.6 the SocketDock transport resolves from the agent:
 * pass the module itself (`import * as didcomm from '@credo-ts/didcomm'`), so that nothing of
 * Credo is loaded here.
 */
export interface Credo06DidcommModule {
  DidCommMessageReceiver: unknown
  DidCommTransportService: unknown
  DidCommMessageSender: unknown
  DidCommMessagePickupApi: unknown
  DidCommConnectionService: unknown
  DidCommOutboundMessageContext: new (message: unknown, options: { agentContext: unknown; connection: unknown }) => unknown
}

interface AgentContextLike {
  dependencyManager: { resolve(token: unknown): any }
  config: { logger: MprLogger }
}

/**
 * Credo 0.6's inbound transport for a mediator behind SocketDock: serves the server's
 * MEDIATOR_URL (see socketdock.ts). Give it in `DidCommModule({ transports: { inbound } })`
 * beside an HTTP inbound transport for senders; the queue repository must be this package's.
 */
export class MprSocketDockInboundTransport {
  private readonly endpoint: SocketDockEndpoint

  constructor(
    private readonly options: SocketDockTransportOptions & { didcomm: Credo06DidcommModule },
    kind: 'socketdock' | 'senders' = 'socketdock',
  ) {
    this.endpoint = new SocketDockEndpoint(options, kind)
  }

  async start(agentContext: AgentContextLike): Promise<void> {
    const didcomm = this.options.didcomm
    const resolve = (token: unknown) => agentContext.dependencyManager.resolve(token)
    const services = {
      agentContext,
      receiver: resolve(didcomm.DidCommMessageReceiver),
      transports: resolve(didcomm.DidCommTransportService),
      sender: resolve(didcomm.DidCommMessageSender),
      connections: resolve(didcomm.DidCommConnectionService),
      pickup: resolve(didcomm.DidCommMessagePickupApi),
      OutboundMessageContext: didcomm.DidCommOutboundMessageContext,
    }
    await this.endpoint.start(credoRelay(services), agentContext.config.logger)
  }

  stop(): Promise<void> {
    return this.endpoint.stop()
  }
}

/**
 * An HTTP inbound transport for senders that answers a message only once Credo handled it: a
 * forward once it is queued here, an error when it was not. Credo's own HTTP inbound answers a
 * message that asks for no reply before handling it, so a sender is told "delivered" for a
 * forward that a mediator instance dying then loses.
 */
export class MprHttpInboundTransport extends MprSocketDockInboundTransport {
  constructor(options: SocketDockTransportOptions & { didcomm: Credo06DidcommModule }) {
    super(options, 'senders')
  }
}
