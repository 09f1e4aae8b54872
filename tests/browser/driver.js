#!/usr/bin/env node
// A real browser as a SIP-over-WebSocket client (RFC 7118) of sipshard.
//
// What it does: opens page.html (JsSIP 3, bundled here with esbuild) in
// Debian's headless Chromium through puppeteer-core, then, each step with
// its own time limit:
//   register    REGISTER through the edge at --ws-url to the registrar
//               behind it (tests/browser/registrar_uas.xml): 200 OK, and the
//               registrar saw a Path (it echoes Path and Contact in its 200);
//   call        INVITE sip:<--callee>@<--domain> to the same SIPp, which
//               answers 180/200; ACK; the browser hangs up (BYE, 200);
//   incoming    a SIPp UAC (uac_to_browser.xml) sends an INVITE to the
//               registered Contact with the Path as its Route, to the address
//               in the Path: the edge must route it to the browser's
//               WebSocket; the page answers (180, 200), the UAC ACKs and
//               hangs up (BYE, 200);
//   unregister  REGISTER with expires=0: 200 OK.
// It checks the signalling only: each step's outcome and the SIP messages
// on the browser's socket, in order (media is fake and never flows). It
// saves screenshot.png, trace.txt (every SIP message on the socket) and
// console.txt (JsSIP's debug log) in --out, prints one line
// `RESULT {...}` (JSON), and exits 0 only if every step passed.
//
// By hand, from tests/browser, with Kamailio as the stand-in edge (what
// the test the_harness_works_with_kamailio_as_the_edge does):
//   bash install.sh --kamailio
//   sipp -sf registrar_uas.xml -i 127.0.0.1 -p 29100 -t u1 -nostdin &
//   kamailio -f kamailio-ws.cfg -DD -E &    # ws: 29080, udp: 29060
//   node driver.js --ws-url ws://127.0.0.1:29080 --out /tmp/browser-run
// Against sipshard, only the URL changes: --ws-url ws://IP:PORT of its
// ws: listener (tests/e2e_browser.rs has the command lines).
// Options (defaults in brackets):
//   --ws-url URL         the edge's WebSocket listener (required)
//   --domain D           the SIP domain of the user and callee [sipshard.test]
//   --user U             the registering user [alice]
//   --callee C           the user the outgoing call goes to [uas]
//   --steps LIST         which steps, in order [register,call,incoming,unregister]
//                        (incoming needs register's Path)
//   --expect-path yes|no whether the registrar must have seen a Path [yes]
//   --uac-local IP:PORT  the SIPp UAC's own address [127.0.0.1:29110]
//   --uac-dest IP:PORT   where the UAC sends its INVITE [the Path's address]
//   --sipp PATH          SIPp [sipp]
//   --chromium PATH      the browser [/usr/bin/chromium]
//   --step-timeout MS    time limit of each step [15000]
//   --out DIR            where the artefacts go [.]
// It is run by tests/e2e_browser.rs, which starts the edge (sipshard, or
// Kamailio as a stand-in) and the registrar; tests/browser/install.sh
// installs Chromium, Node.js and these npm packages.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { parseArgs } = require('node:util');

const HERE = __dirname;

