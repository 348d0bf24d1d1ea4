// Shared helpers of the Node tests (node --test bindings-node/__test__/).
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { readFileSync, mkdtempSync, writeFileSync, mkdirSync, rmSync, accessSync, constants } from 'node:fs'
import { spawn, execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { tmpdir } from 'node:os'
import path from 'node:path'

const require = createRequire(import.meta.url)
// The package as users get it: `@a3s-lab/code` as installed in bindings-node/__test__/node_modules
// (scripts/test-node.sh installs the packed tarballs of dist/ there).
export const code = require('@a3s-lab/code')

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

/**
 * A NATS server with JetStream for this test file, as the Rust and Python suites start theirs:
 * `$NATS_SERVER_BIN`, else `nats-server` on PATH, else /usr/sbin/nats-server, on a port the
 * server picks, with a temporary store. Throws when no binary exists (the tests fail, they are
 * not skipped). Resolves once the server logs that it is ready; `stop()` ends it.
 */
export async function startNats() {
  const bin = natsServerBin()
  const dir = mkdtempSync(path.join(tmpdir(), 'a3s-node-nats-'))
  // Streams reserve their max_bytes against the storage limit (75% of the free disk by
  // default): a generous limit lets every test's prefix fit on this one server.
  writeFileSync(path.join(dir, 'server.conf'), 'jetstream {\n  max_file_store: 1TB\n  max_memory_store: 1GB\n}\n')
  const server = spawn(bin, ['-a', '127.0.0.1', '-p', '-1', '-js', '-sd', path.join(dir, 'js'), '-c', path.join(dir, 'server.conf')], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  const exited = once(server, 'exit')
  let log = ''
  const ready = new Promise((resolve, reject) => {
    server.stderr.setEncoding('utf8')
    server.stderr.on('data', (chunk) => {
      log += chunk
      const port = /Listening for client connections on [^\s]*:(\d+)/.exec(log)?.[1]
      if (port && log.includes('Server is ready')) resolve(`nats://127.0.0.1:${port}`)
    })
    server.on('error', reject)
    exited.then(([code, signal]) => reject(new Error(`${bin} exited (${code ?? signal}) before it was ready:\n${log}`)))
  })
  let timer
  const url = await new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${bin} was not ready after 30 s:\n${log}`)), 30_000)
    ready.then(resolve, reject)
  })
    .finally(() => clearTimeout(timer))
    .catch((e) => {
      server.kill('SIGKILL')
      rmSync(dir, { recursive: true, force: true })
      throw e
    })
  return {
    url,
    async stop() {
      if (server.exitCode === null && server.signalCode === null) {
        server.kill('SIGTERM')
        await exited
      }
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

function natsServerBin() {
  const candidates = []
  if (process.env.NATS_SERVER_BIN) candidates.push(process.env.NATS_SERVER_BIN)
  else {
    try {
      candidates.push(execFileSync('sh', ['-c', 'command -v nats-server'], { encoding: 'utf8' }).trim())
    } catch {
      // not on PATH
    }
    candidates.push('/usr/sbin/nats-server')
  }
  for (const bin of candidates) {
    try {
      accessSync(bin, constants.X_OK)
      return bin
    } catch {
      // try the next one
    }
  }
  throw new Error(
    `nats-server not found (${candidates.join(', ')}): install it (Debian: apt-get install nats-server), ` +
      'set NATS_SERVER_BIN, or point A3S_TEST_NATS_URL at a running server with JetStream',
  )
}
