"""LoRA adapters in PEFT's format against PEFT itself: the model with an adapter in its pool gives
the logits of the base checkpoint with the adapter merged by PEFT (`merge_and_unload`, W + s B A),
and a batch mixing adapters (and rows with none) gives each row what it gets alone.

Tolerance: float32 on the CPU, 2e-4 absolute on logits of about unit size (the merged and the
unmerged forms sum the same products in another order)."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import LlamaConfig, LlamaForCausalLM

from orpheus_tts.engine.kv_cache import KVCache
from orpheus_tts.model.lora import AdapterError, LoraPool, load_adapter
from orpheus_tts.model.loader import load_model
from lora_testkit import make_adapter, tiny_config

ATOL = 2e-4
PROMPTS = [[5, 17, 300, 42, 7, 99, 1], [11, 3, 250, 8], [60, 61, 62, 63, 64]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("base")
    LlamaForCausalLM(tiny_config()).eval().save_pretrained(directory, safe_serialization=True)
    adapters = {}
    for name, seed, rank, targets, extra in [
        ("attention", 1, 4, ["q_proj", "k_proj", "v_proj", "o_proj"], {}),
        ("everything", 2, 8, ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], {"use_rslora": True}),
    ]:
        adapters[name] = tmp_path_factory.mktemp(name)
        make_adapter(directory, adapters[name], seed, rank, targets, **extra)
    return directory, adapters


def peft_merged_logits(base_dir, adapter_dir, prompt: list[int]) -> torch.Tensor:
    base = LlamaForCausalLM.from_pretrained(base_dir).eval()
    merged = base if adapter_dir is None else PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    with torch.inference_mode():
        return merged(torch.tensor([prompt])).logits[0]


def our_logits(model, rows: list[tuple[list[int], int]]) -> list[torch.Tensor]:
    """Prefill every row in one batch (row: prompt, pool place or -1), then decode one more token
    per row from position len(prompt): every position's logits per row."""
    args = model.args
    cache = KVCache(args.n_layers, len(rows), args.n_kv_heads, 64, args.head_dim, torch.float32, "cpu")
    seqlen = max(len(p) - 1 for p, _ in rows)
    tokens = torch.tensor([p[:-1] + [0] * (seqlen - len(p) + 1) for p, _ in rows])
    lengths = torch.tensor([len(p) - 1 for p, _ in rows])
    slots, places = torch.arange(len(rows)), torch.tensor([place for _, place in rows])
    with torch.inference_mode():
        batch = model.with_adapters(model.make_batch(slots, torch.zeros_like(slots), lengths, seqlen), places, seqlen)
        prefill = model.logits(model(tokens, batch, cache))
        step = model.with_adapters(model.make_decode_batch(slots, lengths), places, 1)
        last = model.logits(model(torch.tensor([[p[-1]] for p, _ in rows]), step, cache))[:, 0]
    return [torch.cat([prefill[i, :len(p) - 1], last[i:i + 1]]) for i, (p, _) in enumerate(rows)]


def test_each_row_gets_the_logits_of_its_adapter_merged_by_peft_in_one_mixed_batch(checkpoint):
    base_dir, adapters = checkpoint
    model = load_model(str(base_dir), torch.device("cpu"), torch.float32, max_positions=64)
    pool = LoraPool(model.args, capacity=3, max_rank=8, device=torch.device("cpu"), dtype=torch.float32)
    pool.put(0, load_adapter(adapters["everything"], "everything", model.args, max_rank=8))
    pool.put(2, load_adapter(adapters["attention"], "attention", model.args, max_rank=8))
    model.attach_lora(pool)
    names = {2: "attention", 0: "everything", -1: None}
    rows = [(PROMPTS[0], 2), (PROMPTS[1], -1), (PROMPTS[2], 0), (PROMPTS[0], 0)]
    got = our_logits(model, rows)
    for (prompt, place), logits in zip(rows, got):
        adapter = adapters[names[place]] if names[place] else None
        reference = peft_merged_logits(base_dir, adapter, prompt)
        assert torch.allclose(logits, reference, atol=ATOL), float((logits - reference).abs().max())
    # The adapters change the logits (a test of nothing would pass the check above too).
    plain = peft_merged_logits(base_dir, None, PROMPTS[0])
    assert float((got[0] - plain).abs().max()) > 100 * ATOL and float((got[3] - plain).abs().max()) > 100 * ATOL
    # A row alone gets what it got in the mixed batch.
    alone = our_logits(model, [rows[2]])[0]
    assert torch.allclose(alone, got[2], atol=ATOL)


