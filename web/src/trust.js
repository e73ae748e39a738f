/**
 * What a verifier trusts: the root certificate (A4) and the measurements (A9)
 * (ephemeralml/common/_trust.py).
 */

import { ConfigError, PolicyError } from './errors.js'
import { basicConstraints, directlyIssuedBy, loadDer, pemCertificates } from './x509.js'
import { bytesEqual, fromHex, sha256, toHex } from './util.js'

/** SHA-256 of the DER of "AWS Nitro Enclaves Root-G1", as AWS publishes it. */
export const AWS_NITRO_ROOT_SHA256 = '641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b'

/** The AWS Nitro Enclaves Root-G1 certificate (public; the same bytes as client/_aws_root.py). */
export const AWS_NITRO_ROOT_G1_PEM = `-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
`

/** The NSM has 32 PCRs. */
export const MAX_PCRS = 32
/** One PCR: SHA-384. */
export const PCR_BYTES = 48

/**
 * One certificate given as PEM text or DER bytes, as DER (ConfigError otherwise).
 * @param {string | Uint8Array} data
 * @param {string} what
 */
function certificateDer (data, what) {
  if (typeof data === 'string' || (data instanceof Uint8Array && new TextDecoder().decode(data.subarray(0, 64)).trimStart().startsWith('-----BEGIN'))) {
    const text = typeof data === 'string' ? data : new TextDecoder().decode(data)
    let certs
    try {
      certs = pemCertificates(text)
    } catch (e) {
      throw new ConfigError(`${what}: not a PEM or DER X.509 certificate (${e instanceof Error ? e.message : e})`, { cause: e })
    }
    if (certs.length !== 1) throw new ConfigError(`${what}: expected exactly one PEM certificate, got ${certs.length}`)
    return certs[0]
  }
  if (!(data instanceof Uint8Array)) throw new ConfigError(`${what}: expected certificate bytes, got ${typeof data}`)
  return new Uint8Array(data)
}

/**
 * A root certificate documents must chain to (cabundle[0], byte for byte). Build it
 * with {@link TrustedRoot.awsNitro}, {@link TrustedRoot.fromPemOrDer} or
 * {@link TrustedRoot.unsafeMock} (then `isMock` is true and the page must warn).
 */
export class TrustedRoot {
  /**
   * @param {string} name
   * @param {Uint8Array} der
   * @param {boolean} isMock
   * @param {string} fingerprint
   */
  constructor (name, der, isMock, fingerprint) {
    this.name = name
    this.certificateDer = der
    this.isMock = isMock
    /** SHA-256 of the DER, lowercase hex. */
    this.fingerprint = fingerprint
    Object.freeze(this)
  }

  /**
   * @param {string} name
   * @param {Uint8Array} der
   * @param {boolean} isMock
   */
  static async _make (name, der, isMock) {
    let cert
    try {
      cert = loadDer(der)
    } catch (e) {
      throw new ConfigError(`trusted root '${name}': not a PEM or DER X.509 certificate (${e instanceof Error ? e.message : e})`, { cause: e })
    }
    const bc = basicConstraints(cert)
    if (bc === null || !bc.ca) throw new ConfigError(`trusted root '${name}': certificate is not a CA`)
    if (!await directlyIssuedBy(cert, cert)) throw new ConfigError(`trusted root '${name}': certificate is not self-signed`)
    return new TrustedRoot(name, der, isMock, toHex(await sha256(der)))
  }

  /**
   * The AWS Nitro Enclaves root, refused unless its SHA-256 is {@link AWS_NITRO_ROOT_SHA256}.
   * @param {string | Uint8Array} [certificate] PEM or DER; the built-in copy by default
   */
  static async awsNitro (certificate = AWS_NITRO_ROOT_G1_PEM) {
    const der = certificateDer(certificate, 'AWS Nitro root')
    const got = toHex(await sha256(der))
    if (!bytesEqual(fromHex(got), fromHex(AWS_NITRO_ROOT_SHA256))) {
      throw new ConfigError(
        `AWS Nitro root: certificate fingerprint ${got} is not the AWS Nitro Enclaves Root-G1 (${AWS_NITRO_ROOT_SHA256})`
      )
    }
    return TrustedRoot._make('aws-nitro-root-g1', der, false)
  }

