"""Write a tiny, randomly initialised Whisper model in the layout openai/whisper-* ship on the Hub.

    python -m fish_worker.devtools.tiny_whisper DIR [--seed N] [--size tiny|small]

The directory gets what a released checkpoint has: config.json, generation_config.json (with
lang_to_id, task_to_id, no_timestamps_token_id, suppress_tokens ...), preprocessor_config.json,
vocab.json, merges.txt, tokenizer.json, tokenizer_config.json and model.safetensors, so
`WhisperRecognizer.load` runs exactly the code path a real model takes. Nothing is downloaded: the
byte-level BPE is trained here on a few sentences, and the special tokens follow Whisper's order
(<|endoftext|>, <|startoftranscript|>, one per language, <|translate|>, <|transcribe|>, <|startoflm|>,
<|startofprev|>, <|nospeech|>, <|notimestamps|>, then 1501 timestamps <|0.00|> ... <|30.00|>), which
transformers' tokenizer and generate() rely on. What it transcribes is gibberish; only the mechanics
(features, language detection, timestamps, batching) are meaningful.

`--size small` gives the shape of whisper-small (768 wide, 12+12 layers) for the bench's timing;
its vocabulary is still the tiny one, so its output layer is smaller than the real model's.
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

END_OF_TEXT = "<|endoftext|>"
TASKS = ["<|translate|>", "<|transcribe|>"]
TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>, 20 ms apart
MEL_BINS = 80  # whisper-tiny ... -large-v2; large-v3 has 128
MAX_TARGET_POSITIONS = 448
# generate()'s limit per 30 s window. The released configs say 448 (the decoder's length); a random
# model rarely ends by itself, so a smaller limit keeps a test's transcription short.
MAX_TOKENS = 40

_CORPUS = [
    "Hello, how are you? I am fine, thank you. What's the weather like today?",
    "And what about tomorrow? It will be sunny in the morning and rainy in the evening.",
    "The quick brown fox jumps over the lazy dog. A short sentence. Another one follows!",
    "Numbers: 0 1 2 3 4 5 6 7 8 9, 10, 100, 1000. Dates like 2024-05-01 and times like 12:30.",
    "Ceci est une phrase en français. Das ist ein deutscher Satz. これは日本語です。",
]
BPE_VOCAB = 400

SIZES: dict[str, dict[str, Any]] = {  # WhisperConfig keywords by size
    "tiny": {
        "d_model": 64,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
    },
    "small": {
        "d_model": 768,
        "encoder_layers": 12,
        "decoder_layers": 12,
        "encoder_attention_heads": 12,
        "decoder_attention_heads": 12,
        "encoder_ffn_dim": 3072,
        "decoder_ffn_dim": 3072,
    },
}


def special_tokens() -> list[str]:
    """Whisper's special tokens in their released order (ids follow the byte-level vocabulary)."""
    languages = [f"<|{code}|>" for code in LANGUAGES]
    return [
        END_OF_TEXT,
        "<|startoftranscript|>",
        *languages,
        *TASKS,
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]


def timestamp_tokens() -> list[str]:
    return [f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMPS)]


def build_tokenizer() -> WhisperTokenizer:
    """A byte-level BPE with Whisper's special and timestamp tokens appended, trained offline."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    core.train_from_iterator(_CORPUS, trainer=trainer)
    core.decoder = decoders.ByteLevel()
    bpe = json.loads(core.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    tokenizer = WhisperTokenizer(vocab=dict(bpe["vocab"]), merges=merges, model_max_length=1024)
    # Special tokens as the released tokenizers mark them; timestamps are added but not special,
    # so `all_special_ids[-1] + 1` is the first timestamp (WhisperTokenizer relies on that).
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens()[1:]})
    tokenizer.add_tokens(timestamp_tokens())
    tokenizer.set_prefix_tokens()
    return tokenizer


def build_generation_config(tokenizer: WhisperTokenizer) -> GenerationConfig:
    ids = tokenizer.convert_tokens_to_ids
    eos = ids(END_OF_TEXT)
    space = ids("Ġ")
    # The released configs suppress the non-speech symbols (music notes, brackets ...); here: the
    # byte tokens for a few of them, and the task/LM tokens a transcript never contains.
    suppress = sorted(
        {ids(t) for t in ["<|startoflm|>", "<|startofprev|>", "<|nospeech|>", *TASKS]}
        | {
            ids(t)
            for t in ["#", "(", ")", "*", "+", "/", "<", "=", ">", "@", "[", "]", "^", "_", "`", "{", "|", "}", "~"]
            if t in tokenizer.get_vocab()
        }
    )
    return GenerationConfig(
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        begin_suppress_tokens=[space, eos],
        suppress_tokens=suppress,
        forced_decoder_ids=None,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES},
        task_to_id={"translate": ids(TASKS[0]), "transcribe": ids(TASKS[1])},
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50,
        max_length=MAX_TOKENS,
        return_timestamps=False,
        alignment_heads=[[1, 0], [1, 1]],
    )


def build_model(tokenizer: WhisperTokenizer, seed: int, size: str) -> WhisperForConditionalGeneration:
    generation = build_generation_config(tokenizer)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=MEL_BINS,
        max_source_positions=1500,
        max_target_positions=MAX_TARGET_POSITIONS,
        pad_token_id=generation.pad_token_id,
        bos_token_id=generation.bos_token_id,
        eos_token_id=generation.eos_token_id,
        decoder_start_token_id=generation.decoder_start_token_id,
        **SIZES[size],
    )
    # Seed the global RNG only for the init, so the weights depend on `seed` alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
    model.generation_config = generation
    return model.eval()


def write_tiny_whisper(directory: str | Path, seed: int = 0, size: str = "tiny") -> Path:
    """Write the model to `directory` (created if needed) and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    build_model(tokenizer, seed, size).save_pretrained(directory)
    features = WhisperFeatureExtractor(
        feature_size=MEL_BINS, sampling_rate=16_000, hop_length=160, chunk_length=30, n_fft=400, padding_value=0.0
    )
    features.save_pretrained(directory)  # preprocessor_config.json, as released (not processor_config.json)
    tokenizer.save_pretrained(directory)
    tokenizer.save_vocabulary(str(directory))  # vocab.json + merges.txt, which the released repos carry too
    _make_tokenizer_config_portable(directory / "tokenizer_config.json")
    return directory


def _make_tokenizer_config_portable(path: Path) -> None:
    """List the special tokens under the name the released configs (and transformers 4.x) use, and
    name the processor, as openai/whisper-* do; transformers 5 writes only `extra_special_tokens`."""
    config = json.loads(path.read_text())
    config["additional_special_tokens"] = config.get("extra_special_tokens", special_tokens()[1:])
    config["processor_class"] = "WhisperProcessor"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to write the model (created if needed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="tiny (default) or whisper-small's shape")
    args = parser.parse_args(argv)
    path = write_tiny_whisper(args.directory, seed=args.seed, size=args.size)
    print(f"tiny Whisper model written to {path}")


if __name__ == "__main__":
    main()
