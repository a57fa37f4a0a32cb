"""Finding, checking and loading a Fish Speech checkpoint directory.

A checkpoint directory is what Fish Audio publishes as `openaudio-s1-mini`:

    config.json          text2semantic (dual-AR) model arguments
    model.pth            text2semantic weights
    tokenizer.tiktoken   tiktoken ranks, one "base64 rank" line each
    special_tokens.json  special tokens (ids follow their order)
    codec.pth            DAC codec weights

The codec architecture is not stored in the directory: fish-speech composes it by name
(`modded_dac_vq`) from its package configs. A directory may add `codec_config.yaml` with
overrides of that config; the tiny test checkpoint uses it, released weights do not need it.
The file is data, never code: only the sizes listed in `CodecOverrides` may be set (whole
numbers), so no `_target_` or interpolation from a downloaded directory is ever instantiated.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch.overrides import TorchFunctionMode

from fish_worker.errors import first_problem

if TYPE_CHECKING:  # fish-speech ships no type information: to mypy these are Any, to a reader what they are
    from fish_speech.models.dac.modded_dac import DAC
    from fish_speech.models.text2semantic.llama import DualARTransformer

log = logging.getLogger(__name__)

CODEC_CONFIG_NAME = "modded_dac_vq"
CODEC_OVERRIDES_FILE = "codec_config.yaml"
HOW_TO_GET = (
    "download the released weights with `huggingface-cli download fishaudio/openaudio-s1-mini "
    "--local-dir <dir>` (gated: accept the licence and set HF_TOKEN), or write a tiny test "
    "checkpoint with `python -m fish_worker.devtools.tiny_checkpoint <dir>`"
)
REQUIRED_FILES = {
    "config.json": "text2semantic model config",
    "model.pth": "text2semantic weights",
    "tokenizer.tiktoken": "tokenizer ranks",
    "special_tokens.json": "tokenizer special tokens",
    "codec.pth": "DAC codec weights",
}


class CheckpointError(RuntimeError):
    """The checkpoint directory is missing, incomplete or unreadable."""


class _Sizes(BaseModel):
    # strict: 64 only, never "64", 64.0, true or a ${...} interpolation string.
    model_config = ConfigDict(extra="forbid", strict=True)


_Size = Field(None, ge=1, le=1_000_000)


class TransformerSizes(_Sizes):
    block_size: int | None = _Size
    n_layer: int | None = Field(None, ge=0, le=1000)
    n_head: int | None = _Size
    dim: int | None = _Size
    intermediate_size: int | None = _Size
    head_dim: int | None = _Size


class QuantizerModuleSizes(_Sizes):
    input_dim: int | None = _Size
    window_size: int | None = _Size
    config: TransformerSizes | None = None


class QuantizerSizes(_Sizes):
    input_dim: int | None = _Size
    n_codebooks: int | None = _Size
    codebook_size: int | None = _Size
    semantic_codebook_size: int | None = _Size
    post_module: QuantizerModuleSizes | None = None
    pre_module: QuantizerModuleSizes | None = None


class CodecOverrides(_Sizes):
    """What `codec_config.yaml` may change in fish-speech's `modded_dac_vq` codec: sizes only."""

    encoder_dim: int | None = _Size
    decoder_dim: int | None = _Size
    encoder_transformer_layers: list[int] | None = Field(None, min_length=4, max_length=4)
    decoder_transformer_layers: list[int] | None = Field(None, min_length=4, max_length=4)
    transformer_general_config: TransformerSizes | None = None
    quantizer: QuantizerSizes | None = None


def read_codec_overrides(file: Path) -> dict:
    """The validated overrides in `file` (only the keys it sets); CheckpointError naming the file if unusable."""
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{CODEC_OVERRIDES_FILE}: cannot be read as YAML ({file}): {_first_line(exc)}") from None
    if data is None:
        return {}
    try:
        overrides = CodecOverrides.model_validate(data)
    except ValidationError as exc:
        key, problem, kind = first_problem(exc, whole="the file")
        problem = "not a codec size this file may set" if kind == "extra_forbidden" else problem
        raise CheckpointError(
            f"{CODEC_OVERRIDES_FILE}: {key}: {problem} ({file}; it may only set the sizes "
            "in fish_worker/engine/checkpoint.py CodecOverrides)"
        ) from None
    return overrides.model_dump(exclude_unset=True)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


@dataclass(frozen=True)
class LoadedModels:
    text2semantic: DualARTransformer  # caches set up
    codec: DAC
    device: torch.device
    precision: torch.dtype


