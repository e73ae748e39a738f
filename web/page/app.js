// The page: the client protocol in the browser (docs/protocol.md), over the host's
// WebSocket door (§7.2: one whole frame a binary message). Nothing is sent but the
// hello until the enclave's attestation verified against the policy that the local
// `ephemeral web` server handed this page (config.json); the host only relays.
//
// Two modes. Embed: one connection per click, one embed request (§2.4). Chat: one
// session kept open for the conversation; its attestation fills the model selector
// (the binding attests every loaded model, §2.2), each turn is a generate request
// with the whole conversation as its messages, and the answer streams in, each
// piece shown as its sealed chunk opens (§2.8 S1, S2); it counts as an answer only
// once the end and its receipt verified (S3, R1–R11). Any error: the refusal, and
// the turn is taken off the page.
import {
  checkPlatform, ClientPolicy, ClientSession, EmbedRequest, GenerateRequest, LocalProtocolError, generate
} from '../src/index.js'

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))
/** @type {{ws: string, policy: string, where: string, mock_root: string | null}} */
let config
/** @type {ClientPolicy} */
let policy
/** @type {{ch: Channel, session: ClientSession} | null} the chat's attested session; null before the first turn and after any error */
let chat = null
/** @type {{role: string, content: string}[]} the conversation so far: the turns whose answers verified */
let history = []
/** @type {import('../src/stream.js').TextStream | null} the answer streaming now */
let answering = null

/** @param {string} text @param {string} state */
function setStatus (text, state) {
  const s = $('status')
  s.textContent = text
  s.dataset.state = state
}

/** @param {unknown} err */
function refuse (err) {
  const e = err instanceof Error ? err : new Error(String(err))
  const box = $('refusal')
  box.hidden = false
  box.textContent = `REFUSED: ${e.name}: ${e.message}`
  $('results').hidden = true
  $('enclave').hidden = true
  setStatus('refused: no text left this page unsealed, and no answer is shown', 'refused')
}

/** @param {string} name @param {string} message */
const failure = (name, message) => Object.assign(new Error(message), { name })

/** @param {HTMLElement} dl @param {[string, string][]} rows */
function fill (dl, rows) {
  dl.replaceChildren()
  for (const [k, v] of rows) {
    const dt = document.createElement('dt')
    dt.textContent = k
    const dd = document.createElement('dd')
    dd.textContent = v
    dl.append(dt, dd)
  }
}

/** A WebSocket as a queue of binary messages; a close ends it with its reason. */
class Channel {
  /** @param {string} url */
  static open (url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url)
      ws.binaryType = 'arraybuffer'
      const ch = new Channel(ws)
      ws.onopen = () => resolve(ch)
      ws.onerror = () => reject(failure('TransportError', `cannot reach the host at ${url}`))
    })
  }

  /** @param {WebSocket} ws */
  constructor (ws) {
    this.ws = ws
    /** @type {Uint8Array[]} */
    this.queue = []
    /** @type {((m: Uint8Array) => void) | null} */
    this.wake = null
    /** @type {Error | null} */
    this.ended = null
    /** @type {((e: Error) => void) | null} */
    this.fail = null
    ws.onmessage = (m) => {
      const data = new Uint8Array(/** @type {ArrayBuffer} */ (m.data))
      if (this.wake) { const w = this.wake; this.wake = null; this.fail = null; w(data) } else this.queue.push(data)
    }
    ws.onclose = (c) => {
      this.ended = failure('TransportError', `the host closed the connection (${c.code}${c.reason ? `: ${c.reason}` : ''})`)
      if (this.fail) { const f = this.fail; this.wake = null; this.fail = null; f(this.ended) }
    }
  }

  /** @param {Uint8Array} bytes */
  send (bytes) { if (bytes.length) this.ws.send(bytes) }

  /** @returns {Promise<Uint8Array>} */
  next () {
    const m = this.queue.shift()
    if (m) return Promise.resolve(m)
    if (this.ended) return Promise.reject(this.ended)
    return new Promise((resolve, reject) => { this.wake = resolve; this.fail = reject })
  }

  close () { this.ws.close() }
}

/**
 * The next event of `want`'s type, reading from the channel as the session needs.
 * @param {ClientSession} session @param {Channel} ch @param {string} want
 */
async function nextEvent (session, ch, want) {
  for (;;) {
    const ev = await session.nextEvent({ now: new Date() })
    if (ev === null) { session.receiveData(await ch.next()); continue }
    if (ev.type === want) return ev
    if (ev.type === 'request_failed') {
      throw failure('InferenceError', `the enclave refused the request: ${ev.code}: ${ev.message}`)
    }
    throw failure('RemoteProtocolError', `unexpected ${ev.type} event`)
  }
}

