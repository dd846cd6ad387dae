"""Hugging Face transformers models with random weights (no download): the model set users export themselves,
beside the project's own re-implementations in models.py. Each builder takes the batch size and returns (module in
eval mode, example input), like models.MODELS; `transformers` (the bench extra) is imported only when one is built.

    hf_bert        BertModel (bert-base-uncased config), seq 128 -> last hidden state
    hf_distilbert  DistilBertModel (distilbert-base-uncased config), seq 128 -> last hidden state
    hf_vit         ViTForImageClassification (vit-base-patch16-224 config), 224x224 -> 1000 logits
    hf_convnext    ConvNextForImageClassification (convnext-tiny-224 config), 224x224 -> 1000 logits
"""

from __future__ import annotations

from typing import Callable

import torch

SEED = 0
SEQ = 128


class _Output(torch.nn.Module):
    """One tensor in, one tensor out: the model's last hidden state or its logits."""

    def __init__(self, model, field: str):
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, x):
        return getattr(self.model(x), self.field)


def _build(make, field: str) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return _Output(make(), field).eval()


def _ids(vocab: int, batch: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, SEQ), generator=torch.Generator().manual_seed(SEED))


def _image(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(SEED))


def hf_bert(batch: int = 1):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(attn_implementation="eager")
    return _build(lambda: BertModel(cfg, add_pooling_layer=False), "last_hidden_state"), _ids(cfg.vocab_size, batch)


def hf_distilbert(batch: int = 1):
    from transformers import DistilBertConfig, DistilBertModel

    cfg = DistilBertConfig(attn_implementation="eager")
    return _build(lambda: DistilBertModel(cfg), "last_hidden_state"), _ids(cfg.vocab_size, batch)


def hf_vit(batch: int = 1):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(num_labels=1000, attn_implementation="eager")
    return _build(lambda: ViTForImageClassification(cfg), "logits"), _image(batch)


def hf_convnext(batch: int = 1):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    cfg = ConvNextConfig(num_labels=1000)  # convnext-tiny: depths 3-3-9-3, widths 96-768
    return _build(lambda: ConvNextForImageClassification(cfg), "logits"), _image(batch)


MODELS: dict[str, Callable] = {
    "hf_bert": hf_bert,
    "hf_distilbert": hf_distilbert,
    "hf_vit": hf_vit,
    "hf_convnext": hf_convnext,
}
