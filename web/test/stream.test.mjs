// Streamed answers (protocol.md §2.8) through the library's public surface: the
// generate request's bytes, generate() and TextStream over an in-memory transport to
// the test enclave (test/_enclave.mjs), cancel, a refusal, and S4: a stream that ends
// without its end frame is TruncatedError, never a shorter answer. S1–S3 are covered
// by the conformance vectors (session_stream*), which both implementations run.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { AttestationPolicy } from '../src/attestation.js'
import { encode } from '../src/cbor.js'
import { InferenceError, LocalProtocolError, RemoteProtocolError, TruncatedError } from '../src/errors.js'
import { CancelRequest, GenerateRequest, decodeRequest } from '../src/messages.js'
import { ClientPolicy } from '../src/policy.js'
import { ClientSession } from '../src/session.js'
import { generate } from '../src/stream.js'
import { PcrAllowlist, TrustedRoot } from '../src/trust.js'
import { toHex } from '../src/util.js'
import { TestEnclave } from './_enclave.mjs'
import { mockChain, mockDocument, mockPcrs } from './_mock_nsm.mjs'

const MODEL = 'SmolLM2-360M-Instruct'
const NOW = Date.now()
const rand = (/** @type {number} */ n) => crypto.getRandomValues(new Uint8Array(n))
const chain = await mockChain(NOW)

/** An attested session to a test enclave serving MODEL. */
async function openSession () {
  const pcrs = mockPcrs()
  const seed = rand(32)
  const digest = rand(32)
  const kr = rand(32)
  const sessionId = rand(16)
  const enclave = await new TestEnclave({
    receiptKeySeed: seed, models: new Map([[MODEL, digest]]), keyReleases: new Map([[MODEL, kr]]), policyVersion: 3, mode: 'mock', pcrs
  }, { sessionId, ikmR: rand(32) }).init()
  const pkcs8 = new Uint8Array([...Buffer.from('302e020100300506032b657004220420', 'hex'), ...seed])
  const priv = await crypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, true, ['sign'])
  const rk = new Uint8Array(Buffer.from(/** @type {string} */ ((await crypto.subtle.exportKey('jwk', priv)).x), 'base64url'))
  const userData = encode(new Map([['v', 1], ['sid', sessionId], ['rk', rk], ['models', new Map([[MODEL, digest]])],
    ['kr', new Map([[MODEL, kr]])], ['pv', 3], ['mode', 'mock']]))
  const policy = new ClientPolicy({
    attestation: new AttestationPolicy(await TrustedRoot.unsafeMock(chain.root),
      new PcrAllowlist([new Map([[0, pcrs.get(0)], [1, pcrs.get(1)], [2, pcrs.get(2)]])])),
    models: null,
    source: 'test'
  })
  const client = new ClientSession(policy)
  const doc = await mockDocument(chain, { timestampMs: NOW - 1000, pcrs, publicKey: enclave.publicKey, userData, nonce: client.nonce })
  enclave.receiveData(client.hello())
  await enclave.nextEvent()
  client.receiveData(await enclave.attest(doc))
  assert.equal((await client.nextEvent({ now: NOW })).type, 'attested')
  enclave.receiveData(client.dataToSend())
  assert.equal(await enclave.nextEvent(), null)
  return { client, enclave, digest }
}

/**
 * A transport whose far end is the test enclave: frames the client sends reach it at
 * once; `serve(ev)` answers each request with the frames to deliver. `close(why)` ends
 * the connection after what is queued.
 */
function relay (/** @type {TestEnclave} */ enclave, /** @type {(ev: any) => Promise<Uint8Array[]>} */ serve) {
  /** @type {Uint8Array[]} */
  const queue = []
  /** @type {string | null} */
  let closed = null
  const received = []
  return {
    received,
    close (/** @type {string} */ why) { closed = why },
    async send (/** @type {Uint8Array} */ bytes) {
      enclave.receiveData(bytes)
      const ev = await enclave.nextEvent()
      received.push(ev)
      queue.push(...await serve(ev))
    },
    async next () {
      const frame = queue.shift()
      if (frame) return frame
      throw Object.assign(new Error(closed ?? 'the host closed the connection (1006)'), { name: 'TransportError' })
    }
  }
}

const ending = (/** @type {Uint8Array} */ digest, finish = 'stop') => ({
  finish, promptTokens: 12, completionTokens: 3, device: 'CPUExecutionProvider', modelDigest: digest, timeMs: NOW, durationUs: 500, receiptId: rand(16)
})

test('a generate request is the deterministic CBOR of §2.8, floats as floats, defaults left out', () => {
  const chat = [{ role: 'user', content: 'hi' }]
  const greedy = new GenerateRequest(MODEL, 16, { messages: chat })
  assert.deepEqual([...decodeRequest(greedy.toCbor()).toCbor()], [...greedy.toCbor()])
  assert.equal(toHex(greedy.toCbor()), toHex(encode(new Map([['op', 'generate'], ['model', MODEL], ['max_tokens', 16],
    ['messages', [new Map([['role', 'user'], ['content', 'hi']])]]]))))
  // temperature 1.0 is the half float f9 3c00, never the integer 1; 0.9 a double.
  const hot = new GenerateRequest(MODEL, 16, { prompt: 'x', temperature: 1, topP: 0.9, seed: 3, stop: ['\n'] })
  const hex = toHex(hot.toCbor())
  assert.ok(hex.includes(toHex(new TextEncoder().encode('temperature')) + 'f93c00'), hex)
  assert.ok(hex.includes(toHex(new TextEncoder().encode('top_p')) + 'fb3feccccccccccccd'), hex)
  const back = decodeRequest(hot.toCbor())
  assert.deepEqual([back.temperature, back.topP, back.seed, back.stop], [1, 0.9, 3, ['\n']])
  assert.throws(() => new GenerateRequest(MODEL, 16, { messages: chat, prompt: 'x' }), /^RemoteProtocolError: a generate request has messages or a prompt, not both$/)
  assert.throws(() => new GenerateRequest(MODEL, 16, { messages: [{ role: 'tool', content: 'x' }] }),
    /^RemoteProtocolError: message role 'tool' is not one of \['assistant', 'system', 'user'\]$/)
  // A default sent explicitly is another encoding of the same request: refused.
  const m = new Map([['op', 'generate'], ['model', MODEL], ['max_tokens', 1], ['prompt', 'x'], ['top_k', 0]])
  assert.throws(() => decodeRequest(encode(m)), /carries a default value in \['top_k'\]/)
  assert.deepEqual([...new CancelRequest(3).toCbor()], [...encode(new Map([['op', 'cancel'], ['seq', 3]]))])
})

