/**
 * The client's trust policy (protocol.md §8; ephemeralml/client/_policy_document.py
 * and _policy_client.py): the §8.1 JSON parsed with the same checks and messages,
 * the root it names, and the checks P1 (models) and P2 (enclave policy version)
 * that run on a verified binding before the session's `open` leaves the client.
 *
 * Not here: signed policies (P3 signatures) and rollback (P4): a page receives
 * its policy from the local `ephemeral web` server, which has checked both.
 */

import { AttestationPolicy, MAX_ATTESTATION_AGE_S } from './attestation.js'
import { ConfigError, PolicyError } from './errors.js'
import { PcrAllowlist, TrustedRoot } from './trust.js'
import { CborFloat, isInt, pyRepr, pySorted, pyStrList, toHex } from './util.js'

/** Manifest digests one policy may pin for one model (a rolling upgrade needs two). */
export const MAX_PINNED_DIGESTS = 16
const FIELDS = new Set(['version', 'root', 'max_age_s', 'measurements', 'allow_debug', 'models', 'owner_keys',
  'min_enclave_policy_version', 'session_mode'])

// ---------------------------------------------------------------------------
// Strict JSON (runtime/_strict.py loads_json): RFC 8259, no duplicate keys, no
// NaN/Infinity; objects as Map (in order), integers apart from floats.

/**
 * @param {string} text
 * @returns {any}
 */
export function parseStrictJson (text) {
  let i = 0
  const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i])) i++ }
  /** @param {string} what */
  const fail = (what) => { throw new SyntaxError(`${what}: line 1 column ${i + 1} (char ${i})`) }
  /** @returns {any} */
  const value = () => {
    ws()
    const c = text[i]
    if (c === '{') {
      i++
      const m = new Map()
      ws()
      if (text[i] === '}') { i++; return m }
      for (;;) {
        ws()
        if (text[i] !== '"') fail('Expecting property name enclosed in double quotes')
        const k = string()
        if (m.has(k)) throw new SyntaxError(`duplicate key ${pyRepr(k)}`)
        ws()
        if (text[i] !== ':') fail("Expecting ':' delimiter")
        i++
        m.set(k, value())
        ws()
        if (text[i] === ',') { i++; continue }
        if (text[i] === '}') { i++; return m }
        fail("Expecting ',' delimiter")
      }
    }
    if (c === '[') {
      i++
      const a = []
      ws()
      if (text[i] === ']') { i++; return a }
      for (;;) {
        a.push(value())
        ws()
        if (text[i] === ',') { i++; continue }
        if (text[i] === ']') { i++; return a }
        fail("Expecting ',' delimiter")
      }
    }
    if (c === '"') return string()
    for (const [word, v] of /** @type {[string, any][]} */ ([['true', true], ['false', false], ['null', null]])) {
      if (text.startsWith(word, i)) { i += word.length; return v }
    }
    if (text.startsWith('NaN', i) || text.startsWith('Infinity', i) || text.startsWith('-Infinity', i)) {
      throw new SyntaxError('NaN and Infinity are not JSON')
    }
    const num = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/u.exec(text.slice(i))
    if (!num) fail('Expecting value')
    i += /** @type {RegExpExecArray} */ (num)[0].length
    const [whole, , frac, exp] = /** @type {RegExpExecArray} */ (num)
    if (frac || exp) return new CborFloat(Number(whole))
    const big = BigInt(whole)
    return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big
  }
  const string = () => {
    const re = /"((?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*)"/uy
    re.lastIndex = i
    const m = re.exec(text)
    if (!m) fail('Invalid string')
    i = re.lastIndex
    return JSON.parse(/** @type {RegExpExecArray} */ (m)[0])
  }
  const out = value()
  ws()
  if (i !== text.length) fail('Extra data')
  return out
}

// ---------------------------------------------------------------------------

/**
 * Python's bytes.fromhex (ASCII whitespace allowed between bytes), then a length.
 * @param {unknown} value
 * @param {string} what
 * @param {number} length
 */
function hexField (value, what, length) {
  let bytes = null
  if (typeof value === 'string') {
    const out = []
    let ok = true
    for (let i = 0; i < value.length;) {
      if (' \t\n\r\v\f'.includes(value[i])) { i++; continue }
      const pair = value.slice(i, i + 2)
      if (!/^[0-9a-fA-F]{2}$/u.test(pair)) { ok = false; break }
      out.push(parseInt(pair, 16))
      i += 2
    }
    if (ok) bytes = new Uint8Array(out)
  }
  if (bytes === null || bytes.length !== length) throw new ConfigError(`${what} must be ${length * 2} hex digits`)
  return bytes
}

/**
 * @param {unknown} obj
 * @param {string} where
 */
