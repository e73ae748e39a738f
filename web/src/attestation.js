/**
 * AWS Nitro attestation documents: parse, and verify against a trust policy
 * (protocol.md §3; ephemeralml/common/_attestation.py, whose checks, order and
 * messages this follows).
 *
 * A Nitro document is an untagged (or tag-18) COSE_Sign1 signed with ES384 by a
 * leaf certificate that travels inside the signed payload, with the chain
 * (`cabundle`, root first) up to the AWS Nitro Enclaves root.
 * {@link verifyAttestation} runs A1 to A9 in order and returns a
 * {@link VerifiedAttestation} or throws; every message starts with the check id.
 * Nothing reaches the policy (A9) before the signature (A3) and the chain (A4, A5)
 * have passed.
 *
 * Sans-IO: no network, no clock. The caller passes the policy (with its root) and
 * `now`.
 */

import { decodeStrict, encode, Tagged } from './cbor.js'
import { encodeSign1 } from './cose.js'
import { AttestationError, ConfigError, EphemeralError, describe } from './errors.js'
import { MAX_PCRS, PCR_BYTES, PcrAllowlist, TrustedRoot, UnsafeAnyMeasurements } from './trust.js'
import {
  bytesEqual, fmtG, fmtSeconds3, fmtTime, isInt, pyRepr, pySorted, pyStrList, pyTypeName, sha256, toHex
} from './util.js'
import { BASIC_CONSTRAINTS, KEY_USAGE, basicConstraints, directlyIssuedBy, keyUsage, loadDer } from './x509.js'

/** Oldest document a live verifier accepts, in seconds (KMS does not check freshness; we must). */
export const MAX_ATTESTATION_AGE_S = 300
/** How far in the future of `now` a document's timestamp may be, in seconds (clock drift). */
export const MAX_CLOCK_SKEW_S = 60
/** Upper bound of each of public_key, user_data and nonce (AWS's stricter documented bound). */
export const MAX_OPTIONAL_FIELD_BYTES = 512
/** Whole COSE_Sign1 size limit: real documents are 4.4 to 4.7 KiB. */
export const MAX_ATTESTATION_BYTES = 16 * 1024
/** Most certificates in cabundle (AWS sends 4). */
export const MAX_CABUNDLE_CERTS = 8
/** 9999-12-31T23:59:59.999Z, the largest timestamp Python's datetime holds. */
const MAX_TIMESTAMP_MS = 253_402_300_799_999

/** COSE header 1 (alg) = -35 (ES384): the one protected header AWS sends, `a1 01 38 22`. */
const PROTECTED_ES384 = encode(new Map([[1, -35]]))
/** ES384 signature: r and s as 48-byte big-endian integers (RFC 9053 §2.1), not DER. */
const ES384_SIGNATURE_BYTES = 96
const REQUIRED_KEYS = ['module_id', 'digest', 'timestamp', 'pcrs', 'certificate', 'cabundle']
const OPTIONAL_KEYS = ['public_key', 'user_data', 'nonce']
/** The extensions A4 processes; any other critical one is refused (RFC 5280 §4.2). */
const PROCESSED_EXTENSIONS = new Set([BASIC_CONSTRAINTS, KEY_USAGE])

/** @param {string} m */
const a1 = (m) => new AttestationError(`A1 envelope: ${m}`)
/** @param {string} m */
const a2 = (m) => new AttestationError(`A2 payload: ${m}`)

/**
 * The payload of a Nitro attestation document (protocol.md §3 A2). Building one
 * checks the payload's shape and nothing else: {@link verifyAttestation} returns
 * it verified, {@link parseUnverified} for display only.
 */
