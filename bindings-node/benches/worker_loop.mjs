// The Node worker loop beside the Rust one, in the same run.
//
//   node bindings-node/benches/worker_loop.mjs [TASKS] [ROUNDS]     (default 100000 tasks, 3 rounds)
//   npm run bench
//
// Node: TASKS no-op tasks submitted at once from Node (session.submit on an External Query lane,
// concurrency 1024), one worker loop polling in batches (pendingExternalTasks({ limit: 256,
// waitMs: 100 })) and completing each batch with one completeExternalTasks call; the submitter
// awaits every handle's result(). Rust: `cargo bench -p a3s-code-core --bench worker_loop --
// TASKS`, the same loop in Rust (core/benches/worker_loop.rs). Each round runs both; the best
// rate of each and their ratio are printed last (target: Node >= 30% of Rust).
//
// Build the addon in release first (`npm run build` does).
import { createRequire } from 'node:module'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import path from 'node:path'

const require = createRequire(import.meta.url)
const root = path.resolve(fileURLToPath(import.meta.url), '../../..')
const { Agent, SessionLane, TaskHandlerMode } = require(root)

const tasks = Number(process.argv[2] ?? 100_000)
const rounds = Number(process.argv[3] ?? 3)

async function nodeLoop(n) {
  const session = new Agent().session(root, {
    queueConfig: {
      queryMaxConcurrency: 1024,
      maxPending: n + 1,
      laneHandlers: { query: { mode: TaskHandlerMode.External, timeoutMs: 600_000 } },
    },
  })
  const worker = (async () => {
    for (;;) {
      let batch
      try {
        batch = await session.pendingExternalTasks({ limit: 256, waitMs: 100 })
      } catch (e) {
        if (e.code === 'ShutDown') return
        throw e
      }
      const results = new Array(batch.length)
      for (let i = 0; i < batch.length; i++) {
        results[i] = { taskId: batch[i].taskId, result: { success: true, result: {} } }
      }
      const outcomes = await session.completeExternalTasks(results)
      for (const o of outcomes) if (o !== null) throw new Error(`${o.code}: ${o.message}`)
    }
  })()
  const start = performance.now()
  const submitted = new Array(n)
  for (let i = 0; i < n; i++) submitted[i] = session.submit(SessionLane.Query, 'noop', { i })
  const handles = await Promise.all(submitted)
  const results = await Promise.all(handles.map((h) => h.result()))
  const secs = (performance.now() - start) / 1000
  if (!results.every((r) => r.success)) throw new Error('a task failed')
  await session.close()
  await worker
  return { secs, rate: n / secs }
}

function rustLoop(n) {
  const run = spawnSync('cargo', ['bench', '-q', '-p', 'a3s-code-core', '--bench', 'worker_loop', '--', String(n)], {
    cwd: root,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const m = /rust worker loop: (\d+) tasks in ([\d.]+) s = (\d+) tasks\/s/.exec(run.stdout ?? '')
  if (run.status !== 0 || !m) throw new Error(`cargo bench failed:\n${run.stdout}`)
  return { secs: Number(m[2]), rate: Number(m[3]) }
}

await nodeLoop(Math.min(tasks, 20_000)) // warm-up (JIT, allocator)
let bestNode = 0
let bestRust = 0
for (let r = 1; r <= rounds; r++) {
  const node = await nodeLoop(tasks)
  const rust = rustLoop(tasks)
  bestNode = Math.max(bestNode, node.rate)
  bestRust = Math.max(bestRust, rust.rate)
  console.log(
    `round ${r}: node worker loop: ${tasks} tasks in ${node.secs.toFixed(3)} s = ${node.rate.toFixed(0)} tasks/s; ` +
      `rust: ${rust.rate.toFixed(0)} tasks/s; ratio ${((100 * node.rate) / rust.rate).toFixed(0)}%`,
  )
}
console.log(`node worker loop: ${tasks} tasks, best of ${rounds} = ${bestNode.toFixed(0)} tasks/s`)
console.log(`rust worker loop: ${tasks} tasks, best of ${rounds} = ${bestRust.toFixed(0)} tasks/s`)
console.log(`node / rust = ${((100 * bestNode) / bestRust).toFixed(0)}% (target >= 30%)`)
