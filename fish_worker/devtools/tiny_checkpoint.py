"""Write a tiny, randomly initialised Fish Speech checkpoint in the released on-disk layout.

    python -m fish_worker.devtools.tiny_checkpoint DIR [--seed 0] [--size tiny|bench|s1-mini]

Same file names, config keys, tokenizer format and codec state-dict format as `openaudio-s1-mini`,
written with fish-speech's own classes (`DualARTransformer.save_pretrained`, the DAC built from the
package's `modded_dac_vq` config), so the worker's one loading path serves both. The only extra
file is `codec_config.yaml`, which shrinks the codec (the released codec needs no overrides).
Seeded: the same seed writes the same weights. `size="bench"` writes a mid-size model (same layout,
wider and deeper, more codebooks) for `bench/run.py`: big enough that the matrix work is real, small
enough to run a benchmark on two CPU cores in minutes. `size="s1-mini"` writes the released
openaudio-s1-mini shapes (dual-AR: dim 1024, 28 slow + 4 fast layers, vocabulary 155,776, 10
codebooks; codec: the package's `modded_dac_vq` config as is, no `codec_config.yaml`) with random
weights, generated directly in their storage dtype (no model initialisation): ~1.5 GB text2semantic
weights in bf16 and a 1.87 GB float32 codec, the released codec.pth's size.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

import torch

from fish_worker.engine.checkpoint import CODEC_OVERRIDES_FILE, compose_codec_config

NUM_CODEBOOKS = 4  # 1 semantic + 3 residual (released: 10)
CODEBOOK_SIZE = 64  # semantic and residual codebook size (released: 4096 / 1024)

TEXT2SEMANTIC_CONFIG: dict[str, Any] = dict(
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
# frame at 44.1 kHz), far smaller widths. block_size bounds the frames one decode call may hold (its RoPE
# table): 4096 as the released quantizer's, above max_tokens_limit (512 failed on a 1000-frame sentence).
_TINY_TRANSFORMER = {"block_size": 4096, "n_layer": 1, "n_head": 1, "dim": 64, "intermediate_size": 128, "head_dim": 64}
# The quantizer's transformers keep the released structure (8 layers, attention over 128 frames: a
# latent depends on 1,016 frames before it), narrow: streamed decoding must carry that reach
# (engine/codec_stream.py), and a 1-layer 32-frame stand-in let a 16-frame context pass as exact.
_TINY_QUANTIZER_TRANSFORMER = {"input_dim": 64, "window_size": 128, "config": {**_TINY_TRANSFORMER, "n_layer": 8}}
# fish-speech initialises its LayerScale gains at 0.01, which leaves a random transformer nearly silent
# (cutting its reach changed the tiny codec's audio by 3e-5 of 0.12); at 1 its layers matter, as trained ones do.
TRANSFORMER_LAYER_SCALE = 1.0
CODEC_OVERRIDES: dict[str, Any] = {
    "encoder_dim": 4,
    "decoder_dim": 64,  # fish-speech gives its codec transformers dim // 64 heads: keep >= 64
    "encoder_transformer_layers": [0, 0, 0, 1],
    "decoder_transformer_layers": [1, 0, 0, 0],
    "transformer_general_config": {"block_size": 4096},
    "quantizer": {
        "input_dim": 64,
        "n_codebooks": NUM_CODEBOOKS - 1,
        "codebook_size": CODEBOOK_SIZE,
        "semantic_codebook_size": CODEBOOK_SIZE,
        "post_module": _TINY_QUANTIZER_TRANSFORMER,
        "pre_module": _TINY_QUANTIZER_TRANSFORMER,
    },
}


BENCH_NUM_CODEBOOKS = 8
BENCH_CODEBOOK_SIZE = 512
BENCH_TEXT2SEMANTIC_CONFIG: dict[str, Any] = {
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
BENCH_CODEC_OVERRIDES: dict[str, Any] = {
    **CODEC_OVERRIDES,
    "decoder_dim": 128,
    "quantizer": {
        **CODEC_OVERRIDES["quantizer"],
        "n_codebooks": BENCH_NUM_CODEBOOKS - 1,
        "codebook_size": BENCH_CODEBOOK_SIZE,
        "semantic_codebook_size": BENCH_CODEBOOK_SIZE,
    },
}
# openaudio-s1-mini's config.json (a Qwen3-0.6B-shaped slow transformer). The codec is the package's
# modded_dac_vq config unchanged (its state dict is 1,871,088,622 bytes, the released codec.pth).
S1_MINI_CODEBOOK_SIZE = 4096
S1_MINI_TEXT2SEMANTIC_CONFIG = {
    **TEXT2SEMANTIC_CONFIG,
    "vocab_size": 155_776,
    "n_layer": 28,
    "n_head": 16,
    "n_local_heads": 8,
    "head_dim": 128,
    "dim": 1024,
    "intermediate_size": 3072,
    "max_seq_len": 8192,
    "tie_word_embeddings": True,
    "attention_qk_norm": True,
    "scale_codebook_embeddings": True,
    "codebook_size": S1_MINI_CODEBOOK_SIZE,
    "num_codebooks": 10,
    "n_fast_layer": 4,
    "fast_dim": 1024,
    "fast_n_head": 16,
    "fast_n_local_heads": 8,
    "fast_head_dim": 64,
    "fast_intermediate_size": 3072,
    "initializer_range": 0.02,
}
SIZES = {  # name → (text2semantic config, codec overrides (None: the package's config as is), codebook size)
    "tiny": (TEXT2SEMANTIC_CONFIG, CODEC_OVERRIDES, CODEBOOK_SIZE),
    "bench": (BENCH_TEXT2SEMANTIC_CONFIG, BENCH_CODEC_OVERRIDES, BENCH_CODEBOOK_SIZE),
    "s1-mini": (S1_MINI_TEXT2SEMANTIC_CONFIG, None, S1_MINI_CODEBOOK_SIZE),
}


def _write_tokenizer(out: Path, codebook_size: int = CODEBOOK_SIZE, vocab_size: int | None = None) -> None:
    """Byte-level tiktoken ranks (every string encodes) and the special tokens, semantic ones last.

    With `vocab_size`, filler ranks pad the vocabulary to it: 5-byte tokens starting with 0xFF 0xFE,
    bytes no UTF-8 text holds, so text still encodes byte by byte."""
    from fish_speech.tokenizer import ALL_SPECIAL_TOKENS, SEMANTIC_TOKEN_TEMPLATE

    specials = [t for t in ALL_SPECIAL_TOKENS if not t.startswith("<|semantic:")]
    specials += [SEMANTIC_TOKEN_TEMPLATE.format(i=i) for i in range(codebook_size)]
    tokens = [bytes([b]) for b in range(256)]
    if vocab_size is not None:
        tokens += [b"\xff\xfe" + i.to_bytes(3, "big") for i in range(vocab_size - 256 - len(specials))]
    ranks = [f"{base64.b64encode(token).decode()} {rank}" for rank, token in enumerate(tokens)]
    (out / "tokenizer.tiktoken").write_text("\n".join(ranks) + "\n")
    ids = {token: len(tokens) + i for i, token in enumerate(specials)}
    (out / "special_tokens.json").write_text(json.dumps(ids, indent=2))


def _random_weights(module: torch.nn.Module, generator: torch.Generator, dtype: torch.dtype, std: float) -> dict:
    """A state dict for a model built on the meta device, drawn straight in `dtype` (fast: no
    initialisation pass, no float32 copy): norms and gains 1, biases 0, other weights N(0, std).
    Weight-normed convs get g = |v| per output channel (weight = v, as at initialisation). Buffers
    (rotary tables, causal masks) are computed from the owning module's config."""
    state = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "causal_mask":
            state[name] = torch.ones(tensor.shape, dtype=torch.bool).tril_()
        elif leaf == "freqs_cis":
            state[name] = _rotary_table(module.get_submodule(name.rsplit(".", 1)[0]), tensor)
        elif "norm" in name and leaf == "weight" or leaf == "alpha":
            state[name] = torch.ones(tensor.shape, dtype=dtype)
        elif leaf == "bias":
            state[name] = torch.zeros(tensor.shape, dtype=dtype)
        elif leaf != "original0":  # weight-norm gains: below, from their directions
            state[name] = torch.empty(tensor.shape, dtype=dtype).normal_(0, std, generator=generator)
    for name in [n for n in module.state_dict(keep_vars=True) if n.endswith("original0")]:
        direction = state[name.removesuffix("0") + "1"]
        dims = tuple(range(1, direction.dim()))
        state[name] = direction.float().norm(dim=dims, keepdim=True).to(dtype)
    return state


