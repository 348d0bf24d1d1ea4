#!/usr/bin/env bash
# The Node tests of @a3s-lab/code, run against the release artifacts in dist/ (./scripts/package.sh
# node builds them; this script runs it when they are missing). Usage: ./scripts/test-node.sh
#
# 1. bindings-node/index.js and index.d.ts, which `napi build` (in package.sh) regenerated, are
#    the committed ones.
# 2. `npm ci` at the root: the dev tools (TypeScript, @types/node, the napi CLI).
# 3. The packed tarballs (the main package and the platform package) installed with npm, as on a
#    machine without Rust (no cargo or rustc on PATH, checked) and without the registry
#    (--offline): into examples/spec/typescript (the spec's sample) and bindings-node/__test__
#    (the test suite), each with a fresh node_modules. The addon that loads must be the platform
#    tarball's. Without it (--omit=optional), the error names the platform.
# 4. tsc: the spec's TypeScript sample type-checks as written (--strict, catch variables `any`)
#    and compiles; the API's type-level tests type-check; all against the installed package.
# 5. node --test bindings-node/__test__/: the tests import `@a3s-lab/code`, which resolves to the
#    installed package (the compiled spec sample runs there too).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

step() { printf '\n==> %s\n' "$*"; }

version="$(./scripts/package.sh check-version)"
main_tgz="$PWD/dist/a3s-lab-code-$version.tgz"
platform_tgz="$PWD/dist/a3s-lab-code-linux-x64-gnu-$version.tgz"
if [ ! -f "$main_tgz" ] || [ ! -f "$platform_tgz" ]; then
  step "Node: no npm tarballs of $version in dist/: ./scripts/package.sh node"
  ./scripts/package.sh node
fi

step "Node: the regenerated index.js / index.d.ts (napi build, in package.sh) are the committed ones"
git diff --exit-code -- bindings-node/index.js bindings-node/index.d.ts

step "Node: npm ci (the dev tools: TypeScript, @types/node, the napi CLI)"
npm ci

no_rust_path="$(./scripts/package.sh no-rust-path)"
export PATH="$no_rust_path"
unset CARGO RUSTC RUSTUP_TOOLCHAIN
if command -v cargo >/dev/null 2>&1 || command -v rustc >/dev/null 2>&1; then
  echo "cargo or rustc is still on PATH ($PATH)" >&2
  exit 1
fi
tsc="$PWD/node_modules/.bin/tsc"

for project in examples/spec/typescript bindings-node/__test__; do
  step "Node: npm install of the tarballs into $project (no cargo on PATH, no registry)"
  rm -rf "$project/node_modules" "$project/package-lock.json"
  SECONDS=0
  (cd "$project" && npm install --no-save --offline "$main_tgz" "$platform_tgz")
  echo "(installed in ${SECONDS}s)"
  # The addon that loads is the platform tarball's, installed from dist/ (not built, not fetched).
  (cd "$project" && node - "$platform_tgz" <<'EOF'
const { createHash } = require('node:crypto')
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const platformTgz = process.argv[2]
const lock = JSON.parse(fs.readFileSync('node_modules/.package-lock.json', 'utf8')).packages
for (const [dir, tgz] of [['node_modules/@a3s-lab/code', platformTgz.replace('-linux-x64-gnu-', '-')],
                          ['node_modules/@a3s-lab/code-linux-x64-gnu', platformTgz]]) {
  const resolved = lock[dir]?.resolved ?? ''
  if (!resolved.startsWith('file:') || path.resolve(resolved.slice(5)) !== tgz) {
    throw new Error(`${dir} was installed from ${resolved || 'nowhere'}, not from ${tgz}`)
  }
  if (fs.lstatSync(dir).isSymbolicLink()) throw new Error(`${dir} is a link`)
  const scripts = JSON.parse(fs.readFileSync(`${dir}/package.json`, 'utf8')).scripts ?? {}
  for (const hook of ['preinstall', 'install', 'postinstall']) {
    if (scripts[hook]) throw new Error(`${dir} has an ${hook} script`)
  }
}
if (fs.readdirSync('node_modules/@a3s-lab/code/bindings-node').some((f) => f.endsWith('.node'))) {
  throw new Error('the main package ships a .node')
}
const code = require('@a3s-lab/code')
if (typeof code.Agent !== 'function') throw new Error('@a3s-lab/code has no Agent')
const loaded = Object.keys(require.cache).filter((f) => f.endsWith('.node'))
const expected = fs.realpathSync('node_modules/@a3s-lab/code-linux-x64-gnu/a3s-code.linux-x64-gnu.node')
if (loaded.length !== 1 || loaded[0] !== expected) throw new Error(`loaded ${loaded}, expected ${expected}`)
const sha = (buf) => createHash('sha256').update(buf).digest('hex')
const packed = execFileSync('tar', ['-xzOf', platformTgz, 'package/a3s-code.linux-x64-gnu.node'], { maxBuffer: 1 << 30 })
if (sha(fs.readFileSync(expected)) !== sha(packed)) throw new Error(`${expected} differs from the one in ${platformTgz}`)
console.log(`loaded ${path.relative(process.cwd(), expected)} (the platform tarball's)`)
EOF
  )
done

step "Node: without its platform package, the package's error names the platform"
bare="$(mktemp -d)"
trap 'rm -rf "$bare"' EXIT
echo '{ "name": "bare", "private": true }' >"$bare/package.json"
(cd "$bare" && npm install --no-save --offline --omit=optional --silent "$main_tgz" && node -e "
  try { require('@a3s-lab/code') } catch (e) {
    if (e.code !== 'ERR_A3S_NATIVE_ADDON' || !/linux-x64-gnu/.test(e.message)) throw e
    console.log(e.message)
    process.exit(0)
  }
  throw new Error('it loaded without an addon')")

step "Node: tsc (spec sample as written, API types), against the installed package"
"$tsc" -p examples/spec/typescript --noEmit --strict --useUnknownInCatchVariables false
"$tsc" -p examples/spec/typescript
"$tsc" -p bindings-node/__test__

step "Node: node --test bindings-node/__test__/ (imports resolve to the installed package)"
node --test bindings-node/__test__/
