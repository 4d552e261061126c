"""Tests of the unified spatial attention (joint / point-wise / self) against direct, loop-based implementations.

The oracles below are written from the papers' equations and the official PSANet ``psamask`` indexing: per-position
loops, explicit exp/sum normalisation, and 1x1 convs / eval-mode BN as matrix arithmetic, all in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnseg.models.joint_attention import (
    JointAttention,
    NonLocalBlock,
    PointwiseSpatialAttention,
    UnifiedSpatialAttention,
    build_attention,
    pointwise_logits,
    relative_position_index,
)

C, D = 6, 4  # channels, inner width of the modules under test


# ----------------------------------------------------------------------------------------------------- oracles
def psamask_loop(maps: torch.Tensor, mask: tuple[int, int], direction: str) -> torch.Tensor:
    """Official psamask semantics, looped: out[source, target] filled from each position's window, zeros elsewhere.

    Returns logits indexed [query (target), key (source)].
    """
    b, _, h, w = maps.shape
    mh, mw = mask
    hh, hw = (mh - 1) // 2, (mw - 1) // 2
    out = torch.zeros(b, h * w, h * w, dtype=maps.dtype)
    for p_h in range(h):
        for p_w in range(w):
            p = p_h * w + p_w
            for hi in range(max(0, hh - p_h), min(mh, h + hh - p_h)):
                for wi in range(max(0, hw - p_w), min(mw, w + hw - p_w)):
                    f = (hi + p_h - hh) * w + (wi + p_w - hw)
                    value = maps[:, hi * mw + wi, p_h, p_w]
                    if direction == "collect":
                        out[:, f, p] = value  # the map at target p weighs source f
                    else:
                        out[:, p, f] = value  # the map at source p weighs target f
    return out.transpose(1, 2)


def lin(conv: torch.nn.Conv2d, v: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv applied to position vectors v [N, Cin] as a matrix product."""
    out = v @ conv.weight[:, :, 0, 0].T
    return out if conv.bias is None else out + conv.bias


