"""The chat model path on a tiny random model written offline: load, reply, stream, seed, limits, truncation."""

from __future__ import annotations

import json

import pytest
import torch

from fish_worker.dialogue.detokenize import IncrementalDetokenizer
from fish_worker.dialogue.llm import ChatModel, ChatModelError
from fish_worker.dialogue.prompt import PromptTooLongError, fit_prompt
from fish_worker.devtools.tiny_chat_model import main as tiny_chat_model_main
from fish_worker.devtools.tiny_chat_model import write_tiny_chat_model

HELLO = [{"role": "user", "content": "Hello, how are you?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"), seed=0)


@pytest.fixture(scope="module")
def chat(model_dir):
    return ChatModel.load(model_dir)


def long_history(turns: int) -> list[dict]:
    history = []
    for i in range(turns):
        history.append({"role": "user", "content": f"Question number {i}: what's the weather like today?"})
        history.append({"role": "assistant", "content": f"Answer number {i}: it will be sunny in the morning."})
    return history + [{"role": "user", "content": "And what about tomorrow?"}]


# --- the tiny model directory -------------------------------------------------------------------------


def test_directory_has_the_layout_of_a_real_model(model_dir):
    for name in [
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]:
        assert (model_dir / name).is_file(), name
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    assert json.loads((model_dir / "config.json").read_text())["num_hidden_layers"] == 2


def test_same_seed_writes_the_same_model_and_another_seed_differs(tmp_path, model_dir):
    tiny_chat_model_main([str(tmp_path / "again"), "--seed", "0"])
    write_tiny_chat_model(tmp_path / "other", seed=1)
    weights = lambda d: (d / "model.safetensors").read_bytes()  # noqa: E731
    assert weights(tmp_path / "again") == weights(model_dir)
    assert weights(tmp_path / "other") != weights(model_dir)
    assert (tmp_path / "again" / "tokenizer.json").read_text() == (model_dir / "tokenizer.json").read_text()


def test_tokenizer_round_trips_any_text(chat):
    text = "Grüße, 日本語 and emoji 😀\n\ttabs\x00nul — done."
    ids = chat.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert chat.tokenizer.decode(ids) == text


# --- loading --------------------------------------------------------------------------------------------


def test_load_reads_the_context_from_the_config(chat):
    assert chat.context_tokens == 512
    assert chat.device.type == "cpu"
    assert str(chat.model.dtype) == "torch.float32"


def test_load_missing_directory_names_it(tmp_path):
    with pytest.raises(ChatModelError, match="not found: .*nowhere"):
        ChatModel.load(tmp_path / "nowhere")


def test_load_directory_without_config_names_the_file(tmp_path):
    with pytest.raises(ChatModelError, match="config.json"):
        ChatModel.load(tmp_path)


def test_load_broken_weights_names_the_directory(tmp_path):
    write_tiny_chat_model(tmp_path, seed=0)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ChatModelError, match=f"weights from {tmp_path}"):
        ChatModel.load(tmp_path)


def test_load_without_chat_template_is_refused(tmp_path):
    write_tiny_chat_model(tmp_path, seed=0)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ChatModelError, match="no chat template"):
        ChatModel.load(tmp_path)


# --- replies --------------------------------------------------------------------------------------------


def test_stream_deltas_concatenate_to_the_reply(chat):
    stream = chat.stream_reply(HELLO, temperature=0.7, max_new_tokens=30, system_prompt=None, seed=7)
    deltas = list(stream)
    assert len(deltas) > 1 and all(deltas)
    assert "".join(deltas) == chat.reply(HELLO, temperature=0.7, max_new_tokens=30, system_prompt=None, seed=7)


def test_same_seed_same_reply_other_seed_other_reply(chat):
    replies = [chat.reply(HELLO, temperature=1.0, max_new_tokens=20, seed=seed) for seed in (3, 3, 4)]
    assert replies[0] == replies[1]
    assert replies[0] != replies[2]


def test_zero_temperature_is_greedy_whatever_the_seed(chat):
    greedy = {chat.reply(HELLO, temperature=0, max_new_tokens=10, seed=seed) for seed in (None, 1, 2)}
    sampled = {chat.reply(HELLO, temperature=1.0, max_new_tokens=10, seed=seed) for seed in (1, 2)}
    assert len(greedy) == 1 and greedy.pop()
    assert len(sampled) == 2  # the seeds do matter once sampling


def hf_greedy_reply(chat, messages, max_new_tokens: int, system_prompt=None) -> str:
    """Hugging Face's own greedy generate() on the same prompt: the reference for a temperature-0 reply."""
    fitted = fit_prompt(
        chat.tokenizer,
        messages,
        system_prompt=system_prompt,
        max_new_tokens=max_new_tokens,
        context_tokens=chat.context_tokens,
    )
    input_ids = torch.tensor([fitted.token_ids])
    output = chat.model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        temperature=None,
        top_k=None,
        top_p=None,
        max_new_tokens=max_new_tokens,
        pad_token_id=chat.tokenizer.eos_token_id,
    )
    new_ids = output[0, input_ids.shape[1] :].tolist()
    return chat.tokenizer.decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_max_new_tokens_bounds_the_reply(chat):
    # A greedy reply of this random model never ends on its own, so it is exactly max_new_tokens long:
    # the same text as Hugging Face's greedy generate() with that budget.
    for limit in (1, 5, 12):
        assert chat.reply(HELLO, temperature=0, max_new_tokens=limit) == hf_greedy_reply(chat, HELLO, limit)
    # Sampled: a smaller budget gives a prefix of the same seed's longer reply.
    short, longer = (chat.reply(HELLO, temperature=0.7, max_new_tokens=n, seed=11) for n in (5, 12))
    assert longer.startswith(short) and len(longer) > len(short)


