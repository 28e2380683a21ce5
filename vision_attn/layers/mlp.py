"""The feed-forward blocks: GELU (the from-scratch and GPT-2 decoders) and SwiGLU (Llama family)."""

import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """Linear -> GELU (tanh approximation, as GPT-2's `gelu_new`) -> Linear, [B, T, C] -> [B, T, C]."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SwiGLU(nn.Module):
    """fc2(silu(gate) * up) with gate and up from one fused `fc1`, [B, T, C] -> [B, T, C]; no biases (Llama)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=False)  # [gate; up]
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.fc1(x).chunk(2, dim=-1)  # 2x[B, T, hidden]
        return self.drop(self.fc2(F.silu(gate) * up))
