"""General-ability tasks through lm-evaluation-harness: `run_tasks(model, tasks)` and `compare_on_tasks`.

A fine-tune that learns a product's facts can forget what the base model knew; these tasks measure
that. tuneloop ships four small tasks that run offline (tasks/: multiple choice and short answers,
English and Chinese; the group `tuneloop_general` is all four), and any lm-evaluation-harness task
works by name or YAML path when its data is available locally.

Three ways to run the model (`backend`):
- `engine` (default): our engine in this process (lm_eval_engine.EngineLM), adapters as served;
- `hf`: the harness's own transformers model (`HFLM`), the reference the engine is checked against;
- `api`: any OpenAI-compatible server's /v1/completions with echo + logprobs (the harness's
  `local-completions`), e.g. `tuneloop serve`; the model is then the served name, and a local
  tokenizer is needed to split prompts from continuations.

Every task reports each metric with its standard error and a confidence interval, and every
example's scores, so the gate can compare two models example by example (`compare_on_tasks`).
"""

from __future__ import annotations

import difflib
import functools
import gc
import logging
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneloop.errors import TuneloopError, missing_extra
from tuneloop.models.formats import folder_format
from tuneloop.models.loading import pick_device
from tuneloop.models.resolve import resolve_model

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DEFAULT_TASKS = ("tuneloop_general",)
Backend = Literal["engine", "hf", "api"]
BACKENDS: tuple[str, ...] = ("engine", "hf", "api")


@dataclass
class MetricScore:
    value: float
    stderr: float | None  # the harness's (sample standard deviation / sqrt(n), or its bootstrap)
    low: float | None  # confidence interval: Wilson for 0/1 scores, value +- z * stderr otherwise
    high: float | None
    method: str  # wilson | normal | none


@dataclass
class DocScore:
    """One example of a task: its scores, and what the model generated (generation tasks)."""

    doc_id: int  # position in the task's evaluation split
    id: str | None  # the document's own `id` field, when it has one (tuneloop's tasks do)
    scores: dict[str, float]
    prediction: str | None = None
    loglikelihoods: list[float] | None = None  # multiple choice: each choice's, in the task's order


@dataclass
class TaskResult:
    task: str
    n: int
    primary: str  # the task's first metric: what a one-number summary or the gate uses
    metrics: dict[str, MetricScore]
    higher_is_better: dict[str, bool]
    docs: list[DocScore] = field(default_factory=list)

    def values(self, metric: str | None = None) -> list[float]:
        """Per-example values of `metric` (default: the primary one), in doc_id order."""
        name = metric or self.primary
        return [float(d.scores[name]) for d in self.docs]


