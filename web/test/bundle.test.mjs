// The bundle the page loads: built with esbuild into a temporary folder, imported,
// and run on vectors, so that what ships is what the other tests checked.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL, fileURLToPath } from 'node:url'
import { test } from 'node:test'
import { build } from 'esbuild'
import { loadIndex, read } from './_vectors.mjs'

test('the esbuild bundle exports the API and verifies a document and a receipt', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ephemeralml-web-'))
  try {
    const out = join(dir, 'ephemeralml.js')
    await build({
      entryPoints: [fileURLToPath(new URL('../src/index.js', import.meta.url))],
      outfile: out, bundle: true, format: 'esm', platform: 'browser', target: ['es2022'], logLevel: 'error'
    })
    const E = await import(pathToFileURL(out).href)
    for (const name of ['ClientSession', 'ClientPolicy', 'verifyAttestation', 'verifyReceipt', 'EmbedRequest', 'checkPlatform', 'TrustedRoot']) {
      assert.equal(typeof E[name], 'function', name)
    }
    await E.checkPlatform()
    const idx = loadIndex()
    const v = idx.vectors.find((/** @type {any} */ x) => x.id === 'receipt_fresh_0')
    const policy = await E.ClientPolicy.fromJson(JSON.stringify(idx.policies[v.inputs.policy]), { where: 'p', mockRoot: read(idx.roots.mock.file) })
    const va = await E.verifyAttestation(read(v.files.document), policy.attestation, { now: v.inputs.now_ms })
    const vr = await E.verifyReceipt(read(v.files.receipt), va)
    assert.deepEqual(vr.receipt.toJSON(), v.expect.values.receipt)
    const bad = read(v.files.receipt)
    bad[bad.length - 1] ^= 1
    await assert.rejects(E.verifyReceipt(bad, va), (e) => e instanceof E.ReceiptError && e.message.startsWith('R4 signature'))
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
