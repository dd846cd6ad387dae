"""Standard PyTorch modules through `compile_model(module)` (torch.export, core ATen), matched against PyTorch:
the attention modules with their masking (eq / logical_not / any / where / full_like after decomposition),
resampling, flips, bidirectional GRUs, 1-D, 3-D and transposed convolutions. And compiling leaves the caller's
module as it was."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tensorforge import compile_model
from tensorforge.frontends.torch import from_torch
from tests.support import assert_close


class Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


class SDPA(torch.nn.Module):
    def __init__(self, causal=False, masked=False):
        super().__init__()
        self.causal, self.masked = causal, masked

    def forward(self, q, k, v):
        mask = None
        if self.masked:  # a boolean mask hiding the last two keys of every query
            mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool)
            mask[:, -2:] = False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)


class KeyPadding(torch.nn.Module):
    """nn.MultiheadAttention with a key padding mask (a run-time boolean input) and averaged weights."""

    def __init__(self):
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x, pad):
        y, w = self.mha(x, x, x, key_padding_mask=pad)
        return y, w


class BiGRU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(6, 10, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x):
        y, h = self.gru(x)
        return y, h


class CausalEncoder(torch.nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, x):
        return self.enc(x, mask=torch.nn.Transformer.generate_square_subsequent_mask(x.shape[1]), is_causal=True)


def _encoder(norm_first, causal):
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True, norm_first=norm_first)
    enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    return CausalEncoder(enc) if causal else enc


def _randn(*shape):
    return torch.randn(*shape)


CASES = {
    "transformer_encoder": lambda: (_encoder(False, False), (_randn(2, 10, 32),)),
    "transformer_encoder_norm_first_causal": lambda: (_encoder(True, True), (_randn(2, 10, 32),)),
    "multihead_attention": lambda: (torch.nn.MultiheadAttention(32, 4, batch_first=True),
                                    (_randn(2, 10, 32), _randn(2, 7, 32), _randn(2, 7, 32))),
    "multihead_attention_key_padding": lambda: (KeyPadding(), (_randn(2, 6, 16),
                                                               torch.tensor([[0, 0, 0, 0, 1, 1]] * 2).bool())),
    "sdpa": lambda: (SDPA(), (_randn(2, 4, 10, 16), _randn(2, 4, 12, 16), _randn(2, 4, 12, 16))),
    "sdpa_causal": lambda: (SDPA(causal=True), (_randn(2, 4, 10, 16), _randn(2, 4, 10, 16), _randn(2, 4, 10, 16))),
    "sdpa_bool_mask": lambda: (SDPA(masked=True), (_randn(1, 2, 5, 8), _randn(1, 2, 5, 8), _randn(1, 2, 5, 8))),
    "interpolate_bilinear_x2": lambda: (Fn(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear")),
                                        (_randn(1, 3, 8, 8),)),
    "interpolate_bilinear_size_align": lambda: (Fn(lambda x: F.interpolate(x, size=(7, 11), mode="bilinear",
                                                                          align_corners=True)),
                                                (_randn(2, 3, 5, 6),)),
    "interpolate_bilinear_down": lambda: (Fn(lambda x: F.interpolate(x, size=(3, 5), mode="bilinear")),
                                          (_randn(1, 2, 8, 9),)),
    "interpolate_nearest_x1.5": lambda: (Fn(lambda x: F.interpolate(x, scale_factor=1.5, mode="nearest")),
                                         (_randn(1, 2, 6, 4),)),
    "interpolate_linear_1d": lambda: (Fn(lambda x: F.interpolate(x, size=13, mode="linear")), (_randn(2, 3, 9),)),
    "bidirectional_gru": lambda: (BiGRU(), (_randn(3, 7, 6),)),
    "flip": lambda: (Fn(lambda x: torch.flip(x, [0, 2]) + x), (_randn(3, 4, 5),)),
    "conv_transpose2d": lambda: (torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
                                 (_randn(2, 4, 7, 7),)),
    "conv_transpose2d_groups_dilation": lambda: (torch.nn.ConvTranspose2d(4, 6, 3, stride=(1, 2), groups=2,
                                                                          dilation=2, padding=(2, 1)),
                                                 (_randn(1, 4, 6, 5),)),
    "conv_transpose1d": lambda: (torch.nn.ConvTranspose1d(3, 5, 4, stride=3), (_randn(2, 3, 9),)),
    "conv1d": lambda: (torch.nn.Conv1d(3, 8, 5, padding=2, stride=2), (_randn(2, 3, 20),)),
    "conv3d": lambda: (torch.nn.Conv3d(2, 4, 3, padding=1), (_randn(1, 2, 5, 6, 7),)),
    "masks_and_scalars": lambda: (Fn(lambda x, i: (torch.where(x > 0.5, x * 2, -x).masked_fill(i == 3, 7.0)
                                                   + (i * 0.5) + (i != 1).float() + torch.full_like(x, 0.25)
                                                   + (x >= 0).any(dim=1, keepdim=True).float()
                                                   + (x < 1).all(dim=-1, keepdim=True).float(),
                                                   torch.logical_and(x > 0, i > 1), F.hardswish(x), F.pad(x, (1, 2))
                                                   )),
                                  (_randn(3, 4), torch.arange(12).reshape(3, 4) % 5)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_module_matches_pytorch(name):
    torch.manual_seed(0)
    module, inputs = CASES[name]()
    module.eval()
    with torch.no_grad():
        expected = module(*inputs)
    expected = [e.numpy() for e in (expected if isinstance(expected, tuple) else (expected,))]
    model = compile_model(module, example_inputs=inputs)
    got = model.run(dict(zip(model.input_names, (x.numpy() for x in inputs))))
    assert len(got) == len(expected)
    for i, (a, e) in enumerate(zip(got, expected)):
        assert a.dtype == e.dtype and a.shape == e.shape, (i, a.dtype, a.shape, e.dtype, e.shape)
        assert_close(a, e, rtol=1e-4, atol=1e-5, what=f"{name} output {i}")


def test_a_causal_sdpa_ignores_the_keys_after_each_query():
    """Keys after a query are not read: changing the last key and value changes only the last query's row."""
    torch.manual_seed(1)
    q = torch.randn(1, 2, 6, 8)
    model = compile_model(SDPA(causal=True), example_inputs=(q, q, q))
    k2 = q.clone()
    k2[:, :, -1] += 5
    a = model.run({"q": q.numpy(), "k": q.numpy(), "v": q.numpy()})[0]
    b = model.run({"q": q.numpy(), "k": k2.numpy(), "v": k2.numpy()})[0]
    np.testing.assert_array_equal(a[:, :, :-1], b[:, :, :-1])
    assert not np.allclose(a[:, :, -1], b[:, :, -1])


def test_compiling_leaves_the_module_as_it_was():
    """compile_model exports in eval mode and hands the module back in its own mode, parameters untouched."""
    torch.manual_seed(2)
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(8))
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    flags = [p.requires_grad for p in module.parameters()]
    x = torch.randn(4, 8)
    model = compile_model(module, example_inputs=(x,))
    assert module.training and all(m.training for m in module.modules())
    assert [p.requires_grad for p in module.parameters()] == flags
    for k, v in module.state_dict().items():  # running statistics did not move either
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        expected = module.eval()(x).numpy()
    assert_close(model.run({"input": x.numpy()})[0], expected, rtol=1e-4, atol=1e-5)


def test_the_transformer_encoder_keeps_its_attention_as_one_op():
    """After decomposition the encoder's attention is matmuls around a softmax guarded against all-masked rows;
    the graph still computes it (and, where recognized, as attention)."""
    torch.manual_seed(3)
    g = from_torch(_encoder(False, False).eval(), (torch.randn(1, 10, 32),))
    assert sum(n.op.name in ("softmax", "attention") for n in g.nodes) == 2
