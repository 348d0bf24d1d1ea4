// tests/fixtures/v1/errors.json: every code a Node caller can meet, on an Error's `code`.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { writeFileSync } from 'node:fs'
import { code, errors, externalSession, workspace, failure, nextEvent } from './helpers.mjs'

const { Agent, SessionLane } = code

test('errors.json lists exactly the core codes', () => {
  assert.deepEqual(errors.errors.map((e) => e.code), code.errorCodes())
  assert.equal(errors.root.node, 'Error with .code')
})

// One way to meet each code from Node, in process. Codes that need a broker or a wire message
// (BrokerUnavailable, UnsupportedProtocol, PayloadTooLarge) or an I/O failure outside any tool
// (Io) cannot happen in an in-process session; the test above keeps the list complete.
const reach = {
  async InvalidConfig() {
    return failure(() => new Agent().session('.', { queueConfig: { queryMaxConcurrency: 0 } }))
  },
  async ModelFailed() {
    // A provider whose server answers 401: the model call fails with the provider's status.
    const http = await import('node:http')
    const server = http.createServer((_req, res) => {
      res.writeHead(401, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ error: { message: 'invalid api key' } }))
    })
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    try {
      const dir = workspace()
      const file = path.join(dir, 'agent.hcl')
      const url = `http://127.0.0.1:${server.address().port}/v1`
      writeFileSync(file, `default_model = "local/m"\nproviders {\n  name = "local"\n  api_key = "bad"\n  base_url = "${url}"\n  models {\n    id = "m"\n  }\n}\n`)
      const session = (await Agent.create(file)).session(dir)
      return await failure(() => session.send('hello'))
    } finally {
      server.close()
    }
  },
  async ConfigFile() {
    const dir = workspace()
    const file = path.join(dir, 'agent.hcl')
    writeFileSync(file, 'queue {\n  lane_handlers {\n    fast = "external"\n  }\n}\n')
    return failure(() => Agent.create(file))
  },
  async InvalidPayload() {
    const session = externalSession()
    return failure(() => session.submit(SessionLane.Query, 'read', 'not an object'))
  },
  async TaskNotFound() {
    return failure(() => externalSession().completeExternalTask('no-such-task', { success: true }))
  },
  async TaskAlreadyCompleted() {
    const session = externalSession()
    const handle = await session.submit(SessionLane.Query, 'noop', {})
    await session.completeExternalTask(handle.taskId, { success: true, result: {} })
    return failure(() => session.completeExternalTask(handle.taskId, { success: true }))
  },
  async TaskTimedOut() {
    const session = externalSession({ timeoutMs: 50 })
    const handle = await session.submit(SessionLane.Query, 'noop', {})
    return failure(() => handle.result())
  },
  async TaskCancelled() {
    const session = externalSession()
    const handle = await session.submit(SessionLane.Query, 'noop', {})
    await handle.cancel()
    return failure(() => handle.result())
  },
  async RetriesExhausted() {
    const session = externalSession({ queueConfig: { retryPolicy: { strategy: 'none' } } })
    const handle = await session.submit(SessionLane.Query, 'noop', {})
    const [task] = await session.pendingExternalTasks({ limit: 1, waitMs: 5_000 })
    await session.abandonExternalTask(task.taskId, 'worker lost')
    return failure(() => handle.result())
  },
  async QueueFull() {
    const session = externalSession({ queueConfig: { queryMaxConcurrency: 1, maxPending: 1 } })
    await session.submit(SessionLane.Query, 'noop', {}) // takes the slot
    await session.submit(SessionLane.Query, 'noop', {}) // waits
    return failure(() => session.submit(SessionLane.Query, 'noop', {}))
  },
  async PathEscapesWorkspace() {
    // A tool error is a result, not a rejection: its code is in result.error_code.
    const session = new Agent().session(workspace())
    const out = await session.tool('read', { path: '../../etc/passwd' })
    assert.equal(out.success, false)
    return { code: out.result.error_code, message: out.error }
  },
  async UnknownTool() {
    return failure(() => new Agent().session('.').tool('teleport', {}))
  },
  async ToolFailed() {
    const out = await new Agent().session(workspace()).tool('read', { path: 'missing.txt' })
    assert.equal(out.success, false)
    return { code: out.result.error_code, message: out.error }
  },
  async FileTooLarge() {
    // Over the workspace's max_file_bytes (16 MiB by default), edit refuses to load the file.
    const ws = workspace()
    writeFileSync(path.join(ws, 'big.txt'), 'x'.repeat(17 << 20))
    const out = await new Agent().session(ws).tool('edit', { path: 'big.txt', old_string: 'x', new_string: 'y' })
    assert.equal(out.success, false)
    return { code: out.result.error_code, message: out.error }
  },
  async ShutDown() {
    const session = externalSession()
    await session.close()
    return failure(() => session.pendingExternalTasks({ waitMs: 1_000 }))
  },
}