/** @param {any} attested */
function showEnclave (attested) {
  const doc = attested.attestation.document
  const root = attested.attestation.root
  const hex = (/** @type {Uint8Array} */ b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')
  /** @type {[string, string][]} */
  const rows = [
    ['module', doc.moduleId],
    ['root', `${root.name} sha256 ${root.fingerprint}${root.isMock ? ' (MOCK)' : ''}`],
    ['document', `sha256 ${doc.sha256Hex}`],
    ['models', [...attested.binding.models.keys()].join(', ')]
  ]
  for (const i of [0, 1, 2, 8]) rows.push([`PCR${i}`, hex(doc.pcrs.get(i))])
  fill($('measurements'), rows)
  $('enclave').hidden = false
}

/** @param {any} ev */
function showResult (ev) {
  const list = $('vectors')
  list.replaceChildren()
  for (const row of ev.result.rows()) {
    const li = document.createElement('li')
    li.textContent = `[${Array.from(row.slice(0, 6), (x) => x.toFixed(4)).join(', ')}, … ${row.length - 6} more] (dimension ${row.length})`
    list.append(li)
  }
  const r = ev.receipt.receipt.toJSON()
  fill($('receipt'), [
    ['receipt id', r.receipt_id], ['session', r.session_id], ['seq', String(r.seq)],
    ['model', `${r.model_id} (digest ${r.model_digest})`], ['request sha256', r.request_hash],
    ['response sha256', r.response_hash], ['attestation', r.attestation_hash], ['mode', r.mode]
  ])
  $('results').hidden = false
}

async function embed () {
  busy(true)
  $('refusal').hidden = true
  $('results').hidden = true
  $('enclave').hidden = true
  const texts = /** @type {HTMLTextAreaElement} */ ($('texts')).value.split('\n').map((t) => t.trim()).filter(Boolean)
  const model = /** @type {HTMLInputElement} */ ($('model')).value.trim()
  /** @type {Channel | null} */
  let ch = null
  try {
    ch = await Channel.open(config.ws)
    const session = new ClientSession(policy, { mode: policy.sessionMode })
    ch.send(session.hello())
    setStatus('verifying the enclave’s attestation…', 'pending')
    const attested = await nextEvent(session, ch, 'attested')
    showEnclave(attested)
    ch.send(session.dataToSend())
    const { frame } = await session.sendRequest(new EmbedRequest(model, texts))
    ch.send(frame)
    setStatus('sealed to the attested enclave; waiting for its answer…', 'pending')
    const ev = await nextEvent(session, ch, 'response')
    showResult(ev)
    setStatus(`VERIFIED: ${texts.length} text(s) embedded by the attested enclave; the receipt verified`, 'verified')
  } catch (e) {
    refuse(e)
  } finally {
    ch?.close()
    busy(false)
  }
}

/**
 * While a request is out, the buttons that would start another (or switch mode) are
 * off; Stop is on only while an answer streams (send() sees to it).
 * @param {boolean} on
 */
function busy (on) {
  for (const id of ['embed', 'send', 'mode-embed', 'mode-chat', 'new-chat']) $(id).toggleAttribute('disabled', on)
  $('chat-model').toggleAttribute('disabled', on || chat === null)
}

// ---- chat ----------------------------------------------------------------------

function dropChat () {
  chat?.ch.close()
  chat = null
}

/** The open chat session, or a new one: hello, the attestation verified, open sent. */
async function openChat () {
  if (chat !== null && chat.ch.ended === null && chat.session.state === 'ready') return chat
  dropChat()
  const ch = await Channel.open(config.ws)
  try {
    const session = new ClientSession(policy, { mode: policy.sessionMode })
    ch.send(session.hello())
    setStatus('verifying the enclave’s attestation…', 'pending')
    const attested = await nextEvent(session, ch, 'attested')
    showEnclave(attested)
    ch.send(session.dataToSend())
    chat = { ch, session }
    fillModels([...attested.binding.models.keys()])
    return chat
  } catch (e) {
    ch.close()
    throw e
  }
}

/** The selector offers every model the enclave attested; the user's pick is kept. @param {string[]} models */
function fillModels (models) {
  const select = /** @type {HTMLSelectElement} */ ($('chat-model'))
  const picked = select.value
  select.replaceChildren(...models.map((m) => {
    const o = document.createElement('option')
    o.value = m
    o.textContent = m
    return o
  }))
  if (models.includes(picked)) select.value = picked
  select.removeAttribute('disabled')
}

/** @param {string} role @param {string} who @param {string} text */
function addTurn (role, who, text) {
  const li = document.createElement('li')
  li.className = 'turn'
  li.dataset.role = role
  const label = document.createElement('div')
  label.className = 'who'
  label.textContent = who
  const body = document.createElement('div')
  body.className = 'text'
  body.textContent = text
  li.append(label, body)
  $('conversation').append(li)
  return li
}

/** @param {HTMLElement} turn @param {import('../src/stream.js').Generation} g */
function showChatReceipt (turn, g) {
  const r = g.receipt.receipt.toJSON()
  const h = document.createElement('h3')
  const badge = document.createElement('span')
  badge.className = 'badge'
  badge.textContent = 'VERIFIED'
  h.append('Receipt ', badge)
  const dl = document.createElement('dl')
  dl.className = 'receipt'
  fill(dl, [
    ['receipt id', r.receipt_id], ['finish', g.finish],
    ['tokens', `${g.promptTokens} prompt + ${g.completionTokens} completion`], ['device', g.device],
    ['session', r.session_id], ['seq', String(r.seq)], ['model', `${r.model_id} (digest ${r.model_digest})`],
    ['request sha256', r.request_hash], ['response sha256', r.response_hash], ['attestation', r.attestation_hash],
    ['mode', r.mode]
  ])
  turn.append(h, dl)
}

/** The whole number in the max-tokens box. */
function maxTokens () {
  const raw = /** @type {HTMLInputElement} */ ($('max-tokens')).value.trim()
  const n = Number(raw)
  if (!/^[0-9]+$/.test(raw) || !Number.isSafeInteger(n) || n < 1) throw failure('ConfigError', `max tokens must be a whole number from 1, not '${raw}'`)
  return n
}

async function send () {
  const box = /** @type {HTMLTextAreaElement} */ ($('message'))
  const text = box.value.trim()
  if (!text || $('send').hasAttribute('disabled')) return
  busy(true)
  $('refusal').hidden = true
  const asked = addTurn('user', 'you', text)
  /** @type {HTMLElement | null} */
  let answer = null
  box.value = ''
  try {
    const n = maxTokens()
    const c = await openChat()
    const model = /** @type {HTMLSelectElement} */ ($('chat-model')).value
    const messages = [...history, { role: 'user', content: text }]
    answer = addTurn('assistant', model, '')
    answer.dataset.state = 'streaming'
    const shown = /** @type {HTMLElement} */ (answer.querySelector('.text'))
    const stream = await generate(c.session, new GenerateRequest(model, n, { messages }), c.ch, { now: () => new Date() })
    answering = stream
    $('stop').removeAttribute('disabled')
    setStatus('sealed to the attested enclave; the answer appears as each sealed chunk opens…', 'streaming')
    for await (const piece of stream) shown.append(piece)
    const g = /** @type {import('../src/stream.js').Generation} */ (stream.result)
    answer.dataset.state = 'verified'
    showChatReceipt(answer, g)
    history = [...messages, { role: 'assistant', content: g.text }]
    setStatus(`VERIFIED: ${model} answered in the attested enclave (finish ${g.finish}, ${g.completionTokens} token(s)); the receipt verified`, 'verified')
  } catch (e) {
    // Nothing of an answer that did not verify stays on the page; the message goes
    // back in the box, and the next turn opens a fresh session.
    asked.remove()
    answer?.remove()
    box.value = text
    dropChat()
    refuse(e)
  } finally {
    answering = null
    $('stop').setAttribute('disabled', '')
    busy(false)
  }
}

function stop () {
  $('stop').setAttribute('disabled', '')
  setStatus('cancelling: the enclave stops before its next step; the end and its receipt follow…', 'streaming')
  // A Stop that races the end finds no stream in flight (LocalProtocolError): the
  // answer is whole. Any other failure ended the session, and the answer's loop reports it.
  answering?.cancel().catch((e) => { if (!(e instanceof LocalProtocolError)) console.warn(e) })
}

function newChat () {
  history = []
  $('conversation').replaceChildren()
  $('refusal').hidden = true
}

/** @param {'embed' | 'chat'} mode */
async function showMode (mode) {
  for (const m of ['embed', 'chat']) {
    $(`${m}-panel`).hidden = m !== mode
    $(`mode-${m}`).setAttribute('aria-pressed', String(m === mode))
  }
  $('refusal').hidden = true
  $('results').hidden = true
  if (mode === 'embed') {
    setStatus(`ready: the enclave behind ${config.ws} is verified before any text leaves this page`, 'ready')
    return
  }
  // Only the hello leaves the page here; the models come with the verified attestation.
  busy(true)
  try {
    await openChat()
    setStatus(`ready to chat: the enclave behind ${config.ws} verified; pick one of its models`, 'ready')
  } catch (e) {
    dropChat()
    refuse(e)
  } finally {
    busy(false)
  }
}

async function start () {
  try {
    await checkPlatform()
    const r = await fetch('config.json', { cache: 'no-store' })
    if (!r.ok) throw new Error(`config.json: HTTP ${r.status}`)
    config = await r.json()
    policy = await ClientPolicy.fromJson(config.policy, {
      where: config.where,
      mockRoot: config.mock_root ?? undefined,
      readRoot: async (p) => new Uint8Array(await (await fetch(p, { cache: 'no-store' })).arrayBuffer())
    })
    $('mock-warning').hidden = !policy.attestation.root.isMock
    $('embed').addEventListener('click', () => { embed() })
    $('mode-embed').addEventListener('click', () => { showMode('embed') })
    $('mode-chat').addEventListener('click', () => { showMode('chat') })
    $('send').addEventListener('click', () => { send() })
    $('stop').addEventListener('click', stop)
    $('new-chat').addEventListener('click', newChat)
    $('message').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); send() }
    })
    busy(false)
    setStatus(`ready: the enclave behind ${config.ws} is verified before any text leaves this page`, 'ready')
  } catch (e) {
    refuse(e)
  }
}

start()
