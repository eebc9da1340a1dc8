"""The GPU decode path (Triton paged attention) on the CPU, through Triton's interpreter.

The kernel is what the GPU runs for every decode step; here `TRITON_INTERPRET=1` executes the same
kernel code with NumPy, so its indexing (block tables, GQA groups, masking of the last tile) is
checked on any machine that has the `triton` package. Runs in a subprocess: the variable must be
set before triton is imported.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="needs the triton package (pip install triton; it is in the GPU image) for its interpreter",
)


def run_interpreted(code: str, tmp_path) -> str:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    script = tmp_path / "case.py"
    script.write_text(textwrap.dedent(code))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_kernel_matches_sdpa_over_scattered_blocks(tmp_path):
    out = run_interpreted(
        """
        import torch, torch.nn.functional as F
        from tuneloop.engine.kernels.paged_decode import paged_decode_attention
        torch.manual_seed(0)
        for H, KVH, D, bs, lens in [(8, 2, 64, 16, [5, 37, 100]), (4, 4, 32, 4, [1, 64, 65]),
                                    (6, 2, 16, 8, [17, 3])]:
            nblocks = 64
            kc = torch.randn(nblocks * bs, KVH, D); vc = torch.randn(nblocks * bs, KVH, D)
            perm = torch.randperm(nblocks).tolist()
            width = max(-(-L // bs) for L in lens) + 2
            tables = torch.zeros(len(lens), width, dtype=torch.int32)
            i = 0
            for b, L in enumerate(lens):
                nb = -(-L // bs); tables[b, :nb] = torch.tensor(perm[i:i + nb]); i += nb
            q = torch.randn(len(lens), H, D)
            got = paged_decode_attention(q, kc, vc, tables, torch.tensor(lens, dtype=torch.int32), bs, D**-0.5)
            for b, L in enumerate(lens):
                slots = torch.tensor([int(tables[b, p // bs]) * bs + p % bs for p in range(L)])
                k = kc[slots].transpose(0, 1).repeat_interleave(H // KVH, 0)
                v = vc[slots].transpose(0, 1).repeat_interleave(H // KVH, 0)
                ref = F.scaled_dot_product_attention(q[b][:, None], k, v, scale=D**-0.5)[:, 0]
                err = (got[b] - ref).abs().max().item()
                assert err < 1e-4, (H, KVH, D, bs, L, err)
        print("OK")
        """,
        tmp_path,
    )
    assert "OK" in out


def test_split_kv_matches_sdpa_and_the_unsplit_kernel(tmp_path):
    """Flash-decoding: each context cut into `splits` ranges (empty ones included: contexts shorter
    than the splits), partials combined by log-sum-exp; the same output as SDPA and as one program."""
    out = run_interpreted(
        """
        import torch, torch.nn.functional as F
        from tuneloop.engine.kernels.paged_decode import paged_decode_attention, decode_splits
        torch.manual_seed(1)
        H, KVH, D, bs = 8, 2, 32, 16
        lens = [1, 5, 64, 65, 300]
        nblocks = 64
        kc = torch.randn(nblocks * bs, KVH, D); vc = torch.randn(nblocks * bs, KVH, D)
        perm = torch.randperm(nblocks).tolist()
        width = max(-(-L // bs) for L in lens) + 1
        tables = torch.zeros(len(lens), width, dtype=torch.int32)
        i = 0
        for b, L in enumerate(lens):
            nb = -(-L // bs); tables[b, :nb] = torch.tensor(perm[i:i + nb]); i += nb
        q = torch.randn(len(lens), H, D)
        ctx = torch.tensor(lens, dtype=torch.int32)
        one = paged_decode_attention(q, kc, vc, tables, ctx, bs, D**-0.5, splits=1)
        for splits in (2, 4, 16):
            got = paged_decode_attention(q, kc, vc, tables, ctx, bs, D**-0.5, splits=splits)
            assert (got - one).abs().max().item() < 1e-4, splits
            for b, L in enumerate(lens):
                slots = torch.tensor([int(tables[b, p // bs]) * bs + p % bs for p in range(L)])
                k = kc[slots].transpose(0, 1).repeat_interleave(H // KVH, 0)
                v = vc[slots].transpose(0, 1).repeat_interleave(H // KVH, 0)
                ref = F.scaled_dot_product_attention(q[b][:, None], k, v, scale=D**-0.5)[:, 0]
                assert (got[b] - ref).abs().max().item() < 1e-4, (splits, L)
        assert decode_splits(1, 8, torch.device("cpu")) == 1  # CPU: never split
        print("OK")
        """,
        tmp_path,
    )
    assert "OK" in out


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_engine_decode_path_gives_the_same_tokens(tiny_model_factory, family, tmp_path):
    folder = tiny_model_factory(family)
    out = run_interpreted(
        f"""
        import torch
        from tuneloop.engine import LLMEngine, SamplingParams
        g = torch.Generator().manual_seed(3)
        prompts = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (3, 11, 5, 19)]
        p = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)

        def run(kernel, async_scheduling=False, splits=1):
            eng = LLMEngine.from_pretrained({str(folder)!r}, block_size=4, kv_cache_gib=0.01,
                                            async_scheduling=async_scheduling)
            eng.runner.decode_kernel = kernel
            if splits > 1:  # split-KV (on by default, CUDA only): forced here to run it interpreted
                eng.runner.decode_splits = lambda batch: splits
            calls = []
            if kernel:
                real = eng.runner._run_decode
                eng.runner._run_decode = lambda x: calls.append(len(x.batch)) or real(x)
            ids = [eng.add_request(prompts[0], p).request_id]
            done, so_far = {{}}, {{}}
            step = 0
            while len(done) < len(prompts):
                if step in (2, 5, 7):  # arrivals mid-decode: mixed steps, then decode-only again
                    ids.append(eng.add_request(prompts[len(ids)], p).request_id)
                for o in eng.step():
                    so_far.setdefault(o.request_id, []).extend(o.new_token_ids)
                    if o.finished:
                        done[o.request_id] = so_far[o.request_id]
                step += 1
            return [done[i] for i in ids], calls

        base, _ = run(False)
        fast, calls = run(True)
        assert fast == base, (fast, base)
        assert calls and max(calls) == 4, calls  # the kernel served decode-only steps of 1..4 sequences
        ahead, calls = run(True, async_scheduling=True)  # input ids read from the previous step's tokens
        assert ahead == base, (ahead, base)
        assert calls and max(calls) == 4, calls
        split, calls = run(True, splits=4)  # 4 ranges over contexts of 4..30 tokens, some empty
        assert split == base, (split, base)
        assert calls and max(calls) == 4, calls
        print("OK", len(calls))
        """,
        tmp_path,
    )
    assert "OK" in out


def test_lora_decode_graph_path_gives_the_same_tokens(tiny_llama, tmp_path):
    """lora_in_graph's decode path (padded ladder, per-row slot buffer, base/LoRA graph choice) on the
    CPU: graphs replaced by an eager stand-in that re-runs the captured forward over the same buffers."""
    from .test_lora import make_adapter

    make_adapter(tiny_llama, tmp_path / "a", 1, ["q_proj", "v_proj", "down_proj"], rank=4)
    make_adapter(
        tiny_llama, tmp_path / "b", 2, ["q_proj", "k_proj", "o_proj", "gate_proj", "up_proj"], rank=8
    )
    out = run_interpreted(
        f"""
        import torch
        from types import SimpleNamespace
        from tuneloop.engine import LLMEngine, SamplingParams
        from tuneloop.engine.cuda_graph import DecodeGraphs

        class EagerReplay(DecodeGraphs):  # replay = the captured forward, run again over the same buffers
            def _capture(self, graphs, outputs, lora):
                self.slots.fill_(self.spare_slot)
                self.lens.fill_(1)
                self.lora_slots.zero_()
                for bs in self.sizes:
                    outputs[bs] = self._forward(bs, lora)
                    graphs[bs] = SimpleNamespace(
                        replay=lambda bs=bs, lora=lora, outputs=outputs: outputs[bs].copy_(self._forward(bs, lora)))

        g = torch.Generator().manual_seed(3)
        prompts = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (3, 11, 5, 19, 7)]
        which = [None, "a", "b", "a", None]
        p = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)

        def run(graphs, async_scheduling=False):
            eng = LLMEngine.from_pretrained({str(tiny_llama)!r}, block_size=4, kv_cache_gib=0.01,
                                            lora_in_graph=True, max_num_seqs=8,
                                            async_scheduling=async_scheduling)
            eng.load_lora("a", {str(tmp_path / "a")!r})
            eng.load_lora("b", {str(tmp_path / "b")!r})
            eng.lora.mode = "looped"  # the eager reference: the CPU's default path
            r = eng.runner
            if graphs:
                r.decode_kernel = True
                r.graphs = EagerReplay(r.model, r.kv_cache, 4, 8, r.max_blocks_per_seq,
                                       r.num_blocks * 4, "cpu")
            ids = []
            done, so_far = {{}}, {{}}
            step = 0
            while len(done) < len(prompts):
                if step in (0, 2, 4) and len(ids) < len(prompts):  # arrivals: mixed steps, then decode-only
                    for _ in range(2 if step < 4 else 1):
                        ids.append(eng.add_request(prompts[len(ids)], p, lora=which[len(ids)]).request_id)
                for o in eng.step():
                    so_far.setdefault(o.request_id, []).extend(o.new_token_ids)
                    if o.finished:
                        done[o.request_id] = so_far[o.request_id]
                step += 1
            return [done[i] for i in ids], r.graphs

        base, _ = run(False)
        fast, graphs = run(True)
        assert fast == base, (fast, base)
        assert graphs.lora_graphs, "no decode step went through the LoRA graphs"
        ahead, _ = run(True, async_scheduling=True)  # input ids read from the previous step's tokens
        assert ahead == base, (ahead, base)
        print("OK")
        """,
        tmp_path,
    )
    assert "OK" in out