export class AttestationDocument {
  /**
   * @param {{moduleId: unknown, digest: unknown, timestampMs: unknown, pcrs: Map<any, any>,
   *   certificate: unknown, cabundle: unknown[], publicKey: unknown, userData: unknown, nonce: unknown,
   *   raw: Uint8Array, sha256: Uint8Array}} f
   */
  constructor (f) {
    if (typeof f.moduleId !== 'string' || !f.moduleId) throw a2('module_id must be non-empty text')
    if (f.digest !== 'SHA384') throw a2(`digest must be 'SHA384', got ${pyRepr(f.digest)}`)
    if (!isInt(f.timestampMs) || !(f.timestampMs > 0 && f.timestampMs <= MAX_TIMESTAMP_MS)) {
      throw a2(`timestamp must be a positive integer of ms, got ${pyRepr(f.timestampMs)}`)
    }
    if (!(f.pcrs instanceof Map) || f.pcrs.size < 1 || f.pcrs.size > MAX_PCRS) {
      throw a2(`pcrs must be a map of 1 to ${MAX_PCRS} entries`)
    }
    // Integer indices first, by value; anything else after, in order (Python's sort).
    const items = [...f.pcrs].map((kv, i) => ({ kv, i }))
    items.sort((a, b) => {
      const ai = isInt(a.kv[0])
      const bi = isInt(b.kv[0])
      if (ai && bi) return a.kv[0] < b.kv[0] ? -1 : a.kv[0] > b.kv[0] ? 1 : 0
      if (ai !== bi) return ai ? -1 : 1
      return a.i - b.i
    })
    /** @type {Map<number, Uint8Array>} */
    const pcrs = new Map()
    for (const { kv: [index, value] } of items) {
      if (!isInt(index) || !(index >= 0 && index < MAX_PCRS)) {
        throw a2(`PCR index ${pyRepr(index)} is not an integer in 0..${MAX_PCRS - 1}`)
      }
      if (!(value instanceof Uint8Array) || value.length !== PCR_BYTES) {
        throw a2(`PCR${index} must be ${PCR_BYTES} bytes (SHA-384)`)
      }
      pcrs.set(Number(index), value)
    }
    // Every NSM reports PCR0 (the image); debug detection and allowlists rely on it.
    if (!pcrs.has(0)) throw a2('PCR0 is missing')
    if (!(f.certificate instanceof Uint8Array) || !f.certificate.length) throw a2('certificate must be non-empty bytes')
    if (f.cabundle.length < 1 || f.cabundle.length > MAX_CABUNDLE_CERTS) {
      throw a2(`cabundle must hold 1 to ${MAX_CABUNDLE_CERTS} certificates`)
    }
    f.cabundle.forEach((der, i) => {
      if (!(der instanceof Uint8Array) || !der.length) throw a2(`cabundle[${i}] must be non-empty bytes`)
    })
    for (const [name, value] of [['public_key', f.publicKey], ['user_data', f.userData], ['nonce', f.nonce]]) {
      if (value === null) continue
      if (!(value instanceof Uint8Array)) throw a2(`${name} must be bytes or null, got ${pyTypeName(value)}`)
      if (value.length > MAX_OPTIONAL_FIELD_BYTES) {
        throw a2(`${name} is ${value.length} bytes; the limit is ${MAX_OPTIONAL_FIELD_BYTES}`)
      }
    }
    this.moduleId = f.moduleId
    this.digest = f.digest
    /** ms since the epoch */
    this.timestampMs = Number(f.timestampMs)
    /** @type {ReadonlyMap<number, Uint8Array>} */
    this.pcrs = pcrs
    this.certificate = /** @type {Uint8Array} */ (f.certificate)
    this.cabundle = Object.freeze(/** @type {Uint8Array[]} */ ([...f.cabundle]))
    this.publicKey = /** @type {Uint8Array | null} */ (f.publicKey)
    this.userData = /** @type {Uint8Array | null} */ (f.userData)
    this.nonce = /** @type {Uint8Array | null} */ (f.nonce)
    /** The whole COSE_Sign1 as received. */
    this.raw = f.raw
    /** SHA-256 of the whole COSE_Sign1 as received (HPKE info, receipts' kid). */
    this.sha256 = f.sha256
    Object.freeze(this)
  }

  get sha256Hex () {
    return toHex(this.sha256)
  }

  /** True for a debug-mode enclave: PCR0 is all zero (`--debug-mode`). */
  get isDebug () {
    return /** @type {Uint8Array} */ (this.pcrs.get(0)).every((b) => b === 0)
  }
}

