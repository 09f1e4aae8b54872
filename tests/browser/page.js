// The in-page client of the browser test: a JsSIP user agent on a
// WebSocket, driven step by step by driver.js through `window.harness`.
// Every SIP message on the socket is recorded (`harness.trace`) and its
// first line shown on the page. Bundled with JsSIP by the driver (esbuild).
'use strict';

const JsSIP = require('jssip');

const trace = [];
let ua = null;
let incoming = null;

// Media: a fake microphone (Chromium's --use-fake-device-for-media-stream);
// no STUN or TURN server, so ICE gathering ends at once. Only the
// signalling is checked.
const SESSION_OPTIONS = {
  mediaConstraints: { audio: true, video: false },
  pcConfig: { iceServers: [] },
};

function show(id, text, status) {
  let item = document.getElementById(`step-${id}`);
  if (!item) {
    item = document.createElement('li');
    item.id = `step-${id}`;
    document.getElementById('steps').appendChild(item);
  }
  item.textContent = `${id}: ${text}`;
  item.className = status || '';
}

// One traced SIP message: direction, first line, CSeq and Call-ID.
function record(direction, message) {
  const text = String(message);
  const header = (name) => {
    const match = text.match(new RegExp(`^${name}:\\s*(.*)$`, 'im'));
    return match ? match[1].trim() : '';
  };
  const entry = {
    direction,
    line: text.split('\r\n', 1)[0],
    cseq: header('CSeq'),
    callId: header('Call-ID'),
    text,
  };
  if (entry.line === '') {
    return; // a keep-alive
  }
  trace.push(entry);
  document.getElementById('trace').textContent += `${direction} ${entry.line}  [${entry.cseq}]\n`;
}

// Wraps a JsSIP WebSocket so that every message sent and received is traced.
function tracedSocket(url) {
  const socket = new JsSIP.WebSocketInterface(url);
  const send = socket.send.bind(socket);
  socket.send = (message) => {
    record('>', message);
    return send(message);
  };
  let ondata = null;
  Object.defineProperty(socket, 'ondata', {
    get: () => ondata,
    set: (handler) => {
      ondata = (data) => {
        record('<', data);
        handler(data);
      };
    },
  });
  return socket;
}

// The URIs of a response's header `name` (Contact, Path), in order.
function headerValues(response, name) {
  return response.getHeaders(name).flatMap((value) => value.split(/,(?=\s*<)/)).map((v) => v.trim());
}

// Starts the user agent and registers; resolves with the 200's Contact
// and Path (what the registrar stored), rejects with the failure cause.
function register({ wsUrl, domain, user }) {
  document.getElementById('setup').textContent = `${user}@${domain} on ${wsUrl}`;
  show('register', 'REGISTER sent');
  JsSIP.debug.enable('JsSIP:*');
  ua = new JsSIP.UA({
    sockets: [tracedSocket(wsUrl)],
    uri: `sip:${user}@${domain}`,
    register: true,
    register_expires: 300,
    session_timers: false,
    user_agent: 'sipshard-browser-e2e (JsSIP)',
  });
  ua.on('newRTCSession', ({ originator, session }) => {
    if (originator === 'remote' && incoming) {
      incoming(session);
    }
  });
  return new Promise((resolve, reject) => {
    ua.on('registered', ({ response }) => {
      show('register', `${response.status_code} ${response.reason_phrase}`, 'ok');
      resolve({
        status: response.status_code,
        contacts: headerValues(response, 'Contact'),
        paths: headerValues(response, 'Path'),
        ownContact: ua.contact.uri.toString(),
      });
    });
    ua.on('registrationFailed', ({ cause, response }) => {
      show('register', `failed: ${cause}`, 'failed');
      reject(new Error(`registration failed: ${cause} ${response ? response.status_code : ''}`));
    });
    ua.start();
  });
}

// Follows one session to its end: the responses it saw, who ended it.
function follow(id, session, resolve, reject) {
  const provisional = [];
  session.on('progress', ({ response }) => {
    if (response) {
      provisional.push(response.status_code);
    }
    show(id, `progress ${provisional.join(', ')}`);
  });
  session.on('failed', ({ originator, cause }) => {
    show(id, `failed (${originator}): ${cause}`, 'failed');
    reject(new Error(`${id} failed (${originator}): ${cause}`));
  });
  session.on('confirmed', () => show(id, 'confirmed (200 OK and ACK)'));
  session.on('ended', ({ originator, cause }) => {
    show(id, `ended by ${originator}: ${cause}`, 'ok');
    resolve({ callId: session._request.call_id, provisional, endedBy: originator, cause });
  });
}

// Calls `target`, hangs up `holdMs` after the call is confirmed.
function call(target, holdMs) {
  show('call', `INVITE ${target}`);
  return new Promise((resolve, reject) => {
    const session = ua.call(target, SESSION_OPTIONS);
    follow('call', session, resolve, reject);
    session.on('confirmed', () => setTimeout(() => session.terminate(), holdMs));
  });
}

// Arms the answer to the next incoming call; `harness.incoming` then
// resolves when that call has ended (the caller hangs up).
function expectIncoming() {
  show('incoming', 'waiting for an INVITE');
  window.harness.incoming = new Promise((resolve, reject) => {
    incoming = (session) => {
      incoming = null;
      follow('incoming', session, resolve, reject);
      show('incoming', `INVITE from ${session.remote_identity.uri}, answering`);
      session.answer(SESSION_OPTIONS);
    };
  });
}

// Removes the registration (REGISTER with expires=0).
function unregister() {
  show('unregister', 'REGISTER expires=0 sent');
  return new Promise((resolve) => {
    ua.on('unregistered', ({ response, cause }) => {
      const status = response ? response.status_code : 0;
      show('unregister', status ? `${status} ${response.reason_phrase}` : `${cause}`, status === 200 ? 'ok' : 'failed');
      resolve({ status, cause: cause || null });
    });
    ua.unregister();
  });
}

// Shows the driver's verdict on each step (its checks go beyond what
// JsSIP reports), for the screenshot.
function report(steps) {
  const verdict = document.getElementById('verdict');
  verdict.textContent = steps.map((s) => `${s.ok ? 'PASS' : 'FAIL'} ${s.step} (${s.ms} ms)${s.ok ? '' : `: ${s.error}`}`).join('\n');
  verdict.className = steps.every((s) => s.ok) ? 'ok' : 'failed';
}

window.harness = { register, call, expectIncoming, unregister, report, trace, incoming: null };
