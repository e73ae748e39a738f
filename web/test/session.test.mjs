// Live sessions in memory: the library's ClientSession against the test enclave
// (test/_enclave.mjs) and a fresh mock chain, with a relay that can tamper.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { AttestationPolicy } from '../src/attestation.js'
import { encode } from '../src/cbor.js'
import { EphemeralError, LimitError, LocalProtocolError, RemoteError } from '../src/errors.js'
import { encodeFrame } from '../src/frame.js'
import { EmbedRequest, EmbedResult, errorFrame, messageToCbor } from '../src/messages.js'
import { ClientPolicy } from '../src/policy.js'
import { ClientSession, ClientState } from '../src/session.js'
import { PcrAllowlist, TrustedRoot } from '../src/trust.js'
import { TestEnclave } from './_enclave.mjs'
import { mockChain, mockDocument, mockPcrs } from './_mock_nsm.mjs'

const MODEL = 'all-MiniLM-L6-v2'
const NOW = Date.now()
const rand = (/** @type {number} */ n) => crypto.getRandomValues(new Uint8Array(n))
const chain = await mockChain(NOW)

async function setup ({ policyModels = null, mode = 'mock' } = {}) {
  const pcrs = mockPcrs()
  const seed = rand(32)
  const digest = rand(32)
  const kr = rand(32)
  const sessionId = rand(16)
  const enclave = await new TestEnclave({
    receiptKeySeed: seed, models: new Map([[MODEL, digest]]), keyReleases: new Map([[MODEL, kr]]),
    policyVersion: 3, mode, pcrs
  }, { sessionId, ikmR: rand(32) }).init()
  const pkcs8 = new Uint8Array([...Buffer.from('302e020100300506032b657004220420', 'hex'), ...seed])
  const priv = await crypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, true, ['sign'])
  const jwk = await crypto.subtle.exportKey('jwk', priv)
  const rk = new Uint8Array(Buffer.from(/** @type {string} */ (jwk.x), 'base64url'))
  const userData = encode(new Map([['v', 1], ['sid', sessionId], ['rk', rk], ['models', new Map([[MODEL, digest]])],
    ['kr', new Map([[MODEL, kr]])], ['pv', 3], ['mode', mode]]))
  const root = await TrustedRoot.unsafeMock(chain.root)
  const policy = new ClientPolicy({
    attestation: new AttestationPolicy(root, new PcrAllowlist([new Map([[0, pcrs.get(0)], [1, pcrs.get(1)], [2, pcrs.get(2)]])])),
    models: policyModels, source: 'test'
  })
  const client = new ClientSession(policy)
  const doc = await mockDocument(chain, { timestampMs: NOW - 1000, pcrs, publicKey: enclave.publicKey, userData, nonce: client.nonce })
  return { client, enclave, doc, digest }
}

/** Run the handshake; `tamper` may change the attest frame on its way. */
async function handshake (/** @type {any} */ s, tamper = (/** @type {Uint8Array} */ f) => f) {
  s.enclave.receiveData(s.client.hello())
  const hello = await s.enclave.nextEvent()
  assert.equal(hello.type, 'hello')
  s.client.receiveData(tamper(await s.enclave.attest(s.doc)))
  const ev = await s.client.nextEvent({ now: NOW })
  if (ev?.type !== 'attested') return ev
  s.enclave.receiveData(s.client.dataToSend())
  assert.equal(await s.enclave.nextEvent(), null)
  return ev
}

test('a session: attested, two requests answered out of order, a refused one, receipts verified', async () => {
  const s = await setup()
  const att = await handshake(s)
  assert.equal(att.binding.mode, 'mock')
  assert.ok(att.attestation.root.isMock)
  const r0 = new EmbedRequest(MODEL, ['hello', 'world'])
  const r1 = new EmbedRequest(MODEL, ['x'.repeat(100)], { truncate: true })
  const r2 = new EmbedRequest('no-such-model', ['a'])
  const events = []
  for (const r of [r0, r1, r2]) {
    const { frame } = await s.client.sendRequest(r)
    s.enclave.receiveData(frame)
    events.push(await s.enclave.nextEvent())
  }
  assert.equal(s.client.inFlight, 3)
  const result = (/** @type {number} */ n) => new EmbedResult(MODEL, 4, n, new Uint8Array(16 * n))
  const answers = [
    await s.enclave.respond(events[1], result(1), { modelDigest: s.digest, timeMs: NOW, durationUs: 10, receiptId: rand(16), truncated: [0] }),
    await s.enclave.respond(events[0], result(2), { modelDigest: s.digest, timeMs: NOW, durationUs: 10, receiptId: rand(16), truncated: [] }),
    await s.enclave.respondError(events[2], 'inference', "unknown model 'no-such-model'")
  ]
  // All three frames in one chunk, then read one event at a time.
  s.client.receiveData(new Uint8Array(Buffer.concat(answers)))
  const got = [await s.client.nextEvent({ now: NOW }), await s.client.nextEvent({ now: NOW }), await s.client.nextEvent({ now: NOW })]
  assert.deepEqual(got.map((e) => [e.type, e.seq]), [['response', 1], ['response', 0], ['request_failed', 2]])
  assert.equal(got[0].receipt.receipt.truncate, true)
  assert.deepEqual(got[0].receipt.receipt.truncated, [0])
  assert.deepEqual(got[1].result.rows().length, 2)
  assert.equal(got[2].code, 'inference')
  assert.equal(await s.client.nextEvent({ now: NOW }), null)
  assert.equal(s.client.inFlight, 0)
  // The same response again: H3.
  s.client.receiveData(answers[0])
  await assert.rejects(s.client.nextEvent({ now: NOW }), /^CiphertextError: response 1 answers no request in flight \(replay\?\)$/)
  assert.equal(s.client.state, ClientState.ERROR)
  await assert.rejects(s.client.nextEvent({ now: NOW }), LocalProtocolError)
})

