/**
 * One canonical CBOR encoding, and strict decoders of untrusted bytes
 * (ephemeralml/common/_cbor.py; protocol.md §1.2 D1, D2).
 *
 * Decoding is three steps, in the order the Python decoder reports failures:
 *
 * 1. {@link prescan}: the well-formedness walk of RFC 8949 Appendix C over the item
 *    heads (strings skipped by length), with the same limits and messages as
 *    Python's `_prescan`: every tag refused but one the caller names on the
 *    outermost item (COSE_Sign1's 18); indefinite lengths and reserved heads; a
 *    string, array or map declaring more than the bytes that remain; map keys that
 *    are not integers or strings; nesting deeper than {@link MAX_CBOR_DEPTH}; more
 *    than `maxItems` items; trailing bytes. Limits before work.
 * 2. cborg decodes (maps as `Map`, duplicate keys refused, no indefinite lengths,
 *    integers beyond 2^53 as bigint, floats kept apart as {@link CborFloat}, no tag
 *    but the named one). Text must be valid UTF-8 (cborg alone would replace bad
 *    sequences; cbor2 refuses them).
 * 3. For {@link decodeDeterministic}: the input must be the one canonical encoding of
 *    its value, checked on the heads the walk saw (shortest heads, map keys in
 *    canonical order, shortest floats) instead of by re-encoding, which gives the
 *    same answer as Python's re-encode-and-compare without a second copy.
 *
 * The canonical order is what cbor2's `canonical=True` writes, which is what the
 * Python side hashes and signs: map keys sorted by the length of their encoding,
 * then bytewise (RFC 7049 §3.9). For every map the protocol defines (text keys
 * only, or small non-negative integer keys) this is the same order as RFC 8949
 * §4.2.1's bytewise one.
 */

import { decode as cborgDecode, encode as cborgEncode, Tagged, Token, Tokenizer, Type } from 'cborg'
import { DecodeError, LimitError } from './errors.js'
import { CborFloat } from './util.js'

export { Tagged }

/** Nesting limit for untrusted CBOR (our deepest structure is 5 levels). */
export const MAX_CBOR_DEPTH = 16

/** Most data items in one decode; our largest structures hold about 200. */
export const MAX_CBOR_ITEMS = 4096

const UINT = 0
const NINT = 1
const BYTES = 2
const TEXT = 3
const ARRAY = 4
const MAP = 5
const TAG = 6
const SIMPLE = 7
const ARG_BYTES = /** @type {Record<number, number>} */ ({ 24: 1, 25: 2, 26: 4, 27: 8 })

const strictUtf8 = new TextDecoder('utf-8', { fatal: true })

/**
 * Compare two encoded keys in canonical order: shorter first, then bytewise.
 * @param {Uint8Array} a
 * @param {Uint8Array} b
 */
function canonicalCompare (a, b) {
  if (a.length !== b.length) return a.length - b.length
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i]
  return 0
}

/**
 * @param {Uint8Array} data
 * @param {number} pos
 * @param {number} size
 */
function readArg (data, pos, size) {
  if (size === 8) {
    const v = new DataView(data.buffer, data.byteOffset + pos, 8).getBigUint64(0)
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v
  }
  let v = 0
  for (let i = 0; i < size; i++) v = v * 256 + data[pos + i]
  return v
}

/**
 * Is `v` (a double) exactly a binary16 value?
 * @param {number} v
 */
function fitsHalf (v) {
  if (v === 0 || !Number.isFinite(v)) return true
  const a = Math.abs(v)
  if (a > 65504 || a < 2 ** -24) return false
  const e = Math.floor(Math.log2(a))
  // Subnormals are multiples of 2^-24; normals have 11 significant bits.
  const quantum = e < -14 ? 2 ** -24 : 2 ** (Math.max(e, -14) - 10)
  return Number.isInteger(a / quantum)
}

/**
 * The head walk of protocol.md §1.2 D2. Throws what Python's `_prescan` throws, in
 * the same order. Returns the failures that Python finds later (when cbor2
 * decodes, when the value is re-encoded), so that the caller reports them in
 * Python's order.
 * @param {Uint8Array} data
 * @param {string} what
 * @param {number} maxItems
 * @param {ReadonlySet<number>} topTags
 * @returns {{utf8: string | null, canonical: boolean}}
 */
