/**
 * Attested Execution Receipts (protocol.md §5; ephemeralml/common/_receipt.py).
 *
 * A receipt is a COSE_Sign1 (EdDSA), protected header exactly `{1: -8, 4: kid}`
 * with kid = SHA-256 of the session's attestation document, and a deterministic
 * CBOR payload. The receipt key is bound in that document's user_data, so anyone
 * holding both verifies it offline: the document at its own timestamp, the
 * receipt's time inside the session's lifetime.
 */

import { decodeDeterministic } from './cbor.js'
import { decodeSign1, eddsaKid, verifyEddsa } from './cose.js'
import { EnclaveBinding, MODES } from './binding.js'
import { DecodeError, EphemeralError, ReceiptError, RemoteProtocolError } from './errors.js'
import { NONCE_BYTES, SESSION_ID_BYTES } from './messages.js'
import { CACHED_SESSION_ID } from './proof.js'
import { bytesEqual, isInt, pyRepr, toHex } from './util.js'

/** Version 2 added truncate and truncated; version 1 receipts still verify. */
export const RECEIPT_VERSION = 2
/** A receipt is about 700 bytes; 8 KiB bounds what a verifier parses. */
export const MAX_RECEIPT_BYTES = 8 * 1024
/** The longest a session may live, in seconds (R10). */
export const MAX_SESSION_S = 3600
/** The PCRs a receipt copies: image, kernel, application, EIF signing certificate. */
export const RECEIPT_PCRS = [0, 1, 2, 8]

const KEYS_V1 = ['v', 'receipt_id', 'session_id', 'seq', 'model_id', 'model_digest', 'key_release', 'request_hash',
  'response_hash', 'attestation_hash', 'pcrs', 'policy_version', 'mode', 'time_ms', 'duration_us', 'client_nonce',
  'transcript_hash']
const KEYS_V2 = [...KEYS_V1, 'truncate', 'truncated']
const BYTE_FIELDS = /** @type {[string, number][]} */ ([['receipt_id', 16], ['session_id', SESSION_ID_BYTES],
  ['model_digest', 32], ['key_release', 32], ['request_hash', 32], ['response_hash', 32], ['attestation_hash', 32],
  ['client_nonce', NONCE_BYTES], ['transcript_hash', 32]])

/**
 * @param {Map<any, any>} m
 * @param {string[]} keys
 */
function hasExactly (m, keys) {
  return m.size === keys.length && keys.every((k) => m.has(k))
}

/**
 * @param {Map<any, any>} m
 * @param {string} key
 * @returns {number}
 */
function uint (m, key) {
  const v = m.get(key)
  if (!isInt(v) || v < 0) throw new ReceiptError(`R5 payload: ${key} is not an unsigned integer`)
  return typeof v === 'bigint' ? /** @type {any} */ (v) : v
}

/**
 * @param {Map<any, any>} m
 * @param {string} key
 * @param {number} length
 * @returns {Uint8Array}
 */
function bytesField (m, key, length) {
  const v = m.get(key)
  if (!(v instanceof Uint8Array) || v.length !== length) throw new ReceiptError(`R5 payload: ${key} is not ${length} bytes`)
  return v
}

/** The signed content of a receipt, checked when parsed (R5). Field names as on the wire. */
export class Receipt {
  /** @param {Record<string, any>} f */
  constructor (f) {
    Object.assign(this, f)
    Object.freeze(this)
  }