@dataclass
class TasksReport:
    model: str
    backend: str
    tasks: dict[str, TaskResult]
    groups: dict[str, list[str]]  # group name -> its tasks
    confidence: float
    limit: int | None
    timing: dict[str, float]
    lm_eval_version: str

    def to_dict(self, docs: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not docs:
            for t in out["tasks"].values():
                t.pop("docs")
        return out


@dataclass
class PairedTask:
    """One task's per-example values of two models on the same examples, in the same order: what
    the gate turns into a paired interval ("no significant drop on the general tasks")."""

    task: str
    metric: str
    higher_is_better: bool
    doc_ids: list[int]
    ids: list[str | None]
    base: list[float]
    candidate: list[float]

    @property
    def n(self) -> int:
        return len(self.doc_ids)

    @property
    def mean_difference(self) -> float:
        """candidate - base, averaged over examples (positive: the candidate scores higher)."""
        return sum(c - b for b, c in zip(self.base, self.candidate, strict=True)) / self.n if self.n else 0.0


# ------------------------------------------------------------------ tasks


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise missing_extra("lm_eval", "eval") from None
    return lm_eval


def shipped_tasks() -> list[str]:
    """tuneloop's own task, tag and group names (offline, in tasks/)."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False).all_tasks


def task_manager(names: Sequence[str]) -> Any:
    """A harness TaskManager that knows every name in `names`, or a clear error listing what exists.

    tuneloop's tasks are indexed alone first (a fraction of a second); only a name they do not know
    makes the harness index its built-in tasks too (thousands of YAML files: seconds to a minute).
    """
    _lm_eval()
    from lm_eval.tasks import TaskManager

    if not names:
        raise TuneloopError("no task given", hint=f"e.g. --tasks {DEFAULT_TASKS[0]}")
    local = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    unknown = [n for n in names if n not in local.all_tasks and not _is_yaml(n)]
    if not unknown:
        return local
    full = _full_manager()
    missing = [n for n in unknown if n not in full.all_tasks]
    if missing:
        close = sorted({m for n in missing for m in difflib.get_close_matches(n, full.all_tasks, n=3)})
        raise TuneloopError(
            f"unknown task{'s' if len(missing) > 1 else ''}: {', '.join(missing)}",
            hint=(f"did you mean {', '.join(close)}? " if close else "")
            + f"tuneloop ships {', '.join(local.all_tasks)}; any lm-evaluation-harness task or group "
            "name works too (`lm-eval ls tasks` lists them), or the path of a task YAML file",
        )
    return full


@functools.cache
def _full_manager() -> Any:
    """tuneloop's tasks and the harness's built-in ones, indexed once per process (the slow part)."""
    from lm_eval.tasks import TaskManager

    with _quiet():
        return TaskManager(include_path=str(TASKS_DIR))


def _is_yaml(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).is_file()


def _load_tasks(manager: Any, names: Sequence[str]) -> None:
    """Build the tasks once before any model loads, so missing data fails in seconds, not after."""
    try:
        with _quiet():
            manager.load(list(names))
    except Exception as e:  # the harness raises whatever `datasets` raised (offline, not cached, ...)
        raise TuneloopError(
            f"could not load the data of task(s) {', '.join(names)}: {type(e).__name__}: {e}",
            hint="tuneloop's own tasks run offline; another harness task needs its data set in the local "
            "Hugging Face cache (download it once while online)",
        ) from None


@contextmanager
def _quiet():
    """The harness logs every task it builds at INFO/WARNING (custom-dataset notes, seeds): errors only."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------ models


def make_lm(
    model: str,
    backend: Backend = "engine",
    *,
    device: str = "auto",
    base_url: str | None = None,
    tokenizer: str | None = None,
    api_key: str | None = None,
    num_concurrent: int = 1,
    batch_size: int = 8,
) -> Any:
    """The harness model for `model` on `backend` (see the module docstring)."""
    _lm_eval()
    if backend == "engine":
        from tuneloop.evaluation.lm_eval_engine import EngineLM  # imports lm_eval (the eval extra) and torch

        return EngineLM(model, device=device)
    if backend == "hf":
        return _hf_lm(model, device, batch_size)
    if backend == "api":
        return _api_lm(model, base_url, tokenizer, api_key, num_concurrent)
    raise TuneloopError(f"unknown backend '{backend}'", hint=f"one of {', '.join(BACKENDS)}")


def _hf_lm(model: str, device: str, batch_size: int) -> Any:
    from lm_eval.models.huggingface import HFLM

    resolved = resolve_model(model)
    kwargs: dict[str, Any] = {"device": pick_device(device), "batch_size": batch_size}
    # float32 on the CPU, as the engine (the folder's own dtype, often bf16, would differ in the 3rd digit)
    kwargs["dtype"] = "float32" if kwargs["device"] == "cpu" else "auto"
    if folder_format(resolved.path) == "adapter":
        from tuneloop.evaluation.lm_eval_engine import adapter_base  # lm_eval (the eval extra)

        kwargs.update(pretrained=str(adapter_base(resolved.path)[0]), peft=str(resolved.path))
    else:
        kwargs["pretrained"] = str(resolved.path)
    return HFLM(**kwargs)


def _api_lm(
    model: str, base_url: str | None, tokenizer: str | None, api_key: str | None, concurrent: int
) -> Any:
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    if not base_url:
        raise TuneloopError("the api backend needs the server's URL", hint="--api-base http://HOST:PORT/v1")
    tok_ref = tokenizer or model
    try:
        tok_path = resolve_model(tok_ref).path
    except TuneloopError:
        raise TuneloopError(
            f"the api backend needs a local tokenizer for '{model}' (to split prompts from continuations)",
            hint="--tokenizer REF: the served model's folder, store name or base model",
        ) from None
    url = base_url.rstrip("/")
    url = url if url.endswith("/completions") else url + "/completions"
    header = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return LocalCompletionsAPI(
        model=model,
        base_url=url,
        tokenizer=str(tok_path),
        tokenizer_backend="huggingface",
        num_concurrent=concurrent,
        max_retries=1,
        header=header,
    )


# ------------------------------------------------------------------ running


def run_tasks(
    model: str,
    tasks: Sequence[str] = DEFAULT_TASKS,
    *,
    backend: Backend = "engine",
    limit: int | None = None,
    confidence: float = 0.95,
    lm: Any = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    **model_kwargs: Any,
) -> TasksReport:
    """Run harness tasks on a model; per-task metrics with CIs and per-example scores.

    `lm` is a harness model built already (e.g. `make_lm(...)`, kept for several runs); otherwise one
    is built from `model`, `backend` and `model_kwargs` (make_lm's keywords) and freed at the end.
    """
    lm_eval = _lm_eval()
    names = list(dict.fromkeys(tasks))
    manager = task_manager(names)
    _load_tasks(manager, names)
    started = time.perf_counter()
    own = lm is None
    if own:
        lm = make_lm(model, backend, **model_kwargs)
    loaded = time.perf_counter()
    try:
        with _quiet():
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=names,
                task_manager=manager,
                limit=limit,
                num_fewshot=num_fewshot,
                log_samples=True,
                apply_chat_template=apply_chat_template,
                bootstrap_iters=1000,
            )
    finally:
        if own:
            del lm
            gc.collect()  # an engine holds its KV cache until collected: free it before the next model
    results = {name: _task_result(name, out, confidence) for name in out["samples"]}
    return TasksReport(
        model=str(model),
        backend=backend,
        tasks=results,
        groups={g: list(children) for g, children in out.get("group_subtasks", {}).items() if children},
        confidence=confidence,
        limit=limit,
        timing={"load_s": loaded - started, "run_s": time.perf_counter() - loaded},
        lm_eval_version=lm_eval.__version__,
    )


