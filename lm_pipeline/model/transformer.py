"""A decoder-only Transformer in plain torch, in the spirit of nanoGPT's model.py.

Pre-norm blocks, causal attention through F.scaled_dot_product_attention, GELU MLP, learned
positions, and an output head tied to the token embedding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, past=None, use_cache: bool = False, mask=None):
        """mask: which keys each query sees, (B, 1, T, T_past + T), when rows are left-padded;
        None means plain causal attention over every key."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past is not None:  # (B, nh, T_past + T, hs): new keys and values follow the cached ones
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        # With a cache, T new queries attend to all T_past keys plus the causal part of their own.
        if mask is None and past is not None and T > 1:
            mask = _causal_mask(T, k.size(2), x.device)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=past is None and mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y)), (k, v) if use_cache else None


def _causal_mask(t_new: int, t_total: int, device: torch.device) -> torch.Tensor:
    """(t_new, t_total) boolean mask: query i sees keys up to its own absolute position."""
    offset = t_total - t_new
    rows = torch.arange(t_new, device=device)[:, None] + offset
    return torch.arange(t_total, device=device)[None, :] <= rows


def _padded_mask(attention_mask: torch.Tensor, t_new: int) -> torch.Tensor:
    """(B, 1, t_new, t_total) boolean mask for left-padded rows (attention_mask (B, t_total), True
    at real tokens): causal, and blind to padding. A padding query also sees itself, so its
    softmax has a key (its output is never used)."""
    t_total = attention_mask.size(1)
    causal = _causal_mask(t_new, t_total, attention_mask.device)
    itself = torch.arange(t_total, device=attention_mask.device)[None, :] == (
        torch.arange(t_new, device=attention_mask.device)[:, None] + t_total - t_new)
    return (causal & attention_mask[:, None, None, :].bool()) | itself


def padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, t_total) position of each token counted from its row's first real token: a left-padded
    row is placed exactly where it would be alone (padding sits at 0, unseen)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, past=None, use_cache: bool = False, mask=None):
        a, present = self.attn(self.ln_1(x), past, use_cache, mask)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one matrix embeds and un-embeds tokens
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream stays O(1).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def layers(self) -> list[nn.Module]:
        """The Transformer blocks: what FSDP shards and activation checkpointing recomputes."""
        return list(self.blocks)

    def num_params(self) -> int:
        """Parameters excluding position embeddings (the tied head is counted once)."""
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                past: KVCache | None = None, use_cache: bool = False, label_smoothing: float = 0.0,
                attention_mask: torch.Tensor | None = None):
        """idx (B, T) token ids -> logits (B, T, V); with targets also the mean cross-entropy
        (label-smoothed when training asks for it; evaluation keeps the plain one).

        With use_cache, also the keys/values of all positions seen (continuing from `past`), for
        generation; training leaves it off and gets None. attention_mask (B, T_past + T), True at
        real tokens, lets rows of different lengths share a batch, left-padded (serving).
        """
        B, T = idx.shape
        start = 0 if past is None else past[0][0].size(2)
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        mask = None
        if attention_mask is None:
            pos = torch.arange(start, start + T, device=idx.device)
        else:
            pos = padded_positions(attention_mask)[:, start:]
            mask = _padded_mask(attention_mask, T)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        presents = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, None if past is None else past[i], use_cache, mask)
            presents.append(present)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1,
                                   label_smoothing=label_smoothing)
        return logits, loss, presents if use_cache else None

    def configure_optimizer(self, lr: float, weight_decay: float, betas: tuple[float, float]):
        return configure_adamw(self, lr, weight_decay, betas)


def device_of(model: nn.Module) -> torch.device:
    """Where a model's weights are (inputs go there); the CPU for a model without weights."""
    return next(model.parameters(), torch.empty(0)).device


def configure_adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]):
    """AdamW over the trainable parameters (LoRA freezes the rest), with weight decay on matrices
    only (not on biases and norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=torch.cuda.is_available())