def bn_eval(bn: torch.nn.BatchNorm2d, v: torch.Tensor) -> torch.Tensor:
    return (v - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def head_maps(head, v: torch.Tensor) -> torch.Tensor:
    """PSANet's map predictor per position: reduce, conv-BN-ReLU, conv -> [N, mask_h*mask_w]."""
    r = torch.relu(bn_eval(head.reduce[1], lin(head.reduce[0], v)))
    r = torch.relu(bn_eval(head.attention[1], lin(head.attention[0], r)))
    return lin(head.attention[3], r)


def psa_logit(maps_v: torch.Tensor, at: int, other: int, h: int, w: int, mask: tuple[int, int]) -> torch.Tensor:
    """Logit of the map predicted at ``at`` for the offset pos(other) - pos(at); 0 outside the map (psamask)."""
    dh, dw = other // w - at // w, other % w - at % w
    hh, hw = (mask[0] - 1) // 2, (mask[1] - 1) // 2
    if abs(dh) > hh or abs(dw) > hw:
        return torch.zeros((), dtype=maps_v.dtype)
    return maps_v[at, (dh + hh) * mask[1] + (dw + hw)]


def normalise(logits: list[list[torch.Tensor]]) -> torch.Tensor:
    """Rows of exp(logit) / Σ exp(logit), written out (no softmax call)."""
    e = torch.stack([torch.stack(row) for row in logits]).exp()
    return e / e.sum(dim=1, keepdim=True)


def direct_output(m, x: torch.Tensor, maps: list[torch.Tensor], gated: bool = False) -> torch.Tensor:
    """z = x + BN₀(W_z [A_1 g_1(x) ‖ A_2 g_2(x) ...]) per sample, maps [N, N] per value projection."""
    v = x.flatten(1).T  # (N, C)
    y = torch.cat([a @ lin(g, v) for a, g in zip(maps, m.values)], dim=1)
    if gated:
        img = x.unsqueeze(0)
        pooled = torch.cat([img.amax(1, keepdim=True), img.mean(1, keepdim=True)], 1)
        s = torch.nn.functional.conv2d(pooled, m.gate.conv.weight, padding=3)[0].flatten(1).T  # (N, 1)
        y = y * torch.sigmoid(bn_eval(m.gate.norm, s))
    z = v + bn_eval(m.out_norm, lin(m.out_proj, y))
    return z.T.reshape(x.shape)


def content_logits(m, v: torch.Tensor, tau: float) -> list[list[torch.Tensor]]:
    q, k = lin(m.theta, v), lin(m.phi, v)
    n = v.shape[0]
    return [[tau * torch.dot(q[i], k[j]) for j in range(n)] for i in range(n)]


def point_logits(head, v: torch.Tensor, h: int, w: int, direction: str) -> list[list[torch.Tensor]]:
    mv = head_maps(head, v)
    n = v.shape[0]
    if direction == "collect":  # PSANet: F_Δij(x_i), predicted at the query
        return [[psa_logit(mv, i, j, h, w, head.mask_size) for j in range(n)] for i in range(n)]
    return [[psa_logit(mv, j, i, h, w, head.mask_size) for j in range(n)] for i in range(n)]  # F_Δij(x_j)


def add(*terms: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    return [[sum(t[i][j] for t in terms) for j in range(len(terms[0]))] for i in range(len(terms[0]))]


def randomise(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights, BN statistics and affine parameters (including BN₀), float64, eval mode."""
    g = torch.Generator().manual_seed(seed)
    m.double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for name, buf in m.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g, dtype=buf.dtype) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g, dtype=buf.dtype) + 0.5)
    return m


def sample(h: int = 3, w: int = 4, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, C, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------- index and gather
def test_relative_position_index_hand_computed() -> None:
    # 1x2 map, 1x3 mask: offsets -1, 0, +1 are channels 0, 1, 2; a 1x1 mask leaves the zero slot (1) off-diagonal
    assert relative_position_index(1, 2, (1, 3)).tolist() == [[1, 2], [0, 1]]
    assert relative_position_index(1, 2, 1).tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize("h, w, mask", [(3, 4, (5, 7)), (4, 5, (3, 3)), (2, 3, (9, 9)), (5, 2, (7, 1))])
@pytest.mark.parametrize("direction", ["collect", "distribute"])
def test_gather_matches_psamask_loop(h: int, w: int, mask: tuple[int, int], direction: str) -> None:
    # covers exact (2h-1, 2w-1) maps, maps smaller than the feature map (zeros) and larger ones (central window)
    maps = torch.randn(2, mask[0] * mask[1], h, w, generator=torch.Generator().manual_seed(h * w))
    torch.testing.assert_close(pointwise_logits(maps, mask, direction), psamask_loop(maps, mask, direction))


def test_distribute_is_collect_transposed() -> None:
    maps = torch.randn(1, 25, 3, 3)
    torch.testing.assert_close(pointwise_logits(maps, 5, "distribute"), pointwise_logits(maps, 5, "collect").mT)


# ------------------------------------------------------------------ the unified formula reduces to each mechanism
def test_content_only_is_the_nonlocal_block() -> None:
    m = randomise(NonLocalBlock(C, D))
    x = sample()
    expected = torch.stack([direct_output(m, xb, [normalise(content_logits(m, xb.flatten(1).T, 1.0))]) for xb in x])
    torch.testing.assert_close(m(x), expected)
    # the generic module with only the content term switched on and tau = 1 is the same computation
    u = UnifiedSpatialAttention(C, D, content=True, scale_content=False).double().eval()
    u.load_state_dict(m.state_dict())
    torch.testing.assert_close(u(x), expected)


@pytest.mark.parametrize("direction", ["collect", "distribute"])
def test_positional_only_is_psanet_one_direction(direction: str) -> None:
    h, w = 3, 4
    m = randomise(
        UnifiedSpatialAttention(
            C, D, content=False, collect=direction == "collect", distribute=direction == "distribute", mask_size=(5, 7)
        )
    )
    head = m.collect if direction == "collect" else m.distribute
    x = sample(h, w)
    expected = torch.stack(
        [direct_output(m, xb, [normalise(point_logits(head, xb.flatten(1).T, h, w, direction))]) for xb in x]
    )
    torch.testing.assert_close(m(x), expected)


def test_bidirectional_point_is_psanet_two_maps() -> None:
    # PSANet psa_type=2: collect and distribute normalised separately, each with its own values, concatenated
    h, w = 3, 3
    m = randomise(PointwiseSpatialAttention(C, D, mask_size=5, distribute=True))
    x = sample(h, w)
    out = []
    for xb in x:
        v = xb.flatten(1).T
        maps = [
            normalise(point_logits(m.collect, v, h, w, "collect")),
            normalise(point_logits(m.distribute, v, h, w, "distribute")),
        ]
        out.append(direct_output(m, xb, maps))
    torch.testing.assert_close(m(x), torch.stack(out))


def test_joint_is_one_softmax_over_content_plus_collect() -> None:
    h, w = 3, 4
    m = randomise(JointAttention(C, D, mask_size=(5, 7)))
    x = sample(h, w)
    out = []
    for xb in x:
        v = xb.flatten(1).T
        s = add(content_logits(m, v, 1 / math.sqrt(D)), point_logits(m.collect, v, h, w, "collect"))
        out.append(direct_output(m, xb, [normalise(s)]))
    torch.testing.assert_close(m(x), torch.stack(out))


def test_joint_with_distribute_adds_the_third_term() -> None:
    h, w = 2, 3
    m = randomise(JointAttention(C, D, mask_size=3, distribute=True))  # 3x3 map smaller than 3x5 offsets: zeros
    x = sample(h, w)
    out = []
    for xb in x:
        v = xb.flatten(1).T
        s = add(
            content_logits(m, v, 1 / math.sqrt(D)),
            point_logits(m.collect, v, h, w, "collect"),
            point_logits(m.distribute, v, h, w, "distribute"),
        )
        out.append(direct_output(m, xb, [normalise(s)]))
    torch.testing.assert_close(m(x), torch.stack(out))


def test_joint_alternatives_parallel_mix_gate() -> None:
    h, w = 3, 3
    x = sample(h, w)
    par = randomise(JointAttention(C, D, mask_size=5, fusion="parallel"))
    mix = randomise(JointAttention(C, D, mask_size=5, fusion="mix"), seed=2)
    gate = randomise(JointAttention(C, D, pointwise="gate"), seed=3)
    lam = torch.sigmoid(mix.mix_logit)
    for b, xb in enumerate(x):
        v = xb.flatten(1).T
        maps = [
            normalise(content_logits(par, v, 1 / math.sqrt(D))),
            normalise(point_logits(par.collect, v, h, w, "collect")),
        ]
        torch.testing.assert_close(par(x)[b], direct_output(par, xb, maps))
        a = lam * normalise(content_logits(mix, v, 1 / math.sqrt(D))) + (1 - lam) * normalise(
            point_logits(mix.collect, v, h, w, "collect")
        )
        torch.testing.assert_close(mix(x)[b], direct_output(mix, xb, [a]))
        a = normalise(content_logits(gate, v, 1 / math.sqrt(D)))
        torch.testing.assert_close(gate(x)[b], direct_output(gate, xb, [a], gated=True))


# -------------------------------------------------------------------------------------------- module behaviour
CONFIGS = {
    "self": lambda: NonLocalBlock(C, D),
    "point": lambda: PointwiseSpatialAttention(C, D, mask_size=7),
    "point_bidirectional": lambda: PointwiseSpatialAttention(C, D, mask_size=7, distribute=True),
    "joint": lambda: JointAttention(C, D, mask_size=7),
    "joint_distribute": lambda: JointAttention(C, D, mask_size=7, distribute=True),
    "joint_parallel": lambda: JointAttention(C, D, mask_size=7, fusion="parallel"),
    "joint_mix": lambda: JointAttention(C, D, mask_size=7, fusion="mix"),
    "joint_gate": lambda: JointAttention(C, D, pointwise="gate"),
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("size", [(4, 4), (2, 3), (6, 5)])  # the design size (mask 7 = 2*4-1), smaller, larger
def test_attention_maps_sum_to_one_at_any_size(name: str, size: tuple[int, int]) -> None:
    m = randomise(CONFIGS[name]())
    x = sample(*size)
    maps = m.attention_maps(x)
    assert len(maps) == (2 if name in ("point_bidirectional", "joint_parallel") else 1)
    for a in maps:
        n = size[0] * size[1]
        assert a.shape == (2, n, n)
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones(2, n, dtype=a.dtype))
    assert m(x).shape == x.shape


@pytest.mark.parametrize("name", CONFIGS)
def test_zero_initialised_residual_is_identity(name: str) -> None:
    m = CONFIGS[name]()
    x = torch.randn(2, C, 4, 4)
    torch.testing.assert_close(m.train()(x), x)
    torch.testing.assert_close(m.eval()(x), x)


@pytest.mark.parametrize("name", CONFIGS)
def test_gradients_reach_every_parameter(name: str) -> None:
    m = CONFIGS[name]()
    with torch.no_grad():
        m.out_norm.weight.fill_(1.0)  # at init BN₀ = 0 blocks the branch; open it to test the branch's wiring
    x = torch.randn(2, C, 4, 4)
    (m(x) * torch.randn_like(x)).sum().backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient for {dead}"


def test_batch_independence_in_eval() -> None:
    m = randomise(JointAttention(C, D, mask_size=5, distribute=True))
    x = sample(3, 3, batch=3)
    torch.testing.assert_close(m(x)[1:2], m(x[1:2]))


def test_build_attention_kinds() -> None:
    assert isinstance(build_attention("none", C), torch.nn.Identity)
    assert type(build_attention("self", C)) is NonLocalBlock
    assert build_attention("point", C, D, 5).terms == ("collect",)
    j = build_attention("joint", C, D, 5, distribute=True)
    assert j.terms == ("content", "collect", "distribute") and j.mask_size == (5, 5)
    assert NonLocalBlock(C).content_scale == 1.0 and j.content_scale == pytest.approx(D**-0.5)
    assert NonLocalBlock(8).theta.out_channels == 4  # d = C/2 as in the non-local paper


@pytest.mark.parametrize(
    "build",
    [
        lambda: build_attention("cross", C),
        lambda: UnifiedSpatialAttention(C, content=False),
        lambda: UnifiedSpatialAttention(C, fusion="sum"),
        lambda: UnifiedSpatialAttention(C, content=True, fusion="mix"),
        lambda: UnifiedSpatialAttention(C, collect=True, mask_size=4),
        lambda: UnifiedSpatialAttention(C, inner_channels=0),
        lambda: JointAttention(C, pointwise="cbam"),
        lambda: pointwise_logits(torch.zeros(1, 8, 2, 2), 3),
        lambda: pointwise_logits(torch.zeros(1, 9, 2, 2), 3, "both"),
    ],
)
def test_invalid_arguments_raise(build) -> None:
    with pytest.raises(ValueError):
        build()
