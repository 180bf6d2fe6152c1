"""Session-scoped fixtures for the tiny tokenizers and backbones of tests/tiny.py (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
from transformers import PreTrainedTokenizerFast


@pytest.fixture(scope="session")
def char_tok(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> PreTrainedTokenizerFast:
    """BERT-style character-level Chinese tokenizer (cls/sep, one token per Chinese character)."""
    return tiny.char_tokenizer(tmp_path_factory.mktemp("char_tok"), data_root)


@pytest.fixture(scope="session")
def bpe_tok(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer with multi-character Chinese tokens (bos prepended, no sep)."""
    return tiny.bpe_tokenizer(tmp_path_factory.mktemp("bpe_tok"), data_root)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """Folder with a random BertModel and the char tokenizer."""
    return tiny.tiny_backbone("encoder", tmp_path_factory.mktemp("tiny_encoder"), data_root)


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """Folder with a random Gemma3ForCausalLM and the BPE tokenizer."""
    return tiny.tiny_backbone("decoder", tmp_path_factory.mktemp("tiny_decoder"), data_root)


@pytest.fixture(scope="session")
def tiny_encoder_decoder(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """Folder with a random BartForConditionalGeneration and the char tokenizer."""
    return tiny.tiny_backbone("encoder-decoder", tmp_path_factory.mktemp("tiny_encoder_decoder"), data_root)