def check_checkpoint_dir(path: Path) -> None:
    """Fail early, naming the first missing file and how to get it."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path} ({HOW_TO_GET})")
    for name, what in REQUIRED_FILES.items():
        file = path / name
        if not file.is_file() or file.stat().st_size == 0:
            raise CheckpointError(f"checkpoint file missing or empty: {file} ({what}); {HOW_TO_GET}")


def _load_state_dict(file: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(f"cannot read {file}: {exc}. The file is damaged; {HOW_TO_GET}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} does not hold a state dict; {HOW_TO_GET}")
    return state.get("state_dict", state)


def _require_matching_weights(
    model: torch.nn.Module, weights: dict, file: Path, config: str = "config.json", prefix: str = ""
) -> None:
    """fish-speech loads with strict=False and only warns; a worker must not serve noise."""
    for name, param in model.named_parameters():
        key = prefix + name
        if key not in weights:
            raise CheckpointError(f"{file} lacks weight {key!r}: wrong or damaged file; {HOW_TO_GET}")
        if tuple(weights[key].shape) != tuple(param.shape):
            raise CheckpointError(
                f"{file}: weight {key!r} has shape {tuple(weights[key].shape)}, the config expects "
                f"{tuple(param.shape)}; {config} and the weights do not belong together"
            )


class _SkipInit(TorchFunctionMode):
    """Module construction without random initialisation: the file's weights replace every parameter.

    (Initialising ~0.7 B parameters costs seconds; on the meta device, `normal_` and any arithmetic
    import torch._dynamo, seconds more.) `zero_normal`: `normal_` fills zeros instead of leaving the
    memory as it was. torch's `trunc_normal_` (the codec's quantizer init) redraws with `normal_` until
    every value lies within its bounds, so over untouched memory it would loop forever; zeros end it at
    once, for the price of a memset."""

    _INIT = {
        torch.Tensor.normal_,
        torch.Tensor.uniform_,
        torch.nn.init.normal_,
        torch.nn.init.uniform_,
        torch.nn.init.trunc_normal_,
        torch.nn.init.kaiming_uniform_,
    }

    def __init__(self, zero_normal: bool = False):
        super().__init__()
        self.zero_normal = zero_normal

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._INIT:
            tensor = args[0] if args else kwargs["tensor"]  # torch.nn.init passes it by name
            if self.zero_normal and func is torch.Tensor.normal_:
                with torch.no_grad():
                    tensor.zero_()
            return tensor
        return func(*args, **kwargs)


def _weightless(device: str | None = None, zero_normal: bool = False):
    """Build modules without initialising their parameters (on `device`, e.g. "meta", if given)."""
    stack = contextlib.ExitStack()
    if device is not None:
        stack.enter_context(torch.device(device))
    stack.enter_context(_SkipInit(zero_normal))
    return stack


def _import_dual_ar():
    """fish-speech's llama module, imported without `transformers`.

    The module imports `transformers.AutoTokenizer` at its top and never uses it; importing
    transformers costs seconds of every cold start. A placeholder stands in while the module loads
    and is removed after, so a later `import transformers` (chat mode) gets the real package.
    """
    name = "fish_speech.models.text2semantic.llama"
    if name in sys.modules or "transformers" in sys.modules:
        return importlib.import_module(name)
    placeholder = types.ModuleType("transformers")
    placeholder.AutoTokenizer = None  # the one name the module imports
    sys.modules["transformers"] = placeholder
    try:
        return importlib.import_module(name)
    finally:
        if sys.modules.get("transformers") is placeholder:
            del sys.modules["transformers"]


SMALL_PREFILL_CACHE = 8  # positions of fish-speech's batch-1 cache until its own loop grows it


def load_text2semantic(path: Path, device: torch.device, precision: torch.dtype, max_batch_size: int = 1):
    """The dual-AR model with the file's weights, built without a random initialisation.

    fish-speech's `from_pretrained` initialises every weight, then replaces it; here the model is built
    uninitialised and takes the memory-mapped tensors (`assign=True`), so the weights are read once and
    copied at most once (only where the device or dtype differs from the file's).
    """
    llama = _import_dual_ar()
    BaseModelArgs, DualARTransformer = llama.BaseModelArgs, llama.DualARTransformer
    from fish_speech.tokenizer import FishTokenizer

    try:
        config = BaseModelArgs.from_pretrained(str(path))
        tokenizer = FishTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot read config.json / tokenizer files in {path}: {exc}; {HOW_TO_GET}") from exc
    # On the CPU, uninitialised: parameter memory is reserved but never touched before the file's
    # tensors replace it, and the buffers (rotary tables, causal mask) are computed as fish-speech does.
    with _weightless():
        model = DualARTransformer(config, tokenizer=tokenizer)
    weights = _load_state_dict(path / "model.pth")
    if next(iter(weights)).startswith("model."):
        weights = {k.removeprefix("model."): v for k, v in weights.items()}
    weights = {k: v for k, v in weights.items() if "audio_" not in k}  # as fish-speech's loader drops them
    _require_matching_weights(model, weights, path / "model.pth")
    model.load_state_dict(weights, strict=False, assign=True)
    del weights
    _require_materialised(model, path_hint=str(path / "model.pth"))
    model = model.to(device=device, dtype=precision).eval()
    # fish-speech's batch-1 KV cache starts small instead of a full context (0.94 GB at S1-mini in bf16):
    # a prefill brings one as long as its prompt (short_prefill_cache), and fish-speech's own loop, the
    # reference (SemanticGenerator.generate, fish-speech's generate()), grows it to the full context
    # when it first runs. The fast transformer's caches (one position per codebook) are set up here.
    with torch.device(device):
        model.setup_caches(max_batch_size=max_batch_size, max_seq_len=SMALL_PREFILL_CACHE, dtype=precision)
    return model


def _require_materialised(model: torch.nn.Module, path_hint: str) -> None:
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            raise CheckpointError(f"{path_hint} left {name!r} without a value; {HOW_TO_GET}")


def compose_codec_config(path: Path):
    """The package's `modded_dac_vq` config, with the directory's optional (validated) overrides merged in."""
    import fish_speech.models.dac.modded_dac  # noqa: F401  (registers the config targets' module)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import DictConfig, OmegaConf

    configs_dir = Path(fish_speech.models.dac.modded_dac.__file__).resolve().parents[2] / "configs"
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(configs_dir)):
        cfg = compose(config_name=CODEC_CONFIG_NAME)
    overrides = path / CODEC_OVERRIDES_FILE
    if overrides.exists():
        OmegaConf.set_struct(cfg, False)  # overrides may set ModelArgs fields the yaml leaves at their defaults
        merged = OmegaConf.merge(cfg, OmegaConf.create(read_codec_overrides(overrides)))
        assert isinstance(merged, DictConfig)  # a mapping merged into a mapping
        cfg = merged
    return cfg


def codec_config_name(path: Path) -> str:
    """What describes the codec's shapes, for errors: the overrides file when there is one."""
    overrides = path / CODEC_OVERRIDES_FILE
    return (
        f"{CODEC_OVERRIDES_FILE} (over fish-speech's {CODEC_CONFIG_NAME})"
        if overrides.exists()
        else f"fish-speech's {CODEC_CONFIG_NAME} codec config"
    )


def load_codec(path: Path, device: torch.device):
    from hydra.utils import instantiate

    file = path / "codec.pth"
    config = compose_codec_config(path)  # CheckpointError for a bad overrides file
    try:
        # Uninitialised, as the text model: the codec's own init costs ~8 s at the released size on
        # the CPU (where it is built, whatever the device), and every weight is replaced below.
        with _weightless(zero_normal=True):
            codec = instantiate(config)
    except Exception as exc:  # sizes that are numbers but do not make a codec (e.g. zero heads)
        raise CheckpointError(
            f"{codec_config_name(path)}: the codec cannot be built with these sizes: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    weights = _load_state_dict(file)
    if any(k.startswith("generator.") for k in weights):  # a training checkpoint: keep the generator
        weights = {k.removeprefix("generator."): v for k, v in weights.items() if k.startswith("generator.")}
    _require_matching_weights(codec, weights, file, config=codec_config_name(path))
    codec.load_state_dict(weights, strict=False, assign=True)
    _require_materialised(codec, path_hint=str(file))
    _fp32_rotary_tables(codec)
    # Weights stay float32, as fish-speech keeps them; GPU decoding runs under bf16 autocast.
    return codec.to(device=device).eval()


def _fp32_rotary_tables(codec: torch.nn.Module) -> None:
    """Recompute the codec transformers' rotary tables (`freqs_cis`) in float32.

    fish-speech computes them in bf16 (`precompute_freqs_cis`'s default dtype, shared with its bf16 text
    model) and codec.pth stores them so, although `apply_rotary_emb` rotates in float32: the table's
    rounding (up to 2e-3 in each cos/sin) was the one bf16 step of a CPU decode, and it makes attention
    depend a little on a frame's absolute position instead of its distance alone. Streamed windows use
    the same absolute positions as the one-shot decode (engine/codec_stream.py), so they agree with
    either table; this keeps the fp32 decode fp32 throughout. The table is a function of the config
    alone: nothing trained is replaced. (On the tiny test codec the audio moves by ~1e-6.)
    """
    from fish_speech.models.dac.modded_dac import precompute_freqs_cis

    for module in codec.modules():
        table = getattr(module, "freqs_cis", None)
        if isinstance(table, torch.Tensor) and hasattr(module, "config"):
            config: Any = module.config  # the codec block's fish-speech ModelArgs
            module.freqs_cis = precompute_freqs_cis(
                config.block_size, config.head_dim, config.rope_base, dtype=torch.float32
            ).to(table.device)


def load_models(path: Path, device: torch.device, precision: torch.dtype, max_batch_size: int = 1) -> LoadedModels:
    check_checkpoint_dir(path)
    log.info("loading text2semantic model from %s on %s (%s)", path, device, precision)
    text2semantic = load_text2semantic(path, device, precision, max_batch_size)
    log.info("loading codec from %s", path / "codec.pth")
    codec = load_codec(path, device)
    return LoadedModels(text2semantic=text2semantic, codec=codec, device=device, precision=precision)
