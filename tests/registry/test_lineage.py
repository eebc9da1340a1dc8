"""Weights digests: what makes two base models "the same" for deduplication."""

from __future__ import annotations

import pytest

from tuneloop.errors import TuneloopError
from tuneloop.models.store import sha256_file
from tuneloop.registry.lineage import weights_sha256


def test_one_weight_file_digest_is_its_sha256_and_other_files_do_not_count(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    before = weights_sha256(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert before == weights_sha256(tmp_path) == sha256_file(tmp_path / "model.safetensors")


def test_sharded_and_onnx_weights_are_all_covered(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "model.onnx.data").write_bytes(b"tensors")
    before = weights_sha256(tmp_path)
    (tmp_path / "model.onnx.data").write_bytes(b"changed")
    assert weights_sha256(tmp_path) != before


def test_a_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TuneloopError, match="no weight files"):
        weights_sha256(tmp_path)


def test_unknown_weight_formats_fall_back_to_every_file_when_not_strict(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "weights.npz").write_bytes(b"w")
    before = weights_sha256(tmp_path, strict=False)
    (tmp_path / "weights.npz").write_bytes(b"x")
    assert weights_sha256(tmp_path, strict=False) != before
