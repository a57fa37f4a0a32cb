"""Whisper's languages, by code and by name: what `language` accepts and what the doors answer with.

    language_code("English") == "en";  language_code("de") == "de";  language_name("en") == "english"
    whisper_language("pt-BR") == "pt";  whisper_language("nb") == "no";  whisper_language("jv") == "jw"

`whisper_language` is the one reading of a client's language on every door (the job's BCP 47 `language`,
the transcribe action, OpenAI's and Fish's `language`), applied by the Transcriber before any recognizer
sees it: a BCP 47 tag's primary language subtag, in Whisper's spelling where its table keeps an older
or broader code (Javanese "jw", Norwegian Bokmål "no", Filipino "tl", the retired ISO 639 codes), and
a Whisper language name ("english") as its code.

The table is transformers' own (Whisper's tokenizer: 100 languages with the aliases OpenAI accepts,
"castilian", "flemish" ...), so a code is valid here exactly when a Whisper model has a token for it.
OpenAI's `verbose_json` names the language ("english"); the Transcript carries its code ("en").
"""

from __future__ import annotations


def _tables() -> tuple[dict[str, str], dict[str, str]]:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    return dict(LANGUAGES), dict(TO_LANGUAGE_CODE)


# BCP 47 primary subtags (and the ISO 639 codes clients still send) that Whisper's table spells differently.
# Whisper has "nn" (Nynorsk) and "no" (Norwegian: Bokmål); "he", "id", "yi" are current ISO 639-1, and
# "iw", "in", "ji" their retired spellings (Java and Android still write them); "mo" is retired Romanian.
_WHISPER_SPELLING = {
    "nb": "no",
    "jv": "jw",
    "fil": "tl",
    "iw": "he",
    "in": "id",
    "ji": "yi",
    "mo": "ro",
    "cmn": "zh",  # Mandarin's ISO 639-3 code, sent as a BCP 47 language
}
# BCP 47 extended language subtags after "zh" (zh-yue, zh-cmn) that name a Whisper language.
_CHINESE_EXTLANGS = {"yue": "yue", "cmn": "zh"}


def whisper_language(language: str) -> str:
    """A client's `language` as a Whisper language code: "de-DE" → "de", "zh-Hant" → "zh", "zh-yue" →
    "yue", "nb-NO" → "no", "jv" → "jw", "English" → "en". A tag Whisper has no language for comes back as
    its primary subtag ("xx-YY" → "xx"), which the recognizer refuses by name."""
    wanted = language.strip().lower()
    code = language_code(wanted)  # a Whisper code or name, including names with a space
    if code is not None:
        return code
    subtags = wanted.replace("_", "-").split("-")
    primary = subtags[0]
    if primary == "zh" and len(subtags) > 1 and subtags[1] in _CHINESE_EXTLANGS:
        return _CHINESE_EXTLANGS[subtags[1]]
    return _WHISPER_SPELLING.get(primary, primary)


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
