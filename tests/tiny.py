"""Tiny, deterministic tokenizers and randomly initialised backbones for the test suite.

The two tokenizers are committed under ``tests/fixtures/tokenizers`` (:data:`TOKENIZERS`), so tests of
models need no data mirror; :func:`load_tokenizer` reads them and :func:`tiny_backbone` puts one beside a
random model, so tests exercise the real Hugging Face code paths (BERT WordPiece, byte-level BPE, Gemma 3,
BART) without downloading anything. They were made by :func:`char_tokenizer` and :func:`bpe_tokenizer`
from a few fixed files of the data mirror (``data_root``, laid out as ``OWNER+NAME/<path>``); to make them
again: ``python tests/tiny.py DATA_ROOT`` (``test_encoding`` checks that the recipe still gives them).
"""

from __future__ import annotations

import json
import shutil
import string
import sys
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

from modprompt.backbone import Backbone
from modprompt.modular.config import ModularPromptConfig
from modprompt.modular.model import ModularPromptModel

#: the committed tokenizers: ``char`` (BERT-style, one token per Chinese character) and ``bpe`` (byte-level)
TOKENIZERS = Path(__file__).resolve().parent / "fixtures" / "tokenizers"

#: Real text the vocabularies are drawn from: Wikipedia paragraphs, news titles, NLI premises, reviews
#: (one of them in traditional characters).
VOCAB_FILES = (
    "ymcui+cmrc2018/squad-style-data/cmrc2018_trial.json",
    "649453932+Chinese-Text-Classification-Pytorch/THUCNews/data/dev.txt",
    "CLUEbenchmark+OCNLI/data/ocnli/dev.json",
    "dbiir+UER-py/datasets/chnsenticorp/dev.tsv",
)
CHAR_VOCAB_CHARS = 3000
BPE_VOCAB_SIZE = 3000
BPE_TRAIN_LINES = 4000
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: Gemma's order (pad 0, eos 1, bos 2, unk 3), so Gemma3TextConfig's default special ids are right.
BPE_SPECIALS = ("<pad>", "</s>", "<s>", "<unk>")
KINDS = ("encoder", "decoder", "encoder-decoder")


def load_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The committed tokenizer ``name`` (``char`` or ``bpe``)."""
    return AutoTokenizer.from_pretrained(TOKENIZERS / name)


def save_tokenizer(name: str, dir: Path) -> PreTrainedTokenizerFast:
    """Copy the committed tokenizer ``name`` into ``dir`` (a model folder); return it loaded from there."""
    shutil.copytree(TOKENIZERS / name, dir, dirs_exist_ok=True)
    return AutoTokenizer.from_pretrained(dir)


def _chinese_vocab(data_root: Path) -> list[str]:
    """The most frequent non-ASCII characters of VOCAB_FILES, ties broken by code point."""
    counts: Counter[str] = Counter()
    for rel in VOCAB_FILES:
        counts.update(ch for ch in (data_root / rel).read_text(encoding="utf-8") if ord(ch) > 127 and not ch.isspace())
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [ch for ch, _ in ranked[:CHAR_VOCAB_CHARS]]


def char_tokenizer(dir: Path, data_root: Path) -> PreTrainedTokenizerFast:
    """A BERT-style Chinese tokenizer: one token per Chinese character, saved into ``dir``.

    ASCII letters and digits also get ``##`` continuation entries so English words and numbers split into
    single characters instead of collapsing into one ``[UNK]``.
    """
    alnum = string.ascii_lowercase + string.digits
    tokens = [*BERT_SPECIALS, *string.punctuation, *alnum, *(f"##{c}" for c in alnum), *_chinese_vocab(data_root)]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "vocab.txt").write_text("".join(f"{tok}\n" for tok in vocab), encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, tokenize_chinese_chars=True, model_max_length=512)
    tokenizer.save_pretrained(dir)
    return tokenizer


def _bpe_training_lines(data_root: Path) -> list[str]:
    """CMRC trial paragraphs and THUCNews titles, in file order: BPE_TRAIN_LINES lines in all."""
    trial = json.loads((data_root / VOCAB_FILES[0]).read_text(encoding="utf-8"))
    paragraphs = [p["context"] for article in trial["data"] for p in article["paragraphs"]]
    titles = [
        line.split("\t")[0]
        for line in (data_root / VOCAB_FILES[1]).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    lines = list(dict.fromkeys(paragraphs)) + titles
    return lines[:BPE_TRAIN_LINES]


def bpe_tokenizer(dir: Path, data_root: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer like Gemma's or Llama's (prepends ``<s>``, no closing token), saved into ``dir``.

    Its merges join several Chinese characters into one token and can also split a character's bytes
    across tokens, which is what makes mapping character spans to token spans non-trivial.
    """
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=list(BPE_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_bpe_training_lines(data_root), trainer)
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=512,
    )
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(dir)
    return tokenizer


def random_bank(backbone: Backbone, tasks: list[str], seed: int = 0, **config) -> ModularPromptModel:
    """A randomly initialised prompt bank on ``backbone`` with a router per task of ``tasks``, drawn from ``seed``.

    ``config`` sets :class:`~modprompt.modular.config.ModularPromptConfig` fields; the bank is small unless it
    says otherwise: 4 prompt tokens and rank 4 (the K of 8 modules is the default's).
    """
    torch.manual_seed(seed)
    config = ModularPromptConfig(backbone.num_layers, backbone.hidden_size, **{"num_tokens": 4, "rank": 4, **config})
    return ModularPromptModel(backbone, config, tasks)


def tiny_backbone(kind: str, dir: Path, tokenizer: str | None = None) -> Path:
    """Save a randomly initialised model of ``kind`` and its tokenizer into ``dir``; return ``dir``.

    ``encoder``: BertModel with the char tokenizer. ``decoder``: Gemma3ForCausalLM (the default
    backbone's architecture: one sliding-window and one global layer) with the BPE tokenizer.
    ``encoder-decoder``: BartForConditionalGeneration with the char tokenizer. ``tokenizer`` (``char`` or
    ``bpe``) replaces the kind's own, e.g. to compare an encoder and a decoder that differ only in attention.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown backbone kind {kind!r}; expected one of {KINDS}")
    # Imported here, not at the top: the model classes take seconds to import and tokenizer-only tests
    # should not pay for them.
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        BertConfig,
        BertModel,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
    )

    dir = Path(dir)
    torch.manual_seed(0)
    if kind == "encoder":
        tok = save_tokenizer(tokenizer or "char", dir)
        config = BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
        )
        model = BertModel(config)
    elif kind == "decoder":
        tok = save_tokenizer(tokenizer or "bpe", dir)
        config = Gemma3TextConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            intermediate_size=64,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        model = Gemma3ForCausalLM(config)
    else:
        tok = save_tokenizer(tokenizer or "char", dir)
        # Chinese BART checkpoints (fnlp/bart-base-chinese) use BERT's vocabulary the same way.
        config = BartConfig(
            vocab_size=len(tok),
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
            decoder_start_token_id=tok.sep_token_id,
            forced_eos_token_id=tok.sep_token_id,
        )
        model = BartForConditionalGeneration(config)
    model.save_pretrained(dir)
    return dir


if __name__ == "__main__":
    # Make the committed tokenizers again from the data mirror given as the one argument.
    mirror = Path(sys.argv[1])
    char_tokenizer(TOKENIZERS / "char", mirror)
    bpe_tokenizer(TOKENIZERS / "bpe", mirror)
