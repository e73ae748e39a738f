// Real AWS Nitro documents (tests/vectors/real, PROVENANCE.md there) and the
// official RFC 9180 vectors of our HPKE suite, through the library.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { AttestationPolicy, verifyAttestation } from '../src/attestation.js'
import { AttestationError, PolicyError } from '../src/errors.js'
import { hpkeSuite } from '../src/hpke.js'
import { AWS_NITRO_ROOT_G1_PEM, AWS_NITRO_ROOT_SHA256, PcrAllowlist, TrustedRoot } from '../src/trust.js'
import { fromHex, sha256, toHex } from '../src/util.js'
import { REAL } from './_vectors.mjs'
import { x509 } from '../src/x509.js'

const META = JSON.parse(readFileSync(REAL + 'nitro_vectors.json', 'utf8'))
const readReal = (/** @type {string} */ name) => new Uint8Array(readFileSync(REAL + name))

/** The document's own PCRs 0, 1, 2, 3, 4, 8, debug allowed (PcrAllowlist.from_document). */
function ownPcrs (/** @type {any} */ d) {
  return new PcrAllowlist([new Map([0, 1, 2, 3, 4, 8].map((i) => [i, fromHex(d.pcrs[String(i)])]))], { allowDebug: true })
}

test('the built-in AWS root is the one AWS publishes, and the shared copy', async () => {
  const root = await TrustedRoot.awsNitro()
  assert.equal(root.fingerprint, AWS_NITRO_ROOT_SHA256)
  assert.equal(root.fingerprint, META.root.sha256_der)
  assert.equal(AWS_NITRO_ROOT_G1_PEM.trim(), readFileSync(REAL + META.root.file, 'utf8').trim())
  const other = await TrustedRoot.fromPemOrDer(readFileSync(REAL + META.root.file, 'utf8'), 'copy')
  assert.deepEqual(other.certificateDer, root.certificateDer)
})

test('a root with another fingerprint is not the AWS root', async () => {
  const mock = readFileSync(`${REAL}../conformance/roots/mock_root.pem`, 'utf8')
  await assert.rejects(TrustedRoot.awsNitro(mock), /AWS Nitro root: certificate fingerprint 1eb9588e.* is not the AWS Nitro Enclaves Root-G1/)
})

