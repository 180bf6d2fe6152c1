"""Session-scoped fixtures for the tiny tokenizers and backbones of tests/tiny.py (built once per session).

None of them reads the data mirror: the tokenizers are committed files (``tests/fixtures/tokenizers``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
from transformers import PreTrainedTokenizerFast


@pytest.fixture(scope="session")
def char_tok() -> PreTrainedTokenizerFast:
    """BERT-style character-level Chinese tokenizer (cls/sep, one token per Chinese character)."""
    return tiny.load_tokenizer("char")


@pytest.fixture(scope="session")
def bpe_tok() -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer with multi-character Chinese tokens (bos prepended, no sep)."""
    return tiny.load_tokenizer("bpe")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a random BertModel and the char tokenizer."""
    return tiny.tiny_backbone("encoder", tmp_path_factory.mktemp("tiny_encoder"))


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a random Gemma3ForCausalLM and the BPE tokenizer."""
    return tiny.tiny_backbone("decoder", tmp_path_factory.mktemp("tiny_decoder"))


@pytest.fixture(scope="session")
def tiny_encoder_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a random BartForConditionalGeneration and the char tokenizer."""
    return tiny.tiny_backbone("encoder-decoder", tmp_path_factory.mktemp("tiny_encoder_decoder"))
