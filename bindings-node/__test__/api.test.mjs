// tests/fixtures/v1/api.json: names and async-ness of the public API in Node.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { code, api, externalSession } from './helpers.mjs'

const { Agent, SessionLane, TaskHandlerMode } = code

const isPromise = (v) => v instanceof Promise

test('Agent: create is async, session is not', async () => {
  const [create, session] = api.classes.Agent
  assert.equal(create.node, 'create')
  const p = Agent[create.node]('tests/fixtures/none.hcl')
  assert.equal(isPromise(p), create.async.node)
  await assert.rejects(p, { code: 'ConfigFile' })
  const s = new Agent()[session.node]('.')
  assert.equal(isPromise(s), session.async.node)
  assert.ok(s instanceof code.AgentSession)
  await s.close()
})

// Arguments that make each method run (and fail harmlessly where it must fail).
const calls = {
  id: null,
  brokerReady: [], // no broker: resolves at once
  setLaneHandler: [SessionLane.Execute, { mode: TaskHandlerMode.Internal }],
  pendingExternalTasks: [],
  'pendingExternalTasks({limit, waitMs})': [{ limit: 1, waitMs: 1 }],
  completeExternalTask: ['unknown', { success: true }],
  completeExternalTasks: [[]],
  abandonExternalTask: ['unknown', 'reason'],
  queueStats: [],
  queueMetrics: [],
  deadLetters: [],
  tasks: [{ state: 'finished' }],
  tool: ['ls', {}],
  submit: [SessionLane.Execute, 'ls', {}],
  cancel: ['unknown'],
  retryDeadLetter: ['unknown'],
  deleteDeadLetter: ['unknown'],
  pauseLane: [SessionLane.Execute],
  resumeLane: [SessionLane.Execute],
  send: ['hello'], // no model configured: rejects with InvalidConfig
  stream: ['hello'],
  history: [],
  events: [],
  close: [],
}

test('AgentSession: every method of api.json, async exactly where it says', async () => {
  const session = externalSession()
  const names = Object.getOwnPropertyNames(code.AgentSession.prototype)
  const pending = []
  for (const entry of api.classes.AgentSession) {
    const name = entry.node
    assert.ok(name in calls, `no call for ${name}`)
    if (calls[name] === null) {
      // a property
      assert.equal(typeof session[name], 'string', name)
      assert.equal(entry.async.node, false)
      continue
    }
    const method = name.split('(')[0]
    assert.ok(names.includes(method), `AgentSession.${method} exists`)
    const out = session[method](...calls[name])
    assert.equal(isPromise(out), entry.async.node, `${name} async`)
    if (isPromise(out)) pending.push(out)
  }
  // `close` came last: what still waited for a worker ends with ShutDown.
  await Promise.allSettled(pending)
})

test('WorkerClient: every name of api.json; connect is async; RemoteSession is its deprecated alias', async () => {
  const { WorkerClient } = code
  assert.equal(typeof WorkerClient, 'function')
  assert.equal(code.RemoteSession, WorkerClient) // the same class, under its former name
  const proto = Object.getOwnPropertyNames(WorkerClient.prototype)
  for (const entry of api.classes.WorkerClient) {
    const name = entry.node.split('(')[0]
    if (name === 'connect') {
      // Nothing listens on port 1: it rejects, asynchronously.
      const out = WorkerClient.connect('nats://127.0.0.1:1', 'abc123')
      assert.equal(isPromise(out), entry.async.node)
      await assert.rejects(out, { code: 'BrokerUnavailable' })
    } else if (name === 'workerId') {
      assert.equal(typeof Object.getOwnPropertyDescriptor(WorkerClient.prototype, name)?.get, 'function')
      assert.equal(entry.async.node, false)
    } else {
      assert.ok(proto.includes(name), `WorkerClient.${name} exists`)
    }
  }
  // The async flags of its methods are checked on a live one in nats.test.mjs.
})

test('AdminClient: every name of api.json, async exactly where it says (in process; connect rejects without NATS)', async () => {
  const { AdminClient } = code
  const session = externalSession()
  const admin = AdminClient.local()
  const calls = {
    sessions: [],
    session: [session.id],
    tasks: [session.id, { state: 'finished' }],
    deadLetters: [session.id],
    act: [session.id, { action: 'resume', lane: code.SessionLane.Query }],
    processes: [],
    fleetDemand: [],
    workers: [],
  }
  for (const entry of api.classes.AdminClient) {
    const name = entry.node
    if (name === 'local') {
      assert.ok(admin instanceof AdminClient)
      assert.equal(entry.async.node, false)
    } else if (name === 'connect') {
      const out = AdminClient.connect({ url: 'nats://127.0.0.1:1' })
      assert.equal(isPromise(out), entry.async.node)
      await assert.rejects(out, { code: 'BrokerUnavailable' })
    } else {
      assert.ok(name in calls, `no call for ${name}`)
      const out = admin[name](...calls[name])
      assert.equal(isPromise(out), entry.async.node, `${name} async`)
      await out
    }
  }
  await session.close()
})

test('ExternalTask: fields and methods of api.json', async () => {
  const session = externalSession()
  const running = session.tool('read', { path: 'hello.txt' })
  const [task] = await session.pendingExternalTasks({ limit: 1, waitMs: 5_000 })
  for (const [, , node] of api.fields.ExternalTask) assert.ok(node in task, `task.${node}`)
  assert.deepEqual(Object.keys(task), api.fields.ExternalTask.map(([, , node]) => node))
  for (const entry of api.classes.ExternalTask) {
    const out = task[entry.node]()
    assert.equal(isPromise(out), entry.async.node)
  }
  assert.equal(task.isTimedOut(), false)
  assert.ok(task.remainingMs() > 0 && task.remainingMs() <= task.timeoutMs)
  await session.completeExternalTask(task.taskId, { success: true, result: { content: 'x' } })
  const result = await running
  assert.deepEqual(Object.keys(result), api.fields.ExternalTaskResult.map(([, , node]) => node))
})

test('QueueStats and QueueMetrics: fields of api.json, camelCase', async () => {
  const session = externalSession()
  const stats = await session.queueStats()
  for (const [, , node] of api.fields.QueueStats) assert.ok(node in stats, `stats.${node}`)
  const metrics = await session.queueMetrics()
  for (const [, , node] of api.fields.QueueMetrics) assert.ok(node in metrics, `metrics.${node}`)
})

test('functions: executeBuiltin is async', async () => {
  for (const entry of api.classes.functions) {
    assert.equal(typeof code[entry.node], 'function', entry.node)
  }
  const session = externalSession()
  const running = session.tool('ls', {})
  const [task] = await session.pendingExternalTasks({ limit: 1, waitMs: 5_000 })
  const out = code.executeBuiltin(task, session.workspace)
  assert.equal(isPromise(out), true)
  assert.equal((await out).success, true)
  await session.close()
  await running.catch(() => {})
})

test('enums: member names of api.json, wire names at run time', () => {
  for (const [name, spec] of Object.entries(api.enums)) {
    const e = code[name]
    assert.deepEqual(Object.keys(e), spec.node, name)
    assert.deepEqual(Object.values(e), spec.wire, name)
  }
  assert.equal(SessionLane.Query, 'query')
  assert.equal(TaskHandlerMode.External, 'external')
})
