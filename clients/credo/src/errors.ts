/** The server answered the call with a JSON-RPC error (e.g. -32602 invalid params, -32000 storage unavailable). */
export class MprError extends Error {
  readonly code: number
  readonly data?: unknown

  constructor(code: number, message: string, data?: unknown) {
    super(message)
    this.name = 'MprError'
    this.code = code
    this.data = data
  }
}

/**
 * The call got no answer: not connected, the socket dropped while it was running, or no reply
 * within the call timeout. For addMessage the outcome is then unknown (retrying may store twice).
 */
export class MprConnectionError extends Error {
  readonly reason: 'not-connected' | 'connection-lost' | 'timeout'

  constructor(reason: MprConnectionError['reason'], message: string) {
    super(message)
    this.name = 'MprConnectionError'
    this.reason = reason
  }
}

/** The server answered with a result of the wrong shape (a server or version mismatch). */
export class MprProtocolError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'MprProtocolError'
  }
}
