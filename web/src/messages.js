/**
 * Message types (protocol.md §2; ephemeralml/common/_messages.py).
 *
 * Every frame body is the deterministic CBOR of one map with a text key "t".
 * Each message is a frozen object checked when built; `fromMap` parses an
 * untrusted decoded map and throws only our errors, with Python's messages.
 */

import { decodeDeterministic, encode } from './cbor.js'
import { LimitError, RemoteProtocolError } from './errors.js'
import { isInt, pyRepr, pySlice, pySorted, pyStrList } from './util.js'

/** The one protocol version this code speaks (bound into the attestation too). */
export const PROTOCOL_VERSION = 1
/** The client's freshness nonce: 256 bits. */
export const NONCE_BYTES = 32
/** Session ids are 128-bit random values chosen by the enclave. */
export const SESSION_ID_BYTES = 16
/** Error frames carry one line of at most this many characters. */
export const MAX_ERROR_MESSAGE_CHARS = 300
/** An X25519 encapsulated key (RFC 9180 §7.1: Nenc = 32). */
const ENC_BYTES = 32
export const SESSION_MODES = new Set(['fresh', 'cached'])

const TYPE_CHECKS = {
  int: isInt,
  bytes: (/** @type {unknown} */ x) => x instanceof Uint8Array,
  str: (/** @type {unknown} */ x) => typeof x === 'string',
  list: Array.isArray
}

/**
 * @param {Map<any, any>} m
 * @param {string} key
 * @param {keyof typeof TYPE_CHECKS} typ
 * @param {string} what
 * @returns {any}
 */
export function field (m, key, typ, what) {
  if (!m.has(key)) throw new RemoteProtocolError(`${what} has no ${pyRepr(key)}`)
  const value = m.get(key)
  if (!TYPE_CHECKS[typ](value)) throw new RemoteProtocolError(`${what} field ${pyRepr(key)} is not ${typ}`)
  return value
}

/**
 * @param {Map<any, any>} m
 * @param {Set<string>} keys
 * @param {string} what
 */
export function exactKeys (m, keys, what) {
  const have = new Set([...m.keys()])
  const extra = [...have].filter((k) => !keys.has(k))
  const missing = [...keys].filter((k) => !have.has(k))
  if (extra.length || missing.length) {
    throw new RemoteProtocolError(
      `${what} has unexpected fields ${pyStrList(pySorted(extra.map(String)))} or lacks ${pyStrList(pySorted(missing))}`
    )
  }
}

/** @param {Map<any, any>} m */
function withoutProof (m) {
  return new Set(m.has('proof') ? ['t', 'v', 'doc', 'proof'] : ['t', 'v', 'doc'])
}

/**
 * Client → enclave: protocol version and a fresh nonce (§2.1).
 * @param {number} version
 * @param {Uint8Array} nonce
 * @param {string} [mode]
 */
export function clientHello (version, nonce, mode = 'fresh') {
  if (nonce.length !== NONCE_BYTES) throw new RemoteProtocolError(`hello nonce must be ${NONCE_BYTES} bytes`)
  if (!SESSION_MODES.has(mode)) throw new RemoteProtocolError(`unsupported session mode ${pyRepr(mode)}`)
  return Object.freeze({ t: 'hello', version, nonce, mode })
}

/**
 * Enclave → client: the attestation document, and in cached mode the proof (§2.2).
 * @param {number} version
 * @param {Uint8Array} attestation
 * @param {Uint8Array | null} [proof]
 */
export function serverAttest (version, attestation, proof = null) {
  return Object.freeze({ t: 'attest', version, attestation, proof })
}

/** @param {Uint8Array} enc */
export function sessionOpen (enc) {
  if (enc.length !== ENC_BYTES) throw new RemoteProtocolError(`open: enc must be ${ENC_BYTES} bytes`)
  return Object.freeze({ t: 'open', enc })
}

/**
 * @param {'req' | 'resp'} t
 * @param {number | bigint} seq
 * @param {Uint8Array} ciphertext
 */
export function sealed (t, seq, ciphertext) {
  if (seq < 0) throw new RemoteProtocolError(`${t}: negative seq`)
  return Object.freeze({ t, seq, ciphertext })
}

/**
 * Either side: the session is over, and why (§6). Not authenticated.
 * @param {string} code
 * @param {string} message
 */
export function errorFrame (code, message) {
  return Object.freeze({
    t: 'error',
    code: pySlice(code, 40),
    message: pySlice(message.split(/\s+/u).filter(Boolean).join(' '), MAX_ERROR_MESSAGE_CHARS)
  })
}