  /**
   * R5: deterministic CBOR with exactly the fields of its version, each of its type.
   * @param {Uint8Array} data
   */
  static fromCbor (data) {
    let m
    try {
      m = decodeDeterministic(data, { what: 'receipt payload', maxBytes: MAX_RECEIPT_BYTES })
    } catch (e) {
      if (e instanceof RemoteProtocolError) throw new ReceiptError(`R5 payload: ${e.message}`, { cause: e })
      throw e
    }
    if (!(m instanceof Map) || !(hasExactly(m, KEYS_V1) || hasExactly(m, KEYS_V2))) {
      throw new ReceiptError('R5 payload: not a receipt (wrong fields)')
    }
    const version = uint(m, 'v')
    if (hasExactly(m, KEYS_V2) !== (version >= 2)) throw new ReceiptError(`R5 payload: wrong fields for receipt version ${version}`)
    const truncate = m.has('truncate') ? m.get('truncate') : false
    const truncated = m.has('truncated') ? m.get('truncated') : []
    if (typeof truncate !== 'boolean' || !Array.isArray(truncated)) {
      throw new ReceiptError('R5 payload: truncate must be a boolean, truncated a list')
    }
    const pcrs = m.get('pcrs')
    if (!(pcrs instanceof Map) || ![...pcrs.keys()].every(isInt)) throw new ReceiptError('R5 payload: pcrs is not a map of integers to bytes')
    if (typeof m.get('model_id') !== 'string' || typeof m.get('mode') !== 'string') {
      throw new ReceiptError('R5 payload: model_id and mode must be text')
    }
    // In the order Python builds its dataclass: each field's own check first.
    const f = {
      v: version,
      truncate,
      truncated,
      receipt_id: bytesField(m, 'receipt_id', 16),
      session_id: bytesField(m, 'session_id', SESSION_ID_BYTES),
      seq: uint(m, 'seq'),
      model_id: m.get('model_id'),
      model_digest: bytesField(m, 'model_digest', 32),
      key_release: bytesField(m, 'key_release', 32),
      request_hash: bytesField(m, 'request_hash', 32),
      response_hash: bytesField(m, 'response_hash', 32),
      attestation_hash: bytesField(m, 'attestation_hash', 32),
      pcrs,
      policy_version: uint(m, 'policy_version'),
      mode: m.get('mode'),
      time_ms: uint(m, 'time_ms'),
      duration_us: uint(m, 'duration_us'),
      client_nonce: bytesField(m, 'client_nonce', NONCE_BYTES),
      transcript_hash: bytesField(m, 'transcript_hash', 32)
    }
    for (const [name, n] of BYTE_FIELDS) bytesField(m, name, n)
    if (version !== 1 && version !== 2) throw new ReceiptError(`R5 payload: unknown receipt version ${version}`)
    if (version === 1 && (truncate || truncated.length)) throw new ReceiptError('R5 payload: a version 1 receipt has no truncation')
    if (truncated.length && !truncate) throw new ReceiptError('R5 payload: inputs were truncated without truncate')
    if (!truncated.every((i, n) => isInt(i) && i >= 0 && (n === 0 || truncated[n - 1] < i))) {
      throw new ReceiptError('R5 payload: truncated must be ascending input indices')
    }
    if (!MODES.has(f.mode)) throw new ReceiptError(`R5 payload: unknown mode ${pyRepr(f.mode)}`)
    if (!f.model_id) throw new ReceiptError('R5 payload: empty model_id')
    if (pcrs.size !== RECEIPT_PCRS.length || !RECEIPT_PCRS.every((i) => pcrs.has(i)) ||
        ![...pcrs.values()].every((v) => v instanceof Uint8Array && v.length === 48)) {
      throw new ReceiptError(`R5 payload: pcrs must be [${RECEIPT_PCRS.join(', ')}] of 48 bytes each`)
    }
    return new Receipt({ ...f, pcrs: new Map(pcrs), truncated: Object.freeze([...truncated]) })
  }

  get receiptIdHex () {
    return toHex(/** @type {any} */ (this).receipt_id)
  }

  /** A JSON view (bytes as hex, PCR indices as strings), as Python's Receipt.to_json. */
  toJSON () {
    /** @type {Record<string, any>} */
    const out = {}
    const self = /** @type {Record<string, any>} */ (this)
    for (const k of self.v >= 2 ? KEYS_V2 : KEYS_V1) {
      const v = self[k]
      if (v instanceof Uint8Array) out[k] = toHex(v)
      else if (k === 'pcrs') out[k] = Object.fromEntries([...v].sort((a, b) => a[0] - b[0]).map(([i, p]) => [String(i), toHex(p)]))
      else if (typeof v === 'bigint') out[k] = v.toString()
      else if (Array.isArray(v)) out[k] = [...v]
      else out[k] = v
    }
    return out
  }
}

