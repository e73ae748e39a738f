// A mock NSM for the live-session tests: a fresh P-384 chain (root → intermediate →
// leaf, the profile of ephemeralml/mock/_certs.py) and documents in the layout AWS
// writes, signed with Web Crypto. Proves nothing about hardware, like the real mock.
import { encode } from '../src/cbor.js'
import { concat } from '../src/util.js'
import { x509 } from '../src/x509.js'

const P384 = { name: 'ECDSA', namedCurve: 'P-384' }
const SIG = { name: 'ECDSA', hash: 'SHA-384' }
const HOUR = 3600 * 1000

export async function mockChain (nowMs = Date.now()) {
  const gen = () => crypto.subtle.generateKey(P384, true, ['sign', 'verify'])
  const [rootKeys, midKeys, leafKeys] = await Promise.all([gen(), gen(), gen()])
  const ku = (/** @type {number} */ flags) => new x509.KeyUsagesExtension(flags, true)
  const root = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01', name: 'CN=test MOCK root - NOT AWS', keys: rootKeys, signingAlgorithm: SIG,
    notBefore: new Date(nowMs - 24 * HOUR), notAfter: new Date(nowMs + 24 * 365 * HOUR),
    extensions: [new x509.BasicConstraintsExtension(true, 1, true), ku(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRlSign)]
  })
  const mid = await x509.X509CertificateGenerator.create({
    serialNumber: '02', subject: 'CN=test MOCK intermediate', issuer: root.subject, publicKey: midKeys.publicKey,
    signingKey: rootKeys.privateKey, signingAlgorithm: SIG,
    notBefore: new Date(nowMs - HOUR), notAfter: new Date(nowMs + 24 * HOUR),
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), ku(x509.KeyUsageFlags.keyCertSign)]
  })
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: '03', subject: 'CN=test MOCK leaf', issuer: mid.subject, publicKey: leafKeys.publicKey,
    signingKey: midKeys.privateKey, signingAlgorithm: SIG,
    notBefore: new Date(nowMs - HOUR), notAfter: new Date(nowMs + 2 * HOUR),
    extensions: [new x509.BasicConstraintsExtension(false, undefined, true), ku(x509.KeyUsageFlags.digitalSignature)]
  })
  const der = (/** @type {any} */ c) => new Uint8Array(c.rawData)
  return { root: der(root), cabundle: [der(root), der(mid)], leaf: der(leaf), leafKey: leafKeys.privateKey }
}

/**
 * @param {Awaited<ReturnType<typeof mockChain>>} chain
 * @param {{timestampMs: number, pcrs: Map<number, Uint8Array>, publicKey?: Uint8Array | null,
 *   userData?: Uint8Array | null, nonce?: Uint8Array | null}} f
 */
export async function mockDocument (chain, f) {
  // AWS's key order (not canonical): the payload is built by hand.
  const entries = [
    ['module_id', 'i-test0000000000000-enc0000000000000000'], ['digest', 'SHA384'], ['timestamp', f.timestampMs],
    ['pcrs', f.pcrs], ['certificate', chain.leaf], ['cabundle', chain.cabundle],
    ['public_key', f.publicKey ?? null], ['user_data', f.userData ?? null], ['nonce', f.nonce ?? null]
  ]
  const payload = concat(new Uint8Array([0xa9]), ...entries.map(([k, v]) => concat(encode(k), encode(v))))
  const protectedBytes = encode(new Map([[1, -35]]))
  const tbs = encode(['Signature1', protectedBytes, new Uint8Array(0), payload])
  const sig = new Uint8Array(await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-384' }, chain.leafKey, tbs))
  return encode([protectedBytes, new Map(), payload, sig])
}

/** Sixteen PCRs: 0, 1, 2 set, the rest zero. */
export function mockPcrs () {
  const pcrs = new Map()
  for (let i = 0; i < 16; i++) pcrs.set(i, new Uint8Array(48).fill(i < 3 ? 0x11 * (i + 1) : 0))
  return pcrs
}
