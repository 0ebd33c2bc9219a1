import { EventEmitter } from 'events'
import { Client } from 'rpc-websockets'

import { MprConnectionError, MprError, MprProtocolError } from './errors'

/** A DIDComm v1 JWE, opaque to the server (returned as sent, other members included). */
export type EncryptedMessage = { protected: string; iv: string; ciphertext: string; tag: string }

export interface MprQueuedMessage {
  id: string
  receivedAt: Date
  encryptedMessage: EncryptedMessage
}

export interface PushNotificationToken {
  type: string
  token?: string
}

/** What `getQueueStatus` answers (docs/api.md): the figures of a Pickup 2.0 status. */
export interface MprQueueStatus {
  /** Pending messages (as getAvailableMessageCount). */
  messageCount: number
  /** encryptedMessage bytes the connection holds, pending and in flight; null for one recipientDid. */
  totalBytes: number | null
  /** receivedAt of the oldest / newest pending message; null when none is pending. */
  oldestReceivedAt: Date | null
  newestReceivedAt: Date | null
}

export interface MessagesReceivedParams {
  connectionId: string
  messages: MprQueuedMessage[]
}

/** Same shape as Credo's Logger (0.5 and 0.6), so `agent.config.logger` can be passed. */
export interface MprLogger {
  debug(message: string, data?: Record<string, unknown>): void
  info(message: string, data?: Record<string, unknown>): void
  warn(message: string, data?: Record<string, unknown>): void
  error(message: string, data?: Record<string, unknown>): void
}

export interface MprConnectionOptions {
  /** ws:// or wss:// URL of the server. */
  url: string
  /** Sent as `Authorization: Bearer <token>` on every (re)connect. */
  token?: string
  /** A call without a reply within this many ms fails with MprConnectionError('timeout'). Default 5000. */
  callTimeoutMs?: number
  /** First delay before reconnecting; doubles per failed attempt up to maxReconnectIntervalMs. Default 500. */
  reconnectIntervalMs?: number
  /** Longest delay between reconnect attempts. Default 30000. */
  maxReconnectIntervalMs?: number
  /**
   * A `ping` call this often; one unanswered within callTimeoutMs drops the socket and
   * reconnects (a half-open TCP connection never closes by itself). Default 10000; 0: off.
   */
  heartbeatIntervalMs?: number
  /**
   * A call made while the socket is being re-opened waits this long for it (then fails with
   * MprConnectionError('not-connected')); calls running when it dropped fail at once either way.
   * Default 0: fail at once. A mediator behind a load balancer over several servers sets a few
   * seconds, so that a server's failover does not fail the frames it is handling meanwhile.
   */
  waitForReconnectMs?: number
  logger?: MprLogger
}

const quietLogger: MprLogger = {
  debug: () => undefined,
  info: () => undefined,
  warn: (message, data) => console.warn(message, data ?? ''),
  error: (message, data) => console.error(message, data ?? ''),
}

/**
 * One connection to an mpr (or Node MPR) server through the rpc-websockets Client that Credo
 * mediators use. After the socket drops it reconnects forever (with backoff) and re-adds every
 * live session it registered, because the server ends a socket's sessions when it closes.
 *
 * Events: `reconnected` (after the re-adds), `disconnected` (the socket dropped; reconnecting),
 * `opened` (the socket is open, before the re-adds).
 */
export class MprConnection extends EventEmitter {
  readonly url: string
  private readonly token?: string
  private readonly callTimeoutMs: number
  private readonly reconnectIntervalMs: number
  private readonly maxReconnectIntervalMs: number
  private readonly heartbeatIntervalMs: number
  private readonly waitForReconnectMs: number
  readonly logger: MprLogger

  private client?: Client
  private ready = false
  private started = false
  private stopped = false
  private failedAttempts = 0
  private reconnectTimer?: NodeJS.Timeout
  /** Rejections of the calls running on the current socket: they fail at once when it drops. */
  private readonly running = new Set<(error: Error) => void>()
  /** connectionId → sessionId of every live session added and not removed. */
  private readonly liveSessions = new Map<string, string>()
  private messagesCallback?: (params: MessagesReceivedParams) => unknown
  /** The connect() waiting for its first open, failed by close() so that it cannot hang. */
  private firstAttempt?: { reject: (error: Error) => void }

