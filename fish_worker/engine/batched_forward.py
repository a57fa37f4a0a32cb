"""One decoding step of fish-speech's dual-AR transformer for many sequences at once.

fish-speech's `Attention` / `KVCache` share one `input_pos` across the batch, so sequences at
different positions cannot share its forward pass. This module runs the same computation with the
model's own modules and weights (embeddings, `wqkv`, `wo`, norms, feed-forwards, rotary tables, the
fast transformer), but with a position per row and a KV cache slot per row. The arithmetic per row is
the one `decode_one_token_ar` performs (same ops, same dtypes, MATH attention), so a sequence gets the
same tokens whichever other rows share its step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fish_worker.engine.sampling import RowSampling, sample_rows


KEY_BLOCK = 64


def attended_length(last_position: int, max_seq_len: int) -> int:
    """How many cached keys a step attends over: up to the furthest row, rounded up to KEY_BLOCK.

    Masked keys only add exact zeros, but the softmax sum's vector lanes and tail depend on the
    length; a multiple of the widest SIMD width (16 floats) gives the same bits as fish-speech's
    full-context attention, whatever the other rows' positions, at a fraction of its cost.
    """
    return min(-(-(last_position + 1) // KEY_BLOCK) * KEY_BLOCK, max_seq_len)


def rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """fish-speech's `apply_rotary_emb`, with one rotation per row: x [B, S, H, D], freqs [B, S, D/2, 2]."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    f = freqs.view(xs.size(0), xs.size(1), 1, xs.size(3), 2)
    out = torch.stack(
        [xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1], xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], -1
    )
    return out.flatten(3).type_as(x)


def _project_qkv(attention, x: torch.Tensor, freqs: torch.Tensor):
    bsz, seqlen, _ = x.shape
    q_size = attention.n_head * attention.head_dim
    kv_size = attention.n_local_heads * attention.head_dim
    q, k, v = attention.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
    q = q.view(bsz, seqlen, attention.n_head, attention.head_dim)
    k = k.view(bsz, seqlen, attention.n_local_heads, attention.head_dim)
    v = v.view(bsz, seqlen, attention.n_local_heads, attention.head_dim)
    if attention.attention_qk_norm:
        q, k = attention.q_norm(q), attention.k_norm(k)
    q, k = rotary(q, freqs), rotary(k, freqs)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _attend(attention, q, k, v, mask, sdpa: bool) -> torch.Tensor:
    repeats = attention.n_head // attention.n_local_heads
    k = k.repeat_interleave(repeats, dim=1)
    v = v.repeat_interleave(repeats, dim=1)
    if sdpa:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        y = attention.eq_scaled_dot_product_attention(q, k, v, attn_mask=mask)
    bsz, _, seqlen, _ = q.shape
    return attention.wo(y.transpose(1, 2).contiguous().view(bsz, seqlen, attention.n_head * attention.head_dim))


class SlotCaches:
    """Slow-transformer KV caches with one row ("slot") per sequence being decoded."""

    def __init__(self, model, slots: int, dtype: torch.dtype, device: torch.device):
        cfg = model.config
        shape = (slots, cfg.n_local_heads, model.max_seq_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in model.layers]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in model.layers]
        self.slots = slots

    def load_prefill(self, model, slot: int, length: int) -> None:
        """Copy a prefill's keys/values from the model's own (batch-1) caches into `slot`."""
        for layer, k, v in zip(model.layers, self.k, self.v):
            cache = layer.attention.kv_cache
            k[slot, :, :length] = cache.k_cache[0, :, :length]
            v[slot, :, :length] = cache.v_cache[0, :, :length]