/** What a document must satisfy beyond being well-formed and signed. */
export class AttestationPolicy {
  /**
   * @param {TrustedRoot} root
   * @param {PcrAllowlist | UnsafeAnyMeasurements} measurements
   * @param {{maxAgeS?: number}} [options]
   */
  constructor (root, measurements, { maxAgeS = MAX_ATTESTATION_AGE_S } = {}) {
    if (!(root instanceof TrustedRoot)) throw new ConfigError('attestation policy: root must be a TrustedRoot')
    if (!(measurements instanceof PcrAllowlist || measurements instanceof UnsafeAnyMeasurements)) {
      throw new ConfigError('attestation policy: measurements must be a Measurements')
    }
    if (typeof maxAgeS !== 'number') throw new ConfigError('attestation policy: max_age_s must be a number of seconds')
    if (!Number.isFinite(maxAgeS) || maxAgeS <= 0) {
      throw new ConfigError(`attestation policy: max_age_s must be positive, got ${maxAgeS}`)
    }
    this.root = root
    this.measurements = measurements
    this.maxAgeS = maxAgeS
    Object.freeze(this)
  }
}

/**
 * A document that passed every check of protocol.md §3 under `root` at
 * `verifiedAtMs`. It says nothing about public_key and user_data (A8: the session
 * binds those), nor whether a mock root was acceptable (A10: the caller warns when
 * `root.isMock`).
 */
export class VerifiedAttestation {
  /**
   * @param {AttestationDocument} document
   * @param {TrustedRoot} root
   * @param {number} verifiedAtMs
   */
  constructor (document, root, verifiedAtMs) {
    this.document = document
    this.root = root
    this.verifiedAtMs = verifiedAtMs
    Object.freeze(this)
  }
}

/**
 * @param {unknown} raw
 * @returns {{data: Uint8Array, protected: Uint8Array, payload: Uint8Array, signature: Uint8Array}}
 */
function parseEnvelope (raw) {
  // A1: size, strict CBOR, COSE_Sign1 shape, ES384 only.
  if (!(raw instanceof Uint8Array)) throw a1(`expected bytes, got ${pyTypeName(raw)}`)
  const data = new Uint8Array(raw)
  if (data.length > MAX_ATTESTATION_BYTES) throw a1(`document is ${data.length} bytes; the limit is ${MAX_ATTESTATION_BYTES}`)
  let obj
  try {
    // RFC 9052 §4.2: tagged 18 or untagged; every other tag is refused before decoding.
    obj = decodeStrict(data, { what: 'attestation document', topTags: [18] })
  } catch (e) {
    if (e instanceof EphemeralError) throw a1(e.message)
    throw e
  }
  const tagged = obj instanceof Tagged
  if (tagged) obj = obj.value
  if (!Array.isArray(obj) || obj.length !== 4) throw a1('not a COSE_Sign1 array of 4 elements')
  const [prot, unprotected, payload, signature] = obj
  if (!(prot instanceof Uint8Array) || !bytesEqual(prot, PROTECTED_ES384)) {
    const shown = prot instanceof Uint8Array ? toHex(prot) : pyTypeName(prot)
    throw a1(`protected header must be exactly {1: -35} (ES384), got ${shown}`)
  }
  if (!(unprotected instanceof Map) || unprotected.size !== 0) throw a1('unprotected header must be an empty map')
  if (!(payload instanceof Uint8Array)) throw a1('payload must be a byte string')
  if (!(signature instanceof Uint8Array) || signature.length !== ES384_SIGNATURE_BYTES) {
    throw a1(`signature must be ${ES384_SIGNATURE_BYTES} bytes (ES384 r||s)`)
  }
  // D3: the envelope in its shortest heads (untagged and tag 18 both accepted).
  if (!bytesEqual(encodeSign1(prot, payload, signature, tagged), data)) {
    throw a1('attestation document is not in its one encoding (RFC 8949 §4.2.1 shortest heads)')
  }
  return { data, protected: prot, payload, signature }
}

