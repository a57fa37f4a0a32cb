"""Whole texts cut into sentences: sentencex's ends in the text's language (abbreviations, decimals,
versions, URLs, ellipses, quotes, every script's end marks), line breaks, the length limit and
short fragments glued onto the next sentence."""

import pytest

from fish_worker.text.sentences import split_sentences

# (language, text, sentences); language None: the default (English rules).
CASES = [
    # abbreviations
    (
        None,
        "Mr. and Mrs. Jones live at No. 5 St. James St. in the U.S.A. They like it.",
        ["Mr. and Mrs. Jones live at No. 5 St. James St. in the U.S.A.", "They like it."],
    ),
    (None, "Bring some fruit, e.g. apples. Then come here.", ["Bring some fruit, e.g. apples.", "Then come here."]),
    (
        None,
        "Dr. Smith arrived at 5 p.m. yesterday. He was late.",
        ["Dr. Smith arrived at 5 p.m. yesterday.", "He was late."],
    ),
    # decimals, versions, URLs, e-mail addresses
    (None, "Pi is 3.14 today. It costs $4.50 now.", ["Pi is 3.14 today.", "It costs $4.50 now."]),
    (None, "Install v1.2.3 first. Then restart the server.", ["Install v1.2.3 first.", "Then restart the server."]),
    (
        None,
        "See https://example.com/a.b?c=d.e for more. Thanks for reading.",
        ["See https://example.com/a.b?c=d.e for more.", "Thanks for reading."],
    ),
    (
        None,
        "Write to jo.jones@example.com today. We answer fast.",
        ["Write to jo.jones@example.com today.", "We answer fast."],
    ),
    # ellipses: an end when a sentence follows, a pause inside one
    (None, "I waited for an hour... Then he finally came.", ["I waited for an hour...", "Then he finally came."]),
    (None, "Well... I am not sure about it. Maybe later.", ["Well... I am not sure about it.", "Maybe later."]),
    # quotes stay with their sentence
    (None, 'He said "yes." Pi is 3.14 today.', ['He said "yes."', "Pi is 3.14 today."]),
    (None, "“Are you coming?” she asked. “Yes!” he said.", ["“Are you coming?” she asked.", "“Yes!” he said."]),
    (
        None,
        'She asked him quietly. "Why did you go?" He did not answer.',
        ["She asked him quietly.", '"Why did you go?"', "He did not answer."],
    ),
    # line breaks end sentences; short fragments are glued onto the next one
    (
        None,
        "Hello there. How are you today? I am fine, thanks!\nNew line here",
        ["Hello there.", "How are you today?", "I am fine, thanks!", "New line here"],
    ),
    (None, "A list:\nfirst item here\nsecond item here\n", ["A list: first item here", "second item here"]),
    (None, "Hi. This is long enough to stand alone.", ["Hi. This is long enough to stand alone."]),
    # CJK: no spaces, full-width marks
    (
        "zh",
        "今天天气很好，我们一起去公园散步吧。明天可能会下雨，记得带伞！",
        ["今天天气很好，我们一起去公园散步吧。", "明天可能会下雨，记得带伞！"],
    ),
    (
        "ja",
        "これは日本語の文章です。今日はとても良い天気ですね！明日は雨が降るでしょう。",
        ["これは日本語の文章です。", "今日はとても良い天気ですね！", "明日は雨が降るでしょう。"],
    ),
    (None, "これは日本語の文章です。とても良い天気ですね！", ["これは日本語の文章です。", "とても良い天気ですね！"]),
    (
        "ko",
        "안녕하세요, 만나서 반갑습니다. 오늘 날씨가 정말 좋네요!",
        ["안녕하세요, 만나서 반갑습니다.", "오늘 날씨가 정말 좋네요!"],
    ),
    # other languages, with their own abbreviations
    (
        "de",
        "Das ist z.B. ein Test. Er wohnt in der Hauptstr. 5 in Berlin. Am 3. Oktober ist Feiertag.",
        ["Das ist z.B. ein Test.", "Er wohnt in der Hauptstr. 5 in Berlin.", "Am 3. Oktober ist Feiertag."],
    ),
    (
        "fr",
        "M. Dupont est arrivé hier soir. Il a dit « Bonjour ! » et il est parti.",
        ["M. Dupont est arrivé hier soir.", "Il a dit « Bonjour ! » et il est parti."],
    ),
    (
        "es",
        "El Sr. García llegó ayer por la tarde. ¿Cómo estás hoy? ¡Muy bien, gracias!",
        ["El Sr. García llegó ayer por la tarde.", "¿Cómo estás hoy?", "¡Muy bien, gracias!"],
    ),
    (
        "ru",
        "Он живёт на ул. Ленина, д. 5. Это далеко от центра.",
        ["Он живёт на ул. Ленина, д. 5.", "Это далеко от центра."],
    ),
    ("hi", "मेरा नाम राम है। मैं दिल्ली में रहता हूँ। आप कैसे हैं?", ["मेरा नाम राम है।", "मैं दिल्ली में रहता हूँ।", "आप कैसे हैं?"]),
    (
        "ar",
        "مرحبا بك في بيتنا. كيف حالك اليوم؟ أنا بخير، شكرا!",
        ["مرحبا بك في بيتنا.", "كيف حالك اليوم؟", "أنا بخير، شكرا!"],
    ),
    (
        "it",
        "Il Sig. Rossi è arrivato ieri. Ha detto ciao a tutti.",
        ["Il Sig. Rossi è arrivato ieri.", "Ha detto ciao a tutti."],
    ),
]


@pytest.mark.parametrize(("language", "text", "sentences"), CASES, ids=[f"{c[0]}-{c[1][:24]}" for c in CASES])
def test_sentences(language, text, sentences):
    assert split_sentences(text, language=language) == sentences


def test_the_language_picks_the_abbreviations():
    text = "Er wohnt in der Hauptstr. 5 in Berlin. Das ist weit weg."
    assert split_sentences(text, language="de") == ["Er wohnt in der Hauptstr. 5 in Berlin.", "Das ist weit weg."]
    assert (
        split_sentences(text, language="de-DE")
        == split_sentences(text, language="de_de")
        == split_sentences(text, language="de")
    )
    assert split_sentences(text) == ["Er wohnt in der Hauptstr.", "5 in Berlin.", "Das ist weit weg."]  # English rules
    assert split_sentences(text, language="no-such-language") == split_sentences(text)


def test_long_sentences_are_cut_at_a_soft_break():
    pieces = split_sentences("word, " * 100, max_chars=50)
    assert all(len(p) <= 50 for p in pieces) and " ".join(pieces).split() == ("word, " * 100).split()


def test_text_without_breaks_is_cut_at_the_limit():
    assert split_sentences("x" * 250, max_chars=100) == ["x" * 100, "x" * 100, "x" * 50]


def test_blank_text_has_no_sentences():
    assert split_sentences("  \n ") == []


def test_a_lone_surrogate_is_kept_and_does_not_break_the_segmenter():
    # sentencex takes UTF-8; the job door refuses such text, but no caller of split_sentences should crash on it.
    assert split_sentences("Broken \ud800 text here. And the next sentence.") == [
        "Broken \ud800 text here.",
        "And the next sentence.",
    ]
