/**
 * Length-prefixed framing (protocol.md §1.1; ephemeralml/common/_frame.py).
 *
 * A frame is a 4-byte big-endian length followed by that many bytes of
 * deterministic CBOR. Sans-IO: feed bytes in any chunking (a WebSocket message is
 * exactly one frame, but nothing here relies on that) and take complete frames out.
 */

import { LimitError, LocalProtocolError, RemoteProtocolError } from './errors.js'
import { concat } from './util.js'

/** Hard maximum of one frame's body: a request of 64 texts of 16 KiB sealed, with room. */
export const MAX_FRAME_BYTES = 2 * 1024 * 1024
/** Size of the big-endian length prefix. */
export const FRAME_HEADER_BYTES = 4

/**
 * Prefix `body` with its length. Refuses (locally) to build an oversized or empty frame.
 * @param {Uint8Array} body
 * @param {number} [maxBytes]
 */
export function encodeFrame (body, maxBytes = MAX_FRAME_BYTES) {
  if (body.length > maxBytes) throw new LocalProtocolError(`frame of ${body.length} bytes is over the limit of ${maxBytes}`)
  if (!body.length) throw new LocalProtocolError('refusing to send an empty frame')
  const head = new Uint8Array(4)
  new DataView(head.buffer).setUint32(0, body.length)
  return concat(head, body)
}

/** Reassembles frames from a byte stream (protocol.md §1.1). */
export class FrameDecoder {
  /** @param {{maxBytes?: number}} [options] */
  constructor ({ maxBytes = MAX_FRAME_BYTES } = {}) {
    /** @type {Uint8Array[]} */
    this._chunks = []
    this._size = 0
    this._max = maxBytes
    /** @type {number | null} */
    this._need = null
  }

  /** The largest frame body accepted from now on (check F1). */
  get maxBytes () {
    return this._max
  }

  set maxBytes (value) {
    if (!(Number.isInteger(value) && value > 0 && value <= MAX_FRAME_BYTES)) {
      throw new LocalProtocolError(`frame limit ${value} is not in 1..${MAX_FRAME_BYTES}`)
    }
    this._max = value
  }

  /** @param {Uint8Array} data */
  receiveData (data) {
    if (!(data instanceof Uint8Array)) throw new LocalProtocolError('receiveData takes a Uint8Array')
    if (data.length) {
      this._chunks.push(new Uint8Array(data))
      this._size += data.length
    }
  }

  /** Bytes held that are not yet a complete frame. */
  get buffered () {
    return this._size
  }

  /** @param {number} n */
  _take (n) {
    const all = this._chunks.length === 1 ? this._chunks[0] : concat(...this._chunks)
    const out = all.slice(0, n)
    const rest = all.subarray(n)
    this._chunks = rest.length ? [rest] : []
    this._size = rest.length
    return out
  }

  /**
   * The next complete frame body, or null if more bytes are needed.
   * @returns {Uint8Array | null}
   */
  nextFrame () {
    if (this._need === null) {
      if (this._size < FRAME_HEADER_BYTES) return null
      const head = this._take(FRAME_HEADER_BYTES)
      const n = new DataView(head.buffer).getUint32(0)
      // §1.1 F1: length within the limit, before buffering a body.
      if (n > this._max) {
        this._chunks.unshift(head)
        this._size += FRAME_HEADER_BYTES
        throw new LimitError(`frame of ${n} bytes is over the limit of ${this._max}`)
      }
      // §1.1 F2: no empty frames (every frame is one CBOR map).
      if (n === 0) throw new RemoteProtocolError('empty frame')
      this._need = n
    }
    if (this._size < this._need) return null
    const body = this._take(this._need)
    this._need = null
    return body
  }
}
