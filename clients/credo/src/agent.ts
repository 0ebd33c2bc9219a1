// What a Credo mediator does around the repository, for any Credo version: the version files
// only say where the pickup API is and what the live-session events are called. Typed
// structurally so that nothing of Credo is loaded at runtime (0.5 is CommonJS, 0.6 ESM-only).

import type { MprConnection, MprLogger, MprQueuedMessage, PushNotificationToken } from './connection'
import { relayLiveSession } from './socketdock'

/** What the mediator knows about a connection: its device's push token and how much one take may return. */
export interface ConnectionInfo {
  pushNotificationToken?: PushNotificationToken
  maxReceiveBytes?: number
}

export interface PickupSessionLike {
  id: string
  connectionId: string
  role?: string
}

export interface LiveSessionEventLike {
  payload: { session: PickupSessionLike }
}

/**
 * `agent.events` of Credo 0.5 and 0.6. The listener's event is `never` so that Credo's generic
 * `on<T extends BaseEvent>` is assignable; the listeners given check the payload themselves.
 */
export interface AgentEventsLike {
  on(type: string, listener: (event: never) => void): void
  off?(type: string, listener: (event: never) => void): void
}

/** `agent.messagePickup` (0.5) / `agent.didcomm.messagePickup` (0.6). */
export interface MessagePickupApiLike {
  getLiveModeSession(options: { connectionId: string; role?: string }): Promise<{ id: string } | undefined>
  deliverMessages(options: { pickupSessionId: string; messages: MprQueuedMessage[] }): Promise<unknown>
}

export interface LiveSessionEventTypes {
  saved: string
  removed: string
}

/** Only sessions in which this agent holds the messages (the mediator side) are the server's business. */
const MESSAGE_HOLDER = 'MessageHolder'

/**
 * Credo's live-session events → addLiveSession / removeLiveSession; the server's pushes →
 * deliverMessages into the connection's live session. Returns a function that undoes it.
 */
export function wireAgent(
  connection: MprConnection,
  events: AgentEventsLike,
  pickup: MessagePickupApiLike,
  types: LiveSessionEventTypes,
  logger: MprLogger,
): () => void {
  const failed = (what: string, connectionId: string) => (error: unknown) =>
    logger.warn(`mpr: ${what} failed`, { connectionId, error: String((error as Error)?.message ?? error) })

  const onSaved = (event: LiveSessionEventLike) => {
    const session = event?.payload?.session
    if (!session || (session.role !== undefined && session.role !== MESSAGE_HOLDER)) return
    // Behind SocketDock the recipient's socket is SocketDock's: the frame's answer binds it.
    if (relayLiveSession(session.connectionId, true)) return
    // A failure while disconnected is repaired on reconnect (the session is remembered).
    connection
      .addLiveSession({ connectionId: session.connectionId, sessionId: session.id })
      .catch(failed('addLiveSession', session.connectionId))
  }
  const onRemoved = (event: LiveSessionEventLike) => {
    const session = event?.payload?.session
    if (!session || (session.role !== undefined && session.role !== MESSAGE_HOLDER)) return
    if (relayLiveSession(session.connectionId, false)) return
    // Only if it is still the session we bound: a newer one for the connection may have replaced it.
    if (connection.heldLiveSessions().get(session.connectionId) !== session.id) return
    connection.removeLiveSession({ connectionId: session.connectionId }).catch(failed('removeLiveSession', session.connectionId))
  }
  events.on(types.saved, onSaved)
  events.on(types.removed, onRemoved)

  // One delivery at a time per connection: Credo sends each deliverMessages as its own
  // DIDComm message, so two started together can overtake each other on the way out and
  // the recipient would get the server's order shuffled.
  const deliveries = new Map<string, Promise<void>>()
  const deliverInOrder = (connectionId: string, messages: MprQueuedMessage[]) => {
    const previous = deliveries.get(connectionId) ?? Promise.resolve()
    const next = previous.then(() => deliver(connectionId, messages)).catch(failed('deliverMessages', connectionId))
    deliveries.set(connectionId, next)
    void next.then(() => {
      if (deliveries.get(connectionId) === next) deliveries.delete(connectionId)
    })
    return next
  }
  const deliver = async (connectionId: string, messages: MprQueuedMessage[]) => {
    const session = await pickup.getLiveModeSession({ connectionId, role: MESSAGE_HOLDER })
    if (!session) {
      // A binding this agent cannot serve (e.g. re-added after a reconnect while the recipient
      // moved to another instance): drop it, so the server stops pushing here and makes these
      // messages pending again at once. removeLiveSession only ends this socket's own binding.
      logger.warn('mpr: messages pushed for a connection without a live session here', { connectionId, count: messages.length })
      await connection.removeLiveSession({ connectionId }).catch(failed('removeLiveSession', connectionId))
      return
    }
    await pickup.deliverMessages({ pickupSessionId: session.id, messages })
  }
  connection.onMessagesReceived(({ connectionId, messages }) => deliverInOrder(connectionId, messages))

  return () => {
    events.off?.(types.saved, onSaved)
    events.off?.(types.removed, onRemoved)
    connection.onMessagesReceived(undefined)
  }
}

/** takeFromQueue params with the connection's `maxReceiveBytes` as limitBytes (it wins, as in the 2060 client). */
export function withLimitBytes<T extends object>(params: T, info: ConnectionInfo | undefined): T & { limitBytes?: number } {
  return info?.maxReceiveBytes ? { ...params, limitBytes: info.maxReceiveBytes } : params
}