/**
 * @param {Uint8Array} payload
 * @param {Uint8Array} raw
 */
async function parsePayload (payload, raw) {
  // A2: exactly the AWS keys, each of its type. Decoded before the signature is
  // checked only because the signing key travels inside; nothing here is trusted
  // until A3 to A5 have passed.
  let body
  try {
    body = decodeStrict(payload, { what: 'payload' })
  } catch (e) {
    if (e instanceof EphemeralError) throw a2(e.message)
    throw e
  }
  if (!(body instanceof Map)) throw a2('payload is not a map')
  const keys = new Set(body.keys())
  const missing = REQUIRED_KEYS.filter((k) => !keys.has(k))
  if (missing.length) throw a2(`missing ${pySorted(missing).join(', ')}`)
  const extra = [...keys].filter((k) => !REQUIRED_KEYS.includes(k) && !OPTIONAL_KEYS.includes(k))
  if (extra.length) throw a2(`unexpected keys ${pyStrList(pySorted(extra.map(pyRepr)))}`)
  const pcrs = body.get('pcrs')
  if (!(pcrs instanceof Map)) throw a2('pcrs is not a map')
  const cabundle = body.get('cabundle')
  if (!Array.isArray(cabundle)) throw a2('cabundle is not an array')
  /** @param {string} k */
  const opt = (k) => (body.has(k) ? body.get(k) : null)
  return new AttestationDocument({
    moduleId: body.get('module_id'),
    digest: body.get('digest'),
    timestampMs: body.get('timestamp'),
    pcrs,
    certificate: body.get('certificate'),
    cabundle,
    publicKey: opt('public_key'),
    userData: opt('user_data'),
    nonce: opt('nonce'),
    raw,
    sha256: await sha256(raw)
  })
}

/**
 * Parse a document for display or debugging. **Verifies nothing**: only A1 and
 * A2 run; no signature, chain, time, nonce or measurement is checked.
 * @param {Uint8Array} raw
 */
export async function parseUnverified (raw) {
  try {
    const env = parseEnvelope(raw)
    return await parsePayload(env.payload, env.data)
  } catch (e) {
    if (e instanceof EphemeralError) throw e
    throw new AttestationError(`A1-A2: attestation document could not be parsed (${describe(e)})`, { cause: e })
  }
}

/**
 * @param {Uint8Array} der
 * @param {string} check
 * @param {string} what
 */
function load (der, check, what) {
  try {
    return loadDer(der)
  } catch (e) {
    throw new AttestationError(`${check}: ${what} is not a DER X.509 certificate (${e instanceof Error ? e.message : e})`, { cause: e })
  }
}

/**
 * A3: ES384 over the RFC 9052 §4.4 Sig_structure, rebuilt from the protected header
 * and payload bytes exactly as received, with the leaf's P-384 key (Web Crypto).
 * @param {{protected: Uint8Array, payload: Uint8Array, signature: Uint8Array}} env
 * @param {import('@peculiar/x509').X509Certificate} leaf
 */
async function verifySignature (env, leaf) {
  let algorithm
  try {
    algorithm = leaf.publicKey.algorithm
  } catch (e) {
    throw new AttestationError(`A3 signature: leaf public key cannot be read (${describe(e)})`, { cause: e })
  }
  if (algorithm.name !== 'ECDSA' || /** @type {any} */ (algorithm).namedCurve !== 'P-384') {
    throw new AttestationError('A3 signature: leaf key is not EC P-384 (ES384)')
  }
  let key
  try {
    key = await crypto.subtle.importKey('spki', leaf.publicKey.rawData, { name: 'ECDSA', namedCurve: 'P-384' }, false, ['verify'])
  } catch (e) {
    throw new AttestationError(`A3 signature: leaf public key cannot be read (${describe(e)})`, { cause: e })
  }
  const toBeSigned = encode(['Signature1', env.protected, new Uint8Array(0), env.payload])
  let ok = false
  try {
    // Web Crypto's ECDSA takes the raw r||s form COSE uses (RFC 9053 §2.1).
    ok = await crypto.subtle.verify({ name: 'ECDSA', hash: 'SHA-384' }, key, env.signature, toBeSigned)
  } catch {
    ok = false
  }
  if (!ok) throw new AttestationError('A3 signature: COSE ES384 signature does not verify')
}

