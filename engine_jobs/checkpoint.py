"""Checks an Orpheus checkpoint and its SNAC codec before the build lays them out.

A build refuses what a pod would refuse at start-up (a missing file, a shape the model does not
implement, a missing or unused tensor), what would make it serve noise (a vocabulary or tokenizer
that is not Orpheus', a SNAC that is not the 24 kHz one), and a corrupt or truncated file, so a
voice fails in its build Job with the reason in the Job's log instead of crash-looping every pod.

The language model's tensors are never read: a safetensors header holds every name, dtype, shape
and byte range, so a 3B checkpoint is checked in about a second. SNAC (about 80 MB) is built on
the CPU from its files, as the server builds it. Every refusal is a CheckpointError (a
ValueError) naming the file, the field or tensor, and what was expected.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from snac import SNAC
from tokenizers import Tokenizer

from orpheus_tts import orpheus
from orpheus_tts.codec.snac_codec import SNAC_24KHZ
from orpheus_tts.model.llama import ModelArgs
from orpheus_tts.model.loader import CheckpointError
from orpheus_tts.voices import checkpoint_voices

# Bytes per element of the dtypes a weight may have: the server casts them to bf16 and
# quantises to FP8 itself, so integer, bool and already-quantised tensors are refused.
FLOAT_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}
CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
OPTIONAL_INT_KEYS = ("num_key_value_heads", "head_dim")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# The ids the server adds to every prompt by number; the tokenizer must agree with them.
SPECIAL_TOKENS = {"<|begin_of_text|>": orpheus.BOS, "<|eot_id|>": orpheus.END_OF_TEXT}
CUSTOM_TOKEN_0 = "<custom_token_0>"
# SNAC fields that fix the sample rate and Orpheus' frame layout (1 + 2 + 4 codes of 4096 per
# 2048 samples); the others only size the network, and the weights must fit them.
SNAC_LAYOUT_FIELDS = ("sampling_rate", "encoder_rates", "decoder_rates", "codebook_size", "vq_strides")
SNAC_PARAMETERS = set(inspect.signature(SNAC).parameters)
LISTED = 5  # problems named in one message; the rest are counted


@dataclass(frozen=True)
class TensorHeader:
    file: Path
    dtype: str
    shape: tuple[int, ...]


def validate_checkpoint(directory: Path) -> ModelArgs:
    """Check a Hugging Face Orpheus checkpoint from its config, headers and tokenizer; returns
    the ModelArgs the server's loader would build (tied when there is no `lm_head.weight`).

    The tokenizer must give `<|begin_of_text|>` and `<|eot_id|>` the ids the server adds to every
    prompt. `<custom_token_0>` is required at 128256 only when the tokenizer reaches that id or
    knows that token: the server adds every id from 128256 on by number and never encodes them,
    so a plain Llama-3 tokenizer serves, but one that puts something else there is not Orpheus'.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected a Hugging Face checkpoint)")
    args = _model_args(directory / "config.json")
    tensors = _tensor_headers(directory)
    has_head = _check_tensors(tensors, args)
    _check_tokenizer(directory / "tokenizer.json")
    checkpoint_voices(str(directory))  # a bad voices.json fails the build, not every pod
    args.tie_word_embeddings = not has_head  # as the loader does: the tensors decide
    return args


def validate_snac(directory: Path) -> None:
    """Check a SNAC checkpoint (config.json + pytorch_model.bin) is the 24 kHz codec Orpheus
    speaks, by building it on the CPU and loading its weights strictly."""
    directory = Path(directory)
    config_file, weights_file = directory / "config.json", directory / "pytorch_model.bin"
    config = _read_json(config_file, "the SNAC config")
    unknown = sorted(set(config) - SNAC_PARAMETERS)
    if unknown:
        raise CheckpointError(f"{config_file}: {_listed(unknown)} not SNAC parameters "
                              f"(known: {', '.join(sorted(SNAC_PARAMETERS))})")
    for field in SNAC_LAYOUT_FIELDS:
        expected = SNAC_24KHZ[field]
        if config.get(field) != expected:
            got = f"is {config[field]!r}" if field in config else "is missing"
            raise CheckpointError(f"{config_file}: {field} {got}, expected {expected!r} "
                                  f"(Orpheus speaks the 24 kHz SNAC)")
    if not weights_file.is_file():
        raise CheckpointError(f"{weights_file}: missing (the SNAC weights)")
    try:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever the unpickler raises, the file is at fault
        raise CheckpointError(f"{weights_file}: torch.load(weights_only=True) cannot read it: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights_file}: not a state dict of tensors")
    not_float = [f"{name} ({t.dtype})" for name, t in state.items() if not t.is_floating_point()]
    if not_float:
        raise CheckpointError(f"{weights_file}: tensors {_listed(not_float)} are not floating point")
    try:
        model = SNAC(**config)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{config_file}: SNAC cannot be built from it: {exc}") from exc
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    stored = {_snac_name(name, state): tuple(t.shape) for name, t in state.items()}
    _check_names_and_shapes(weights_file, stored, expected, f"the SNAC that {config_file.name} describes")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights_file}: does not load into the SNAC of {config_file.name}: {exc}") from exc


