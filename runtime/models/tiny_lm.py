"""A small causal decoder-only transformer over bytes, with a slot-based KV cache for continuous batching.

The cache holds one slot per running sequence ([n_layers, slots, heads, max_len, head_dim] for keys and values).
The engine keeps running sequences in slots 0..B-1, so one decode step reads the cache through plain slices (no
gather) and masks each row to its own length: sequences of different lengths decode together in one forward pass
and each gets the logits it would get alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odhsim.scenario.live import TinyLmSpec
from runtime.models.weights import load_state_dict, seeded_init
from runtime.tokenizer import VOCAB_SIZE

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class KvCache:
    """Keys and values per layer and slot; which positions are valid is the caller's bookkeeping (lengths)."""

    k: Tensor
    v: Tensor

    @property
    def slots(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def capacity_tokens(self) -> int:
        return self.slots * self.max_len

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot `src`'s first `length` positions into slot `dst` (compacting after a sequence leaves)."""
        if src != dst and length > 0:
            self.k[:, dst, :, :length] = self.k[:, src, :, :length]
            self.v[:, dst, :, :length] = self.v[:, src, :, :length]


class _Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _merge(self, y: Tensor) -> Tensor:
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def full(self, x: Tensor) -> Tensor:
        q, k, v = self._qkv(x)
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def prefill(self, x: Tensor, kc: Tensor, vc: Tensor, slot: int) -> Tensor:
        q, k, v = self._qkv(x)
        t = x.shape[1]
        kc[slot, :, :t] = k[0]
        vc[slot, :, :t] = v[0]
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def decode(self, x: Tensor, kc: Tensor, vc: Tensor, rows: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        q, k, v = self._qkv(x)
        kc[rows, :, positions] = k[:, :, 0]
        vc[rows, :, positions] = v[:, :, 0]
        b, span = x.shape[0], mask.shape[-1]
        y = F.scaled_dot_product_attention(q, kc[:b, :, :span], vc[:b, :, :span], attn_mask=mask)
        return self._merge(y)


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = _Attention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def full(self, x: Tensor) -> Tensor:
        x = x + self.attn.full(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def prefill(self, x: Tensor, kc: Tensor, vc: Tensor, slot: int) -> Tensor:
        x = x + self.attn.prefill(self.norm1(x), kc, vc, slot)
        return x + self.mlp(self.norm2(x))

    def decode(self, x: Tensor, kc: Tensor, vc: Tensor, rows: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn.decode(self.norm1(x), kc, vc, rows, positions, mask)
        return x + self.mlp(self.norm2(x))


class TinyLm(nn.Module):
    """Token + learned position embeddings, `n_layers` pre-norm blocks, final norm, LM head (with bias)."""

    def __init__(self, spec: TinyLmSpec) -> None:
        super().__init__()
        self.spec = spec
        d_ff = spec.d_ff or 4 * spec.d_model
        self.tok_emb = nn.Embedding(VOCAB_SIZE, spec.d_model)
        self.pos_emb = nn.Embedding(spec.max_seq_len, spec.d_model)
        self.blocks = nn.ModuleList(_Block(spec.d_model, spec.n_heads, d_ff) for _ in range(spec.n_layers))
        self.norm = nn.LayerNorm(spec.d_model)
        self.head = nn.Linear(spec.d_model, VOCAB_SIZE)

    @classmethod
    def build(cls, spec: TinyLmSpec, *, base_dir: str | Path = ".", device: str | torch.device = "cpu") -> TinyLm:
        """The model of `spec` in eval mode on `device`, weights from `spec.weights` (a state_dict) or `spec.seed`."""
        model = cls(spec)
        if spec.weights is not None:
            load_state_dict(model, spec.weights, base_dir)
        else:
            seeded_init(model, spec.seed)
        return model.to(device=device, dtype=_DTYPES[spec.dtype]).eval()

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def new_cache(self, slots: int, max_len: int | None = None) -> KvCache:
        """An empty cache for `slots` sequences of up to `max_len` tokens (default: the model's context)."""
        max_len = max_len or self.spec.max_seq_len
        if max_len > self.spec.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the model's max_seq_len {self.spec.max_seq_len}")
        blk = self.blocks[0].attn
        shape = (len(self.blocks), slots, blk.n_heads, max_len, blk.head_dim)
        return KvCache(
            torch.zeros(shape, dtype=self.dtype, device=self.device),
            torch.zeros(shape, dtype=self.dtype, device=self.device),
        )

    def _logits(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x)).float()

    @torch.inference_mode()
    def forward(self, ids: Tensor) -> Tensor:
        """Logits [B, T, vocab] (float32) of a full causal pass over `ids` [B, T]: what the cache must reproduce."""
        t = ids.shape[1]
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(t, device=ids.device))
        for blk in self.blocks:
            x = blk.full(x)
        return self._logits(x)

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int] | Tensor, cache: KvCache, slot: int) -> Tensor:
        """Run one prompt into `slot` of the cache; the logits [vocab] (float32) of its last position."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device).view(1, -1)
        t = ids.shape[1]
        if t > cache.max_len:
            raise ValueError(f"prompt of {t} tokens exceeds the cache length {cache.max_len}")
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(t, device=self.device))
        for layer, blk in enumerate(self.blocks):
            x = blk.prefill(x, cache.k[layer], cache.v[layer], slot)
        return self._logits(x[0, -1])

    @torch.inference_mode()
    def decode(self, tokens: Tensor, positions: Tensor, cache: KvCache, span: int | None = None) -> Tensor:
        """One step for the sequences in slots 0..B-1: slot i feeds `tokens[i]` at `positions[i]` (its length so far).

        Returns logits [B, vocab] (float32). `span` (max position + 1) saves a device sync when the caller knows it."""
        b = tokens.shape[0]
        tokens = tokens.to(self.device).view(b, 1)
        positions = positions.to(self.device)
        span = span if span is not None else int(positions.max()) + 1
        rows = torch.arange(b, device=self.device)
        mask = (torch.arange(span, device=self.device).view(1, span) <= positions.view(b, 1)).view(b, 1, 1, span)
        x = self.tok_emb(tokens) + self.pos_emb(positions).view(b, 1, -1)
        for layer, blk in enumerate(self.blocks):
            x = blk.decode(x, cache.k[layer], cache.v[layer], rows, positions, mask)
        return self._logits(x[:, 0])
