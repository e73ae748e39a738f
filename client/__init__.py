"""ephemeralml.client."""
