#!/usr/bin/env bash
# The Node tests of @a3s-lab/code, from a clean clone. Usage: ./scripts/test-node.sh
#
# 1. `npm ci`: installs the devDependencies and runs the package's install step, which builds
#    the addon with cargo (scripts/build-native.js), as `npm install` does for users.
# 2. `npm install` of this repository from another project (examples/spec/typescript), the way
#    users install it from a path.
# 3. `npm run build` (napi build) regenerates bindings-node/index.js and index.d.ts: they must
#    not change (they are committed).
# 4. tsc: the spec's TypeScript sample type-checks as written (--strict, catch variables `any`)
#    and compiles; the API's type-level tests type-check.
# 5. node --test bindings-node/__test__/ (the compiled spec sample runs there too).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

step() { printf '\n==> %s\n' "$*"; }

step "Node: npm ci (the install step builds the addon)"
npm ci

step "Node: npm install <this repo> from another project (examples/spec/typescript)"
(cd examples/spec/typescript && npm install --no-package-lock)

step "Node: npm run build regenerates index.js / index.d.ts unchanged"
npm run build
git diff --exit-code -- bindings-node/index.js bindings-node/index.d.ts

step "Node: tsc (spec sample as written, API types)"
npx tsc -p examples/spec/typescript --noEmit --strict --useUnknownInCatchVariables false
npx tsc -p examples/spec/typescript
npx tsc -p bindings-node/__test__

step "Node: node --test bindings-node/__test__/"
node --test bindings-node/__test__/
