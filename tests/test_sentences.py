from fish_worker.text.sentences import split_sentences


def test_splits_at_sentence_ends_and_line_breaks():
    text = "Hello there. How are you today? I am fine, thanks!\nNew line here"
    assert split_sentences(text) == ["Hello there.", "How are you today?", "I am fine, thanks!", "New line here"]


def test_keeps_closing_quotes_and_decimal_points():
    assert split_sentences('He said "yes." Pi is 3.14 today.') == ['He said "yes."', "Pi is 3.14 today."]


def test_short_fragments_join_the_next_sentence():
    assert split_sentences("Hi. This is long enough to stand alone.") == ["Hi. This is long enough to stand alone."]


def test_cjk_sentences():
    assert split_sentences("今天天气很好，我们一起去公园散步吧。明天可能会下雨，记得带伞！") == [
        "今天天气很好，我们一起去公园散步吧。", "明天可能会下雨，记得带伞！"]


def test_long_sentences_are_cut_at_a_soft_break():
    pieces = split_sentences("word, " * 100, max_chars=50)
    assert all(len(p) <= 50 for p in pieces) and " ".join(pieces).split() == ("word, " * 100).split()


def test_blank_text_has_no_sentences():
    assert split_sentences("  \n ") == []
