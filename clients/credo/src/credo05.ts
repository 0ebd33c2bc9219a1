// Credo 0.5: a drop-in for @2060.io/message-pickup-repository-client's MessagePickupRepositoryClient
// (same constructor, methods and signatures), implementing Credo 0.5's MessagePickupRepository.

import { wireAgent, withLimitBytes } from './agent'
import type { AgentEventsLike, ConnectionInfo, LiveSessionEventTypes, MessagePickupApiLike } from './agent'
import { MprConnection } from './connection'
import type { EncryptedMessage, MprConnectionOptions, MprLogger, MprQueuedMessage, MprQueueStatus, PushNotificationToken } from './connection'
import { captureWrapped } from './relay'
import { SocketDockEndpoint, credoRelay } from './socketdock'
import type { SocketDockTransportOptions } from './socketdock'

export type QueuedMessage = MprQueuedMessage

/** What addMessage returns for a pickup delivery being wrapped (it is not queued). */
const WRAPPED = 'wrapped-pickup-delivery'

/** `{ url }` as for the 2060 client, plus the optional MprConnectionOptions (token, timeouts, logger). */
export type MessagePickupRepositoryClientOptions = MprConnectionOptions

export interface MessagesReceivedCallbackParams {
  connectionId: string
  messages: QueuedMessage[]
}

export interface ConnectionIdOptions {
  connectionId: string
}

export interface AddLiveSessionOptions {
  connectionId: string
  sessionId: string
}

export interface RemoveAllMessagesOptions {
  connectionId: string
  recipientDid?: string
}

export interface GetAvailableMessageCountOptions {
  connectionId: string
  recipientDid?: string
}

export interface ExtendedTakeFromQueueOptions {
  connectionId: string
  recipientDid?: string
  limit?: number
  limitBytes?: number
  deleteMessages?: boolean
}

export interface ExtendedAddMessageOptions {
  connectionId: string
  recipientDids: string[]
  payload: EncryptedMessage
  pushNotificationToken?: PushNotificationToken
}

export interface RemoveMessagesOptions {
  connectionId: string
  messageIds: string[]
}

export type { ConnectionInfo }

export class MessagePickupRepositoryClient {
  /** The connection underneath: `client.connection.on('reconnected', …)`. */
  readonly connection: MprConnection
  private connectionInfoCallback?: (connectionId: string) => Promise<ConnectionInfo | undefined>

  constructor(options: MessagePickupRepositoryClientOptions) {
    this.connection = new MprConnection(options)
  }

  connect(): Promise<void> {
    return this.connection.connect()
  }

  disconnect(): Promise<void> {
    return this.connection.close()
  }

  messagesReceived(callback: (data: MessagesReceivedCallbackParams) => void): void {
    this.connection.onMessagesReceived(callback)
  }

  setConnectionInfo(callback: (connectionId: string) => Promise<ConnectionInfo | undefined>): void {
    this.connectionInfoCallback = callback
  }

  async takeFromQueue(params: ExtendedTakeFromQueueOptions): Promise<QueuedMessage[]> {
    return this.connection.takeFromQueue(withLimitBytes(params, await this.connectionInfo(params.connectionId)))
  }

  getAvailableMessageCount(params: GetAvailableMessageCountOptions): Promise<number> {
    return this.connection.getAvailableMessageCount(params)
  }

  /** Not part of Credo's interface: the figures of a Pickup 2.0 status (docs/api.md, getQueueStatus). */
  getQueueStatus(params: { connectionId: string; recipientDid?: string }): Promise<MprQueueStatus> {
    return this.connection.getQueueStatus(params)
  }

  /** Returns the message id (the 2060 client returned the JSON text of the reply instead). */
  async addMessage(params: ExtendedAddMessageOptions): Promise<string> {
    if (captureWrapped(params.connectionId, params.payload)) return WRAPPED
    const info = await this.connectionInfo(params.connectionId)
    return this.connection.addMessage({
      ...params,
      pushNotificationToken: info?.pushNotificationToken ?? params.pushNotificationToken,
    })
  }

  removeMessages(params: RemoveMessagesOptions): Promise<void> {
    return this.connection.removeMessages(params)
  }

