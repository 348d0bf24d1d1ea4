// The spec's TypeScript sample (examples/spec/typescript), compiled with tsc by
// scripts/test-node.sh against the installed package, runs and checks its own results.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import path from 'node:path'
import { root } from './helpers.mjs'

const compiled = path.join(root, 'examples/spec/typescript/dist/spec_sample.js')

test('the spec TypeScript sample runs as written', () => {
  assert.ok(existsSync(compiled), `${compiled} is missing: scripts/test-node.sh compiles it with tsc`)
  const run = spawnSync(process.execPath, [compiled], {
    cwd: path.join(root, 'examples/spec'),
    encoding: 'utf8',
    timeout: 60_000,
  })
  assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`)
  assert.match(run.stdout, /read via the spec worker: "hello from the spec example\\nsecond line\\n"/)
  assert.match(run.stdout, /Total processed: 15/)
  assert.match(run.stdout, /P99 latency: [\d.]+ ms/)
  assert.match(run.stdout, /spec sample OK/)
})