def test_every_layer_with_adapters_reuses_one_compiled_code_object(checkpoint):
    """The blocks are compiled as one function (`compile_model`); with a pool attached the second
    layer must run the first one's compiled code, not recompile per layer (which took the H200
    sweep's LoRA steps past Dynamo's recompile limit and ran them uncompiled)."""
    base_dir, adapters = checkpoint
    model = load_model(str(base_dir), torch.device("cpu"), torch.float32, max_positions=64)
    pool = LoraPool(model.args, capacity=2, max_rank=8, device=torch.device("cpu"), dtype=torch.float32)
    pool.put(1, load_adapter(adapters["everything"], "everything", model.args, max_rank=8))
    model.attach_lora(pool)
    args, prompts = model.args, torch.tensor([PROMPTS[0], PROMPTS[0]])
    lengths, slots = torch.tensor([7, 7]), torch.arange(2)
    batch = model.with_adapters(model.make_batch(slots, torch.zeros_like(slots), lengths, 7), torch.tensor([1, -1]), 7)

    def prefill():
        cache = KVCache(args.n_layers, 2, args.n_kv_heads, 64, args.head_dim, torch.float32, "cpu")
        with torch.inference_mode():
            return model.logits(model(prompts, batch, cache))

    eager = prefill()
    torch._dynamo.reset()
    forward = type(model.layers[0]).forward
    for layer in model.layers:  # as compile_model does it, with a backend that compiles nothing
        layer.forward = torch.compile(forward.__get__(layer), dynamic=True, backend="eager")
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):  # layer 2 failing layer 1's guards raises
            compiled = prefill()
    finally:
        for layer in model.layers:
            del layer.forward
        torch._dynamo.reset()
    assert len(model.layers) > 1 and torch.allclose(compiled, eager, atol=ATOL)


def test_a_place_put_again_holds_only_the_new_adapter(checkpoint):
    base_dir, adapters = checkpoint
    model = load_model(str(base_dir), torch.device("cpu"), torch.float32, max_positions=64)
    pool = LoraPool(model.args, capacity=1, max_rank=8, device=torch.device("cpu"), dtype=torch.float32)
    pool.put(0, load_adapter(adapters["everything"], "everything", model.args, max_rank=8))
    pool.put(0, load_adapter(adapters["attention"], "attention", model.args, max_rank=8))  # evicts "everything"
    model.attach_lora(pool)
    (got,) = our_logits(model, [(PROMPTS[1], 0)])
    assert torch.allclose(got, peft_merged_logits(base_dir, adapters["attention"], PROMPTS[1]), atol=ATOL)


def _edit_config(directory, **changes):
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("change,message", [
    (dict(r=16), "r: 16 is over this server's adapters.max_rank (8)"),
    (dict(peft_type="PREFIX_TUNING"), "peft_type: must be LORA"),
    (dict(use_dora=True), "use_dora: DoRA cannot be served"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save: must be empty"),
    (dict(lora_alpha="big"), "lora_alpha: must be a number"),
])
def test_a_config_this_server_cannot_serve_is_refused_naming_the_field(checkpoint, tmp_path, change, message):
    base_dir, adapters = checkpoint
    adapter = tmp_path / "bad"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (adapter / name).write_bytes((adapters["attention"] / name).read_bytes())
    _edit_config(adapter, **change)
    model = load_model(str(base_dir), torch.device("cpu"), torch.float32, max_positions=64)
    with pytest.raises(AdapterError, match="adapter 'bad': adapter_config.json: " + message.replace("(", r"\(")
                       .replace(")", r"\)")):
        load_adapter(adapter, "bad", model.args, max_rank=8)


def test_weights_for_another_model_or_a_broken_file_are_refused_by_name(checkpoint, tmp_path):
    base_dir, adapters = checkpoint
    args = load_model(str(base_dir), torch.device("cpu"), torch.float32, max_positions=64).args
    wider = tmp_path / "wider"
    LlamaForCausalLM(LlamaConfig(**{**tiny_config().to_dict(), "hidden_size": 128, "head_dim": 32})).save_pretrained(
        tmp_path / "wider-base")
    make_adapter(tmp_path / "wider-base", wider, 3, 4, ["q_proj"])
    with pytest.raises(AdapterError, match=r"layers\.0\.q_proj: lora_A \(4, 128\) and lora_B \(128, 4\) do not fit"):
        load_adapter(wider, "wider", args, max_rank=8)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "adapter_config.json").write_bytes((adapters["attention"] / "adapter_config.json").read_bytes())
    data = (adapters["attention"] / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(AdapterError, match="adapter_model.safetensors is not a readable safetensors file"):
        load_adapter(truncated, "truncated", args, max_rank=8)
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        load_adapter(tmp_path / "nowhere", "nowhere", args, max_rank=8)
