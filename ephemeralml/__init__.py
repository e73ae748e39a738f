"""ephemeralml: confidential inference with an attested enclave, a blind host and signed receipts.

Subpackages: :mod:`ephemeralml.common` (the sans-IO protocol core),
:mod:`ephemeralml.runtime` (endpoints, streams, relay, files), the three programs
:mod:`ephemeralml.enclave`, :mod:`ephemeralml.host` and :mod:`ephemeralml.client`,
:mod:`ephemeralml.mock` (mock mode only) and :mod:`ephemeralml.bench`. Who may import
whom is in ``.importlinter``.
"""

__version__ = "0.1.0"
