// executeBuiltin: the built-in tools for workers, confined to their workspace.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { code, externalSession, workspace } from './helpers.mjs'

const { SessionLane, executeBuiltin } = code

async function claimOne(session, name, args) {
  const running = session.tool(name, args)
  const [task] = await session.pendingExternalTasks({ limit: 1, waitMs: 5_000 })
  return { task, running }
}

test('executeBuiltin reads a real file and its result completes the task', async () => {
  const session = externalSession()
  const { task, running } = await claimOne(session, 'read', { path: 'hello.txt' })
  const result = await executeBuiltin(task, session.workspace)
  assert.deepEqual(result, {
    success: true,
    result: { content: 'hello\nworld\n', total_lines: 2, start_line: 1, end_line: 2, truncated: false },
    error: null,
  })
  await session.completeExternalTask(task.taskId, result)
  assert.deepEqual(await running, result)
})

test('a path escaping the workspace is refused: success false, result.error_code', async () => {
  const session = externalSession()
  for (const path of ['../outside.txt', '/etc/passwd', 'src/../../x']) {
    const { task, running } = await claimOne(session, 'read', { path })
    const result = await executeBuiltin(task, session.workspace)
    assert.equal(result.success, false, path)
    assert.equal(result.result.error_code, 'PathEscapesWorkspace', path)
    assert.match(result.error, /escapes the workspace/)
    await session.completeExternalTask(task.taskId, result)
    assert.equal((await running).result.error_code, 'PathEscapesWorkspace')
  }
})

test('bash runs when allowed and is refused when not', async () => {
  const session = externalSession({ lanes: ['execute'] })
  const { task, running } = await claimOne(session, 'bash', { command: 'echo hi; echo err >&2; exit 2' })
  const ran = await executeBuiltin(task, session.workspace, { allowBash: true })
  assert.equal(ran.success, false)
  assert.equal(ran.result.stdout, 'hi\n')
  assert.equal(ran.result.stderr, 'err\n')
  assert.equal(ran.result.exit_code, 2)
  for (const options of [undefined, { allowBash: false }]) {
    // Off unless allowed: the task came from elsewhere.
    const refused = await executeBuiltin(task, session.workspace, options)
    assert.equal(refused.success, false)
    assert.equal(refused.result.error_code, 'ToolFailed')
  }
  await session.close()
  await running.catch(() => {})
})

test('a task from elsewhere (a plain object) runs too; one past its deadline does not', async () => {
  const ws = workspace()
  const plain = { taskId: 't1', lane: 'query', commandType: 'ls', payload: {}, timeoutMs: 5_000 }
  const listed = await executeBuiltin(plain, ws)
  assert.equal(listed.success, true)
  assert.deepEqual(listed.result.entries.map((e) => e.name).sort(), ['hello.txt', 'src'])

  const session = externalSession({ timeoutMs: 50 })
  const handle = await session.submit(SessionLane.Query, 'write', { path: 'late.txt', content: 'x' })
  const [task] = await session.pendingExternalTasks({ limit: 1, waitMs: 5_000 })
  await assert.rejects(handle.result(), { code: 'TaskTimedOut' })
  assert.equal(task.isTimedOut(), true)
  const late = await executeBuiltin(task, session.workspace)
  assert.equal(late.success, false)
  assert.equal(late.result.error_code, 'TaskTimedOut')
})

test('executeBuiltin rejects a workspace that is not a directory', async () => {
  const plain = { taskId: 't', lane: 'query', commandType: 'ls', payload: {}, timeoutMs: 1_000 }
  await assert.rejects(executeBuiltin(plain, '/no/such/dir'), { code: 'InvalidConfig' })
})

test('isTimedOut and remainingMs need a task from pendingExternalTasks', () => {
  const session = externalSession()
  return (async () => {
    const { task, running } = await claimOne(session, 'ls', {})
    const copy = { ...task }
    assert.equal(copy.isTimedOut, undefined)
    assert.throws(() => task.isTimedOut.call({}), TypeError)
    await session.close()
    await running.catch(() => {})
  })()
})
