// The page: the client protocol in the browser (docs/protocol.md), over the host's
// WebSocket door (§7.2: one whole frame a binary message). Nothing is sent but the
// hello until the enclave's attestation verified against the policy that the local
// `ephemeral web` server handed this page (config.json); the host only relays.
import { checkPlatform, ClientPolicy, ClientSession, EmbedRequest } from '../src/index.js'

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))
/** @type {{ws: string, policy: string, where: string, mock_root: string | null}} */
let config
/** @type {ClientPolicy} */
let policy

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
      ws.onerror = () => reject(Object.assign(new Error(`cannot reach the host at ${url}`), { name: 'TransportError' }))
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
      this.ended = Object.assign(new Error(`the host closed the connection (${c.code}${c.reason ? `: ${c.reason}` : ''})`), { name: 'TransportError' })
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
      throw Object.assign(new Error(`the enclave refused the request: ${ev.code}: ${ev.message}`), { name: 'InferenceError' })
    }
    throw Object.assign(new Error(`unexpected ${ev.type} event`), { name: 'RemoteProtocolError' })
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
  $('embed').setAttribute('disabled', '')
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
    $('embed').removeAttribute('disabled')
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
    $('embed').removeAttribute('disabled')
    setStatus(`ready: the enclave behind ${config.ws} is verified before any text leaves this page`, 'ready')
  } catch (e) {
    refuse(e)
  }
}

start()
