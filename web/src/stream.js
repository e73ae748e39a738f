/**
 * Streamed answers over a transport (protocol.md §2.8; Python's `Session.generate`
 * and `TextStream` in ephemeralml/client/_api.py).
 *
 * {@link ClientSession} is sans-IO; this is the short loop that moves bytes for one
 * generate request. The transport is two functions the page owns: `send(bytes)`
 * (one frame) and `next()`, which resolves with the next bytes from the enclave and
 * rejects once the connection has ended.
 *
 *     const stream = await generate(session, new GenerateRequest(model, 256, {messages}), transport)
 *     for await (const piece of stream) show(piece)   // each chunk opened in its place (S1, S2)
 *     stream.result                                  // text, finish, usage and the verified receipt (S3, R1–R11)
 *
 * A stream that ends without its end frame is a {@link TruncatedError} (S4), never a
 * shorter answer.
 */

import { LocalProtocolError, RemoteError, RemoteProtocolError, TruncatedError, errorFromCode } from './errors.js'
import { GenerateRequest } from './messages.js'
import { ClientSession } from './session.js'

/** Python's event class names, for the message of an event out of place. */
const EVENT_NAMES = /** @type {Record<string, string>} */ ({
  attested: 'Attested',
  response: 'ResponseReceived',
  request_failed: 'RequestFailed',
  chunk: 'ChunkReceived',
  stream_end: 'StreamEnded'
})

/**
 * @typedef {{send: (bytes: Uint8Array) => unknown, next: () => Promise<Uint8Array>}} Transport
 * @typedef {{model: string, text: string, finish: string, promptTokens: number, completionTokens: number,
 *   device: string, receipt: import('./receipt.js').VerifiedReceipt, requestCbor: Uint8Array,
 *   responseCbor: Uint8Array}} Generation a whole streamed answer, with the verified receipt that covers
 *   its every chunk; requestCbor and responseCbor are the bytes whose hashes the receipt signs
 */

/**
 * The answer to one generate request, as it arrives. Iterate (`for await`) for the
 * pieces of text; when the iteration ends, {@link TextStream#result} is the
 * {@link Generation}. Breaking out of the loop leaves the stream in flight: call
 * {@link TextStream#cancel}, then {@link TextStream#finish}, to end it with its receipt.
 */
export class TextStream {
  /**
   * @param {ClientSession} session
   * @param {GenerateRequest} request
   * @param {number} seq
   * @param {Transport} transport
   * @param {() => Date | number} now
   */
  constructor (session, request, seq, transport, now) {
    this.session = session
    this.request = request
    this.seq = seq
    this._transport = transport
    this._now = now
    /** @type {string[]} */
    this._pieces = []
    this._cancelled = false
    /** @type {Generation | null} */
    this.result = null
  }

  /** The text so far (all of it, once {@link TextStream#result} is set). */
  get text () {
    return this._pieces.join('')
  }

  [Symbol.asyncIterator] () {
    return this
  }

  /** @returns {Promise<IteratorResult<string, undefined>>} */
  async next () {
    if (this.result !== null) return { done: true, value: undefined }
    const ev = await this._nextEvent()
    if (ev.type === 'chunk' && ev.seq === this.seq) {
      this._pieces.push(ev.text)
      return { done: false, value: ev.text }
    }
    if (ev.type === 'request_failed' && ev.seq === this.seq) {
      const Refused = errorFromCode(ev.code)
      throw new Refused(`enclave refused the request: ${ev.message}`)
    }
    if (ev.type !== 'stream_end' || ev.seq !== this.seq) {
      throw new RemoteProtocolError(`unexpected ${EVENT_NAMES[ev.type] ?? ev.type} in a stream`)
    }
    const r = ev.result
    this.result = Object.freeze({
      model: r.model,
      text: this.text,
      finish: r.finish,
      promptTokens: r.promptTokens,
      completionTokens: r.completionTokens,
      device: r.device,
      receipt: ev.receipt,
      requestCbor: ev.request.toCbor(),
      responseCbor: r.toCbor()
    })
    return { done: true, value: undefined }
  }

  /**
   * The session's next event, reading from the transport as it needs. A connection
   * that ends, or an error frame (which ends the session), before the end frame is
   * S4: the answer was cut short.
   */
  async _nextEvent () {
    for (;;) {
      let ev
      try {
        ev = await this.session.nextEvent({ now: this._now() })
      } catch (e) {
        if (e instanceof RemoteError) throw this._truncated(e)
        throw e
      }
      if (ev !== null) return ev
      let data
      try {
        data = await this._transport.next()
      } catch (e) {
        throw this._truncated(e)
      }
      this.session.receiveData(data)
    }
  }

  /** @param {unknown} e */
  _truncated (e) {
    const why = e instanceof Error ? e.message : String(e)
    return new TruncatedError(
      `answer ${this.seq} cut short after ${this._pieces.length} chunk(s), without the enclave's end and receipt: ${why}`,
      { cause: e }
    )
  }

  /**
   * Ask the enclave to stop (once); keep iterating, or {@link TextStream#finish}, for
   * the end and its receipt (finish "cancelled", unless the answer was complete first).
   */
  async cancel () {
    if (this.result === null && !this._cancelled) {
      this._cancelled = true
      await this._transport.send(await this.session.cancel(this.seq))
    }
  }

  /**
   * Read the rest of the stream.
   * @returns {Promise<Generation>}
   */
  async finish () {
    for await (const _ of this) { /* the pieces are kept in `text` */ }
    return /** @type {Generation} */ (this.result)
  }
}

/**
 * Send `request` on an open session and return the {@link TextStream} of its answer.
 * @param {ClientSession} session a session in state `ready` (attested, `open` sent)
 * @param {GenerateRequest} request
 * @param {Transport} transport
 * @param {{now?: () => Date | number}} [options] the clock attestation-time checks use
 */
export async function generate (session, request, transport, { now = () => Date.now() } = {}) {
  if (!(session instanceof ClientSession)) throw new LocalProtocolError('generate needs a ClientSession')
  if (!(request instanceof GenerateRequest)) throw new LocalProtocolError('generate takes a GenerateRequest')
  const { seq, frame } = await session.sendRequest(request)
  await transport.send(frame)
  return new TextStream(session, request, seq, transport, now)
}