function prescan (data, what, maxItems, topTags) {
  const n = data.length
  let pos = 0
  let items = 0
  /** @type {string | null} */
  let badUtf8 = null
  let canonical = true
  /**
   * One entry per open container: items still to come, is a map, and for maps
   * the previous key's encoding.
   * @type {{left: number, map: boolean, prevKey: Uint8Array | null}[]}
   */
  const stack = []
  for (;;) {
    if (pos >= n) throw new DecodeError(`${what} is not well-formed CBOR: it ends inside an item`)
    const start = pos
    const ib = data[pos]
    const major = ib >> 5
    const ai = ib & 0x1f
    pos += 1
    /** @type {number | bigint} */
    let arg
    if (ai < 24) {
      arg = ai
    } else if (ai in ARG_BYTES) {
      const size = ARG_BYTES[ai]
      if (pos + size > n) throw new DecodeError(`${what} is not well-formed CBOR: a head is cut short`)
      arg = readArg(data, pos, size)
      pos += size
      if (major !== SIMPLE) {
        // D1: the shortest head for the argument.
        const min = size === 1 ? 24 : size === 2 ? 0x100 : size === 4 ? 0x10000 : 0x100000000
        if (arg < min) canonical = false
      } else if (size === 1) {
        if (/** @type {number} */ (arg) < 32) canonical = false
      } else {
        const view = new DataView(data.buffer, data.byteOffset + start + 1, size)
        const v = size === 2 ? halfToNumber(view.getUint16(0)) : size === 4 ? view.getFloat32(0) : view.getFloat64(0)
        if (Number.isNaN(v)) {
          if (size !== 2 || view.getUint16(0) !== 0x7e00) canonical = false
        } else if (size === 4 && fitsHalf(v)) {
          canonical = false
        } else if (size === 8 && (Math.fround(v) === v || fitsHalf(v))) {
          canonical = false
        }
      }
    } else if (ai === 31) {
      throw new DecodeError(`${what} is not well-formed CBOR: indefinite length at byte ${start}`)
    } else {
      throw new DecodeError(
        `${what} is not well-formed CBOR: reserved head 0x${ib.toString(16).padStart(2, '0')} at byte ${start}`
      )
    }
    items += 1
    if (items > maxItems) throw new LimitError(`${what} holds more than ${maxItems} CBOR items`)
    const top = stack.length ? stack[stack.length - 1] : null
    const isKey = top !== null && top.map && top.left % 2 === 0
    if (isKey && major > TEXT) {
      // The item is a map key (even count left in a map, counted before this one).
      throw new DecodeError(`${what}: map key at byte ${start} is not an integer or a string`)
    }
    if (top) top.left -= 1
    if (major === BYTES || major === TEXT) {
      if (arg > n - pos) {
        throw new DecodeError(
          `${what} is not well-formed CBOR: a string of ${arg} bytes at byte ${start} runs past the end`
        )
      }
      const len = Number(arg)
      if (major === TEXT && badUtf8 === null) {
        try {
          strictUtf8.decode(data.subarray(pos, pos + len))
        } catch {
          badUtf8 = `${what} is not well-formed CBOR: invalid UTF-8 in the text string at byte ${start}`
        }
      }
      pos += len
    } else if (major === ARRAY || major === MAP) {
      const count = major === MAP ? Number(arg) * 2 : Number(arg)
      // Each element takes at least one byte: a count the rest cannot hold is a
      // lie told to make the decoder allocate.
      if (arg > n - pos || count > n - pos) {
        const shown = major === MAP ? (typeof arg === 'bigint' ? arg * 2n : arg * 2) : arg
        throw new DecodeError(
          `${what} is not well-formed CBOR: ${shown} items declared at byte ${start} but ${n - pos} bytes remain`
        )
      }
      if (count) {
        if (stack.length >= MAX_CBOR_DEPTH) throw new DecodeError(`${what} is nested too deeply (limit ${MAX_CBOR_DEPTH})`)
        stack.push({ left: count, map: major === MAP, prevKey: null })
        continue
      }
    } else if (major === TAG) {
      if (start === 0 && typeof arg === 'number' && topTags.has(arg)) continue // the tagged item is the whole document
      throw new DecodeError(`${what} has CBOR tag ${arg} at byte ${start}, which is not accepted`)
    }
    if (isKey && top) {
      // Keys are integers or strings: their encoding ends here.
      const key = data.subarray(start, pos)
      if (top.prevKey !== null && canonicalCompare(top.prevKey, key) >= 0) canonical = false
      top.prevKey = key
    }
    while (stack.length && stack[stack.length - 1].left === 0) stack.pop()
    if (!stack.length) break
  }
  if (pos !== n) throw new DecodeError(`${what} has ${n - pos} trailing bytes`)
  return { utf8: badUtf8, canonical }
}

/**
 * @param {number} h
 */
function halfToNumber (h) {
  const s = h & 0x8000 ? -1 : 1
  const e = (h >> 10) & 0x1f
  const f = h & 0x3ff
  if (e === 0) return s * f * 2 ** -24
  if (e === 31) return f ? NaN : s * Infinity
  return s * (1 + f / 1024) * 2 ** (e - 15)
}

/** cborg's tokenizer, with floats marked so that 1.0 never passes for the integer 1. */
class FloatMarkingTokenizer extends Tokenizer {
  next () {
    const token = super.next()
    if (token.type === Type.float) return new Token(Type.float, new CborFloat(token.value), token.encodedLength)
    return token
  }
}

/**
 * @param {unknown} data
 * @param {string} what
 */
function asBytes (data, what) {
  if (!(data instanceof Uint8Array)) {
    throw new DecodeError(`${what}: expected bytes, got ${data === null ? 'NoneType' : typeof data}`)
  }
  return data
}