const { values: options } = parseArgs({
  options: {
    'ws-url': { type: 'string' },
    domain: { type: 'string', default: 'sipshard.test' },
    user: { type: 'string', default: 'alice' },
    callee: { type: 'string', default: 'uas' },
    steps: { type: 'string', default: 'register,call,incoming,unregister' },
    'expect-path': { type: 'string', default: 'yes' },
    'uac-local': { type: 'string', default: '127.0.0.1:29110' },
    'uac-dest': { type: 'string' },
    sipp: { type: 'string', default: 'sipp' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    'step-timeout': { type: 'string', default: '15000' },
    out: { type: 'string', default: '.' },
  },
});

const STEP_TIMEOUT = Number(options['step-timeout']);
const OUT = path.resolve(options.out);

function fail(message) {
  throw new Error(message);
}

// `promise`, or a failure naming `what` after `ms`.
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no outcome within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Bundles page.js with JsSIP and copies page.html: the page to open.
function buildPage() {
  require('esbuild').buildSync({
    entryPoints: [path.join(HERE, 'page.js')],
    bundle: true,
    platform: 'browser',
    outfile: path.join(OUT, 'page.bundle.js'),
    logLevel: 'warning',
  });
  fs.copyFileSync(path.join(HERE, 'page.html'), path.join(OUT, 'page.html'));
  return `file://${path.join(OUT, 'page.html')}`;
}

async function launch() {
  const puppeteer = require('puppeteer-core');
  return puppeteer.launch({
    executablePath: options.chromium,
    headless: true, // --headless=new
    args: [
      '--no-sandbox',
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      '--disable-gpu',
      '--no-first-run',
    ],
    timeout: STEP_TIMEOUT,
    protocolTimeout: STEP_TIMEOUT * 2,
  });
}

// The entries of the page's trace for one Call-ID (or one CSeq method), as
// `> INVITE`, `< 200 INVITE`: direction, method or status, CSeq method.
function flow(trace, match) {
  return trace.filter(match).map((m) => {
    const status = m.line.match(/^SIP\/2\.0 (\d{3})/);
    const cseqMethod = m.cseq.split(/\s+/)[1];
    return status ? `${m.direction} ${status[1]} ${cseqMethod}` : `${m.direction} ${cseqMethod}`;
  });
}

// Whether `expected` occurs in `actual` in order (other messages, such as
// a 100 Trying, may come between).
function inOrder(actual, expected) {
  let next = 0;
  for (const entry of actual) {
    if (next < expected.length && entry === expected[next]) {
      next += 1;
    }
  }
  return next === expected.length;
}

// Waits (3 s at most) until the socket has carried `expected` in order
// among the messages `match` selects; returns what it carried. Waits
// because a step's outcome may come before its last message: JsSIP reports
// a call ended when it sends the BYE, not when the 200 comes.
async function expectFlow(page, match, expected, what) {
  const deadline = Date.now() + 3000;
  for (;;) {
    const trace = await page.evaluate(() => window.harness.trace);
    const carried = flow(trace, match);
    if (inOrder(carried, expected)) {
      return carried;
    }
    if (Date.now() > deadline) {
      fail(`${what}: expected ${JSON.stringify(expected)} in order, the socket carried ${JSON.stringify(carried)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

// The URI inside a header value `<sip:...>;params`.
function uriOf(value) {
  const match = value.match(/<([^>]+)>/);
  return match ? match[1] : value.split(';')[0];
}

// The host:port a Path (or any SIP URI) names, 5060 if it names none.
function addressOf(uri) {
  const match = uriOf(uri).match(/^sips?:(?:[^@]*@)?(\[[^\]]+\]|[^:;?]+)(?::(\d+))?/);
  if (!match) {
    fail(`no address in ${uri}`);
  }
  return `${match[1]}:${match[2] || 5060}`;
}

async function stepRegister(page, context) {
  const registered = await withTimeout(
    page.evaluate((args) => window.harness.register(args), {
      wsUrl: options['ws-url'],
      domain: options.domain,
      user: options.user,
    }),
    STEP_TIMEOUT,
    'register',
  );
  if (registered.status !== 200) {
    fail(`register: ${registered.status}`);
  }
  if (options['expect-path'] === 'yes' && registered.paths.length === 0) {
    fail('register: the registrar saw no Path (its 200 echoes the Path it received)');
  }
  await expectFlow(page, (m) => m.cseq.endsWith('REGISTER'), ['> REGISTER', '< 200 REGISTER'], 'register');
  Object.assign(context, registered);
  return { contacts: registered.contacts, paths: registered.paths };
}

async function stepCall(page) {
  const target = `sip:${options.callee}@${options.domain}`;
  const ended = await withTimeout(
    page.evaluate((t) => window.harness.call(t, 500), target),
    STEP_TIMEOUT,
    'call',
  );
  if (ended.endedBy !== 'local') {
    fail(`call: ended by ${ended.endedBy} (${ended.cause}), not by the browser's BYE`);
  }
  const carried = await expectFlow(
    page,
    (m) => m.callId === ended.callId,
    ['> INVITE', '< 180 INVITE', '< 200 INVITE', '> ACK', '> BYE', '< 200 BYE'],
    'call',
  );
  return { target, flow: carried };
}

// Runs the SIPp UAC that calls the browser; resolves with its exit code
// and screen.
function runUac(browserUri, route) {
  const dest = options['uac-dest'] || addressOf(route.split(',')[0]);
  const [ip, port] = options['uac-local'].split(':');
  const args = [
    dest,
    '-sf', path.join(HERE, 'uac_to_browser.xml'),
    '-i', ip, '-p', port, '-m', '1', '-nostdin',
    '-key', 'browser_uri', browserUri,
    '-key', 'path_route', route,
    '-recv_timeout', String(STEP_TIMEOUT), '-timeout', String(Math.ceil(STEP_TIMEOUT / 1000)), '-timeout_error',
    '-trace_err', '-trace_msg',
  ];
  const child = spawn(options.sipp, args, { cwd: OUT, stdio: ['ignore', 'pipe', 'pipe'] });
  let screen = '';
  child.stdout.on('data', (chunk) => { screen += chunk; });
  child.stderr.on('data', (chunk) => { screen += chunk; });
  const done = new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, screen, dest }));
  });
  return { child, done };
}

