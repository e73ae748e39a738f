// The strict CBOR decoders and the canonical encoder (common/_cbor.py; protocol.md §1.2).
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { MAX_CBOR_DEPTH, decodeDeterministic, decodeStrict, encode, Tagged } from '../src/cbor.js'
import { DecodeError, LimitError } from '../src/errors.js'
import { CborFloat, fromHex, toHex } from '../src/util.js'

const reject = (/** @type {string} */ h, /** @type {RegExp | string} */ want, strict = false, cls = DecodeError) =>
  assert.throws(() => (strict ? decodeStrict : decodeDeterministic)(fromHex(h)), (e) =>
    e instanceof cls && (typeof want === 'string' ? e.message === want : want.test(e.message)))

test('the encoder writes what cbor2 canonical writes (length-first key order)', () => {
  // cbor2.dumps({'aa': 1, 'b': 2, 1000: 3, -1: 4, 24: 5}, canonical=True)
  assert.equal(toHex(encode(new Map([['aa', 1], ['b', 2], [1000, 3], [-1, 4], [24, 5]]))), 'a520041818056162021903e80362616101')
  // The hello of protocol.md §1.3: keys t, v, mode, nonce.
  const hello = encode(new Map([['t', 'hello'], ['v', 1], ['nonce', new Uint8Array(32)], ['mode', 'fresh']]))
  assert.equal(toHex(hello).slice(0, 46), 'a461746568656c6c6f617601646d6f6465656672657368')
  assert.equal(toHex(encode(new Map([[1, -35]]))), 'a1013822')
  assert.equal(toHex(encode(new Tagged(18, [new Uint8Array([1]), new Map(), new Uint8Array(0), new Uint8Array(2)]))), 'd2844101a040420000')
  assert.equal(toHex(encode(2 ** 40)), '1b0000010000000000')
})

test('D2: the head walk refuses with the Python messages', () => {
  reject('', 'CBOR is empty')
  reject('5820', 'CBOR is not well-formed CBOR: a string of 32 bytes at byte 0 runs past the end')
  reject('19', 'CBOR is not well-formed CBOR: a head is cut short')
  reject('82', 'CBOR is not well-formed CBOR: 2 items declared at byte 0 but 0 bytes remain')
  assert.throws(() => decodeStrict(fromHex('d2'), { topTags: [18] }), /^DecodeError: CBOR is not well-formed CBOR: it ends inside an item$/)
  reject('9f01ff', 'CBOR is not well-formed CBOR: indefinite length at byte 0')
  reject('1c', 'CBOR is not well-formed CBOR: reserved head 0x1c at byte 0')
  reject('9a00100000', 'CBOR is not well-formed CBOR: 1048576 items declared at byte 0 but 0 bytes remain')
  reject('a1800102', 'CBOR: map key at byte 1 is not an integer or a string')
  reject('d9d9f7a0', 'CBOR has CBOR tag 55799 at byte 0, which is not accepted')
  reject('81d81c01', 'CBOR has CBOR tag 28 at byte 1, which is not accepted')
  reject('0101', 'CBOR has 1 trailing bytes')
  reject('81'.repeat(MAX_CBOR_DEPTH + 1) + '00', `CBOR is nested too deeply (limit ${MAX_CBOR_DEPTH})`)
  assert.throws(() => decodeStrict(fromHex('99' + '1001' + '00'.repeat(4097))), (e) => e instanceof LimitError && e.message === 'CBOR holds more than 4096 CBOR items')
  assert.throws(() => decodeStrict(fromHex('00'), { maxBytes: 0, what: 'x' }), (e) => e instanceof LimitError && e.message === 'x is 1 bytes; the limit is 0')
  assert.throws(() => decodeStrict('00'), DecodeError)
})

test('only the named tag, and only on the outermost item', () => {
  assert.ok(decodeStrict(fromHex('d28100'), { topTags: [18] }) instanceof Tagged)
  reject('d28100', 'CBOR has CBOR tag 18 at byte 0, which is not accepted', true)
  assert.throws(() => decodeStrict(fromHex('81d28100'), { topTags: [18] }), /tag 18 at byte 1/)
})

test('duplicate keys and invalid UTF-8 are refused; floats stay floats; big integers stay exact', () => {
  reject('a2616101616102', /^CBOR is not well-formed CBOR: /, true)
  reject('62c328', /^CBOR is not well-formed CBOR: invalid UTF-8/, true)
  assert.ok(decodeStrict(fromHex('f93c00')) instanceof CborFloat)
  assert.equal(decodeStrict(fromHex('1bffffffffffffffff')), 2n ** 64n - 1n)
  assert.equal(decodeStrict(fromHex('3bffffffffffffffff')), -(2n ** 64n))
})

test('D1: only the deterministic encoding passes decodeDeterministic', () => {
  const msg = 'CBOR is not deterministically encoded (RFC 8949 §4.2.1)'
  reject('1817', msg) // 23 in a one-byte argument
  reject('590001ff', msg) // a one-byte string with a two-byte length
  reject('a2617601617401', msg) // keys v, t: out of order
  reject('a262616101616202', msg) // "aa" before "b": length first
  reject('fa3f800000', msg) // 1.0 as a float32
  reject('fb3ff0000000000000', msg)
  reject('f97e01', msg) // a NaN other than f97e00
  assert.deepEqual(decodeDeterministic(fromHex('a2617401617602')), new Map([['t', 1], ['v', 2]]))
  assert.ok(decodeDeterministic(fromHex('fb3ff0000000000001')) instanceof CborFloat)
  assert.ok(decodeDeterministic(fromHex('f90001')) instanceof CborFloat) // the smallest half subnormal
  // Accepted strictly even when not deterministic (AWS documents are not).
  assert.equal(decodeStrict(fromHex('1817')), 23)
})