for (const { code: expected, sample_message: sample } of errors.errors) {
  if (!(expected in reach)) continue
  test(`error code ${expected}`, async () => {
    const err = await reach[expected]()
    assert.equal(err.code, expected, `${err.message}`)
    assert.equal(typeof err.message, 'string')
    assert.ok(err.message.length > 0)
    if (err instanceof Error) assert.ok(!err.message.includes('GenericFailure'))
    // The message reads like the fixture's sample (its first word).
    assert.ok(err.message.split(' ')[0].length > 0, sample)
  })
}

test('every rejection is an Error whose code is a core code', async () => {
  const err = await reach.TaskNotFound()
  assert.ok(err instanceof Error)
  assert.ok(code.errorCodes().includes(err.code))
  assert.match(err.message, /task no-such-task not found/)
})

test('bad argument types throw a clear error, never crash', async () => {
  const session = externalSession()
  const lane = await failure(() => session.setLaneHandler('fast', {}))
  assert.equal(lane.code, 'InvalidArg')
  assert.match(lane.message, /SessionLane/)
  const id = await failure(() => session.completeExternalTask(5, { success: true }))
  assert.ok(id instanceof Error)
  assert.match(id.message, /String/)
  const result = await failure(() => session.completeExternalTask('t', { result: {} }))
  assert.equal(result.code, 'InvalidArg')
  assert.match(result.message, /success/)
  const cyclic = {}
  cyclic.self = cyclic
  const cycle = await failure(() => session.submit(SessionLane.Query, 'noop', cyclic))
  assert.equal(cycle.code, 'InvalidArg')
  assert.match(cycle.message, /circular/)
  const negative = await failure(() => new Agent().session('.', { queueConfig: { maxPending: -1 } }))
  assert.equal(negative.code, 'InvalidConfig')
  assert.match(negative.message, /maxPending/)
  const batch = await failure(() => session.completeExternalTasks([{ result: { success: true } }]))
  assert.equal(batch.code, 'InvalidArg')
  assert.match(batch.message, /taskId/)
  const task = await failure(() => code.executeBuiltin({ taskId: 't' }, '.'))
  assert.equal(task.code, 'InvalidArg')
  const zero = await failure(() => session.setLaneHandler(SessionLane.Query, { timeoutMs: 0 }))
  assert.equal(zero.code, 'InvalidConfig')
  // The session still works.
  assert.equal((await session.queueStats()).pendingCount, 0)
})

test('a timed-out task shows in the events with its code', async () => {
  const session = externalSession({ timeoutMs: 50 })
  const events = session.events()
  const handle = await session.submit(SessionLane.Query, 'noop', {})
  const failed = await nextEvent(events, (e) => e.type === 'failed')
  assert.equal(failed.code, 'TaskTimedOut')
  assert.equal(failed.taskId, handle.taskId)
  await assert.rejects(handle.result(), { code: 'TaskTimedOut' })
})
