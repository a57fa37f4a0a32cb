"""The local chat model decodes concurrent replies together: each reply equals its solo reply, stopping one
leaves the others, a failing step fails only the rows that keep failing, and random schedules all end
(the long run: `python -m fish_worker.devtools.chat_stress --schedules 1000`)."""

from __future__ import annotations

import threading

import pytest
import torch

from fish_worker.devtools.chat_stress import run
from fish_worker.dialogue.backend import ChatBackendError
from fish_worker.dialogue.llm import ChatModel

# (message, temperature, seed, max_new_tokens): sampled and greedy, different seeds and lengths.
REPLIES = [
    ("Hello, how are you?", 0.7, 1, 30),
    ("Hello, how are you?", 0.7, 2, 12),
    ("What's the weather like today?", 1.0, 3, 40),
    ("Tell me a story.", 0.0, None, 25),
    ("Short!", 1.3, 4, 3),
    ("And what about tomorrow?", 0.9, 5, 35),
]


@pytest.fixture(scope="module")
def chat(tiny_chat_model_dir):
    return ChatModel.load(tiny_chat_model_dir, device="cpu", max_batch=4)


def messages(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def options(temperature, seed, budget) -> dict:
    return {"temperature": temperature, "seed": seed, "max_new_tokens": budget}


def solo(chat, text, temperature, seed, budget) -> str:
    before = chat.batcher.steps, chat.batcher.rows_decoded
    reply = chat.reply(messages(text), **options(temperature, seed, budget))
    steps, rows = chat.batcher.steps - before[0], chat.batcher.rows_decoded - before[1]
    assert steps == rows  # alone: one row per step
    return reply


def consume_all(streams) -> list[str]:
    """Consume every stream on its own thread, as concurrent jobs do."""
    texts = [""] * len(streams)

    def consume(index):
        texts[index] = "".join(streams[index])

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return texts


def test_batched_replies_equal_their_solo_replies(chat):
    alone = [solo(chat, *reply) for reply in REPLIES]
    before = chat.batcher.steps, chat.batcher.rows_decoded
    # All six are queued before any is read: four decode together, two join as rows free up.
    streams = [chat.stream_reply(messages(text), **options(t, s, n)) for text, t, s, n in REPLIES]
    together = consume_all(streams)
    steps, rows = chat.batcher.steps - before[0], chat.batcher.rows_decoded - before[1]
    assert together == alone
    assert rows > 2 * steps  # the replies really shared steps
    assert chat.batcher.active_rows == 0


def test_batched_logits_differ_from_solo_only_by_float_rounding(chat):
    """The bound docs/chat.md states: rows share matrix products, whose rounding may depend on the batch."""
    decoder = chat.batcher.decoder
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], list(range(20, 60))]
    with torch.inference_mode():
        solo_logits = []
        for prompt in prompts:
            _, cache = decoder.prefill(prompt, len(prompt) + 4)
            solo_logits.append(decoder.step([42], [cache])[0])
        caches = [decoder.prefill(prompt, len(prompt) + 4)[1] for prompt in prompts]
        batched = decoder.step([42, 42, 42], caches)
    for row, expected in zip(batched, solo_logits):
        assert torch.allclose(row, expected, rtol=0, atol=1e-4)


def test_closing_one_reply_leaves_the_others_untouched(chat):
    keep = [REPLIES[0], REPLIES[2], REPLIES[5]]
    alone = [solo(chat, *reply) for reply in keep]
    streams = [chat.stream_reply(messages(text), **options(t, s, n)) for text, t, s, n in keep]
    quitter = chat.stream_reply(messages("Tell me a story."), **options(0.8, 9, 200))
    first = next(quitter)
    quitter.close()  # the client went away after the first words
    assert first and chat.batcher.active_rows <= len(keep)
    assert consume_all(streams) == alone
    assert chat.batcher.active_rows == 0


def test_aborting_from_another_thread_wakes_the_consumer_and_frees_the_row(chat):
    stream = chat.stream_reply(messages("Hello, how are you?"), **options(0.7, 1, 200))
    assert next(stream)
    threading.Thread(target=stream.abort).start()
    rest = list(stream)  # ends (within a step), instead of running to the budget
    stream.close()
    assert len(rest) < 150
    assert chat.batcher.active_rows == 0


