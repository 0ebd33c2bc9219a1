// Shared by the tests: the conformance harness (redis-server and mpr processes, stopped by pid),
// and event-driven waits with generous timeouts.

import { once } from 'node:events';

export {
  startRedis,
  startServer,
  stopAll,
  connect,
  collectPushes,
  uuid,
  didKey,
  payload,
  freePort,
  call,
  closeAllClients,
  uniquePrefix,
  pollUntil,
  MESSAGE_ID,
} from '../../../tests/conformance/harness.mjs';

/** Resolves with the event's arguments, or rejects after timeoutMs. */
export async function event(emitter, name, timeoutMs = 20_000) {
  return once(emitter, name, { signal: AbortSignal.timeout(timeoutMs) });
}

/** Collects calls of a callback; waitFor(n) resolves once n were made (or rejects after timeoutMs). */
export function recorder() {
  const calls = [];
  const waiters = [];
  const record = (...args) => {
    calls.push(args.length === 1 ? args[0] : args);
    for (const w of waiters.slice()) w();
  };
  record.calls = calls;
  record.waitFor = (n, timeoutMs = 10_000) =>
    new Promise((resolve, reject) => {
      const check = () => {
        if (calls.length >= n) {
          clearTimeout(timer);
          waiters.splice(waiters.indexOf(check), 1);
          resolve(calls);
        }
      };
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(check), 1);
        reject(new Error(`only ${calls.length} of ${n} calls within ${timeoutMs} ms`));
      }, timeoutMs);
      waiters.push(check);
      check();
    });
  return record;
}

/** A stand-in for a Credo agent's `events` (EventEmitter-like on/off/emit). */
export function fakeEvents() {
  const listeners = new Map();
  return {
    on(type, listener) {
      listeners.set(type, [...(listeners.get(type) ?? []), listener]);
    },
    off(type, listener) {
      listeners.set(type, (listeners.get(type) ?? []).filter((l) => l !== listener));
    },
    emit(type, payload) {
      for (const l of listeners.get(type) ?? []) l({ type, payload, metadata: { contextCorrelationId: 'default' } });
    },
    count: (type) => (listeners.get(type) ?? []).length,
  };
}

/** A stand-in for Credo's message pickup API: live sessions by connection, deliveries recorded. */
export function fakePickup() {
  const sessions = new Map();
  const delivered = recorder();
  return {
    sessions,
    delivered,
    async getLiveModeSession({ connectionId, role }) {
      const session = sessions.get(connectionId);
      return session && (!role || session.role === role) ? session : undefined;
    },
    async deliverMessages(options) {
      delivered(options);
    },
  };
}
