// Shared helpers of the Node tests (node --test bindings-node/__test__/).
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { readFileSync, mkdtempSync, writeFileSync, mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

const require = createRequire(import.meta.url)
// The package as users get it: the root package.json's `main`.
export const code = require('../..')

export const root = path.resolve(fileURLToPath(import.meta.url), '../../..')
export const fixtures = path.join(root, 'tests/fixtures/v1')
export const api = JSON.parse(readFileSync(path.join(fixtures, 'api.json'), 'utf8'))
export const errors = JSON.parse(readFileSync(path.join(fixtures, 'errors.json'), 'utf8'))

/** A temporary workspace with a few files. */
export function workspace() {
  const dir = mkdtempSync(path.join(tmpdir(), 'a3s-node-'))
  writeFileSync(path.join(dir, 'hello.txt'), 'hello\nworld\n')
  mkdirSync(path.join(dir, 'src'))
  writeFileSync(path.join(dir, 'src', 'lib.rs'), 'fn main() {}\n')
  return dir
}

/** A session whose given lanes are External with `timeoutMs`. */
export function externalSession({ lanes = ['query'], timeoutMs = 60_000, queueConfig = {}, ...options } = {}) {
  const laneHandlers = Object.fromEntries(lanes.map((lane) => [lane, { mode: 'external', timeoutMs }]))
  return new code.Agent().session(workspace(), {
    ...options,
    queueConfig: { enableMetrics: true, enableDlq: true, ...queueConfig, laneHandlers },
  })
}

/** Reads events until one matches (events are pushed by the queue: no polling, no sleeps). */
export async function nextEvent(stream, predicate) {
  for (;;) {
    const event = await stream.next()
    if (event === null) throw new Error('the event stream ended')
    if (predicate(event)) return event
  }
}

/** The rejection (or synchronous throw) of `fn()`. */
export async function failure(fn) {
  try {
    await fn()
  } catch (e) {
    return e
  }
  throw new Error('expected a failure')
}
