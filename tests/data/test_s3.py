"""S3 input through fsspec/s3fs against a local moto server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from shards import split_rows, split_text

from tuneloop.data import prepare
from tuneloop.errors import TuneloopError
from tuneloop.train.dataset import dataset_files, read_rows

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture
def bucket(s3_endpoint: str, mixed_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="corpus")
    for path in sorted(mixed_corpus.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), "corpus", f"raw/{path.relative_to(mixed_corpus)}")
    return "s3://corpus/raw"


def _rows(out: Path) -> list[str]:
    return sorted(line for s in ("train", "val") for line in split_text(out, s).splitlines())


def test_s3_folder_gives_the_same_rows_and_checksums_as_local(
    bucket: str, s3_endpoint: str, mixed_corpus: Path, make_cfg, tmp_path: Path
) -> None:
    local = prepare([str(mixed_corpus)], tmp_path / "local", make_cfg(), workers=1)
    remote = prepare([bucket], tmp_path / "s3", make_cfg(input__endpoint_url=s3_endpoint), workers=2)
    assert _rows(tmp_path / "local") == _rows(tmp_path / "s3")
    assert [i["sha256"] for i in remote["inputs"]] == [i["sha256"] for i in local["inputs"]]
    assert remote["inputs"][0]["path"].startswith("s3://corpus/raw/")
    guide = mixed_corpus / "docs" / "guide.md"
    assert hashlib.sha256(guide.read_bytes()).hexdigest() in {i["sha256"] for i in remote["inputs"]}
    # ids contain the path, so the seeded split may differ; everything before the split may not
    per_split = {"train_rows", "val_rows"}
    assert {k: v for k, v in remote["counts"].items() if k not in per_split} == {
        k: v for k, v in local["counts"].items() if k not in per_split
    }
    assert (
        remote["tokens"]["rows"] == local["tokens"]["rows"]
        and remote["tokens"]["total"] == local["tokens"]["total"]
    )


def test_s3_glob_and_endpoint_from_environment(
    bucket: str, s3_endpoint: str, make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    m = prepare([f"{bucket}/docs/*.txt"], tmp_path / "out", make_cfg(), workers=1)
    assert sorted(Path(i["path"]).name for i in m["inputs"]) == ["zh-gbk.txt", "zh.txt"]
    rows = [r["text"] for r in split_rows(tmp_path / "out", "train")]
    assert any("北京" in r for r in rows) and m["pii"]["phone"] == 1


def test_dataset_written_to_s3_matches_local_and_train_reads_it_back(
    bucket: str,
    s3_endpoint: str,
    mixed_corpus: Path,
    make_cfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="datasets")
    cfg = make_cfg(output__shard_rows=4)
    local = prepare([str(mixed_corpus)], tmp_path / "local", cfg, workers=1)
    remote = prepare([str(mixed_corpus)], "s3://datasets/v1", cfg, workers=2)
    assert remote["fingerprint"] == local["fingerprint"] and remote["outputs"] == local["outputs"]
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="datasets")["Contents"]}
    assert keys == {f"v1/{name}" for name in local["outputs"]} | {"v1/manifest.json"}  # no temporary prefix
    train, val = dataset_files("s3://datasets/v1", None)
    assert len(train.files) > 1 and train.files[0] == "s3://datasets/v1/train/part-00000.jsonl"
    assert read_rows(train, "pretrain") == split_rows(tmp_path / "local", "train")
    assert read_rows(val, "pretrain") == split_rows(tmp_path / "local", "val")


def test_an_output_bucket_that_does_not_exist_fails_before_reading_naming_the_url(
    bucket: str, s3_endpoint: str, mixed_corpus: Path, make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    with pytest.raises(TuneloopError, match=r"cannot use 's3://no-such-bucket/v1'") as e:
        prepare([str(mixed_corpus)], "s3://no-such-bucket/v1", make_cfg(), workers=1)
    assert "bucket" in (e.value.hint or "")


def test_missing_credentials_name_the_url_and_the_fix(
    s3_endpoint: str, mixed_corpus: Path, make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # an instance from an earlier test holds credentials
    with pytest.raises(TuneloopError, match=r"cannot use 's3://datasets/v1'") as e:
        prepare([str(mixed_corpus)], "s3://datasets/v1", make_cfg(), workers=1)
    assert "AWS_ACCESS_KEY_ID" in (e.value.hint or ""), str(e.value)
    with pytest.raises(TuneloopError, match=r"cannot use 's3://datasets/v1'"):
        dataset_files("s3://datasets/v1", None)
