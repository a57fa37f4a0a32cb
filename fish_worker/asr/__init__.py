"""Speech in: a voice message → its transcript (backend.py says how; transcriber.py is what doors call)."""
