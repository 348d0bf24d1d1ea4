// Over NATS JetStream: a session in this process publishes the tasks of its External lanes, and a
// WorkerClient worker loop (the spec's shape, WorkerClient in place of AgentSession) serves
// them. Uses the NATS server at $A3S_TEST_NATS_URL when it is set (scripts/test.sh starts one);
// otherwise starts its own `nats-server -js` (helpers.mjs `startNats`), and fails without one.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { code, api, workspace, startNats } from './helpers.mjs'

const { Agent, WorkerClient, SessionLane, executeBuiltin } = code

const nats = process.env.A3S_TEST_NATS_URL
  ? { url: process.env.A3S_TEST_NATS_URL, stop: async () => {} }
  : await startNats()
after(() => nats.stop())
const { url } = nats

/**
 * Subjects and streams of this file's own, so runs sharing a server never meet. One prefix for
 * every test here: sessions under a prefix never see each other's tasks, and each prefix's
 * streams reserve storage on the server.
 */
const prefix = `node${randomUUID().replaceAll('-', '').slice(0, 12)}`

/** A session whose `lanes` are External, publishing to NATS under `prefix`. */
async function natsSession(prefix, { lanes = ['query', 'execute'], timeoutMs = 30_000 } = {}) {
  const ws = workspace()
  const laneHandlers = Object.fromEntries(lanes.map((lane) => [lane, { mode: 'external', timeoutMs }]))
  const session = new Agent().session(ws, {
    nats: { url, prefix },
    queueConfig: { enableMetrics: true, laneHandlers },
  })
  await session.brokerReady(10_000)
  return { session, ws }
}

test('a WorkerClient worker loop in the spec shape completes the tool calls of session.tool', async () => {
  const { session, ws } = await natsSession(prefix)
  const remote = await WorkerClient.connect(url, session.id, { config: { url, prefix } })
  assert.match(remote.workerId, /^worker-/)

  // The spec's worker loop ("Step 2: Implement Worker"), stoppable, running the built-in tools.
  let running = true
  async function workerLoop(worker) {
    while (running) {
      const tasks = await worker.pendingExternalTasks()
      if (tasks.length === 0) {
        await new Promise((resolve) => setTimeout(resolve, 20))
        continue
      }
      await Promise.all(tasks.map((task) => processTask(worker, task)))
    }
  }
  async function processTask(worker, task) {
    const result = await executeBuiltin(task, ws)
    await worker.completeExternalTask(task.taskId, result)
  }
  const loop = workerLoop(remote)

  const read = await session.tool('read', { path: 'hello.txt' })
  assert.equal(read.success, true)
  assert.equal(read.result.content, 'hello\nworld\n')
  const wrote = await session.tool('write', { path: 'out.txt', content: 'from a remote worker\n' })
  assert.equal(wrote.success, true)
  assert.equal(readFileSync(path.join(ws, 'out.txt'), 'utf8'), 'from a remote worker\n')
  const escaped = await session.tool('read', { path: '../outside.txt' })
  assert.equal(escaped.success, false)
  assert.equal(escaped.result.error_code, 'PathEscapesWorkspace')
  const listed = await Promise.all(Array.from({ length: 20 }, () => session.tool('ls', {})))
  assert.ok(listed.every((r) => r.success && r.result.entries.some((e) => e.name === 'hello.txt')))

  const metrics = await session.queueMetrics()
  assert.equal(metrics.totalProcessed, 23)
  running = false
  await loop
  await remote.close()
  await session.close()
})

