// The conformance vectors (tests/vectors/conformance, docs/protocol.md §13) through
// the JavaScript library: every vector in index.json must reach the outcome the
// index records, as tests/unit/test_conformance.py requires of the Python side.
// Accepts: the same extracted values. Rejects: the same error class, code and
// check id, and the same message wherever the message is the protocol's own.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { verifyAttestation } from '../src/attestation.js'
import { decodeStrict, decodeDeterministic, encode, Tagged } from '../src/cbor.js'
import { EphemeralError } from '../src/errors.js'
import { deriveKeyPair, hpkeSuite, sessionInfo, responseNonce, chunkNonce, INFO_LABEL } from '../src/hpke.js'
import { CancelRequest, EmbedResult, GenerateRequest, GenerateResult, decodeRequest } from '../src/messages.js'
import { verifyReceipt, Receipt } from '../src/receipt.js'
import { ClientSession } from '../src/session.js'
import { sha256, sha384, toHex, concat } from '../src/util.js'
import { TestEnclave } from './_enclave.mjs'
import { hex, loadIndex, policy, read } from './_vectors.mjs'
import { parseUnverified } from '../src/attestation.js'
import { Chacha20Poly1305 } from '@hpke/chacha20poly1305'

const INDEX = loadIndex()

// Messages that quote the Python libraries (cbor2, cryptography): §13 lets another
// implementation differ there. For these the text is compared up to the quote.
const LIBRARY_QUOTED = {
  attestation_payload_duplicate_key: 'A2 payload: payload is not well-formed CBOR: ',
  attestation_leaf_not_der: 'A3 signature: leaf certificate is not a DER X.509 certificate ('
}

/**
 * @param {string} id
 * @param {unknown} e
 * @param {any} expect
 */
function assertRejected (id, e, expect) {
  assert.equal(expect.outcome, 'reject', `expected accept, got ${e}`)
  assert.ok(e instanceof EphemeralError, `a raw ${e} escaped`)
  assert.equal(e.name, expect.error)
  assert.equal(e.code, expect.code)
  if (id in LIBRARY_QUOTED) {
    const prefix = LIBRARY_QUOTED[id]
    assert.ok(expect.message.startsWith(prefix), 'the index changed: review LIBRARY_QUOTED')
    assert.ok(e.message.startsWith(prefix), e.message)
  } else {
    assert.equal(e.message, expect.message)
  }
  if (/^[APRS]\d+$/u.test(expect.check)) assert.ok(e.message.startsWith(expect.check + ' '))
}

/** @param {Uint8Array} raw */
function cosePayload (raw) {
  let obj = decodeStrict(raw, { topTags: [18] })
  if (obj instanceof Tagged) obj = obj.value
  return { protected: obj[0], payload: obj[2] }
}

const ofKind = (/** @type {string} */ kind) => INDEX.vectors.filter((/** @type {any} */ v) => v.kind === kind)

test('the index names only files whose SHA-256 it records', async () => {
  assert.equal(INDEX.format, 'ephemeralml-conformance/1')
  for (const [path, digest] of Object.entries(INDEX.files)) assert.equal(toHex(await sha256(read(path))), digest, path)
  assert.equal(toHex(INFO_LABEL), INDEX.constants.hpke_info_prefix)
})

// ---------------------------------------------------------------------------
// Attestation documents (§3)

for (const v of ofKind('attestation')) {
  test(v.id, async () => {
    const raw = read(v.files.document)
    const p = await policy(v.inputs.policy)
    assert.equal(p.attestation.root.isMock, v.inputs.root.mock)
    let verified
    try {
      verified = await verifyAttestation(raw, p.attestation, { now: v.inputs.now_ms, nonce: hex(v.inputs.nonce) })
    } catch (e) {
      assertRejected(v.id, e, v.expect)
      return
    }
    assert.equal(v.expect.outcome, 'accept', 'it verified')
    const d = verified.document
    const env = cosePayload(raw)
    assert.deepEqual({
      document_sha256: toHex(await sha256(raw)),
      module_id: d.moduleId,
      digest: d.digest,
      timestamp_ms: d.timestampMs,
      pcrs: Object.fromEntries([...d.pcrs].map(([i, p]) => [String(i), toHex(p)])),
      public_key: d.publicKey && toHex(d.publicKey),
      user_data: d.userData && toHex(d.userData),
      nonce: d.nonce && toHex(d.nonce),
      leaf_sha256: toHex(await sha256(d.certificate)),
      cabundle_sha256: await Promise.all(d.cabundle.map(async (c) => toHex(await sha256(c)))),
      sig_structure_sha384: toHex(await sha384(encode(['Signature1', env.protected, new Uint8Array(0), env.payload])))
    }, v.expect.values)
  })
}