/**
 * Decode one well-formed CBOR item that spans all of `data` (Python `decode_strict`).
 *
 * Rejects: inputs over `maxBytes`; every tag except one of `topTags` on the
 * outermost item; indefinite lengths; duplicate map keys; map keys other than
 * integers and strings; nesting deeper than {@link MAX_CBOR_DEPTH}; more than
 * `maxItems` items; invalid UTF-8; trailing bytes. Throws only {@link DecodeError}
 * and {@link LimitError}. Does *not* require the deterministic encoding.
 *
 * Values: maps are `Map`, byte strings `Uint8Array`, integers numbers (bigint past
 * 2^53), floats {@link CborFloat}, the top tag a cborg `Tagged`.
 *
 * @param {Uint8Array} data
 * @param {{what?: string, maxBytes?: number, maxItems?: number, topTags?: Iterable<number>}} [options]
 * @returns {any}
 */
export function decodeStrict (data, options = {}) {
  return decodeChecked(data, options).value
}

/**
 * @param {Uint8Array} data
 * @param {{what?: string, maxBytes?: number, maxItems?: number, topTags?: Iterable<number>}} options
 */
function decodeChecked (data, { what = 'CBOR', maxBytes, maxItems = MAX_CBOR_ITEMS, topTags = [] }) {
  data = asBytes(data, what)
  if (maxBytes !== undefined && data.length > maxBytes) {
    throw new LimitError(`${what} is ${data.length} bytes; the limit is ${maxBytes}`)
  }
  if (!data.length) throw new DecodeError(`${what} is empty`)
  const tags = new Set(topTags)
  // protocol.md §1.2 D2: limits before work.
  const scan = prescan(data, what, maxItems, tags)
  if (scan.utf8 !== null) throw new DecodeError(scan.utf8)
  /** @type {any[]} */
  const tagDecoders = []
  for (const t of tags) tagDecoders[t] = (/** @type {() => any} */ inner) => new Tagged(t, inner())
  let value
  try {
    const plain = new Uint8Array(data.buffer, data.byteOffset, data.length)
    const options = {
      useMaps: true,
      rejectDuplicateMapKeys: true,
      allowIndefinite: false,
      allowUndefined: true,
      allowBigInt: true,
      strict: false,
      tags: tagDecoders
    }
    value = cborgDecode(plain, { ...options, tokenizer: new FloatMarkingTokenizer(plain, options) })
  } catch (e) {
    if (e instanceof RangeError) throw new LimitError(`${what} does not fit in memory`, { cause: e })
    const msg = e instanceof Error ? e.message.replace(/^CBOR decode error: /u, '') : String(e)
    throw new DecodeError(`${what} is not well-formed CBOR: ${msg}`, { cause: e })
  }
  return { value, canonical: scan.canonical }
}

/**
 * Decode `data` and require that it is the deterministic encoding of its value
 * (Python `decode_deterministic`; protocol.md §1.2 D1).
 * @param {Uint8Array} data
 * @param {{what?: string, maxBytes?: number, maxItems?: number}} [options]
 * @returns {any}
 */
export function decodeDeterministic (data, options = {}) {
  const what = options.what ?? 'CBOR'
  const { value, canonical } = decodeChecked(data, { ...options, topTags: [] })
  if (!canonical) throw new DecodeError(`${what} is not deterministically encoded (RFC 8949 §4.2.1)`)
  return value
}

/**
 * cbor2's canonical map order: by the length of the key's encoding, then bytewise.
 * @param {any[]} e1
 * @param {any[]} e2
 */
function mapSorter (e1, e2) {
  const k1 = Array.isArray(e1[0]) ? e1[0][0] : e1[0]
  const k2 = Array.isArray(e2[0]) ? e2[0][0] : e2[0]
  return canonicalCompare(cborgEncode(k1.value), cborgEncode(k2.value))
}

/**
 * A {@link CborFloat} as a CBOR float, in the shortest width that keeps its value
 * (as cbor2's canonical encoder): `new CborFloat(1)` is f9 3c00, never the integer 1.
 * @param {any} obj
 */
function encodeFloat (obj) {
  return obj instanceof CborFloat ? [new Token(Type.float, obj.value)] : null
}

/**
 * The one canonical encoding of `value` (Python `encode`): shortest heads,
 * definite lengths, map keys in canonical order. Use `Map` for maps with integer
 * keys, `Uint8Array` for byte strings, {@link CborFloat} for a float whose value may be
 * integral, {@link Tagged} for a tag.
 * @param {any} value
 * @returns {Uint8Array}
 */
export function encode (value) {
  try {
    const out = cborgEncode(value, { mapSorter, float64: false, typeEncoders: { Object: encodeFloat } })
    // cborg may hand back a Node Buffer (a Uint8Array subclass); callers get the plain type.
    return out.constructor === Uint8Array ? out : new Uint8Array(out.buffer, out.byteOffset, out.byteLength)
  } catch (e) {
    throw new DecodeError(`value cannot be encoded as CBOR: ${e instanceof Error ? e.message : e}`, { cause: e })
  }
}