class BatchedStep:
    """`decode_one_token_ar` for B sequences: tokens [B, rows], positions [B], slots [B] → frames [B, rows]."""

    def __init__(self, model, caches: SlotCaches, compile: bool = False):
        self.model = model
        self.caches = caches
        self.semantic_begin = model.tokenizer.semantic_begin_id
        self.semantic_end = model.tokenizer.semantic_end_id
        if compile:
            # Inductor on GPU, as fish-speech compiles its decode step; on CPU only "aot_eager", which
            # traces the same graphs without generating code (fish-speech's CPU choice: inductor is slower).
            backend = "inductor" if next(model.parameters()).is_cuda else "aot_eager"
            self.slow = torch.compile(self.slow, backend=backend, dynamic=True)
            self.fast_step = torch.compile(self.fast_step, backend=backend, dynamic=True)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """forward_generate's input embedding: text token + (for semantic tokens) the codebook sum."""
        model, cfg = self.model, self.model.config
        embeds = [model.codebook_embeddings(tokens[:, i + 1] + i * cfg.codebook_size) for i in range(cfg.num_codebooks)]
        vq_sum = torch.stack(embeds, dim=1).sum(dim=1)
        vq_mask = (tokens[:, 0] >= self.semantic_begin) & (tokens[:, 0] <= self.semantic_end)
        vq_sum[~vq_mask] = 0
        x = model.embeddings(tokens[:, 0]) + vq_sum
        if cfg.scale_codebook_embeddings:
            x = torch.where(vq_mask[:, None], x / (cfg.num_codebooks + 1) ** 0.5, x)
        return x[:, None]  # [B, 1, dim]

    def slow(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, length: int, contiguous: bool):
        """The slow transformer at each row's own position; returns (logits [B, vocab], hidden [B, 1, fast_dim]).

        `length`: cached keys to attend over; `contiguous`: the rows are slots 0..B-1 (plain Python
        values, decided by the caller, so a compiled version of this method has no data-dependent branch).
        """
        model = self.model
        x = self._embed(tokens)
        freqs = model.freqs_cis[positions][:, None]  # [B, 1, D/2, 2]
        keys = torch.arange(length, device=positions.device)
        mask = (keys[None, :] <= positions[:, None])[:, None, None, :]  # [B, 1, 1, L]
        for layer, k_cache, v_cache in zip(model.layers, self.caches.k, self.caches.v):
            attention = layer.attention
            q, k, v = _project_qkv(attention, layer.attention_norm(x), freqs)
            k_cache[slots, :, positions] = k[:, :, 0]
            v_cache[slots, :, positions] = v[:, :, 0]
            if contiguous:  # rows 0..B-1: a view, no copy
                keys_k, keys_v = k_cache[: len(slots), :, :length], v_cache[: len(slots), :, :length]
            else:
                keys_k, keys_v = k_cache[slots, :, :length], v_cache[slots, :, :length]
            h = x + _attend(attention, q, keys_k, keys_v, mask, sdpa=True)
            x = h + layer.feed_forward(layer.ffn_norm(h))
        logits = model.output(model.norm(x)) if not model.config.tie_word_embeddings else F.linear(
            model.norm(x), model.embeddings.weight)
        return logits[:, -1], model.fast_project_in(x)

    def fast_step(self, x: torch.Tensor, index: int, k_caches, v_caches) -> torch.Tensor:
        """forward_generate_fast at codebook `index` (the same position for every row)."""
        model = self.model
        pos = torch.tensor([index], device=x.device, dtype=torch.long)
        mask = model.causal_mask[None, None, pos, : model.config.num_codebooks]
        freqs = model.fast_freqs_cis[pos][None].expand(x.shape[0], -1, -1, -1)
        for layer, k_cache, v_cache in zip(model.fast_layers, k_caches, v_caches):
            attention = layer.attention
            q, k, v = _project_qkv(attention, layer.attention_norm(x), freqs)
            k_cache[:, :, index] = k[:, :, 0]
            v_cache[:, :, index] = v[:, :, 0]
            h = x + _attend(attention, q, k_cache, v_cache, mask, sdpa=False)
            x = h + layer.feed_forward(layer.ffn_norm(h))
        return model.fast_output(model.fast_norm(x))[:, -1]

    @torch.inference_mode()
    def __call__(self, tokens, positions, slots, sampling: RowSampling, windows: torch.Tensor) -> torch.Tensor:
        """windows [B, rows, 16]: each row's repetition-penalty window (fish-speech's `previous_tokens`)."""
        model, cfg = self.model, self.model.config
        with sdpa_kernel(SDPBackend.MATH):
            length = attended_length(int(positions.max()), model.max_seq_len)
            contiguous = bool((slots == torch.arange(len(slots), device=slots.device)).all())
            logits, hidden = self.slow(tokens, positions, slots, length, contiguous)
        # fish-speech penalises the window's first column (one token per codebook row) for the semantic token.
        semantic = sample_rows(logits, sampling, windows[:, :, 0])
        codes = [semantic]

        # The fast transformer starts afresh for every frame (fish-speech zero-fills its caches).
        bsz = tokens.shape[0]
        shape = (bsz, cfg.fast_n_local_heads, cfg.num_codebooks, cfg.fast_head_dim)
        k_caches = [torch.zeros(shape, dtype=hidden.dtype, device=hidden.device) for _ in model.fast_layers]
        v_caches = [torch.zeros(shape, dtype=hidden.dtype, device=hidden.device) for _ in model.fast_layers]
        self.fast_step(hidden, 0, k_caches, v_caches)
        code = semantic - self.semantic_begin
        code[code < 0] = 0
        codes.append(code)
        x = model.fast_embeddings(code)[:, None]
        for index in range(1, cfg.num_codebooks):
            logits = self.fast_step(x, index, k_caches, v_caches)
            code = sample_rows(logits[:, :1024], sampling, windows[:, index + 1])
            codes.append(code)
            x = model.fast_embeddings(code)[:, None]
        return torch.stack(codes, dim=1)  # [B, rows]