// ---------------------------------------------------------------------------
// Receipts (§5), as `ephemeral verify` runs them: the document at its own time,
// R1–R11, then P1 for the receipt's model and P2.

for (const v of ofKind('receipt')) {
  test(v.id, async () => {
    const { files, inputs, expect } = v
    const raw = read(files.receipt)
    const doc = read(files.document)
    const request = files.request ? read(files.request) : null
    const response = files.response ? read(files.response) : null
    const p = await policy(inputs.policy)
    assert.equal((await parseUnverified(doc)).timestampMs, inputs.now_ms)
    const e = inputs.expectations
    let vr
    try {
      const va = await verifyAttestation(doc, p.attestation, { now: inputs.now_ms })
      vr = await verifyReceipt(raw, va, {
        expect: {
          seq: e.seq,
          sessionId: hex(e.session_id) ?? undefined,
          clientNonce: hex(e.client_nonce) ?? undefined,
          transcriptHash: hex(e.transcript_hash) ?? undefined,
          modelId: e.model_id,
          truncate: e.truncate,
          inputs: e.inputs,
          requestHash: request ? await sha256(request) : undefined,
          responseHash: response ? await sha256(response) : undefined
        }
      })
      p.checkBinding(vr.binding)
      p.checkModel(vr.binding, vr.receipt.model_id)
    } catch (err) {
      assertRejected(v.id, err, expect)
      return
    }
    assert.equal(expect.outcome, 'accept', 'it verified')
    const env = cosePayload(raw)
    const values = expect.values
    assert.deepEqual(vr.receipt.toJSON(), values.receipt)
    assert.deepEqual(Receipt.fromCbor(env.payload).toJSON(), values.receipt)
    const docHash = toHex(await sha256(doc))
    assert.equal(toHex(env.protected), values.protected)
    assert.equal(toHex(encode(new Map([[1, -8], [4, await sha256(doc)]]))), values.protected)
    assert.equal(values.kid, docHash)
    assert.equal(values.attestation_sha256, docHash)
    assert.equal(toHex(encode(['Signature1', env.protected, new Uint8Array(0), env.payload])), values.sig_structure)
    assert.equal(toHex(vr.binding.receiptKey), values.receipt_public_key)
    if (request) {
      assert.equal(toHex(vr.receipt.request_hash), values.request_sha256)
      assert.equal(toHex(await sha256(request)), values.request_sha256)
      assert.deepEqual(encode(decodeDeterministic(request)), request)
    }
    if (response) {
      assert.equal(toHex(vr.receipt.response_hash), values.response_sha256)
      assert.deepEqual(EmbedResult.fromCbor(response).toCbor(), response)
    }
  })
}

// ---------------------------------------------------------------------------
// Sessions (§2, §4): the client must produce every c2e frame and accept every
// e2c frame; the enclave (test/_enclave.mjs) the other way round.

/** @param {any} v */
const framesOf = (v) => v.files.frames.map((/** @type {any} */ f) => [f, read(f.frame)])

/** @param {any} v */
async function replayClient (v) {
  const { inputs } = v
  const p = await policy(inputs.policy)
  const requests = inputs.client.requests.map((/** @type {string} */ path) => decodeRequest(read(path)))
  const client = new ClientSession(p, {
    nonce: hex(inputs.client.nonce), mode: inputs.mode, testing: { ekm: hex(inputs.client.ikmE) }
  })
  const events = []
  for (const [i, [f, data]] of framesOf(v).entries()) {
    try {
      if (f.dir === 'c2e') {
        let produced
        if (f.type === 'hello') produced = client.hello()
        else if (f.type === 'open') produced = client.dataToSend()
        else {
          const request = requests.shift()
          // §2.8: a cancel is sealed like a request and takes the next seq.
          produced = request instanceof CancelRequest ? await client.cancel(request.seq) : (await client.sendRequest(request)).frame
        }
        assert.deepEqual(produced, data, `the client's frame ${i} (${f.type}) differs`)
        continue
      }
      client.receiveData(data)
      events.push(await client.nextEvent({ now: inputs.now_ms }))
    } catch (e) {
      if (e instanceof assert.AssertionError) throw e
      return { at: i, error: e }
    }
  }
  return { client, events }
}

