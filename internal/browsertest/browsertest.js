// The JS side of nbsecrets' browser harness (see doc.go). A driver script
// does:
//
//   const bt = require('browsertest');
//   bt.main(async ({ page, args, screenshot, log }) => {
//     await page.goto(args.url);
//     ...
//     bt.event('ready', { x: 1 });     // Driver.WaitEvent("ready") in Go
//     const msg = await bt.receive();  // what Go's Driver.Send wrote
//     return { anything: 'JSON' };   // handed to the Go test as the result
//   });
//
// The Go side puts this directory and its node_modules on NODE_PATH, and
// passes the browser's path, the screenshot dir and the test's arguments
// (JSON) in the environment. main launches a headless chromium, opens one
// page, runs the function, prints its result on one line marked
// RESULT_MARK, and closes the browser; on an error it takes a screenshot
// ("failure.png"), prints the error and exits 1.
'use strict';

const readline = require('readline');
const path = require('path');
const { chromium } = require('playwright-core');

const RESULT_MARK = 'NBSECRETS_BROWSERTEST_RESULT ';
const EVENT_MARK = 'NBSECRETS_BROWSERTEST_EVENT ';

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`browsertest: ${name} is not set (run the driver through the Go package)`);
  return v;
}

// log writes a line to stderr, which the Go side logs with the test.
function log(...parts) {
  process.stderr.write(`[${new Date().toISOString()}] ${parts.join(' ')}\n`);
}

async function main(fn) {
  let browser;
  const shotDir = env('NBSECRETS_BROWSERTEST_SCREENSHOTS');
  let page;
  const screenshot = async (name) => {
    if (!page) return '';
    const file = path.join(shotDir, name.endsWith('.png') ? name : name + '.png');
    await page.screenshot({ path: file, fullPage: true });
    log('screenshot', file);
    return file;
  };
  try {
    const args = JSON.parse(env('NBSECRETS_BROWSERTEST_ARGS'));
    const headless = process.env.NBSECRETS_BROWSERTEST_HEADED !== '1';
    const launchArgs = ['--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'];
    if (process.getuid && process.getuid() === 0) launchArgs.push('--no-sandbox');
    browser = await chromium.launch({
      executablePath: env('NBSECRETS_BROWSERTEST_CHROMIUM'),
      headless,
      args: launchArgs,
      timeout: 60000,
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    page = await context.newPage();
    page.on('pageerror', (e) => log('page error:', e.message));
    const result = await fn({ browser, context, page, args, screenshot, log });
    process.stdout.write(RESULT_MARK + JSON.stringify(result === undefined ? null : result) + '\n');
  } catch (e) {
    process.stderr.write(`browsertest driver failed: ${e && e.stack ? e.stack : e}\n`);
    try { await screenshot('failure'); } catch (_) { /* the page may be gone */ }
    process.exitCode = 1;
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (lines) lines.close();
    process.stdin.destroy();
  }
}

// event tells the Go test that something happened (Driver.WaitEvent):
// one line on stdout with a name and optional JSON data.
function event(name, data) {
  process.stdout.write(EVENT_MARK + JSON.stringify({ name, data: data === undefined ? null : data }) + '\n');
}

// receive resolves to the next message the Go test sends (Driver.Send),
// parsed from JSON; it rejects when the Go side closes stdin.
let lines;
const pending = [];
const queued = [];
function receive() {
  if (!lines) {
    lines = readline.createInterface({ input: process.stdin });
    lines.on('line', (l) => {
      const msg = JSON.parse(l);
      if (pending.length) pending.shift().resolve(msg); else queued.push(msg);
    });
    lines.on('close', () => { while (pending.length) pending.shift().reject(new Error('browsertest: the test closed stdin')); });
  }
  if (queued.length) return Promise.resolve(queued.shift());
  return new Promise((resolve, reject) => pending.push({ resolve, reject }));
}

// poll calls fn every intervalMs until it returns a truthy value, which it
// returns, or throws what after timeoutMs.
async function poll(fn, timeoutMs, what, intervalMs = 50) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`after ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

module.exports = { main, poll, log, event, receive, RESULT_MARK, EVENT_MARK };
