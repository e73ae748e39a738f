/**
 * The client's session state machine, sans-IO (protocol.md §2;
 * ephemeralml/common/_session.py `ClientSession`).
 *
 * It takes bytes in ({@link ClientSession#receiveData}), yields events
 * ({@link ClientSession#nextEvent}) and gives the bytes to send. The page owns
 * the loop that moves them over a WebSocket whose messages are exactly the
 * enclave's frames; nothing here touches a socket or a clock.
 *
 *     client                         enclave
 *     hello(nonce)        ───────▶
 *     attested  ◀───────  attest(doc)      A1–A9, A8, (A11), P1, P2
 *     open(enc)           ───────▶         (dataToSend() after `attested`)
 *     req(seq, ct)        ───────▶
 *     response  ◀───────  resp(seq, ct)    H3, R1–R11
 *
 * A generate request (§2.8) is answered by numbered chunks, then the resp that
 * ends the stream with its receipt:
 *
 *     req(seq, ct{generate}) ────▶
 *     chunk     ◀───────  chunk(seq, k, ct{text})   S1, S2 (k = 0, 1, 2, …)
 *     stream_end ◀──────  resp(seq, ct{result, receipt})   H3, S3, R1–R11
 *     req(seq', ct{cancel seq}) ─▶  (no answer of its own; the stream ends early)
 *
 * The legal order lives in one table; anything out of order, and any error at
 * all, moves the session to `error`, after which every call throws.
 */

import { verifyAttestation } from './attestation.js'
import { EnclaveBinding } from './binding.js'
import { encode } from './cbor.js'
import {
  AttestationError, CiphertextError, EphemeralError, LocalProtocolError, RemoteError, RemoteProtocolError, foreignError
} from './errors.js'
import { FrameDecoder, MAX_FRAME_BYTES, encodeFrame } from './frame.js'
import { ClientChannel } from './hpke.js'
import {
  CancelRequest, EmbedRequest, EmbedResult, GenerateRequest, GenerateResult, NONCE_BYTES, PROTOCOL_VERSION,
  SESSION_MODES, clientHello, decodeChunkBody, decodeMessage, decodeResponseBody, messageToCbor, sealed, sessionOpen
} from './messages.js'
import { ClientPolicy } from './policy.js'
import { CACHED_SESSION_ID, verifySessionProof } from './proof.js'
import { verifyReceipt } from './receipt.js'
import { bytesEqual, concat, sha256 } from './util.js'

/** Requests a client may have in flight in one session. */
export const MAX_OUTSTANDING_REQUESTS = 64
/** Largest frame the client accepts before the attestation verified (§1.1 F3). */
export const MAX_ATTEST_FRAME_BYTES = 64 * 1024

/** Client states (§2.7). */
export const ClientState = Object.freeze({ START: 'start', AWAIT_ATTEST: 'await_attest', READY: 'ready', ERROR: 'error' })

/** Which frames each state accepts from the enclave: the one table of legal order. */
const ACCEPTS = Object.freeze({
  [ClientState.START]: new Set(),
  [ClientState.AWAIT_ATTEST]: new Set(['attest', 'error']),
  [ClientState.READY]: new Set(['resp', 'chunk', 'error']),
  [ClientState.ERROR]: new Set()
})
/** @type {Record<string, string>} Python's class names, for the out-of-order message. */
const CLASS_NAMES = { hello: 'ClientHello', attest: 'ServerAttest', open: 'SessionOpen', req: 'SealedRequest', resp: 'SealedResponse', chunk: 'SealedChunk', error: 'ErrorFrame' }

/**
 * H1: the frame type, session id and sequence number are authenticated.
 * @param {'req' | 'resp'} kind
 * @param {Uint8Array} sessionId
 * @param {number | bigint} seq
 */
export function aad (kind, sessionId, seq) {
  return encode(new Map([['t', kind], ['sid', sessionId], ['seq', seq]]))
}