/** @param {any} v */
async function replayEnclave (v) {
  const en = v.inputs.enclave
  const doc = read(v.files.document)
  const parsed = await parseUnverified(doc)
  assert.equal(en.document_timestamp_ms, parsed.timestampMs)
  const enclave = await new TestEnclave({
    receiptKeySeed: hex(en.receipt_key_seed),
    models: new Map(Object.entries(en.models).map(([k, d]) => [k, hex(d)])),
    keyReleases: new Map(Object.entries(en.key_releases).map(([k, d]) => [k, hex(d)])),
    policyVersion: en.policy_version,
    mode: en.mode,
    pcrs: parsed.pcrs
  }, { sessionId: hex(en.session_id), ikmR: hex(en.ikmR) }).init()
  if (parsed.publicKey) assert.deepEqual(enclave.publicKey, parsed.publicKey)
  const out = []
  const events = []
  // Streams in progress (§2.8): the enclave's chunks and end are made when the
  // vector's next frame is one of them, in the order the session ran.
  const streams = new Map()
  for (const [i, [f, data]] of framesOf(v).entries()) {
    if (f.dir === 'e2c') {
      const seq = decodeDeterministic(data.subarray(4)).get('seq')
      if (!out.length && streams.has(seq)) {
        const [started, answer] = streams.get(seq)
        const st = answer.stream
        if (f.type === 'chunk') {
          out.push(await enclave.chunk(started, st.chunks[enclave._streams.get(seq).nextK]))
        } else {
          assert.equal(enclave._streams.get(seq).nextK, st.chunks.length)
          streams.delete(seq)
          out.push(await enclave.endStream(started, {
            finish: st.finish,
            promptTokens: st.prompt_tokens,
            completionTokens: st.completion_tokens,
            device: st.device,
            modelDigest: hex(answer.model_digest),
            timeMs: answer.time_ms,
            durationUs: answer.duration_us,
            receiptId: hex(answer.receipt_id)
          }))
        }
      }
      assert.ok(out.length, `the enclave has no frame ${i} (${f.type}) to send`)
      assert.deepEqual(out.shift(), data, `the enclave's frame ${i} (${f.type}) differs`)
      continue
    }
    let ev
    try {
      enclave.receiveData(data)
      ev = await enclave.nextEvent()
    } catch (e) {
      return { at: i, error: e }
    }
    events.push(ev)
    if (ev?.type === 'hello') {
      assert.equal(ev.mode, v.inputs.mode)
      out.push(ev.mode === 'cached' ? await enclave.attestCached(doc) : await enclave.attest(doc))
    } else if (ev?.type === 'cancel') {
      assert.deepEqual(new CancelRequest(ev.target).toCbor(), read(f.body))
      assert.equal(en.answers[ev.seq], null) // a cancel has no answer of its own
    } else if (ev?.type === 'request') {
      assert.deepEqual(ev.request.toCbor(), read(f.body))
      assert.deepEqual(ev.requestHash, await sha256(read(f.body)))
      const answer = en.answers[ev.seq]
      if (answer.stream) {
        assert.ok(ev.request instanceof GenerateRequest)
        streams.set(ev.seq, [ev, answer])
      } else if (answer.error) {
        out.push(await enclave.respondError(ev, answer.error.code, answer.error.message))
      } else {
        out.push(await enclave.respond(ev, EmbedResult.fromCbor(read(answer.result)), {
          modelDigest: hex(answer.model_digest),
          timeMs: answer.time_ms,
          durationUs: answer.duration_us,
          receiptId: hex(answer.receipt_id),
          truncated: answer.truncated
        }))
      }
    } else {
      assert.ok(ev === null && f.type === 'open')
    }
  }
  assert.equal(out.length, 0, 'the enclave produced frames the vector does not hold')
  return { enclave, events }
}

