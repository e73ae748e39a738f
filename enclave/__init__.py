"""ephemeralml.enclave."""
