// The package's entry (package.json `main`): the loader `napi build` generates (index.js,
// committed, never edited by hand) plus what napi cannot generate: a clear error when no native
// addon fits this machine, and the deprecated aliases.
//
// index.js loads ./a3s-code.<platform>.node when it exists (a build from source, `npm run
// build`), else the prebuilt addon of the platform package @a3s-lab/code-<platform>, which npm
// installs as an optional dependency where its `os`/`cpu`/`libc` match. Installing never runs
// cargo.
'use strict'

// The platform suffix of the addon and of its npm package, as the generated index.js spells it.
function platformName() {
  const { platform, arch } = process
  if (platform !== 'linux') return `${platform}-${arch}`
  const report = typeof process.report?.getReport === 'function' ? process.report.getReport() : null
  return `linux-${arch}-${report && !report.header?.glibcVersionRuntime ? 'musl' : 'gnu'}`
}

function noAddonError(cause) {
  const platform = platformName()
  const pkg = `@a3s-lab/code-${platform}`
  const prebuilt = Object.keys(require('../package.json').optionalDependencies ?? {})
  const fromSource =
    'build from source (Rust needed): `npm ci && npm run build` in a clone, then `npm install /path/to/clone` in your project'
  let message
  try {
    require.resolve(`${pkg}/package.json`)
    // Installed, yet it did not load: say why (a missing glibc symbol, a broken download...).
    let detail = cause?.message
    try {
      require(pkg)
    } catch (e) {
      detail = e.message
    }
    message = `@a3s-lab/code: the native addon of ${pkg} does not load on this machine: ${detail}`
  } catch {
    if (prebuilt.includes(pkg)) {
      message =
        `@a3s-lab/code: the prebuilt native addon for ${platform}, ${pkg}, is not installed: install it ` +
        `again without omitting optional dependencies (npm install --include=optional), or ${fromSource}`
    } else if (prebuilt.length > 0) {
      const names = prebuilt.map((name) => name.replace('@a3s-lab/code-', '')).join(', ')
      message = `@a3s-lab/code: no prebuilt native addon for ${platform} (there are: ${names}); ${fromSource}`
    } else {
      message =
        `@a3s-lab/code: no native addon for ${platform}, and this copy names no prebuilt ones (a packed ` +
        `clone?): install the release tarballs (./scripts/package.sh builds them into dist/), or ${fromSource}`
    }
  }
  const error = new Error(message)
  error.code = 'ERR_A3S_NATIVE_ADDON'
  error.cause = cause
  return error
}

try {
  // Kept as `module.exports = require(...)`: Node finds the named exports of ESM imports
  // (`import { Agent } from '@a3s-lab/code'`) through this re-export.
  module.exports = require('./index.js')
} catch (e) {
  throw noAddonError(e)
}

// Deprecated: `RemoteSession` was renamed `WorkerClient`; the alias is the same class.
module.exports.RemoteSession = module.exports.WorkerClient