  removeAllMessages(params: RemoveAllMessagesOptions): Promise<void> {
    return this.connection.removeAllMessages(params)
  }

  getLiveSession(params: ConnectionIdOptions): Promise<boolean> {
    return this.connection.getLiveSession(params)
  }

  addLiveSession(params: AddLiveSessionOptions): Promise<boolean> {
    return this.connection.addLiveSession(params)
  }

  removeLiveSession(params: ConnectionIdOptions): Promise<boolean> {
    return this.connection.removeLiveSession(params)
  }

  ping(): Promise<string> {
    return this.connection.ping()
  }

  private connectionInfo(connectionId: string): Promise<ConnectionInfo | undefined> {
    return this.connectionInfoCallback ? this.connectionInfoCallback(connectionId) : Promise.resolve(undefined)
  }
}

/** Credo 0.5's MessagePickupEventTypes (@credo-ts/core 0.5.19, modules/message-pickup/MessagePickupEvents). */
export const CREDO05_LIVE_SESSION_EVENTS: LiveSessionEventTypes = { saved: 'LiveSessionSaved', removed: 'LiveSessionRemoved' }

export interface Credo05AgentLike {
  events: AgentEventsLike
  messagePickup: MessagePickupApiLike
}

/**
 * The wiring a 2060-client mediator writes by hand: Credo's LiveSessionSaved / LiveSessionRemoved
 * → addLiveSession / removeLiveSession, and every push → deliverMessages into the live session.
 * Replaces any messagesReceived callback. Returns a function that detaches.
 */
export function attachToCredo05Agent(
  agent: Credo05AgentLike,
  client: MessagePickupRepositoryClient,
  options: { eventTypes?: LiveSessionEventTypes; logger?: MprLogger } = {},
): () => void {
  return wireAgent(
    client.connection,
    agent.events,
    agent.messagePickup,
    options.eventTypes ?? CREDO05_LIVE_SESSION_EVENTS,
    options.logger ?? client.connection.logger,
  )
}

/**
 * The classes of `@credo-ts/core` 0.5 the SocketDock transport resolves from the agent: pass
 * the module itself (`require('@credo-ts/core')`), so that nothing of Credo is loaded here.
 */
export interface Credo05CoreModule {
  MessageReceiver: unknown
  TransportService: unknown
  MessageSender: unknown
  ConnectionService: unknown
  OutboundMessageContext: new (message: unknown, options: { agentContext: unknown; connection: unknown }) => unknown
}

interface Credo05AgentForTransport {
  dependencyManager: { resolve(token: unknown): any }
  context: unknown
  messagePickup: { getProtocol(version: string): any }
  config: { logger: MprLogger }
}

/**
 * Credo 0.5's inbound transport for a mediator behind SocketDock: serves the server's
 * MEDIATOR_URL (see socketdock.ts). `agent.registerInboundTransport(...)` it beside an HTTP
 * inbound transport for senders; the repository must be this package's client.
 */
export class Credo05SocketDockInboundTransport {
  private readonly endpoint: SocketDockEndpoint

  constructor(
    private readonly options: SocketDockTransportOptions & { core: Credo05CoreModule },
    kind: 'socketdock' | 'senders' = 'socketdock',
  ) {
    this.endpoint = new SocketDockEndpoint(options, kind)
  }

  async start(agent: Credo05AgentForTransport): Promise<void> {
    const core = this.options.core
    const resolve = (token: unknown) => agent.dependencyManager.resolve(token)
    const services = {
      agentContext: agent.context,
      receiver: resolve(core.MessageReceiver),
      transports: resolve(core.TransportService),
      sender: resolve(core.MessageSender),
      connections: resolve(core.ConnectionService),
      pickup: agent.messagePickup,
      OutboundMessageContext: core.OutboundMessageContext,
    }
    await this.endpoint.start(credoRelay(services), agent.config.logger)
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
export class Credo05HttpInboundTransport extends Credo05SocketDockInboundTransport {
  constructor(options: SocketDockTransportOptions & { core: Credo05CoreModule }) {
    super(options, 'senders')
  }
}
