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


class PagedKVCache:
    """Slow-transformer keys/values in fixed-size pages drawn from one pool shared by all sequences.

    A sequence holds the pages its prompt plus token budget needs (`allocate`), listed in its row
    ("slot") of the page table; `free` returns them. Rows of a step read their pages into one
    [B, heads, length, head_dim] tensor: the attention then sees what a full-context cache per row
    held (its keys at their positions; masked positions beyond), so tokens stay bit-identical.
    Page 0 is a read-only page of zeros: the table points unused entries at it.
    """

    def __init__(
        self, model, slots: int, pages: int, dtype: torch.dtype, device: torch.device, page_size: int = KEY_BLOCK
    ):
        cfg = model.config
        if cfg.max_seq_len % page_size:
            raise ValueError(f"max_seq_len {cfg.max_seq_len} is not a multiple of the page size {page_size}")
        self.page_size = page_size
        self.max_pages_per_seq = cfg.max_seq_len // page_size
        shape = (pages + 1, cfg.n_local_heads, page_size, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in model.layers]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in model.layers]
        self.table = torch.zeros((slots, self.max_pages_per_seq), dtype=torch.long, device=device)
        self.slots = slots
        self.pages = pages
        self._free_pages = list(range(pages, 0, -1))  # popped from the end: low pages first

    @staticmethod
    def page_size_for(model) -> int:
        return KEY_BLOCK

    @staticmethod
    def bytes_per_token(model, dtype: torch.dtype) -> int:
        """Keys and values of one token of context, all slow layers."""
        cfg = model.config
        return 2 * len(model.layers) * cfg.n_local_heads * cfg.head_dim * torch.empty((), dtype=dtype).element_size()

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)

    @property
    def free_pages(self) -> int:
        return len(self._free_pages)

    def pages_for(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    def allocate(self, slot: int, tokens: int) -> bool:
        """Give `slot` pages for `tokens` positions; False (nothing taken) when the pool lacks them."""
        need = self.pages_for(tokens)
        if need > len(self._free_pages):
            return False
        pages = [self._free_pages.pop() for _ in range(need)]
        self.table[slot, :need] = torch.tensor(pages, dtype=torch.long)
        return True

    def free(self, slot: int) -> None:
        held = [int(p) for p in self.table[slot].tolist() if p]
        self._free_pages.extend(reversed(held))
        self.table[slot] = 0

    def reset(self) -> None:
        self.table.zero_()
        self._free_pages = list(range(self.pages, 0, -1))

    def load_prefill(self, model, slot: int, length: int) -> None:
        """Copy a prefill's keys/values from the model's own (batch-1) caches into `slot`'s pages."""
        n = self.pages_for(length)
        pages = self.table[slot, :n]
        span = n * self.page_size  # whole pages: the prefill cache's tail beyond `length` is masked anyway
        for layer, k, v in zip(model.layers, self.k, self.v):
            cache = layer.attention.kv_cache
            heads, dim = cache.k_cache.shape[1], cache.k_cache.shape[3]
            k[pages] = cache.k_cache[0, :, :span].view(heads, n, self.page_size, dim).transpose(0, 1)
            v[pages] = cache.v_cache[0, :, :span].view(heads, n, self.page_size, dim).transpose(0, 1)


class BatchedStep:
    """`decode_one_token_ar` for B sequences: tokens [B, rows], positions [B], slots [B] → frames [B, rows]."""

    def __init__(self, model, caches: PagedKVCache, compile: bool = False):
        self.model = model
        self.caches = caches
        self.semantic_begin = model.tokenizer.semantic_begin_id
        self.semantic_end = model.tokenizer.semantic_end_id
        if compile:
            # Inductor on GPU, as fish-speech compiles its decode step; on CPU only "aot_eager", which
            # traces the same graphs without generating code (fish-speech's CPU choice: inductor is slower).
            backend = "inductor" if next(model.parameters()).is_cuda else "aot_eager"
            # The bound methods, replaced on this instance by their compiled wrappers (same signatures).
            self.slow = torch.compile(self.slow, backend=backend, dynamic=True)  # type: ignore[method-assign]
            self.fast_step = torch.compile(self.fast_step, backend=backend, dynamic=True)  # type: ignore[method-assign]

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

    def slow(self, tokens: torch.Tensor, positions: torch.Tensor, pages: torch.Tensor):
        """The slow transformer at each row's own position; returns (logits [B, vocab], hidden [B, 1, fast_dim]).

        `pages` [B, n]: each row's first n pages (page 0, zeros, where a row holds fewer): the keys
        attended over are n × page_size, whatever the rows' own lengths.
        """
        model = self.model
        x = self._embed(tokens)
        freqs = model.freqs_cis[positions][:, None]  # [B, 1, D/2, 2]
        bsz, n = pages.shape
        page_size = self.caches.page_size
        length = n * page_size
        keys = torch.arange(length, device=positions.device)
        mask = (keys[None, :] <= positions[:, None])[:, None, None, :]  # [B, 1, 1, L]
        write_page = pages.gather(1, (positions // page_size)[:, None])[:, 0]
        write_offset = positions % page_size
        for layer, k_pool, v_pool in zip(model.layers, self.caches.k, self.caches.v):
            attention = layer.attention
            q, k, v = _project_qkv(attention, layer.attention_norm(x), freqs)
            k_pool[write_page, :, write_offset] = k[:, :, 0]
            v_pool[write_page, :, write_offset] = v[:, :, 0]
            # [B, n, H, P, D] → [B, H, n·P, D]: the row's context in position order
            keys_k = k_pool[pages].transpose(1, 2).reshape(bsz, k_pool.shape[1], length, k_pool.shape[3])
            keys_v = v_pool[pages].transpose(1, 2).reshape(bsz, v_pool.shape[1], length, v_pool.shape[3])
            h = x + _attend(attention, q, keys_k, keys_v, mask, sdpa=True)
            x = h + layer.feed_forward(layer.ffn_norm(h))
        logits = (
            model.output(model.norm(x))
            if not model.config.tie_word_embeddings
            else F.linear(model.norm(x), model.embeddings.weight)
        )
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
            length = attended_length(int(positions.max()), cfg.max_seq_len)
            pages = self.caches.table[slots, : length // self.caches.page_size]
            logits, hidden = self.slow(tokens, positions, pages)
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
