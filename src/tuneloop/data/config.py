"""`DataConfig`: every knob of `tuneloop data prepare`, typed and validated (YAML + key=value overrides).

The resolved config is written into the manifest, so a dataset records exactly how it was made.
Engine choice and worker count are *not* here: they change how fast, never what comes out.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tuneloop.config import Config

Kind = Literal["pretrain", "sft", "preference"]
# also the priority order when two detectors claim overlapping text
PII_TYPES = ("secret", "email", "id_card", "bank_card", "phone", "ip")
PIIType = Literal["secret", "email", "id_card", "bank_card", "phone", "ip"]


class InputConfig(Config):
    """Where and how raw files are read."""

    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options, e.g. {'key': ..., 'secret': ...} for s3://"
    )
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, OSS); env AWS_ENDPOINT_URL works too"
    )
    text_field: str = Field("text", description="field holding the text in jsonl/csv/parquet rows (pretrain)")
    chat_to_text: bool = Field(
        False,
        description="pretrain: render chat rows (OpenAI messages, ShareGPT, alpaca) as 'User: ...' / "
        "'Assistant: ...' paragraphs; off: such rows are skipped, each listed with file, line and reason",
    )
    encoding: str | None = Field(None, description="force an encoding instead of detecting it")
    html_extractor: Literal["trafilatura", "plain"] = "trafilatura"
    max_document_mb: float = Field(
        64, gt=0, description="a .txt/.md file larger than this is streamed as documents of whole paragraphs"
    )


class OutputConfig(Config):
    """Where and how the dataset is written (`--out`: a folder or any fsspec URL such as s3://)."""

    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        exclude=True,  # credentials never land in the manifest
        description="fsspec options for an --out URL, e.g. {'key': ..., 'secret': ...} for s3://",
    )
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint for --out (MinIO, OSS); env AWS_ENDPOINT_URL works too"
    )
    shard_rows: int = Field(
        100_000, ge=1, description="rows per shard file (train/part-00000.jsonl, ...): ~50-200 MB of text"
    )


class CleanConfig(Config):
    normalization: Literal["NFC", "NFKC", "none"] = Field(
        "NFC", description="NFKC also folds full-width punctuation to ASCII, which changes Chinese text"
    )
    remove_control: bool = True
    normalize_whitespace: bool = True


class QualityConfig(Config):
    enabled: bool = True
    min_chars: int = Field(20, ge=0, description="non-space characters")
    max_chars: int = Field(2_000_000, ge=1)
    max_symbol_ratio: float = Field(0.4, ge=0, le=1)
    max_duplicate_line_fraction: float = Field(0.3, ge=0, le=1)
    max_duplicate_ngram_fraction: float = Field(0.3, ge=0, le=1)
    ngram_size: int = Field(5, ge=2, description="n-gram of words, or of characters for CJK")
    apply_to_chat: bool = Field(
        False, description="run all quality filters on sft/preference rows too (max_chars always applies)"
    )


class DedupConfig(Config):
    exact: bool = True
    near: bool = True
    threshold: float = Field(
        0.8, gt=0, le=1, description="estimated Jaccard similarity above which two docs are near-duplicates"
    )
    num_perm: int = Field(
        128, ge=8, description="MinHash values per document (bins of one-permutation MinHash)"
    )
    bands: int = Field(16, ge=1)
    shingle_size: int = Field(5, ge=1, description="characters per shingle (works for CJK: no word split)")
    seed: int = 1
    sample_pairs: int = Field(20, ge=0, description="removed pairs kept in the manifest")

    @model_validator(mode="after")
    def _bands_divide(self) -> DedupConfig:
        if self.num_perm % self.bands:
            raise ValueError(
                f"dedup.num_perm ({self.num_perm}) must be a multiple of dedup.bands ({self.bands})"
            )
        return self

    @property
    def rows(self) -> int:
        return self.num_perm // self.bands


class PIIConfig(Config):
    mode: Literal["redact", "drop", "report", "off"] = Field(
        "redact",
        description="redact: typed placeholders (<EMAIL>); drop: remove documents with PII; "
        "report: count and show examples in the manifest, change nothing",
    )
    types: list[PIIType] = Field(
        default_factory=lambda: list(PII_TYPES),
        description="secret (API keys, tokens, private keys, passwords), email, id_card (Chinese "
        "resident ID), bank_card, phone, ip",
    )
    examples: int = Field(
        3, ge=0, le=20, description="per type, matches shown in the manifest in context (masked)"
    )


class ChunkConfig(Config):
    max_tokens: int = Field(512, ge=8)
    overlap: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _overlap_fits(self) -> ChunkConfig:
        if self.overlap >= self.max_tokens // 2:
            raise ValueError(f"chunk.overlap ({self.overlap}) must be less than half of chunk.max_tokens")
        return self


class SplitConfig(Config):
    val_fraction: float = Field(0.05, ge=0, lt=1)
    seed: int = 42


class DataConfig(Config):
    kind: Kind = "pretrain"
    tokenizer: str = Field(
        "smollm2-135m-instruct", description="model reference or folder whose tokenizer counts tokens"
    )
    input: InputConfig = Field(default_factory=InputConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PIIConfig = Field(default_factory=PIIConfig)
    chunk: ChunkConfig = Field(default_factory=ChunkConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    parquet: bool = Field(True, description="also write a .parquet copy of every .jsonl shard")
    max_skips_listed: int = Field(1000, ge=0, description="skipped items listed one by one in the manifest")
