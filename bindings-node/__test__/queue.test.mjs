// Claims, completions, timeouts, the dead-letter queue, stats, metrics and events.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { code, externalSession, nextEvent } from './helpers.mjs'

const { SessionLane, TaskHandlerMode } = code

test('several concurrent workers: every task is claimed once and completed once', async () => {
  const session = externalSession({ queueConfig: { queryMaxConcurrency: 64 } })
  const total = 600
  const handles = await Promise.all(
    Array.from({ length: total }, (_, i) => session.submit(SessionLane.Query, 'echo', { i, 'Key With Spaces': [i] })),
  )
  const seen = new Map()
  let done = 0
  async function worker(name, limit) {
    while (done < total) {
      const tasks = await session.pendingExternalTasks({ limit, waitMs: 20 })
      for (const t of tasks) {
        assert.ok(!seen.has(t.taskId), `${t.taskId} claimed by ${seen.get(t.taskId)} and ${name}`)
        seen.set(t.taskId, name)
      }
      const outcomes = await session.completeExternalTasks(
        tasks.map((t) => ({ taskId: t.taskId, result: { success: true, result: { echo: t.payload, by: name } } })),
      )
      assert.deepEqual(outcomes, tasks.map(() => null))
      done += tasks.length
    }
  }
  // Four loops with batch polling, and one with the spec's unbounded poll.
  const spec = (async () => {
    while (done < total) {
      const tasks = await session.pendingExternalTasks()
      for (const t of tasks) {
        assert.ok(!seen.has(t.taskId))
        seen.set(t.taskId, 'spec')
        await session.completeExternalTask(t.taskId, { success: true, result: { echo: t.payload, by: 'spec' } })
      }
      done += tasks.length
      if (tasks.length === 0) await new Promise((r) => setImmediate(r))
    }
  })()
  await Promise.all([worker('a', 1), worker('b', 7), worker('c', 32), worker('d', 256), spec])
  assert.equal(seen.size, total)
  const results = await Promise.all(handles.map((h) => h.result()))
  results.forEach((r, i) => {
    assert.equal(r.success, true)
    assert.deepEqual(r.result.echo, { i, 'Key With Spaces': [i] }) // payload keys untouched
  })
  const again = await session.completeExternalTasks([{ taskId: handles[0].taskId, result: { success: true } }])
  assert.equal(again[0].code, 'TaskAlreadyCompleted')
  const m = await session.queueMetrics()
  assert.equal(m.totalProcessed, total)
  assert.equal(m.totalRejectedCompletions, 1)
})

test('a late completion is refused with TaskTimedOut and lands in the DLQ', async () => {
  const session = externalSession({ timeoutMs: 100 })
  const events = session.events()
  const handle = await session.submit(SessionLane.Query, 'read', { path: 'hello.txt' })
  const [task] = await session.pendingExternalTasks({ limit: 1, waitMs: 5_000 })
  assert.equal(task.taskId, handle.taskId)
  assert.equal(task.timeoutMs, 100)
  assert.equal(task.isTimedOut(), false)
  await nextEvent(events, (e) => e.type === 'dead_lettered' && e.taskId === task.taskId)
  assert.equal(task.isTimedOut(), true)
  assert.equal(task.remainingMs(), 0)
  await assert.rejects(session.completeExternalTask(task.taskId, { success: true, result: {} }), {
    code: 'TaskTimedOut',
    message: `task ${task.taskId} timed out after 100 ms`,
  })
  await assert.rejects(handle.result(), { code: 'TaskTimedOut' })
  const [dead] = await session.deadLetters()
  assert.equal(dead.taskId, task.taskId)
  assert.equal(dead.errorCode, 'TaskTimedOut')
  assert.equal(dead.lane, SessionLane.Query)
  assert.deepEqual(dead.payload, { path: 'hello.txt' })
  assert.equal(dead.attempts, 1)
  const m = await session.queueMetrics()
  assert.equal(m.totalTimedOut, 1)
  assert.equal(m.totalDeadLettered, 1)
  assert.equal(m.dlqDepth, 1)
  assert.equal(m.totalRejectedCompletions, 1)
  assert.equal((await session.drainDeadLetters()).length, 1)
  assert.deepEqual(await session.deadLetters(), [])
})

