"""One loop cycle as a resumable state machine:

    collect -> curate -> [approve] -> build -> retrain -> gate -> [canary] -> promote | rollback -> done

After every stage the state (TUNELOOP_HOME/loop/NAME/state.json) names the next one and holds what
the finished ones produced, so a crashed or stopped cycle continues where it was: a collected batch
is reused, a finished training run is not repeated, a registered candidate is not registered
twice, a canary keeps its start time. The feedback cursor moves only when a cycle is done.
Every decision goes to decisions.jsonl with the numbers behind it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.flows.resume import run_stages
from tuneloop.interactions.loopstore import LoopStore
from tuneloop.interactions.review import ReviewQueue
from tuneloop.loop.canary import GatewayAdmin, judge, window_stats
from tuneloop.loop.collect import Batch, collect, log_path
from tuneloop.loop.config import LoopConfig, check_files
from tuneloop.loop.curate import Curated, Known, apply_reviews, build_dataset, curate, read_jsonl
from tuneloop.loop.filters import TextFilters
from tuneloop.loop.gate import check_frozen, evaluate_pair
from tuneloop.loop.guards import build_checks, write_gate_feed, write_validation
from tuneloop.loop.retrain import objectives_for, retrain
from tuneloop.loop.tracking import log_decision
from tuneloop.loop.trust import Trust
from tuneloop.registry import Registry
from tuneloop.registry.refs import check_name

Say = Callable[[str], None]
CYCLE_TAG = "tuneloop.loop_cycle"


@dataclass
class CycleResult:
    cycle: int
    outcome: str  # nothing_new | waiting_for_review | not_enough_data | not_enough_evidence | rejected_by_gate | promoted | rolled_back
    detail: str = ""


class Loop:
    def __init__(
        self,
        name: str,
        config: LoopConfig,
        *,
        say: Say = lambda _: None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ):
        check_name(name)
        check_files(config)
        check_frozen(config.gate)
        self.name, self.cfg, self.say, self.sleep, self.clock = name, config, say, sleep, clock
        self.store = LoopStore(name)
        self._registry = None

    @property
    def registry(self) -> Any:
        if self._registry is None:
            self._registry = Registry(self.cfg.tracking_uri)
        return self._registry

    # ------------------------------------------------------------------------------ driver

    def run_cycle(self) -> CycleResult:
        with self.store.locked():
            state = self.store.state()
            if state["stage"] in ("idle", "done"):
                state = {
                    "cycle": state["cycle"] + 1,
                    "stage": "collect",
                    "results": {},
                    "started": self.clock(),
                }
            else:
                self.say(f"resuming cycle {state['cycle']} at '{state['stage']}'")
            return run_stages(state, lambda stage, st: getattr(self, f"_{stage}")(st), self.store.save_state)

    def _dir(self, state: dict[str, Any]) -> Path:
        return self.store.cycle_dir(state["cycle"])

    def _decide(self, state: dict[str, Any], stage: str, decision: str, reason: str, **numbers: Any) -> None:
        self.store.decide(state["cycle"], stage, decision, reason, **numbers)
        self.say(f"[{stage}] {decision}: {reason}")

    def _finish(
        self, state: dict[str, Any], outcome: str, detail: str = "", consume: bool = True
    ) -> CycleResult:
        """consume=False (not enough evidence yet): the cursor stays, the next cycle sees this feedback again."""
        if consume:
            batch = json.loads((self._dir(state) / "batch.json").read_text())
            self._record_raters(state)
            self.store.save_cursor(batch["cursor"])
        state.update(stage="done", outcome=outcome, finished=self.clock())
        self.store.save_state(state)
        self._decide(state, "cycle", outcome, detail or outcome)
        return CycleResult(state["cycle"], outcome, detail)

    # ------------------------------------------------------------------------------ stages

    def _collect(self, state: dict[str, Any]) -> str | CycleResult:
        batch = collect(self.cfg.collect, self.name, self.store.cursor())
        if not batch.interactions and not batch.unmatched:
            return CycleResult(state["cycle"] - 1, "nothing_new", "no new feedback since the last cycle")
        (self._dir(state) / "batch.json").write_text(
            json.dumps(batch.to_json(), ensure_ascii=False, default=str)
        )
        ratings = sum(len(i.ratings) for i in batch.interactions)
        self._decide(
            state,
            "collect",
            "collected",
            f"{len(batch.interactions)} rated answers",
            answers=len(batch.interactions),
            ratings=ratings,
            unmatched=len(batch.unmatched),
            filtered=batch.filtered,
            cursor=batch.cursor,
        )
        return "curate"

    def _known(self) -> Any:
        c, r = self.cfg.curate, self.cfg.retrain
        rows = read_jsonl([*c.existing_data, *r.old_data]) + self._pool("sft")
        return Known.from_rows(rows, c.dedup_threshold)

    def _pool(self, kind: str) -> list[dict[str, Any]]:
        path = self.store.root / f"accepted-{kind}.jsonl"
        return read_jsonl([path]) if path.is_file() else []

    def _curate(self, state: dict[str, Any]) -> str:
        batch = Batch.from_json(json.loads((self._dir(state) / "batch.json").read_text()))
        with ExitStack() as stack:  # the judge, if any, is closed after curation
            curated = curate(batch, self.cfg.curate, self._known(), self._checks(state, stack))
        (self._dir(state) / "curated.json").write_text(
            json.dumps(
                {"proposals": curated.proposals, "rejected": curated.rejected, "pii": curated.pii},
                ensure_ascii=False,
                default=str,
            )
        )
        if self.cfg.curate.approval.required and curated.proposals:
            added = ReviewQueue(self._review_url()).enqueue(self.name, state["cycle"], curated.proposals)
            self._decide(
                state,
                "curate",
                "queued_for_review",
                f"{added} proposals wait for a reviewer",
                proposals=len(curated.proposals),
                rejected=len(curated.rejected),
            )
            return "approve"
        return "build"

    def _checks(self, state: dict[str, Any], stack: ExitStack) -> Any:
        """Known facts, frozen questions, injection seeds and key weights for curation (guards.py);
        writes the retrain's validation rows first, since their questions are protected too."""

        c, r = self.cfg.curate, self.cfg.retrain
        validation = write_validation(
            self.cfg,
            read_jsonl(r.old_data) + self._pool("sft"),
            read_jsonl(r.old_preferences) + self._pool("dpo"),
            self._dir(state) / "data" / "validation",
        )
        training = read_jsonl([*c.existing_data, *r.old_data]) + self._pool("sft")
        trust = Trust(self.store.root / "raters.json", c.trust, self.clock())
        return build_checks(self.cfg, training, validation, trust, stack)

    def _record_raters(self, state: dict[str, Any]) -> None:
        """Each voting key's side against what curation (and review) made of it (trust.py)."""
        data = self._dir(state) / "data" / "manifest.json"
        if not data.is_file() or state["results"].get("raters_recorded"):
            return
        manifest = json.loads(data.read_text())
        saved = json.loads((self._dir(state) / "curated.json").read_text())
        kept = {e["response_id"] for e in manifest["examples"]}
        batch = json.loads((self._dir(state) / "batch.json").read_text())
        seen = {r["key_id"] for i in batch["interactions"] for r in i["ratings"]}
        trust = Trust(self.store.root / "raters.json", self.cfg.curate.trust, self.clock())
        trust.record([p for p in saved["proposals"] if p["response_id"] in kept], manifest["rejected"], seen)
        state["results"]["raters_recorded"] = True

    def _review_url(self) -> str | None:
        return self.cfg.curate.approval.database_url or self.cfg.collect.database_url

    def _approve(self, state: dict[str, Any]) -> str | CycleResult:
        items = ReviewQueue(self._review_url()).list(self.name, cycle=state["cycle"])
        pending = [i for i in items if i.status == "pending"]
        if pending:
            return CycleResult(
                state["cycle"],
                "waiting_for_review",
                f"{len(pending)} of {len(items)} proposals wait: `tuneloop feedback review --model {self.name}`",
            )
        return "build"

    def _build(self, state: dict[str, Any]) -> str | CycleResult:
        c = self.cfg.curate
        saved = json.loads((self._dir(state) / "curated.json").read_text())
        curated = Curated(saved["proposals"], saved["rejected"], saved["pii"])
        proposals = curated.proposals
        if c.approval.required and proposals:
            reviews = ReviewQueue(self._review_url()).list(self.name, cycle=state["cycle"])
            proposals = apply_reviews(
                curated, reviews, TextFilters(c.injection_patterns, c.abuse_words, c.max_chars)
            )
        r = self.cfg.retrain
        old_sft = read_jsonl(r.old_data) + self._pool("sft")
        old_pref = read_jsonl(r.old_preferences) + self._pool("dpo")
        info = {"model": self.name, "cycle": state["cycle"]}
        manifest = build_dataset(
            proposals,
            curated,
            self._dir(state) / "data",
            c,
            old_sft,
            old_pref,
            info,
            old_kto=self._pool("kto"),
        )
        counts = manifest["counts"]
        counts.update(write_gate_feed(self._dir(state) / "data", proposals))  # references: known facts
        new = counts["new_sft_train"] + counts["new_dpo_train"] + counts.get("new_kto_train", 0)
        self._decide(
            state,
            "curate",
            "curated",
            f"{len(proposals)} kept, {counts['rejected']} rejected",
            counts=counts,
            rejections=manifest["rejections"],
            pii_redacted=manifest["pii_redacted"],
            fingerprint=manifest["fingerprint"],
        )
        g = self.cfg.gate
        # no training of a candidate the gate could not judge yet: held-out rows with a trusted
        # reference (gate_feedback, when curation wrote the gate's set), and without one for a judge
        scored = counts.get("gate_feedback", counts["new_sft_heldout"])
        other = counts.get("gate_unverified", 0)
        heldout = scored + other if g.judge is not None else scored
        if c.holdout_fraction > 0 and heldout < g.min_examples:
            hint = ""
            if other and g.judge is None:
                hint = f" ({other} more have no trusted reference: gate.judge compares those)"
            reason = (
                f"{heldout} held-out new examples, the gate needs {g.min_examples} (gate.min_examples){hint}: "
                f"no retraining; the feedback stays for the next cycle"
            )
            self._decide(
                state, "gate", "not_enough_evidence", reason, heldout=heldout, min_examples=g.min_examples
            )
            return self._finish(state, "not_enough_evidence", reason, consume=False)
        if new < r.min_new_examples:
            return self._finish(
                state,
                "not_enough_data",
                f"{new} new training examples (retrain.min_new_examples={r.min_new_examples})",
            )
        return "retrain"

    def _retrain(self, state: dict[str, Any]) -> str:
        prod = self.registry.version(f"{self.name}@production")
        state["results"]["production_version"] = int(prod.version)
        manifest = json.loads((self._dir(state) / "data" / "manifest.json").read_text())
        objectives = objectives_for(self.cfg.retrain, self._dir(state) / "data", manifest)
        self.say(f"[retrain] from {self.name}/{prod.version} ({', '.join(objectives)})")
        cand = retrain(
            self.cfg.retrain, self.registry, self.name, self._dir(state) / "data", self._dir(state), manifest
        )
        metrics = json.loads((cand.run_dir / "metrics.json").read_text())
        state["results"]["run_dir"] = str(cand.run_dir)
        self._decide(
            state,
            "retrain",
            "trained",
            f"{cand.start} -> {cand.run_dir.name}",
            start=cand.start,
            runs=cand.runs,
            steps=metrics.get("steps"),
            final_train_loss=metrics.get("final_train_loss"),
            best_val_loss=metrics.get("best_val_loss"),
            train_examples=metrics.get("train_examples"),
        )
        return "gate"

    def _gate(self, state: dict[str, Any]) -> str | CycleResult:
        res = state["results"]
        prod_ref = f"{self.name}/{res['production_version']}"
        run_dir = Path(res["run_dir"])
        d = evaluate_pair(
            prod_ref,
            str(run_dir / "model"),
            self._dir(state) / "data" / "gate" / "feedback.jsonl",
            self.cfg.gate,
            self._dir(state) / "gate.json",
        )
        self._decide(state, "gate", d.outcome, d.reason, **d.numbers())
        self._track(state, "gate", d.outcome, d.numbers())
        if d.outcome == "not_enough_evidence":  # nothing registered; this feedback and more next time
            return self._finish(state, "not_enough_evidence", d.reason, consume=False)
        if not d.passed:
            return self._finish(state, "rejected_by_gate", d.reason)
        return "register"

    def _track(self, state: dict[str, Any], stage: str, decision: str, numbers: dict[str, Any]) -> None:
        log_decision(state["results"].get("run_dir"), stage, decision, numbers, self.say)

    def _register(self, state: dict[str, Any]) -> str:
        res = state["results"]
        tag = f"{state['cycle']}:{res['run_dir']}"
        existing = [v for v in self.registry.versions(self.name) if dict(v.tags).get(CYCLE_TAG) == tag]
        if existing:
            version = int(existing[0].version)
        else:
            info = self.registry.register_run(res["run_dir"], self.name, f"loop cycle {state['cycle']}")
            version = info.version
            self.registry.client.set_model_version_tag(self.name, str(version), CYCLE_TAG, tag)
        self.registry.promote(self.name, version, "candidate")
        res["candidate_version"] = version
        self._decide(state, "gate", "registered", f"{self.name}/{version} is the candidate", version=version)
        return "canary" if self.cfg.canary is not None and self.cfg.canary.enabled else "promote"

    def _canary(self, state: dict[str, Any]) -> str:
        s, res = self.cfg.canary, state["results"]
        assert s is not None
        route = s.route or self.cfg.collect.served_name or self.name
        admin = GatewayAdmin(s)
        try:
            if "canary_started" not in res:
                admin.reload()
                admin.set_route(route, {s.production_model: 1 - s.share, s.candidate_model: s.share})
                res["canary_started"] = self.clock()
                self.store.save_state(state)
                self._decide(
                    state,
                    "canary",
                    "started",
                    f"{s.share:.0%} of '{route}' to {s.candidate_model}",
                    share=s.share,
                    version=res["candidate_version"],
                )
            while True:
                elapsed = self.clock() - res["canary_started"]
                stats = window_stats(
                    log_path(self.cfg.collect),
                    self.cfg.collect.database_url,
                    route,
                    res["canary_started"],
                    (s.production_model, s.candidate_model),
                    self.cfg.curate.positive_min,
                )
                verdict = judge(stats[s.production_model], stats[s.candidate_model], s, elapsed)
                if verdict.action != "wait":
                    break
                self.sleep(s.seconds("poll"))
        finally:
            admin.close()
        numbers = {
            "elapsed_s": round(elapsed, 1),
            "confidence": s.confidence,
            "production": stats[s.production_model].to_json(),
            "candidate": stats[s.candidate_model].to_json(),
            **verdict.numbers(),
        }
        self._decide(state, "canary", verdict.action, verdict.reason, **numbers)
        self._track(state, "canary", verdict.action, numbers)
        return verdict.action

    def _promote(self, state: dict[str, Any]) -> CycleResult:
        res = state["results"]
        version = res["candidate_version"]
        self.registry.promote(self.name, version, "production")
        if self.cfg.canary is not None and self.cfg.canary.enabled:
            self._route_all_to_production(reload=True)
        if not res.get("pool_added"):
            self._add_to_pool(state)
            res["pool_added"] = True
            self.store.save_state(state)
        return self._finish(
            state,
            "promoted",
            f"{self.name}/{version} is production (was {self.name}/{res['production_version']})",
        )

    def _rollback(self, state: dict[str, Any]) -> CycleResult:
        res = state["results"]
        self._route_all_to_production(reload=False)
        # the candidate name follows production again, so the served candidate entry stays valid
        self.registry.promote(self.name, res["production_version"], "candidate")
        self._route_all_to_production(reload=True)
        return self._finish(
            state,
            "rolled_back",
            f"{self.name}/{res['candidate_version']} rolled back; "
            f"production stays {self.name}/{res['production_version']}",
        )

    def _route_all_to_production(self, reload: bool) -> None:
        s = self.cfg.canary
        assert s is not None
        admin = GatewayAdmin(s)
        try:
            if reload:
                admin.reload()
            admin.set_route(
                s.route or self.cfg.collect.served_name or self.name,
                {s.production_model: 1.0, s.candidate_model: 0.0},
            )
        finally:
            admin.close()

    def _add_to_pool(self, state: dict[str, Any]) -> None:
        """A promoted cycle's new examples become old data for the next cycles."""
        data = self._dir(state) / "data"
        manifest = json.loads((data / "manifest.json").read_text())
        new_ids = {e["id"] for e in manifest["examples"]}
        for kind in ("sft", "dpo", "kto"):
            rows = []
            for split in ("train", "val"):
                path = data / kind / f"{split}.jsonl"
                rows += [
                    x
                    for x in (json.loads(line) for line in path.read_text().splitlines() if line.strip())
                    if x.get("id") in new_ids
                ]
            if rows:
                with (self.store.root / f"accepted-{kind}.jsonl").open("a", encoding="utf-8") as f:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
