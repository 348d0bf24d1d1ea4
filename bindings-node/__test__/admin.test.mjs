// The admin API from Node: AdminClient.local() over this process's sessions, and
// AdminClient.connect(config) over a NATS deployment (session and client in one process here, as
// they would be in two). Uses $A3S_TEST_NATS_URL when set, else a nats-server of its own.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { code, externalSession, startNats, workspace } from './helpers.mjs'

const { Agent, AdminClient, WorkerClient, SessionLane } = code

test('local: sessions, a paused lane, pending and finished tasks, refusals', async () => {
  const session = externalSession({ queueConfig: { enableDlq: true } })
  const admin = AdminClient.local()
  const page = await admin.sessions(undefined, undefined, 1000)
  assert.ok(page.sessions.some((s) => s.sessionId === session.id))
  await admin.act(session.id, { action: 'pause', lane: SessionLane.Query }, 'node-test')
  const view = await admin.session(session.id)
  assert.equal(view.lanes.find((l) => l.lane === SessionLane.Query).paused, true)
  const handle = await session.submit(SessionLane.Query, 'read', { path: 'a' })
  const pending = await admin.tasks(session.id, { state: 'pending' })
  assert.deepEqual(pending.tasks.map((t) => t.taskId), [handle.taskId])
  assert.deepEqual(pending.tasks[0].payload, { path: 'a' })
  await admin.act(session.id, { action: 'cancel', taskId: handle.taskId })
  await assert.rejects(handle.result(), { code: 'TaskCancelled' })
  const finished = await admin.tasks(session.id, { state: 'finished' })
  assert.equal(finished.tasks[0].outcome, 'cancelled')
  await assert.rejects(admin.act(session.id, { action: 'pause', lane: SessionLane.Control }), { code: 'InvalidConfig' })
  await assert.rejects(admin.act(session.id, { action: 'explode' }), { code: 'InvalidPayload' })
  await assert.rejects(admin.act(session.id, { action: 'cancel' }), { code: 'InvalidPayload' })
  await assert.rejects(admin.act(session.id, { action: 'delete_dead_letter', taskId: 'nope' }), { code: 'TaskNotFound' })
  assert.equal((await admin.deadLetters(session.id)).source, 'session')
  assert.deepEqual(await admin.processes(), [])
  assert.deepEqual(admin.workers(), [])
  await session.close()
  await assert.rejects(admin.session(session.id), { code: 'SessionNotFound' })
})

test('over NATS: processes, sessions, fleet demand, the worker holding each task', async () => {
  const nats = process.env.A3S_TEST_NATS_URL
    ? { url: process.env.A3S_TEST_NATS_URL, stop: async () => {} }
    : await startNats()
  after(() => nats.stop())
  const config = { url: nats.url, prefix: `na${randomUUID().replaceAll('-', '').slice(0, 10)}` }
  const session = new Agent().session(workspace(), {
    nats: config,
    queueConfig: { laneHandlers: { query: { mode: 'external', timeoutMs: 30_000 } } },
  })
  await session.brokerReady(10_000)
  const admin = await AdminClient.connect(config)
  const processes = await admin.processes()
  assert.deepEqual(processes.map((p) => [p.tenant, p.sessions]), [['default', 1]])
  assert.deepEqual((await admin.sessions()).sessions.map((s) => s.sessionId), [session.id])
  await admin.act(session.id, { action: 'pause', lane: SessionLane.Query })
  const handles = [await session.submit(SessionLane.Query, 'read', { path: '0' }),
    await session.submit(SessionLane.Query, 'read', { path: '1' })]
  const demand = await admin.fleetDemand()
  assert.ok(demand.some((d) => d.tenant === 'default' && d.lane === SessionLane.Query && d.slots === 2), JSON.stringify(demand))
  await admin.act(session.id, { action: 'resume', lane: SessionLane.Query })
  const worker = await WorkerClient.connect(nats.url, session.id, { config, workerId: 'node-admin' })
  const tasks = []
  while (tasks.length < 2) tasks.push(...await worker.pendingExternalTasks({ limit: 2 - tasks.length, waitMs: 10_000 }))
  let held = {}
  for (let i = 0; i < 100; i++) {
    const page = await admin.tasks(session.id, { state: 'in_flight' })
    held = Object.fromEntries(page.tasks.map((t) => [t.taskId, t.workerId]))
    if (tasks.every((t) => held[t.taskId] === 'node-admin')) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  assert.ok(tasks.every((t) => held[t.taskId] === 'node-admin'), JSON.stringify(held))
  for (const t of tasks) await worker.completeExternalTask(t.taskId, { success: true, result: { content: '' }, error: null })
  for (const h of handles) await h.result()
  await worker.close()
  await session.close()
  await assert.rejects(admin.session(session.id), { code: 'SessionNotFound' })
})
