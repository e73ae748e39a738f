"""ephemeralml.enclave: the enclave program (``ephemeral-enclave``).

NSM seam (mock here; the ctypes binding to libnsm.so comes next), model loading and
ONNX Runtime inference, and the server loop around the session state machine.
"""
