"""ephemeralml: confidential inference with an attested enclave, a blind host and signed receipts.

The distribution maps four folders of the repository to four subpackages:
``common/`` -> :mod:`ephemeralml.common` (the sans-IO protocol core),
``enclave/`` -> :mod:`ephemeralml.enclave`, ``host/`` -> :mod:`ephemeralml.host`,
``client/`` -> :mod:`ephemeralml.client`.
"""

__version__ = "0.1.0"