  /**
   * The development mock's root. Proves nothing about hardware.
   * @param {string | Uint8Array} certificate PEM or DER
   */
  static async unsafeMock (certificate) {
    return TrustedRoot._make('UNSAFE-mock-root', certificateDer(certificate, 'mock root'), true)
  }

  /**
   * A root named explicitly by the user; not a mock.
   * @param {string | Uint8Array} certificate PEM or DER
   * @param {string} [name]
   */
  static async fromPemOrDer (certificate, name = 'custom') {
    return TrustedRoot._make(name, certificateDer(certificate, `root '${name}'`), false)
  }
}

/**
 * Accept a document whose PCRs equal every value of at least one allowed entry.
 * An empty allowlist, or an entry that names no PCR, is a configuration error:
 * never allow-all. Debug-mode documents (PCR0 all zero) are refused unless
 * `allowDebug`.
 */
export class PcrAllowlist {
  /**
   * @param {Array<Map<number, Uint8Array> | Record<string, Uint8Array>>} allowed entries of index → 48 bytes
   * @param {{allowDebug?: boolean}} [options]
   */
  constructor (allowed, { allowDebug = false } = {}) {
    if (!Array.isArray(allowed)) throw new ConfigError('PCR allowlist: expected a sequence of {index: value} entries')
    if (!allowed.length) throw new ConfigError('PCR allowlist is empty; it would allow nothing (never allow-all)')
    /** @type {ReadonlyArray<ReadonlyMap<number, Uint8Array>>} */
    this.allowed = Object.freeze(allowed.map((entry, n) => {
      const items = entry instanceof Map ? [...entry] : entry && typeof entry === 'object' ? Object.entries(entry).map(([k, v]) => [Number(k), v]) : null
      if (items === null || !items.length) throw new ConfigError(`PCR allowlist entry ${n} names no PCR (never allow-all)`)
      /** @type {Map<number, Uint8Array>} */
      const checked = new Map()
      for (const [index, value] of items) {
        if (!Number.isInteger(index) || index < 0 || index >= MAX_PCRS) {
          throw new ConfigError(`PCR allowlist entry ${n}: index ${index} not in 0..31`)
        }
        if (!(value instanceof Uint8Array) || value.length !== PCR_BYTES) {
          throw new ConfigError(`PCR allowlist entry ${n}: PCR${index} must be ${PCR_BYTES} bytes`)
        }
        checked.set(index, value)
      }
      return new Map([...checked].sort((a, b) => a[0] - b[0]))
    }))
    this.allowDebug = Boolean(allowDebug)
    Object.freeze(this)
  }

  /**
   * protocol.md §3 A9; throws {@link PolicyError}.
   * @param {{pcrs: ReadonlyMap<number, Uint8Array>, isDebug: boolean}} doc
   */
  check (doc) {
    // A debug-mode enclave's PCRs say nothing about its code.
    if (doc.isDebug && !this.allowDebug) {
      throw new PolicyError('A9 measurements: debug-mode enclave (PCR0 all zero) refused; allow_debug is not set')
    }
    const reasons = []
    for (const [n, entry] of this.allowed.entries()) {
      let mismatch = null
      for (const [i, want] of entry) {
        if (!bytesEqual(doc.pcrs.get(i) ?? new Uint8Array(0), want)) {
          mismatch = i
          break
        }
      }
      if (mismatch === null) return
      const got = doc.pcrs.get(mismatch)
      reasons.push(`entry ${n} differs at PCR${mismatch} (got ${got && got.length ? toHex(got).slice(0, 16) : 'none'}...)`)
    }
    throw new PolicyError(`A9 measurements: PCRs match none of the ${this.allowed.length} allowed entries: ${reasons.join('; ')}`)
  }
}

/** Accepts any measurements. Only for inspecting a document without a policy. */
export class UnsafeAnyMeasurements {
  check () {}
}
