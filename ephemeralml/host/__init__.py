"""ephemeralml.host: the untrusted host, a blind relay between clients and enclaves.

It only ever handles ciphertext: it never parses, logs or keeps what it relays. The
relay itself and the endpoints are the neutral runtime's (:mod:`ephemeralml.runtime`);
this package adds the model store and services for the enclave, and the host's
profile and command line.
"""

from ._profile import HostProfile, KmsAccess, nitro_profile
from ._store import LocalStore, ModelStore, S3Store, StoreService, store_from_url

__all__ = [
    "HostProfile",
    "KmsAccess",
    "LocalStore",
    "ModelStore",
    "S3Store",
    "StoreService",
    "nitro_profile",
    "store_from_url",
]
