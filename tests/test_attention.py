"""Attention blocks against a hand-written float64 reference, the attention recorder, and the KV cache."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from vision_attn.layers import AttentionRecorder, CrossAttention, KVCache, SelfAttention, attention_weights

B, T, N, C, H = 3, 7, 5, 24, 4
D = C // H


def _linear(x: Tensor, layer: torch.nn.Linear) -> Tensor:
    return x @ layer.weight.double().T + layer.bias.double()


def _heads(x: Tensor) -> Tensor:
    """[B, L, C] -> [B, H, L, D]."""
    return x.view(x.shape[0], x.shape[1], H, D).transpose(1, 2)


def _ref_attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """Explicit softmax attention in float64; allowed [B or 1, 1, T, S] bool. Returns [B, T, C]."""
    scores = (q @ k.transpose(-2, -1)) / D**0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    p = (scores - scores.amax(-1, keepdim=True)).exp()
    p = p / p.sum(-1, keepdim=True)
    y = p @ v  # [B, H, T, D]
    return y.transpose(1, 2).reshape(q.shape[0], q.shape[2], C)


def ref_self_attention(attn: SelfAttention, x: Tensor, allowed: Tensor) -> Tensor:
    x = x.double()
    q, k, v = _linear(x, attn.qkv).split(C, dim=-1)
    return _linear(_ref_attend(_heads(q), _heads(k), _heads(v), allowed), attn.proj)


def ref_cross_attention(attn: CrossAttention, x: Tensor, memory: Tensor) -> Tensor:
    x, memory = x.double(), memory.double()
    k, v = _linear(memory, attn.kv).split(C, dim=-1)
    allowed = torch.ones(1, 1, x.shape[1], memory.shape[1], dtype=torch.bool)
    q, k = _head_norm(_heads(_linear(x, attn.q)), attn.q_norm), _head_norm(_heads(k), attn.k_norm)
    return _linear(_ref_attend(q, k, _heads(v), allowed), attn.proj)


def _head_norm(t: Tensor, norm: nn.LayerNorm) -> Tensor:
    """QK-norm by hand: each head's D channels [B, H, T, D] to zero mean and unit variance, then scale and shift."""
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    return t * norm.weight.double() + norm.bias.double()


def causal(t: int) -> Tensor:
    return torch.ones(t, t, dtype=torch.bool).tril()[None, None]  # [1, 1, T, T]


def left_padded_mask(lengths: list[int], t: int) -> Tensor:
    """Like generation's prefill: causal over valid (right-aligned) keys; pad queries see only themselves."""
    valid = torch.zeros(len(lengths), t, dtype=torch.bool)
    for i, n in enumerate(lengths):
        valid[i, t - n :] = True
    return (causal(t) & valid[:, None, None, :]) | torch.eye(t, dtype=torch.bool)  # [B, 1, T, T]


DTYPES_TOL = [(torch.float64, 1e-6), (torch.float32, 1e-5)]


@pytest.fixture
def self_attn() -> SelfAttention:
    torch.manual_seed(0)
    attn = SelfAttention(C, H).eval()
    with torch.no_grad():  # O(1) weights so that attention patterns are far from uniform
        for p in attn.parameters():
            p.normal_(0.0, 0.5)
    return attn


@pytest.fixture
def cross_attn() -> CrossAttention:
    torch.manual_seed(1)
    attn = CrossAttention(C, H).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.5)
    return attn


def _x(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64)


@pytest.mark.parametrize("dtype,tol", DTYPES_TOL)
def test_self_attention_causal_matches_reference(self_attn: SelfAttention, dtype: torch.dtype, tol: float) -> None:
    x = _x(B, T, C)
    expected = ref_self_attention(self_attn, x, causal(T))
    got = self_attn.to(dtype)(x.to(dtype))
    torch.testing.assert_close(got.double(), expected, atol=tol, rtol=tol)
    # the first token sees only itself, so the mask really matters: full attention gives another answer
    full = ref_self_attention(self_attn, x, torch.ones(1, 1, T, T, dtype=torch.bool))
    assert (full - expected).abs().max() > 1e-2


@pytest.mark.parametrize("dtype,tol", DTYPES_TOL)
def test_self_attention_left_padded_mask_matches_reference(
    self_attn: SelfAttention, dtype: torch.dtype, tol: float
) -> None:
    x = _x(B, T, C)
    mask = left_padded_mask([T, 4, 1], T)
    expected = ref_self_attention(self_attn, x, mask)
    got = self_attn.to(dtype)(x.to(dtype), mask=mask)
    torch.testing.assert_close(got.double(), expected, atol=tol, rtol=tol)
    # a padded member's valid rows equal that member run alone without padding
    alone = self_attn.to(dtype)(x[1:2, T - 4 :].to(dtype))
    torch.testing.assert_close(got[1:2, T - 4 :], alone, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES_TOL)
def test_self_attention_with_cache_matches_full_causal(
    self_attn: SelfAttention, dtype: torch.dtype, tol: float
) -> None:
    """Prefill 3 tokens, then one at a time, each reading the whole cache (T + 2 slots) under a key mask."""
    attn = self_attn.to(dtype)
    x = _x(B, T, C).to(dtype)
    full = attn(x)
    L = T + 2
    cache = KVCache(B, H, L, D, dtype, "cpu")
    keys = torch.arange(L)
    prefix_mask = (keys[None, :] <= torch.arange(3)[:, None]).expand(B, 1, 3, L)  # causal over the first 3
    prefix = attn(x[:, :3], prefix_mask, cache, torch.arange(3))
    steps = [attn(x[:, t : t + 1], (keys <= t).expand(B, 1, 1, L), cache, torch.tensor([t])) for t in range(3, T)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, atol=tol, rtol=tol)


