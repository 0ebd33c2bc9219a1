// A WebSocket inbound transport for a mediator. Unlike the stock DidCommWsInboundTransport, a
// session's close() keeps the socket open (a recipient's live-mode socket must outlive each
// exchange); sockets that stop answering pings are terminated.
import { randomUUID } from 'node:crypto'
import WebSocket, { WebSocketServer } from 'ws'
import { EventEmitter } from '@credo-ts/core'
import { DidCommEventTypes, DidCommTransportService } from '@credo-ts/didcomm'

export class KeepOpenWsInboundTransport {
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
    this.server.on('connection', (socket) => {
      const session = new KeepOpenWsSession(randomUUID(), socket)
      socket.alive = true
      this.sockets.add(socket)
      socket.on('pong', () => { socket.alive = true })
      socket.on('message', (data) => {
        let message
        try {
          message = JSON.parse(data.toString())
        } catch (error) {
          logger.error(`inbound ws: not JSON: ${error}`)
          return
        }
        events.emit(agentContext, {
          type: DidCommEventTypes.DidCommMessageReceived,
          payload: { message, session },
        })
      })
      socket.on('close', () => {
        this.sockets.delete(socket)
        transportService.removeSession(session)
      })
      socket.on('error', (error) => logger.debug(`inbound ws socket error: ${error}`))
    })
    this.pinger = setInterval(() => {
      for (const socket of this.sockets) {
        if (!socket.alive) {
          socket.terminate()
          continue
        }
        socket.alive = false
        try { socket.ping() } catch { /* closed meanwhile */ }
      }
    }, this.pingIntervalMs)
    this.pinger.unref()
  }

  async stop() {
    clearInterval(this.pinger)
    for (const socket of this.sockets) socket.terminate()
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

  // Credo calls close() once an exchange is done; the socket stays open for what comes next
  // (live-mode deliveries). It goes when the peer closes it or stops answering pings.
  async close() {}
}
