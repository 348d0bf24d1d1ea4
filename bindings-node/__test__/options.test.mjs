// tests/fixtures/v1/api.json `options`: each option set the core describes once (its FIELDS) is
// accepted by Node under exactly those names, in camelCase. A field added in the core (and so in
// the fixture) without Node fails here.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { api, externalSession, root } from './helpers.mjs'

const camel = (name) => name.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase())

/** The field names of `export interface <name> { ... }` in the generated index.d.ts. */
function interfaceFields(dts, name) {
  const start = dts.indexOf(`export interface ${name} {`)
  assert.ok(start >= 0, `index.d.ts declares interface ${name}`)
  const body = dts.slice(dts.indexOf('{', start) + 1, dts.indexOf('\n}', start))
  const withoutComments = body.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '')
  return [...withoutComments.matchAll(/^\s*([A-Za-z_$][\w$]*)\??\s*:/gm)].map((m) => m[1])
}

const dts = readFileSync(path.join(root, 'bindings-node/index.d.ts'), 'utf8')
const sets = Object.entries(api.options).filter(([name]) => name !== 'note')

test('api.json lists the option sets', () => {
  assert.deepEqual(sets.map(([name]) => name).sort(), ['ClaimOptions', 'NatsConfig', 'RetryPolicy', 'SessionOptions', 'SessionQueueConfig'])
})

for (const [name, fields] of sets) {
  test(`index.d.ts: ${name} has exactly the fields of api.json, in camelCase`, () => {
    assert.deepEqual(interfaceFields(dts, name).sort(), fields.map(camel).sort())
  })
}

test('queueConfig() returns every field of SessionQueueConfig and RetryPolicy, set or not', async () => {
  const session = externalSession({ queueConfig: {} })
  const config = session.queueConfig()
  assert.deepEqual(Object.keys(config).sort(), api.options.SessionQueueConfig.map(camel).sort())
  assert.deepEqual(Object.keys(config.retryPolicy).sort(), api.options.RetryPolicy.map(camel).sort())
  await session.close()
})

test('unset queueConfig fields keep the core defaults; set ones are taken', async () => {
  const plain = externalSession({ queueConfig: {} })
  const defaults = plain.queueConfig()
  const session = externalSession({ queueConfig: { queryMaxConcurrency: 7, retryPolicy: { maxRetries: 9 } } })
  const config = session.queueConfig()
  assert.equal(config.queryMaxConcurrency, 7)
  assert.equal(config.retryPolicy.maxRetries, 9)
  // The rest of the retry policy is the core's default one, not a binding's.
  assert.equal(config.retryPolicy.strategy, defaults.retryPolicy.strategy)
  assert.equal(config.retryPolicy.initialDelayMs, defaults.retryPolicy.initialDelayMs)
  assert.equal(config.executeMaxConcurrency, defaults.executeMaxConcurrency)
  await Promise.all([plain.close(), session.close()])
})
