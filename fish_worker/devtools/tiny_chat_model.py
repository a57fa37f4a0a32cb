"""Write a tiny, randomly initialised chat model in the layout of a real Hugging Face model directory.

    python -m fish_worker.devtools.tiny_chat_model DIR [--seed N]

The directory gets config.json, model.safetensors, generation_config.json, tokenizer.json and
tokenizer_config.json (with a ChatML chat template), so `ChatModel.load` exercises exactly the code
path a real model takes. Nothing is downloaded: the byte-level BPE tokenizer is trained here on a
few sentences, which keeps it small while any text still round-trips (every byte is in the vocabulary).
Its replies are gibberish; only their mechanics (streaming, seeding, token limits) are meaningful.
generation_config.json suppresses the tokens that decode to control characters or to part of a
multi-byte character, so what it writes is at least printable text a TTS demo can speak.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]

# ChatML, the format of Qwen-style instruct models. A Jinja template, rendered by apply_chat_template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Training text for the BPE merges: enough for common English pieces to become single tokens.
_CORPUS = [
    "Hello, how are you? I am fine, thank you. What's the weather like today?",
    "And what about tomorrow? It will be sunny in the morning and rainy in the evening.",
    "The quick brown fox jumps over the lazy dog. A short sentence. Another one follows!",
    "You are a helpful assistant. Answer briefly and speak clearly.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9, 10, 100, 1000. Dates like 2024-05-01 and times like 12:30.",
    "Ceci est une phrase en français. Das ist ein deutscher Satz. これは日本語です。",
]

# Small enough to write and load in well under a second; big enough to be a real transformer.
VOCAB_SIZE = 512
CONTEXT_TOKENS = 512


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML special tokens, trained offline (deterministic)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        model_max_length=CONTEXT_TOKENS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)  # one token in, one id out (a list only for a list)
    assert isinstance(token_id, int), token
    return token_id


def unprintable_token_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Tokens that decode to a control character or to an incomplete UTF-8 sequence (U+FFFD)."""
    special = set(tokenizer.all_special_ids)
    unprintable = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if token_id not in special and any(ch == "\ufffd" or (not ch.isprintable() and ch not in " \n") for ch in text):
            unprintable.append(token_id)
    return unprintable


def build_model(
    vocab_size: int, seed: int, pad_token_id: int, eos_token_ids: list[int], suppress_token_ids: list[int]
) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT_TOKENS,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_ids[0],
    )
    # Seed the global RNG only for the duration of the init so the weights depend on `seed` alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_token_ids,
        pad_token_id=pad_token_id,
        do_sample=True,
        temperature=0.7,
        suppress_tokens=suppress_token_ids,
    )
    return model.eval()


def write_tiny_chat_model(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny chat model to `directory` (created if needed) and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    eos_ids = [_token_id(tokenizer, IM_END), _token_id(tokenizer, END_OF_TEXT)]
    # <|im_start|> too: a reply never opens a new message.
    suppress = unprintable_token_ids(tokenizer) + [_token_id(tokenizer, IM_START)]
    model = build_model(
        len(tokenizer), seed, pad_token_id=tokenizer.pad_token_id, eos_token_ids=eos_ids, suppress_token_ids=suppress
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    _make_tokenizer_config_portable(directory / "tokenizer_config.json")
    return directory


def _make_tokenizer_config_portable(path: Path) -> None:
    """Name the generic fast-tokenizer class and embed the chat template, as most hub models do.

    transformers 5 records its own backend class name and keeps the template only in
    chat_template.jinja; transformers 4.x knows neither, so the directory would not load there.
    """
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to write the model (created if needed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    path = write_tiny_chat_model(args.directory, seed=args.seed)
    print(f"tiny chat model written to {path}")


if __name__ == "__main__":
    main()
