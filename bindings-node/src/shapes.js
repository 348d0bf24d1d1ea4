// The JS side of the per-task objects of @a3s-lab/code. src/shapes.rs evaluates this file once
// per JS environment (it is compiled into the addon) and calls the functions it returns.
//
// Per-task objects are built here, from JSON made in Rust, because creating them property by
// property through Node-API (or as #[napi] classes) costs several times more: this keeps the
// worker loop's per-task overhead to a few microseconds.
;(function (native) {
  'use strict'
  const noop = () => {}

  // A unit of work handed to a worker (`index.d.ts`: interface ExternalTask).
  class ExternalTask {
    #deadline // milliseconds on the binding's monotonic clock (not a wall-clock time)
    constructor(row) {
      this.taskId = row.taskId
      this.sessionId = row.sessionId
      this.lane = row.lane
      this.commandType = row.commandType
      this.payload = row.payload
      this.timeoutMs = row.timeoutMs
      this.createdAt = row.createdAt
      this.attempt = row.attempt
      this.#deadline = row.deadline
    }
    // Whether the task's deadline has passed: a worker should not start it.
    isTimedOut() {
      return native.expired(this.#deadline)
    }
    // Milliseconds left before the deadline (0 once it has passed).
    remainingMs() {
      return native.remaining(this.#deadline)
    }
    static deadlineOf(task) {
      return task !== null && typeof task === 'object' && #deadline in task ? task.#deadline : undefined
    }
  }

  // The handle of a submitted task (`index.d.ts`: interface TaskHandle).
  class TaskHandle {
    #result
    #session
    constructor(taskId, result, session) {
      this.taskId = taskId
      this.#result = result
      this.#session = session
      result.catch(noop) // an outcome nobody asks for is not an unhandled rejection
    }
    // The task's outcome (the same promise however often it is called).
    result() {
      return this.#result
    }
    // Cancels the task (session.cancel(taskId)).
    cancel() {
      return this.#session.cancel(this.taskId)
    }
  }

  return {
    tasks(json) {
      const rows = JSON.parse(json)
      for (let i = 0; i < rows.length; i++) rows[i] = new ExternalTask(rows[i])
      return rows
    },
    handle(taskId, result, session) {
      return new TaskHandle(taskId, result, session)
    },
    parse: JSON.parse,
    stringify(value) {
      const json = JSON.stringify(value)
      return json === undefined ? 'null' : json
    },
    deadlineOf: ExternalTask.deadlineOf,
  }
})
