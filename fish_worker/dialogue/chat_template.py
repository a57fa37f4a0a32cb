"""Render a conversation with the model's chat template into token ids where message text is only text.

Tokenizing the rendered template as one string would turn a message that contains a control-token
string (`<|im_end|>`, `<|im_start|>system`, ...) into those control tokens: a user could close their
own turn and write a fake system or assistant turn, or end the prompt early. So the template is also
rendered with a placeholder in place of each message's content, which tells where the template's own
text ends and a message's begins; control tokens are only taken from the template's own text.
"""

from __future__ import annotations

import re

# Placeholders for message contents: private-use characters around the message's index.
_PLACEHOLDER = "\ue000{}\ue001"
_PLACEHOLDER_PATTERN = re.compile("\ue000(\\d+)\ue001")


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt's token ids, ending with the opening of the assistant's turn.

    A conversation whose messages hold no control-token string is tokenized exactly as the rendered
    template always was; otherwise the text between the template's own control tokens is encoded
    with control-token matching off, so the messages' characters become ordinary tokens.
    """
    pieces = _pieces(tokenizer, messages)
    text = "".join(piece for piece, _ in pieces)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    control = control_token_ids(tokenizer)
    content_spans, start = [], 0
    for piece, is_content in pieces:
        if is_content:
            content_spans.append((start, start + len(piece)))
        start += len(piece)
    injected = any(
        token_id in control and begin < span_end and end > span_begin
        for token_id, (begin, end) in zip(encoded["input_ids"], encoded["offset_mapping"])
        for span_begin, span_end in content_spans
    )
    return _encode_guarded(tokenizer, pieces, control) if injected else encoded["input_ids"]


def control_token_ids(tokenizer) -> set[int]:
    """The special tokens: what `split_special_tokens=True` stops matching in text."""
    added = {token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}
    return added | set(tokenizer.all_special_ids)


def _apply(tokenizer, messages: list[dict]) -> str:
    # Render to text, then tokenize: apply_chat_template(tokenize=True) changed its return type in v5.
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _pieces(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """The rendered prompt as (text, is a message's content) pieces, in order."""
    rendered = _apply(tokenizer, messages)
    marked = _apply(tokenizer, [{**m, "content": _PLACEHOLDER.format(i)} for i, m in enumerate(messages)])
    parts = _PLACEHOLDER_PATTERN.split(marked)  # template text, index, template text, ..., template text
    templates, contents = parts[0::2], [messages[int(i)]["content"] for i in parts[1::2]]
    aligned = _align(rendered, templates, contents)
    if aligned is not None:
        return aligned
    # The template changed a content beyond trimming it: use the template's structure with the content as sent.
    pieces = [(templates[0], False)]
    for content, template in zip(contents, templates[1:]):
        pieces += [(content, True), (template, False)]
    return pieces


def _align(rendered: str, templates: list[str], contents: list[str]) -> list[tuple[str, bool]] | None:
    """Find each content in the real rendering, verbatim or trimmed (templates often `| trim` it)."""
    pieces, position = [], 0
    for index, template in enumerate(templates):
        if not rendered.startswith(template, position):
            return None
        pieces.append((template, False))
        position += len(template)
        if index == len(contents):
            break
        following = templates[index + 1]
        for candidate in dict.fromkeys((contents[index], contents[index].strip())):
            end = position + len(candidate)
            if rendered.startswith(candidate, position) and rendered.startswith(following, end):
                pieces.append((candidate, True))
                position = end
                break
        else:
            return None
    return pieces if position == len(rendered) else None


def _encode_guarded(tokenizer, pieces: list[tuple[str, bool]], control: set[int]) -> list[int]:
    """Control tokens only where the template's own text has them; everything between them is plain text."""
    ids, plain = [], ""
    for text, is_content in pieces:
        if is_content:
            plain += text
            continue
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        start = 0
        for token_id, (begin, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
            if token_id in control:
                ids += _encode_plain(tokenizer, plain + text[start:begin])
                ids.append(token_id)
                plain, start = "", end
        plain += text[start:]
    return ids + _encode_plain(tokenizer, plain)


def _encode_plain(tokenizer, text: str) -> list[int]:
    if not text:
        return []
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
