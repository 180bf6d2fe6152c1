"""Shared pieces of the black-box tests: a small calibrated random bank and few-shot examples."""

from __future__ import annotations

from pathlib import Path

from tiny import random_bank

from modprompt.backbone import load_backbone
from modprompt.data.encoding import EncodingConfig, MRCEncoder
from modprompt.data.fewshot import fewshot_splits
from modprompt.data.mrc import MRCExample

N_TOKENS = 4
RANK = 4
MAX_LENGTH = 96


def examples(data_root: Path) -> tuple[list[MRCExample], list[MRCExample], list[MRCExample]]:
    """Small EPRSTMT slices (seed 0): 16 train, 8 dev, 24 test examples."""
    train, dev, test = fewshot_splits("eprstmt", 0, data_root)
    return train[:16], dev[:8], test[:24]


def tiny_bank(backbone_dir: Path, out: Path, train: list[MRCExample]) -> Path:
    """A random bank (K 8, n 4, r 4) whose prompt scales are calibrated on ``train``, saved to ``out``."""
    backbone = load_backbone(backbone_dir)
    model = random_bank(backbone, ["upstream"], num_tokens=N_TOKENS, rank=RANK, init_std=0.2)
    encoder = MRCEncoder(backbone.tokenizer, EncodingConfig(MAX_LENGTH, N_TOKENS))
    model.calibrate(encoder.collate(encoder.encode_all(train)))
    return model.save_pretrained(out)
