// The mediator's side of the server's SocketDock adapter (docs/socketdock.md, "The contract for
// a mediator"): an HTTP endpoint, the server's MEDIATOR_URL, that takes two kinds of POST.
// - A frame an agent sent through SocketDock (`X-Mpr-Socket-Id`): handed to Credo with a
//   transport session of its own, whose return-route reply becomes the response body; the
//   answer names the connection the frame came from (`X-Mpr-Connection-Id`), which binds the
//   socket, and says when the frame turned Pickup V2 live mode on or off
//   (`X-Mpr-Live-Delivery`).
// - A connection's messages to wrap (`X-Mpr-Deliver`): Credo builds a Pickup V2 delivery of
//   them and packs it for the recipient as it would any message; the packed message is the
//   response body, which the server sends to the recipient's socket.
// Nothing about a recipient is kept between requests: any mediator instance takes any of them.
// The Credo version files give the few Credo calls this needs (CredoRelay).

import { randomUUID } from 'crypto'
import { createServer } from 'http'
import type { IncomingMessage, Server, ServerResponse } from 'http'

import type { MprLogger, MprQueuedMessage } from './connection'
import { currentFrame, inFrame, inWrapping, wrappingFor } from './relay'
import type { RelayFrame } from './relay'

const SOCKET_HEADER = 'x-mpr-socket-id'
const DELIVER_HEADER = 'x-mpr-deliver'
const CONNECTION_HEADER = 'X-Mpr-Connection-Id'
const LIVE_DELIVERY_HEADER = 'X-Mpr-Live-Delivery'
const DIDCOMM_TYPE = 'application/didcomm-envelope-enc'

/**
 * Pickup V2 requests answer in their reply: the frame binds no socket, so a recipient that
 * polls is not pushed to (raw pushes are not acknowledged). Other return-route frames bind it:
 * implicit pickup, or live mode (then acknowledged).
 */
const PICKUP_REQUEST = /\/messagepickup\/2\.0\/(status-request|delivery-request|messages-received)$/

/** Credo's TransportSession for one frame: it takes the return-route reply, once, while the POST is open. */
export class RelaySession {
  readonly id = randomUUID()
  // Credo's TransportService drops a connection's older session of the same type when it saves
  // a newer one: two frames of one connection handled at once (an agent back on a new socket
  // while its old one's frame is still being handled) would lose the first one's reply.
  readonly type = `SocketDock ${this.id}`
  connectionId?: string
  keys?: unknown
  inboundMessage?: { type?: string }
  reply?: string
  open = true

  async send(_agentContext: unknown, encryptedMessage: unknown): Promise<void> {
    if (!this.open) throw new Error('SocketDock frame already answered')
    if (this.reply !== undefined) throw new Error('SocketDock frame already has its reply')
    // A pickup delivery being wrapped is not this frame's reply: Credo then packs it for the queue.
    if (wrappingFor(this.connectionId)) throw new Error('a pickup delivery is not a return-route reply')
    this.reply = JSON.stringify(encryptedMessage)
  }

  async close(): Promise<void> {
    // The socket is SocketDock's: nothing to close here.
  }
}

/** Credo's services the transport calls, as each Credo line names its classes. */
export interface CredoServices {
  agentContext: unknown
  /** MessageReceiver (0.5) / DidCommMessageReceiver (0.6). */
  receiver: { receiveMessage(message: unknown, options: { session: RelaySession }): Promise<void> }
  /** TransportService / DidCommTransportService. */
  transports: { removeSession(session: RelaySession): void }
  /** MessageSender / DidCommMessageSender. */
  sender: { sendMessage(context: unknown): Promise<void> }
  /** ConnectionService / DidCommConnectionService. */
  connections: { getById(agentContext: unknown, id: string): Promise<unknown> }
  /** The message pickup API (its Pickup V2 protocol builds deliveries). */
  pickup: { getProtocol(version: string): any }
  /** OutboundMessageContext / DidCommOutboundMessageContext. */
  OutboundMessageContext: new (message: unknown, options: { agentContext: unknown; connection: unknown }) => unknown
}

