/**
 * Message types (protocol.md §2; ephemeralml/common/_messages.py).
 *
 * Every frame body is the deterministic CBOR of one map with a text key "t".
 * Each message is a frozen object checked when built; `fromMap` parses an
 * untrusted decoded map and throws only our errors, with Python's messages.
 */

import { decodeDeterministic, encode } from './cbor.js'
import { LimitError, RemoteProtocolError } from './errors.js'
import { CborFloat, isInt, pyRepr, pySlice, pySorted, pyStrList, utf8 } from './util.js'

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
  list: Array.isArray,
  float: (/** @type {unknown} */ x) => x instanceof CborFloat
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
 * Enclave → client: chunk `k` of the streamed answer to request `seq` (§2.8).
 * @param {number | bigint} seq
 * @param {number | bigint} k
 * @param {Uint8Array} ciphertext
 */
export function sealedChunk (seq, k, ciphertext) {
  if (seq < 0 || k < 0) throw new RemoteProtocolError('chunk: negative seq or k')
  return Object.freeze({ t: 'chunk', seq, k, ciphertext })
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
    case 'chunk': return encode(new Map([['t', 'chunk'], ['seq', msg.seq], ['k', msg.k], ['ct', msg.ciphertext]]))
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
  chunk: (m) => {
    exactKeys(m, new Set(['t', 'seq', 'k', 'ct']), 'chunk')
    return sealedChunk(field(m, 'seq', 'int', 'chunk'), field(m, 'k', 'int', 'chunk'), field(m, 'ct', 'bytes', 'chunk'))
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
    return EmbedRequest.fromMap(m)
  }

  /** @param {Map<any, any>} m */
  static fromMap (m) {
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

// ---------------------------------------------------------------------------
// Streamed generation (§2.8)

/**
 * Messages in one chat request, and UTF-8 bytes of its prompt or of all its
 * messages' contents together: far beyond any model's context, so that only a
 * hostile request meets them (Python `MAX_MESSAGES`, `MAX_PROMPT_BYTES`).
 */
export const MAX_MESSAGES = 256
export const MAX_PROMPT_BYTES = 256 * 1024
/** Chat roles a request may use. */
export const CHAT_ROLES = Object.freeze(new Set(['system', 'user', 'assistant']))
/** How a stream ended: a stop token or sequence, max_tokens or the context, the client's cancel. */
export const FINISH_REASONS = Object.freeze(new Set(['stop', 'length', 'cancelled']))

/**
 * The plaintext of a sealed generate request (§2.8): `{op: "generate", model,
 * max_tokens, messages | prompt}` and the sampling keys `temperature`, `top_p`,
 * `top_k`, `seed`, `stop` only when they differ from greedy decoding (temperature
 * 0.0, top_p 1.0, top_k 0, no seed, no stop): one encoding per request. The two
 * floats always travel as CBOR floats (1.0 is never the integer 1). Their ranges are
 * the enclave's to check (a sealed `inference` refusal).
 */
export class GenerateRequest {
  /**
   * @param {string} model
   * @param {number} maxTokens
   * @param {{messages?: {role: string, content: string}[] | null, prompt?: string | null, temperature?: number,
   *   topP?: number, topK?: number, seed?: number | null, stop?: string[]}} options exactly one of messages and prompt
   */
  constructor (model, maxTokens, { messages = null, prompt = null, temperature = 0, topP = 1, topK = 0, seed = null, stop = [] } = {}) {
    if (typeof model !== 'string') throw new TypeError('GenerateRequest(model: string, maxTokens: number, {messages | prompt})')
    if ((messages === null) === (prompt === null)) {
      throw new RemoteProtocolError('a generate request has messages or a prompt, not both')
    }
    if (!isInt(maxTokens)) throw new RemoteProtocolError('generate max_tokens must be an integer')
    let size
    if (messages !== null) {
      if (!Array.isArray(messages)) throw new TypeError('messages: {role, content}[]')
      if (!messages.length) throw new RemoteProtocolError('a chat needs at least one message')
      if (messages.length > MAX_MESSAGES) throw new LimitError(`${messages.length} messages; the limit is ${MAX_MESSAGES}`)
      for (const x of messages) {
        if (!CHAT_ROLES.has(x.role)) {
          throw new RemoteProtocolError(`message role ${pyRepr(x.role)} is not one of ${pyStrList(pySorted([...CHAT_ROLES]))}`)
        }
        if (typeof x.content !== 'string') throw new RemoteProtocolError('message content must be text')
      }
      size = messages.reduce((n, x) => n + utf8(x.content).length, 0)
    } else {
      if (typeof prompt !== 'string') throw new RemoteProtocolError("generate request field 'prompt' is not str")
      size = utf8(prompt).length
    }
    if (size > MAX_PROMPT_BYTES) throw new LimitError(`the prompt is ${size} bytes; the limit is ${MAX_PROMPT_BYTES}`)
    for (const [name, value] of [['temperature', temperature], ['top_p', topP]]) {
      if (typeof value !== 'number') throw new RemoteProtocolError(`generate ${name} must be a float`)
    }
    if (!isInt(topK)) throw new RemoteProtocolError('generate top_k must be an integer')
    if (seed !== null && !isInt(seed)) throw new RemoteProtocolError('generate seed must be an integer')
    if (!Array.isArray(stop) || !stop.every((x) => typeof x === 'string')) {
      throw new RemoteProtocolError('generate stop must be a list of text')
    }
    this.model = model
    this.maxTokens = maxTokens
    this.messages = messages === null ? null : Object.freeze(messages.map((x) => Object.freeze({ role: x.role, content: x.content })))
    this.prompt = prompt
    this.temperature = temperature
    this.topP = topP
    this.topK = topK
    this.seed = seed
    this.stop = Object.freeze([...stop])
    Object.freeze(this)
  }

  /**
   * The sampling keys that differ from their greedy defaults, with their wire values.
   * @returns {[string, any][]}
   */
  _sampling () {
    /** @type {[string, any][]} */
    const out = []
    if (this.temperature !== 0) out.push(['temperature', new CborFloat(this.temperature)])
    if (this.topP !== 1) out.push(['top_p', new CborFloat(this.topP)])
    if (this.topK !== 0) out.push(['top_k', this.topK])
    if (this.seed !== null) out.push(['seed', this.seed])
    if (this.stop.length) out.push(['stop', [...this.stop]])
    return out
  }

  /** The bytes sealed, whose SHA-256 is the receipt's request_hash. */
  toCbor () {
    /** @type {Map<string, any>} */
    const m = new Map([['op', 'generate'], ['model', this.model], ['max_tokens', this.maxTokens]])
    if (this.messages !== null) m.set('messages', this.messages.map((x) => new Map([['role', x.role], ['content', x.content]])))
    else m.set('prompt', this.prompt)
    for (const [k, v] of this._sampling()) m.set(k, v)
    return encode(m)
  }

  /**
   * Parse a decoded generate request (Python `GenerateRequest.from_map`).
   * @param {Map<any, any>} m
   */
  static fromMap (m) {
    const what = 'generate request'
    const chat = m.has('messages')
    const optional = ['temperature', 'top_p', 'top_k', 'seed', 'stop']
    const present = optional.filter((k) => m.has(k))
    exactKeys(m, new Set(['op', 'model', 'max_tokens', chat ? 'messages' : 'prompt', ...present]), what)
    let messages = null
    if (chat) {
      const raw = field(m, 'messages', 'list', what)
      if (raw.length > MAX_MESSAGES) throw new LimitError(`${raw.length} messages; the limit is ${MAX_MESSAGES}`)
      messages = raw.map((/** @type {unknown} */ x, /** @type {number} */ i) => {
        if (!(x instanceof Map)) throw new RemoteProtocolError(`message ${i} is not a map`)
        exactKeys(x, new Set(['role', 'content']), `message ${i}`)
        return { role: field(x, 'role', 'str', `message ${i}`), content: field(x, 'content', 'str', `message ${i}`) }
      })
    }
    /** @type {Record<string, any>} */
    const opts = {}
    /** @type {[string, string, keyof typeof TYPE_CHECKS][]} */
    const keys = [['temperature', 'temperature', 'float'], ['top_p', 'topP', 'float'], ['top_k', 'topK', 'int'], ['seed', 'seed', 'int'], ['stop', 'stop', 'list']]
    for (const [key, name, typ] of keys) {
      if (m.has(key)) {
        const value = field(m, key, typ, what)
        opts[name] = value instanceof CborFloat ? value.value : value
      }
    }
    const request = new GenerateRequest(field(m, 'model', 'str', what), field(m, 'max_tokens', 'int', what), {
      messages, prompt: chat ? null : field(m, 'prompt', 'str', what), ...opts
    })
    // One encoding per request: a sampling key with its default value is refused.
    const sent = new Set(request._sampling().map(([k]) => k))
    if (present.some((k) => !sent.has(k))) {
      throw new RemoteProtocolError(`generate request carries a default value in ${pyStrList(pySorted(present))} (a key with its default is left out)`)
    }
    return request
  }
}

/**
 * The plaintext of a sealed cancel (§2.8): stop the stream answering request `seq`.
 * It takes a sequence number of its own and has no answer.
 */
export class CancelRequest {
  /** @param {number} seq */
  constructor (seq) {
    this.seq = seq
    Object.freeze(this)
  }

  toCbor () {
    return encode(new Map([['op', 'cancel'], ['seq', this.seq]]))
  }

  /** @param {Map<any, any>} m */
  static fromMap (m) {
    exactKeys(m, new Set(['op', 'seq']), 'cancel request')
    const seq = field(m, 'seq', 'int', 'cancel request')
    if (seq < 0) throw new RemoteProtocolError('cancel request seq is negative')
    return new CancelRequest(seq)
  }
}

/**
 * A sealed request's plaintext, by its `op` (§2.4, §2.8).
 * @param {Uint8Array} data
 * @returns {EmbedRequest | GenerateRequest | CancelRequest}
 */
export function decodeRequest (data) {
  const m = decodeDeterministic(data, { what: 'request' })
  if (!(m instanceof Map)) throw new RemoteProtocolError('request is not a CBOR map')
  const op = m.get('op')
  if (op === 'generate') return GenerateRequest.fromMap(m)
  if (op === 'cancel') return CancelRequest.fromMap(m)
  return EmbedRequest.fromMap(m)
}

/**
 * The end of a streamed answer (§2.8): how it finished, the token counts, and the
 * number and SHA-256 of its chunks. Its CBOR is what the receipt's response_hash
 * covers, so the receipt covers every chunk's exact bytes, in order, through `stream`.
 */
export class GenerateResult {
  /**
   * @param {{model: string, finish: string, chunks: number, stream: Uint8Array, promptTokens: number,
   *   completionTokens: number, device: string}} fields
   */
  constructor ({ model, finish, chunks, stream, promptTokens, completionTokens, device }) {
    if (!FINISH_REASONS.has(finish)) throw new RemoteProtocolError(`result finish ${pyRepr(finish)} is not a finish reason`)
    if (stream.length !== 32) throw new RemoteProtocolError('result stream hash is not 32 bytes')
    if (chunks < 0 || promptTokens < 0 || completionTokens < 0) throw new RemoteProtocolError('result counts must not be negative')
    this.model = model
    this.finish = finish
    this.chunks = chunks
    this.stream = stream
    this.promptTokens = promptTokens
    this.completionTokens = completionTokens
    /** Where the model ran: ONNX Runtime's execution provider, as the enclave signed it. */
    this.device = device
    Object.freeze(this)
  }

  toMap () {
    return new Map([
      ['model', this.model], ['finish', this.finish], ['chunks', this.chunks], ['stream', this.stream],
      ['prompt_tokens', this.promptTokens], ['completion_tokens', this.completionTokens], ['device', this.device]
    ])
  }

  /** The bytes whose SHA-256 is the receipt's response_hash. */
  toCbor () {
    return encode(this.toMap())
  }

  /** @param {unknown} m */
  static fromMap (m) {
    if (!(m instanceof Map)) throw new RemoteProtocolError('result is not a CBOR map')
    exactKeys(m, new Set(['model', 'finish', 'chunks', 'stream', 'prompt_tokens', 'completion_tokens', 'device']), 'result')
    return new GenerateResult({
      model: field(m, 'model', 'str', 'result'),
      finish: field(m, 'finish', 'str', 'result'),
      chunks: field(m, 'chunks', 'int', 'result'),
      stream: field(m, 'stream', 'bytes', 'result'),
      promptTokens: field(m, 'prompt_tokens', 'int', 'result'),
      completionTokens: field(m, 'completion_tokens', 'int', 'result'),
      device: field(m, 'device', 'str', 'result')
    })
  }

  /** @param {Uint8Array} data */
  static fromCbor (data) {
    return GenerateResult.fromMap(decodeDeterministic(data, { what: 'result' }))
  }
}

/**
 * Every chunk's plaintext is padded to a multiple of this many bytes, so that a sealed
 * chunk's size does not tell the host how long its token was (§2.8).
 */
export const CHUNK_PAD_BYTES = 64

/**
 * The plaintext of a chunk: `{"pad": zeros, "text": t}`, `t` not empty, its length a
 * multiple of CHUNK_PAD_BYTES with the shortest padding that fits (§2.8).
 * @param {string} text
 */
export function encodeChunkBody (text) {
  const base = encode(new Map([['pad', new Uint8Array(0)], ['text', text]])).length
  let n = 0
  // A byte string of 24 or more bytes has a head one byte longer (256: two).
  while ((base + n + (n >= 24 ? 1 : 0) + (n >= 256 ? 1 : 0)) % CHUNK_PAD_BYTES !== 0) n++
  return encode(new Map([['pad', new Uint8Array(n)], ['text', text]]))
}

/** @param {Uint8Array} data */
export function decodeChunkBody (data) {
  if (data.length % CHUNK_PAD_BYTES !== 0) {
    throw new RemoteProtocolError(`chunk is not padded to a multiple of ${CHUNK_PAD_BYTES} bytes`)
  }
  const m = decodeDeterministic(data, { what: 'chunk' })
  if (!(m instanceof Map)) throw new RemoteProtocolError('chunk is not a CBOR map')
  exactKeys(m, new Set(['pad', 'text']), 'chunk')
  const text = /** @type {string} */ (field(m, 'text', 'str', 'chunk'))
  field(m, 'pad', 'bytes', 'chunk')
  if (!text) throw new RemoteProtocolError('chunk text is empty')
  const again = encodeChunkBody(text)
  if (again.length !== data.length || !again.every((b, i) => b === data[i])) {
    throw new RemoteProtocolError('chunk padding is not the shortest run of zero bytes')
  }
  return text
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
 * @param {EmbedResult | GenerateResult | null} result
 * @param {Uint8Array | null} receipt
 * @param {RequestError | null} error
 */
export function encodeResponseBody (result, receipt, error) {
  if (error !== null) return encode(new Map([['error', new Map([['code', error.code], ['msg', error.message]])]]))
  if (result === null || receipt === null) throw new TypeError('a response is a result and a receipt, or an error')
  const map = result instanceof GenerateResult
    ? result.toMap()
    : new Map([['model', result.model], ['dim', result.dim], ['n', result.count], ['f32le', result.vectors]])
  return encode(new Map([['result', map], ['receipt', receipt]]))
}

/**
 * @template {typeof EmbedResult | typeof GenerateResult} T
 * @param {Uint8Array} data
 * @param {T} [resultType] GenerateResult for the end of a stream
 * @returns {{result: InstanceType<T>, receipt: Uint8Array} | RequestError}
 */
export function decodeResponseBody (data, resultType = /** @type {T} */ (EmbedResult)) {
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
  const result = /** @type {InstanceType<T>} */ (resultType.fromMap(m.get('result')))
  return { result, receipt: field(m, 'receipt', 'bytes', 'response') }
}