/** The derived values of §2.6 and §4, recomputed from the frames with @hpke directly. */
async function checkTranscriptValues (/** @type {any} */ v) {
  const values = v.expect.values
  const hpke = values.hpke
  const doc = read(v.files.document)
  const docHash = await sha256(doc)
  const sid = hex(values.session_id)
  const frames = framesOf(v)
  assert.equal(values.attestation_sha256, toHex(docHash))
  const info = sessionInfo(docHash)
  assert.equal(hpke.info, toHex(info))
  const r = await deriveKeyPair(hex(v.inputs.enclave.ikmR))
  const e = await deriveKeyPair(hex(v.inputs.client.ikmE))
  assert.deepEqual([toHex(r.publicKey), toHex(r.privateKey), toHex(e.publicKey), toHex(e.privateKey)],
    [hpke.pkR, hpke.skR, hpke.pkE, hpke.skE])
  const open = decodeDeterministic(frames[2][1].subarray(4))
  assert.equal(toHex(open.get('enc')), hpke.enc)
  assert.equal(hpke.enc, hpke.pkE) // DHKEM(X25519): enc is the ephemeral public key
  const suite = hpkeSuite()
  const sender = await suite.createSenderContext({ recipientPublicKey: r.pair.publicKey, info, ekm: e.pair })
  const receiver = await suite.createRecipientContext({ recipientKey: r.pair, enc: sender.enc, info })
  const key = new Uint8Array(await receiver.export(new TextEncoder().encode('ephemeralml/1 response key'), 32))
  const base = new Uint8Array(await receiver.export(new TextEncoder().encode('ephemeralml/1 response nonce'), 12))
  assert.deepEqual([toHex(key), toHex(base)], [hpke.response_key, hpke.response_base_nonce])
  const chunkKey = new Uint8Array(await receiver.export(new TextEncoder().encode('ephemeralml/1 chunk key'), 32))
  const chunkBase = new Uint8Array(await receiver.export(new TextEncoder().encode('ephemeralml/1 chunk nonce'), 12))
  assert.deepEqual([toHex(chunkKey), toHex(chunkBase)], [hpke.chunk_key, hpke.chunk_base_nonce])
  const chunkAead = new Chacha20Poly1305().createEncryptionContext(chunkKey.buffer)
  assert.equal(values.transcript_hash, toHex(await sha256(concat(...frames.slice(0, 3).map(([, d]) => d)))))
  const aead = new Chacha20Poly1305().createEncryptionContext(key.buffer)
  const messages = [...values.messages]
  for (const [f, data] of frames.slice(3)) {
    const body = decodeDeterministic(data.subarray(4))
    assert.equal(new DataView(data.buffer, data.byteOffset).getUint32(0), data.length - 4)
    const m = messages.shift()
    const seq = body.get('seq')
    if (f.type === 'chunk') {
      // §2.8: the chunk's number is in its aad and its nonce.
      const k = body.get('k')
      const aad = encode(new Map([['k', k], ['t', 'chunk'], ['sid', sid], ['seq', seq]]))
      assert.deepEqual([m.type, m.seq, m.k, m.aad], ['chunk', seq, k, toHex(aad)])
      const nonce = chunkNonce(chunkBase, seq, k)
      assert.equal(m.nonce, toHex(nonce))
      assert.deepEqual(new Uint8Array(await chunkAead.open(nonce, body.get('ct'), aad)), read(f.body))
      continue
    }
    const aad = encode(new Map([['t', f.type], ['sid', sid], ['seq', seq]]))
    assert.deepEqual([m.type, m.seq, m.aad], [f.type, seq, toHex(aad)])
    if (f.type === 'req') {
      // HPKE's own sequence: the context's seq-th Seal is request seq (H2).
      assert.deepEqual(new Uint8Array(await sender.seal(read(f.body), aad)), body.get('ct'))
      assert.deepEqual(new Uint8Array(await receiver.open(body.get('ct'), aad)), read(f.body))
      continue
    }
    const nonce = responseNonce(base, seq)
    assert.equal(m.nonce, toHex(nonce))
    const plain = new Uint8Array(await aead.open(nonce, body.get('ct'), aad))
    assert.deepEqual(plain, read(f.body))
    const opened = decodeDeterministic(plain)
    if (f.result) {
      // §5: response_hash covers the deterministic CBOR of the result map.
      assert.deepEqual(encode(opened.get('result')), read(f.result))
      assert.deepEqual(opened.get('receipt'), read(f.receipt))
    }
  }
}