  constructor(options: MprConnectionOptions) {
    super()
    // Calls waiting for a reconnect listen for `opened`, any number of them.
    this.setMaxListeners(0)
    this.url = options.url
    this.token = options.token
    this.callTimeoutMs = options.callTimeoutMs ?? 5000
    this.reconnectIntervalMs = options.reconnectIntervalMs ?? 500
    this.maxReconnectIntervalMs = Math.max(options.maxReconnectIntervalMs ?? 30000, this.reconnectIntervalMs)
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 10000
    this.waitForReconnectMs = options.waitForReconnectMs ?? 0
    this.logger = options.logger ?? quietLogger
  }

  get isConnected(): boolean {
    return this.ready
  }

  /**
   * Opens the socket. Rejects if this first attempt fails (wrong URL, refused token), so a
   * misconfigured mediator fails at start; once open, drops are repaired in the background.
   * Calling it again while started does nothing.
   */
  connect(): Promise<void> {
    if (this.started) return Promise.resolve()
    this.started = true
    this.stopped = false
    return new Promise((resolve, reject) => {
      const first = {
        resolve: () => {
          this.firstAttempt = undefined
          resolve()
        },
        reject: (error: Error) => {
          this.firstAttempt = undefined
          this.started = false
          reject(error)
        },
      }
      this.firstAttempt = first
      this.open(first)
    })
  }

  /** Closes the socket for good: no reconnect; running calls fail; live sessions are forgotten (the server ends them). */
  async close(): Promise<void> {
    this.stopped = true
    this.started = false
    clearTimeout(this.reconnectTimer)
    const client = this.client
    this.client = undefined
    this.ready = false
    this.liveSessions.clear()
    this.failRunning(new MprConnectionError('connection-lost', 'mpr connection closed'))
    this.firstAttempt?.reject(new MprConnectionError('not-connected', 'mpr connection closed before it opened'))
    if (client) {
      client.removeAllListeners()
      closeQuietly(client, true)
    }
  }

  /** The one callback for `messagesReceived` pushes (a later call replaces it; undefined removes it). */
  onMessagesReceived(callback: ((params: MessagesReceivedParams) => unknown) | undefined): void {
    this.messagesCallback = callback
  }

  // -------------------------------------------------------------------------------------------
  // methods

  async addMessage(params: {
    connectionId: string
    recipientDids: string[]
    payload: EncryptedMessage
    pushNotificationToken?: PushNotificationToken
  }): Promise<string> {
    const result = await this.call('addMessage', {
      connectionId: params.connectionId,
      recipientDids: params.recipientDids,
      payload: params.payload,
      pushNotificationToken: params.pushNotificationToken,
    })
    const messageId = isObject(result) ? result.messageId : undefined
    if (typeof messageId !== 'string' || messageId === '') throw shapeError('addMessage', '{messageId: string}', result)
    return messageId
  }

  async takeFromQueue(params: {
    connectionId: string
    recipientDid?: string
    limit?: number
    limitBytes?: number
    deleteMessages?: boolean
  }): Promise<MprQueuedMessage[]> {
    const result = await this.call('takeFromQueue', {
      connectionId: params.connectionId,
      recipientDid: params.recipientDid,
      limit: params.limit,
      limitBytes: params.limitBytes,
      deleteMessages: params.deleteMessages,
    })
    const messages = Array.isArray(result) ? toQueuedMessages(result) : undefined
    if (!messages) throw shapeError('takeFromQueue', 'an array of {id, receivedAt, encryptedMessage}', result)
    return messages
  }

  async getAvailableMessageCount(params: { connectionId: string; recipientDid?: string }): Promise<number> {
    const result = await this.call('getAvailableMessageCount', {
      connectionId: params.connectionId,
      recipientDid: params.recipientDid,
    })
    if (typeof result !== 'number' || !Number.isInteger(result) || result < 0) {
      throw shapeError('getAvailableMessageCount', 'a non-negative integer', result)
    }
    return result
  }

