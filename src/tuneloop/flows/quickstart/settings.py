"""What the quickstart works on: its settings (every path injectable) and its work folder.

Light on purpose: `tuneloop quickstart --help` reads the defaults from here without loading the
stages (torch, transformers, peft, MLflow).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop import paths
from tuneloop.errors import TuneloopError
from tuneloop.flows.resume import State
from tuneloop.models.catalog import DEFAULT_MODEL
from tuneloop.registry.refs import check_name

DEFAULT_NAME = "acme-support"
DEFAULT_QUESTION = "What is the default admin address of a Nimbus Arc router?"
# keys the quickstart sets itself; a user override of one would be silently lost
FORCED_KEYS = ("model", "data.path", "data.val_path", "output_dir", "resume", "eval.final")


def examples_dir() -> Path | None:
    """examples/ of a source checkout (next to src/), else of the current directory."""
    for candidate in (Path(__file__).resolve().parents[4] / "examples", Path.cwd() / "examples"):
        if (candidate / "acme-kb").is_dir():
            return candidate
    return None


@dataclass
class Settings:
    """What the quickstart works on; every path is injectable (tests use a tiny model and corpus)."""

    workdir: Path = field(default_factory=lambda: paths.home() / "quickstart")
    model: str = DEFAULT_MODEL
    corpus: Path | None = None  # default: examples/acme-kb (docs/, qa/train.jsonl, qa/heldout.jsonl)
    train_config: Path | None = None  # default: examples/configs/quickstart-sft-lora.yaml
    overrides: list[str] = field(default_factory=list)
    name: str = DEFAULT_NAME
    eval_samples: int | None = None  # None: every held-out question
    eval_max_new_tokens: int = 32
    eval_batch_size: int = 20
    question: str = DEFAULT_QUESTION
    device: str = "auto"
    force: bool = False

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).expanduser().resolve()
        found = examples_dir()
        if self.corpus is None or self.train_config is None:
            if found is None:
                raise TuneloopError(
                    "the example corpus (examples/acme-kb) was not found",
                    hint="run from a source checkout (git clone …), or pass --corpus DIR and --config FILE",
                )
            self.corpus = self.corpus or found / "acme-kb"
            self.train_config = self.train_config or found / "configs" / "quickstart-sft-lora.yaml"
        self.corpus, self.train_config = Path(self.corpus).resolve(), Path(self.train_config).resolve()
        for key in (o.split("=", 1)[0] for o in self.overrides):
            if key in FORCED_KEYS:
                raise TuneloopError(
                    f"override '{key}' is set by the quickstart itself",
                    hint="use --model, --corpus or --workdir; other keys (epochs=, optim.lr=, …) are free",
                )

    def check(self) -> None:
        """Fail in a second, not after minutes: the corpus files exist, the training config loads."""
        _ = self.docs, self.train_file, self.heldout
        check_name(self.name)
        if not self.train_config.is_file():
            raise TuneloopError(
                f"training config '{self.train_config}' does not exist", hint="check --config"
            )

    @property
    def docs(self) -> Path:
        return _need(self.corpus / "docs", "folder")

    @property
    def train_file(self) -> Path:
        return _need(self.corpus / "qa" / "train.jsonl", "file")

    @property
    def heldout(self) -> Path:
        return _need(self.corpus / "qa" / "heldout.jsonl", "file")


def _need(path: Path, what: str) -> Path:
    ok = path.is_dir() if what == "folder" else path.is_file()
    if not ok:
        raise TuneloopError(
            f"the corpus has no {path.name} {what} ({path})",
            hint="a corpus folder holds docs/, qa/train.jsonl and qa/heldout.jsonl (see examples/acme-kb)",
        )
    return path


class Workdir:
    """The work folder, its state and a lock: two quickstarts on one folder would overwrite each other."""

    def __init__(self, settings: Settings):
        self.root = settings.workdir
        if self.root.exists() and not self.root.is_dir():
            raise TuneloopError(
                f"--workdir '{self.root}' is a file", hint="pass a folder (created if absent)"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = State(self.root)

    @contextmanager
    def locked(self) -> Iterator[Workdir]:
        with paths.exclusive(
            self.root,
            f"another quickstart is running in {self.root}",
            "wait for it to finish, or pass a different --workdir",
        ):
            yield self

    @property
    def data(self) -> Path:
        return self.root / "data" / "docs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def eval(self, which: str) -> Path:
        return self.root / "eval" / which