def test_self_attention_over_a_cache_needs_a_mask_and_slots(self_attn: SelfAttention) -> None:
    cache = KVCache(B, H, T, D, torch.float32, "cpu")
    with pytest.raises(ValueError, match="slots to write and a key mask"):
        self_attn(_x(B, 1, C).float(), cache=cache, slots=torch.tensor([0]))


@pytest.mark.parametrize("dtype,tol", DTYPES_TOL)
def test_cross_attention_matches_reference(cross_attn: CrossAttention, dtype: torch.dtype, tol: float) -> None:
    x, memory = _x(B, T, C), _x(B, N, C)
    expected = ref_cross_attention(cross_attn, x, memory)
    attn = cross_attn.to(dtype)
    got = attn(x.to(dtype), attn.image_kv(memory.to(dtype)))
    torch.testing.assert_close(got.double(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_recorded_weights_are_what_the_sdpa_path_used(cross_attn: CrossAttention, dtype: torch.dtype) -> None:
    """The recorder's explicit softmax, applied to the values, gives the module's own (SDPA) output."""
    attn = cross_attn.to(dtype)
    x, memory = _x(B, T, C).to(dtype), _x(B, N, C).to(dtype)
    k, v = attn.image_kv(memory)
    with AttentionRecorder([attn]) as recorder:
        sdpa = attn(x, (k, v))
    weights = recorder.weights[0]
    assert weights is not None and weights.shape == (B, H, T, N)
    explicit = attn.proj((weights @ v).transpose(1, 2).reshape(B, T, C))
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(explicit, sdpa, atol=tol, rtol=tol)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T, dtype=dtype))
    assert weights.max() > 2.0 / N  # not uniform: the test would not notice a missing scale otherwise
    torch.testing.assert_close(torch.stack(recorder.last_query()), weights[None, :, :, -1], atol=0, rtol=0)


def test_recorder_detaches_and_records_nothing_after() -> None:
    attn = CrossAttention(C, H).eval()
    x, kv = _x(B, T, C).float(), attn.image_kv(_x(B, N, C).float())
    recorder = AttentionRecorder([attn])
    with pytest.raises(RuntimeError, match="no cross-attention has run"):
        recorder.last_query()
    recorder.remove()
    attn(x, kv)
    assert recorder.weights == [None]  # the hook is gone


def test_attention_weights_match_explicit_softmax_and_sum_to_one() -> None:
    q, k = _x(B, H, T, D), _x(B, H, T + 3, D)
    w = attention_weights(q, k)
    scores = q @ k.transpose(-2, -1) / D**0.5
    torch.testing.assert_close(w, scores.exp() / scores.exp().sum(-1, keepdim=True), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T, dtype=torch.float64))


def test_kv_cache_writes_at_slots_and_returns_the_whole_buffer() -> None:
    cache = KVCache(2, H, 6, D, torch.float32, "cpu")
    k1, v1 = torch.randn(2, H, 3, D), torch.randn(2, H, 3, D)
    k, v = cache.update(k1, v1, torch.arange(3))
    assert k.shape == v.shape == (2, H, 6, D)
    assert k.data_ptr() == cache.k.data_ptr()  # the buffer itself: same address every step
    k2, v2 = torch.randn(2, H, 1, D), torch.randn(2, H, 1, D)
    k, v = cache.update(k2, v2, torch.tensor([3]))
    torch.testing.assert_close(k[:, :, :4], torch.cat([k1, k2], 2), atol=0, rtol=0)
    torch.testing.assert_close(v[:, :, :4], torch.cat([v1, v2], 2), atol=0, rtol=0)
    assert (cache.k[:, :, 4:] == 0).all()  # nothing written past the slots
    # overwriting a slot replaces it
    k3 = torch.randn(2, H, 1, D)
    k, _ = cache.update(k3, k3, torch.tensor([1]))
    torch.testing.assert_close(k[:, :, 1:2], k3, atol=0, rtol=0)
    torch.testing.assert_close(k[:, :, :1], k1[:, :, :1], atol=0, rtol=0)


def test_kv_cache_reorder_selects_rows_in_place() -> None:
    cache = KVCache(4, H, 4, D, torch.float32, "cpu")
    k, v = torch.randn(4, H, 2, D), torch.randn(4, H, 2, D)
    cache.update(k, v, torch.arange(2))
    address = cache.k.data_ptr(), cache.v.data_ptr()
    cache.reorder(torch.tensor([2, 2, 0, 1]))
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == address
    torch.testing.assert_close(cache.k[:, :, :2], k[[2, 2, 0, 1]], atol=0, rtol=0)
    torch.testing.assert_close(cache.v[:, :, :2], v[[2, 2, 0, 1]], atol=0, rtol=0)
    assert cache.max_len == 4
    # later writes go to the reordered batch
    k_new = torch.randn(4, H, 1, D)
    k_all, _ = cache.update(k_new, k_new, torch.tensor([2]))
    torch.testing.assert_close(k_all[:, :, :3], torch.cat([k[[2, 2, 0, 1]], k_new], 2), atol=0, rtol=0)


def test_kv_cache_overflow_raises() -> None:
    cache = KVCache(1, H, 4, D, torch.float32, "cpu")
    cache.update(torch.zeros(1, H, 3, D), torch.zeros(1, H, 3, D), torch.arange(3))
    cache.update(torch.zeros(1, H, 1, D), torch.zeros(1, H, 1, D), torch.tensor([3]))  # fills it exactly
    with pytest.raises(IndexError):
        cache.update(torch.zeros(1, H, 1, D), torch.zeros(1, H, 1, D), torch.tensor([4]))
