// The HTTP inbound transport senders post to. Credo's stock DidCommHttpInboundTransport answers
// 200 as soon as a message without return route is decrypted (DidCommMessageReceiver closes its
// session before dispatching), so a forward is acknowledged before it is queued: an instance
// dying in between loses a message its sender counts as delivered. Here the answer waits for the
// whole handling: 200 once the forward is in mpr, 500 if handling failed, and a return-route
// reply is the response body. Also serves GET /invitation (the mediator's invitation URL).
import { randomUUID } from 'node:crypto'
import http from 'node:http'
import { DidCommMessageReceiver, DidCommMimeType, DidCommTransportService } from '@credo-ts/didcomm'

const MIME_TYPES = [DidCommMimeType.V0, DidCommMimeType.V1]
const MAX_BODY_BYTES = 5 * 1024 * 1024

export class AckedHttpInboundTransport {
  /**
   * @param {{ port: number, host?: string, invitationUrl: () => string | undefined }} options
   * `invitationUrl` is asked at each GET /invitation (503 while it answers undefined).
   */
  constructor({ port, host = '0.0.0.0', invitationUrl }) {
    this.port = port
    this.host = host
    this.invitationUrl = invitationUrl
  }

  async start(agentContext) {
    const receiver = agentContext.dependencyManager.resolve(DidCommMessageReceiver)
    const transportService = agentContext.dependencyManager.resolve(DidCommTransportService)
    const logger = agentContext.config.logger
    this.server = http.createServer((req, res) => {
      if (req.method === 'GET' && req.url === '/invitation') return this.answerInvitation(res)
      if (req.method !== 'POST') return answer(res, 405, 'text/plain', 'POST a DIDComm message, or GET /invitation')
      const contentType = req.headers['content-type']?.split(';')[0].trim()
      if (!MIME_TYPES.includes(contentType)) {
        return answer(res, 415, 'text/plain', `content-type must be one of ${MIME_TYPES.join(', ')}`)
      }
      readBody(req, MAX_BODY_BYTES).then(async (body) => {
        if (body === undefined) return answer(res, 413, 'text/plain', `a message may have at most ${MAX_BODY_BYTES} bytes`)
        let message
        try {
          message = JSON.parse(body)
        } catch {
          return answer(res, 400, 'text/plain', 'the body is not JSON')
        }
        const session = new AckedHttpSession(res, contentType)
        try {
          await receiver.receiveMessage(message, { session })
          if (!res.headersSent) answer(res, 200)
        } catch (error) {
          logger.error(`HTTP inbound: a message failed: ${error.message}`)
          if (!res.headersSent) answer(res, 500, 'text/plain', 'the message was not processed')
        } finally {
          session.ended = true
          transportService.removeSession(session)
        }
      }, () => res.destroy())
    })
    await new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(this.port, this.host, resolve)
    })
    logger.info(`HTTP inbound listening on ${this.host}:${this.port}`)
  }

  answerInvitation(res) {
    const url = this.invitationUrl()
    if (url) answer(res, 200, 'text/plain', url)
    else answer(res, 503, 'text/plain', 'starting')
  }

  async stop() {
    if (!this.server?.listening) return
    const closed = new Promise((resolve) => this.server.close(() => resolve()))
    this.server.closeIdleConnections()
    await closed
  }
}

class AckedHttpSession {
  constructor(res, contentType) {
    this.id = randomUUID()
    this.type = 'http'
    this.res = res
    this.contentType = contentType
    this.ended = false
  }

  /** The return-route reply, as the response body; refused once answered or ended (Credo then queues it). */
  async send(_agentContext, encryptedMessage) {
    if (this.ended || this.res.headersSent) throw new Error('HTTP session already answered')
    answer(this.res, 200, this.contentType, JSON.stringify(encryptedMessage))
  }

  // Credo closes a session before handling a message that asks for no reply: the answer waits
  // for the handling instead (start()).
  async close() {}
}

function answer(res, status, contentType, body) {
  if (contentType) res.setHeader('content-type', contentType)
  res.statusCode = status
  res.end(body)
}

/** The request body as text, or undefined past `limit` bytes (the rest is read and dropped). */
function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const chunks = []
    let size = 0
    req.on('data', (chunk) => {
      size += chunk.length
      if (size <= limit) chunks.push(chunk)
    })
    req.on('end', () => resolve(size <= limit ? Buffer.concat(chunks).toString('utf8') : undefined))
    req.on('error', reject)
  })
}
