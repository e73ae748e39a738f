/**
 * Cached-mode session proofs (protocol.md §2.2.1; ephemeralml/common/_proof.py).
 *
 * In cached mode the enclave attests every few minutes, with a binding whose
 * session id is all zero, and each session gets a proof: a COSE_Sign1 by the
 * attested receipt key over the client's nonce, a fresh X25519 key, a fresh
 * session id and the document's hash (check A11).
 */

import { decodeDeterministic } from './cbor.js'
import { decodeSign1, eddsaKid, verifyEddsa } from './cose.js'
import { AttestationError, DecodeError, RemoteProtocolError } from './errors.js'
import { NONCE_BYTES, SESSION_ID_BYTES } from './messages.js'
import { bytesEqual } from './util.js'

/** The session id in the binding of a cached document: it names no one session. */
export const CACHED_SESSION_ID = new Uint8Array(SESSION_ID_BYTES)
/** A proof is about 250 bytes. */
export const MAX_PROOF_BYTES = 1024
const KEYS = ['nonce', 'pk', 'sid', 'att']

/**
 * protocol.md §3 A11: the proof is signed by the attested receipt key, for this
 * document and this client's nonce; the payload is decoded only after the signature.
 * @param {Uint8Array} raw
 * @param {import('./binding.js').EnclaveBinding} binding
 * @param {{nonce: Uint8Array, attestationSha256: Uint8Array}} expect
 * @returns {Promise<{nonce: Uint8Array, publicKey: Uint8Array, sessionId: Uint8Array, attestationSha256: Uint8Array}>}
 */
export async function verifySessionProof (raw, binding, { nonce, attestationSha256 }) {
  let env
  try {
    env = decodeSign1(raw, { what: 'session proof', maxBytes: MAX_PROOF_BYTES })
  } catch (e) {
    if (e instanceof RemoteProtocolError) throw new AttestationError(`A11 proof: ${e.message}`, { cause: e })
    throw e
  }
  let kid
  try {
    kid = eddsaKid(env)
  } catch (e) {
    if (e instanceof DecodeError) throw new AttestationError(`A11 proof: ${e.message}`, { cause: e })
    throw e
  }
  if (!bytesEqual(kid, attestationSha256)) throw new AttestationError("A11 proof: kid must be the document's hash")
  if (!await verifyEddsa(env, binding.receiptKey)) throw new AttestationError('A11 proof: not signed by the attested receipt key')
  let m
  try {
    m = decodeDeterministic(env.payload, { what: 'session proof' })
  } catch (e) {
    if (e instanceof RemoteProtocolError) throw new AttestationError(`A11 proof: ${e.message}`, { cause: e })
    throw e
  }
  if (!(m instanceof Map) || m.size !== KEYS.length || !KEYS.every((k) => m.has(k)) ||
      ![...m.values()].every((v) => v instanceof Uint8Array)) {
    throw new AttestationError('A11 proof: wrong fields')
  }
  const proof = { nonce: m.get('nonce'), publicKey: m.get('pk'), sessionId: m.get('sid'), attestationSha256: m.get('att') }
  if (proof.nonce.length !== NONCE_BYTES || proof.publicKey.length !== 32 || proof.sessionId.length !== SESSION_ID_BYTES ||
      bytesEqual(proof.sessionId, CACHED_SESSION_ID) || proof.attestationSha256.length !== 32) {
    throw new AttestationError('A11 proof: malformed session proof')
  }
  if (!bytesEqual(proof.nonce, nonce)) throw new AttestationError('A11 proof: nonce does not match the challenge')
  if (!bytesEqual(proof.attestationSha256, attestationSha256)) {
    throw new AttestationError('A11 proof: made for another attestation document')
  }
  return Object.freeze(proof)
}