# -- the language model's config -------------------------------------------------------------

def _model_args(config_file: Path) -> ModelArgs:
    cfg = _read_json(config_file, "the model's Hugging Face config")
    missing = [key for key in CONFIG_KEYS if key not in cfg]
    if missing:
        raise CheckpointError(f"{config_file}: lacks {', '.join(missing)} (a Llama config has them)")
    for key in CONFIG_KEYS + OPTIONAL_INT_KEYS:
        value = cfg.get(key)
        if (key in CONFIG_KEYS or value is not None) and not _positive_int(value):
            raise CheckpointError(f"{config_file}: {key} must be a positive integer, got {value!r}")
    if quantization := cfg.get("quantization_config"):
        method = quantization.get("quant_method") if isinstance(quantization, dict) else None
        raise CheckpointError(f"{config_file}: quantization_config is set ({method or 'unknown method'}); the "
                              f"server needs F32, F16 or BF16 weights and quantises them itself")
    if cfg["vocab_size"] != orpheus.VOCAB_SIZE:
        raise CheckpointError(f"{config_file}: vocab_size {cfg['vocab_size']}, not Orpheus' {orpheus.VOCAB_SIZE} "
                              f"(is this an Orpheus checkpoint?)")
    try:
        args = ModelArgs.from_hf_config(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_file}: {exc}") from exc
    if args.n_heads % args.n_kv_heads:
        raise CheckpointError(f"{config_file}: num_attention_heads {args.n_heads} is not a multiple of "
                              f"num_key_value_heads {args.n_kv_heads}")
    return args


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# -- the language model's weights ------------------------------------------------------------

def _tensor_headers(directory: Path) -> dict[str, TensorHeader]:
    """Every tensor of the checkpoint's safetensors files, from their headers (the loader reads
    the shards of the index when there is one, else model.safetensors)."""
    index_file = directory / INDEX_FILE
    if not index_file.exists():
        single = directory / SINGLE_FILE
        if not single.exists():
            raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}")
        return _read_header(single)
    weight_map = _read_json(index_file, "the index of the weight shards").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or \
            not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_file}: weight_map must map tensor names to shard files")
    shards = sorted(set(weight_map.values()))
    absent = [shard for shard in shards if not (directory / shard).is_file()]
    if absent:
        raise CheckpointError(f"{index_file}: names shard {_listed(absent)}, not in {directory}")
    tensors: dict[str, TensorHeader] = {}
    for shard in shards:
        for name, header in _read_header(directory / shard).items():
            if name in tensors:
                raise CheckpointError(f"{header.file}: tensor {name!r} is also in {tensors[name].file.name}")
            tensors[name] = header
    misplaced = [f"{name} in {shard}" for name, shard in weight_map.items()
                 if name not in tensors or tensors[name].file != directory / shard]
    if misplaced:
        raise CheckpointError(f"{index_file}: places tensors where they are not: {_listed(misplaced)}")
    return tensors


def _read_header(file: Path) -> dict[str, TensorHeader]:
    """Parse a safetensors header: 8 bytes of little-endian length, then JSON naming each
    tensor's dtype, shape and byte range in the data that follows."""
    size = file.stat().st_size
    with file.open("rb") as f:
        length = int.from_bytes(f.read(8), "little") if size >= 8 else 0
        if size < 8 or 8 + length > size:
            raise CheckpointError(f"{file}: {size} bytes, too short for its safetensors header (truncated?)")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise CheckpointError(f"{file}: the safetensors header is not JSON ({exc}); the file is corrupt") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: the safetensors header is not a JSON object; the file is corrupt")
    header.pop("__metadata__", None)
    tensors, data_end = {}, 0
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            well_formed = isinstance(dtype, str) and all(isinstance(n, int) and n >= 0 for n in [*shape, begin, end])
        except (KeyError, TypeError, ValueError):
            well_formed = False
        if not well_formed or begin > end:
            raise CheckpointError(f"{file}: the header entry of {name!r} is malformed ({entry!r}); the file is corrupt")
        if dtype in FLOAT_DTYPES and end - begin != math.prod(shape) * FLOAT_DTYPES[dtype]:
            raise CheckpointError(f"{file}: tensor {name!r} ({dtype} {shape}) spans {end - begin} bytes, not "
                                  f"{math.prod(shape) * FLOAT_DTYPES[dtype]}; the file is corrupt")
        tensors[name] = TensorHeader(file, dtype, tuple(shape))
        data_end = max(data_end, end)
    if size < 8 + length + data_end:
        raise CheckpointError(f"{file}: {size} bytes, but its header places tensor data up to byte "
                              f"{8 + length + data_end} (truncated)")
    try:  # the loader's reader has the last word (it also refuses gaps and trailing bytes)
        with safe_open(str(file), framework="pt"):
            pass
    except SafetensorError as exc:
        raise CheckpointError(f"{file}: safetensors cannot open it: {exc}") from exc
    return tensors


