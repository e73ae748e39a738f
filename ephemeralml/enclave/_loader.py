"""Loading a model inside the enclave: fetch, verify, release the key, decrypt in memory.

ARCHITECTURE.md flow 1, in order:

1. fetch ``manifest.cose`` from the host's store and verify it against the model-owner
   keys the enclave image carries (M1-M5: the signature before anything is parsed),
   and refuse a release below the floor the image carries for the model (M11);
2. fetch ``model.key`` and check it is the wrapped key the manifest names (M10);
3. release the data key through KMS with this enclave's attestation as Recipient;
4. stream ``model.enc`` through the host, decrypting chunk by chunk into memory
   (M6-M9), never more than the signed size;
5. load ONNX Runtime from those bytes: an embedding model, or a chat model when its
   model.json declares one (``ephemeralml-causal-lm-onnx/1``).

Plaintext weights never touch disk; the data key is wiped as soon as the chunk key
is derived. Any failure is a typed error naming the model, and the other models
keep loading.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ephemeralml.common._bundle import (
    MAX_MANIFEST_BYTES,
    BundleDecryptor,
    verify_manifest,
)
from ephemeralml.common._errors import ManifestError
from ephemeralml.common._modelfiles import ModelFiles, model_files_from_bundle
from ephemeralml.enclave._services import fetch
from ephemeralml.runtime._transport import Endpoint

from ._chat import ChatModel
from ._keyrelease import KmsKeyRelease
from ._model import Embedder

__all__ = ["MAX_WRAPPED_KEY_BYTES", "LoadTimings", "LoadedModel", "load_model"]

log = logging.getLogger("ephemeralml.enclave.loader")

#: Chunks handed to the decrypt thread and not yet done: overlap, bounded memory.
_DECRYPT_AHEAD = 4

#: A KMS CiphertextBlob for a 32-byte data key is ~200 bytes (AWS) or 77 (mock).
MAX_WRAPPED_KEY_BYTES = 4096


@dataclass(frozen=True)
class LoadTimings:
    """Where a cold start's time goes (the benchmark reports these)."""

    manifest_s: float
    key_release_s: float
    transfer_s: float
    load_s: float
    bytes: int


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    manifest_digest: bytes  # attested in the binding, carried by receipts
    key_release_digest: bytes  # digest of the KMS evidence, carried by receipts
    #: The model, as it serves: embeddings or chat (exactly one is set).
    embedder: Embedder | None
    timings: LoadTimings
    release: int = 0  # the manifest's release (M11); 0: unordered (v1 manifest)
    chat: ChatModel | None = None


async def _fetch_all(services: Endpoint, model_id: str, name: str, max_bytes: int) -> bytes:
    out = bytearray()
    async for chunk in fetch(services, model_id, name, max_bytes=max_bytes):
        out += chunk
    return bytes(out)


async def load_model(
    model_id: str,
    *,
    services: Endpoint,
    owner_keys: Mapping[bytes, bytes],
    key_release: KmsKeyRelease,
    intra_op_threads: int | None = None,
    device: str = "cpu",
    min_release: int = 0,
) -> LoadedModel:
    """Load ``model_id`` (the module docstring's steps).

    ``min_release``: the floor the image carries for this model (M11); a manifest
    below it is refused before its key is released or a byte of model.enc is read.
    """
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    raw = await _fetch_all(services, model_id, "manifest.cose", MAX_MANIFEST_BYTES)
    # M1-M5, M11: before model.key is fetched or anything is released.
    verified = verify_manifest(raw, owner_keys, model_id=model_id, min_release=min_release)
    m = verified.manifest
    wrapped = await _fetch_all(services, model_id, "model.key", MAX_WRAPPED_KEY_BYTES)
    # M10: the wrapped key is the one the owner signed for (a host cannot swap in
    # another key it happens to be able to get released).
    if not hmac.compare_digest(hashlib.sha256(wrapped).digest(), m.wrapped_key_sha256):
        raise ManifestError(f"M10 key: model.key for {model_id} is not the one its manifest names")
    t1 = time.perf_counter()
    released = await loop.run_in_executor(
        None,
        lambda: key_release.release(wrapped, kms_key_id=m.kms_key_id, what=f"model {model_id}"),
    )
    try:
        decryptor = BundleDecryptor(verified, released.data_key)
    finally:
        released.wipe()  # the chunk key is derived; the data key is no longer needed
    t2 = time.perf_counter()
    # Decrypt while the next chunks arrive: one worker thread keeps the chunks in
    # order; at most _DECRYPT_AHEAD are queued, so memory stays bounded.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decrypt") as worker:
        pending: deque[asyncio.Future[None]] = deque()
        try:
            async for chunk in fetch(services, model_id, "model.enc", max_bytes=m.ciphertext_size):
                pending.append(loop.run_in_executor(worker, decryptor.update, chunk))
                while len(pending) >= _DECRYPT_AHEAD or (pending and pending[0].done()):
                    await pending.popleft()
            while pending:
                await pending.popleft()
        except BaseException:
            # The first failure is the one reported; the chunks queued behind it
            # are dropped (and their errors collected, not left unretrieved).
            for f in pending:
                f.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        files = await loop.run_in_executor(worker, decryptor.finish)
    t3 = time.perf_counter()

    def build() -> Embedder | ChatModel:
        model_files = model_files_from_bundle(files, model_id=model_id, where=f"model {model_id}")
        if model_files.model_id != model_id:
            raise ManifestError(
                f"M5 model: bundle for {model_id} holds model {model_files.model_id!r}"
            )
        if isinstance(model_files, ModelFiles):
            return Embedder(model_files, intra_op_threads=intra_op_threads, device=device)
        return ChatModel(model_files, intra_op_threads=intra_op_threads, device=device)

    runner: Any = await loop.run_in_executor(None, build)
    t4 = time.perf_counter()
    timings = LoadTimings(t1 - t0, t2 - t1, t3 - t2, t4 - t3, m.ciphertext_size)
    log.info(
        "loaded %s release %d (manifest %s): manifest %.0f ms, key release %.0f ms, "
        "transfer+decrypt %.0f ms (%.0f MB/s), load %.0f ms",
        model_id, m.release, verified.digest.hex()[:16], 1000 * timings.manifest_s,
        1000 * timings.key_release_s, 1000 * timings.transfer_s,
        m.ciphertext_size / max(timings.transfer_s, 1e-9) / 1e6, 1000 * timings.load_s,
    )  # fmt: skip
    chat = runner if isinstance(runner, ChatModel) else None
    return LoadedModel(
        model_id,
        verified.digest,
        released.evidence.digest,
        None if chat else runner,
        timings,
        m.release,
        chat,
    )
