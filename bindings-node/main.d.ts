// The package's types (package.json `types`): the declarations `napi build` generates
// (index.d.ts, committed, never edited by hand) plus the deprecated aliases of main.js.
import type { WorkerClient, WorkerClientOptions } from './index'

export * from './index'

/** @deprecated Renamed `WorkerClient`; this is the same class. */
export declare const RemoteSession: typeof WorkerClient
/** @deprecated Renamed `WorkerClient`; this is the same class. */
export type RemoteSession = WorkerClient
/** @deprecated Renamed `WorkerClientOptions`. */
export type RemoteOptions = WorkerClientOptions