/**
 * §2.8 S2: a chunk's place (session, answer, number) is authenticated.
 * @param {Uint8Array} sessionId
 * @param {number} seq
 * @param {number} k
 */
export function chunkAad (sessionId, seq, k) {
  return encode(new Map([['k', k], ['t', 'chunk'], ['sid', sessionId], ['seq', seq]]))
}

/**
 * What one chunk adds to its stream's hash (§2.8): `u32be(len) ‖ plaintext`.
 * @param {Uint8Array} plaintext
 */
export function chunkLink (plaintext) {
  const out = new Uint8Array(4 + plaintext.length)
  new DataView(out.buffer).setUint32(0, plaintext.length)
  out.set(plaintext, 4)
  return out
}

/**
 * One streamed answer in progress: the next chunk number, and the links of the
 * chunks so far. Web Crypto has no incremental SHA-256, so the running hash is
 * taken over the links at the end; they are the answer's text, a few KiB.
 */
class Stream {
  constructor () {
    this.nextK = 0
    /** @type {Uint8Array[]} */
    this.links = []
  }

  digest () {
    return sha256(concat(...this.links))
  }
}

/**
 * Events:
 * @typedef {{type: 'attested', attestation: import('./attestation.js').VerifiedAttestation, binding: EnclaveBinding}} Attested
 * @typedef {{type: 'response', seq: number, request: EmbedRequest, result: import('./messages.js').EmbedResult,
 *   receipt: import('./receipt.js').VerifiedReceipt}} ResponseReceived
 * @typedef {{type: 'request_failed', seq: number, code: string, message: string}} RequestFailed
 * @typedef {{type: 'chunk', seq: number, k: number, text: string}} ChunkReceived chunk k of the answer to
 *   request seq, opened in its place; not yet covered by a receipt (that comes with stream_end)
 * @typedef {{type: 'stream_end', seq: number, request: GenerateRequest, result: GenerateResult,
 *   receipt: import('./receipt.js').VerifiedReceipt}} StreamEnded the chunks agree with the end (S3), whose
 *   receipt verified against the session
 */

/** The client's half of one session. */
export class ClientSession {
  /**
   * @param {ClientPolicy} policy the attestation policy and P1/P2
   * @param {{nonce?: Uint8Array, mode?: 'fresh' | 'cached', testing?: {ekm?: Uint8Array}}} [options]
   *   nonce: 32 bytes (random by default); mode: the policy's session_mode by default;
   *   testing.ekm: a fixed HPKE ephemeral IKM, for the conformance vectors only
   */
  constructor (policy, { nonce, mode, testing = {} } = {}) {
    if (!(policy instanceof ClientPolicy)) throw new LocalProtocolError('ClientSession needs a ClientPolicy')
    const m = mode ?? policy.sessionMode
    if (!SESSION_MODES.has(m)) throw new LocalProtocolError(`unknown session mode '${m}'`)
    this.policy = policy
    this.mode = m
    this.nonce = nonce ?? crypto.getRandomValues(new Uint8Array(NONCE_BYTES))
    if (!(this.nonce instanceof Uint8Array) || this.nonce.length !== NONCE_BYTES) {
      throw new LocalProtocolError(`the nonce must be ${NONCE_BYTES} bytes`)
    }
    /** @type {string} */
    this.state = ClientState.START
    /** @type {Uint8Array | null} */
    this.sessionId = null
    /** @type {Uint8Array | null} */
    this.transcriptHash = null
    /** @type {import('./attestation.js').VerifiedAttestation | null} */
    this.attestation = null
    /** @type {EnclaveBinding | null} */
    this.binding = null
    this._testing = testing
    this._decoder = new FrameDecoder({ maxBytes: MAX_ATTEST_FRAME_BYTES })
    /** @type {Uint8Array[]} hello, attest, open: §2.6 */
    this._transcript = []
    /** @type {Uint8Array[]} */
    this._out = []
    /** @type {ClientChannel | null} */
    this._channel = null
    this._nextSeq = 0
    /** @type {Map<number, {request: EmbedRequest | GenerateRequest, requestHash: Promise<Uint8Array>}>} */
    this._pending = new Map()
    /** @type {Map<number, Stream>} */
    this._streams = new Map()
    this._busy = false
    /** @type {Promise<unknown>} seals run one after another, in seq order */
    this._sealing = Promise.resolve()
  }