def _rotary_table(owner: torch.nn.Module, meta: torch.Tensor) -> torch.Tensor:
    from fish_speech.models.dac.modded_dac import precompute_freqs_cis

    config: Any = owner.config  # the codec block's fish-speech ModelArgs
    table = precompute_freqs_cis(config.block_size, config.head_dim, config.rope_base)
    assert table.shape == meta.shape, (table.shape, meta.shape)
    return table


def _write_s1_mini(out: Path, config: dict, seed: int) -> None:
    """Released shapes, random weights: text2semantic in bf16, codec in float32 (as released)."""
    from hydra.utils import instantiate

    from fish_speech.models.text2semantic.llama import DualARModelArgs, DualARTransformer
    from fish_speech.tokenizer import FishTokenizer

    tokenizer = FishTokenizer.from_pretrained(str(out))
    with torch.device("meta"):
        model = DualARTransformer(DualARModelArgs(**config), tokenizer=tokenizer)
    model.config.save(out / "config.json")
    generator = torch.Generator().manual_seed(seed)
    torch.save(_random_weights(model, generator, torch.bfloat16, config["initializer_range"]), out / "model.pth")
    with torch.device("meta"):
        codec = instantiate(compose_codec_config(out))
    torch.save(_random_weights(codec, generator.manual_seed(seed + 1), torch.float32, 0.02), out / "codec.pth")


def _scale_transformer_layers(module: torch.nn.Module) -> None:
    from fish_speech.models.dac.modded_dac import LayerScale

    with torch.no_grad():
        for layer_scale in (m for m in module.modules() if isinstance(m, LayerScale)):
            layer_scale.gamma.fill_(TRANSFORMER_LAYER_SCALE)


def write_tiny_checkpoint(out: Path | str, seed: int = 0, size: str = "tiny") -> Path:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from fish_speech.models.text2semantic.llama import DualARModelArgs, DualARTransformer
    from fish_speech.tokenizer import FishTokenizer

    out = Path(out)
    config, codec_overrides, codebook_size = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    if codec_overrides is None:
        _write_tokenizer(out, codebook_size, vocab_size=config["vocab_size"])
        _write_s1_mini(out, config, seed)
        return out
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
    _scale_transformer_layers(codec.quantizer)
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
