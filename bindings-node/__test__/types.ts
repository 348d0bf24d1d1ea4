// Type-level tests of index.d.ts (tsc -p bindings-node/__test__): what must type-check does,
// and what must not is marked @ts-expect-error. Never run.
import {
  Agent, AgentSession, SessionOptions, SessionQueueConfig, SessionLane, LaneHandlerConfig, TaskHandlerMode,
  ExternalTask, ExternalTaskResult, ExternalTaskCompletion, CompletionError, QueueEvent, QueueMetrics, QueueStats,
  TaskHandle, DeadLetter, executeBuiltin, errorCodes, NatsConfig, WorkerClient, WorkerClientOptions, ClaimOptions,
  RemoteSession, RemoteOptions,
} from '@a3s-lab/code'

export async function typed(): Promise<void> {
  const config: SessionQueueConfig = { queryMaxConcurrency: 20, laneHandlers: { query: { mode: TaskHandlerMode.External } } }
  const options: SessionOptions = { queueConfig: config, sessionId: 'id' }
  const agent: Agent = await Agent.create('agent.hcl')
  const session: AgentSession = agent.session('.', options)
  agent.session('.')
  const handler: LaneHandlerConfig = { mode: TaskHandlerMode.External, timeoutMs: 120_000 }
  await session.setLaneHandler(SessionLane.Query, handler)

  const tasks: ExternalTask[] = await session.pendingExternalTasks({ limit: 256, waitMs: 100 })
  const task = tasks[0]
  const path: string = task.payload.path
  const left: number = task.remainingMs()
  const late: boolean = task.isTimedOut()
  const ok: ExternalTaskResult = { success: true, result: { stdout: '', exitCode: 0 }, error: null }
  const bare: ExternalTaskResult = { success: false }
  await session.completeExternalTask(task.taskId, ok)
  const batch: ExternalTaskCompletion[] = tasks.map((t) => ({ taskId: t.taskId, result: bare }))
  const outcomes: Array<CompletionError | null> = await session.completeExternalTasks(batch)
  await session.abandonExternalTask(task.taskId, 'reason')

  const handle: TaskHandle = await session.submit(SessionLane.Execute, 'custom', { any: ['json'] })
  const result: ExternalTaskResult = await handle.result()
  await handle.cancel()
  const out: ExternalTaskResult = await session.tool('read', { path: 'README.md' })
  const builtin: ExternalTaskResult = await executeBuiltin(task, '.', { allowBash: false })

  const stats: QueueStats = await session.queueStats()
  const pending: number = stats.perLane[SessionLane.Query].pendingCount
  const metrics: QueueMetrics | null = await session.queueMetrics()
  const p99: number | undefined = metrics?.p99LatencyMs
  const dead: DeadLetter[] = await session.deadLetters()

  for await (const event of session.events()) {
    const e: QueueEvent = event
    if (e.type === 'completed') {
      const ms: number = e.latencyMs
    } else if (e.type === 'failed') {
      const code: string = e.code
    }
  }
  const next: QueueEvent | null = await session.events().next()
  const codes: string[] = errorCodes()
  await session.close()

  // Over NATS: the session publishes, a WorkerClient on another machine works the same way.
  const nats: NatsConfig = { url: 'nats://10.0.0.5:4222', prefix: 'build', token: 's3cret', leaseMs: 5_000 }
  const distributed: AgentSession = agent.session('.', { queueConfig: config, nats })
  await distributed.brokerReady(10_000)
  await distributed.brokerReady()
  const remoteOptions: WorkerClientOptions = { config: nats, lanes: [SessionLane.Query], labels: { region: 'eu-west' } }
  const remote: WorkerClient = await WorkerClient.connect('nats://10.0.0.5:4222', distributed.id, remoteOptions)
  const plain: WorkerClient = await WorkerClient.connect('nats://10.0.0.5:4222', '*')
  // A pool worker of one tenant; a session of that tenant, weighted and capped.
  const pool: WorkerClient = await WorkerClient.connect('nats://10.0.0.5:4222', '*', { tenant: 'acme' })
  const state: 'waiting' | 'serving' | 'draining' = pool.state
  const tenantOptions: SessionOptions = { nats: { ...nats, inboxPrefix: '_INBOX_W.acme' }, tenant: 'acme', tenantWeight: 3, tenantMaxInFlight: 64 }
  agent.session('.', tenantOptions)
  // @ts-expect-error: state is one of three strings
  const notState: 'idle' = pool.state
  // The former names still type-check (deprecated aliases of the same class and options).
  const oldOptions: RemoteOptions = remoteOptions
  const old: RemoteSession = await RemoteSession.connect('nats://10.0.0.5:4222', '*', oldOptions)
  const same: WorkerClient = old
  const claim: ClaimOptions = { limit: 8, waitMs: 1_000 }
  await same.pendingExternalTasks(claim)
  const workerId: string = remote.workerId
  const claimed: ExternalTask[] = await remote.pendingExternalTasks({ limit: 8, waitMs: 1_000 })
  await remote.completeExternalTask(claimed[0].taskId, ok)
  const refused: Array<CompletionError | null> = await remote.completeExternalTasks(batch)
  await remote.abandonExternalTask(claimed[0].taskId, 'reason')
  await remote.close()
  // @ts-expect-error: url is required
  const noUrl: NatsConfig = { prefix: 'x' }

  // @ts-expect-error: an unknown lane
  await session.setLaneHandler('fast', handler)
  // @ts-expect-error: no such member
  SessionLane.Fast
  // @ts-expect-error: success is required
  await session.completeExternalTask('id', { result: {} })
  // @ts-expect-error: setLaneHandler returns a promise
  const notVoid: undefined = session.setLaneHandler(SessionLane.Query, handler)
  // @ts-expect-error: counts are numbers
  agent.session('.', { queueConfig: { queryMaxConcurrency: '20' } })
  void [path, left, late, outcomes, result, out, builtin, pending, p99, dead, next, codes, notVoid, plain, workerId, refused, noUrl, state, notState]
}