/**
 * What the party that ran the session knows (R11); every field optional.
 * @typedef {{seq?: number, sessionId?: Uint8Array, clientNonce?: Uint8Array, transcriptHash?: Uint8Array,
 *   requestHash?: Uint8Array, responseHash?: Uint8Array, modelId?: string, truncate?: boolean, inputs?: number}} ReceiptExpectations
 */

/** A receipt that passed R1 to R11 against `attestation`. */
export class VerifiedReceipt {
  /**
   * @param {Receipt} receipt
   * @param {Uint8Array} raw
   * @param {import('./attestation.js').VerifiedAttestation} attestation
   * @param {EnclaveBinding} binding
   */
  constructor (receipt, raw, attestation, binding) {
    this.receipt = receipt
    this.raw = raw
    this.attestation = attestation
    this.binding = binding
    Object.freeze(this)
  }
}

/**
 * R1 envelope. @param {Uint8Array} data
 */
function envelope (data) {
  let env
  try {
    env = decodeSign1(data, { what: 'receipt', maxBytes: MAX_RECEIPT_BYTES })
  } catch (e) {
    if (e instanceof RemoteProtocolError) throw new ReceiptError(`R1 envelope: ${e.message}`, { cause: e })
    throw e
  }
  try {
    eddsaKid(env)
  } catch (e) {
    if (e instanceof DecodeError) throw new ReceiptError(`R1 envelope: ${e.message}`, { cause: e })
    throw e
  }
  return env
}

/**
 * The kid of a receipt: which attestation document it needs (reads only the
 * protected header; verifies nothing).
 * @param {Uint8Array} data
 */
export function receiptAttestationHash (data) {
  return /** @type {Uint8Array} */ (envelope(data).protectedMap.get(4))
}

/**
 * Verify a receipt against the *already verified* attestation of its session:
 * R1 to R11 of protocol.md §5 in order; the payload is decoded only after the
 * signature (R4). Does not check the attestation itself, nor the policy's P1/P2.
 * @param {Uint8Array} data
 * @param {import('./attestation.js').VerifiedAttestation} attestation
 * @param {{expect?: ReceiptExpectations}} [options]
 * @returns {Promise<VerifiedReceipt>}
 */