/** The transport's calls into Credo: the same for every Credo line once its services are resolved. */
export function credoRelay(credo: CredoServices): CredoRelay {
  const { agentContext } = credo
  return {
    receive: (message, session) => credo.receiver.receiveMessage(message, { session }),
    endSession: (session) => credo.transports.removeSession(session),
    async sendDelivery(connectionId, messages) {
      const connection = await credo.connections.getById(agentContext, connectionId)
      const created = await credo.pickup.getProtocol('v2').createDeliveryMessage(agentContext, { connectionRecord: connection, messages })
      if (!created) throw new Error('Credo made no delivery of the messages')
      // Credo never queues a delivery; here the queue path is only where Credo packs it for a
      // recipient without an endpoint, and the repository hands it back (captureWrapped).
      created.message.allowQueueTransport = true
      await credo.sender.sendMessage(new credo.OutboundMessageContext(created.message, { agentContext, connection }))
    },
  }
}

/** What the transport needs of a running Credo agent (one implementation per Credo line). */
export interface CredoRelay {
  /** Decrypts and handles a frame; its return-route reply goes to `session.send`. */
  receive(message: unknown, session: RelaySession): Promise<void>
  /** Forgets the frame's session (Credo's TransportService). */
  endSession(session: RelaySession): void
  /** Builds a Pickup V2 delivery of `messages` for the connection and sends it as Credo sends any message. */
  sendDelivery(connectionId: string, messages: MprQueuedMessage[]): Promise<void>
}

export interface InboundEndpointOptions {
  /** Port of the endpoint the server's MEDIATOR_URL names (keep it internal: it is not for agents). */
  port: number
  /** Address to listen on. Default 127.0.0.1. */
  host?: string
  /** Largest request body taken, in bytes. Default 4 MiB (the server's SOCKETDOCK_MAX_BODY_BYTES). */
  maxBodyBytes?: number
  logger?: MprLogger
  /** Answers a GET (e.g. the mediator's invitation): status and text, or undefined for 404. */
  onGet?: (path: string) => { status: number; body: string } | undefined
}

export type SocketDockTransportOptions = InboundEndpointOptions

/**
 * The HTTP endpoint; started with a CredoRelay once the agent is up. As `socketdock`, it is
 * the server's MEDIATOR_URL (frames from SocketDock and wrap requests: keep it internal); as
 * `senders`, a plain DIDComm HTTP endpoint that answers a message only once Credo handled it
 * (Credo's own HTTP inbound answers a message that asks for no reply, such as a forward,
 * before handling it: a sender is then told "delivered" for a forward nobody stored).
 */
export class SocketDockEndpoint {
  private server?: Server
  private readonly sockets = new Set<import('net').Socket>()

  constructor(
    private readonly options: InboundEndpointOptions,
    private readonly kind: 'socketdock' | 'senders' = 'socketdock',
  ) {}

