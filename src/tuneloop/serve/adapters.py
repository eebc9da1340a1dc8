"""LoRA adapters of a served base model: checked when registered, kept in the engine's slots as a cache.

An engine holds at most `max_loras` adapters at once (its slots); the gateway may serve more. Every
adapter a base serves is *registered* here (config `lora:` entries, `POST /v1/load_lora_adapter`);
a registered adapter is *resident* while it occupies a slot. A request for an adapter that is not
resident loads it first, evicting the least-recently-used resident adapter with no request in
flight; when every resident adapter is busy, the request waits for one to go idle (bounded by the
request's timeout, like any wait). So more adapters than slots never reach the engine as an error.

Invariants (all state changes happen on the event loop, between awaits):
- an adapter is unloaded from the engine only when no request holds it (`acquire` .. `release`);
- slots in use = resident + loading + unloading <= max_loras (an unload finishes before the load that
  replaces it starts), so the engine never refuses a load for lack of a slot;
- engine calls (blocking; over a pipe for `EngineProcess`) run in worker threads, inside tasks owned
  by the cache: a request cancelled while it waits (client gone, timeout) never leaves a slot half
  loaded or half counted.

`unregister` (an unloaded or replaced adapter) frees the slot once the adapter's last request ends.
`check_adapter` refuses what the engine could not serve (not an adapter, DoRA, a rank above the slot
rank, tensors of another base's shape) with a message that names the file and the fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

from tuneloop.engine.config import EngineConfig
from tuneloop.engine.lora import KEY
from tuneloop.errors import TuneloopError
from tuneloop.models.formats import require_complete
from tuneloop.serve.errors import APIError

log = logging.getLogger("tuneloop.serve")

DEFAULT_SLOTS = EngineConfig.__dataclass_fields__["max_loras"].default
# the in-process engine applies an abort between two steps: an unload right after a request ended may
# find it still there for a step, so it is tried again this long
UNLOAD_RETRY_S = 10.0


class AdapterError(TuneloopError):
    """An adapter the engine cannot serve on this base (the gateway answers 400 with the message)."""


# ---------------------------------------------------------------- checks before registering


def check_adapter(folder: Path, ref: str, base: Path, slot_rank: int, setting: str) -> int:
    """The adapter's rank, once `folder` is known to be a PEFT LoRA adapter the engine can serve on
    `base`. `slot_rank`: the largest rank a slot holds (0: any); `setting`: where to raise it."""
    require_complete(folder, ref)  # readable adapter_config.json and weights, else names what is missing
    if not (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
        raise AdapterError(f"'{ref}' is a full model, not a LoRA adapter (no adapter_config.json)")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"'{ref}' is a {cfg['peft_type']} adapter; only LoRA adapters are served")
    if cfg.get("use_dora"):
        raise AdapterError(
            f"'{ref}' is a DoRA adapter, which the engine does not serve",
            hint="merge it into its base with `tuneloop export --merge` and serve that",
        )
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise AdapterError(
            f"'{ref}' has no adapter_model.safetensors (the engine reads safetensors only)",
            hint="save it again with save_pretrained(..., safe_serialization=True)",
        )
    rank = cfg.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"'{ref}': adapter_config.json has no valid rank 'r' ({rank!r})")
    if slot_rank and rank > slot_rank:
        raise AdapterError(
            f"adapter '{ref}' has rank {rank}, above the engine's LoRA slot rank of {slot_rank} "
            f"(max_lora_rank, with LoRA decode in CUDA graphs)",
            hint=f"raise {setting} to at least {rank} in serve.yaml (or set engine.lora_in_graph: false) "
            "and restart the server",
        )
    _check_shapes(weights, ref, rank, base)
    return rank


def _check_shapes(weights: Path, ref: str, rank: int, base: Path) -> None:
    """Each LoRA tensor fits a decoder layer of `base`: an adapter trained on another model is a 400
    here, not a shape error inside a step."""
    cfg = json.loads((base / "config.json").read_text())
    shapes, layers = _module_shapes(cfg), cfg.get("num_hidden_layers")
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            m = KEY.search(key)
            if m is None:
                raise AdapterError(
                    f"adapter '{ref}': tensor {key} is not a LoRA weight of a decoder layer's "
                    "attention or MLP (the engine serves those only)"
                )
            layer, module, ab = int(m[1]), m[2], m[3]
            if shapes is None or module not in shapes:  # a base the engine runs through transformers
                continue
            if layers is not None and layer >= layers:
                raise _mismatch(ref, base, f"it has layer {layer}, the base has {layers} layers")
            n_in, n_out = shapes[module]
            want = (rank, n_in) if ab == "A" else (n_out, rank)
            got = tuple(f.get_slice(key).get_shape())
            if got != want:
                raise _mismatch(ref, base, f"tensor {key} is {list(got)}, the base needs {list(want)}")


def _mismatch(ref: str, base: Path, detail: str) -> AdapterError:
    return AdapterError(
        f"adapter '{ref}' does not fit the base model '{base.name}': {detail}",
        hint="load it on the base it was trained on (base_model, or its `model:` in serve.yaml)",
    )


def _module_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, int]] | None:
    """(in, out) features of each LoRA target of a Llama-family decoder layer; None for another layout."""
    try:
        h, heads, inter = cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"]
    except KeyError:
        return None
    kv = cfg.get("num_key_value_heads") or heads
    d = cfg.get("head_dim") or h // heads
    return {
        "q_proj": (h, heads * d),
        "k_proj": (h, kv * d),
        "v_proj": (h, kv * d),
        "o_proj": (heads * d, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }


# ---------------------------------------------------------------- the slot cache


@dataclass
class _Load:
    task: asyncio.Task
    claims: int = 0  # requests waiting for this load: each holds the adapter once it is in


@dataclass
class AdapterCache:
    """The adapters of one engine: registered ones, and the resident ones in LRU order."""

    engine: Any  # AsyncEngine or EngineProcess: load_lora / unload_lora / lora_names (blocking)
    slots: int = DEFAULT_SLOTS  # the engine's max_loras
    slot_rank: int = 0  # the largest rank a slot holds (max_lora_rank with lora_in_graph); 0: any
    label: str = ""  # the base model ("NAME/VERSION" or its folder's name), for metrics
    owner: str = ""  # the served name whose `engine:` settings built the engine (named in hints)
    registered: dict[str, Path] = field(default_factory=dict)  # engine name -> adapter folder
    resident: OrderedDict[str, None] = field(default_factory=OrderedDict)  # least recently used first
    busy: Counter[str] = field(default_factory=Counter)  # requests holding each adapter
    evictions: int = 0  # resident adapters unloaded to make room for another
    loads: int = 0  # adapters loaded into a slot
    _wanted: Counter[str] = field(default_factory=Counter)  # requests waiting for each adapter's load
    _loading: dict[str, _Load] = field(default_factory=dict)
    _unloading: set[str] = field(default_factory=set)
    _waiters: list[asyncio.Future] = field(default_factory=list)
    _tasks: set[asyncio.Task] = field(default_factory=set)

    @classmethod
    def for_engine(cls, engine: Any, stats: Any, label: str) -> AdapterCache:
        """Sized from the engine's stats (max_loras, and max_lora_rank where slots have a fixed rank)."""
        return cls(
            engine, getattr(stats, "max_loras", 0) or DEFAULT_SLOTS, getattr(stats, "max_lora_rank", 0), label
        )

    @property
    def rank_setting(self) -> str:
        """Where the slot rank is set, for the hint of a too-large rank."""
        return f"engine.max_lora_rank of model '{self.owner}'" if self.owner else "engine.max_lora_rank"

    @property
    def waiting(self) -> int:
        """Requests waiting for their adapter to be loaded (a slot, or the load itself)."""
        return sum(self._wanted.values())

    @property
    def wanted(self) -> set[str]:
        """Adapters that requests wait for (not resident yet)."""
        return {n for n, k in self._wanted.items() if k > 0}

    def register(self, served_name: str, folder: Path) -> str:
        """Register an adapter (checked by `check_adapter`); return its engine name, fresh for every
        registration, so a reloaded version never takes the name of one still serving. Safe from a
        worker thread (build_clients): it only reads the sets (each copied in one C call) and adds a key."""
        taken = {*self.registered, *self.resident, *self._loading, *self._unloading}
        name, n = served_name, 0
        while name in taken:
            n += 1
            name = f"{served_name}#{n}"
        self.registered[name] = folder
        return name

    async def unregister(self, name: str) -> None:
        """No new request may use it; its slot is freed now if idle, else when its last request ends."""
        self.registered.pop(name, None)
        self._sweep()
        self._wake()  # requests waiting to load it learn it is gone

    def can_load_now(self) -> bool:
        """A slot is free or held by an idle adapter: a load would not wait."""
        return self._in_use() < self.slots or any(not self.busy[n] for n in self.resident)

    async def acquire(self, name: str) -> None:
        """Hold `name` in a slot for one request (loading it, evicting the LRU idle adapter if needed);
        call `release(name)` when the request ends. Waits while every slot is busy."""
        if name in self.resident:  # the common case: no wait, nothing to count
            self.resident.move_to_end(name)
            self.busy[name] += 1
            return
        self._wanted[name] += 1
        try:
            await self._acquire(name)
        finally:
            self._wanted[name] -= 1
            if self._wanted[name] <= 0:
                del self._wanted[name]

    async def _acquire(self, name: str) -> None:
        while True:
            if name not in self.registered:
                raise APIError(
                    503, "this LoRA adapter was unloaded while the request waited; retry", "model_reloaded"
                )
            if name in self.resident:
                self.resident.move_to_end(name)
                self.busy[name] += 1
                return
            if name in self._unloading:  # evicted a moment ago: back in once its unload is done
                await self._wait()
                continue
            load = self._loading.get(name) or self._start_load(name)
            if load is not None:
                await self._join(name, load)
                return
            await self._wait()

    def release(self, name: str) -> None:
        self.busy[name] -= 1
        if self.busy[name] <= 0:
            del self.busy[name]
            self._sweep()  # an unregistered adapter leaves its slot with its last request
            self._wake()  # an idle adapter can be evicted now

    async def preload(self, name: str) -> bool:
        """Load `name` now if that needs no wait; False when every slot is busy (it loads on first use)."""
        if name not in self.resident and name not in self._loading and not self.can_load_now():
            return False
        await self.acquire(name)
        self.release(name)
        return True

    def _in_use(self) -> int:
        return len(self.resident) + len(self._loading) + len(self._unloading)

    def _start_load(self, name: str) -> _Load | None:
        """Reserve a slot for `name` (a free one, or the LRU idle adapter's) and start loading it."""
        victim = None
        if self._in_use() >= self.slots:
            victim = next((n for n in self.resident if not self.busy[n]), None)
            if victim is None:
                return None
            del self.resident[victim]
            self._unloading.add(victim)
            self.evictions += 1
        load = _Load(self._spawn(self._bring_in(name, self.registered[name], victim)))
        self._loading[name] = load
        return load

    async def _bring_in(self, name: str, folder: Path, victim: str | None) -> None:
        try:
            if victim is not None:
                await self._unload(victim)
            await asyncio.to_thread(self.engine.load_lora, name, folder)
        except BaseException:  # the requests waiting for it get the error (`_join`)
            self._loading.pop(name, None)
            self._wake()
            raise
        load = self._loading.pop(name)
        self.resident[name] = None  # most recently used
        self.busy[name] += load.claims
        self.loads += 1
        self._sweep()  # unregistered while it loaded, and nobody waits for it
        self._wake()

    async def _join(self, name: str, load: _Load) -> None:
        """Wait for `load`; the adapter is held for this request once it is in (counted by `_bring_in`)."""
        load.claims += 1
        try:
            await asyncio.shield(load.task)
        except asyncio.CancelledError:
            task = load.task
            if task.done() and not task.cancelled() and task.exception() is None:
                self.release(name)  # it was counted for this request, which is gone
            else:
                load.claims -= 1
            raise
        except ValueError as e:  # the engine refused the adapter
            raise APIError(400, f"LoRA adapter could not be loaded: {e}", "invalid_adapter") from None

    def _sweep(self) -> None:
        """Unload resident adapters that are unregistered and idle."""
        for name in [n for n in self.resident if n not in self.registered and not self.busy[n]]:
            del self.resident[name]
            self._unloading.add(name)
            self._spawn(self._unload(name))

    async def _unload(self, name: str) -> None:
        deadline = time.monotonic() + UNLOAD_RETRY_S
        try:
            while True:
                try:
                    await asyncio.to_thread(self.engine.unload_lora, name)
                    return
                except ValueError:  # still running a request that ended here (its abort lands next step)
                    if name not in await asyncio.to_thread(self.engine.lora_names):
                        return
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.01)
        except BaseException:  # still in the engine: it keeps its slot (and is swept again later)
            self.resident[name] = None
            self.resident.move_to_end(name, last=False)
            raise
        finally:
            self._unloading.discard(name)
            self._wake()

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # (a load's also goes to its requests)
            log.warning("LoRA adapter slot change failed on %s: %s", self.label, task.exception())