test('stats count pending, active, external and claimed tasks per lane', async () => {
  const session = externalSession({ queueConfig: { queryMaxConcurrency: 2 } })
  const handles = await Promise.all(Array.from({ length: 5 }, () => session.submit(SessionLane.Query, 'noop', {})))
  let s = await session.queueStats()
  assert.deepEqual(
    [s.pendingCount, s.activeCount, s.externalCount],
    [3, 2, 2],
  )
  assert.deepEqual(Object.keys(s.perLane), ['control', 'query', 'execute', 'generate'])
  assert.equal(s.perLane.query.maxConcurrency, 2)
  assert.equal(s.perLane.query.mode, TaskHandlerMode.External)
  assert.equal(s.perLane.query.timeoutMs, 60_000)
  assert.equal(s.perLane.execute.mode, TaskHandlerMode.Internal)
  const claimed = await session.pendingExternalTasks({ limit: 1 })
  s = await session.queueStats()
  assert.equal(s.perLane.query.claimedCount, 1)
  await session.completeExternalTask(claimed[0].taskId, { success: false, result: {}, error: 'nope' })
  assert.equal((await handles[0].result()).error, 'nope')
  s = await session.queueStats()
  assert.deepEqual([s.pendingCount, s.activeCount], [2, 2])
  await session.close()
  for (const h of handles.slice(1)) await assert.rejects(h.result(), { code: 'ShutDown' })
})

test('metrics: null when disabled; counters, success rate and latencies in ms otherwise', async () => {
  const off = new code.Agent().session('.', { queueConfig: {} })
  assert.equal(await off.queueMetrics(), null)
  assert.equal(off.queueConfig().enableMetrics, false)

  const session = externalSession()
  const handles = await Promise.all(Array.from({ length: 4 }, () => session.submit(SessionLane.Query, 'noop', {})))
  const tasks = await session.pendingExternalTasks()
  assert.equal(tasks.length, 4)
  await session.completeExternalTasks(
    tasks.map((t, i) => ({ taskId: t.taskId, result: { success: i !== 0, result: {}, error: i === 0 ? 'x' : null } })),
  )
  await Promise.all(handles.map((h) => h.result()))
  const m = await session.queueMetrics()
  assert.equal(m.totalProcessed, 4)
  assert.equal(m.totalFailed, 1)
  assert.equal(m.successRate, 0.75)
  for (const k of ['avgLatencyMs', 'p50LatencyMs', 'p95LatencyMs', 'p99LatencyMs']) {
    assert.equal(typeof m[k], 'number')
    assert.ok(m[k] > 0 && m[k] < 60_000, `${k} = ${m[k]}`)
  }
  assert.ok(m.p99LatencyMs >= m.p50LatencyMs)
  assert.equal(m.perLane.query.totalProcessed, 4)
  assert.equal(m.perLane.execute.totalProcessed, 0)
})

test('the session configuration: given fields over the core defaults', () => {
  const session = new code.Agent().session('.', {
    sessionId: 'build-42',
    queueConfig: { queryMaxConcurrency: 20, executeMaxConcurrency: 5, retryPolicy: { strategy: 'fixed' } },
  })
  assert.equal(session.id, 'build-42')
  const c = session.queueConfig()
  assert.equal(c.queryMaxConcurrency, 20)
  assert.equal(c.executeMaxConcurrency, 5)
  assert.equal(c.controlMaxConcurrency, 2) // the core's default
  assert.equal(c.maxPending, 100_000)
  assert.deepEqual(c.retryPolicy, { strategy: 'fixed', maxRetries: 3, initialDelayMs: 100, maxDelayMs: 10_000 })
})

test('events: submitted, started, completed in order; the stream ends when the session closes', async () => {
  const session = externalSession()
  const events = session.events()
  assert.equal(events.tryNext(), null)
  const handle = await session.submit(SessionLane.Query, 'noop', {})
  const [task] = await session.pendingExternalTasks()
  await session.completeExternalTask(task.taskId, { success: true, result: {} })
  await handle.result()
  await session.close()
  const seen = []
  for await (const e of events) seen.push(e)
  assert.deepEqual(
    seen.map((e) => e.type),
    ['submitted', 'started', 'completed'],
  )
  assert.deepEqual(seen[1], {
    type: 'started',
    taskId: handle.taskId,
    lane: 'query',
    commandType: 'noop',
    mode: 'external',
    attempt: 1,
  })
  assert.equal(typeof seen[2].latencyMs, 'number')
  assert.equal(await events.next(), null)
})

test('submit, result and cancel through the handle', async () => {
  const session = externalSession()
  const handle = await session.submit(SessionLane.Query, 'custom', { 'x-y': 1 })
  assert.equal(typeof handle.taskId, 'string')
  assert.equal(handle.result(), handle.result()) // the same promise
  const [task] = await session.pendingExternalTasks()
  assert.deepEqual(task.payload, { 'x-y': 1 })
  assert.equal(task.commandType, 'custom')
  assert.equal(task.sessionId, session.id)
  assert.equal(task.attempt, 1)
  assert.ok(Math.abs(task.createdAt - Date.now()) < 60_000)
  assert.deepEqual(JSON.parse(JSON.stringify(task)), {
    taskId: task.taskId, sessionId: session.id, lane: 'query', commandType: 'custom', payload: { 'x-y': 1 },
    timeoutMs: 60_000, createdAt: task.createdAt, attempt: 1,
  })
  await handle.cancel()
  await assert.rejects(handle.result(), { code: 'TaskCancelled' })
  await assert.rejects(handle.cancel(), { code: 'TaskCancelled' })
  await assert.rejects(session.completeExternalTask(task.taskId, { success: true }), { code: 'TaskCancelled' })
})

