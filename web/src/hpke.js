/**
 * Session encryption (protocol.md §4; ephemeralml/common/_hpke.py).
 *
 * Requests: HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
 * ChaCha20-Poly1305, to the X25519 key the attestation carries, with
 * `info` = "ephemeralml/1 session" 00 ‖ SHA-256(attestation document). Responses:
 * ChaCha20-Poly1305 under a key and base nonce exported from the same context,
 * nonce = base XOR seq (12 bytes, big-endian), so responses may come in any order
 * while every (key, nonce) pair is used once. The chunks of a streamed answer
 * (§2.8) are sealed the same way under a second exported key and base nonce, with
 * nonce = base XOR (u64be(seq) ‖ u32be(k)): chunk k of answer seq opens only in its
 * own place.
 *
 * HPKE is @hpke/core with @hpke/dhkem-x25519 and @hpke/chacha20poly1305, whose
 * X25519 and ChaCha20-Poly1305 are JavaScript (@noble), so no browser needs them
 * in Web Crypto; HKDF-SHA256 is Web Crypto's.
 */

import { CipherSuite, HkdfSha256 } from '@hpke/core'
import { Chacha20Poly1305 } from '@hpke/chacha20poly1305'
import { DhkemX25519HkdfSha256 } from '@hpke/dhkem-x25519'
import { CiphertextError, LocalProtocolError, RemoteProtocolError, describe } from './errors.js'
import { concat, utf8 } from './util.js'

export const HPKE_SUITE_IDS = Object.freeze({ mode: 0, kem: 0x0020, kdf: 0x0001, aead: 0x0003 })
/** X25519 public keys are 32 bytes (RFC 9180 §7.1: Npk = 32). */
export const PUBLIC_KEY_BYTES = 32
export const INFO_LABEL = utf8('ephemeralml/1 session\x00')
export const RESPONSE_KEY_LABEL = utf8('ephemeralml/1 response key')
export const RESPONSE_NONCE_LABEL = utf8('ephemeralml/1 response nonce')
export const CHUNK_KEY_LABEL = utf8('ephemeralml/1 chunk key')
export const CHUNK_NONCE_LABEL = utf8('ephemeralml/1 chunk nonce')
const NONCE_BYTES = 12
/** RFC 9180 §5.2 allows far more; a session this long is a bug or an attack. */
export const MAX_SEQ = 2 ** 32
/** Chunks one streamed answer may have: their number takes the last 4 nonce bytes. */
export const MAX_CHUNKS = 2 ** 32

export function hpkeSuite () {
  return new CipherSuite({ kem: new DhkemX25519HkdfSha256(), kdf: new HkdfSha256(), aead: new Chacha20Poly1305() })
}

/**
 * HPKE info for a session: a fixed label and the attestation document's hash.
 * @param {Uint8Array} attestationSha256
 */
export function sessionInfo (attestationSha256) {
  if (attestationSha256.length !== 32) throw new LocalProtocolError('attestation hash must be 32 bytes')
  return concat(INFO_LABEL, attestationSha256)
}

/**
 * @param {Uint8Array} base
 * @param {number} seq
 */
export function responseNonce (base, seq) {
  if (!(Number.isInteger(seq) && seq >= 0 && seq < MAX_SEQ)) throw new LocalProtocolError(`sequence number ${seq} out of range`)
  const out = new Uint8Array(base)
  const view = new DataView(out.buffer)
  view.setUint32(8, view.getUint32(8) ^ seq)
  return out
}

/**
 * The nonce of chunk `k` of answer `seq` (§2.8): base XOR (u64be(seq) ‖ u32be(k)).
 * @param {Uint8Array} base
 * @param {number} seq
 * @param {number} k
 */
export function chunkNonce (base, seq, k) {
  if (!(Number.isInteger(seq) && seq >= 0 && seq < MAX_SEQ && Number.isInteger(k) && k >= 0 && k < MAX_CHUNKS)) {
    throw new LocalProtocolError(`chunk ${k} of answer ${seq} out of range`)
  }
  const out = new Uint8Array(base)
  const view = new DataView(out.buffer)
  // seq < 2^32: the first four bytes of u64be(seq) are zero.
  view.setUint32(4, view.getUint32(4) ^ seq)
  view.setUint32(8, view.getUint32(8) ^ k)
  return out
}