  /** The hello frame: the first bytes to send. */
  hello () {
    this._expectState(ClientState.START)
    const frame = encodeFrame(messageToCbor(clientHello(PROTOCOL_VERSION, this.nonce, this.mode)))
    this._transcript.push(frame)
    this.state = ClientState.AWAIT_ATTEST
    return frame
  }

  /** Bytes the session wants sent (the `open` frame, once attested). */
  dataToSend () {
    const out = concat(...this._out)
    this._out = []
    return out
  }

  /** Requests sent and not yet answered. */
  get inFlight () {
    return this._pending.size
  }

  /**
   * Seal `request`; returns its sequence number and the frame to send. A
   * {@link GenerateRequest} is answered by `chunk` events, then its `stream_end` (§2.8).
   * @param {EmbedRequest | GenerateRequest} request
   * @returns {Promise<{seq: number, frame: Uint8Array}>}
   */
  async sendRequest (request) {
    this._expectState(ClientState.READY)
    if (!(request instanceof EmbedRequest || request instanceof GenerateRequest)) {
      throw new LocalProtocolError('sendRequest takes an EmbedRequest or a GenerateRequest')
    }
    if (this._pending.size >= MAX_OUTSTANDING_REQUESTS) throw new LocalProtocolError('too many requests in flight')
    const seq = this._nextSeq++
    const body = request.toCbor()
    // Nothing is awaited before the seal is queued: seals keep the order of the calls.
    this._pending.set(seq, { request, requestHash: sha256(body) })
    if (request instanceof GenerateRequest) this._streams.set(seq, new Stream())
    return { seq, frame: await this._seal(seq, body) }
  }

  /**
   * The frame that asks the enclave to stop the stream answering `seq` (§2.8). The
   * stream still ends with its `stream_end` and receipt (finish "cancelled", unless
   * it finished first); the cancel takes the next sequence number and has no answer.
   * @param {number} seq
   * @returns {Promise<Uint8Array>}
   */
  async cancel (seq) {
    this._expectState(ClientState.READY)
    if (!this._streams.has(seq)) throw new LocalProtocolError(`request ${seq} is no stream in flight`)
    const own = this._nextSeq++
    return this._seal(own, new CancelRequest(seq).toCbor())
  }

  /**
   * Seal `body` as request `seq`; seals run one after another, in seq order (H2).
   * @param {number} seq
   * @param {Uint8Array} body
   */
  async _seal (seq, body) {
    const channel = /** @type {ClientChannel} */ (this._channel)
    const sid = /** @type {Uint8Array} */ (this.sessionId)
    const sealing = this._sealing.then(() => channel.sealRequest(seq, body, aad('req', sid, seq)))
    this._sealing = sealing.catch(() => {})
    try {
      const ct = await sealing
      return encodeFrame(messageToCbor(sealed('req', seq, ct)))
    } catch (e) {
      this.state = ClientState.ERROR
      throw foreignError(e, 'sealing a request')
    }
  }

  /** @param {Uint8Array} data bytes from the enclave (one WebSocket message, or any part of the stream) */
  receiveData (data) {
    if (this.state === ClientState.ERROR) throw new LocalProtocolError('session already failed')
    this._decoder.receiveData(data)
  }