  async start(credo: CredoRelay, logger: MprLogger): Promise<void> {
    const log = this.options.logger ?? logger
    const server = createServer((request, response) => {
      this.handle(credo, log, request, response).catch((error) => {
        log.error('mpr socketdock: request failed', { error: String(error?.stack ?? error) })
        if (!response.headersSent) answer(response, 500, 'failed')
      })
    })
    server.on('connection', (socket) => {
      this.sockets.add(socket)
      socket.on('close', () => this.sockets.delete(socket))
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.options.port, this.options.host ?? '127.0.0.1', () => resolve())
    })
    this.server = server
  }

  async stop(): Promise<void> {
    const server = this.server
    this.server = undefined
    if (!server) return
    await new Promise<void>((resolve) => {
      server.close(() => resolve())
      // Keep-alive connections from the server would hold close() open.
      for (const socket of this.sockets) socket.destroy()
    })
  }

  private async handle(credo: CredoRelay, log: MprLogger, request: IncomingMessage, response: ServerResponse) {
    if (request.method === 'GET' && this.options.onGet) {
      const got = this.options.onGet(request.url ?? '/')
      return got ? answer(response, got.status, got.body) : answer(response, 404, 'not found')
    }
    if (request.method !== 'POST') return answer(response, 405, 'POST only')
    const body = await readBody(request, this.options.maxBodyBytes ?? 4 << 20)
    if (body === undefined) return answer(response, 413, 'body too large')
    const deliverFor = this.kind === 'socketdock' ? header(request, DELIVER_HEADER) : undefined
    if (deliverFor !== undefined) return this.wrap(credo, log, deliverFor, body, response)
    const socketId = this.kind === 'socketdock' ? header(request, SOCKET_HEADER) : ''
    if (socketId === undefined) return answer(response, 400, `${SOCKET_HEADER} is required`)
    let message: unknown
    try {
      message = JSON.parse(body)
    } catch {
      return answer(response, 400, 'the frame is not JSON')
    }
    const session = new RelaySession()
    const frame: RelayFrame = { socketId, ending: false }
    try {
      if (this.kind === 'socketdock') await inFrame(frame, () => credo.receive(message, session))
      else await credo.receive(message, session)
    } catch (error) {
      log.warn('mpr socketdock: frame not handled', { socketId, error: String((error as Error)?.message ?? error) })
      return answer(response, 500, 'frame not handled')
    } finally {
      frame.ending = true
      session.open = false
      credo.endSession(session)
    }
    const headers: Record<string, string> = {}
    const live = frame.liveDelivery
    if (live) {
      headers[CONNECTION_HEADER] = live.connectionId
      headers[LIVE_DELIVERY_HEADER] = live.on ? 'on' : 'off'
    } else if (session.connectionId && !PICKUP_REQUEST.test(session.inboundMessage?.type ?? '')) {
      headers[CONNECTION_HEADER] = session.connectionId
    }
    if (session.reply !== undefined) headers['Content-Type'] = DIDCOMM_TYPE
    response.writeHead(200, headers)
    response.end(session.reply ?? '')
  }

  private async wrap(credo: CredoRelay, log: MprLogger, connectionId: string, body: string, response: ServerResponse) {
    const messages = parseDelivery(connectionId, body)
    if (typeof messages === 'string') return answer(response, 400, messages)
    const wrapping = { connectionId, envelope: undefined as unknown }
    try {
      await inWrapping(wrapping, () => credo.sendDelivery(connectionId, messages))
    } catch (error) {
      log.warn('mpr socketdock: pickup delivery not wrapped', { connectionId, error: String((error as Error)?.message ?? error) })
      return answer(response, 500, 'not wrapped')
    }
    if (wrapping.envelope === undefined) {
      // Credo sent it some other way (the recipient has an endpoint, or an open session of
      // another transport): the messages stay in flight and come back if it did not arrive.
      log.warn('mpr socketdock: the pickup delivery did not come back packed', { connectionId })
      return answer(response, 502, 'not wrapped')
    }
    response.writeHead(200, { 'Content-Type': DIDCOMM_TYPE })
    response.end(JSON.stringify(wrapping.envelope))
  }
}

/**
 * Live-session events while a SocketDock frame is handled are the recipient turning Pickup V2
 * live mode on or off: they go in the frame's answer (the server binds the socket), never to
 * addLiveSession on the mediator's own socket. Returns whether the event was such one.
 */
export function relayLiveSession(connectionId: string, on: boolean): boolean {
  const frame = currentFrame()
  if (!frame) return false
  if (!frame.ending) frame.liveDelivery = { connectionId, on }
  return true
}

/** The messages of a wrap request, or what is wrong with it. */
function parseDelivery(connectionId: string, body: string): MprQueuedMessage[] | string {
  let request: { connectionId?: unknown; messages?: unknown }
  try {
    request = JSON.parse(body)
  } catch {
    return 'the body is not JSON'
  }
  if (request.connectionId !== connectionId) return `connectionId must be the ${DELIVER_HEADER} header's`
  if (!Array.isArray(request.messages) || request.messages.length === 0) return 'messages must be a non-empty array'
  const messages: MprQueuedMessage[] = []
  for (const [i, m] of request.messages.entries()) {
    const receivedAt = new Date(m?.receivedAt)
    if (typeof m?.id !== 'string' || Number.isNaN(receivedAt.getTime()) || typeof m?.encryptedMessage !== 'object') {
      return `messages[${i}] must be {id, receivedAt, encryptedMessage}`
    }
    messages.push({ id: m.id, receivedAt, encryptedMessage: m.encryptedMessage })
  }
  return messages
}

function header(request: IncomingMessage, name: string): string | undefined {
  const value = request.headers[name]
  return typeof value === 'string' && value !== '' ? value : undefined
}

function answer(response: ServerResponse, status: number, text: string): void {
  response.writeHead(status, { 'Content-Type': 'text/plain' })
  response.end(text)
}

function readBody(request: IncomingMessage, limit: number): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    let over = false
    request.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size > limit) over = true
      else chunks.push(chunk)
    })
    request.on('end', () => resolve(over ? undefined : Buffer.concat(chunks).toString('utf8')))
    request.on('error', reject)
  })
}
