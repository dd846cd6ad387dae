"""(Over 500 lines: a catalog, one definition per benchmark model, kept in one place.)

PyTorch models for benchmarks (random, seeded weights, eval mode) and their ONNX export.

    MODELS[name]() -> (module, example_input); export_onnx(name, batch=1, dynamo=False) -> onnx.ModelProto

torchvision is not a dependency, so ResNet-50 is written out here. BERT's attention is plain matmul / softmax /
transpose / reshape (no nn.MultiheadAttention, no scaled_dot_product_attention), so the exported ONNX uses only
basic ops.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import onnx
import torch
from torch import nn
from torch.nn import functional as F

SEED = 0


# ------------------------------------------------------------------------------------------ ResNet-50

class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, in_ch = [], 64
        for i, blocks in enumerate(layers):
            width = 64 * 2 ** i
            stage = []
            for j in range(blocks):
                stage.append(Bottleneck(in_ch, width, stride=2 if (j == 0 and i > 0) else 1))
                in_ch = width * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _randomize_batchnorm(module: nn.Module) -> None:
    """Random running statistics, so BatchNorm is not the identity (fresh modules have mean 0, var 1)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.1, 0.1)


# ------------------------------------------------------------------------------------------ BERT

@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    ffn: int = 3072
    max_positions: int = 512
    eps: float = 1e-12


BERT_BASE = BertConfig()
BERT_SMALL = BertConfig(vocab_size=1000, hidden=128, layers=2, heads=4, ffn=512, max_positions=128)


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.hidden // cfg.heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)

    def _split(self, x):  # (B, S, H) -> (B, heads, S, head_dim)
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        b, _, s, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(b, s, self.heads * self.head_dim)


