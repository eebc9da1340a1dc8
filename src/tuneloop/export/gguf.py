"""GGUF export of a Llama-family model (what llama.cpp, Ollama and LM Studio run), written with the
`gguf` library (gguf-py, maintained in llama.cpp) the way llama.cpp's convert_hf_to_gguf.py does it.

What llama.cpp expects of a Llama file, and why it differs from the HF checkpoint:
- tensor names: `token_embd`, `blk.N.attn_q`, ... (gguf's own TensorNameMap maps the HF names);
- Q and K rows interleaved per head: HF's rotary pairs dimension i with i + d/2 (rotate_half),
  GGML's pairs neighbours (2i, 2i+1), so the rows are reordered and transformers' GGUF loader
  undoes it (the round-trip tests check both ends agree);
- a tied output layer is left out (llama.cpp reuses `token_embd`);
- 1-D tensors (norms) stay F32, as llama.cpp's converter and quantizer keep them;
- the tokenizer as a byte-level BPE ("gpt2") list of tokens, types and merges, the special ids,
  whether BOS is added, and the chat template (`tokenizer.chat_template`).

Types are those gguf-py can quantize in Python; k-quants (q4_k_m, ...) need llama.cpp's C++
`llama-quantize`, so asking for one is refused with that command as the hint.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.errors import TuneloopError
from tuneloop.export.modelfile import modelfile
from tuneloop.models.formats import GGUF_FILE, MODELFILE

if TYPE_CHECKING:
    from collections.abc import Iterable

    import numpy as np
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

ARCHITECTURES = ("LlamaForCausalLM",)  # llama.cpp arch "llama"; others need their own tensor layouts
K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
_EDGE_TENSORS = ("token_embd.weight", "output.weight")


@dataclass(frozen=True)
class GGUFType:
    """One `--gguf` choice: the type of 2-D weights, and of the embedding/output matrices."""

    name: str
    weights: str  # a gguf.GGMLQuantizationType name
    edges: str  # token_embd/output: 4/5-bit types keep them at Q8_0 (llama-quantize keeps them >= 6 bits)
    file_type: str  # a gguf.LlamaFileType name (general.file_type)


TYPES: dict[str, GGUFType] = {
    t.name: t
    for t in (
        GGUFType("f32", "F32", "F32", "ALL_F32"),
        GGUFType("f16", "F16", "F16", "MOSTLY_F16"),
        GGUFType("bf16", "BF16", "BF16", "MOSTLY_BF16"),
        GGUFType("q8_0", "Q8_0", "Q8_0", "MOSTLY_Q8_0"),
        GGUFType("q5_1", "Q5_1", "Q8_0", "MOSTLY_Q5_1"),
        GGUFType("q5_0", "Q5_0", "Q8_0", "MOSTLY_Q5_0"),
        GGUFType("q4_1", "Q4_1", "Q8_0", "MOSTLY_Q4_1"),
        GGUFType("q4_0", "Q4_0", "Q8_0", "MOSTLY_Q4_0"),
    )
}


def gguf_type(name: str) -> GGUFType:
    """The `--gguf` type, or an error listing the ones that can be written."""
    key = name.strip().lower()
    if key in TYPES:
        return TYPES[key]
    hint = f"use one of {', '.join(TYPES)}"
    if key in K_QUANTS:
        hint += (
            f"; {key} (a k-quant) has no Python quantizer in gguf-py: export --gguf f16, then run "
            f"llama.cpp's `llama-quantize model.gguf model-{key}.gguf {key.upper()}`"
        )
    raise TuneloopError(f"unknown --gguf type '{name}'", hint=hint)


def check_architecture(config: dict[str, Any], ref: str) -> None:
    """Refuse, by name, a model whose tensors this writer cannot lay out for llama.cpp."""
    archs = config.get("architectures") or [config.get("model_type", "?")]
    if not any(a in ARCHITECTURES for a in archs):
        raise TuneloopError(
            f"'{ref}' is a {', '.join(map(str, archs))} model; the GGUF export writes "
            f"{', '.join(ARCHITECTURES)} (the Llama family, e.g. SmolLM2) only",
            hint="for other architectures use llama.cpp's convert_hf_to_gguf.py on the exported HF folder "
            "(`tuneloop export REF --merge` gives one for an adapter)",
        )
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") or _rope(config).get("rope_type", "default")
    if rope_type != "default":
        raise TuneloopError(
            f"'{ref}' uses RoPE scaling '{rope_type}', which the GGUF export does not write yet",
            hint="convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    if config.get("hidden_act", "silu") != "silu":
        raise TuneloopError(
            f"'{ref}' uses hidden_act '{config['hidden_act']}'; llama.cpp's llama graph is SiLU-gated",
            hint="convert it with llama.cpp's convert_hf_to_gguf.py",
        )


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """transformers >= 5 keeps rope settings in `rope_parameters`; before, at the top level."""
    return config.get("rope_parameters") or {"rope_theta": config.get("rope_theta", 10000.0)}


def write_gguf(
    tensors: Iterable[tuple[str, torch.Tensor]],
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_dir: Path,
    path: Path,
    kind: GGUFType,
    name: str,
) -> dict[str, Any]:
    """Write `path` (a .gguf) from HF-named tensors; returns what was written, for the report."""
    import gguf

    cfg = config.to_dict()
    vocab_size = int(cfg["vocab_size"])
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _write_hparams(writer, cfg, kind, name)
    _write_vocab(writer, tokenizer, tokenizer_dir, vocab_size)
    counts: dict[str, int] = {}
    for gguf_name, data, qtype in _encoded(tensors, cfg, kind):
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"type": kind.name, "file": path.name, "tensor_types": counts, "gguf": _version()}


def _version() -> str:
    import importlib.metadata as md

    return md.version("gguf")


def _write_hparams(writer: Any, cfg: dict[str, Any], kind: GGUFType, name: str) -> None:
    import gguf

    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(int(cfg["max_position_embeddings"]))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(cfg.get("num_key_value_heads") or heads))
    writer.add_rope_freq_base(float(_rope(cfg)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_vocab_size(int(cfg["vocab_size"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != int(cfg["hidden_size"]) // heads:  # llama.cpp assumes hidden/heads unless told
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(gguf.LlamaFileType[kind.file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# ---------------------------------------------------------------- tensors


def _encoded(
    tensors: Iterable[tuple[str, torch.Tensor]], cfg: dict[str, Any], kind: GGUFType
) -> Iterable[tuple[str, np.ndarray, Any]]:
    """(GGUF name, data, GGML type) per tensor, Q/K reordered for GGML's rotary."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(cfg["num_hidden_layers"]))
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    for hf_name, tensor in tensors:
        if hf_name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue  # llama.cpp falls back to token_embd when output.weight is absent
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise TuneloopError(
                f"tensor '{hf_name}' has no GGUF name in llama.cpp's Llama layout",
                hint="the model is not a plain Llama checkpoint; convert it with llama.cpp's "
                "convert_hf_to_gguf.py",
            )
        data = tensor.detach().to("cpu").float()
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = interleave_rotary(data, heads)
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = interleave_rotary(data, kv_heads)
        yield (target, *_quantized(target, data.numpy(), kind))


