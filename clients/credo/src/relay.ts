// What runs while a SocketDock frame or a pickup delivery is being handled, visible to the code
// Credo calls meanwhile (the repository's addMessage, the live-session wiring, the frame's
// transport session) without threading anything through Credo: an AsyncLocalStorage each.

import { AsyncLocalStorage } from 'async_hooks'

/** A frame an agent sent through SocketDock, while Credo handles it. */
export interface RelayFrame {
  socketId: string
  /** Set when the frame turned Pickup V2 live mode on or off for a connection. */
  liveDelivery?: { connectionId: string; on: boolean }
  /** The frame is answered: live-session events from now on are Credo's clean-up, not the recipient's. */
  ending: boolean
}

/** A pickup delivery being wrapped for a connection: Credo's packed message lands here. */
export interface Wrapping {
  connectionId: string
  envelope?: unknown
}

const frames = new AsyncLocalStorage<RelayFrame>()
const wrappings = new AsyncLocalStorage<Wrapping>()

export function inFrame<T>(frame: RelayFrame, fn: () => Promise<T>): Promise<T> {
  return frames.run(frame, fn)
}

/** The SocketDock frame being handled here, if any. */
export function currentFrame(): RelayFrame | undefined {
  return frames.getStore()
}

export function inWrapping<T>(wrapping: Wrapping, fn: () => Promise<T>): Promise<T> {
  return wrappings.run(wrapping, fn)
}

/** The pickup delivery being wrapped for `connectionId` here, if any. */
export function wrappingFor(connectionId: string | undefined): Wrapping | undefined {
  const wrapping = wrappings.getStore()
  return wrapping && wrapping.connectionId === connectionId ? wrapping : undefined
}

/**
 * The repositories' addMessage calls this first: Credo queues the packed delivery for a
 * recipient without an endpoint of its own, and while a delivery is being wrapped for that
 * connection the packed message is what the server asked for, not a message to queue.
 * Returns whether it was taken.
 */
export function captureWrapped(connectionId: string, payload: unknown): boolean {
  const wrapping = wrappingFor(connectionId)
  if (!wrapping || wrapping.envelope !== undefined) return false
  wrapping.envelope = payload
  return true
}
