/**
 * What an enclave binds into its attestation's user_data (protocol.md §2.2;
 * ephemeralml/common/_binding.py). The NSM signs user_data verbatim, so all of it
 * is vouched for by the attestation: the session id, the receipt-signing key, the
 * models (id → manifest digest) and their key-release digests, the policy version
 * the enclave enforces, the protocol version and the mode ("nitro" or "mock").
 */

import { decodeDeterministic } from './cbor.js'
import { AttestationError, RemoteProtocolError } from './errors.js'
import { SESSION_ID_BYTES } from './messages.js'
import { isInt, pyRepr, toHex } from './util.js'

/** AWS's stricter documented bound on user_data. */
export const MAX_USER_DATA_BYTES = 512
export const MODES = new Set(['nitro', 'mock'])
const KEYS = ['v', 'sid', 'rk', 'models', 'kr', 'pv', 'mode']

/** A parsed binding; every field checked when built. */
export class EnclaveBinding {
  /**
   * @param {{protocolVersion: number, sessionId: Uint8Array, receiptKey: Uint8Array,
   *   models: Map<any, any>, keyReleases: Map<any, any>, policyVersion: number, mode: string}} f
   */
  constructor (f) {
    if (f.sessionId.length !== SESSION_ID_BYTES) throw new RemoteProtocolError('binding: session id must be 16 bytes')
    if (f.receiptKey.length !== 32) throw new RemoteProtocolError('binding: receipt key must be a 32-byte Ed25519 key')
    if (!MODES.has(f.mode)) throw new RemoteProtocolError(`binding: unknown mode ${pyRepr(f.mode)}`)
    if (f.policyVersion < 0) throw new RemoteProtocolError('binding: negative policy version')
    for (const [k, v] of f.models) {
      if (typeof k !== 'string' || !(v instanceof Uint8Array) || v.length !== 32) {
        throw new RemoteProtocolError('binding: models must map text ids to 32-byte digests')
      }
    }
    for (const [k, v] of f.keyReleases) {
      if (!f.models.has(k) || !(v instanceof Uint8Array) || v.length !== 32) {
        throw new RemoteProtocolError('binding: key releases must map loaded models to digests')
      }
    }
    this.protocolVersion = f.protocolVersion
    this.sessionId = f.sessionId
    this.receiptKey = f.receiptKey
    /** @type {ReadonlyMap<string, Uint8Array>} model id → manifest digest */
    this.models = new Map(f.models)
    /** @type {ReadonlyMap<string, Uint8Array>} model id → key-release evidence digest */
    this.keyReleases = new Map(f.keyReleases)
    this.policyVersion = f.policyVersion
    this.mode = f.mode
    Object.freeze(this)
  }

  /** A JSON view (bytes as hex) for a page to show. */
  toJSON () {
    return {
      v: this.protocolVersion,
      sid: toHex(this.sessionId),
      rk: toHex(this.receiptKey),
      models: Object.fromEntries([...this.models].map(([k, v]) => [k, toHex(v)])),
      kr: Object.fromEntries([...this.keyReleases].map(([k, v]) => [k, toHex(v)])),
      pv: this.policyVersion,
      mode: this.mode
    }
  }

  /**
   * Parse the user_data of a *verified* attestation document (check A8).
   * @param {Uint8Array | null} userData
   */
  static fromUserData (userData) {
    if (userData === null || userData === undefined) {
      throw new AttestationError('A8 binding: the attestation document has no user_data')
    }
    try {
      const m = decodeDeterministic(userData, { what: 'user_data', maxBytes: MAX_USER_DATA_BYTES })
      if (!(m instanceof Map) || m.size !== KEYS.length || !KEYS.every((k) => m.has(k))) {
        throw new AttestationError('A8 binding: user_data is not an ephemeralml binding')
      }
      const models = m.get('models')
      const kr = m.get('kr')
      if (!(models instanceof Map) || !(kr instanceof Map)) throw new AttestationError('A8 binding: models and kr must be maps')
      for (const name of ['v', 'pv']) {
        if (!isInt(m.get(name))) throw new AttestationError(`A8 binding: ${name} is not an integer`)
      }
      for (const name of ['sid', 'rk']) {
        if (!(m.get(name) instanceof Uint8Array)) throw new AttestationError(`A8 binding: ${name} is not bytes`)
      }
      if (typeof m.get('mode') !== 'string') throw new AttestationError('A8 binding: mode is not text')
      return new EnclaveBinding({
        protocolVersion: m.get('v'),
        sessionId: m.get('sid'),
        receiptKey: m.get('rk'),
        models,
        keyReleases: kr,
        policyVersion: m.get('pv'),
        mode: m.get('mode')
      })
    } catch (e) {
      // DecodeError and LimitError are RemoteProtocolErrors too.
      if (e instanceof RemoteProtocolError) {
        throw new AttestationError(`A8 binding: ${e.message}`, { cause: e })
      }
      throw e
    }
  }
}
