import copy
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from perforate_experiments.data.physionet import NUM_STATIC_FEATURES
from perforate_experiments.data.tox21 import (
    ATOM_FEATURE_DIM,
    BOND_FEATURE_DIM,
    MolGraph,
    collate_graphs,
)
from perforate_experiments.models import (
    MPNN,
    FingerprintMLP,
    LinearGRU,
    MnistCNN,
    MTANClassifier,
    MultiTimeAttention,
    count_parameters,
)

MTAN_PARAMS = {0.125: 12_087, 0.25: 42_587, 0.5: 159_271, 1.0: 614_933, 2.0: 2_415_433}


def _all_grads(model):
    return all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _learnable_leaf_types(model):
    return {type(m) for m in model.modules() if any(True for _ in m.parameters(recurse=False))}


def _cnn_params(c1, c2, h, k):
    return (9 * c1 + c1) + (9 * c1 * c2 + c2) + (c2 * 144 * h + h) + (h * k + k)


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, 2.0])
def test_mnist_cnn(width):
    torch.manual_seed(0)
    model = MnistCNN(num_classes=10, width=width)
    c1, c2, h = round(32 * width), round(64 * width), round(128 * width)
    assert count_parameters(model) == _cnn_params(c1, c2, h, 10)
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    out.logsumexp(1).sum().backward()
    assert _all_grads(model)


def test_mnist_cnn_is_the_pytorch_example():
    model = MnistCNN()
    assert count_parameters(model) == 1_199_882
    assert model.fc1.in_features == 9216 and model.fc2.out_features == 10
    assert (model.dropout1.p, model.dropout2.p) == (0.25, 0.5)
    assert count_parameters(MnistCNN(num_classes=47)) == 1_199_882 + 37 * 129
    x = torch.randn(2, 1, 28, 28)
    # dropout is active in training and off in eval: eval equals the model without dropout
    no_dropout = copy.deepcopy(model)
    no_dropout.dropout1, no_dropout.dropout2 = nn.Identity(), nn.Identity()
    out_train = model(x)
    model.eval()
    out_eval = model(x)
    assert not torch.allclose(out_train, out_eval)
    assert torch.allclose(out_eval, no_dropout(x))
    assert not torch.allclose(out_eval.exp().sum(1), torch.ones(2))  # logits, not log-probs


def test_fingerprint_mlp():
    model = FingerprintMLP()
    assert count_parameters(model) == 2048 * 512 + 512 + 512 * 256 + 256 + 256 * 12 + 12
    assert _learnable_leaf_types(model) == {nn.Linear}
    out = model(torch.rand(5, 2048))
    assert out.shape == (5, 12)
    out.sum().backward()
    assert _all_grads(model)


def _random_graph(n_atoms, n_bonds, gen):
    x = torch.rand(n_atoms, ATOM_FEATURE_DIM, generator=gen)
    src = torch.randint(0, n_atoms, (n_bonds,), generator=gen)
    dst = (src + 1 + torch.randint(0, max(n_atoms - 1, 1), (n_bonds,), generator=gen)) % n_atoms
    ei = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]) if n_bonds else None
    ea = torch.rand(n_bonds, BOND_FEATURE_DIM, generator=gen).repeat(2, 1)
    return MolGraph(x, ei if ei is not None else torch.zeros(2, 0, dtype=torch.long), ea)


def test_mpnn():
    gen = torch.Generator().manual_seed(0)
    graphs = [_random_graph(n, b, gen) for n, b in ((5, 4), (1, 0), (9, 10), (3, 2))]
    model = MPNN()
    h = 128
    expected = (
        (ATOM_FEATURE_DIM * h + h)
        + 3 * ((h + BOND_FEATURE_DIM) * h + h + 2 * h * 2 * h + 2 * h + 2 * h * h + h)
        + (2 * h * h + h + h * 12 + 12)
    )
    assert count_parameters(model) == expected == 389_132
    assert _learnable_leaf_types(model) == {nn.Linear}
    batch = collate_graphs(graphs)
    out = model(batch)
    assert out.shape == (4, 12)
    out.sum().backward()
    assert _all_grads(model)
    model.eval()
    with torch.no_grad():
        together = model(batch)
        args = (batch.x, batch.edge_index, batch.edge_attr, batch.batch)
        assert torch.allclose(model(*args), together)  # num_graphs inferred
        for i, g in enumerate(graphs):  # graphs in a batch do not interact
            alone = model(collate_graphs([g]))
            assert torch.allclose(alone[0], together[i], atol=1e-5)
        # relabelling the atoms of a molecule does not change its prediction
        g = graphs[2]
        perm = torch.randperm(g.num_atoms, generator=gen)
        inv = torch.argsort(perm)
        permuted = MolGraph(g.x[perm], inv[g.edge_index], g.edge_attr)
        assert torch.allclose(model(collate_graphs([permuted])), together[2:3], atol=1e-5)
    assert count_parameters(MPNN(width=0.5)) < count_parameters(model)


