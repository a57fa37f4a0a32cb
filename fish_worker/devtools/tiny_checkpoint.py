"""Write a tiny, randomly initialised Fish Speech checkpoint in the released on-disk layout.

    python -m fish_worker.devtools.tiny_checkpoint DIR [--seed 0] [--size tiny|bench]

Same file names, config keys, tokenizer format and codec state-dict format as `openaudio-s1-mini`,
written with fish-speech's own classes (`DualARTransformer.save_pretrained`, the DAC built from the
package's `modded_dac_vq` config), so the worker's one loading path serves both. The only extra
file is `codec_config.yaml`, which shrinks the codec (the released codec needs no overrides).
Seeded: the same seed writes the same weights. `size="bench"` writes a mid-size model (same layout,
wider and deeper, more codebooks) for `bench/run.py`: big enough that the matrix work is real, small
enough to run a benchmark on two CPU cores in minutes.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import torch

from fish_worker.engine.checkpoint import CODEC_OVERRIDES_FILE, compose_codec_config

NUM_CODEBOOKS = 4  # 1 semantic + 3 residual (released: 10)
CODEBOOK_SIZE = 64  # semantic and residual codebook size (released: 4096 / 1024)

TEXT2SEMANTIC_CONFIG = dict(
    model_type="dual_ar",
    # 256 byte ranks + 15 special + semantic tokens; semantic ids end the vocabulary, as released, so
    # fish-speech's `token - semantic_begin_id` always indexes a codebook.
    vocab_size=256 + 15 + CODEBOOK_SIZE,
    n_layer=2,
    n_head=4,
    n_local_heads=2,
    head_dim=16,
    dim=64,
    intermediate_size=128,
    rope_base=1_000_000,
    norm_eps=1e-6,
    max_seq_len=4096,
    dropout=0.0,
    tie_word_embeddings=False,
    attention_qkv_bias=False,
    attention_o_bias=False,
    attention_qk_norm=False,
    codebook_size=CODEBOOK_SIZE,
    num_codebooks=NUM_CODEBOOKS,
    n_fast_layer=1,
    fast_dim=64,
    fast_n_head=4,
    fast_n_local_heads=2,
    fast_head_dim=16,
    fast_intermediate_size=128,
    use_gradient_checkpointing=False,
    initializer_range=0.3,  # large enough that random sampling is not flat noise
)

# Overrides of fish-speech's `modded_dac_vq` codec config: same classes and hop (2048 samples per
# frame at 44.1 kHz), far smaller widths.
_TINY_TRANSFORMER = {"block_size": 512, "n_layer": 1, "n_head": 1, "dim": 64, "intermediate_size": 128, "head_dim": 64}
CODEC_OVERRIDES = {
    "encoder_dim": 4,
    "decoder_dim": 64,  # fish-speech gives its codec transformers dim // 64 heads: keep >= 64
    "encoder_transformer_layers": [0, 0, 0, 1],
    "decoder_transformer_layers": [1, 0, 0, 0],
    "transformer_general_config": {"block_size": 512},
    "quantizer": {
        "input_dim": 64,
        "n_codebooks": NUM_CODEBOOKS - 1,
        "codebook_size": CODEBOOK_SIZE,
        "semantic_codebook_size": CODEBOOK_SIZE,
        "post_module": {"input_dim": 64, "window_size": 32, "config": _TINY_TRANSFORMER},
        "pre_module": {"input_dim": 64, "window_size": 32, "config": _TINY_TRANSFORMER},
    },
}


BENCH_NUM_CODEBOOKS = 8
BENCH_CODEBOOK_SIZE = 512
BENCH_TEXT2SEMANTIC_CONFIG = {
    **TEXT2SEMANTIC_CONFIG,
    "vocab_size": 256 + 15 + BENCH_CODEBOOK_SIZE,
    "n_layer": 8,
    "n_head": 8,
    "n_local_heads": 2,
    "head_dim": 48,
    "dim": 384,
    "intermediate_size": 1024,
    "max_seq_len": 4096,  # fish-speech's generate_long keeps 2048 positions free for generation
    "codebook_size": BENCH_CODEBOOK_SIZE,
    "num_codebooks": BENCH_NUM_CODEBOOKS,
    "n_fast_layer": 2,
    "fast_dim": 256,
    "fast_n_head": 4,
    "fast_n_local_heads": 2,
    "fast_head_dim": 64,
    "fast_intermediate_size": 512,
    "initializer_range": 0.05,
}
BENCH_CODEC_OVERRIDES = {
    **CODEC_OVERRIDES,
    "decoder_dim": 128,
    "quantizer": {
        **CODEC_OVERRIDES["quantizer"],
        "n_codebooks": BENCH_NUM_CODEBOOKS - 1,
        "codebook_size": BENCH_CODEBOOK_SIZE,
        "semantic_codebook_size": BENCH_CODEBOOK_SIZE,
    },
}
SIZES = {  # name → (text2semantic config, codec overrides, semantic codebook size)
    "tiny": (TEXT2SEMANTIC_CONFIG, CODEC_OVERRIDES, CODEBOOK_SIZE),
    "bench": (BENCH_TEXT2SEMANTIC_CONFIG, BENCH_CODEC_OVERRIDES, BENCH_CODEBOOK_SIZE),
}


def _write_tokenizer(out: Path, codebook_size: int = CODEBOOK_SIZE) -> None:
    """Byte-level tiktoken ranks (every string encodes) and the special tokens, semantic ones last."""
    from fish_speech.tokenizer import ALL_SPECIAL_TOKENS, SEMANTIC_TOKEN_TEMPLATE

    ranks = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    (out / "tokenizer.tiktoken").write_text("\n".join(ranks) + "\n")
    specials = [t for t in ALL_SPECIAL_TOKENS if not t.startswith("<|semantic:")]
    specials += [SEMANTIC_TOKEN_TEMPLATE.format(i=i) for i in range(codebook_size)]
    ids = {token: 256 + i for i, token in enumerate(specials)}
    (out / "special_tokens.json").write_text(json.dumps(ids, indent=2))


def write_tiny_checkpoint(out: Path | str, seed: int = 0, size: str = "tiny") -> Path:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from fish_speech.models.text2semantic.llama import DualARModelArgs, DualARTransformer
    from fish_speech.tokenizer import FishTokenizer

    out = Path(out)
    config, codec_overrides, codebook_size = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(out, codebook_size)
    tokenizer = FishTokenizer.from_pretrained(str(out))
    assert 256 + tokenizer.num_special_tokens == config["vocab_size"]

    torch.manual_seed(seed)
    model = DualARTransformer(DualARModelArgs(**config), tokenizer=tokenizer)
    model.config.save(out / "config.json")
    torch.save(model.state_dict(), out / "model.pth")

    OmegaConf.save(OmegaConf.create(codec_overrides), out / CODEC_OVERRIDES_FILE)
    torch.manual_seed(seed + 1)
    codec = instantiate(compose_codec_config(out))
    # Only parameters and the buffers a released codec.pth carries; skip large derived masks.
    torch.save(codec.state_dict(), out / "codec.pth")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args()
    out = write_tiny_checkpoint(args.directory, args.seed, args.size)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"wrote tiny Fish Speech checkpoint to {out} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
