// The spec's TypeScript samples (multi-machine-distribution), as written: "Step 1: Configure
// Session" and "Step 2: Implement Worker". Nothing was added to them; `main`, at the end, drives
// them: it starts the spec's workerLoop, routes tool calls to it through session.tool(...) and
// checks what came back.
//
// Run from examples/spec (the samples load agent.hcl and read paths relative to `.`):
//   (at the repository root: npm ci && npm run build, or install dist/'s tarballs)
//   npm install && npx tsc -p typescript && node typescript/dist/spec_sample.js

// ----- Step 1: Configure Session ------------------------------------------------------------------
import { Agent, SessionOptions, SessionQueueConfig } from '@a3s-lab/code';
import { SessionLane, LaneHandlerConfig, TaskHandlerMode } from '@a3s-lab/code';
const agent = await Agent.create('agent.hcl');
const session = agent.session('.', {
queueConfig: {
queryMaxConcurrency: 20,
executeMaxConcurrency: 5,
enableMetrics: true,
enableDlq: true
}
});
await session.setLaneHandler(SessionLane.Query, {
mode: TaskHandlerMode.External,
timeoutMs: 120_000
});

// ----- Step 2: Implement Worker -------------------------------------------------------------------
import { AgentSession, ExternalTask, ExternalTaskResult } from '@a3s-lab/code';
import { exec } from 'child_process';
import { promisify } from 'util';
import { readFile } from 'fs/promises';
const execAsync = promisify(exec);
async function workerLoop(session: AgentSession): Promise<void> {
while (true) {
// Poll for pending tasks
const tasks = await session.pendingExternalTasks();
if (tasks.length === 0) {
await new Promise(resolve => setTimeout(resolve, 100));
continue;
}
// Process tasks in parallel
await Promise.all(tasks.map(task => processTask(session, task)));
}
}
async function processTask(session: AgentSession, task: ExternalTask): Promise<void> {
const result = await executeTask(task);
await session.completeExternalTask(task.taskId, result);
}
async function executeTask(task: ExternalTask): Promise<ExternalTaskResult> {
switch (task.commandType) {
case 'read': {
const path = task.payload.path;
try {
const content = await readFile(path, 'utf-8');
return {
success: true,
result: { content },
error: null
};
} catch (e) {
return {
success: false,
result: {},
error: e.message
};
}
}
case 'bash': {
const command = task.payload.command;
try {
const { stdout, stderr } = await execAsync(command);
return {
success: true,
result: { stdout, stderr, exitCode: 0 },
error: null
};
} catch (e) {
return {
success: false,
result: { stdout: e.stdout, stderr: e.stderr, exitCode: e.code },
error: e.message
};
}
}
default:
return {
success: false,
result: {},
error: `Unknown command type: ${task.commandType}`
};
}
}

// ----- The driver (not part of the spec) -----------------------------------------------------------
function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`spec sample: ${what}`);
}

async function main(): Promise<void> {
  // The spec's worker loop, in this process; it runs until the process exits.
  void workerLoop(session);

  // Tool calls routed to the Query lane are completed by the spec's worker loop.
  const read = await session.tool('read', { path: 'data/hello.txt' });
  check(read.success && read.error === null, `read failed: ${read.error}`);
  check(read.result.content === 'hello from the spec example\nsecond line\n', `unexpected ${JSON.stringify(read)}`);
  console.log(`read via the spec worker: ${JSON.stringify(read.result.content)}`);

  const missing = await session.tool('read', { path: 'data/missing.txt' });
  check(!missing.success && typeof missing.error === 'string', 'a failed read is reported, not thrown');
  console.log(`missing file reported by the worker: ${missing.error}`);

  // Several at once: the worker claims them in one poll and runs them in parallel.
  const many = await Promise.all(
    Array.from({ length: 10 }, () => session.tool('read', { path: 'data/hello.txt' })),
  );
  check(many.every(r => r.success), 'parallel reads');

  // The spec's bash branch: hand the Execute lane to the same worker too.
  await session.setLaneHandler(SessionLane.Execute, { mode: TaskHandlerMode.External, timeoutMs: 30_000 });
  const bash = await session.tool('bash', { command: 'echo spec' });
  check(bash.success && bash.result.stdout === 'spec\n' && bash.result.exitCode === 0, `unexpected ${JSON.stringify(bash)}`);
  const failing = await session.tool('bash', { command: 'exit 3' });
  check(!failing.success && failing.result.exitCode === 3, `unexpected ${JSON.stringify(failing)}`);

  // A command type no built-in tool has reaches the spec's default branch.
  const handle = await session.submit(SessionLane.Query, 'teleport', { to: 'mars' });
  const unknown = await handle.result();
  check(!unknown.success && unknown.error === 'Unknown command type: teleport', `unexpected ${JSON.stringify(unknown)}`);

  // Monitor Queue Metrics / Check Queue Stats / Monitor Task Latency, in TypeScript.
  const stats = await session.queueStats();
  console.log(`Pending: ${stats.pendingCount}, Active: ${stats.activeCount}, External: ${stats.externalCount}`);
  console.log(`Per lane: ${JSON.stringify(stats.perLane)}`);
  const metrics = await session.queueMetrics();
  check(metrics !== null, 'metrics are enabled');
  if (metrics) {
    console.log(`Total processed: ${metrics.totalProcessed}`);
    console.log(`Success rate: ${(metrics.successRate * 100).toFixed(2)}%`);
    console.log(`Average latency: ${metrics.avgLatencyMs.toFixed(3)} ms`);
    console.log(`P95 latency: ${metrics.p95LatencyMs.toFixed(3)} ms`);
    console.log(`P99 latency: ${metrics.p99LatencyMs.toFixed(3)} ms`);
    check(metrics.totalProcessed === 15, `15 tasks went through the queue, got ${metrics.totalProcessed}`);
    check(metrics.totalFailed === 3, `3 of them failed, got ${metrics.totalFailed}`);
  }
  console.log('spec sample OK');
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