function pcrSet (obj, where) {
  if (!(obj instanceof Map) || !obj.size) throw new ConfigError(`${where}: a measurement set is a non-empty object of PCRn: hex`)
  /** @type {Map<number, Uint8Array>} */
  const out = new Map()
  for (const [k, v] of obj) {
    const upper = String(k).toUpperCase()
    const name = upper.startsWith('PCR') ? upper.slice(3) : upper
    if (!/^[0-9]+$/u.test(name) || Number(name) > 31) throw new ConfigError(`${where}: ${pyRepr(k)} is not a PCR name (PCR0..PCR31)`)
    const n = Number(name)
    if (out.has(n)) throw new ConfigError(`${where}: PCR${n} is named twice`)
    out.set(n, hexField(v, `${where}: ${k}`, 48))
  }
  return out
}

/**
 * @param {unknown} value
 * @param {string} what
 * @returns {Set<string>} pinned digests, as hex
 */
function digestPins (value, what) {
  if (typeof value === 'string') return new Set([toHex(hexField(value, what, 32))])
  if (!Array.isArray(value) || value.length < 1 || value.length > MAX_PINNED_DIGESTS) {
    throw new ConfigError(`${what} must be a manifest digest (64 hex) or a list of 1..${MAX_PINNED_DIGESTS}`)
  }
  return new Set(value.map((v, i) => toHex(hexField(v, `${what}[${i}]`, 32))))
}

/**
 * @param {Map<string, any>} doc
 * @param {string} name
 * @param {string} where
 */
function intField (doc, name, where) {
  const value = doc.has(name) ? doc.get(name) : 0
  if (!isInt(value) || value < 0) throw new ConfigError(`policy ${where}: ${name} must be a non-negative integer`)
  return Number(value)
}

/**
 * The parsed fields of a policy, before the root it names is read (PolicyDocument).
 * @param {unknown} doc
 * @param {string} where
 */
export function parsePolicyDocument (doc, where) {
  if (!(doc instanceof Map)) throw new ConfigError(`policy ${where}: not a JSON object`)
  const unknown = [...doc.keys()].filter((k) => !FIELDS.has(k))
  if (unknown.length) throw new ConfigError(`policy ${where}: unknown fields ${pyStrList(pySorted(unknown))}`)
  const version = intField(doc, 'version', where)
  const minPv = intField(doc, 'min_enclave_policy_version', where)
  const rootSpec = doc.has('root') ? doc.get('root') : 'aws-nitro'
  /** @type {string | {pem: string, sha256: Uint8Array | null}} */
  let root
  if (rootSpec === 'aws-nitro' || rootSpec === 'mock') {
    root = rootSpec
  } else if (rootSpec instanceof Map && rootSpec.has('pem') && [...rootSpec.keys()].every((k) => k === 'pem' || k === 'sha256') &&
      typeof rootSpec.get('pem') === 'string') {
    const pin = rootSpec.has('sha256') ? rootSpec.get('sha256') : null
    root = { pem: rootSpec.get('pem'), sha256: pin === null ? null : hexField(pin, `policy ${where}: root.sha256`, 32) }
  } else {
    throw new ConfigError(`policy ${where}: root must be "aws-nitro", "mock" or {"pem": PATH}`)
  }
  const sets = doc.get('measurements')
  if (!Array.isArray(sets) || !sets.length) throw new ConfigError(`policy ${where}: measurements must be a non-empty list`)
  const allowDebug = doc.has('allow_debug') ? doc.get('allow_debug') : false
  if (typeof allowDebug !== 'boolean') throw new ConfigError(`policy ${where}: allow_debug must be true or false`)
  const measurements = new PcrAllowlist(sets.map((s, i) => pcrSet(s, `policy ${where} measurements[${i}]`)), { allowDebug })
  let maxAge = doc.has('max_age_s') ? doc.get('max_age_s') : MAX_ATTESTATION_AGE_S
  if (maxAge instanceof CborFloat) maxAge = maxAge.value
  if (typeof maxAge === 'bigint') maxAge = Number(maxAge)
  if (typeof maxAge !== 'number' || !Number.isFinite(maxAge) || maxAge <= 0) {
    throw new ConfigError(`policy ${where}: max_age_s must be a positive number of seconds`)
  }
  let models = doc.has('models') ? doc.get('models') : null
  if (models !== null) {
    if (!(models instanceof Map)) throw new ConfigError(`policy ${where}: models must be an object of id: digest hex`)
    models = new Map([...models].map(([k, v]) => [k, digestPins(v, `policy ${where}: models.${k}`)]))
  }
  const owners = doc.has('owner_keys') ? doc.get('owner_keys') : null
  let ownerKeys = null
  if (owners !== null) {
    if (!Array.isArray(owners)) throw new ConfigError(`policy ${where}: owner_keys must be a list of 64-hex keys`)
    ownerKeys = owners.map((k, i) => hexField(k, `policy ${where}: owner_keys[${i}]`, 32))
  }
  const sessionMode = doc.has('session_mode') ? doc.get('session_mode') : 'fresh'
  if (sessionMode !== 'fresh' && sessionMode !== 'cached') {
    throw new ConfigError(`policy ${where}: session_mode must be "fresh" or "cached"`)
  }
  return { version, root, maxAgeS: maxAge, measurements, models, ownerKeys, minEnclavePolicyVersion: minPv, sessionMode }
}