def _task_result(name: str, out: dict[str, Any], confidence: float) -> TaskResult:
    summary = out["results"][name]
    higher = out.get("higher_is_better", {}).get(name, {})
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    metrics: dict[str, MetricScore] = {}
    docs: dict[int, DocScore] = {}
    for key, value in summary.items():
        if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        label = metric if filt == "none" else f"{metric} ({filt})"
        per_doc = [s for s in samples if s.get("filter", "none") == filt and metric in s]
        for s in per_doc:
            doc = docs.setdefault(s["doc_id"], DocScore(s["doc_id"], _doc_id(s), {}, *_responses(s)))
            doc.scores[label] = float(s[metric])
        stderr = summary.get(f"{metric}_stderr,{filt}")
        values = [float(s[metric]) for s in per_doc]
        metrics[label] = _score(float(value), _number(stderr), values, confidence)
    primary = _first_listed(out.get("configs", {}).get(name, {}), metrics) or next(iter(metrics), "")
    return TaskResult(
        task=name,
        n=len(docs),
        primary=primary,
        metrics=metrics,
        higher_is_better={m: bool(higher.get(m.split(" ", 1)[0], True)) for m in metrics},
        docs=[docs[i] for i in sorted(docs)],
    )


def _first_listed(config: dict[str, Any], metrics: dict[str, MetricScore]) -> str | None:
    """The first metric of the task's metric_list that was computed (the YAML's order is the author's)."""
    for entry in config.get("metric_list") or []:
        name = entry.get("metric") if isinstance(entry, dict) else None
        if isinstance(name, str):
            found = [m for m in metrics if m == name or m.startswith(name + " (")]
            if found:
                return found[0]
    return None


