"""Whisper's languages, by code and by name: what `language` accepts and what the doors answer with.

    language_code("English") == "en";  language_code("de") == "de";  language_name("en") == "english"

The table is transformers' own (Whisper's tokenizer: 100 languages with the aliases OpenAI accepts,
"castilian", "flemish" ...), so a code is valid here exactly when a Whisper model has a token for it.
OpenAI's `verbose_json` names the language ("english"); the Transcript carries its code ("en").
"""

from __future__ import annotations


def _tables() -> tuple[dict[str, str], dict[str, str]]:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    return dict(LANGUAGES), dict(TO_LANGUAGE_CODE)


def language_code(language: str) -> str | None:
    """A code ("en") or a name ("English", "castilian") → its code; None when Whisper has no such language."""
    names, codes = _tables()
    wanted = language.strip().lower()
    if wanted in names:
        return wanted
    return codes.get(wanted)


def language_name(code: str) -> str | None:
    """ "en" → "english"; None for a code Whisper does not know."""
    names, _ = _tables()
    return names.get(code.strip().lower())
