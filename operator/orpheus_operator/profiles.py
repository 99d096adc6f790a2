"""GPU profiles and the slot budget: how many sessions' KV cache fit on one GPU.

A session holds a KV-cache slot of `context_tokens` tokens for its whole life (the server
pre-allocates slots, so nothing is allocated while serving). What is left of the GPU's memory
after the weights, the SNAC codec, a workspace reserve and the LoRA adapter places (a voice
with adapters keeps `places` of them resident, each sized for the largest rank) is divided into
such slots. A voice
that asks for more sessions per pod than fit is refused before anything is rolled out, instead
of crash-looping with out-of-memory at start-up.

All sizes are in bytes unless a name says otherwise; GiB = 2**30 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model_facts import (
    FP8_MIN_COMPUTE_CAPABILITY,
    HIDDEN_SIZE,
    INTERMEDIATE_SIZE,
    KV_BYTES_PER_TOKEN,
    KV_SIZE,
    N_LAYERS,
    Q_SIZE,
    VOCAB_SIZE,
)

GIB = 2**30
MIB = 2**20


@dataclass(frozen=True)
class GPUProfile:
    """One GPU model as the scheduler sees it.

    `memory_bytes` is what the driver reports as total (nvidia-smi), not the marketing figure.
    `product_label` is the `nvidia.com/gpu.product` node label that NVIDIA's GPU feature
    discovery sets, used to place pods on this GPU.
    """

    name: str
    product_label: str
    memory_bytes: int
    compute_capability: tuple[int, int]

    @property
    def fp8(self) -> bool:
        """FP8 tensor cores: what the server needs to run FP8 weights (Ada sm_89 and newer)."""
        return self.compute_capability >= FP8_MIN_COMPUTE_CAPABILITY

    @property
    def arch(self) -> str:
        """`sm_89` and the like: what a compiled engine depends on (4090 and L4 share one)."""
        return arch_name(self.compute_capability)


def arch_name(compute_capability: tuple[int, int]) -> str:
    major, minor = compute_capability
    return f"sm_{major}{minor}"


# The oldest GPU architecture that runs FP8 weights, as status messages and the CRD name it.
FP8_FIRST_ARCH = arch_name(FP8_MIN_COMPUTE_CAPABILITY)


GPU_PROFILES: dict[str, GPUProfile] = {
    p.name: p
    for p in (
        GPUProfile("rtx-4090", "NVIDIA-GeForce-RTX-4090", 24564 * MIB, (8, 9)),
        GPUProfile("l4", "NVIDIA-L4", 23034 * MIB, (8, 9)),
        GPUProfile("a10g", "NVIDIA-A10G", 23028 * MIB, (8, 6)),
        GPUProfile("a100-40gb", "NVIDIA-A100-SXM4-40GB", 40960 * MIB, (8, 0)),
        GPUProfile("a100-80gb", "NVIDIA-A100-SXM4-80GB", 81920 * MIB, (8, 0)),
        GPUProfile("h100-80gb", "NVIDIA-H100-80GB-HBM3", 81559 * MIB, (9, 0)),
        GPUProfile("h200", "NVIDIA-H200", 143771 * MIB, (9, 0)),
    )
}


@dataclass(frozen=True)
class ModelFootprint:
    """What the Orpheus-3B language model and the SNAC codec occupy on the GPU.

    Under FP8 the linear layers take one byte per weight; the embedding (tied with the output
    head) stays in bf16. The KV cache is fp16/bf16 either way, and so are LoRA adapter places.
    """

    params: int = 3_300_000_000
    embedding_params: int = VOCAB_SIZE * HIDDEN_SIZE  # vocabulary x hidden, tied with lm_head
    kv_bytes_per_token: int = KV_BYTES_PER_TOKEN  # 28 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes
    snac_bytes: int = 512 * MIB  # SNAC 24 kHz weights (fp32, ~80 MB) plus batched decode activations
    workspace_bytes: int = 2 * GIB  # CUDA context, CUDA graphs, activations, sampler buffers
    fragmentation_reserve: float = 0.05  # share of GPU memory never planned for
    n_layers: int = N_LAYERS
    # (in, out) of each projection a LoRA adapter may target: q, k, v, o, gate, up, down
    lora_projections: tuple[tuple[int, int], ...] = (
        (HIDDEN_SIZE, Q_SIZE), (HIDDEN_SIZE, KV_SIZE), (HIDDEN_SIZE, KV_SIZE), (Q_SIZE, HIDDEN_SIZE),
        (HIDDEN_SIZE, INTERMEDIATE_SIZE), (HIDDEN_SIZE, INTERMEDIATE_SIZE), (INTERMEDIATE_SIZE, HIDDEN_SIZE),
    )
    lora_bytes_per_value: int = 2  # bf16, the model's dtype

    def lora_place_bytes(self, rank: int) -> int:
        """One resident adapter place, sized for `rank` whatever the adapter's own rank is (the
        server's LoraPool): per layer and projection, A [rank, in] and B [out, rank].
        Orpheus-3B: 28 x rank x (26,624 + 27,648) x 2 bytes, 194.5 MB at rank 64."""
        per_rank = sum(i + o for i, o in self.lora_projections)
        return self.n_layers * rank * per_rank * self.lora_bytes_per_value

    def weight_bytes(self, precision: str) -> int:
        if precision == "bf16":
            return self.params * 2
        if precision == "fp8":
            return (self.params - self.embedding_params) + self.embedding_params * 2
        raise ValueError(f"unknown precision {precision!r}")


ORPHEUS_3B = ModelFootprint()


@dataclass(frozen=True)
class SlotBudget:
    """The memory plan of one pod (one GPU) for a given precision and context length."""

    profile: str
    precision: str
    context_tokens: int
    gpu_bytes: int
    weight_bytes: int
    fixed_bytes: int  # SNAC + workspace + fragmentation reserve
    kv_bytes_per_session: int
    max_sessions: int
    lora_places: int = 0  # resident LoRA adapter places (0: the voice has no adapters)
    lora_rank: int = 0  # the rank every place is sized for
    lora_bytes: int = 0  # all places together

    @property
    def kv_budget_bytes(self) -> int:
        return max(0, self.gpu_bytes - self.weight_bytes - self.fixed_bytes - self.lora_bytes)

    def kv_bytes_for(self, sessions: int) -> int:
        return sessions * self.kv_bytes_per_session

    def describe(self, sessions: int) -> str:
        """One line with the numbers, for a status message a person can check by hand."""
        return (
            f"{sessions} sessions x {self.context_tokens} tokens need "
            f"{self.kv_bytes_for(sessions) / GIB:.1f} GiB of KV cache; {self.profile} has "
            f"{self.gpu_bytes / GIB:.1f} GiB, of which {self.weight_bytes / GIB:.1f} GiB go to "
            f"{self.precision} weights{self._lora_part()} and {self.fixed_bytes / GIB:.1f} GiB to SNAC and "
            f"workspace, leaving {self.kv_budget_bytes / GIB:.1f} GiB: at most {self.max_sessions} sessions fit"
        )

    def _lora_part(self) -> str:
        if not self.lora_places:
            return ""
        return (f", {self.lora_bytes / GIB:.1f} GiB to {self.lora_places} LoRA adapter places of rank "
                f"{self.lora_rank}")


def slot_budget(
    profile: GPUProfile, precision: str, context_tokens: int, model: ModelFootprint = ORPHEUS_3B,
    lora_places: int = 0, lora_rank: int = 0,
) -> SlotBudget:
    """How many sessions of `context_tokens` fit on one GPU of `profile` at `precision`, beside
    `lora_places` adapter places of `lora_rank`."""
    if context_tokens <= 0:
        raise ValueError("context_tokens must be positive")
    weights = model.weight_bytes(precision)
    fixed = model.snac_bytes + model.workspace_bytes + int(profile.memory_bytes * model.fragmentation_reserve)
    lora = lora_places * model.lora_place_bytes(lora_rank)
    per_session = context_tokens * model.kv_bytes_per_token
    free = profile.memory_bytes - weights - fixed - lora
    return SlotBudget(
        profile=profile.name,
        precision=precision,
        context_tokens=context_tokens,
        gpu_bytes=profile.memory_bytes,
        weight_bytes=weights,
        fixed_bytes=fixed,
        kv_bytes_per_session=per_session,
        max_sessions=max(0, free // per_session),
        lora_places=lora_places,
        lora_rank=lora_rank,
        lora_bytes=lora,
    )