  /** The figures of a Pickup 2.0 status at the cost of a count; a server without the method fails with MprError -32601. */
  async getQueueStatus(params: { connectionId: string; recipientDid?: string }): Promise<MprQueueStatus> {
    const result = await this.call('getQueueStatus', { connectionId: params.connectionId, recipientDid: params.recipientDid })
    const time = (value: unknown) => (value === null ? null : typeof value === 'string' ? new Date(value) : undefined)
    const status = isObject(result)
      ? {
          messageCount: result.messageCount,
          totalBytes: result.totalBytes,
          oldestReceivedAt: time(result.oldestReceivedAt),
          newestReceivedAt: time(result.newestReceivedAt),
        }
      : undefined
    if (
      !status ||
      typeof status.messageCount !== 'number' ||
      !(status.totalBytes === null || typeof status.totalBytes === 'number') ||
      status.oldestReceivedAt === undefined ||
      status.newestReceivedAt === undefined
    ) {
      throw shapeError('getQueueStatus', '{messageCount, totalBytes, oldestReceivedAt, newestReceivedAt}', result)
    }
    return status as MprQueueStatus
  }

  async removeMessages(params: { connectionId: string; messageIds: string[] }): Promise<void> {
    const result = await this.call('removeMessages', { connectionId: params.connectionId, messageIds: params.messageIds })
    if (typeof result !== 'boolean') throw shapeError('removeMessages', 'a boolean', result)
  }

  async removeAllMessages(params: { connectionId: string; recipientDid?: string }): Promise<void> {
    const result = await this.call('removeAllMessages', {
      connectionId: params.connectionId,
      recipientDid: params.recipientDid,
    })
    if (typeof result !== 'boolean') throw shapeError('removeAllMessages', 'a boolean', result)
  }

  /**
   * Binds the connection's live session to this client. It is remembered before the call, so
   * that one attempted while disconnected is still bound on reconnect; a server refusal forgets it.
   */
  async addLiveSession(params: { connectionId: string; sessionId: string }): Promise<boolean> {
    this.liveSessions.set(params.connectionId, params.sessionId)
    try {
      return await this.bindLiveSession(params.connectionId, params.sessionId)
    } catch (error) {
      if (error instanceof MprError && this.liveSessions.get(params.connectionId) === params.sessionId) {
        this.liveSessions.delete(params.connectionId)
      }
      throw error
    }
  }

  async getLiveSession(params: { connectionId: string }): Promise<boolean> {
    const result = await this.call('getLiveSession', { connectionId: params.connectionId })
    // The Node MPR answers null for "none".
    if (result === null) return false
    if (typeof result !== 'boolean') throw shapeError('getLiveSession', 'a boolean', result)
    return result
  }

  /** Forgets the session first: if the call fails because the socket dropped, the server ended it anyway. */
  async removeLiveSession(params: { connectionId: string }): Promise<boolean> {
    this.liveSessions.delete(params.connectionId)
    const result = await this.call('removeLiveSession', { connectionId: params.connectionId })
    if (typeof result !== 'boolean') throw shapeError('removeLiveSession', 'a boolean', result)
    return result
  }

  async ping(): Promise<string> {
    const result = await this.call('ping')
    if (typeof result !== 'string') throw shapeError('ping', 'a string', result)
    return result
  }

  /** Live sessions this client holds (connectionId → sessionId), as re-added after a reconnect. */
  heldLiveSessions(): ReadonlyMap<string, string> {
    return new Map(this.liveSessions)
  }

  // -------------------------------------------------------------------------------------------
  // transport

  private async bindLiveSession(connectionId: string, sessionId: string): Promise<boolean> {
    const result = await this.call('addLiveSession', { connectionId, sessionId })
    if (typeof result !== 'boolean') throw shapeError('addLiveSession', 'a boolean', result)
    return result
  }

  /** One call on the current socket (waiting for a reconnect, if so configured); undefined members of params are not sent. */
  private async call(method: string, params?: Record<string, unknown> | unknown[]): Promise<unknown> {
    if (!this.ready && this.started && !this.stopped && this.waitForReconnectMs > 0) await this.reopened(this.waitForReconnectMs)
    const client = this.client
    if (!client || !this.ready) {
      throw new MprConnectionError('not-connected', `mpr ${method}: not connected to ${this.url}`)
    }
    return this.callOn(client, method, params)
  }

