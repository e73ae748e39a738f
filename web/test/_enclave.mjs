// The enclave's half of a session (ephemeralml/common/_session.py EnclaveSession),
// written for the tests only, out of the library's own pieces: the conformance
// vectors are replayed from both sides, and the page never plays the enclave.
import { encode } from '../src/cbor.js'
import { encodeSign1, sigStructure } from '../src/cose.js'
import { EphemeralError, LocalProtocolError, RemoteError, RemoteProtocolError, foreignError } from '../src/errors.js'
import { FrameDecoder, MAX_FRAME_BYTES, encodeFrame } from '../src/frame.js'
import { EnclaveChannel, deriveKeyPair } from '../src/hpke.js'
import {
  CancelRequest, GenerateRequest, GenerateResult, PROTOCOL_VERSION, RequestError, decodeMessage, decodeRequest,
  encodeChunkBody, encodeResponseBody, errorFrame, messageToCbor, sealedChunk, serverAttest
} from '../src/messages.js'
import { RECEIPT_PCRS } from '../src/receipt.js'
import { aad, chunkAad, chunkLink } from '../src/session.js'
import { concat, fromHex, sha256 } from '../src/util.js'

const MAX_HANDSHAKE_FRAME_BYTES = 4 * 1024
const ACCEPTS = { await_hello: ['hello'], attesting: [], await_open: ['open', 'error'], ready: ['req', 'error'], error: [] }
const NAMES = {
  hello: 'ClientHello', attest: 'ServerAttest', open: 'SessionOpen', req: 'SealedRequest', resp: 'SealedResponse', chunk: 'SealedChunk', error: 'ErrorFrame'
}

/** @param {Uint8Array} seed */
export async function ed25519Signer (seed) {
  const pkcs8 = concat(fromHex('302e020100300506032b657004220420'), seed)
  const key = await crypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, false, ['sign'])
  return async (/** @type {Uint8Array} */ payload, /** @type {Uint8Array} */ kid) => {
    const protectedBytes = encode(new Map([[1, -8], [4, kid]]))
    const sig = new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, key, sigStructure(protectedBytes, payload)))
    return encodeSign1(protectedBytes, payload, sig)
  }
}

export class TestEnclave {
  /**
   * @param {{receiptKeySeed: Uint8Array, models: Map<string, Uint8Array>, keyReleases: Map<string, Uint8Array>,
   *   policyVersion: number, mode: string, pcrs: ReadonlyMap<number, Uint8Array>}} identity
   * @param {{sessionId: Uint8Array, ikmR: Uint8Array}} keys
   */
  constructor (identity, { sessionId, ikmR }) {
    this.identity = identity
    this.sessionId = sessionId
    this.ikmR = ikmR
    this.state = 'await_hello'
    this._decoder = new FrameDecoder({ maxBytes: MAX_HANDSHAKE_FRAME_BYTES })
    this._transcript = []
    this._pending = new Set()
    /** @type {Map<number, {nextK: number, links: Uint8Array[]}>} streams in progress (§2.8) */
    this._streams = new Map()
  }

  async init () {
    this._key = await deriveKeyPair(this.ikmR)
    this._sign = await ed25519Signer(this.identity.receiptKeySeed)
    return this
  }

  get publicKey () {
    return this._key.publicKey
  }

  /** @param {Uint8Array} data */
  receiveData (data) {
    this._decoder.receiveData(data)
  }

  async nextEvent () {
    if (this.state === 'error') throw new LocalProtocolError('session already failed')
    try {
      for (;;) {
        const frame = this._decoder.nextFrame()
        if (frame === null) return null
        const msg = decodeMessage(frame)
        if (!ACCEPTS[this.state].includes(msg.t)) throw new RemoteProtocolError(`unexpected ${NAMES[msg.t]} in state ${this.state}`)
        if (msg.t === 'error') throw new RemoteError(msg.code, msg.message)
        if (msg.t === 'hello') {
          if (msg.version !== PROTOCOL_VERSION) throw new RemoteProtocolError(`client speaks protocol ${msg.version}; this enclave speaks ${PROTOCOL_VERSION}`)
          this._transcript.push(encodeFrame(frame))
          this.nonce = msg.nonce
          this.state = 'attesting'
          return { type: 'hello', nonce: msg.nonce, mode: msg.mode }
        }
        if (msg.t === 'open') {
          this._channel = await EnclaveChannel.open(this._key.pair, msg.enc, this.attestationHash)
          this._transcript.push(encodeFrame(frame))
          this.transcriptHash = await sha256(concat(...this._transcript))
          this.state = 'ready'
          this._decoder.maxBytes = MAX_FRAME_BYTES
          continue
        }
        const body = await this._channel.openRequest(msg.seq, msg.ciphertext, aad('req', this.sessionId, msg.seq))
        const request = decodeRequest(body)
        // §2.8: a cancel takes a seq (it is sealed in order) but has no answer.
        if (request instanceof CancelRequest) return { type: 'cancel', seq: msg.seq, target: request.seq, body }
        this._pending.add(msg.seq)
        if (request instanceof GenerateRequest) this._streams.set(msg.seq, { nextK: 0, links: [] })
        return { type: 'request', seq: msg.seq, body, request, requestHash: await sha256(body) }
      }
    } catch (e) {
      this.state = 'error'
      throw e instanceof EphemeralError ? e : foreignError(e, "client's frame")
    }
  }

