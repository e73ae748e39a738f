/**
 * ephemeralml for the browser: verify a Nitro enclave's attestation, open an HPKE
 * session bound to it, and verify the signed receipt of every answer
 * (docs/protocol.md). Sans-IO: bytes in, bytes and events out; the page moves the
 * bytes over a WebSocket whose messages are the enclave's frames.
 */

export {
  EphemeralError, ProtocolError, LocalProtocolError, RemoteProtocolError, DecodeError, LimitError,
  VerificationError, AttestationError, ReceiptError, CiphertextError, PolicyError, TransportError,
  ConfigError, InferenceError, TruncatedError, BusyError, RemoteError
} from './errors.js'
export {
  verifyAttestation, parseUnverified, AttestationPolicy, AttestationDocument, VerifiedAttestation,
  MAX_ATTESTATION_AGE_S, MAX_CLOCK_SKEW_S, MAX_ATTESTATION_BYTES
} from './attestation.js'
export { TrustedRoot, PcrAllowlist, UnsafeAnyMeasurements, AWS_NITRO_ROOT_G1_PEM, AWS_NITRO_ROOT_SHA256 } from './trust.js'
export { ClientPolicy } from './policy.js'
export { EnclaveBinding } from './binding.js'
export { ClientSession, ClientState, MAX_OUTSTANDING_REQUESTS } from './session.js'
export {
  EmbedRequest, EmbedResult, GenerateRequest, GenerateResult, CancelRequest, PROTOCOL_VERSION, MAX_MESSAGES,
  MAX_PROMPT_BYTES
} from './messages.js'
export { generate, TextStream } from './stream.js'
export { verifyReceipt, receiptAttestationHash, Receipt, VerifiedReceipt, MAX_SESSION_S } from './receipt.js'
export { FrameDecoder, encodeFrame, MAX_FRAME_BYTES } from './frame.js'
export { toHex, fromHex, sha256 } from './util.js'
export { checkPlatform } from './platform.js'