def interleave_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's rows from HF's halves layout (i, i + d/2) to GGML's pairs (2i, 2i + 1)."""
    rows = weight.shape[0]
    # (heads, 2, d/2, ...) -> (heads, d/2, 2, ...): row i of each half becomes rows 2i, 2i + 1
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)
    )


def _quantized(name: str, data: np.ndarray, kind: GGUFType) -> tuple[np.ndarray, Any]:
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    if data.ndim == 1:
        return data.astype(np.float32), Q.F32
    qtype = Q[kind.edges if name in _EDGE_TENSORS else kind.weights]
    if qtype == Q.F32:
        return data.astype(np.float32), qtype
    if qtype == Q.F16:
        return data.astype(np.float16), qtype
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:  # a row length that is not a multiple of the block size: F16, as llama.cpp does
        return data.astype(np.float16), Q.F16


# ---------------------------------------------------------------- tokenizer


def _write_vocab(writer: Any, tokenizer: PreTrainedTokenizerBase, folder: Path, vocab_size: int) -> None:
    import gguf

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(folder))
    tokens, types = token_list(tokenizer, vocab_size)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise TuneloopError(
            f"the tokenizer in {folder} has no BPE merges", hint="a byte-level BPE tokenizer.json is needed"
        )
    # what the HF tokenizer does, not what its config claims: llama.cpp adds BOS when told to
    ids = tokenizer("a")["input_ids"]
    special.add_special_token = {
        "bos": bool(ids) and ids[0] == tokenizer.bos_token_id and len(ids) > 1,
        "eos": bool(ids) and ids[-1] == tokenizer.eos_token_id and len(ids) > 1,
    }
    special.chat_template = tokenizer.chat_template or special.chat_template
    special.add_to_gguf(writer, quiet=True)