/**
 * A4: pinned root → intermediates → leaf.
 * @param {AttestationDocument} doc
 * @param {import('@peculiar/x509').X509Certificate} leaf
 * @param {TrustedRoot} root
 */
async function verifyChain (doc, leaf, root) {
  // cabundle is root first; its first entry must be the pinned root byte for byte.
  if (!bytesEqual(doc.cabundle[0], root.certificateDer)) {
    const got = toHex(await sha256(doc.cabundle[0]))
    throw new AttestationError(
      `A4 chain: cabundle[0] is not the pinned root ${pyRepr(root.name)} (fingerprint ${got}, expected ${root.fingerprint})`
    )
  }
  /** @type {[string, import('@peculiar/x509').X509Certificate][]} */
  const chain = doc.cabundle.map((der, i) => [`cabundle[${i}]`, load(der, 'A4 chain', `cabundle[${i}]`)])
  chain.push(['leaf', leaf])
  const nCa = doc.cabundle.length
  for (const [i, [name, cert]] of chain.entries()) {
    let bc, ku
    try {
      bc = basicConstraints(cert)
      ku = keyUsage(cert)
    } catch (e) {
      throw new AttestationError(`A4 chain: ${name} has malformed extensions (${describe(e)})`, { cause: e })
    }
    // A4 critical extensions: RFC 5280 §4.2, "MUST reject the certificate if it
    // encounters a critical extension it does not recognize".
    for (const ext of cert.extensions) {
      if (ext.critical && !PROCESSED_EXTENSIONS.has(ext.type)) {
        throw new AttestationError(
          `A4 chain: ${name} has a critical extension this verifier does not process (${ext.type}); refused (RFC 5280 §4.2)`
        )
      }
    }
    if (i < nCa) {
      // Every cabundle entry issues the next: a CA allowed to sign certificates,
      // with room below it for the intermediates that follow.
      if (bc === null || !bc.ca) throw new AttestationError(`A4 chain: ${name} is not a CA (basicConstraints)`)
      const below = nCa - 1 - i
      if (bc.pathLength !== null && below > bc.pathLength) {
        throw new AttestationError(`A4 chain: ${name} allows path length ${bc.pathLength}, but ${below} CAs follow it`)
      }
      if (ku !== null && !ku.keyCertSign) throw new AttestationError(`A4 chain: ${name} may not sign certificates (keyUsage)`)
    } else {
      if (bc !== null && bc.ca) throw new AttestationError('A4 chain: leaf is a CA (basicConstraints)')
      if (ku !== null && !ku.digitalSignature) throw new AttestationError('A4 chain: leaf may not sign (keyUsage digitalSignature)')
    }
    if (i === 0) continue // the root is pinned by its bytes above
    const [issuerName, issuer] = chain[i - 1]
    if (!await directlyIssuedBy(cert, issuer)) throw new AttestationError(`A4 chain: ${name} is not issued by ${issuerName}`)
  }
  return chain
}

/**
 * A5: every certificate valid when the document was signed and now (to the ms).
 * @param {[string, import('@peculiar/x509').X509Certificate][]} chain
 * @param {number} docMs
 * @param {number} nowMs
 */
function verifyValidity (chain, docMs, nowMs) {
  for (const [name, cert] of chain) {
    const nb = cert.notBefore.getTime()
    const na = cert.notAfter.getTime()
    for (const [label, t] of /** @type {[string, number][]} */ ([['the document timestamp', docMs], ['now', nowMs]])) {
      if (!(nb <= t && t <= na)) {
        throw new AttestationError(
          `A5 validity: ${name} is not valid at ${label} ${fmtTime(t)} (valid ${fmtTime(nb)} to ${fmtTime(na)})`
        )
      }
    }
  }
}

/**
 * A6: not from the future (beyond clock skew), not too old.
 * @param {number} docMs
 * @param {number} nowMs
 * @param {number} maxAgeS
 */
