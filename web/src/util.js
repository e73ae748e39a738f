/**
 * Small helpers: bytes, hashes (Web Crypto), and the few Python spellings the
 * error messages share with the Python implementation (repr, ISO times, %g).
 */

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'))

/** @param {Uint8Array} bytes */
export function toHex (bytes) {
  let s = ''
  for (const b of bytes) s += HEX[b]
  return s
}

/**
 * Strict lowercase-or-uppercase hex, even length, nothing else.
 * @param {string} hex
 * @returns {Uint8Array}
 */
export function fromHex (hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/u.test(hex)) {
    throw new TypeError('not a hex string')
  }
  const out = new Uint8Array(hex.length / 2)
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16)
  return out
}

/** @param {...Uint8Array} parts */
export function concat (...parts) {
  let n = 0
  for (const p of parts) n += p.length
  const out = new Uint8Array(n)
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

/**
 * Equality of two byte strings; the time taken depends only on the lengths.
 * @param {Uint8Array} a
 * @param {Uint8Array} b
 */
export function bytesEqual (a, b) {
  if (!(a instanceof Uint8Array) || !(b instanceof Uint8Array) || a.length !== b.length) return false
  let d = 0
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i]
  return d === 0
}

/** @param {string} s */
export function utf8 (s) {
  return new TextEncoder().encode(s)
}

/** @param {Uint8Array} data */
export async function sha256 (data) {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', data))
}

/** @param {Uint8Array} data */
export async function sha384 (data) {
  return new Uint8Array(await crypto.subtle.digest('SHA-384', data))
}

/**
 * A CBOR integer as decoded (a safe-integer number or a bigint); never a float
 * (floats decode to {@link CborFloat}) nor a boolean.
 * @param {unknown} x
 * @returns {x is number | bigint}
 */
export function isInt (x) {
  return (typeof x === 'number' && Number.isInteger(x)) || typeof x === 'bigint'
}

/** A CBOR float, kept apart from integers (Python's int and float differ; JavaScript's do not). */
export class CborFloat {
  /** @param {number} value */
  constructor (value) {
    this.value = value
  }
}

/**
 * Milliseconds since the epoch as Python's isoformat(timespec="milliseconds") with Z.
 * @param {number} ms
 */
export function fmtTime (ms) {
  return new Date(ms).toISOString()
}

/**
 * A duration of integer milliseconds as Python's `f"{seconds:.3f}"`.
 * @param {number} ms
 */
export function fmtSeconds3 (ms) {
  const sign = ms < 0 ? '-' : ''
  const a = Math.abs(ms)
  return `${sign}${Math.floor(a / 1000)}.${String(a % 1000).padStart(3, '0')}`
}

/**
 * Python's `format(x, "g")`: 6 significant digits, trailing zeros removed,
 * exponent form below 1e-4 and from 1e6 on, two exponent digits at least.
 * @param {number} x
 */
export function fmtG (x) {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? 'nan' : (x > 0 ? 'inf' : '-inf')
  if (x === 0) return Object.is(x, -0) ? '-0' : '0'
  const exp = Number(x.toExponential(5).split('e')[1])
  if (exp < -4 || exp >= 6) {
    let [m, e] = x.toExponential(5).split('e')
    if (m.includes('.')) m = m.replace(/0+$/u, '').replace(/\.$/u, '')
    const en = Number(e)
    return `${m}e${en < 0 ? '-' : '+'}${String(Math.abs(en)).padStart(2, '0')}`
  }
  let s = x.toFixed(Math.max(0, 5 - exp))
  if (s.includes('.')) s = s.replace(/0+$/u, '').replace(/\.$/u, '')
  return s
}

/**
 * Python's type(x).__name__ for what the CBOR decoder produces.
 * @param {unknown} x
 */
export function pyTypeName (x) {
  if (x === null) return 'NoneType'
  if (x === undefined) return 'UndefinedType'
  if (typeof x === 'string') return 'str'
  if (typeof x === 'boolean') return 'bool'
  if (isInt(x)) return 'int'
  if (x instanceof CborFloat || typeof x === 'number') return 'float'
  if (x instanceof Uint8Array) return 'bytes'
  if (Array.isArray(x)) return 'list'
  if (x instanceof Map) return 'dict'
  if (typeof x === 'object' && 'tag' in x) return 'CBORTag'
  return typeof x
}

/**
 * @param {string} s
 * @param {boolean} [asBytes]
 */
function quote (s, asBytes = false) {
  const q = s.includes("'") && !s.includes('"') ? '"' : "'"
  let out = ''
  for (const ch of s) {
    const c = /** @type {number} */ (ch.codePointAt(0))
    if (ch === '\\') out += '\\\\'
    else if (ch === q) out += '\\' + q
    else if (ch === '\n') out += '\\n'
    else if (ch === '\r') out += '\\r'
    else if (ch === '\t') out += '\\t'
    else if (c < 0x20 || c === 0x7f || (asBytes && c > 0x7e) || (c >= 0x80 && c < 0xa0)) {
      out += '\\x' + c.toString(16).padStart(2, '0')
    } else out += ch
  }
  return q + out + q
}

/**
 * Python's repr() of a decoded CBOR value (as far as messages need it).
 * @param {unknown} x
 * @returns {string}
 */
export function pyRepr (x) {
  if (typeof x === 'string') return quote(x)
  if (x === null) return 'None'
  if (x === undefined) return 'undefined'
  if (typeof x === 'boolean') return x ? 'True' : 'False'
  if (isInt(x)) return String(x)
  if (x instanceof CborFloat || typeof x === 'number') {
    const v = x instanceof CborFloat ? x.value : x
    if (Number.isNaN(v)) return 'nan'
    if (!Number.isFinite(v)) return v > 0 ? 'inf' : '-inf'
    if (Number.isInteger(v) && Math.abs(v) < 1e16) return `${v}.0`
    return String(v).replace(/e([+-])(\d)$/u, 'e$10$2')
  }
  if (x instanceof Uint8Array) return 'b' + quote(String.fromCharCode(...x), true)
  if (Array.isArray(x)) return '[' + x.map(pyRepr).join(', ') + ']'
  if (x instanceof Map) return '{' + [...x].map(([k, v]) => `${pyRepr(k)}: ${pyRepr(v)}`).join(', ') + '}'
  if (typeof x === 'object' && 'tag' in x) {
    return `CBORTag(${/** @type {any} */ (x).tag}, ${pyRepr(/** @type {any} */ (x).value)})`
  }
  return String(x)
}

/**
 * Python's str(list_of_strings) of `sorted(...)` names.
 * @param {string[]} items
 */
export function pyStrList (items) {
  return '[' + items.map((s) => quote(s)).join(', ') + ']'
}

/**
 * Python's sorted() on strings: by code point.
 * @param {string[]} items
 */
export function pySorted (items) {
  return [...items].sort((a, b) => {
    const x = Array.from(a, (c) => /** @type {number} */ (c.codePointAt(0)))
    const y = Array.from(b, (c) => /** @type {number} */ (c.codePointAt(0)))
    for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i]
    return x.length - y.length
  })
}

/**
 * The first `n` code points of `s` (Python's s[:n]).
 * @param {string} s
 * @param {number} n
 */
export function pySlice (s, n) {
  const cps = Array.from(s)
  return cps.length <= n ? s : cps.slice(0, n).join('')
}
