// The dashboard in a real browser (Debian's chromium, driven by playwright-core).
//
// Starts its own nats-server, a session host (cli/examples/dashboard_host.rs) that keeps
// submitting tasks, two `a3s-code worker`s, an admin dashboard and a read-only one; then, in
// the browser: the lanes fill, pausing a lane stops its dispatch, a dead letter is retried and
// completes, a running `sleep 30` is cancelled, and the read-only dashboard has no buttons and
// refuses actions, like the admin one refuses cross-site requests.
//
// Environment: A3S_CODE_BIN (default ../../target/debug/a3s-code), A3S_DASHBOARD_HOST_BIN
// (default ../../target/debug/examples/dashboard_host), NATS_SERVER_BIN (default nats-server
// on the PATH), CHROMIUM_BIN (default /usr/bin/chromium), A3S_SCREENSHOTS=dir to save
// screenshots there (dashboard-*.png), A3S_SCREENSHOT_WARMUP_S to let the sparklines fill first.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const target = process.env.CARGO_TARGET_DIR || path.join(here, '..', '..', 'target');
const A3S = process.env.A3S_CODE_BIN || path.join(target, 'debug', 'a3s-code');
const HOST = process.env.A3S_DASHBOARD_HOST_BIN || path.join(target, 'debug', 'examples', 'dashboard_host');
const NATS = process.env.NATS_SERVER_BIN || 'nats-server';
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SHOTS = process.env.A3S_SCREENSHOTS;
const WAIT = 30_000; // the longest any condition may take on a slow machine

const dir = mkdtempSync(path.join(tmpdir(), 'a3s-dashboard-'));
const children = [];
let browser;
let failed = false;
let sessionId;
let admin; // base URL of the admin dashboard
let readOnly; // of the read-only one
let withTokens; // of one that needs a token
let evil; // a page of another site

// ----- processes ------------------------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Starts a process whose output goes to <dir>/<name>.log (printed if the test fails). */
function start(name, bin, args, { stdout = false } = {}) {
  const log = createWriteStream(path.join(dir, `${name}.log`));
  const child = spawn(bin, args, {
    env: { ...process.env, A3S_LOG: process.env.A3S_LOG || 'warn' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  child.name = name;
  child.stderr.pipe(log);
  if (!stdout) child.stdout.pipe(log);
  child.on('error', (e) => log.write(`spawn failed: ${e.message}\n`));
  children.push(child);
  return child;
}

async function until(what, check, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function lineOf(child, re) {
  return new Promise((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      const m = buf.match(re);
      if (m) resolve(m[1]);
    });
    child.on('exit', (code) => reject(new Error(`${child.name} exited (${code}) before printing ${re}`)));
  });
}

async function dashboard(name, port, extra) {
  start(name, A3S, ['dashboard', '--nats', natsUrl, '--prefix', prefix, '--listen', `127.0.0.1:${port}`, ...extra]);
  const base = `http://127.0.0.1:${port}`;
  await until(`${name} /healthz`, async () => (await fetch(`${base}/healthz`)).ok);
  return base;
}

let natsUrl;
const prefix = `dash${process.pid}`;

before(async () => {
  for (const [what, file] of [['a3s-code', A3S], ['the session host', HOST], ['chromium', CHROMIUM]]) {
    assert.ok(existsSync(file), `${what} not found at ${file}`);
  }
  const natsPort = await freePort();
  natsUrl = `nats://127.0.0.1:${natsPort}`;
  start('nats-server', NATS, ['-a', '127.0.0.1', '-p', String(natsPort), '-js', '-sd', path.join(dir, 'js')]);
  await until('nats-server', () => new Promise((resolve) => {
    const s = net.connect(natsPort, '127.0.0.1', () => { s.end(); resolve(true); });
    s.on('error', () => resolve(false));
  }));

  const workspace = path.join(dir, 'workspace');
  mkdirSync(workspace);
  // For the screenshots, a few more sessions (of other tenants) fill the sessions page.
  const extra = process.env.A3S_SCREENSHOT_WARMUP_S ? ['--extra-sessions', '3'] : [];
  const host = start('host', HOST, ['--nats', natsUrl, '--prefix', prefix, '--workspace', workspace, ...extra], { stdout: true });
  const [adminPort, readOnlyPort, tokensPort, evilPort] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  [sessionId, admin, readOnly, withTokens] = await Promise.all([
    lineOf(host, /SESSION_ID=(\S+)/),
    dashboard('dashboard', adminPort, []),
    dashboard('dashboard-read-only', readOnlyPort, ['--read-only']),
    dashboard('dashboard-tokens', tokensPort, ['--token', 'alice=alice-secret-1']),
  ]);
  for (const i of [1, 2]) {
    start(`worker-${i}`, A3S, ['worker', '--nats', natsUrl, '--prefix', prefix, '--session-id', sessionId,
      '--workspace', workspace, '--allow-bash', '--concurrency', '8']);
  }
  // Another site (localhost is not 127.0.0.1's site): a page with no CSP of its own.
  const server = http.createServer((_, res) => res.end('<!doctype html><title>elsewhere</title>'));
  await new Promise((r) => server.listen(evilPort, '127.0.0.1', r));
  server.unref();
  evil = `http://localhost:${evilPort}`;

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  });
});

