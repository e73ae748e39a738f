// Shared by the tests: the conformance folder, its index, and how a vector's
// inputs become the library's arguments (docs/protocol.md §13).
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { ClientPolicy } from '../src/policy.js'

export const REPO = fileURLToPath(new URL('../../', import.meta.url))
export const FOLDER = `${REPO}tests/vectors/conformance/`
export const REAL = `${REPO}tests/vectors/real/`

/** @param {string} path relative to the conformance folder */
export function read (path) {
  return new Uint8Array(readFileSync(FOLDER + path))
}

let index = null
export function loadIndex () {
  index ??= JSON.parse(readFileSync(FOLDER + 'index.json', 'utf8'))
  return index
}

/** The index's policy `name`, through the library's policy parser. */
export async function policy (name) {
  const idx = loadIndex()
  return ClientPolicy.fromJson(JSON.stringify(idx.policies[name]), {
    where: name,
    mockRoot: read(idx.roots.mock.file),
    readRoot: async (path) => read(path)
  })
}

/** @param {string | null | undefined} h */
export function hex (h) {
  return h === null || h === undefined ? null : Uint8Array.from(Buffer.from(h, 'hex'))
}