def _naive_attention(att, query, key, x, mask):
    """The official mTAN formulation: a [B, H, R, T, D] masked softmax."""
    b, t, d = x.shape
    q = att.query_proj(query).view(1, -1, att.num_heads, att.d_k).transpose(1, 2)
    k = att.key_proj(key).view(b, t, att.num_heads, att.d_k).transpose(1, 2)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(att.d_k)).unsqueeze(-1).expand(-1, -1, -1, -1, d)
    scores = scores.masked_fill(mask[:, None, None] == 0, -1e9)
    p = torch.softmax(scores, dim=-2)
    out = (p * x[:, None, None]).sum(-2)  # [B, H, R, D]
    return out * (mask.sum(1) > 0)[:, None, None].to(out.dtype)  # unobserved channels -> 0


def test_multi_time_attention_matches_naive():
    torch.manual_seed(0)
    att = MultiTimeAttention(input_dim=6, embed_dim=8, num_heads=2, out_dim=5)
    query, key = torch.randn(7, 8), torch.randn(3, 11, 8)
    x = torch.randn(3, 11, 6)
    mask = (torch.rand(3, 11, 6) < 0.4).float()
    mask[0, :, 2] = 0  # a channel never observed
    mask[1, 8:] = 0  # padding
    ours = att.weights_and_values(query.unsqueeze(0), key, x, mask)
    ref = _naive_attention(att, query, key, x, mask)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert torch.all(ours[0, :, :, 2] == 0)
    assert att(query, key, x, mask).shape == (3, 7, 5)


def _physionet_like_batch(b=4, t=15, v=37, seed=0):
    gen = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(b, t, generator=gen), dim=1).values
    mask = (torch.rand(b, t, v, generator=gen) < 0.2).float()
    mask[1, 10:] = 0
    times[1, 10:] = 0
    values = torch.randn(b, t, v, generator=gen) * mask
    return times, values, mask


@pytest.mark.parametrize("width", sorted(MTAN_PARAMS))
def test_mtan_widths(width):
    model = MTANClassifier(width=width)
    assert count_parameters(model) == MTAN_PARAMS[width]
    assert _learnable_leaf_types(model) == {nn.Linear, nn.GRU}
    times, values, mask = _physionet_like_batch()
    if width > 0.25:  # keep the test fast: gradients are checked on the small widths
        with torch.no_grad():
            assert model(times, values, mask).shape == (4,)
        return
    out = model(times, values, mask)
    assert out.shape == (4,)
    out.sum().backward()
    assert _all_grads(model)


def test_mtan_masking():
    torch.manual_seed(0)
    model = MTANClassifier(width=0.25).eval()
    times, values, mask = _physionet_like_batch()
    with torch.no_grad():
        ref = model(times, values, mask)
        # values where mask == 0 are ignored
        noisy = values + torch.randn_like(values) * (1 - mask) * 100
        torch.testing.assert_close(model(times, noisy, mask), ref)
        # extra padding steps change nothing
        pad = lambda z: torch.cat([z, torch.zeros_like(z[:, :5])], 1)  # noqa: E731
        torch.testing.assert_close(model(pad(times), pad(values), pad(mask)), ref)
        # observed values matter
        changed = values + mask
        assert not torch.allclose(model(times, changed, mask), ref)


def test_mtan_options():
    torch.manual_seed(0)
    times, values, mask = _physionet_like_batch()
    static = torch.randn(4, NUM_STATIC_FEATURES)
    model = MTANClassifier(width=0.125, static_dim=NUM_STATIC_FEATURES, learn_ref_points=True)
    out = model(times, values, mask, static)
    out.sum().backward()
    assert model.ref_points.grad is not None and _all_grads(model)
    with pytest.raises(ValueError, match="static"):
        model(times, values, mask)
    lin = MTANClassifier(width=0.125, linear_gru=True)
    assert _learnable_leaf_types(lin) == {nn.Linear}
    assert count_parameters(lin) == MTAN_PARAMS[0.125]


def test_linear_gru_matches_torch_gru():
    torch.manual_seed(0)
    gru, ours = nn.GRU(5, 7, batch_first=True), LinearGRU(5, 7)
    with torch.no_grad():
        ours.ih.weight.copy_(gru.weight_ih_l0)
        ours.ih.bias.copy_(gru.bias_ih_l0)
        ours.hh.weight.copy_(gru.weight_hh_l0)
        ours.hh.bias.copy_(gru.bias_hh_l0)
    x = torch.randn(3, 6, 5)
    (o1, h1), (o2, h2) = gru(x), ours(x)
    torch.testing.assert_close(o2, o1)
    torch.testing.assert_close(h2, h1)


def test_package_import_is_light():
    code = (
        "import sys, perforate_experiments.data, perforate_experiments.models\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'rdkit', 'sklearn', 'scipy', 'pandas'}\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_extra_message():
    from perforate_experiments import require

    with pytest.raises(ImportError, match=r"pip install 'perforate\[experiments\]'"):
        require("perforate_no_such_module", "Testing")
