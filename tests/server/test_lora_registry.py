"""The adapter registry: a watched directory, loads off the engine thread, least-recently-used
eviction of places no session holds, reloads of changed adapters, and bad adapters refused."""

import shutil
import time

import pytest
import torch
from transformers import LlamaForCausalLM

from orpheus_tts.engine.adapters import AdapterRegistry
from orpheus_tts.errors import RequestError
from orpheus_tts.model.lora import AdapterError, LoraPool, load_adapter
from orpheus_tts.model.loader import load_model
from lora_testkit import make_adapter, tiny_config


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A base checkpoint and three adapters for it (outside any served directory)."""
    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("base")
    LlamaForCausalLM(tiny_config()).save_pretrained(base)
    adapters = {}
    for seed, name in enumerate(("alice", "bob", "carol"), start=1):
        adapters[name] = tmp_path_factory.mktemp(name)
        make_adapter(base, adapters[name], seed, 4, ["q_proj", "down_proj"])
    return load_model(str(base), torch.device("cpu"), torch.float32, max_positions=64).args, adapters


def registry(args, directory, capacity: int) -> AdapterRegistry:
    pool = LoraPool(args, capacity, max_rank=8, device=torch.device("cpu"), dtype=torch.float32)
    return AdapterRegistry(str(directory), pool, args, scan_interval_s=60.0)  # the tests call rescan()


def acquire(reg: AdapterRegistry, name: str, timeout_s: float = 30.0) -> int | None:
    """Ask as the engine loop does, step after step, until a place comes or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        place = reg.acquire(name)
        if place is not None:
            return place
        time.sleep(0.01)
    return None


def a_place(pool: LoraPool, place: int) -> torch.Tensor:
    return pool.a[(0, "wqkv")][0, place, :4].clone()  # q's rank-4 block of layer 0


def test_adapters_come_and_go_with_their_directories(made, tmp_path):
    args, adapters = made
    reg = registry(args, tmp_path, capacity=2)
    with pytest.raises(RequestError, match="unknown adapter 'alice'; this server has none"):
        reg.check("alice")
    shutil.copytree(adapters["alice"], tmp_path / "alice")
    (tmp_path / "alice" / "README.md").write_text("a download's other files are left alone")
    (tmp_path / "empty").mkdir()  # what a wrong PVC path gives: warned about, not served
    reg.rescan()
    reg.check("alice")
    with pytest.raises(RequestError, match="unknown adapter 'empty'; this server has alice"):
        reg.check("empty")
    assert reg.acquire("alice") is None  # read on the worker thread first
    place = acquire(reg, "alice")
    assert place is not None and reg.resident == {"alice": place} and reg.loads == 1
    want = load_adapter(adapters["alice"], "alice", args, 8).weights[(0, "q_proj")][0]
    assert torch.equal(a_place(reg.pool, place), want)
    reg.release(place)
    shutil.rmtree(tmp_path / "alice")
    reg.rescan()
    with pytest.raises(RequestError):
        reg.check("alice")
    with pytest.raises(AdapterError, match="unregistered"):
        reg.acquire("alice")
    reg.close()


def test_the_least_recently_used_place_no_session_holds_is_given_to_a_new_adapter(made, tmp_path):
    args, adapters = made
    for name in adapters:
        shutil.copytree(adapters[name], tmp_path / name)
    reg = registry(args, tmp_path, capacity=2)
    alice, bob = acquire(reg, "alice"), acquire(reg, "bob")
    assert {alice, bob} == {0, 1}
    assert acquire(reg, "carol", timeout_s=0.5) is None  # both places are held by sessions
    reg.release(alice)
    again = acquire(reg, "bob")  # bob is now the most recently used
    reg.release(bob)
    reg.release(again)
    carol = acquire(reg, "carol")
    assert carol is not None and reg.evictions == 1
    assert set(reg.resident) == {"bob", "carol"}  # alice, least recently used, went
    alice_again = acquire(reg, "alice")  # an evicted adapter's next request loads it again
    assert alice_again is not None and reg.loads == 4 and "bob" not in reg.resident  # bob was unused and older
    reg.close()


def test_a_changed_adapter_is_loaded_again_and_a_broken_one_is_refused_with_its_reason(made, tmp_path):
    args, adapters = made
    shutil.copytree(adapters["alice"], tmp_path / "voice")
    reg = registry(args, tmp_path, capacity=1)
    place = acquire(reg, "voice")
    before = a_place(reg.pool, place)
    reg.release(place)
    time.sleep(0.01)  # a new modification time
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapters["bob"] / name, tmp_path / "voice" / name)
    reg.rescan()
    place = acquire(reg, "voice")
    after = a_place(reg.pool, place)
    assert not torch.equal(before, after)
    assert torch.equal(after, load_adapter(adapters["bob"], "bob", args, 8).weights[(0, "q_proj")][0])
    reg.release(place)

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 64, "lora_alpha": 8}')
    reg.rescan()
    reg.check("broken")
    with pytest.raises(AdapterError, match="r: 64 is over this server's adapters.max_rank"):
        acquire(reg, "broken")
    assert reg.resident == {"voice": place}  # nothing evicted for an adapter that cannot load
    reg.close()


def test_sessions_on_an_old_version_keep_its_place_while_new_ones_get_the_new_version(made, tmp_path):
    args, adapters = made
    shutil.copytree(adapters["alice"], tmp_path / "voice")
    reg = registry(args, tmp_path, capacity=2)
    old = acquire(reg, "voice")  # a session holds the old version
    time.sleep(0.01)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapters["bob"] / name, tmp_path / "voice" / name)
    reg.rescan()
    new = acquire(reg, "voice")
    assert new is not None and new != old  # loaded beside the old one, not waiting for it
    assert torch.equal(a_place(reg.pool, new), load_adapter(adapters["bob"], "bob", args, 8).weights[(0, "q_proj")][0])
    assert torch.equal(a_place(reg.pool, old), load_adapter(adapters["alice"], "alice", args, 8).weights[(0, "q_proj")][0])
    shutil.copytree(adapters["carol"], tmp_path / "carol")
    reg.rescan()
    assert acquire(reg, "carol", timeout_s=0.5) is None  # the old version's place is still held
    reg.release(old)  # its last session ended: the place is free again
    carol = acquire(reg, "carol")
    assert carol == old and reg.evictions == 0
    reg.close()