for (const d of META.documents) {
  test(`${d.file} verifies at its own time, with its own PCRs`, async () => {
    const raw = readReal(d.file)
    assert.equal(toHex(await sha256(raw)), d.sha256)
    const policy = new AttestationPolicy(await TrustedRoot.awsNitro(), ownPcrs(d))
    const va = await verifyAttestation(raw, policy, { now: d.timestamp_ms })
    assert.equal(va.document.moduleId, d.module_id)
    assert.equal(va.document.isDebug, d.debug_mode_pcr0_all_zero)
    assert.equal(va.document.cabundle.length, d.cabundle_len)
    assert.equal(va.document.publicKey && toHex(va.document.publicKey), d.public_key_hex ?? null)
    assert.equal(va.document.userData && toHex(va.document.userData), d.user_data_hex ?? null)
    assert.equal(va.document.nonce && toHex(va.document.nonce), d.nonce_hex ?? null)
    for (const [i, v] of Object.entries(d.pcrs)) assert.equal(toHex(/** @type {Uint8Array} */ (va.document.pcrs.get(Number(i)))), v)
  })

  test(`${d.file}: one flipped bit of the signature or of PCR0 fails A3`, async () => {
    const raw = readReal(d.file)
    const policy = new AttestationPolicy(await TrustedRoot.awsNitro(), ownPcrs(d))
    const sig = new Uint8Array(raw)
    sig[sig.length - 1] ^= 1
    await assert.rejects(verifyAttestation(sig, policy, { now: d.timestamp_ms }),
      (e) => e instanceof AttestationError && e.message === 'A3 signature: COSE ES384 signature does not verify')
    const pcr = new Uint8Array(raw)
    const at = Buffer.from(raw).indexOf(Buffer.from(d.pcrs['0'], 'hex'))
    assert.ok(at > 0)
    pcr[at] ^= 1
    await assert.rejects(verifyAttestation(pcr, policy, { now: d.timestamp_ms }), /^AttestationError: A3 signature/)
  })

  test(`${d.file}: refused at now (its chain has expired), under a strict policy, under another root`, async () => {
    const raw = readReal(d.file)
    const aws = await TrustedRoot.awsNitro()
    await assert.rejects(verifyAttestation(raw, new AttestationPolicy(aws, ownPcrs(d)), { now: Date.UTC(2027, 0, 1) }),
      (e) => e instanceof AttestationError && e.message.startsWith('A5 validity: '))
    const strict = new PcrAllowlist([new Map([[0, new Uint8Array(48).fill(0xab)]])])
    await assert.rejects(verifyAttestation(raw, new AttestationPolicy(aws, strict), { now: d.timestamp_ms }),
      (e) => e instanceof PolicyError && e.message.startsWith('A9 measurements: '))
    // A freshly made self-signed P-384 root with the same name as AWS's.
    const keys = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify'])
    const impostor = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: '01', name: 'CN=aws.nitro-enclaves, OU=AWS, O=Amazon, C=US',
      notBefore: new Date('2019-01-01'), notAfter: new Date('2049-01-01'),
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' }, keys,
      extensions: [new x509.BasicConstraintsExtension(true, undefined, true)]
    })
    const root = await TrustedRoot.fromPemOrDer(new Uint8Array(impostor.rawData), 'impostor')
    await assert.rejects(verifyAttestation(raw, new AttestationPolicy(root, ownPcrs(d)), { now: d.timestamp_ms }),
      (e) => e instanceof AttestationError && e.message.startsWith("A4 chain: cabundle[0] is not the pinned root 'impostor'"))
  })
}

test('nitro_attestation_bad_sig.cbor is refused at A3', async () => {
  const d = META.documents[1]
  const policy = new AttestationPolicy(await TrustedRoot.awsNitro(), ownPcrs(d))
  await assert.rejects(verifyAttestation(readReal('nitro_attestation_bad_sig.cbor'), policy, { now: d.timestamp_ms }),
    (e) => e instanceof AttestationError && e.message === 'A3 signature: COSE ES384 signature does not verify')
})

test('RFC 9180 test vectors of DHKEM(X25519)/HKDF-SHA256/ChaCha20-Poly1305, base mode', async () => {
  const all = JSON.parse(readFileSync(REAL + 'hpke_vectors.json', 'utf8'))
  const vs = all.filter((/** @type {any} */ v) => v.mode === 0 && v.kem_id === 32 && v.kdf_id === 1 && v.aead_id === 3)
  assert.equal(vs.length, 1)
  const v = vs[0]
  const suite = hpkeSuite()
  const rkp = await suite.kem.deriveKeyPair(fromHex(v.ikmR).buffer)
  assert.equal(toHex(new Uint8Array(await suite.kem.serializePublicKey(rkp.publicKey))), v.pkRm)
  const sender = await suite.createSenderContext({ recipientPublicKey: rkp.publicKey, info: fromHex(v.info), ekm: fromHex(v.ikmE) })
  assert.equal(toHex(new Uint8Array(sender.enc)), v.enc)
  const recipient = await suite.createRecipientContext({ recipientKey: rkp, enc: sender.enc, info: fromHex(v.info) })
  for (const [i, e] of v.encryptions.entries()) {
    const ct = new Uint8Array(await sender.seal(fromHex(e.pt), fromHex(e.aad)))
    if (i < 3 || i === v.encryptions.length - 1) assert.equal(toHex(ct), e.ct, `encryption ${i}`)
    assert.equal(toHex(new Uint8Array(await recipient.open(ct, fromHex(e.aad)))), e.pt)
  }
  for (const x of v.exports) {
    assert.equal(toHex(new Uint8Array(await recipient.export(fromHex(x.exporter_context), x.L))), x.exported_value)
  }
})