def test_a_failing_step_is_retried_and_a_row_that_keeps_failing_fails_alone(chat):
    alone = [solo(chat, *reply) for reply in REPLIES[:3]]
    decoder = chat.batcher.decoder
    real_step, real_prefill = decoder.step, decoder.prefill
    calls = {"step": 0}
    poisoned = []

    def prefill(token_ids, capacity):
        logits, cache = real_prefill(token_ids, capacity)
        if "poison" in chat.tokenizer.decode(token_ids):
            poisoned.append(cache)
        return logits, cache

    def step(tokens, rows):
        calls["step"] += 1
        if calls["step"] == 3:
            raise RuntimeError("transient fault")
        if any(row is bad for row in rows for bad in poisoned):
            raise RuntimeError("this row always fails")
        return real_step(tokens, rows)

    decoder.step, decoder.prefill = step, prefill
    failures_before = chat.batcher.step_failures
    try:
        streams = [chat.stream_reply(messages(text), **options(t, s, n)) for text, t, s, n in REPLIES[:3]]
        bad = chat.stream_reply(messages("poison"), **options(0.7, 1, 50))
        with pytest.raises(ChatBackendError, match="chat backend failed: the chat model failed mid-reply"):
            list(bad)
        assert consume_all(streams) == alone
    finally:
        decoder.step, decoder.prefill = real_step, real_prefill
    assert chat.batcher.step_failures > failures_before
    assert chat.batcher.active_rows == 0


def test_a_failing_prefill_fails_only_its_reply(chat):
    decoder = chat.batcher.decoder
    real_prefill = decoder.prefill

    def prefill(token_ids, capacity):
        if "poison" in chat.tokenizer.decode(token_ids):
            raise RuntimeError("cannot read this prompt")
        return real_prefill(token_ids, capacity)

    expected = solo(chat, *REPLIES[0])
    decoder.prefill = prefill
    try:
        good = chat.stream_reply(messages(REPLIES[0][0]), **options(*REPLIES[0][1:]))
        bad = chat.stream_reply(messages("poison"), **options(0.7, 1, 50))
        with pytest.raises(ChatBackendError, match="failed to read the prompt"):
            list(bad)
        assert "".join(good) == expected
    finally:
        decoder.prefill = real_prefill


def test_more_replies_than_rows_wait_their_turn(chat):
    rows_seen = []
    decoder = chat.batcher.decoder
    real_step = decoder.step
    decoder.step = lambda tokens, rows: (rows_seen.append(len(rows)), real_step(tokens, rows))[1]
    try:
        streams = [chat.stream_reply(messages("Hello, how are you?"), **options(0.7, seed, 20)) for seed in range(9)]
        replies = consume_all(streams)
    finally:
        decoder.step = real_step
    assert max(rows_seen) == chat.max_batch == 4
    assert replies == [solo(chat, "Hello, how are you?", 0.7, seed, 20) for seed in range(9)]


@pytest.mark.timeout(240)
def test_random_schedules_all_end_with_solo_replies(tiny_chat_model_dir):
    chat = ChatModel.load(tiny_chat_model_dir, device="cpu", max_batch=3)
    stress = run(chat, schedules=25, seed=1)
    assert stress.failures == []
    assert chat.batcher.step_failures > 0  # faults were injected and survived
    assert chat.batcher.rows_decoded > chat.batcher.steps  # replies shared steps


def test_the_chat_models_kv_at_full_batch_is_kept_from_the_speech_pool(chat, service, monkeypatch):
    from fish_worker.engine import kv_budget

    config = chat.model.config
    head_dim = config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4  # float32 on CPU
    assert chat.kv_bytes() == chat.max_batch * 2048 * per_token
    # On a GPU the pool takes what is free after loading, less the workspace and less the chat KV.
    model = service.generator.model
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 1024**3, 80 * 1024**3))
    cuda = torch.device("cuda")
    alone = kv_budget.plan(model, torch.bfloat16, cuda, None, None)
    shared = kv_budget.plan(model, torch.bfloat16, cuda, None, None, reserved_bytes=3 * 1024**3)
    reserved_tokens = 3 * 1024**3 // alone.bytes_per_token
    assert alone.kv_tokens - shared.kv_tokens in (reserved_tokens, reserved_tokens + 1)


def _small(config_class, **extra):
    return config_class(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **extra,
    )


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_the_batched_step_computes_what_the_models_own_forward_does(family):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from fish_worker.dialogue.batched_decode import BatchedDecoder

    config_class, model_class = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[family]
    torch.manual_seed(0)
    model = model_class(_small(config_class, max_position_embeddings=256)).eval()
    decoder = BatchedDecoder(model)
    prompt, fed = [5, 6, 7, 8, 9, 10], [11, 12, 13]
    with torch.inference_mode():
        _, cache = decoder.prefill(prompt, len(prompt) + len(fed))
        stepped = torch.stack([decoder.step([token], [cache])[0] for token in fed])
        reference = model(torch.tensor([prompt + fed])).logits[0, len(prompt) :].float()
    assert torch.allclose(stepped, reference, rtol=0, atol=1e-5)


def test_a_model_with_a_sliding_window_is_refused_naming_the_remote_backend(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    from fish_worker.dialogue.batched_decode import BatchedDecoder, UnsupportedChatModelError

    model = MistralForCausalLM(_small(MistralConfig, max_position_embeddings=8192, sliding_window=4096))
    with pytest.raises(UnsupportedChatModelError, match="sliding-window.*FISH_CHAT_BASE_URL"):
        BatchedDecoder(model)
