"""SNAC 24 kHz decoding of many sessions' frame windows in one batched call.

`SnacCodec.decode` takes frames as a [B, n, 7] tensor of SNAC codes (the Orpheus frame layout,
see `orpheus.FRAME_LAYOUT`) and returns [B, n * 2048] float samples in [-1, 1]. The decoder is
fully convolutional, so equal-length windows of different sessions decode together.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from snac import SNAC
from snac.layers import NoiseBlock
from torch import Tensor, nn
from torch.nn.utils import parametrize

from orpheus_tts import orpheus

DEMO = "demo"
RANDOM = "random"  # the real 24 kHz architecture with random weights (benchmarks without weights)

# The published 24 kHz config; the demo keeps its rates and strides but a small decoder so the
# CPU demo and tests stay quick (the real decoder_dim is 1024).
SNAC_24KHZ = dict(
    sampling_rate=24_000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
    decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
    vq_strides=[4, 2, 1], noise=True, depthwise=True,
)
DEMO_DECODER_DIM = 64

# Frame position -> flat index into [level0 (1), level1 (2), level2 (4)] of one frame.
_LEVEL_OFFSETS = (0, 1, 3)
_FRAME_TO_FLAT = [_LEVEL_OFFSETS[level] + index for level, index in orpheus.FRAME_LAYOUT]


class SnacCodec:
    def __init__(self, model: SNAC, device: torch.device, noise: bool, seed: int,
                 dtype: torch.dtype = torch.float32):
        if not noise:
            for name, module in list(model.named_modules()):
                if isinstance(module, NoiseBlock):
                    parent, _, child = name.rpartition(".")
                    setattr(model.get_submodule(parent), child, nn.Identity())
        model.encoder = None  # only the decoder and the codebooks are used
        # Fold weight norm into plain weights once, instead of recomputing it every decode.
        for module in model.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight")
        self.model = model.to(device).eval()
        # The decoder may run in half precision (measured on GPU: 58 dB SNR against fp32); the
        # codebook lookup stays fp32.
        self.model.decoder.to(dtype)
        self.dtype = dtype
        self.device = device
        self.noise = noise
        self._seed = seed
        self._calls = 0
        self._frame_to_flat = torch.tensor(_FRAME_TO_FLAT, device=device)
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # (frames, batch bucket)
        self._graph_outputs: dict[tuple[int, int], Tensor] = {}
        self._buckets: list[int] = []

    @classmethod
    def load(cls, path: str, device: torch.device, noise: bool = True, seed: int = 0,
             dtype: torch.dtype = torch.float32) -> "SnacCodec":
        if path in (DEMO, RANDOM):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = SNAC(**{**SNAC_24KHZ, "decoder_dim": DEMO_DECODER_DIM if path == DEMO else 1024})
        else:
            directory = Path(path)
            for name in ("config.json", "pytorch_model.bin"):
                if not (directory / name).exists():
                    raise FileNotFoundError(f"{directory}: SNAC checkpoint lacks {name}")
            model = SNAC.from_config(str(directory / "config.json"))
            state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        if model.sampling_rate != orpheus.SAMPLE_RATE_HZ or int(model.hop_length) * 4 != orpheus.SAMPLES_PER_FRAME:
            raise ValueError(f"{path}: not a 24 kHz SNAC with hop 512 (Orpheus needs that one)")
        return cls(model, device, noise, seed, dtype)

    def frames_to_codes(self, frames: Tensor) -> list[Tensor]:
        """[B, n, 7] frame codes -> SNAC's three code levels [B, n], [B, 2n], [B, 4n]."""
        b, n, _ = frames.shape
        flat = torch.empty_like(frames)
        flat[:, :, self._frame_to_flat] = frames
        return [flat[:, :, 0:1].reshape(b, n), flat[:, :, 1:3].reshape(b, 2 * n), flat[:, :, 3:7].reshape(b, 4 * n)]

    def _decode_codes(self, frames: Tensor) -> Tensor:
        latent = self.model.quantizer.from_codes(self.frames_to_codes(frames))
        return self.model.decoder(latent.to(self.dtype))[:, 0, :].float()

    def enable_graphs(self, window_frames: int, max_batch: int) -> None:
        """Capture the decode of windows of 1..`window_frames` frames as CUDA graphs, one per
        (length, batch bucket).

        SNAC's decoder is ~100 small kernels: at the batch sizes of one engine step, launching
        them costs more than running them, and every new eager shape costs convolution set-up.
        Longer windows (rare) run eagerly. The noise blocks draw from the graph-safe CUDA generator.
        """
        if self.device.type != "cuda" or window_frames <= 0:
            return
        from orpheus_tts.engine.cuda_graphs import batch_buckets

        buckets = batch_buckets(max_batch)
        self._graph_inputs = torch.zeros(max_batch, window_frames, orpheus.TOKENS_PER_FRAME,
                                         dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for frames in range(1, window_frames + 1):
                    for n in buckets:
                        self._decode_codes(self._graph_inputs[:n, :frames])
            torch.cuda.current_stream().wait_stream(stream)
            pool = None
            for frames in range(window_frames, 0, -1):
                for n in sorted(buckets, reverse=True):
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        self._graph_outputs[frames, n] = self._decode_codes(self._graph_inputs[:n, :frames])
                    pool = graph.pool()
                    self._graphs[frames, n] = graph
        self._buckets = buckets

    @torch.inference_mode()
    def decode(self, frames: Tensor) -> Tensor:
        """[B, n, 7] codes -> [B, n * 2048] float32 samples."""
        b, n, _ = frames.shape
        if self._graphs and n <= self._graph_inputs.shape[1] and b <= self._graph_inputs.shape[0]:
            bucket = next(size for size in self._buckets if size >= b)
            self._graph_inputs[:b, :n].copy_(frames, non_blocking=True)
            self._graph_inputs[b:bucket, :n].zero_()
            self._graphs[n, bucket].replay()
            return self._graph_outputs[n, bucket][:b]
        # The decoder's noise draws from the global generator: a private, counted seed keeps
        # decodes reproducible for a given sequence of calls and leaves everyone else's RNG alone.
        rng = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []) \
            if self.noise else contextlib.nullcontext()
        with rng:
            if self.noise:
                torch.manual_seed(self._seed + self._calls)
            self._calls += 1
            return self._decode_codes(frames.to(self.device))
