// A WebSocket inbound transport for recipients' sockets. Credo's stock DidCommWsInboundTransport
// closes a socket once an exchange is done, which breaks mediation (the grant is then queued
// and a recipient waiting for it times out) and live mode. Here a session's close() keeps the
// socket open; a socket goes when its peer closes it or stops answering pings.
import { randomUUID } from 'node:crypto'
import WebSocket, { WebSocketServer } from 'ws'
import { EventEmitter } from '@credo-ts/core'
import { DidCommEventTypes, DidCommTransportService } from '@credo-ts/didcomm'

export class KeepOpenWsInboundTransport {
  /**
   * @param {{ port: number, host?: string, pingIntervalMs?: number }} options a socket that sent
   * nothing (not even a pong) for one ping interval is terminated at the next.
   */
  constructor({ port, host = '127.0.0.1', pingIntervalMs = 5000 }) {
    this.port = port
    this.host = host
    this.pingIntervalMs = pingIntervalMs
    this.sockets = new Set()
  }

  async start(agentContext) {
    const transportService = agentContext.dependencyManager.resolve(DidCommTransportService)
    const events = agentContext.dependencyManager.resolve(EventEmitter)
    const logger = agentContext.config.logger
    this.server = new WebSocketServer({ port: this.port, host: this.host })
    await new Promise((resolve, reject) => {
      this.server.once('listening', resolve)
      this.server.once('error', reject)
    })
    this.port = this.server.address().port
    logger.info(`WebSocket inbound listening on ${this.host}:${this.port}`)
    this.server.on('connection', (socket) => {
      const session = new KeepOpenWsSession(randomUUID(), socket)
      socket.alive = true
      this.sockets.add(socket)
      const heard = () => { socket.alive = true }
      socket.on('pong', heard)
      socket.on('message', (data) => {
        heard()
        let message
        try {
          message = JSON.parse(data.toString())
        } catch (error) {
          logger.warn(`WebSocket inbound: a frame that is not JSON was dropped: ${error.message}`)
          return
        }
        events.emit(agentContext, { type: DidCommEventTypes.DidCommMessageReceived, payload: { message, session } })
      })
      socket.on('close', () => {
        this.sockets.delete(socket)
        transportService.removeSession(session)
      })
      socket.on('error', (error) => logger.debug(`WebSocket inbound socket error: ${error.message}`))
    })
    this.pinger = setInterval(() => this.reap(), this.pingIntervalMs)
    this.pinger.unref()
  }

  /** Terminates the sockets silent since the last ping and pings the others. */
  reap() {
    for (const socket of this.sockets) {
      if (!socket.alive) {
        socket.terminate()
        continue
      }
      socket.alive = false
      try {
        socket.ping()
      } catch {
        // closed meanwhile: its close handler removes it
      }
    }
  }

  async stop() {
    clearInterval(this.pinger)
    for (const socket of this.sockets) socket.close(1001, 'mediator shutting down')
    if (this.server) await new Promise((resolve) => this.server.close(() => resolve()))
  }
}

class KeepOpenWsSession {
  constructor(id, socket) {
    this.id = id
    this.type = 'WebSocket'
    this.socket = socket
  }

  async send(_agentContext, encryptedMessage) {
    if (this.socket.readyState !== WebSocket.OPEN) throw new Error('WebSocket session is closed')
    await new Promise((resolve, reject) =>
      this.socket.send(JSON.stringify(encryptedMessage), (error) => (error ? reject(error) : resolve())),
    )
  }

  // Called once an exchange is done: the socket stays open for what comes next.
  async close() {}
}
