"""ephemeralml.host."""
