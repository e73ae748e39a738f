/**
 * What the library needs from the browser, checked once before a session, so that
 * a missing primitive reads as one clear refusal and not as a failed signature.
 *
 * Web Crypto (`crypto.subtle`) exists only in a secure context: https, or a page
 * served from 127.0.0.1 / localhost, as `ephemeral web` serves it. Ed25519 in Web
 * Crypto needs Chromium 137, Firefox 129 or Safari 17 or later; node 20 has it.
 * X25519 and ChaCha20-Poly1305 are not needed from the browser (@hpke's
 * JavaScript implementations are bundled).
 */

import { ConfigError } from './errors.js'
import { fromHex } from './util.js'

// RFC 8032 §7.1, test 1: the empty message.
const ED25519_PK = 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a'
const ED25519_SIG = 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b'

/**
 * Resolves when Web Crypto offers SHA-256, ECDSA P-384 and Ed25519; throws
 * ConfigError naming what is missing otherwise.
 */
export async function checkPlatform () {
  const subtle = globalThis.crypto?.subtle
  if (!subtle) {
    throw new ConfigError('Web Crypto is not available: open the page over https or from 127.0.0.1 (a secure context)')
  }
  try {
    await subtle.importKey('raw', new Uint8Array(97).fill(0), { name: 'ECDSA', namedCurve: 'P-384' }, false, ['verify'])
  } catch (e) {
    // An invalid point is refused with a DataError; an unknown algorithm with NotSupportedError.
    if (e instanceof Error && e.name === 'NotSupportedError') throw new ConfigError('this browser lacks ECDSA P-384 in Web Crypto')
  }
  let ok = false
  try {
    const key = await subtle.importKey('raw', fromHex(ED25519_PK), { name: 'Ed25519' }, false, ['verify'])
    ok = await subtle.verify({ name: 'Ed25519' }, key, fromHex(ED25519_SIG), new Uint8Array(0))
  } catch {
    ok = false
  }
  if (!ok) throw new ConfigError('this browser lacks Ed25519 in Web Crypto (Chromium 137, Firefox 129, Safari 17 or later have it)')
}