  /** @param {Uint8Array} document */
  async attest (document) {
    const frame = encodeFrame(messageToCbor(serverAttest(PROTOCOL_VERSION, document)))
    return this._attested(frame, document)
  }

  /** @param {Uint8Array} document the cached document; a proof for this session goes with it */
  async attestCached (document) {
    const digest = await sha256(document)
    const payload = encode(new Map([['nonce', this.nonce], ['pk', this.publicKey], ['sid', this.sessionId], ['att', digest]]))
    const proof = await this._sign(payload, digest)
    return this._attested(encodeFrame(messageToCbor(serverAttest(PROTOCOL_VERSION, document, proof))), document)
  }

  async _attested (frame, document) {
    this._transcript.push(frame)
    this.attestationHash = await sha256(document)
    this.state = 'await_open'
    return frame
  }

  /**
   * @param {{seq: number, requestHash: Uint8Array, request: import('../src/messages.js').EmbedRequest}} event
   * @param {import('../src/messages.js').EmbedResult} result
   * @param {{modelDigest: Uint8Array, timeMs: number, durationUs: number, receiptId: Uint8Array, truncated: number[]}} r
   * @param {number} documentTimestampMs
   */
  async respond (event, result, r) {
    this._pending.delete(event.seq)
    return this._sealedResult(event, result, r, event.request.truncate, r.truncated)
  }

  /**
   * The next chunk of the stream answering `event`'s generate request (§2.8).
   * @param {{seq: number}} event
   * @param {string} text
   */
  async chunk (event, text) {
    const stream = this._streams.get(event.seq)
    if (!stream) throw new LocalProtocolError(`request ${event.seq} is no stream in progress`)
    const k = stream.nextK
    const body = encodeChunkBody(text)
    const ct = await this._channel.sealChunk(event.seq, k, body, chunkAad(this.sessionId, event.seq, k))
    stream.links.push(chunkLink(body))
    stream.nextK += 1
    return encodeFrame(messageToCbor(sealedChunk(event.seq, k, ct)))
  }

  /**
   * The end of `event`'s stream: the count and hash of the chunks sealed, and the receipt.
   * @param {{seq: number, requestHash: Uint8Array, request: GenerateRequest}} event
   * @param {{finish: string, promptTokens: number, completionTokens: number, device: string, modelDigest: Uint8Array,
   *   timeMs: number, durationUs: number, receiptId: Uint8Array}} r
   */
  async endStream (event, r) {
    const stream = this._streams.get(event.seq)
    if (!stream) throw new LocalProtocolError(`request ${event.seq} is no stream in progress`)
    this._streams.delete(event.seq)
    this._pending.delete(event.seq)
    const result = new GenerateResult({
      model: event.request.model,
      finish: r.finish,
      chunks: stream.nextK,
      stream: await sha256(concat(...stream.links)),
      promptTokens: r.promptTokens,
      completionTokens: r.completionTokens,
      device: r.device
    })
    return this._sealedResult(event, result, r, false, [])
  }

  /**
   * @param {{seq: number, requestHash: Uint8Array}} event
   * @param {import('../src/messages.js').EmbedResult | GenerateResult} result
   * @param {{modelDigest: Uint8Array, timeMs: number, durationUs: number, receiptId: Uint8Array}} r
   * @param {boolean} truncate
   * @param {number[]} truncated
   */
  async _sealedResult (event, result, r, truncate, truncated) {
    const receipt = new Map([
      ['v', 2], ['receipt_id', r.receiptId], ['session_id', this.sessionId], ['seq', event.seq],
      ['model_id', result.model], ['model_digest', r.modelDigest], ['key_release', this.identity.keyReleases.get(result.model)],
      ['request_hash', event.requestHash], ['response_hash', await sha256(result.toCbor())],
      ['attestation_hash', this.attestationHash], ['pcrs', new Map(RECEIPT_PCRS.map((i) => [i, this.identity.pcrs.get(i)]))],
      ['policy_version', this.identity.policyVersion], ['mode', this.identity.mode], ['time_ms', r.timeMs],
      ['duration_us', r.durationUs], ['client_nonce', this.nonce], ['transcript_hash', this.transcriptHash],
      ['truncate', truncate], ['truncated', truncated]
    ])
    const signed = await this._sign(encode(receipt), this.attestationHash)
    const body = encodeResponseBody(result, signed, null)
    return this._sealed(event.seq, body)
  }

  /**
   * @param {{seq: number}} event
   * @param {string} code
   * @param {string} message
   */
  async respondError (event, code, message) {
    this._pending.delete(event.seq)
    this._streams.delete(event.seq)
    const line = message.split(/\s+/u).filter(Boolean).join(' ')
    return this._sealed(event.seq, encodeResponseBody(null, null, new RequestError(code, Array.from(line).slice(0, 300).join(''))))
  }

  async _sealed (seq, body) {
    const ct = await this._channel.sealResponse(seq, body, aad('resp', this.sessionId, seq))
    return encodeFrame(encode(new Map([['t', 'resp'], ['seq', seq], ['ct', ct]])))
  }

  /** @param {EphemeralError} error */
  fail (error) {
    this.state = 'error'
    const f = errorFrame(error.code, error.message)
    return encodeFrame(messageToCbor(f))
  }
}