export async function verifyReceipt (data, attestation, { expect } = {}) {
  const env = envelope(data)
  const doc = attestation.document
  // R2: the receipt names this attestation document.
  if (!bytesEqual(env.protectedMap.get(4), doc.sha256)) {
    throw new ReceiptError('R2 attestation: the receipt refers to a different attestation document')
  }
  // R3: the attestation binds a receipt key.
  let binding
  try {
    binding = EnclaveBinding.fromUserData(doc.userData)
  } catch (e) {
    if (e instanceof EphemeralError) throw new ReceiptError(`R3 binding: ${e.message}`, { cause: e })
    throw e
  }
  // R4: signature by that key over the bytes received.
  if (!await verifyEddsa(env, binding.receiptKey)) throw new ReceiptError('R4 signature: the receipt signature does not verify')
  // R5: payload format (decoded only now).
  const r = /** @type {any} */ (Receipt.fromCbor(env.payload))
  // R6: same attestation, session and nonce.
  if (!bytesEqual(r.attestation_hash, doc.sha256)) throw new ReceiptError('R6 session: attestation_hash does not match the document')
  if (!bytesEqual(binding.sessionId, CACHED_SESSION_ID)) {
    // Fresh mode: the document itself names the session and the client's nonce.
    if (!bytesEqual(r.session_id, binding.sessionId)) throw new ReceiptError('R6 session: session_id does not match the attestation')
    if (doc.nonce === null || !bytesEqual(r.client_nonce, doc.nonce)) {
      throw new ReceiptError('R6 session: client_nonce does not match the attestation nonce')
    }
  }
  // Cached mode (§2.2.1): the attested key vouches for session_id and client_nonce,
  // which the session's client checks against its proof (R11).
  // R7: PCRs are the attested ones.
  for (const i of RECEIPT_PCRS) {
    const have = doc.pcrs.get(i)
    if (!have || !bytesEqual(have, r.pcrs.get(i))) throw new ReceiptError(`R7 pcrs: PCR${i} differs from the attestation`)
  }
  // R8: security mode agrees with the binding and the trusted root.
  if (r.mode !== binding.mode) throw new ReceiptError("R8 mode: the receipt's mode differs from the attestation's")
  if ((r.mode === 'mock') !== attestation.root.isMock) {
    throw new ReceiptError(`R8 mode: a ${r.mode} receipt verified under a ${attestation.root.isMock ? 'mock' : 'non-mock'} root`)
  }
  // R9: the model and policy version are the ones the enclave attested.
  const digest = binding.models.get(r.model_id)
  if (!digest || !bytesEqual(digest, r.model_digest)) {
    throw new ReceiptError(`R9 model: ${pyRepr(r.model_id)} with this digest is not attested`)
  }
  const kr = binding.keyReleases.get(r.model_id)
  if (!kr || !bytesEqual(kr, r.key_release)) {
    throw new ReceiptError(`R9 model: key_release for ${pyRepr(r.model_id)} is not the attested one`)
  }
  if (BigInt(r.policy_version) !== BigInt(binding.policyVersion)) {
    throw new ReceiptError('R9 policy: policy_version differs from the attestation')
  }
  // R10: time within the session's lifetime.
  const t = BigInt(r.time_ms)
  const start = BigInt(doc.timestampMs)
  if (!(start <= t && t <= start + BigInt(MAX_SESSION_S * 1000))) {
    throw new ReceiptError("R10 time: receipt time is outside its session's lifetime")
  }
  // R11: what the caller knows.
  if (expect) checkExpectations(r, expect)
  return new VerifiedReceipt(r, new Uint8Array(data), attestation, binding)
}

/**
 * @param {any} r
 * @param {ReceiptExpectations} e
 */
function checkExpectations (r, e) {
  if (e.seq !== undefined && e.seq !== null && BigInt(r.seq) !== BigInt(e.seq)) {
    throw new ReceiptError(`R11 sequence: receipt seq ${r.seq}, expected ${e.seq}`)
  }
  if (e.sessionId && !bytesEqual(r.session_id, e.sessionId)) throw new ReceiptError('R11 session: the receipt names another session')
  if (e.clientNonce && !bytesEqual(r.client_nonce, e.clientNonce)) throw new ReceiptError('R11 session: the receipt names another client nonce')
  if (e.transcriptHash && !bytesEqual(r.transcript_hash, e.transcriptHash)) {
    throw new ReceiptError('R11 transcript: the receipt belongs to a different session transcript')
  }
  if (e.requestHash && !bytesEqual(r.request_hash, e.requestHash)) throw new ReceiptError('R11 request: request_hash does not match the request')
  if (e.responseHash && !bytesEqual(r.response_hash, e.responseHash)) {
    throw new ReceiptError('R11 response: response_hash does not match the response')
  }
  if (e.modelId !== undefined && e.modelId !== null && r.model_id !== e.modelId) {
    throw new ReceiptError(`R11 model: receipt is for ${pyRepr(r.model_id)}, expected ${pyRepr(e.modelId)}`)
  }
  if (e.truncate !== undefined && e.truncate !== null && r.v >= 2 && r.truncate !== e.truncate) {
    throw new ReceiptError(`R11 truncation: the receipt says truncate=${r.truncate}, the request asked truncate=${e.truncate}`)
  }
  if (e.truncate && r.v < 2) throw new ReceiptError('R11 truncation: a version 1 receipt cannot record truncation')
  if (e.inputs !== undefined && e.inputs !== null && r.truncated.length && r.truncated[r.truncated.length - 1] >= e.inputs) {
    throw new ReceiptError(`R11 truncation: input ${r.truncated[r.truncated.length - 1]} was truncated, the request had ${e.inputs}`)
  }
}
