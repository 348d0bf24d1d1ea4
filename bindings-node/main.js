// The package's entry (package.json `main`): the loader `napi build` generates (index.js,
// committed, never edited by hand) plus the deprecated aliases napi cannot generate.
'use strict'
module.exports = require('./index.js')

// Deprecated: `RemoteSession` was renamed `WorkerClient`; the alias is the same class.
module.exports.RemoteSession = module.exports.WorkerClient