  /**
   * Process at most one frame. `now` is when attestation is checked (a Date or
   * ms since the epoch). Returns null when more bytes are needed.
   * @param {{now: Date | number}} options
   * @returns {Promise<Attested | ResponseReceived | RequestFailed | ChunkReceived | StreamEnded | null>}
   */
  async nextEvent ({ now }) {
    if (this.state === ClientState.ERROR) throw new LocalProtocolError('session already failed')
    if (this._busy) throw new LocalProtocolError('nextEvent is already running; await it first')
    this._busy = true
    try {
      const frame = this._decoder.nextFrame()
      if (frame === null) return null
      const msg = decodeMessage(frame)
      if (!ACCEPTS[this.state].has(msg.t)) {
        throw new RemoteProtocolError(`unexpected ${CLASS_NAMES[msg.t]} in state ${this.state}`)
      }
      if (msg.t === 'error') throw new RemoteError(msg.code, msg.message)
      if (msg.t === 'attest') return await this._onAttest(frame, msg, now)
      if (msg.t === 'chunk') return await this._onChunk(msg)
      return await this._onResponse(msg)
    } catch (e) {
      this.state = ClientState.ERROR
      // Whatever a library threw on the peer's bytes still ends as one of ours.
      throw e instanceof EphemeralError ? e : foreignError(e, "enclave's frame")
    } finally {
      this._busy = false
    }
  }

  /**
   * @param {Uint8Array} frame
   * @param {any} msg
   * @param {Date | number} now
   * @returns {Promise<Attested>}
   */
  async _onAttest (frame, msg, now) {
    if (msg.version !== PROTOCOL_VERSION) {
      throw new RemoteProtocolError(`enclave speaks protocol ${msg.version}, not ${PROTOCOL_VERSION}`)
    }
    const cached = this.mode === 'cached'
    // §3 A1–A9; in cached mode the document is not for our nonce (A7 gives way to A11).
    const verified = await verifyAttestation(msg.attestation, this.policy.attestation, { now, nonce: cached ? null : this.nonce })
    const doc = verified.document
    // §3 A8: the document binds an X25519 key and an ephemeralml binding.
    const binding = EnclaveBinding.fromUserData(doc.userData)
    if (binding.protocolVersion !== PROTOCOL_VERSION) {
      throw new AttestationError(`A8 binding: enclave attests protocol ${binding.protocolVersion}, not ${PROTOCOL_VERSION} (downgrade?)`)
    }
    if ((binding.mode === 'mock') !== verified.root.isMock) {
      throw new AttestationError(`A8 binding: a ${binding.mode} enclave under a ${verified.root.isMock ? 'mock' : 'non-mock'} root`)
    }
    let sessionKey
    if (cached) {
      // §3 A11: the proof, signed by the attested receipt key, binds our nonce, the
      // session key and its id.
      if (msg.proof === null || !bytesEqual(binding.sessionId, CACHED_SESSION_ID)) {
        throw new AttestationError('A11 proof: cached mode needs a cached document and a proof')
      }
      const proof = await verifySessionProof(msg.proof, binding, { nonce: this.nonce, attestationSha256: doc.sha256 })
      sessionKey = proof.publicKey
      this.sessionId = proof.sessionId
    } else {
      if (msg.proof !== null || bytesEqual(binding.sessionId, CACHED_SESSION_ID)) {
        throw new AttestationError('A8 binding: a cached attestation in a fresh session')
      }
      if (doc.publicKey === null) throw new AttestationError('A8 binding: the attestation document has no public_key')
      sessionKey = doc.publicKey
      this.sessionId = binding.sessionId
    }
    const channel = await ClientChannel.open(sessionKey, doc.sha256, this._testing)
    // §8 P1, P2: before anything is sent under this attestation.
    this.policy.checkBinding(binding)
    const openFrame = encodeFrame(messageToCbor(sessionOpen(channel.enc)))
    // §2.6: the framed bytes of hello, attest and open.
    this._transcript.push(encodeFrame(frame), openFrame)
    this.transcriptHash = await sha256(concat(...this._transcript))
    this._channel = channel
    this._out.push(openFrame)
    this.attestation = verified
    this.binding = binding
    this.state = ClientState.READY
    this._decoder.maxBytes = MAX_FRAME_BYTES
    return Object.freeze({ type: 'attested', attestation: verified, binding })
  }