def _expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """The Hugging Face Llama tensors the loader takes, with the shapes `args` implies."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    shapes = {"model.embed_tokens.weight": (args.vocab_size, args.dim), "model.norm.weight": (args.dim,)}
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (q, args.dim),
            p + "self_attn.k_proj.weight": (kv, args.dim),
            p + "self_attn.v_proj.weight": (kv, args.dim),
            p + "self_attn.o_proj.weight": (args.dim, q),
            p + "mlp.gate_proj.weight": (args.intermediate_size, args.dim),
            p + "mlp.up_proj.weight": (args.intermediate_size, args.dim),
            p + "mlp.down_proj.weight": (args.dim, args.intermediate_size),
            p + "input_layernorm.weight": (args.dim,),
            p + "post_attention_layernorm.weight": (args.dim,),
        }
    return shapes


def _check_tensors(tensors: dict[str, TensorHeader], args: ModelArgs) -> bool:
    """Refuse non-float dtypes, then missing, misshapen and unused tensors; returns whether
    the checkpoint has its own output head."""
    weights = {name: t for name, t in tensors.items() if not name.endswith("rotary_emb.inv_freq")}
    not_float = [f"{t.file}: {name!r} is {t.dtype}" for name, t in weights.items() if t.dtype not in FLOAT_DTYPES]
    if not_float:
        raise CheckpointError(f"tensors that are not F32, F16 or BF16 ({_listed(not_float)}); the server "
                              f"quantises float weights itself, and cannot load integer, bool or quantised ones")
    expected = _expected_shapes(args)
    has_head = "lm_head.weight" in weights
    if has_head:
        expected["lm_head.weight"] = (args.vocab_size, args.dim)
    files = sorted({t.file for t in tensors.values()})
    where = files[0] if len(files) == 1 else files[0].parent / INDEX_FILE
    _check_names_and_shapes(where, {name: t.shape for name, t in weights.items()}, expected,
                            "the model config.json describes", {name: t.file for name, t in weights.items()})
    return has_head


def _check_names_and_shapes(where: Path, stored: dict[str, tuple], expected: dict[str, tuple], model: str,
                            files: dict[str, Path] | None = None) -> None:
    """Missing tensors, then wrong shapes, then unused tensors; each named with its file."""
    files = files or {}
    missing = [f"{name} {list(shape)}" for name, shape in expected.items() if name not in stored]
    if missing:
        raise CheckpointError(f"{where}: lacks tensors {_listed(missing)} that {model} needs")
    wrong = [f"{files.get(name, where)}: {name!r} has shape {list(stored[name])}, expected {list(shape)}"
             for name, shape in expected.items() if stored[name] != shape]
    if wrong:
        raise CheckpointError(f"tensors shaped unlike {model}: {_listed(wrong)}")
    unused = [f"{files.get(name, where)}: {name!r}" for name in stored if name not in expected]
    if unused:
        raise CheckpointError(f"tensors that {model} does not use: {_listed(unused)}")


def _snac_name(name: str, state: dict) -> str:
    """A weight-norm pair saved the old way (`weight_g`, `weight_v`) under the name PyTorch's
    load hook gives it, so a file of either age is compared like with like."""
    for old, new in (("weight_g", "parametrizations.weight.original0"),
                     ("weight_v", "parametrizations.weight.original1")):
        prefix = name.removesuffix(old)
        if prefix != name and prefix + "weight_g" in state and prefix + "weight_v" in state:
            return prefix + new
    return name


# -- the tokenizer ---------------------------------------------------------------------------

def _check_tokenizer(file: Path) -> None:
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (the server encodes the request text with it)")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception for any unreadable file
        raise CheckpointError(f"{file}: tokenizers cannot read it: {exc}") from exc
    for token, want in SPECIAL_TOKENS.items():
        got = tokenizer.token_to_id(token)
        if got != want:
            raise CheckpointError(f"{file}: {token} is {'missing' if got is None else f'id {got}'}, "
                                  f"expected id {want} (the server adds it to every prompt by that id)")
    want = orpheus.custom_token_id(0)
    got, holder = tokenizer.token_to_id(CUSTOM_TOKEN_0), tokenizer.id_to_token(want)
    if (got, holder) != (None, None) and got != want:
        found = f"id {got}" if got is not None else f"missing, and id {want} is {holder!r}"
        raise CheckpointError(f"{file}: {CUSTOM_TOKEN_0} is {found}, expected id {want} (Orpheus' audio "
                              f"tokens start there)")


# -- shared ----------------------------------------------------------------------------------

def _read_json(file: Path, what: str) -> dict:
    if not file.is_file():
        raise CheckpointError(f"{file}: missing ({what})")
    try:
        value = json.loads(file.read_text())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CheckpointError(f"{file}: not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{file}: not a JSON object ({what})")
    return value


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown if len(items) <= LISTED else f"{shown} and {len(items) - LISTED} more"