  /** Resolves once the socket is open again, or after `ms`. */
  private reopened(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer)
        this.off('opened', done)
        resolve()
      }
      const timer = setTimeout(done, ms)
      this.on('opened', done)
    })
  }

  private callOn(client: Client, method: string, params?: Record<string, unknown> | unknown[]): Promise<unknown> {
    const wireParams =
      params && !Array.isArray(params) ? Object.fromEntries(Object.entries(params).filter(([, v]) => v !== undefined)) : params
    return new Promise((resolve, reject) => {
      let done = false
      const settle = (error: Error | undefined, value?: unknown) => {
        if (done) return
        done = true
        clearTimeout(timer)
        this.running.delete(fail)
        if (error) reject(error)
        else resolve(value)
      }
      const fail = (error: Error) => settle(error)
      // Our own timer as well as the library's: its timer only starts once ws reports the frame written.
      const timer = setTimeout(
        () => fail(new MprConnectionError('timeout', `mpr ${method}: no reply within ${this.callTimeoutMs} ms`)),
        this.callTimeoutMs,
      )
      this.running.add(fail)
      client.call(method, wireParams, this.callTimeoutMs).then(
        (value) => settle(undefined, value),
        (error: unknown) => fail(toError(method, error)),
      )
    })
  }

  private open(first?: { resolve: () => void; reject: (error: Error) => void }): void {
    const client = new Client(this.url, {
      autoconnect: true,
      // Reconnecting is ours: the library's gives up after max_reconnects and re-adds nothing.
      reconnect: false,
      ...(this.token ? { headers: { Authorization: `Bearer ${this.token}` } } : {}),
    })
    this.client = client
    let opened = false
    let lost = false
    let heartbeat: NodeJS.Timeout | undefined

    const onLost = (why: string) => {
      if (lost || this.client !== client) return
      lost = true
      clearInterval(heartbeat)
      this.client = undefined
      this.ready = false
      client.removeAllListeners()
      closeQuietly(client, false)
      this.failRunning(new MprConnectionError('connection-lost', `mpr connection lost (${why})`))
      if (first && !opened) {
        first.reject(new MprConnectionError('not-connected', `mpr: cannot connect to ${this.url}: ${why}`))
        return
      }
      if (opened) {
        this.logger.warn(`mpr connection to ${this.url} lost (${why}); reconnecting`)
        this.emit('disconnected')
      } else {
        this.logger.debug(`mpr reconnect to ${this.url} failed (${why})`)
      }
      this.scheduleReconnect()
    }

    client.on('open', () => {
      opened = true
      this.ready = true
      this.failedAttempts = 0
      this.emit('opened')
      if (this.heartbeatIntervalMs > 0) {
        heartbeat = setInterval(() => {
          if (this.client !== client) return clearInterval(heartbeat)
          this.call('ping').catch((error: unknown) => {
            if (error instanceof MprConnectionError && error.reason === 'timeout') onLost('no answer to a heartbeat ping')
          })
        }, this.heartbeatIntervalMs)
        // A heartbeat alone does not keep the process alive.
        heartbeat.unref()
      }
      void this.afterOpen(client, first)
    })
    // The library emits `close` only after `open`; a failed attempt shows as `error` alone.
    // ws hands the library an ErrorEvent ({message, error}), not an Error.
    client.on('error', (event: { message?: string; error?: Error } | undefined) =>
      onLost(event?.error?.message ?? event?.message ?? 'socket error'),
    )
    client.on('close', (code: number) => onLost(`closed with ${code}`))
    client.on('messagesReceived', (params: unknown) => this.deliver(params))
  }

  /** Subscribes (the Node MPR pushes only to subscribers), (re-)adds the held live sessions, then says so. */
  private async afterOpen(client: Client, first?: { resolve: () => void }): Promise<void> {
    try {
      // Through call(), not client.subscribe(), so that it fails (not hangs) if the socket drops now.
      await this.call('rpc.on', ['messagesReceived'])
    } catch (error) {
      this.logger.warn('mpr: subscribing to messagesReceived failed', { error: String((error as Error)?.message ?? error) })
    }
    for (const [connectionId, sessionId] of [...this.liveSessions]) {
      if (this.client !== client) break
      // Removed (or replaced) meanwhile: its own call did what is needed.
      if (this.liveSessions.get(connectionId) !== sessionId) continue
      try {
        await this.bindLiveSession(connectionId, sessionId)
      } catch (error) {
        // Kept: tried again after the next reconnect.
        this.logger.warn('mpr: re-adding a live session failed', { connectionId, error: String((error as Error)?.message) })
      }
    }
    if (first) {
      this.logger.info(`mpr connected to ${this.url}`)
      first.resolve()
    } else if (this.client === client) {
      this.logger.info(`mpr reconnected to ${this.url}`, { liveSessions: this.liveSessions.size })
      this.emit('reconnected')
    }
  }

  private scheduleReconnect(): void {
    if (this.stopped) return
    const base = Math.min(this.reconnectIntervalMs * 2 ** this.failedAttempts, this.maxReconnectIntervalMs)
    this.failedAttempts = Math.min(this.failedAttempts + 1, 30)
    // Jitter, so that the mediators of a restarted server do not all come back in one instant.
    const delay = Math.round(base * (0.8 + Math.random() * 0.4))
    clearTimeout(this.reconnectTimer)
    this.reconnectTimer = setTimeout(() => {
      if (!this.stopped) this.open()
    }, delay)
  }

  private failRunning(error: Error): void {
    for (const fail of [...this.running]) fail(error)
  }

  private deliver(params: unknown): void {
    const connectionId = isObject(params) ? params.connectionId : undefined
    const messages = isObject(params) && Array.isArray(params.messages) ? toQueuedMessages(params.messages) : undefined
    if (typeof connectionId !== 'string' || !messages) {
      this.logger.error('mpr: malformed messagesReceived push dropped', { params: JSON.stringify(params)?.slice(0, 200) })
      return
    }
    if (!this.messagesCallback) {
      // Not removed, so the server hands them out again after its visibility timeout.
      this.logger.warn('mpr: messagesReceived push but no callback registered', { connectionId })
      return
    }
    try {
      Promise.resolve(this.messagesCallback({ connectionId, messages })).catch((error: unknown) =>
        this.logger.error('mpr: messagesReceived callback failed', { connectionId, error: String((error as Error)?.message ?? error) }),
      )
    } catch (error) {
      this.logger.error('mpr: messagesReceived callback failed', { connectionId, error: String((error as Error)?.message ?? error) })
    }
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** Checks and converts QueuedMessages (receivedAt to a Date); undefined if any is malformed. */
function toQueuedMessages(values: unknown[]): MprQueuedMessage[] | undefined {
  const messages: MprQueuedMessage[] = []
  for (const value of values) {
    if (!isObject(value) || typeof value.id !== 'string' || !isObject(value.encryptedMessage)) return undefined
    if (typeof value.receivedAt !== 'string' && typeof value.receivedAt !== 'number') return undefined
    const receivedAt = new Date(value.receivedAt)
    if (Number.isNaN(receivedAt.getTime())) return undefined
    messages.push({ id: value.id, receivedAt, encryptedMessage: value.encryptedMessage as EncryptedMessage })
  }
  return messages
}

function shapeError(method: string, expected: string, result: unknown): MprProtocolError {
  const shown = JSON.stringify(result)
  return new MprProtocolError(`mpr ${method}: expected ${expected}, got ${shown === undefined ? 'undefined' : shown.slice(0, 200)}`)
}

/** rpc-websockets rejects with the bare JSON-RPC error object; anything else is transport. */
function toError(method: string, error: unknown): Error {
  if (isObject(error) && typeof error.code === 'number' && typeof error.message === 'string') {
    return new MprError(error.code, error.message, error.data)
  }
  const message = error instanceof Error ? error.message : String(error)
  if (message === 'reply timeout') return new MprConnectionError('timeout', `mpr ${method}: no reply in time`)
  return new MprConnectionError('connection-lost', `mpr ${method}: ${message}`)
}

/**
 * Closes a client we are done with. Its pending calls were already failed through `running`;
 * rpc-websockets 7.11.2 (pinned) keeps their reply timers in its `queue` even after the socket
 * closed, which would keep the process alive and the closures reachable until they fire.
 */
function closeQuietly(client: Client, graceful: boolean): void {
  const queue = (client as unknown as { queue?: Record<string, { timeout?: NodeJS.Timeout }> }).queue
  if (queue) {
    for (const entry of Object.values(queue)) clearTimeout(entry?.timeout)
    ;(client as unknown as { queue: object }).queue = {}
  }
  try {
    // A lost socket is cut at once: a close handshake with a peer that is gone waits 30 s in ws.
    const socket = (client as unknown as { socket?: { terminate?: () => void } }).socket
    if (!graceful && socket?.terminate) socket.terminate()
    else client.close(1000)
  } catch {
    // no socket (it already closed)
  }
}