test('bytes may arrive one at a time', async () => {
  const s = await setup()
  s.enclave.receiveData(s.client.hello())
  await s.enclave.nextEvent()
  const frame = await s.enclave.attest(s.doc)
  for (const b of frame.subarray(0, -1)) {
    s.client.receiveData(new Uint8Array([b]))
    assert.equal(await s.client.nextEvent({ now: NOW }), null)
  }
  s.client.receiveData(frame.subarray(-1))
  assert.equal((await s.client.nextEvent({ now: NOW })).type, 'attested')
})

test('one flipped bit anywhere in the attest frame is never accepted', async () => {
  const s0 = await setup()
  s0.enclave.receiveData(s0.client.hello())
  await s0.enclave.nextEvent()
  const frame = await s0.enclave.attest(s0.doc)
  const positions = [0, 3, 4, 10, 20, ...Array.from({ length: 60 }, (_, i) => 30 + Math.floor(i * (frame.length - 31) / 60)), frame.length - 1]
  for (const at of positions) {
    const s = await setup()
    const bad = await handshake(s, (f) => {
      const g = new Uint8Array(f)
      g[at] ^= 1 << (at % 8)
      return g
    }).catch((e) => e)
    assert.ok(bad === null || bad instanceof EphemeralError, `bit at ${at}: ${bad?.type ?? bad}`)
  }
})

test('one flipped bit in a response is refused (H3) and ends the session', async () => {
  const s = await setup()
  await handshake(s)
  const { frame } = await s.client.sendRequest(new EmbedRequest(MODEL, ['a']))
  s.enclave.receiveData(frame)
  const ev = await s.enclave.nextEvent()
  const resp = await s.enclave.respond(ev, new EmbedResult(MODEL, 4, 1, new Uint8Array(16)), { modelDigest: s.digest, timeMs: NOW, durationUs: 1, receiptId: rand(16), truncated: [] })
  const bad = new Uint8Array(resp)
  bad[40] ^= 0x80 // inside ct (keys t, ct, seq)
  s.client.receiveData(bad)
  await assert.rejects(s.client.nextEvent({ now: NOW }), /^CiphertextError: response 0 failed authentication$/)
})

test('a document for another nonce is a replay (A7); a P1 pin refuses before open leaves', async () => {
  const s = await setup()
  const other = new ClientSession(s.client.policy)
  s.client = other
  await assert.rejects(handshake(s), /^AttestationError: A7 nonce: document nonce does not match the challenge$/)
  const p = await setup({ policyModels: new Map([[MODEL, new Set(['ab'.repeat(32)])]]) })
  await assert.rejects(handshake(p), /^PolicyError: P1 model: enclave serves 'all-MiniLM-L6-v2' with digest /)
  assert.equal(p.client.dataToSend().length, 0, 'nothing to send after a refusal')
})

test('error frames end the session and name who sent them as far as the client can know', async () => {
  for (const [line, want] of [['host relay: L1 handshake deadline of 10 s passed (hello to open)', 'the host relay reported limit: L1 handshake'],
    ['enclave overloaded', 'the peer reported limit: enclave overloaded']]) {
    const client = (await setup()).client
    client.hello()
    client.receiveData(encodeFrame(messageToCbor(errorFrame('limit', line))))
    await assert.rejects(client.nextEvent({ now: NOW }), (e) => e instanceof RemoteError && e.message.startsWith(want) && e.remoteCode === 'limit')
  }
})

test('calls out of order are our own mistakes (LocalProtocolError); F1 and F3 limits', async () => {
  const s = await setup()
  await assert.rejects(s.client.sendRequest(new EmbedRequest(MODEL, ['a'])), LocalProtocolError)
  s.client.hello()
  assert.throws(() => s.client.hello(), LocalProtocolError)
  // Before the attestation verified, a frame over 64 KiB is refused from its header.
  const head = new Uint8Array([0, 1, 0, 1])
  s.client.receiveData(head)
  await assert.rejects(s.client.nextEvent({ now: NOW }), (e) => e instanceof LimitError && e.message === 'frame of 65537 bytes is over the limit of 65536')
  assert.throws(() => s.client.receiveData(head), LocalProtocolError)
})