function verifyFreshness (docMs, nowMs, maxAgeS) {
  const aheadMs = docMs - nowMs
  if (aheadMs / 1000 > MAX_CLOCK_SKEW_S) {
    throw new AttestationError(
      `A6 freshness: document timestamp ${fmtTime(docMs)} is ${fmtSeconds3(aheadMs)} s in the future (limit ${fmtG(MAX_CLOCK_SKEW_S)} s)`
    )
  }
  const ageMs = nowMs - docMs
  if (ageMs / 1000 > maxAgeS) {
    throw new AttestationError(`A6 freshness: document is ${fmtSeconds3(ageMs)} s old (limit ${fmtG(maxAgeS)} s)`)
  }
}

/**
 * @param {unknown} now
 * @returns {number}
 */
export function checkNow (now) {
  const ms = now instanceof Date ? now.getTime() : now
  if (typeof ms !== 'number' || !Number.isInteger(ms)) {
    throw new ConfigError('verifyAttestation: now must be a Date or integer milliseconds since the epoch')
  }
  return ms
}

/**
 * Verify a Nitro attestation document; return it verified or throw.
 *
 * Runs protocol.md §3 A1 to A7 and A9 in order; throws {@link AttestationError}
 * (A1 to A7) or PolicyError (A9), each message starting with the check id.
 *
 * Not checked here: public_key and user_data are returned, not interpreted (A8:
 * the session binds them); revocation (AWS publishes none for this chain);
 * whether a mock root is acceptable (A10: the caller decides and warns when
 * `policy.root.isMock`).
 *
 * @param {Uint8Array} raw the COSE_Sign1 bytes
 * @param {AttestationPolicy} policy
 * @param {{now: Date | number, nonce?: Uint8Array | null}} options `now` as a Date or ms since the epoch
 * @returns {Promise<VerifiedAttestation>}
 */
export async function verifyAttestation (raw, policy, { now, nonce = null }) {
  const nowMs = checkNow(now)
  if (!(policy instanceof AttestationPolicy)) throw new ConfigError('verifyAttestation: policy must be an AttestationPolicy')
  if (nonce !== null && !(nonce instanceof Uint8Array)) throw new ConfigError('verifyAttestation: nonce must be bytes or null')
  try {
    return await verify(raw, policy, nowMs, nonce)
  } catch (e) {
    if (e instanceof EphemeralError) throw e
    // Whatever a library throws on a hostile document leaves as ours.
    throw new AttestationError(`A1-A9: attestation document could not be processed (${describe(e)})`, { cause: e })
  }
}

/**
 * @param {Uint8Array} raw
 * @param {AttestationPolicy} policy
 * @param {number} nowMs
 * @param {Uint8Array | null} nonce
 */
async function verify (raw, policy, nowMs, nonce) {
  // A1 envelope, A2 payload format.
  const env = parseEnvelope(raw)
  const doc = await parsePayload(env.payload, env.data)
  // A3 signature: the leaf's key signs the COSE_Sign1.
  const leaf = load(doc.certificate, 'A3 signature', 'leaf certificate')
  await verifySignature(env, leaf)
  // A4 chain: pinned root → intermediates → leaf.
  const chain = await verifyChain(doc, leaf, policy.root)
  // A5 validity, at the document's time and at now.
  verifyValidity(chain, doc.timestampMs, nowMs)
  // A6 freshness.
  verifyFreshness(doc.timestampMs, nowMs, policy.maxAgeS)
  // A7 nonce: the document answers our challenge.
  if (nonce !== null && (doc.nonce === null || !bytesEqual(doc.nonce, nonce))) {
    throw new AttestationError(`A7 nonce: document nonce ${doc.nonce === null ? 'is absent' : 'does not match the challenge'}`)
  }
  // A8: public_key and user_data are not interpreted here (the session binds them).
  // A9 measurements: only now, with signature and chain verified.
  policy.measurements.check(doc)
  // A10 root kind: a mock root verifies; the caller warns.
  return new VerifiedAttestation(doc, policy.root, nowMs)
}