/**
 * The deterministic CBOR of an outer message.
 * @param {any} msg
 */
export function messageToCbor (msg) {
  switch (msg.t) {
    case 'hello': return encode(new Map([['t', 'hello'], ['v', msg.version], ['nonce', msg.nonce], ['mode', msg.mode]]))
    case 'attest': {
      const m = new Map([['t', 'attest'], ['v', msg.version], ['doc', msg.attestation]])
      if (msg.proof !== null) m.set('proof', msg.proof)
      return encode(m)
    }
    case 'open': return encode(new Map([['t', 'open'], ['enc', msg.enc]]))
    case 'req':
    case 'resp': return encode(new Map([['t', msg.t], ['seq', msg.seq], ['ct', msg.ciphertext]]))
    case 'error': return encode(new Map([['t', 'error'], ['code', msg.code], ['msg', msg.message]]))
    default: throw new TypeError(`unknown message ${msg.t}`)
  }
}

/** @type {Record<string, (m: Map<any, any>) => any>} */
const FROM_MAP = {
  hello: (m) => {
    exactKeys(m, new Set(['t', 'v', 'nonce', 'mode']), 'hello')
    return clientHello(field(m, 'v', 'int', 'hello'), field(m, 'nonce', 'bytes', 'hello'), field(m, 'mode', 'str', 'hello'))
  },
  attest: (m) => {
    exactKeys(m, withoutProof(m), 'attest')
    return serverAttest(
      field(m, 'v', 'int', 'attest'),
      field(m, 'doc', 'bytes', 'attest'),
      m.has('proof') ? field(m, 'proof', 'bytes', 'attest') : null
    )
  },
  open: (m) => {
    exactKeys(m, new Set(['t', 'enc']), 'open')
    return sessionOpen(field(m, 'enc', 'bytes', 'open'))
  },
  req: (m) => {
    exactKeys(m, new Set(['t', 'seq', 'ct']), 'req')
    return sealed('req', field(m, 'seq', 'int', 'req'), field(m, 'ct', 'bytes', 'req'))
  },
  resp: (m) => {
    exactKeys(m, new Set(['t', 'seq', 'ct']), 'resp')
    return sealed('resp', field(m, 'seq', 'int', 'resp'), field(m, 'ct', 'bytes', 'resp'))
  },
  error: (m) => {
    exactKeys(m, new Set(['t', 'code', 'msg']), 'error')
    return errorFrame(field(m, 'code', 'str', 'error'), field(m, 'msg', 'str', 'error'))
  }
}

/**
 * Parse one frame body (§1.2, §2).
 * @param {Uint8Array} body
 */
export function decodeMessage (body) {
  const m = decodeDeterministic(body, { what: 'frame' })
  if (!(m instanceof Map)) throw new RemoteProtocolError('frame is not a CBOR map')
  const t = m.has('t') ? m.get('t') : null
  const parse = typeof t === 'string' && Object.hasOwn(FROM_MAP, t) ? FROM_MAP[t] : null
  if (parse === null) throw new RemoteProtocolError(`unknown message type ${pyRepr(t)}`)
  return parse(m)
}

// ---------------------------------------------------------------------------
// Bodies: these travel only inside ciphertext.

/**
 * The plaintext of a sealed request (§2.4): `{op: "embed", model, inputs}` plus
 * `truncate: true` only when the client chooses truncation.
 */
export class EmbedRequest {
  /**
   * @param {string} model
   * @param {string[]} inputs
   * @param {{truncate?: boolean}} [options]
   */
  constructor (model, inputs, { truncate = false } = {}) {
    if (typeof model !== 'string' || !Array.isArray(inputs) || !inputs.every((x) => typeof x === 'string')) {
      throw new TypeError('EmbedRequest(model: string, inputs: string[])')
    }
    this.model = model
    this.inputs = Object.freeze([...inputs])
    this.truncate = Boolean(truncate)
    Object.freeze(this)
  }

  /** The bytes sealed, whose SHA-256 is the receipt's request_hash. */
  toCbor () {
    const m = new Map([['op', 'embed'], ['model', this.model], ['inputs', [...this.inputs]]])
    if (this.truncate) m.set('truncate', true)
    return encode(m)
  }

