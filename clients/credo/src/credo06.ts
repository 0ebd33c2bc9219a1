// Credo 0.6: a DidCommQueueTransportRepository (@credo-ts/didcomm 0.6.3,
// transport/queue/DidCommQueueTransportRepository) over the same connection. Live sessions are
// events in 0.6, not repository methods: attach() turns them into addLiveSession/removeLiveSession.

import { wireAgent, withLimitBytes } from './agent'
import type { AgentEventsLike, ConnectionInfo, LiveSessionEventTypes, MessagePickupApiLike } from './agent'
import { MprConnection } from './connection'
import type { EncryptedMessage, MprConnectionOptions, MprLogger, MprQueuedMessage, MprQueueStatus } from './connection'

export type QueuedDidCommMessage = MprQueuedMessage

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