/**
 * An AEAD and base nonce exported from an HPKE context (RFC 9180 §5.3).
 * @param {any} ctx
 * @param {Uint8Array} keyLabel
 * @param {Uint8Array} nonceLabel
 */
async function exportedKeys (ctx, keyLabel, nonceLabel) {
  const key = new Uint8Array(await ctx.export(keyLabel, 32))
  const base = new Uint8Array(await ctx.export(nonceLabel, NONCE_BYTES))
  return { aead: new Chacha20Poly1305().createEncryptionContext(key.buffer), base, key }
}

/**
 * The response keys and the chunk keys of a session.
 * @param {any} ctx
 */
async function responseKeys (ctx) {
  return {
    resp: await exportedKeys(ctx, RESPONSE_KEY_LABEL, RESPONSE_NONCE_LABEL),
    chunk: await exportedKeys(ctx, CHUNK_KEY_LABEL, CHUNK_NONCE_LABEL)
  }
}

/** The client's half: seals requests, opens responses. Build with {@link ClientChannel.open}. */
export class ClientChannel {
  /**
   * @param {any} ctx
   * @param {Uint8Array} enc
   * @param {{resp: {aead: any, base: Uint8Array, key: Uint8Array}, chunk: {aead: any, base: Uint8Array, key: Uint8Array}}} keys
   */
  constructor (ctx, enc, { resp, chunk }) {
    this._ctx = ctx
    /** The encapsulated key (the ephemeral public key): goes in `open`. */
    this.enc = enc
    this._resp = resp
    this._chunk = chunk
    this._nextSeal = 0
  }

  /**
   * Set up the sender context to the attested key.
   * @param {Uint8Array} enclavePublicKey the document's public_key (or the proof's pk)
   * @param {Uint8Array} attestationSha256
   * @param {{ekm?: Uint8Array}} [testing] a fixed ephemeral IKM, for the conformance vectors only
   */
  static async open (enclavePublicKey, attestationSha256, testing = {}) {
    if (enclavePublicKey.length !== PUBLIC_KEY_BYTES) {
      throw new CiphertextError(`attested public_key is ${enclavePublicKey.length} bytes, not an X25519 key`)
    }
    try {
      const suite = hpkeSuite()
      const pk = await suite.kem.deserializePublicKey(new Uint8Array(enclavePublicKey).buffer)
      // RFC 9180 §7.1.4: DH with a low-order point gives the all-zero secret, which is refused.
      const ctx = await suite.createSenderContext({
        recipientPublicKey: pk,
        info: sessionInfo(attestationSha256),
        ...(testing.ekm ? { ekm: testing.ekm } : {})
      })
      return new ClientChannel(ctx, new Uint8Array(ctx.enc), await responseKeys(ctx))
    } catch (e) {
      if (e instanceof LocalProtocolError) throw e
      throw new CiphertextError(`attested public_key is not a usable X25519 key (${describe(e)})`, { cause: e })
    }
  }

  /** The exported response key and base nonce (for the conformance vectors). */
  get responseSecrets () {
    return { key: this._resp.key, baseNonce: this._resp.base }
  }

  /** The exported chunk key and base nonce (for the conformance vectors). */
  get chunkSecrets () {
    return { key: this._chunk.key, baseNonce: this._chunk.base }
  }

  /**
   * @param {number} seq must be the next one: HPKE numbers its messages (H2)
   * @param {Uint8Array} plaintext
   * @param {Uint8Array} aad
   */
  async sealRequest (seq, plaintext, aad) {
    if (seq !== this._nextSeal) throw new LocalProtocolError(`requests must be sealed in order (expected ${this._nextSeal})`)
    this._nextSeal += 1
    return new Uint8Array(await this._ctx.seal(plaintext, aad))
  }