after(async () => {
  if (browser) await browser.close();
  for (const c of children.reverse()) c.kill('SIGKILL');
  if (failed) {
    for (const c of children) {
      const file = path.join(dir, `${c.name}.log`);
      if (existsSync(file)) console.error(`--- ${c.name} (last lines) ---\n${readFileSync(file, 'utf8').split('\n').slice(-30).join('\n')}`);
    }
    console.error(`logs kept in ${dir}`);
  } else {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ----- the page -------------------------------------------------------------------------------

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.evaluate(() => document.querySelectorAll('.toast').forEach((t) => t.remove()));
  await page.screenshot({ path: path.join(SHOTS, `dashboard-${name}.png`) });
}

/** A figure of a lane's row, as the page shows it now. */
function lane(page, name, field) {
  return page.locator(`tr[data-lane="${name}"] [data-field="${field}"]`).first().textContent({ timeout: WAIT }).then(Number);
}

async function confirm(page) {
  await page.locator('#confirm').waitFor({ state: 'visible' });
  await page.click('#confirm-ok');
}

function step(name, fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (e) {
      failed = true;
      throw e;
    }
  };
}

test('the dashboard shows and steers a live session', { timeout: 240_000 }, async (t) => {
  const context = await browser.newContext({ viewport: { width: 1360, height: 860 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const sessionUrl = (query = '') => `${admin}/#/session/${encodeURIComponent(sessionId)}${query}`;

  await t.test('sessions list the running session; its lanes fill while tasks run', step('fill', async () => {
    await page.goto(`${admin}/`);
    await page.locator(`tr[data-session="${sessionId}"]`).waitFor({ timeout: WAIT });
    await page.goto(sessionUrl());
    await until('the Execute lane running tasks', async () => (await lane(page, 'execute', 'in_flight')) > 0);
    await until('Query tasks done', async () => (await lane(page, 'query', 'processed')) > 5);
    await page.locator('tr[data-worker]').first().waitFor({ timeout: WAIT });
    const warmup = Number(process.env.A3S_SCREENSHOT_WARMUP_S || 0);
    if (SHOTS && warmup) await page.waitForTimeout(warmup * 1000);
    await shot(page, 'session');
    await page.goto(`${admin}/`);
    await page.locator(`tr[data-session="${sessionId}"]`).waitFor();
    await shot(page, 'sessions');
    await page.goto(`${admin}/#/workers`);
    await until('two workers', async () => (await page.locator('tr[data-worker]').count()) >= 2);
    await shot(page, 'workers');
  }));

  await t.test('pausing Query stops its dispatch: in flight drains to 0, the backlog grows', step('pause', async () => {
    await page.goto(sessionUrl());
    await page.locator('tr[data-lane="query"] button[data-action="pause"]').click();
    await confirm(page);
    await page.locator('tr[data-lane="query"][data-paused="true"]').waitFor({ timeout: WAIT });
    await until('Query in flight at 0 with a backlog', async () =>
      (await lane(page, 'query', 'in_flight')) === 0 && (await lane(page, 'query', 'pending')) >= 3);
    const [pending, processed] = [await lane(page, 'query', 'pending'), await lane(page, 'query', 'processed')];
    await until('the backlog growing', async () => (await lane(page, 'query', 'pending')) >= pending + 5);
    assert.equal(await lane(page, 'query', 'in_flight'), 0, 'nothing dispatched while paused');
    assert.equal(await lane(page, 'query', 'processed'), processed, 'nothing done while paused');
    assert.equal(await page.locator('tr[data-lane="control"] button').count(), 0, 'Control has no pause button');
    await shot(page, 'paused');

    await page.locator('tr[data-lane="query"] button[data-action="resume"]').click();
    await confirm(page);
    await page.locator('tr[data-lane="query"][data-paused="false"]').waitFor({ timeout: WAIT });
    const backlog = await lane(page, 'query', 'pending');
    await until('the backlog draining', async () => (await lane(page, 'query', 'processed')) > processed
      && (await lane(page, 'query', 'pending')) < Math.max(backlog, 5));
  }));

  await t.test('a retried dead letter runs again as a new task and completes', step('retry', async () => {
    await page.goto(sessionUrl('?tab=dead'));
    const row = page.locator('tr[data-letter]').first();
    await row.waitFor({ timeout: WAIT });
    await shot(page, 'dead-letters');
    const letter = await row.getAttribute('data-letter');
    // An unfolded payload stays unfolded when the live view redraws the table.
    await page.locator(`tr[data-letter="${letter}"] details summary`).click();
    await page.evaluate((key) => { document.querySelector(`details[data-key="${key}"]`).drawn = 'before'; }, `letter-${letter}`);
    await page.waitForFunction((key) => {
      const d = document.querySelector(`details[data-key="${key}"]`);
      return d && d.drawn !== 'before';
    }, `letter-${letter}`, { timeout: WAIT });
    assert.ok(await page.locator(`details[data-key="letter-${letter}"]`).evaluate((d) => d.open), 'still unfolded');
    await page.locator(`tr[data-letter="${letter}"] button[data-action="retry"]`).click();
    await confirm(page);
    const toast = await page.locator('.toast', { hasText: 'retried as' }).textContent({ timeout: WAIT });
    const retried = toast.replace('retried as', '').trim();
    assert.ok(retried && retried !== letter, toast);
    await page.locator(`tr[data-letter="${letter}"]`).waitFor({ state: 'detached', timeout: WAIT });
    await page.goto(sessionUrl(`?tab=finished&search=${encodeURIComponent(retried)}`));
    const done = page.locator(`tr[data-task="${retried}"]`);
    await page.locator(`tr[data-task="${retried}"][data-outcome="completed"]`).waitFor({ timeout: WAIT });
    const retryOf = await done.locator('[data-field="retry_of"] span').getAttribute('title');
    assert.equal(retryOf, letter, 'the new task names the letter it retries');
    await shot(page, 'retried');
  }));

  await t.test('a dead letter is deleted, then all are purged', step('delete', async () => {
    await page.goto(sessionUrl('?tab=dead'));
    const row = page.locator('tr[data-letter]').first();
    await row.waitFor({ timeout: WAIT });
    const letter = await row.getAttribute('data-letter');
    await page.locator(`tr[data-letter="${letter}"] button[data-action="delete"]`).click();
    await confirm(page);
    await page.locator(`tr[data-letter="${letter}"]`).waitFor({ state: 'detached', timeout: WAIT });
    const left = await page.locator('tr[data-letter]').count();
    await page.locator('button[data-action="purge"]').click();
    await confirm(page);
    const toast = await page.locator('.toast', { hasText: 'purged' }).textContent({ timeout: WAIT });
    assert.ok(Number.parseInt(toast, 10) >= left, toast);
    const view = await (await fetch(`${admin}/api/sessions/${encodeURIComponent(sessionId)}`)).json();
    assert.ok(view.dead_letters <= 1, `purged (a new one may have died since): ${view.dead_letters}`);
  }));

  await t.test('a running bash task is cancelled', step('cancel', async () => {
    await page.goto(sessionUrl('?tab=in_flight'));
    const running = page.locator('tr[data-task][data-state="in_flight"]', { hasText: 'sleep 30' }).first();
    await running.waitFor({ timeout: WAIT });
    await shot(page, 'in-flight');
    const id = await running.getAttribute('data-task');
    await page.locator(`tr[data-task="${id}"] button[data-action="cancel"]`).click();
    await confirm(page);
    await page.locator(`tr[data-task="${id}"]`).waitFor({ state: 'detached', timeout: WAIT });
    await page.goto(sessionUrl(`?tab=finished&search=${encodeURIComponent(id)}`));
    await page.locator(`tr[data-task="${id}"][data-outcome="cancelled"]`).waitFor({ timeout: WAIT });
    if (SHOTS) {
      await page.goto(sessionUrl('?tab=finished'));
      await page.locator('tr[data-outcome="cancelled"]').first().waitFor({ timeout: WAIT });
      await shot(page, 'tasks');
    }
  }));

  await t.test('read-only: no action buttons, and every action is refused', step('read-only', async () => {
    const ro = await context.newPage();
    await ro.goto(`${readOnly}/#/session/${encodeURIComponent(sessionId)}?tab=dead`);
    await ro.locator('tr[data-lane="query"]').waitFor({ timeout: WAIT });
    await ro.locator('tr[data-letter]').first().waitFor({ timeout: WAIT });
    assert.equal(await ro.locator('#role').textContent(), 'read-only');
    assert.ok(await ro.locator('#role').isVisible());
    assert.equal(await ro.locator('button[data-action]').count(), 0, 'no action button');
    await ro.goto(`${readOnly}/#/session/${encodeURIComponent(sessionId)}?tab=in_flight`);
    await ro.locator('tr[data-task]').first().waitFor({ timeout: WAIT });
    assert.equal(await ro.locator('button[data-action]').count(), 0, 'no cancel button');
    await ro.close();

    const url = (base) => `${base}/api/sessions/${encodeURIComponent(sessionId)}/actions`;
    const pause = JSON.stringify({ action: 'pause', lane: 'query' });
    const own = { 'Content-Type': 'application/json', 'X-A3S-Dashboard': '1' };
    const refused = async (base, headers, code) => {
      const res = await fetch(url(base), { method: 'POST', headers, body: pause });
      const body = await res.json();
      assert.equal(res.status, 403, JSON.stringify(body));
      assert.equal(body.error.code, code);
    };
    await refused(readOnly, own, 'PermissionDenied');
    await refused(admin, { 'Content-Type': 'application/json' }, 'CrossSiteRequest');
    await refused(admin, { ...own, Origin: evil }, 'CrossSiteRequest');

    // From a page of another site, in the browser: the preflighted request never leaves, the
    // simple one (no custom header) is refused.
    const other = await context.newPage();
    await other.goto(evil);
    const outcome = await other.evaluate(async ({ target, body }) => {
      const out = {};
      try {
        await fetch(target, { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-A3S-Dashboard': '1' }, body });
        out.preflighted = 'sent';
      } catch {
        out.preflighted = 'blocked';
      }
      const res = await fetch(target, { method: 'POST', mode: 'no-cors', headers: { 'Content-Type': 'text/plain' }, body });
      out.simple = res.type;
      return out;
    }, { target: url(admin), body: pause });
    await other.close();
    assert.deepEqual(outcome, { preflighted: 'blocked', simple: 'opaque' });
    const view = await (await fetch(`${admin}/api/sessions/${encodeURIComponent(sessionId)}`)).json();
    assert.equal(view.lanes.find((l) => l.lane === 'query').paused, false, 'nothing paused from elsewhere');
  }));

  await t.test('with tokens, the page asks for one and names who is logged in', step('tokens', async () => {
    const login = await context.newPage();
    await login.goto(`${withTokens}/#/session/${encodeURIComponent(sessionId)}`);
    await login.locator('form.login input').fill('not-the-secret');
    await login.locator('form.login button').click();
    await login.locator('form.login .error-text', { hasText: 'unknown token' }).waitFor({ timeout: WAIT });
    await login.locator('form.login input').fill('alice-secret-1');
    await login.locator('form.login button').click();
    await login.locator('tr[data-lane="query"] button[data-action]').waitFor({ timeout: WAIT });
    assert.match(await login.locator('#who').textContent(), /alice/);
    assert.equal((await fetch(`${withTokens}/api/sessions`)).status, 401, 'no token, no data');
    await login.close();
  }));

  assert.deepEqual(errors, [], 'no error in the page');
  await context.close();
});