  /** @param {Uint8Array} data */
  static fromCbor (data) {
    const m = decodeDeterministic(data, { what: 'request' })
    if (!(m instanceof Map)) throw new RemoteProtocolError('request is not a CBOR map')
    const truncate = m.has('truncate')
    exactKeys(m, new Set(['op', 'model', 'inputs', ...(truncate ? ['truncate'] : [])]), 'request')
    if (m.get('op') !== 'embed') throw new RemoteProtocolError(`unknown operation ${pyRepr(m.get('op'))}`)
    if (truncate && m.get('truncate') !== true) throw new RemoteProtocolError('request truncate must be true when present')
    const model = field(m, 'model', 'str', 'request')
    const inputs = field(m, 'inputs', 'list', 'request')
    if (!inputs.every((/** @type {unknown} */ x) => typeof x === 'string')) throw new RemoteProtocolError('request inputs must all be text')
    return new EmbedRequest(model, inputs, { truncate })
  }
}

/** The result part of a response: `count` rows of `dim` little-endian float32. */
export class EmbedResult {
  /**
   * @param {string} model
   * @param {number} dim
   * @param {number} count
   * @param {Uint8Array} vectors
   */
  constructor (model, dim, count, vectors) {
    if (!(dim > 0) || !(count > 0) || BigInt(vectors.length) !== BigInt(dim) * BigInt(count) * 4n) {
      throw new RemoteProtocolError('result shape does not match its data')
    }
    this.model = model
    this.dim = Number(dim)
    this.count = Number(count)
    this.vectors = vectors
    Object.freeze(this)
  }

  /** The bytes whose SHA-256 is the receipt's response_hash. */
  toCbor () {
    return encode(new Map([['model', this.model], ['dim', this.dim], ['n', this.count], ['f32le', this.vectors]]))
  }

  /**
   * The embeddings as `count` Float32Arrays of `dim` values.
   * @returns {Float32Array[]}
   */
  rows () {
    const view = new DataView(this.vectors.buffer, this.vectors.byteOffset, this.vectors.byteLength)
    const out = []
    for (let r = 0; r < this.count; r++) {
      const row = new Float32Array(this.dim)
      for (let c = 0; c < this.dim; c++) row[c] = view.getFloat32((r * this.dim + c) * 4, true)
      out.push(row)
    }
    return out
  }

  /** @param {unknown} m */
  static fromMap (m) {
    if (!(m instanceof Map)) throw new RemoteProtocolError('result is not a CBOR map')
    exactKeys(m, new Set(['model', 'dim', 'n', 'f32le']), 'result')
    return new EmbedResult(
      field(m, 'model', 'str', 'result'),
      field(m, 'dim', 'int', 'result'),
      field(m, 'n', 'int', 'result'),
      field(m, 'f32le', 'bytes', 'result')
    )
  }

  /** @param {Uint8Array} data */
  static fromCbor (data) {
    return EmbedResult.fromMap(decodeDeterministic(data, { what: 'result' }))
  }
}

/** A per-request failure, sealed like a result: the session goes on. */
export class RequestError {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor (code, message) {
    if (Array.from(message).length > MAX_ERROR_MESSAGE_CHARS) throw new LimitError('error message too long')
    this.code = code
    this.message = message
    Object.freeze(this)
  }
}

/**
 * The plaintext of a sealed response: `{result, receipt}` or `{error: {code, msg}}`.
 * @param {EmbedResult | null} result
 * @param {Uint8Array | null} receipt
 * @param {RequestError | null} error
 */
export function encodeResponseBody (result, receipt, error) {
  if (error !== null) return encode(new Map([['error', new Map([['code', error.code], ['msg', error.message]])]]))
  if (result === null || receipt === null) throw new TypeError('a response is a result and a receipt, or an error')
  return encode(new Map([
    ['result', new Map([['model', result.model], ['dim', result.dim], ['n', result.count], ['f32le', result.vectors]])],
    ['receipt', receipt]
  ]))
}

/**
 * @param {Uint8Array} data
 * @returns {{result: EmbedResult, receipt: Uint8Array} | RequestError}
 */
export function decodeResponseBody (data) {
  const m = decodeDeterministic(data, { what: 'response' })
  if (!(m instanceof Map)) throw new RemoteProtocolError('response is not a CBOR map')
  if (m.size === 1 && m.has('error')) {
    const e = m.get('error')
    if (!(e instanceof Map)) throw new RemoteProtocolError('response error is not a map')
    exactKeys(e, new Set(['code', 'msg']), 'response error')
    return new RequestError(
      pySlice(field(e, 'code', 'str', 'response error'), 40),
      pySlice(field(e, 'msg', 'str', 'response error'), MAX_ERROR_MESSAGE_CHARS)
    )
  }
  exactKeys(m, new Set(['result', 'receipt']), 'response')
  return { result: EmbedResult.fromMap(m.get('result')), receipt: field(m, 'receipt', 'bytes', 'response') }
}
