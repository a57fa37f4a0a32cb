"""One decoding step of a Llama-style chat model (Qwen2/2.5/3, Llama, Mistral) for many replies at once.

The prompt of each reply is prefilled alone, by the model's own forward; its keys and values are then
copied into the reply's own cache (`RowCache`, one tensor per layer sized to prompt plus budget). A
step runs every row's new token through the model's own modules and weights: the projections, norms,
MLPs and the LM head see all rows as one batch (where the time goes), while attention is computed per
row over that row's own keys, exactly as long as its context, with no padding or mask. So what a row
computes does not depend on which other rows share its step, apart from the batched matrix products.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


class UnsupportedChatModelError(RuntimeError):
    """The model's layers are not of the Llama family the batched step knows."""


@dataclass
class RowCache:
    """One reply's keys and values: per layer [kv_heads, capacity, head_dim]; `length` positions filled."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]


class BatchedDecoder:
    """Prefill one prompt, and step many replies at once, with a Hugging Face Llama-style model."""

    def __init__(self, model):
        self.model = model
        check_supported(model)
        self.layers = list(model.model.layers)
        attention = self.layers[0].self_attn
        self.head_dim = attention.head_dim
        self.kv_heads = model.config.num_key_value_heads
        self.groups = attention.num_key_value_groups
        self.scaling = attention.scaling
        # The rotary function of the model's own module (qwen2, llama, ...): same maths as its forward.
        self._rotate = sys.modules[type(attention).__module__].apply_rotary_pos_emb
        # transformers 5.x renamed forward's `past_key_values` to `cache` (the old name warns, then goes).
        parameters = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.model.device

    def bytes_per_token(self) -> int:
        """KV bytes one token of context takes: 2 (k, v) x layers x kv heads x head_dim x element size."""
        element = torch.finfo(self.model.dtype).bits // 8
        return 2 * len(self.layers) * self.kv_heads * self.head_dim * element

    def prefill(self, token_ids: list[int], capacity: int) -> tuple[torch.Tensor, RowCache]:
        """The logits after the prompt ([vocab], float32) and its cache, room for `capacity` positions."""
        input_ids = torch.tensor([token_ids], device=self.device)
        cache = DynamicCache(config=self.model.config)
        output = self.model(input_ids=input_ids, **{self._cache_kwarg: cache}, use_cache=True, logits_to_keep=1)
        length = len(token_ids)
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        layer: Any  # transformers types a cache layer as any of its kinds; a Llama's are attention layers
        for layer in cache.layers:
            for source, into in ((layer.keys, keys), (layer.values, values)):
                row = source.new_zeros((self.kv_heads, capacity, self.head_dim))
                row[:, :length] = source[0]
                into.append(row)
        return output.logits[0, -1].float(), RowCache(keys, values, length)

    def step(self, tokens: list[int], rows: list[RowCache]) -> torch.Tensor:
        """Feed each row its next token (at position `row.length`); return the logits [rows, vocab] float32."""
        batch = len(rows)
        input_ids = torch.tensor(tokens, device=self.device).view(batch, 1)
        positions = torch.tensor([row.length for row in rows], device=self.device).view(batch, 1)
        hidden = self.model.model.embed_tokens(input_ids)
        cos, sin = self.model.model.rotary_emb(hidden, positions)
        for index, layer in enumerate(self.layers):
            residual = hidden
            attended = self._attention(layer.self_attn, layer.input_layernorm(hidden), cos, sin, index, rows)
            hidden = residual + attended
            hidden = hidden + self._mlp(layer.mlp, layer.post_attention_layernorm(hidden))
        logits = _linear(self.model.lm_head, self.model.model.norm(hidden))
        for row in rows:  # only once the step has succeeded: a retried step rewrites the same positions
            row.length += 1
        return logits[:, 0].float()

    @staticmethod
    def _mlp(mlp, hidden: torch.Tensor) -> torch.Tensor:
        return _linear(mlp.down_proj, mlp.act_fn(_linear(mlp.gate_proj, hidden)) * _linear(mlp.up_proj, hidden))

    def _attention(self, attention, hidden, cos, sin, layer: int, rows: list[RowCache]) -> torch.Tensor:
        batch = hidden.shape[0]
        shape = (batch, 1, -1, self.head_dim)
        query = _linear(attention.q_proj, hidden).view(shape)
        key = _linear(attention.k_proj, hidden).view(shape)
        if hasattr(attention, "q_norm"):  # Qwen3: per-head norms before the rotation
            query, key = attention.q_norm(query), attention.k_norm(key)
        query, key = self._rotate(query.transpose(1, 2), key.transpose(1, 2), cos, sin)
        value = _linear(attention.v_proj, hidden).view(shape).transpose(1, 2)
        outputs = []
        for r, row in enumerate(rows):
            end = row.length + 1
            row.keys[layer][:, row.length] = key[r, :, 0]
            row.values[layer][:, row.length] = value[r, :, 0]
            keys, values = row.keys[layer][:, :end], row.values[layer][:, :end]
            q = query[r, :, 0].view(self.kv_heads, self.groups, self.head_dim)
            scores = torch.matmul(q, keys.transpose(1, 2)) * self.scaling  # [kv_heads, groups, end]
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            outputs.append(torch.matmul(weights, values).reshape(-1))
        return _linear(attention.o_proj, torch.stack(outputs).view(batch, 1, -1))


def _linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` for a few rows, as weight @ x^T: on the CPU, MKL runs this tall-skinny product ~25-40 %
    faster than `F.linear`'s x @ weight^T at 2-8 rows (same maths, other rounding)."""
    rows = x.reshape(-1, x.shape[-1])
    out = torch.matmul(layer.weight, rows.t()).t()
    if layer.bias is not None:
        out = out + layer.bias
    return out.reshape(*x.shape[:-1], -1)


def check_supported(model) -> None:
    """Refuse, with the reason, a model whose layers the batched step cannot run."""
    name = type(model).__name__
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if inner is None or layers is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        raise UnsupportedChatModelError(
            f"{name} is not a Llama-style model (model.layers, rotary_emb, lm_head); the local chat backend "
            "batches Qwen2/2.5/3, Llama and Mistral models; serve others with FISH_CHAT_BASE_URL"
        )
    attention = layers[0].self_attn
    needed = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "num_key_value_groups", "scaling")
    missing = [part for part in needed if not hasattr(attention, part)]
    missing += [
        f"mlp.{part}" for part in ("gate_proj", "up_proj", "down_proj", "act_fn") if not hasattr(layers[0].mlp, part)
    ]
    if missing or not hasattr(sys.modules[type(attention).__module__], "apply_rotary_pos_emb"):
        raise UnsupportedChatModelError(
            f"{name}'s attention lacks {missing or 'apply_rotary_pos_emb'}; serve it with FISH_CHAT_BASE_URL"
        )
    config = model.config
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if any(kind != "full_attention" for kind in layer_types) or (
        window and window < getattr(config, "max_position_embeddings", 0)
    ):
        raise UnsupportedChatModelError(
            f"{name} uses sliding-window attention, which the local chat backend "
            "does not batch; serve it with FISH_CHAT_BASE_URL"
        )
