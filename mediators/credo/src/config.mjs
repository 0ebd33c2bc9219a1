// The mediator's settings, from environment variables only (README.md lists each). A bad value
// stops the mediator at start with a message naming the variable.

const LOG_LEVELS = ['test', 'trace', 'debug', 'info', 'warn', 'error', 'fatal', 'off']
const INBOUND_MODES = ['websocket', 'socketdock']

export class ConfigError extends Error {}

function port(env, name, fallback) {
  const raw = env[name] ?? String(fallback)
  const value = Number(raw)
  if (!/^\d+$/.test(raw) || value < 1 || value > 65535) throw new ConfigError(`${name} must be a TCP port (1-65535), got "${raw}"`)
  return value
}

function oneOf(env, name, allowed, fallback) {
  const value = env[name] ?? fallback
  if (!allowed.includes(value)) throw new ConfigError(`${name} must be one of ${allowed.join(', ')}, got "${value}"`)
  return value
}

function required(env, name) {
  const value = env[name]
  if (!value) throw new ConfigError(`${name} is required`)
  return value
}

function endpoints(env, httpPort, wsPort) {
  const raw = env.ENDPOINTS ?? `http://127.0.0.1:${httpPort},ws://127.0.0.1:${wsPort}`
  const list = raw.split(',').map((s) => s.trim()).filter(Boolean)
  if (!list.length) throw new ConfigError('ENDPOINTS must name at least one endpoint')
  for (const endpoint of list) {
    let url
    try {
      url = new URL(endpoint)
    } catch {
      throw new ConfigError(`ENDPOINTS: "${endpoint}" is not a URL`)
    }
    if (!['http:', 'https:', 'ws:', 'wss:'].includes(url.protocol)) {
      throw new ConfigError(`ENDPOINTS: "${endpoint}" is not http(s):// or ws(s)://`)
    }
  }
  return list
}

/** The wallet's database: PostgreSQL when POSTGRES_HOST is set, else a SQLite file. */
function database(env) {
  if (env.POSTGRES_HOST) {
    const user = env.POSTGRES_USER ?? 'postgres'
    const password = env.POSTGRES_PASSWORD ?? ''
    return {
      type: 'postgres',
      config: { host: `${env.POSTGRES_HOST}:${port(env, 'POSTGRES_PORT', 5432)}` },
      credentials: {
        account: user,
        password,
        adminAccount: env.POSTGRES_ADMIN_USER ?? user,
        adminPassword: env.POSTGRES_ADMIN_PASSWORD ?? password,
      },
    }
  }
  return { type: 'sqlite', config: { path: env.SQLITE_PATH ?? 'mediator.sqlite' } }
}

export function loadConfig(env = process.env) {
  const httpPort = port(env, 'HTTP_PORT', 3001)
  const wsPort = port(env, 'WS_PORT', 3002)
  const inboundMode = oneOf(env, 'INBOUND_MODE', INBOUND_MODES, 'websocket')
  return {
    mprUrl: env.MPR_URL ?? 'ws://127.0.0.1:3100',
    mprToken: env.MPR_TOKEN || undefined,
    label: env.AGENT_LABEL ?? 'mpr Credo mediator',
    walletId: env.WALLET_ID ?? 'mediator',
    walletKey: required(env, 'WALLET_KEY'),
    database: database(env),
    bindAddress: env.BIND_ADDRESS ?? '0.0.0.0',
    httpPort,
    wsPort,
    inboundMode,
    socketDockPort: inboundMode === 'socketdock' ? port(env, 'SOCKETDOCK_PORT', 3003) : undefined,
    endpoints: endpoints(env, httpPort, wsPort),
    logLevel: oneOf(env, 'LOG_LEVEL', LOG_LEVELS, 'info'),
  }
}
