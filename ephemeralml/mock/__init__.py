"""ephemeralml.mock: everything that exists only for mock mode, in one place.

The mock NSM and its CA (:mod:`._nsm`), the local KMS-compatible server
(:mod:`._kms`) and the CMS envelope it builds (:mod:`._cms_build`), the provisioning a
model owner and a build pipeline would do (:mod:`._provision`), and the mock profiles
of the programs (:mod:`._profiles`). No production module imports this package (the
import contract in ``.importlinter``); the edge (:mod:`ephemeralml._edge`) hands its
profiles to the programs when they are started with ``--mock``. Not in the enclave
image.
"""