  /**
   * @param {number} seq
   * @param {Uint8Array} ciphertext
   * @param {Uint8Array} aad
   */
  async openResponse (seq, ciphertext, aad) {
    const nonce = responseNonce(this._resp.base, seq)
    try {
      return new Uint8Array(await this._resp.aead.open(nonce, ciphertext, aad))
    } catch (e) {
      // §4 H3.
      throw new CiphertextError(`response ${seq} failed authentication`, { cause: e })
    }
  }

  /**
   * @param {number} seq
   * @param {number} k
   * @param {Uint8Array} ciphertext
   * @param {Uint8Array} aad
   */
  async openChunk (seq, k, ciphertext, aad) {
    const nonce = chunkNonce(this._chunk.base, seq, k)
    try {
      return new Uint8Array(await this._chunk.aead.open(nonce, ciphertext, aad))
    } catch (e) {
      // §2.8 S2.
      throw new CiphertextError(`S2 chunk ${k} of answer ${seq} failed authentication`, { cause: e })
    }
  }
}

/**
 * The enclave's half: opens requests in order, seals responses. The library uses
 * it only to check itself against the vectors; a page never holds one.
 */
export class EnclaveChannel {
  /**
   * @param {any} ctx
   * @param {{resp: {aead: any, base: Uint8Array, key: Uint8Array}, chunk: {aead: any, base: Uint8Array, key: Uint8Array}}} keys
   */
  constructor (ctx, { resp, chunk }) {
    this._ctx = ctx
    this._resp = resp
    this._chunk = chunk
    this._nextOpen = 0
  }

  /**
   * @param {CryptoKeyPair} keyPair the enclave's session key
   * @param {Uint8Array} enc
   * @param {Uint8Array} attestationSha256
   */
  static async open (keyPair, enc, attestationSha256) {
    try {
      const ctx = await hpkeSuite().createRecipientContext({
        recipientKey: keyPair, enc: new Uint8Array(enc).buffer, info: sessionInfo(attestationSha256)
      })
      return new EnclaveChannel(ctx, await responseKeys(ctx))
    } catch (e) {
      throw new RemoteProtocolError('open: the encapsulated key is not valid', { cause: e })
    }
  }

  /**
   * §4 H2: requests are opened strictly in order.
   * @param {number} seq
   * @param {Uint8Array} ciphertext
   * @param {Uint8Array} aad
   */
  async openRequest (seq, ciphertext, aad) {
    if (seq !== this._nextOpen) throw new CiphertextError(`request ${seq} out of order (expected ${this._nextOpen})`)
    let pt
    try {
      pt = new Uint8Array(await this._ctx.open(ciphertext, aad))
    } catch (e) {
      throw new CiphertextError(`request ${seq} failed authentication`, { cause: e })
    }
    this._nextOpen += 1
    return pt
  }

  /**
   * @param {number} seq
   * @param {Uint8Array} plaintext
   * @param {Uint8Array} aad
   */
  async sealResponse (seq, plaintext, aad) {
    return new Uint8Array(await this._resp.aead.seal(responseNonce(this._resp.base, seq), plaintext, aad))
  }

  /**
   * @param {number} seq
   * @param {number} k
   * @param {Uint8Array} plaintext
   * @param {Uint8Array} aad
   */
  async sealChunk (seq, k, plaintext, aad) {
    return new Uint8Array(await this._chunk.aead.seal(chunkNonce(this._chunk.base, seq, k), plaintext, aad))
  }
}

/**
 * RFC 9180 DeriveKeyPair(ikm) in this suite, and the public key's 32 bytes.
 * @param {Uint8Array} ikm
 */
export async function deriveKeyPair (ikm) {
  const suite = hpkeSuite()
  const pair = await suite.kem.deriveKeyPair(new Uint8Array(ikm).buffer)
  const pub = new Uint8Array(await suite.kem.serializePublicKey(pair.publicKey))
  return { pair, publicKey: pub, privateKey: new Uint8Array(await suite.kem.serializePrivateKey(pair.privateKey)) }
}