/** What a client trusts for its sessions (Python's ClientPolicy, minus P3/P4). */
export class ClientPolicy {
  /**
   * @param {{attestation: AttestationPolicy, models?: Map<string, Set<string>> | null, source: string,
   *   version?: number, minEnclavePolicyVersion?: number, sessionMode?: string, ownerKeys?: Uint8Array[] | null}} f
   *   models: model id → the manifest digests (hex) P1 accepts; null: any attested model
   */
  constructor (f) {
    if (!(f.attestation instanceof AttestationPolicy)) throw new ConfigError('client policy: attestation must be an AttestationPolicy')
    this.attestation = f.attestation
    this.models = f.models ?? null
    this.source = f.source
    this.version = f.version ?? 0
    this.minEnclavePolicyVersion = f.minEnclavePolicyVersion ?? 0
    this.sessionMode = f.sessionMode ?? 'fresh'
    this.ownerKeys = f.ownerKeys ?? null
    Object.freeze(this)
  }

  /**
   * Parse a policy file's JSON (§8.1) and resolve its root.
   * @param {string | Uint8Array} json
   * @param {{where: string, mockRoot?: string | Uint8Array, readRoot?: (path: string) => Promise<string | Uint8Array>}} options
   *   where: how messages name the policy; mockRoot: the mock root's PEM, needed only by
   *   `"root": "mock"`; readRoot: reads a `{"pem": path}` root
   */
  static async fromJson (json, { where, mockRoot, readRoot }) {
    let doc
    try {
      doc = parseStrictJson(typeof json === 'string' ? json : new TextDecoder('utf-8', { fatal: true }).decode(json))
    } catch (e) {
      throw new ConfigError(`policy ${where} is not JSON: ${e instanceof Error ? e.message : e}`, { cause: e })
    }
    const p = parsePolicyDocument(doc, where)
    let root
    if (p.root === 'aws-nitro') {
      root = await TrustedRoot.awsNitro()
    } else if (p.root === 'mock') {
      if (mockRoot === undefined) throw new ConfigError(`policy ${where}: "root": "mock" needs the mock root certificate`)
      root = await TrustedRoot.unsafeMock(mockRoot)
    } else {
      if (!readRoot) throw new ConfigError(`policy ${where}: cannot read root ${p.root.pem}`)
      root = await TrustedRoot.fromPemOrDer(await readRoot(p.root.pem), p.root.pem)
      const pin = p.root.sha256
      if (pin !== null && root.fingerprint !== toHex(pin)) {
        throw new PolicyError(
          `P3 policy signature: root ${p.root.pem} has SHA-256 ${root.fingerprint.slice(0, 16)}…, the policy pins ${toHex(pin).slice(0, 16)}…`
        )
      }
    }
    return new ClientPolicy({
      attestation: new AttestationPolicy(root, p.measurements, { maxAgeS: p.maxAgeS }),
      models: p.models,
      source: where,
      version: p.version,
      minEnclavePolicyVersion: p.minEnclavePolicyVersion,
      sessionMode: p.sessionMode,
      ownerKeys: p.ownerKeys
    })
  }

  /**
   * P1 then P2 on a *verified* binding; throws PolicyError.
   * @param {import('./binding.js').EnclaveBinding} binding
   */
  checkBinding (binding) {
    this.checkModels(binding)
    // P2 enclave policy version.
    if (binding.policyVersion < this.minEnclavePolicyVersion) {
      throw new PolicyError(
        `P2 enclave policy version: the enclave enforces policy version ${binding.policyVersion}, the policy (${this.source}) requires at least ${this.minEnclavePolicyVersion}`
      )
    }
  }

  /**
   * P1: every model the enclave serves that the policy pins has a pinned digest.
   * @param {import('./binding.js').EnclaveBinding} binding
   */
  checkModels (binding) {
    if (this.models === null) return
    for (const [modelId, digest] of binding.models) {
      const pins = this.models.get(modelId)
      if (pins !== undefined && !pins.has(toHex(digest))) {
        const allowed = pySorted([...pins].map((d) => d.slice(0, 16) + '…')).join(', ')
        throw new PolicyError(
          `P1 model: enclave serves ${pyRepr(modelId)} with digest ${toHex(digest).slice(0, 16)}…, the policy allows ${allowed}`
        )
      }
    }
  }

  /**
   * P1 for the model a request uses.
   * @param {import('./binding.js').EnclaveBinding} binding
   * @param {string} modelId
   */
  checkModel (binding, modelId) {
    if (this.models !== null && !this.models.has(modelId)) {
      throw new PolicyError(`P1 model: ${pyRepr(modelId)} is not allowed by the policy (${this.source})`)
    }
    this.checkModels(binding)
  }
}
