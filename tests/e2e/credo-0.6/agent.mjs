// Credo 0.6.3 agent process of the e2e protocol (tests/e2e/README.md): mediator, recipient or sender.
// Started with child_process.fork(file, [JSON.stringify(config)]); talks over the IPC channel.
import 'reflect-metadata'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
process.env.LIB_ASKAR_PATH ??= join(here, 'native')

const config = JSON.parse(process.argv[2] ?? '{}')
const label = config.label ?? config.role ?? 'agent'
const log = (...args) => console.error(`[${label}]`, ...args)
process.on('unhandledRejection', (reason) => log('unhandled rejection:', reason?.stack ?? reason))
process.on('uncaughtException', (error) => log('uncaught exception:', error?.stack ?? error))

const send = (message) => { if (process.connected) process.send(message) }

let agent
const handlers = {}

process.on('message', async ({ id, cmd, args } = {}) => {
  try {
    const handler = handlers[cmd]
    if (!handler) throw new Error(`unknown command ${cmd} for role ${config.role}`)
    const result = await handler(args ?? {})
    send({ id, ok: true, result: result ?? {} })
    if (cmd === 'shutdown') setTimeout(() => process.exit(0), 50)
  } catch (error) {
    log(`${cmd} failed:`, error?.stack ?? error)
    send({ id, ok: false, error: String(error?.message ?? error) })
  }
})
process.on('disconnect', () => process.exit(0))

try {
  const { startAgent } = await import('./roles.mjs')
  agent = await startAgent(config, { log, emit: send, handlers })
  handlers.shutdown = async () => {
    await agent.shutdown().catch((error) => log('shutdown:', error))
  }
  send({ event: 'ready' })
  log('ready')
} catch (error) {
  log('start failed:', error?.stack ?? error)
  send({ event: 'startFailed', error: String(error?.message ?? error) })
  setTimeout(() => process.exit(1), 50)
}