def test_tiny_model_writes_printable_text(chat):
    reply = chat.reply(HELLO, temperature=1.0, max_new_tokens=200, seed=2)
    assert reply and all(ch.isprintable() or ch in " \n" for ch in reply)


def test_system_prompt_is_part_of_the_prompt(chat):
    fitted = fit_prompt(
        chat.tokenizer, HELLO, system_prompt="Answer in French.", max_new_tokens=20, context_tokens=chat.context_tokens
    )
    assert "Answer in French." in chat.tokenizer.decode(fitted.token_ids)
    # Same seed, same sampler: only the prompt differs, and so does the reply.
    with_system = chat.reply(HELLO, temperature=1.0, max_new_tokens=20, seed=3, system_prompt="Answer in French.")
    assert with_system != chat.reply(HELLO, temperature=1.0, max_new_tokens=20, seed=3)


def test_closing_a_stream_stops_generation_and_frees_the_model(chat):
    steps = []
    hook = chat.model.lm_head.register_forward_hook(lambda *_: steps.append(1))  # once per token (all rows)
    try:
        stream = chat.stream_reply(HELLO, temperature=0.7, max_new_tokens=400, seed=1)
        next(stream)
        stream.close()  # returns once the engine has dropped the reply's row
    finally:
        hook.remove()
    assert chat.batcher.active_rows == 0
    assert 1 <= len(steps) < 400
    assert chat.reply(HELLO, temperature=0.7, max_new_tokens=5, seed=1)  # the model serves the next reply


def test_bad_messages_are_rejected_before_generating(chat):
    with pytest.raises(ValueError, match="end with the user message"):
        chat.reply([{"role": "assistant", "content": "hi"}], temperature=0.7, max_new_tokens=5)
    with pytest.raises(ValueError):
        chat.reply([{"role": "robot", "content": "hi"}], temperature=0.7, max_new_tokens=5)
    with pytest.raises(ValueError, match="temperature"):
        chat.reply(HELLO, temperature=-1, max_new_tokens=5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        chat.reply(HELLO, temperature=0.7, max_new_tokens=0)


# --- history truncation ---------------------------------------------------------------------------------


def test_long_history_drops_oldest_turns_and_keeps_the_system_prompt(chat):
    history = long_history(40)
    fitted = fit_prompt(chat.tokenizer, history, system_prompt="Be brief.", max_new_tokens=100, context_tokens=512)
    assert fitted.dropped_messages > 0
    assert len(fitted.token_ids) + 100 <= 512
    assert fitted.messages[0] == {"role": "system", "content": "Be brief."}
    assert fitted.messages[1]["role"] == "user"  # restarts on a user turn
    assert fitted.messages[-1] == history[-1]
    assert fitted.messages[1:] == history[fitted.dropped_messages :]  # the newest turns, in order
    # As many turns as fit: one more would overflow.
    one_more = fit_prompt(
        chat.tokenizer,
        history[fitted.dropped_messages - 2 :],
        system_prompt="Be brief.",
        max_new_tokens=100,
        context_tokens=10_000,
    )
    assert len(one_more.token_ids) + 100 > 512

    stream = chat.stream_reply(history, temperature=0.7, max_new_tokens=100, system_prompt="Be brief.", seed=0)
    reply = "".join(stream)
    # The model saw exactly the newest turns: sending only those gives the same reply.
    kept = chat.reply(
        history[fitted.dropped_messages :], temperature=0.7, max_new_tokens=100, system_prompt="Be brief.", seed=0
    )
    assert reply and reply == kept


def test_short_history_is_kept_whole(chat):
    history = long_history(2)
    fitted = fit_prompt(chat.tokenizer, history, system_prompt=None, max_new_tokens=100, context_tokens=512)
    assert fitted.dropped_messages == 0 and fitted.messages == history


def test_oversized_last_message_lowers_the_budget_or_is_refused(chat):
    message = [{"role": "user", "content": "word " * 200}]
    needed = len(
        fit_prompt(chat.tokenizer, message, system_prompt=None, max_new_tokens=1, context_tokens=10_000).token_ids
    )
    fitted = fit_prompt(chat.tokenizer, message, system_prompt=None, max_new_tokens=500, context_tokens=needed + 10)
    assert fitted.max_new_tokens == 10
    with pytest.raises(PromptTooLongError, match="too long"):
        fit_prompt(chat.tokenizer, message, system_prompt=None, max_new_tokens=5, context_tokens=needed)


# --- incremental detokenizing ---------------------------------------------------------------------------


def test_detokenizer_never_splits_a_character(chat):
    text = "Grüße 😀 日本語 end"
    ids = chat.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    detokenizer = IncrementalDetokenizer(chat.tokenizer)
    deltas = [detokenizer.push(token_id) for token_id in ids] + [detokenizer.flush()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in delta for delta in deltas)


def test_load_with_a_slow_tokenizer_is_refused(tmp_path, monkeypatch):
    """Prompts keep message text plain through the tokenizer's character offsets, which only fast ones give."""
    from transformers import PreTrainedTokenizerFast

    write_tiny_chat_model(tmp_path, seed=0)
    monkeypatch.setattr(PreTrainedTokenizerFast, "is_fast", property(lambda self: False))
    with pytest.raises(ChatModelError, match="slow"):
        ChatModel.load(tmp_path)