def token_list(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id with llama.cpp's types: special added tokens are CONTROL (parsed as one token in
    prompts, never printed), other added tokens USER_DEFINED, ids without a token UNUSED padding."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if by_id and max(by_id) >= vocab_size:
        raise TuneloopError(
            f"the tokenizer has token id {max(by_id)} but the model's vocab_size is {vocab_size}",
            hint="resize the model's embeddings to the tokenizer (model.resize_token_embeddings) and save it",
        )
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def pre_tokenizer(folder: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (tokenizer.ggml.pre), from tokenizer.json.

    llama.cpp hard-codes each pre-tokenizer's regex by name; a tokenizer that is not one of these
    would be split differently there, so it is refused rather than written with a wrong name."""
    file = folder / "tokenizer.json"
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise TuneloopError(
            f"cannot read {file} ({e})", hint="the GGUF export needs a fast (tokenizer.json) tokenizer"
        ) from None
    model, decoder = data.get("model") or {}, data.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise TuneloopError(
            f"{file}: the GGUF export writes byte-level BPE tokenizers (GPT-2 style, as SmolLM2 uses); "
            f"this one is {model.get('type')} with a {decoder.get('type')} decoder",
            hint="SentencePiece tokenizers (Llama 2) are not written yet: use llama.cpp's convert_hf_to_gguf.py",
        )
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    shape = [(s.get("type"), s.get("individual_digits"), s.get("use_regex", True)) for s in steps]
    known = {
        (("ByteLevel", None, True),): "gpt-2",
        (("Digits", True, True), ("ByteLevel", None, True)): "smollm",
    }
    if tuple(shape) in known:
        return known[tuple(shape)]
    raise TuneloopError(
        f"{file}: pre-tokenizer {json.dumps(pre)[:200]} is not one the GGUF export knows "
        f"(plain byte-level, as GPT-2; digits then byte-level, as SmolLM)",
        hint="use llama.cpp's convert_hf_to_gguf.py, which recognizes more tokenizers by their output",
    )


def export_gguf(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path, kind: GGUFType, name: str
) -> dict[str, Any]:
    """`out/model.gguf`, an Ollama `Modelfile` and the HF config.json (what `registry` and `models`
    read of any folder). No HF tokenizer files: transformers' GGUF loader would read them instead of
    the GGUF's own tokenizer, and the check would no longer check the file."""
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(out))
    with tempfile.TemporaryDirectory() as tmp:
        # the vocabulary, merges and pre-tokenizer are read from tokenizer.json, as llama.cpp's converter does
        tokenizer.save_pretrained(tmp)
        details = write_gguf(
            model.state_dict().items(), model.config, tokenizer, Path(tmp), out / GGUF_FILE, kind, name
        )
    (out / MODELFILE).write_text(modelfile(tokenizer))
    return {"step": f"gguf {kind.name}", **details, "modelfile": MODELFILE}