test('internal lanes run the built-in tools; a handle nobody awaits does not crash the process', async () => {
  const session = new code.Agent().session(externalSession().workspace)
  const out = await session.tool('grep', { pattern: 'world' })
  assert.equal(out.success, true)
  assert.equal(out.result.matches[0].path, 'hello.txt')
  assert.equal(out.error, null)
  // Failing in the background with no one listening: no unhandled rejection.
  await session.submit(SessionLane.Execute, 'teleport', {})
  await session.close()
})

test('a closed session: the spec poll resolves to [], a claim with options rejects with ShutDown', async () => {
  const session = externalSession()
  await session.close()
  assert.deepEqual(await session.pendingExternalTasks(), [])
  assert.deepEqual(await session.pendingExternalTasks({}), [])
  await assert.rejects(session.pendingExternalTasks({ limit: 1 }), { code: 'ShutDown' })
  await assert.rejects(session.pendingExternalTasks({ waitMs: 0 }), { code: 'ShutDown' })
})

test('a paused lane hands out nothing until resumed; Control cannot be paused', async () => {
  const session = externalSession({ queueConfig: { queryMaxConcurrency: 2 } })
  await session.pauseLane(SessionLane.Query)
  await session.pauseLane(SessionLane.Query) // idempotent
  const handle = await session.submit(SessionLane.Query, 'read', { path: 'f' })
  assert.deepEqual(await session.pendingExternalTasks({ limit: 8, waitMs: 100 }), [])
  let lane = (await session.queueStats()).perLane.query
  assert.equal(lane.paused, true)
  assert.equal(lane.pendingCount, 1)
  await session.resumeLane(SessionLane.Query)
  const [task] = await session.pendingExternalTasks({ limit: 8, waitMs: 1_000 })
  await session.completeExternalTask(task.taskId, { success: true, result: {}, error: null })
  assert.equal((await handle.result()).success, true)
  lane = (await session.queueStats()).perLane.query
  assert.equal(lane.paused, false)
  await assert.rejects(session.pauseLane(SessionLane.Control), (err) => err.code === 'InvalidConfig')
  await session.close()
})

test('a dead letter is retried as a new task or deleted', async () => {
  const session = externalSession({ timeoutMs: 100 })
  const ids = []
  for (const path of ['a', 'b']) {
    const handle = await session.submit(SessionLane.Query, 'read', { path })
    await assert.rejects(handle.result(), { code: 'TaskTimedOut' })
    ids.push(handle.taskId)
  }
  const retry = await session.retryDeadLetter(ids[0])
  assert.notEqual(retry.taskId, ids[0])
  assert.deepEqual((await session.deadLetters()).map((d) => d.taskId), [ids[1]])
  const [task] = await session.pendingExternalTasks({ limit: 1, waitMs: 1_000 })
  assert.equal(task.taskId, retry.taskId)
  assert.deepEqual(task.payload, { path: 'a' })
  await session.completeExternalTask(task.taskId, { success: true, result: {}, error: null })
  assert.equal((await retry.result()).success, true)
  const finished = await session.tasks({ state: 'finished' })
  assert.equal(finished.tasks[0].taskId, retry.taskId)
  assert.equal(finished.tasks[0].retryOf, ids[0])
  assert.equal(finished.tasks[0].outcome, 'completed')
  assert.deepEqual(finished.tasks.slice(1).map((t) => t.outcome), ['timed_out', 'timed_out'])
  const page = await session.tasks({ state: 'finished', limit: 1 })
  assert.equal(page.tasks.length, 1)
  const rest = await session.tasks({ state: 'finished', cursor: page.next })
  assert.deepEqual(rest.tasks.map((t) => t.taskId), [ids[1], ids[0]])
  assert.equal(rest.next, undefined)
  await assert.rejects(session.tasks({ state: 'running' }), { code: 'InvalidConfig' })
  await session.deleteDeadLetter(ids[1])
  assert.deepEqual(await session.deadLetters(), [])
  await assert.rejects(session.deleteDeadLetter(ids[1]), { code: 'TaskNotFound' })
  await assert.rejects(session.retryDeadLetter('nope'), { code: 'TaskNotFound' })
  await session.close()
})
