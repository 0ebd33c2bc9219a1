// Dev aid: drives the Credo 0.6 agent processes through the e2e protocol and checks what arrives.
//   node smoke.mjs            client "memory": Credo's in-memory queue, one mediator instance
//   node smoke.mjs project    this project's client (clients/credo/build) against mpr + redis-server
//                             started through tests/conformance/harness.mjs (MPR_BIN to pick the binary);
//                             adds two mediator instances sharing one wallet behind a switchable proxy
import { fork } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import assert from 'node:assert/strict'
import { connect as tcpConnect } from 'node:net'

const here = dirname(fileURLToPath(import.meta.url))
const client = process.argv[2] ?? 'memory'
const dir = mkdtempSync(join(tmpdir(), 'mpr-e2e-credo06-'))
const t0 = Date.now()
const stamp = (what) => console.log(`${String(Date.now() - t0).padStart(6)} ms  ${what}`)

const freePort = () => new Promise((resolve) => {
  const s = createServer(); s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)) })
})

const agents = []
function start(config) {
  const child = fork(join(here, 'agent.mjs'), [JSON.stringify(config)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  let next = 1
  const pending = new Map()
  const events = []
  const waiters = []
  const a = {
    child, events,
    call(cmd, args = {}, timeoutMs = 60000) {
      const id = next++
      child.send({ id, cmd, args })
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${config.label} ${cmd} timed out`)), timeoutMs)
        pending.set(id, { resolve, reject, timer })
      })
    },
    waitFor(pred, timeoutMs = 30000, what = 'event') {
      const found = events.find(pred)
      if (found) return Promise.resolve(found)
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${config.label}: no ${what} in ${timeoutMs} ms`)), timeoutMs)
        waiters.push({ pred, resolve: (e) => { clearTimeout(timer); resolve(e) } })
      })
    },
  }
  child.on('message', (m) => {
    if (m.id !== undefined) {
      const p = pending.get(m.id); if (!p) return
      pending.delete(m.id); clearTimeout(p.timer)
      m.ok ? p.resolve(m.result) : p.reject(new Error(`${config.label}: ${m.error}`))
      return
    }
    events.push(m)
    for (const w of [...waiters]) if (w.pred(m)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(m) }
  })
  agents.push(a)
  a.ready = a.waitFor((e) => e.event === 'ready' || e.event === 'startFailed', 60000, 'ready').then((e) => {
    if (e.event !== 'ready') throw new Error(`${config.label} failed to start: ${e.error}`)
  })
  return a
}

const contents = (r) => r.events.filter((e) => e.event === 'basicMessage').map((e) => e.content)
async function waitCount(r, n, timeoutMs = 30000) {
  const end = Date.now() + timeoutMs
  while (contents(r).length < n && Date.now() < end) await new Promise((res) => setTimeout(res, 50))
  return contents(r)
}

// A TCP proxy playing the load balancer in front of both mediator instances: every new
// connection goes to the instance `target` names at that moment; open connections stay put.
function balancer(port, targets) {
  const lb = { target: 0, sockets: new Set() }
  lb.server = createServer((inbound) => {
    const outbound = tcpConnect(targets[lb.target], '127.0.0.1')
    lb.sockets.add(inbound); lb.sockets.add(outbound)
    inbound.pipe(outbound); outbound.pipe(inbound)
    const end = () => { inbound.destroy(); outbound.destroy() }
    inbound.on('error', end); outbound.on('error', end); inbound.on('close', end); outbound.on('close', end)
  })
  lb.listening = new Promise((resolve) => lb.server.listen(port, '127.0.0.1', resolve))
  lb.close = () => { for (const s of lb.sockets) s.destroy(); lb.server.close() }
  return lb
}