test('WorkerClient: claims with limit and wait, batches, gives back, and rejects with codes', async () => {
  const { session } = await natsSession(prefix, { lanes: ['query'] }) // 4 slots
  const remote = await WorkerClient.connect(url, session.id, {
    config: { url, prefix, leaseMs: 5_000 },
    lanes: [SessionLane.Query],
    labels: { region: 'eu-west' },
    workerId: 'node-worker-1',
  })
  assert.equal(remote.workerId, 'node-worker-1')

  // Async exactly where api.json says.
  let sessionClosed
  for (const entry of api.classes.WorkerClient) {
    const name = entry.node.split('(')[0]
    if (name === 'connect' || name === 'close') continue
    if (name === 'workerId') {
      assert.equal(typeof remote.workerId, 'string')
      continue
    }
    if (name === 'isSessionClosed') {
      assert.equal(remote.isSessionClosed, false)
      continue
    }
    if (name === 'sessionClosed') {
      // Resolves when the session closes, at the end of this test.
      sessionClosed = remote.sessionClosed()
      assert.equal(sessionClosed instanceof Promise, entry.async.node, `${entry.node} async`)
      continue
    }
    const args = {
      pendingExternalTasks: entry.node.includes('{') ? [{ limit: 1, waitMs: 1 }] : [],
      completeExternalTask: ['unknown', { success: true }],
      completeExternalTasks: [[]],
      abandonExternalTask: ['unknown', 'reason'],
    }[name]
    const out = remote[name](...args)
    assert.equal(out instanceof Promise, entry.async.node, `${entry.node} async`)
    await out.catch(() => {})
  }

  const handles = await Promise.all(
    [1, 2, 3].map((n) => session.submit(SessionLane.Query, 'double', { n })),
  )
  const claimed = []
  while (claimed.length < 3) {
    const tasks = await remote.pendingExternalTasks({ limit: 3 - claimed.length, waitMs: 5_000 })
    assert.ok(tasks.length > 0 && tasks.length <= 3 - claimed.length)
    claimed.push(...tasks)
  }
  assert.deepEqual(claimed.map((t) => t.payload.n).sort(), [1, 2, 3])
  assert.ok(claimed.every((t) => t.sessionId === session.id && t.attempt === 1 && !t.isTimedOut()))

  // One is given back: it comes again, with the next attempt.
  const [first, ...rest] = claimed
  await remote.abandonExternalTask(first.taskId, 'not now')
  const [again] = await remote.pendingExternalTasks({ limit: 1, waitMs: 10_000 })
  assert.equal(again.taskId, first.taskId)
  assert.equal(again.attempt, 2)

  const outcomes = await remote.completeExternalTasks([
    ...[again, ...rest].map((t) => ({ taskId: t.taskId, result: { success: true, result: { n: t.payload.n * 2 } } })),
    { taskId: 'unknown', result: { success: true } },
  ])
  assert.deepEqual(outcomes.slice(0, 3), [null, null, null])
  assert.equal(outcomes[3].code, 'TaskNotFound')
  const results = await Promise.all(handles.map((h) => h.result()))
  assert.deepEqual(results.map((r) => r.result.n), [2, 4, 6])

  await assert.rejects(remote.completeExternalTask(first.taskId, { success: true }), { code: 'TaskNotFound' })
  await assert.rejects(remote.abandonExternalTask('unknown', 'why'), { code: 'TaskNotFound' })
  await assert.rejects(remote.pendingExternalTasks({ limit: -1 }), { code: 'InvalidConfig' })
  await assert.rejects(
    WorkerClient.connect(url, session.id, { config: { url, prefix: 'not.a.token' } }),
    { code: 'InvalidConfig' },
  )
  // A worker of one session hears it close.
  await session.close()
  await sessionClosed
  assert.equal(remote.isSessionClosed, true)
  await remote.close()
})

test('a payload and a result larger than a NATS message travel through the object store', async () => {
  const { session } = await natsSession(prefix, { lanes: ['query'] })
  const remote = await WorkerClient.connect(url, session.id, { config: { url, prefix } })
  const big = 'x'.repeat(3 << 20) + 'end'
  const handle = await session.submit(SessionLane.Query, 'echo', { big })
  const [task] = await remote.pendingExternalTasks({ limit: 1, waitMs: 10_000 })
  assert.equal(task.payload.big.length, big.length)
  assert.ok(task.payload.big.endsWith('end'))
  await remote.completeExternalTask(task.taskId, { success: true, result: { echo: task.payload.big } })
  assert.equal((await handle.result()).result.echo, big)
  await remote.close()
  await session.close()
})