for (const v of ofKind('session')) {
  test(v.id, async () => {
    const expect = v.expect
    if (expect.outcome === 'reject') {
      const run = expect.side === 'client' ? await replayClient(v) : await replayEnclave(v)
      assert.ok('error' in run, `the ${expect.side} accepted every frame`)
      assert.equal(run.at, expect.at_frame, `failed at frame ${run.at}: ${run.error}`)
      assertRejected(v.id, run.error, expect)
      return
    }
    const values = expect.values
    const c = await replayClient(v)
    assert.ok('client' in c, `client: ${c.error}`)
    const en = await replayEnclave(v)
    assert.ok('enclave' in en, `enclave: ${en.error}`)
    assert.equal(toHex(c.client.transcriptHash), values.transcript_hash)
    assert.deepEqual(en.enclave.transcriptHash, c.client.transcriptHash)
    assert.equal(toHex(c.client.sessionId), values.session_id)
    assert.equal(c.events[0].type, 'attested')
    // One client event per e2c frame after the attest: a chunk, a response, an end.
    const e2c = v.files.frames.filter((/** @type {any} */ f) => f.dir === 'e2c' && f.type !== 'attest')
    assert.equal(c.events.length - 1, e2c.length)
    /** @type {Map<number, Uint8Array[]>} the chunks' plaintexts, per stream */
    const bodies = new Map()
    const seen = []
    for (const [i, ev] of c.events.slice(1).entries()) {
      const f = e2c[i]
      if (ev.type === 'response') {
        assert.deepEqual(ev.result.toCbor(), read(f.result))
        assert.deepEqual(ev.receipt.raw, read(f.receipt))
        seen.push({ seq: ev.seq, event: 'result', receipt_id: toHex(ev.receipt.receipt.receipt_id) })
      } else if (ev.type === 'chunk') {
        assert.equal(f.type, 'chunk')
        bodies.set(ev.seq, [...(bodies.get(ev.seq) ?? []), read(f.body)])
        seen.push({ seq: ev.seq, event: 'chunk', k: ev.k, text: ev.text })
      } else if (ev.type === 'stream_end') {
        // §2.8: the receipt's response_hash covers the end's result map, whose stream
        // hash covers every chunk's plaintext, in order.
        const r = ev.result
        assert.deepEqual(r.toCbor(), read(f.result))
        assert.deepEqual(GenerateResult.fromCbor(read(f.result)).toCbor(), read(f.result))
        assert.deepEqual(ev.receipt.raw, read(f.receipt))
        const links = (bodies.get(ev.seq) ?? []).map((b) => concat(Uint8Array.of(0, 0, b.length >> 8, b.length & 255), b))
        assert.deepEqual(r.stream, await sha256(concat(...links)))
        assert.deepEqual(ev.receipt.receipt.response_hash, await sha256(r.toCbor()))
        seen.push({
          seq: ev.seq,
          event: 'end',
          result: {
            model: r.model,
            finish: r.finish,
            chunks: r.chunks,
            stream: toHex(r.stream),
            prompt_tokens: r.promptTokens,
            completion_tokens: r.completionTokens,
            device: r.device
          },
          receipt: ev.receipt.receipt.toJSON()
        })
      } else {
        assert.equal(ev.type, 'request_failed')
        seen.push({ seq: ev.seq, event: 'error', code: ev.code, message: ev.message })
      }
    }
    assert.deepEqual(seen, values.events)
    await checkTranscriptValues(v)
  })
}

// ---------------------------------------------------------------------------
// Policies that do not parse (§8.1)

for (const v of ofKind('policy')) {
  test(v.id, async () => {
    await assert.rejects(policy(v.inputs.policy), (e) => {
      assertRejected(v.id, e, v.expect)
      return true
    })
  })
}

test('every vector of the index ran', () => {
  const kinds = new Set(['attestation', 'receipt', 'session', 'policy'])
  assert.ok(INDEX.vectors.every((/** @type {any} */ v) => kinds.has(v.kind)))
  assert.ok(INDEX.vectors.length >= 139)
})