  /**
   * @param {any} msg
   * @returns {Promise<ChunkReceived>}
   */
  async _onChunk (msg) {
    const channel = /** @type {ClientChannel} */ (this._channel)
    const stream = typeof msg.seq === 'bigint' ? undefined : this._streams.get(msg.seq)
    if (stream === undefined) throw new CiphertextError(`S1 chunk for answer ${msg.seq}, which is no stream in flight`)
    // §2.8 S1: chunks come numbered 0, 1, 2, ...; a dropped, repeated or reordered
    // one is named here (and a renumbered one cannot open, S2).
    if (msg.k !== stream.nextK) {
      throw new CiphertextError(
        `S1 chunk ${msg.k} of answer ${msg.seq} out of order: expected chunk ${stream.nextK} (dropped, repeated or reordered)`
      )
    }
    const sid = /** @type {Uint8Array} */ (this.sessionId)
    const body = await channel.openChunk(msg.seq, msg.k, msg.ciphertext, chunkAad(sid, msg.seq, msg.k))
    const text = decodeChunkBody(body)
    stream.links.push(chunkLink(body))
    stream.nextK += 1
    return Object.freeze({ type: 'chunk', seq: msg.seq, k: msg.k, text })
  }

  /**
   * @param {any} msg
   * @returns {Promise<ResponseReceived | RequestFailed | StreamEnded>}
   */
  async _onResponse (msg) {
    const channel = /** @type {ClientChannel} */ (this._channel)
    const seq = typeof msg.seq === 'bigint' ? -1 : msg.seq
    const pending = this._pending.get(seq)
    if (pending === undefined) throw new CiphertextError(`response ${msg.seq} answers no request in flight (replay?)`)
    this._pending.delete(seq)
    const stream = this._streams.get(seq)
    this._streams.delete(seq)
    const body = await channel.openResponse(seq, msg.ciphertext, aad('resp', /** @type {Uint8Array} */ (this.sessionId), seq))
    const generate = pending.request instanceof GenerateRequest
    const parsed = decodeResponseBody(body, generate ? GenerateResult : EmbedResult)
    if (!('result' in parsed)) return Object.freeze({ type: 'request_failed', seq, code: parsed.code, message: parsed.message })
    const { result, receipt } = parsed
    if (result.model !== pending.request.model) throw new RemoteProtocolError('response is for a different model than requested')
    if (result instanceof GenerateResult) {
      const s = /** @type {Stream} */ (stream)
      // §2.8 S3: the end counts and hashes the chunks the enclave sent; ours must be
      // the same, so a chunk dropped at the end is caught here.
      if (result.chunks !== s.nextK || !bytesEqual(result.stream, await s.digest())) {
        throw new CiphertextError(
          `S3 the end of answer ${seq} covers ${result.chunks} chunk(s); ${s.nextK} arrived, or not the same (dropped or altered)`
        )
      }
    }
    const request = pending.request
    // §5 R1–R11: the enclave's signed account of this exchange.
    const verified = await verifyReceipt(receipt, /** @type {any} */ (this.attestation), {
      expect: {
        seq,
        sessionId: /** @type {Uint8Array} */ (this.sessionId),
        clientNonce: this.nonce,
        transcriptHash: /** @type {Uint8Array} */ (this.transcriptHash),
        requestHash: await pending.requestHash,
        responseHash: await sha256(result.toCbor()),
        modelId: request.model,
        truncate: request instanceof EmbedRequest && request.truncate,
        inputs: request instanceof EmbedRequest ? request.inputs.length : 0
      }
    })
    if (result instanceof GenerateResult) return Object.freeze({ type: 'stream_end', seq, request, result, receipt: verified })
    return Object.freeze({ type: 'response', seq, request, result, receipt: verified })
  }

  /** @param {string} state */
  _expectState (state) {
    if (this.state !== state) throw new LocalProtocolError(`cannot do that in state ${this.state}`)
  }
}