test('brokerReady rejects with BrokerUnavailable while NATS cannot be reached', async () => {
  const session = new Agent().session(workspace(), { nats: { url: 'nats://127.0.0.1:1' } })
  await assert.rejects(session.brokerReady(300), { code: 'BrokerUnavailable' })
  await session.close()
  await assert.rejects(session.brokerReady(), { code: 'ShutDown' })
  assert.throws(() => new Agent().session(workspace(), { nats: { url: '' } }), { code: 'InvalidConfig' })
  // The core's NatsOptions rules: one credential kind, a password with its user, a key with its cert.
  const port1 = 'nats://127.0.0.1:1'
  for (const nats of [{ url: port1, token: 't', user: 'u' }, { url: port1, password: 'p' }, { url: port1, tlsKey: 'k.pem' }]) {
    assert.throws(() => new Agent().session(workspace(), { nats }), { code: 'InvalidConfig' }, JSON.stringify(nats))
  }
})

test('maxObjectBytes caps what a session submits, replicas and duplicateWindowMs are checked', async () => {
  const ws = workspace()
  const session = new Agent().session(ws, {
    nats: { url, prefix, maxObjectBytes: 1_000, duplicateWindowMs: 5_000 },
    queueConfig: { laneHandlers: { query: { mode: 'external', timeoutMs: 30_000 } } },
  })
  await session.brokerReady(10_000)
  await assert.rejects(session.submit('query', 'upper', { text: 'x'.repeat(2_000) }), { code: 'PayloadTooLarge' })
  await session.close()
  for (const nats of [{ url, replicas: 0 }, { url, replicas: 6 }, { url, duplicateWindowMs: 0 }, { url, maxObjectBytes: -1 }]) {
    assert.throws(() => new Agent().session(workspace(), { nats }), { code: 'InvalidConfig' })
  }
})

test('a session of a tenant round-trips a task through a pool WorkerClient of that tenant', async () => {
  const config = { url, prefix, inboxPrefix: '_INBOX_T' }
  // Pool workers of the tenant (and of another one) connect before any session exists: they wait.
  const worker = await WorkerClient.connect(url, '*', { config, tenant: 'acme', lanes: [SessionLane.Query] })
  const other = await WorkerClient.connect(url, '*', { config, tenant: 'globex', lanes: [SessionLane.Query] })
  assert.equal(worker.state, 'waiting')
  const session = new Agent().session(workspace(), {
    nats: config,
    tenant: 'acme',
    tenantWeight: 3,
    tenantMaxInFlight: 8,
    queueConfig: { laneHandlers: { query: { mode: 'external', timeoutMs: 30_000 } } },
  })
  try {
    await session.brokerReady(10_000)
    const handle = await session.submit('query', 'read', { path: 't.txt' })
    let tasks = []
    for (let i = 0; i < 30 && tasks.length === 0; i++) {
      tasks = await worker.pendingExternalTasks({ limit: 1, waitMs: 1_000 })
    }
    assert.deepEqual(tasks.map((t) => t.taskId), [handle.taskId])
    assert.equal(worker.state, 'serving')
    // Another tenant's pool worker never sees it.
    assert.deepEqual(await other.pendingExternalTasks(), [])
    await worker.completeExternalTask(tasks[0].taskId, { success: true, result: { ok: 'acme' } })
    const result = await handle.result()
    assert.equal(result.success, true)
    assert.deepEqual(result.result, { ok: 'acme' })
  } finally {
    await session.close()
    await worker.close()
    await other.close()
  }
  assert.equal(worker.state, 'draining')
})

test('bad tenant options and inboxPrefix throw InvalidConfig', () => {
  const queueConfig = { laneHandlers: { query: { mode: 'external' } } }
  const bad = [
    ...['a.b', 'a b', '_sys', '', 'x'.repeat(65)].map((tenant) => ({ tenant })),
    ...[0, -1, NaN, Infinity].map((tenantWeight) => ({ tenant: 'acme', tenantWeight })),
    { tenant: 'acme', tenantMaxInFlight: 0 },
    { tenantMaxInFlight: -1 },
    { nats: { url, inboxPrefix: 'bad prefix' } },
  ]
  for (const options of bad) {
    assert.throws(() => new Agent().session(workspace(), { queueConfig, ...options }), { code: 'InvalidConfig' }, JSON.stringify(options))
  }
})