class EncoderLayer(nn.Module):
    """Post-LayerNorm BERT layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)), FFN with exact (erf) GELU."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.attn_out = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.intermediate = nn.Linear(cfg.hidden, cfg.ffn)
        self.output = nn.Linear(cfg.ffn, cfg.hidden)
        self.out_norm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)

    def forward(self, x):
        x = self.attn_norm(x + self.attn_out(self.attention(x)))
        return self.out_norm(x + self.output(F.gelu(self.intermediate(x))))


class BertEncoder(nn.Module):
    """Token + position embeddings, embedding LayerNorm, `layers` encoder layers; returns the last hidden state."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.positions = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))

    def forward(self, input_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.norm(self.tokens(input_ids) + self.positions(positions))
        for layer in self.layers:
            x = layer(x)
        return x


def _init_bert(module: nn.Module) -> None:
    """BERT's initialization (normal, std 0.02) with random LayerNorm affine params, so nothing is trivial."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.uniform_(m.bias, -0.02, 0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.uniform_(m.weight, 0.8, 1.2)
            nn.init.uniform_(m.bias, -0.1, 0.1)


# ------------------------------------------------------------------------------------------ MobileNetV2

class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0, 224x224): inverted residual blocks with depthwise convolutions and ReLU6."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]  # expansion, channels, repeats, first stride

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# ------------------------------------------------------------------------------------------ GPT-2

@dataclass
class GPT2Config:
    vocab_size: int = 50257
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    max_positions: int = 1024
    eps: float = 1e-5


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.hidden // cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        # additive causal mask: 0 on and below the diagonal, -1e4 above (a constant, so ONNX folds its slice)
        mask = torch.triu(torch.full((cfg.max_positions, cfg.max_positions), -1e4), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        b, s, h = x.shape
        q, k, v = self.qkv(x).split(h, dim=2)
        q, k, v = (t.view(b, s, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + self.mask[:s, :s]
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.proj(ctx.transpose(1, 2).reshape(b, s, h))


class GPT2Block(nn.Module):
    """Pre-LayerNorm decoder block with tanh-approximated GELU, as GPT-2."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.fc = nn.Linear(cfg.hidden, 4 * cfg.hidden)
        self.out = nn.Linear(4 * cfg.hidden, cfg.hidden)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.positions = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.blocks = nn.ModuleList(GPT2Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden, eps=cfg.eps)

    def forward(self, input_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.tokens(input_ids) + self.positions(positions)
        for block in self.blocks:
            x = block(x)
        return torch.matmul(self.ln_f(x), self.tokens.weight.t())  # logits, tied to the token embedding


# ------------------------------------------------------------------------------------------ LSTM

class LSTMClassifier(nn.Module):
    """A one-layer LSTM over a sequence of feature vectors; the last hidden state feeds a linear classifier."""

    def __init__(self, features: int = 128, hidden: int = 256, classes: int = 10):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        return self.fc(h[-1])


class GRUClassifier(nn.Module):
    """A one-layer GRU over feature vectors; the last hidden state feeds a linear classifier."""

    def __init__(self, features: int = 128, hidden: int = 256, classes: int = 10):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        _, h = self.gru(x)
        return self.fc(h[-1])


# ------------------------------------------------------------------------------------------ ViT

@dataclass
class ViTConfig:
    image: int = 224
    patch: int = 16
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    ffn: int = 3072
    classes: int = 1000
    eps: float = 1e-6


class ViTBlock(nn.Module):
    """Pre-LayerNorm encoder block (attention as plain matmul/softmax, exact GELU)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.attn = SelfAttention(BertConfig(hidden=cfg.hidden, heads=cfg.heads))
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.ln2 = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.fc1 = nn.Linear(cfg.hidden, cfg.ffn)
        self.fc2 = nn.Linear(cfg.ffn, cfg.hidden)

    def forward(self, x):
        x = x + self.proj(self.attn(self.ln1(x)))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    """ViT-base/16: patch embedding (a strided conv), class token, learned positions, encoder, head."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, cfg.hidden, cfg.patch, stride=cfg.patch)
        n = (cfg.image // cfg.patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.hidden))
        self.pos = nn.Parameter(torch.zeros(1, n + 1, cfg.hidden))
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.head = nn.Linear(cfg.hidden, cfg.classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


# ------------------------------------------------------------------------------------------ LLaMA block

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LlamaBlock(nn.Module):
    """A LLaMA-style decoder block: RMSNorm, causal attention with rotary position embeddings, SwiGLU MLP."""

    def __init__(self, hidden: int = 512, heads: int = 8, ffn: int = 1376, seq: int = 64):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.attn_norm, self.mlp_norm = RMSNorm(hidden), RMSNorm(hidden)
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(hidden, ffn, bias=False), nn.Linear(hidden, ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)
        inv = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        angles = torch.outer(torch.arange(seq).float(), inv)
        self.register_buffer("cos", torch.cat([angles.cos(), angles.cos()], -1), persistent=False)
        self.register_buffer("sin", torch.cat([angles.sin(), angles.sin()], -1), persistent=False)
        self.register_buffer("mask", torch.triu(torch.full((seq, seq), -1e4), diagonal=1), persistent=False)

    def _rotate(self, x):  # rotary embedding on (b, heads, s, head_dim)
        half = self.head_dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * self.cos + rotated * self.sin

    def forward(self, x):
        b, s, h = x.shape
        y = self.attn_norm(x)
        q, k, v = (p(y).view(b, s, self.heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        q, k = self._rotate(q), self._rotate(k)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + self.mask
        x = x + self.o(torch.matmul(torch.softmax(scores, -1), v).transpose(1, 2).reshape(b, s, h))
        y = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


# ------------------------------------------------------------------------------------------ registry

def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(SEED)
    return build().eval()


def _cnn(cls, batch: int):
    """An ImageNet-shaped CNN with randomized batch-norm statistics, and a 224x224 input batch."""
    m = _seeded(cls)
    torch.manual_seed(SEED + 1)
    _randomize_batchnorm(m)
    return m, torch.randn(batch, 3, 224, 224)


def _token_model(cls, cfg, batch: int, seq: int):
    """A Transformer over token ids, BERT-initialized, and a batch of random ids."""
    def build():
        m = cls(cfg)
        _init_bert(m)
        return m

    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(SEED))
    return _seeded(build), ids


def resnet50(batch: int = 1):
    return _cnn(ResNet, batch)


def bert_base(batch: int = 1):
    return _token_model(BertEncoder, BERT_BASE, batch, 128)


def bert_small(batch: int = 1):
    return _token_model(BertEncoder, BERT_SMALL, batch, 128)


def bert_layer(batch: int = 1):
    def build():
        m = EncoderLayer(BERT_BASE)
        _init_bert(m)
        return m

    return _seeded(build), torch.randn(batch, 128, BERT_BASE.hidden, generator=torch.Generator().manual_seed(SEED))


def mobilenet_v2(batch: int = 1):
    return _cnn(MobileNetV2, batch)


def gpt2_small(batch: int = 1):
    return _token_model(GPT2, GPT2Config(), batch, 64)


def gpt2_tiny(batch: int = 1):
    return _token_model(GPT2, GPT2Config(vocab_size=500, hidden=64, layers=2, heads=4, max_positions=64), batch, 16)


def lstm_classifier(batch: int = 1):
    return _seeded(LSTMClassifier), torch.randn(batch, 64, 128, generator=torch.Generator().manual_seed(SEED))


def gru_classifier(batch: int = 1):
    # 16 steps, not the LSTM's 64: the GRU still runs unrolled (~4 kernels a step), and 64 steps took ~60 s to compile
    # per path in the tests (tests/test_network_zoo.py compiles it three ways)
    return _seeded(GRUClassifier), torch.randn(batch, 16, 128, generator=torch.Generator().manual_seed(SEED))


def _vit(cfg: ViTConfig, batch: int):
    def build():
        m = ViT(cfg)
        _init_bert(m)
        with torch.no_grad():
            m.cls.normal_(std=0.02)
            m.pos.normal_(std=0.02)
        return m

    return _seeded(build), torch.randn(batch, 3, cfg.image, cfg.image, generator=torch.Generator().manual_seed(SEED))


def vit_base(batch: int = 1):
    return _vit(ViTConfig(), batch)


def vit_tiny(batch: int = 1):
    return _vit(ViTConfig(image=32, patch=8, hidden=64, layers=2, heads=4, ffn=128, classes=10), batch)


def llama_block(batch: int = 1):
    def build():
        m = LlamaBlock()
        _init_bert(m)
        for norm in (m.attn_norm, m.mlp_norm):
            nn.init.uniform_(norm.weight, 0.8, 1.2)
        return m

    return _seeded(build), torch.randn(batch, 64, 512, generator=torch.Generator().manual_seed(SEED))


def mlp(batch: int = 1):
    m = _seeded(lambda: nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                                      nn.Linear(512, 10)))
    return m, torch.randn(batch, 784, generator=torch.Generator().manual_seed(SEED))


# name -> builder(batch) -> (module in eval mode, example input)
MODELS: dict[str, Callable[..., tuple[nn.Module, torch.Tensor]]] = {
    "resnet50": resnet50,
    "bert_base": bert_base,
    "bert_layer": bert_layer,
    "bert_small": bert_small,  # 2 layers, hidden 128: a fast stand-in for bert_base in tests
    "mlp": mlp,
    "mobilenet_v2": mobilenet_v2,
    "gpt2_small": gpt2_small,  # 12 layers, 768 wide, seq 64, logits over 50257 tokens
    "gpt2_tiny": gpt2_tiny,  # 2 layers, 64 wide: a fast stand-in for tests
    "lstm_classifier": lstm_classifier,  # seq 64 x 128 features -> LSTM(256) -> 10 classes
    "gru_classifier": gru_classifier,  # the same with a GRU, over 16 steps
    "vit_base": vit_base,  # ViT-B/16 at 224x224
    "vit_tiny": vit_tiny,  # 2 layers, 64 wide, 32x32 images: a fast stand-in for tests
    "llama_block": llama_block,  # one LLaMA-style decoder block: RMSNorm, rotary embeddings, SwiGLU, seq 64 x 512
}

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def export_onnx(name: str, batch: int = 1, dynamo: bool = False, dynamic_axes: dict | None = None) -> onnx.ModelProto:
    """Export MODELS[name] to ONNX with static shapes: TorchScript exporter at opset 17, or dynamo at opset 18.
    `dynamic_axes` ({axis: name} of the input, TorchScript exporter only): those input dimensions stay symbolic."""
    module, x = MODELS[name](batch)
    if dynamic_axes:
        f = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), f, dynamo=False, opset_version=17, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: dynamic_axes})
        return onnx.load_from_string(f.getvalue())
    f = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=18, input_names=[INPUT_NAME],
                                     output_names=[OUTPUT_NAME], verbose=False)
            prog.save(f)
        else:
            torch.onnx.export(module, (x,), f, dynamo=False, opset_version=17, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME])
    return onnx.load_from_string(f.getvalue())


def example_feeds(name: str, batch: int = 1) -> tuple[dict, "torch.Tensor"]:
    """({input name: numpy array}, the PyTorch output) for MODELS[name]."""
    module, x = MODELS[name](batch)
    with torch.no_grad():
        y = module(x)
    return {INPUT_NAME: x.numpy()}, y.numpy()


# the Hugging Face transformers set (benchmarks/hf_models.py; needs the bench extra only when one is built)
from benchmarks import hf_models  # noqa: E402

MODELS.update(hf_models.MODELS)
