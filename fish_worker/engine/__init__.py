"""Model-facing code: checkpoint loading, token generation and the audio codec."""
