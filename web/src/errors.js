/**
 * One error root, split by who is at fault (the classes of
 * ephemeralml/common/_errors.py, with the same names and codes).
 *
 * Every failure the library expects is an {@link EphemeralError} with a stable
 * `code` (it travels in error frames) and a one-line `message` that starts with
 * the check id of docs/protocol.md ("A4 chain: ..."). `name` is the Python class
 * name, so a page, a log or a test can compare both implementations.
 * Foreign exceptions (cborg, @peculiar/x509, @hpke, Web Crypto) are translated at
 * the boundary with `cause` set; nothing raw escapes a decoder of untrusted bytes.
 */

export class EphemeralError extends Error {
  static code = 'error'

  /**
   * @param {string} message one line (whitespace is collapsed, as Python does)
   * @param {{cause?: unknown}} [options]
   */
  constructor (message, options) {
    super(String(message).split(/\s+/u).filter(Boolean).join(' '), options)
    const ctor = /** @type {any} */ (this.constructor)
    this.name = Object.hasOwn(ctor, 'pythonName') ? ctor.pythonName : ctor.name
  }

  /** The stable code of protocol.md §6. */
  get code () {
    return /** @type {typeof EphemeralError} */ (this.constructor).code
  }
}
// The Python root is called Error, which would shadow JavaScript's own.
EphemeralError.pythonName = 'Error'

export class ProtocolError extends EphemeralError { static code = 'protocol' }
/** We tried to do something the protocol does not allow (a bug on our side). */
export class LocalProtocolError extends ProtocolError { static code = 'local_protocol' }
/** The peer (or something between us) sent bytes the protocol does not allow. */
export class RemoteProtocolError extends ProtocolError { static code = 'remote_protocol' }
/** Bytes that are not the strict, deterministic CBOR we accept. */
export class DecodeError extends RemoteProtocolError { static code = 'decode' }
/** A named limit was exceeded. */
export class LimitError extends RemoteProtocolError { static code = 'limit' }
export class VerificationError extends EphemeralError { static code = 'verification' }
/** An attestation document failed a check of protocol.md §3. */
export class AttestationError extends VerificationError { static code = 'attestation' }
/** A receipt failed a check of protocol.md §5. */
export class ReceiptError extends VerificationError { static code = 'receipt' }
/** A sealed message failed authentication: tampered, replayed, reordered or misrouted (H2, H3). */
export class CiphertextError extends VerificationError { static code = 'ciphertext' }
/** Verified evidence does not satisfy the trust policy (A9, P1, P2). */
export class PolicyError extends VerificationError { static code = 'policy' }
/** The connection failed or closed (the page's transport reports these). */
export class TransportError extends EphemeralError { static code = 'transport' }
/** Configuration given by the user is wrong (a policy that does not parse, a bad root). */
export class ConfigError extends EphemeralError { static code = 'config' }
/** The request was well formed but cannot be served. */
export class InferenceError extends EphemeralError { static code = 'inference' }
/**
 * A streamed answer ended without the enclave's authenticated end and receipt
 * (protocol.md §2.8 S4): what arrived is not the answer, only a part of it.
 */
export class TruncatedError extends EphemeralError { static code = 'truncated' }
/** The enclave has no room for the request now (a queue is full); it may succeed later. */
export class BusyError extends EphemeralError { static code = 'busy' }

/** The classes by their §6 code (Python `error_from_code`): a sealed refusal names one. */
const BY_CODE = Object.freeze(Object.fromEntries([
  EphemeralError, ProtocolError, LocalProtocolError, RemoteProtocolError, DecodeError, LimitError, VerificationError,
  AttestationError, ReceiptError, CiphertextError, PolicyError, TransportError, ConfigError, InferenceError, TruncatedError,
  BusyError
].map((cls) => [cls.code, cls])))

/**
 * The error class for a §6 code; an unknown code is the root class.
 * @param {string} code
 * @returns {typeof EphemeralError}
 */
export function errorFromCode (code) {
  return Object.hasOwn(BY_CODE, code) ? BY_CODE[code] : EphemeralError
}

/**
 * The peer ended the session with an error frame. Error frames are not
 * authenticated (protocol.md §6): any hop can send or forge one, so it can only
 * end a session. The host relay starts its own lines with `host relay: `; those
 * read "the host relay reported CODE: ...", any other "the peer reported CODE: ...".
 */
export class RemoteError extends EphemeralError {
  static code = 'remote'

  /**
   * @param {string} remoteCode the frame's code
   * @param {string} message the frame's line
   */
  constructor (remoteCode, message) {
    const relay = message.startsWith(RELAY_PREFIX)
    const sender = relay ? 'the host relay' : 'the peer'
    const line = relay ? message.slice(RELAY_PREFIX.length) : message
    super(`${sender} reported ${remoteCode}: ${line}`)
    this.name = 'PeerReportedError'
    /** @type {string} */
    this.remoteCode = remoteCode
    /** @type {string} */
    this.remoteMessage = line
    /** @type {string} */
    this.sender = sender
  }
}

/** How the host relay starts the line of every error frame it sends (runtime/_relay.py). */
export const RELAY_PREFIX = 'host relay: '

/**
 * Our error for a foreign exception raised while handling untrusted `what`
 * (common/_errors.py `foreign_error`); one of ours passes through.
 * @param {unknown} e
 * @param {string} what
 * @returns {EphemeralError}
 */
export function foreignError (e, what) {
  if (e instanceof EphemeralError) return e
  if (e instanceof RangeError && /call stack|memory|allocation/iu.test(e.message)) {
    return new LimitError(`${what} needs more resources than allowed (${e.name})`, { cause: e })
  }
  return new RemoteProtocolError(`${what} could not be processed: ${describe(e)}`, { cause: e })
}

/**
 * "Type: message" of any thrown value, for the one line of a translated error.
 * @param {unknown} e
 */
export function describe (e) {
  if (e instanceof Error) return `${e.name}: ${e.message}`
  return String(e)
}
