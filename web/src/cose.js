/**
 * COSE_Sign1 with EdDSA (RFC 9052 §4.2 and §4.4, RFC 9053 §2.2): receipts and
 * session proofs (ephemeralml/common/_cose.py). The envelope is decoded strictly
 * here, the headers we insist on are checked, and the RFC 9052 §4.4 Sig_structure
 * is verified over the bytes received with Web Crypto's Ed25519.
 *
 * Web Crypto Ed25519 (not a JavaScript library): Node 20 and Chromium 137 and
 * later ship it, both on the same C libraries the Python side verifies with
 * (OpenSSL in Node and in Python's `cryptography`, BoringSSL in Chromium), which
 * refuse a non-canonical S as RFC 8032 §5.1.7 asks.
 */

import { decodeStrict, encode, Tagged } from './cbor.js'
import { DecodeError } from './errors.js'
import { bytesEqual } from './util.js'

const COSE_SIGN1_TAG = 18
export const ALG_EDDSA = -8

/**
 * A decoded, *unverified* COSE_Sign1 envelope.
 * @typedef {{protected: Uint8Array, protectedMap: Map<any, any>, payload: Uint8Array, signature: Uint8Array}} Sign1
 */

/**
 * The one encoding of a COSE_Sign1 with an empty unprotected header (protocol.md §1.2 D3).
 * @param {Uint8Array} protectedBytes
 * @param {Uint8Array} payload
 * @param {Uint8Array} signature
 * @param {boolean} [tagged]
 */
export function encodeSign1 (protectedBytes, payload, signature, tagged = true) {
  const body = [protectedBytes, new Map(), payload, signature]
  return encode(tagged ? new Tagged(COSE_SIGN1_TAG, body) : body)
}

/**
 * RFC 9052 §4.4: Sig_structure = ["Signature1", body_protected, external_aad, payload].
 * @param {Uint8Array} protectedBytes
 * @param {Uint8Array} payload
 */
export function sigStructure (protectedBytes, payload) {
  return encode(['Signature1', protectedBytes, new Uint8Array(0), payload])
}

/**
 * Strictly decode one of our COSE_Sign1 objects; verifies nothing. One object, one
 * encoding (D3): tag 18, an empty unprotected map, the shortest heads.
 * @param {Uint8Array} data
 * @param {{what: string, maxBytes: number}} options
 * @returns {Sign1}
 */
export function decodeSign1 (data, { what, maxBytes }) {
  let obj = decodeStrict(data, { what, maxBytes, topTags: [COSE_SIGN1_TAG] })
  if (!(obj instanceof Tagged)) {
    // Everything we sign is tagged: an untagged copy is a second encoding.
    throw new DecodeError(`${what} is not tagged COSE_Sign1 (18)`)
  }
  obj = obj.value
  if (!Array.isArray(obj) || obj.length !== 4) throw new DecodeError(`${what} is not a 4-element COSE_Sign1 array`)
  const [prot, unprotected, payload, signature] = obj
  if (!(prot instanceof Uint8Array) || !(payload instanceof Uint8Array)) {
    throw new DecodeError(`${what}: protected header and payload must be byte strings`)
  }
  if (!(signature instanceof Uint8Array)) throw new DecodeError(`${what}: signature must be a byte string`)
  if (!(unprotected instanceof Map) || unprotected.size) throw new DecodeError(`${what}: unprotected header must be an empty map`)
  if (!bytesEqual(encodeSign1(prot, payload, signature), data)) {
    throw new DecodeError(`${what} is not in its one encoding (RFC 8949 §4.2.1 shortest heads)`)
  }
  const pmap = prot.length ? decodeStrict(prot, { what: `${what} protected header` }) : new Map()
  if (!(pmap instanceof Map)) throw new DecodeError(`${what}: protected header is not a map`)
  return { protected: prot, protectedMap: pmap, payload, signature }
}

/**
 * The kid of one of our EdDSA envelopes, whose protected header is exactly
 * `{1: -8, 4: kid}` (kid: 32 bytes) with a 64-byte signature; verifies nothing.
 * @param {Sign1} env
 * @returns {Uint8Array}
 */
export function eddsaKid (env) {
  const m = env.protectedMap
  if (m.size !== 2 || !m.has(1) || !m.has(4) || m.get(1) !== ALG_EDDSA) {
    throw new DecodeError('protected header must be exactly {alg: EdDSA, kid}')
  }
  const kid = m.get(4)
  if (!(kid instanceof Uint8Array) || kid.length !== 32) throw new DecodeError('kid must be 32 bytes')
  if (env.signature.length !== 64) throw new DecodeError('an Ed25519 signature is 64 bytes')
  return kid
}

/**
 * Check `env`'s EdDSA signature with a raw 32-byte Ed25519 public key, over the
 * bytes received. A key Web Crypto will not import cannot have made the signature.
 * @param {Sign1} env
 * @param {Uint8Array} publicKey
 * @returns {Promise<boolean>}
 */
export async function verifyEddsa (env, publicKey) {
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== 32) {
    throw new DecodeError('signature could not be checked: an Ed25519 public key is 32 bytes')
  }
  let key
  try {
    key = await crypto.subtle.importKey('raw', publicKey, { name: 'Ed25519' }, false, ['verify'])
  } catch {
    return false
  }
  try {
    return await crypto.subtle.verify({ name: 'Ed25519' }, key, env.signature, sigStructure(env.protected, env.payload))
  } catch {
    return false
  }
}
