/**
 * X.509 through @peculiar/x509 (maintained by Peculiar Ventures, on Web Crypto):
 * parsing, extensions, and issuer signatures. Path rules (cabundle order, CA
 * constraints, critical extensions) are the checks of protocol.md §3 A4 and live
 * in attestation.js, as they do in Python.
 *
 * @peculiar/x509 2.x needs a Reflect metadata polyfill (its dependency injection
 * container, tsyringe, asks for one); it is imported first, here, once.
 */

import 'reflect-metadata'
import * as x509 from '@peculiar/x509'
import { AsnConvert } from '@peculiar/asn1-schema'
import { describe } from './errors.js'
import { bytesEqual } from './util.js'

/** cryptography's name for what it raises on bytes that are not a DER certificate. */
class ValueError extends Error {
  name = 'ValueError'
}

export const BASIC_CONSTRAINTS = '2.5.29.19'
export const KEY_USAGE = '2.5.29.15'

/**
 * Parse one DER certificate and its extensions now, so that a malformed one fails
 * here. Throws an Error whose message is "Type: message".
 *
 * Held to DER as Python's `load_der_x509_certificate` is: @peculiar/x509 alone
 * reads bytes that do not start with a SEQUENCE as PEM, hex or base64 text, and
 * ignores trailing bytes; here the input must start with a SEQUENCE and be exactly
 * the encoding of what was parsed.
 * @param {Uint8Array} der
 * @returns {x509.X509Certificate}
 */
export function loadDer (der) {
  let cert
  try {
    if (!(der instanceof Uint8Array) || der[0] !== 0x30) throw new ValueError('not a DER SEQUENCE')
    cert = new x509.X509Certificate(der)
    if (!bytesEqual(new Uint8Array(AsnConvert.serialize(cert.asn)), der)) {
      throw new ValueError('not in DER (trailing bytes or a non-canonical encoding)')
    }
    const seen = new Set()
    for (const ext of cert.extensions) {
      // RFC 5280 §4.2: "A certificate MUST NOT include more than one instance of a
      // particular extension" (cryptography refuses it as DuplicateExtension).
      if (seen.has(ext.type)) {
        const dup = new Error(`${ext.type} appears twice`)
        dup.name = 'DuplicateExtension'
        throw dup
      }
      seen.add(ext.type)
    }
    void cert.notBefore
    void cert.notAfter
  } catch (e) {
    throw new Error(describe(e), { cause: e })
  }
  return cert
}

/**
 * @param {x509.X509Certificate} cert
 * @returns {{ca: boolean, pathLength: number | null} | null}
 */
export function basicConstraints (cert) {
  const ext = cert.getExtension(x509.BasicConstraintsExtension)
  if (!ext) return null
  return { ca: Boolean(ext.ca), pathLength: ext.pathLength ?? null }
}

/**
 * @param {x509.X509Certificate} cert
 * @returns {{keyCertSign: boolean, digitalSignature: boolean} | null}
 */
export function keyUsage (cert) {
  const ext = cert.getExtension(x509.KeyUsagesExtension)
  if (!ext) return null
  return {
    keyCertSign: (ext.usages & x509.KeyUsageFlags.keyCertSign) !== 0,
    digitalSignature: (ext.usages & x509.KeyUsageFlags.digitalSignature) !== 0
  }
}

/**
 * Is `cert` directly issued by `issuer`: issuer name equal to the issuer's subject,
 * and the signature verifies with the issuer's key (cryptography's
 * verify_directly_issued_by). Any failure, an unsupported algorithm included, is false.
 * @param {x509.X509Certificate} cert
 * @param {x509.X509Certificate} issuer
 */
export async function directlyIssuedBy (cert, issuer) {
  try {
    const a = new Uint8Array(cert.issuerName.toArrayBuffer())
    const b = new Uint8Array(issuer.subjectName.toArrayBuffer())
    if (!bytesEqual(a, b)) return false
    return await cert.verify({ publicKey: issuer.publicKey, signatureOnly: true })
  } catch {
    return false
  }
}

/**
 * Every certificate in a PEM text, as DER.
 * @param {string} pem
 * @returns {Uint8Array[]}
 */
export function pemCertificates (pem) {
  return x509.PemConverter.decodeWithHeaders(pem)
    .filter((/** @type {any} */ b) => b.type === 'CERTIFICATE')
    .map((/** @type {any} */ b) => new Uint8Array(b.rawData))
}

export { x509 }