def _doc_id(sample: dict[str, Any]) -> str | None:
    doc = sample.get("doc")
    value = doc.get("id") if isinstance(doc, dict) else None
    return None if value is None else str(value)


def _responses(sample: dict[str, Any]) -> tuple[str | None, list[float] | None]:
    """(generated text, None) for a generation task; (None, each choice's loglikelihood) for multiple choice."""
    resp = sample.get("filtered_resps")
    if not isinstance(resp, list) or not resp:
        return None, None
    if isinstance(resp[0], str):
        return resp[0], None
    if all(isinstance(r, (list, tuple)) and r and isinstance(r[0], (int, float)) for r in resp):
        return None, [float(r[0]) for r in resp]
    return None, None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):  # the harness writes "N/A" where it has no standard error
        return None
    return number if math.isfinite(number) else None


def _score(value: float, stderr: float | None, values: list[float], confidence: float) -> MetricScore:
    """The metric with a two-sided interval: Wilson's for 0/1 scores (right at 0 and 1, unlike the
    normal approximation that the harness's standard error implies), value +- z * stderr otherwise."""
    from scipy.stats import binomtest, norm

    if values and all(v in (0.0, 1.0) for v in values):
        k, n = int(sum(values)), len(values)
        ci = binomtest(k, n).proportion_ci(confidence, method="wilson")
        return MetricScore(value, stderr, float(ci.low), float(ci.high), "wilson")
    if stderr is None:
        return MetricScore(value, None, None, None, "none")
    z = float(norm.ppf(0.5 + confidence / 2))
    return MetricScore(value, stderr, value - z * stderr, value + z * stderr, "normal")


# ------------------------------------------------------------------ two models


def paired_results(
    base: TasksReport, candidate: TasksReport, metric: str | None = None
) -> dict[str, PairedTask]:
    """Per task, both models' values of `metric` (default: each task's primary) on the examples both ran."""
    paired = {}
    for name, b in base.tasks.items():
        c = candidate.tasks.get(name)
        if c is None:
            raise TuneloopError(f"task '{name}' was run on the base model but not on the candidate")
        m = metric or b.primary
        if m not in b.metrics or m not in c.metrics:
            raise TuneloopError(
                f"task '{name}' has no metric '{m}'", hint=f"its metrics: {', '.join(b.metrics)}"
            )
        cand = {d.doc_id: d for d in c.docs}
        common = [d for d in b.docs if d.doc_id in cand]
        paired[name] = PairedTask(
            task=name,
            metric=m,
            higher_is_better=b.higher_is_better.get(m, True),
            doc_ids=[d.doc_id for d in common],
            ids=[d.id for d in common],
            base=[float(d.scores[m]) for d in common],
            candidate=[float(cand[d.doc_id].scores[m]) for d in common],
        )
    return paired


def compare_on_tasks(
    base_model: str,
    candidate_model: str,
    tasks: Sequence[str] = DEFAULT_TASKS,
    **kwargs: Any,
) -> tuple[TasksReport, TasksReport, dict[str, PairedTask]]:
    """Run the tasks on both models (one after the other, one in memory at a time) and pair the
    examples: (base report, candidate report, task -> PairedTask). `kwargs` go to `run_tasks`."""
    base = run_tasks(base_model, tasks, **kwargs)
    candidate = run_tasks(candidate_model, tasks, **kwargs)
    return base, candidate, paired_results(base, candidate)