let harness, lb
try {
  let mprUrl
  if (client === 'project') {
    harness = await import('../../conformance/harness.mjs')
    const redis = await harness.startRedis()
    const mpr = await harness.startServer({ redis, prefix: harness.uniquePrefix() })
    mprUrl = mpr.url
    stamp(`redis-server + mpr ready (${mprUrl})`)
  }
  const [p1, p2, pLb] = [await freePort(), await freePort(), await freePort()]
  // project: both instances advertise the balancer; memory: A alone, on its own port
  const endpoints = client === 'project' ? [`ws://127.0.0.1:${pLb}`] : [`ws://127.0.0.1:${p1}`]
  if (client === 'project') { lb = balancer(pLb, [p1, p2]); await lb.listening }
  const mediatorWallet = join(dir, 'mediator.sqlite')
  const mediatorConfig = { role: 'mediator', walletPath: mediatorWallet, walletKey: 'mediator-key', client, mprUrl, endpoints }
  const A = start({ ...mediatorConfig, label: 'mediatorA', inboundPort: p1 })
  const R = start({ role: 'recipient', label: 'recipient', walletPath: join(dir, 'recipient.sqlite'), walletKey: 'r', pickup: 'live' })
  const S = start({ role: 'sender', label: 'sender', walletPath: join(dir, 'sender.sqlite'), walletKey: 's' })
  await Promise.all([A.ready, R.ready, S.ready]); stamp('agents ready (mediatorA, recipient, sender)')

  const { url: mediatorUrl } = await A.call('createInvitation')
  await R.call('connectMediator', { url: mediatorUrl }); stamp('recipient connected, mediation granted, live pickup on')
  await A.waitFor((e) => e.event === 'liveSession', 10000, 'liveSession'); stamp('mediatorA: liveSession')
  const { url: rInv } = await R.call('createInvitation')
  const { connectionId } = await S.call('receiveInvitation', { url: rInv }); stamp('sender connected to recipient (through mediator)')

  const live = Array.from({ length: 20 }, (_, i) => `live-${i}`)
  for (const content of live) await S.call('send', { connectionId, content })
  stamp('sent 20')
  let got = await waitCount(R, 20)
  await new Promise((res) => setTimeout(res, 500))
  got = contents(R)
  assert.deepEqual(got, live, 'live: all 20 once, in order'); stamp('recipient got 20 live, once, in order')

  await R.call('stopPickup')
  await A.waitFor((e) => e.event === 'liveSessionRemoved', 10000, 'liveSessionRemoved'); stamp('stopPickup: mediatorA liveSessionRemoved')
  const offline = Array.from({ length: 5 }, (_, i) => `offline-${i}`)
  for (const content of offline) await S.call('send', { connectionId, content })
  await new Promise((res) => setTimeout(res, 1000))
  assert.deepEqual(contents(R), live, 'nothing arrives while offline'); stamp('sent 5 offline, none arrived')
  R.child.kill(); agents.splice(agents.indexOf(R), 1)
  const Rp = start({ role: 'recipient', label: 'recipient-poll', walletPath: join(dir, 'recipient.sqlite'), walletKey: 'r', pickup: 'poll' })
  await Rp.ready; stamp('recipient restarted in poll mode')
  await Rp.call('startPickup')
  got = await waitCount(Rp, 5)
  await new Promise((res) => setTimeout(res, 1500))
  assert.deepEqual(contents(Rp), offline, 'poll: all 5 once, in order'); stamp('recipient (poll) got the 5 offline, once, in order')
  await Rp.call('stopPickup')

  if (client === 'project') {
    // Second instance of the same mediator (same wallet file and key), behind the balancer.
    await Rp.call('startPickup', { pickup: 'live' })
    await A.waitFor((e) => e.event === 'liveSession' && A.events.filter((x) => x.event === 'liveSession').length >= 2, 10000, 'second liveSession')
    stamp('recipient back in live mode on mediatorA')
    const B = start({ ...mediatorConfig, label: 'mediatorB', inboundPort: p2 })
    await B.ready; stamp('mediatorB ready on the shared wallet')
    lb.target = 1 // from now on new connections (the sender's) reach B; the recipient stays on A
    const { url: inv2 } = await Rp.call('createInvitation')
    const S2 = start({ role: 'sender', label: 'sender2', walletPath: join(dir, 'sender2.sqlite'), walletKey: 's2' })
    await S2.ready
    const { connectionId: c2 } = await S2.call('receiveInvitation', { url: inv2 })
    stamp('sender2 connected to the recipient through mediatorB (DID exchange crossed B -> mpr -> A)')
    const cross = Array.from({ length: 10 }, (_, i) => `cross-${i}`)
    for (const content of cross) await S2.call('send', { connectionId: c2, content })
    await waitCount(Rp, 5 + 10)
    await new Promise((res) => setTimeout(res, 500))
    assert.deepEqual(contents(Rp), [...offline, ...cross], 'cross-instance: all 10 once, in order')
    stamp('recipient (live on A) got the 10 sent through B, once, in order')
  }
  console.log('SMOKE OK')
} catch (error) {
  console.error('SMOKE FAILED:', error)
  process.exitCode = 1
} finally {
  await Promise.all(agents.map((a) => a.call('shutdown', {}, 10000).catch((error) => console.error(String(error)))))
  for (const a of agents) if (a.child.exitCode === null) a.child.kill()
  lb?.close()
  await harness?.stopAll()
  rmSync(dir, { recursive: true, force: true })
}