test('generate(): the pieces in order, then the verified receipt that covers them', async () => {
  const { client, enclave, digest } = await openSession()
  const pieces = ['The', ' capital', ' is', ' Paris', '.']
  const t = relay(enclave, async (ev) => {
    const frames = []
    for (const p of pieces) frames.push(await enclave.chunk(ev, p)) // one after another: k = 0, 1, 2, …
    return [...frames, await enclave.endStream(ev, ending(digest))]
  })
  const stream = await generate(client, new GenerateRequest(MODEL, 16, { messages: [{ role: 'user', content: 'capital of France?' }] }), t, { now: () => NOW })
  const got = []
  for await (const piece of stream) got.push(piece)
  assert.deepEqual(got, pieces)
  const r = stream.result
  assert.equal(r.text, 'The capital is Paris.')
  assert.deepEqual([r.finish, r.promptTokens, r.completionTokens, r.device], ['stop', 12, 3, 'CPUExecutionProvider'])
  assert.deepEqual(r.receipt.receipt.request_hash, new Uint8Array(await crypto.subtle.digest('SHA-256', r.requestCbor)))
  assert.deepEqual(r.receipt.receipt.response_hash, new Uint8Array(await crypto.subtle.digest('SHA-256', r.responseCbor)))
  assert.equal(r.receipt.receipt.truncate, false)
  assert.equal(client.inFlight, 0)
  assert.equal(await stream.finish(), r)
})

test('S4: a stream cut off before its end is TruncatedError, never a shorter answer', async () => {
  const { client, enclave } = await openSession()
  const t = relay(enclave, async (ev) => [await enclave.chunk(ev, 'Once'), await enclave.chunk(ev, ' upon')])
  t.close('the host closed the connection (1006)')
  const stream = await generate(client, new GenerateRequest(MODEL, 16, { prompt: 'x' }), t, { now: () => NOW })
  const got = []
  await assert.rejects(async () => { for await (const p of stream) got.push(p) }, (e) => {
    assert.ok(e instanceof TruncatedError)
    assert.equal(e.code, 'truncated')
    assert.equal(e.message, "answer 0 cut short after 2 chunk(s), without the enclave's end and receipt: the host closed the connection (1006)")
    return true
  })
  assert.deepEqual(got, ['Once', ' upon'])
  assert.equal(stream.result, null)
})

test('cancel: sealed with the next seq, no answer of its own; the stream ends "cancelled" with its receipt', async () => {
  const { client, enclave, digest } = await openSession()
  let started = null
  const t = relay(enclave, async (ev) => {
    if (ev.type === 'request') {
      started = ev
      return [await enclave.chunk(ev, 'one')]
    }
    assert.deepEqual([ev.type, ev.seq, ev.target], ['cancel', 1, 0])
    return [await enclave.chunk(started, ' two'), await enclave.endStream(started, ending(digest, 'cancelled'))]
  })
  const stream = await generate(client, new GenerateRequest(MODEL, 64, { prompt: 'count' }), t, { now: () => NOW })
  assert.deepEqual(await stream.next(), { done: false, value: 'one' })
  await stream.cancel()
  await stream.cancel() // once only
  const r = await stream.finish()
  assert.deepEqual([r.text, r.finish], ['one two', 'cancelled'])
  assert.equal(t.received.filter((ev) => ev.type === 'cancel').length, 1)
  await assert.rejects(client.cancel(0), (e) => e instanceof LocalProtocolError && e.message === 'request 0 is no stream in flight')
})

test('a refused generate request is the enclave\'s error, and the session goes on', async () => {
  const { client, enclave } = await openSession()
  const t = relay(enclave, async (ev) => [await enclave.respondError(ev, 'inference', "unknown model 'x'")])
  const stream = await generate(client, new GenerateRequest('x', 4, { prompt: 'x' }), t, { now: () => NOW })
  await assert.rejects(stream.next(), (e) => e instanceof InferenceError && e.message === "enclave refused the request: unknown model 'x'")
  assert.equal(client.state, 'ready')
})

test('an event for another request in the middle of a stream is refused', async () => {
  const { client, enclave, digest } = await openSession()
  const other = await client.sendRequest(new GenerateRequest(MODEL, 4, { prompt: 'first' }))
  enclave.receiveData(other.frame)
  const first = await enclave.nextEvent()
  const t = relay(enclave, async () => [await enclave.endStream(first, ending(digest))])
  const stream = await generate(client, new GenerateRequest(MODEL, 4, { prompt: 'second' }), t, { now: () => NOW })
  await assert.rejects(stream.next(), (e) => e instanceof RemoteProtocolError && e.message === 'unexpected StreamEnded in a stream')
})
