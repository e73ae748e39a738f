"""ephemeralml.common."""