async function stepIncoming(page, context) {
  if (!context.contacts || context.paths.length === 0) {
    fail('incoming: needs the register step first, and a Path in its 200');
  }
  // What a registrar does: the request goes to the registered Contact,
  // routed through the Path it stored.
  const browserUri = uriOf(context.contacts[0]);
  const route = context.paths.join(', ');
  await page.evaluate(() => window.harness.expectIncoming());
  const uac = runUac(browserUri, route);
  const uacFailed = (sipp) => `incoming: the SIPp UAC to ${sipp.dest} exited ${sipp.code}\n${sipp.screen.slice(-3000)}`;
  // A UAC that fails ends the step at once; one that succeeds, never.
  const uacFailure = uac.done.then((sipp) => (sipp.code === 0 ? new Promise(() => {}) : fail(uacFailed(sipp))));
  try {
    const ended = await withTimeout(
      Promise.race([page.evaluate(() => window.harness.incoming), uacFailure]),
      STEP_TIMEOUT,
      'incoming',
    );
    const sipp = await withTimeout(uac.done, STEP_TIMEOUT, 'incoming: the SIPp UAC');
    if (sipp.code !== 0) {
      fail(uacFailed(sipp));
    }
    if (ended.endedBy !== 'remote') {
      fail(`incoming: ended by ${ended.endedBy} (${ended.cause}), not by the caller's BYE`);
    }
    const carried = await expectFlow(
      page,
      (m) => m.callId === ended.callId,
      ['< INVITE', '> 180 INVITE', '> 200 INVITE', '< ACK', '< BYE', '> 200 BYE'],
      'incoming',
    );
    return { requestUri: browserUri, route, dest: sipp.dest, flow: carried };
  } finally {
    uac.child.kill();
  }
}

async function stepUnregister(page) {
  const result = await withTimeout(page.evaluate(() => window.harness.unregister()), STEP_TIMEOUT, 'unregister');
  if (result.status !== 200) {
    fail(`unregister: ${result.status} ${result.cause}`);
  }
  const registers = ['> REGISTER', '< 200 REGISTER'];
  await expectFlow(page, (m) => m.cseq.endsWith('REGISTER'), [...registers, ...registers], 'unregister');
  return result;
}

const STEPS = { register: stepRegister, call: stepCall, incoming: stepIncoming, unregister: stepUnregister };

// Runs the steps in order, stopping at the first failure.
async function runSteps(page) {
  const context = {};
  const results = [];
  for (const name of options.steps.split(',')) {
    const step = STEPS[name] || fail(`no step ${name}; steps: ${Object.keys(STEPS)}`);
    const started = Date.now();
    try {
      const detail = await step(page, context);
      results.push({ step: name, ok: true, ms: Date.now() - started, detail });
    } catch (error) {
      results.push({ step: name, ok: false, ms: Date.now() - started, error: error.message });
      break;
    }
  }
  return results;
}

// Writes the page's SIP trace and takes the screenshot, whatever happened.
async function saveArtefacts(page) {
  const trace = await withTimeout(page.evaluate(() => window.harness.trace), 5000, 'trace').catch(() => []);
  const text = trace.map((m) => `${m.direction}${m.direction}${m.direction}\n${m.text}`).join('\n');
  fs.writeFileSync(path.join(OUT, 'trace.txt'), text);
  const screenshot = path.join(OUT, 'screenshot.png');
  await withTimeout(page.screenshot({ path: screenshot, fullPage: true }), 10000, 'screenshot');
  return screenshot;
}

async function main() {
  if (!options['ws-url']) {
    fail('--ws-url is required (see the comment at the top of driver.js)');
  }
  fs.mkdirSync(OUT, { recursive: true });
  const url = buildPage();
  const browser = await launch();
  const consoleLog = fs.createWriteStream(path.join(OUT, 'console.txt'));
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1000, height: 700 });
    page.on('console', (message) => consoleLog.write(`${message.type()}: ${message.text()}\n`));
    page.on('pageerror', (error) => consoleLog.write(`pageerror: ${error.message}\n`));
    await withTimeout(page.goto(url), STEP_TIMEOUT, 'loading the page');
    const steps = await runSteps(page);
    await withTimeout(page.evaluate((s) => window.harness.report(s), steps), 5000, 'report');
    const screenshot = await saveArtefacts(page);
    const ok = steps.every((s) => s.ok) && steps.length === options.steps.split(',').length;
    process.stdout.write(`RESULT ${JSON.stringify({ ok, wsUrl: options['ws-url'], steps, screenshot })}\n`);
    return ok;
  } finally {
    consoleLog.end();
    await withTimeout(browser.close(), 10000, 'closing the browser').catch(() => browser.process()?.kill('SIGKILL'));
  }
}

main().then(
  (ok) => process.exit(ok ? 0 : 1),
  (error) => {
    process.stdout.write(`RESULT ${JSON.stringify({ ok: false, error: error.message })}\n`);
    process.exit(2);
  },
);
