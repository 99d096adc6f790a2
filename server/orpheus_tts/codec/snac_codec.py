"""SNAC 24 kHz decoding of many sessions' frame windows in one batched call.

`SnacCodec.decode` takes frames as a [B, n, 7] tensor of SNAC codes (the Orpheus frame layout,
see `orpheus.FRAME_LAYOUT`) and returns [B, n * 2048] float samples in [-1, 1]. The decoder is
fully convolutional, so equal-length windows of different sessions decode together.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from snac import SNAC
from snac.layers import NoiseBlock, Snake1d
from torch import Tensor, nn
from torch.nn.utils import parametrize

from orpheus_tts import orpheus
from orpheus_tts.codec import snac_aot

log = logging.getLogger("orpheus_tts.codec")

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


def _replace_modules(root: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]) -> None:
    """Swap every submodule of `root` for which `replacement` returns a module."""
    for name, module in list(root.named_modules()):
        new = replacement(module)
        if new is not None:
            parent, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent), child, new)


class _Snake(nn.Module):
    """snac's snake activation as plain tensor code (the library's is TorchScript, opaque to
    torch.compile), on the same alpha."""

    def __init__(self, alpha: nn.Parameter):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class _DepthwiseConv1d(nn.Module):
    """A depthwise, stride-1 Conv1d as a sum of shifted multiplies of the zero-padded input,
    on the same weight and bias: one elementwise kernel under Inductor, fused with the snakes
    around it."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.dilation, self.padding = conv.dilation[0], conv.padding[0]

    @staticmethod
    def replaces(module: nn.Module) -> bool:
        return (isinstance(module, nn.Conv1d) and module.groups == module.in_channels == module.out_channels
                and module.stride == (1,) and module.kernel_size[0] > 1
                and module.padding_mode == "zeros" and not isinstance(module.padding, str))

    def forward(self, x: Tensor) -> Tensor:
        taps = self.weight.shape[-1]
        length = x.shape[-1] + 2 * self.padding - self.dilation * (taps - 1)
        x = F.pad(x, (self.padding, self.padding))
        y = self.weight[:, :, 0] * x[..., :length]
        for k in range(1, taps):
            y = y + self.weight[:, :, k] * x[..., k * self.dilation:k * self.dilation + length]
        return y if self.bias is None else y + self.bias[:, None]


class SnacCodec:
    def __init__(self, model: SNAC, device: torch.device, noise: bool, seed: int,
                 dtype: torch.dtype = torch.float32):
        if not noise:
            _replace_modules(model, lambda module: nn.Identity() if isinstance(module, NoiseBlock) else None)
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
        self.graph_decoder: Callable[[Tensor], Tensor] = self.model.decoder  # what enable_graphs captures
        # An engine's AOTInductor-compiled decoders (codec/snac_aot.py), preferred by a compiled
        # codec's `enable_graphs` when they were built for its window and batch sizes.
        self.aot_dir: Path | None = None
        self.graph_source = "none"  # which decoder the graphs hold: aot, compiled or eager
        self._compiled = False

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

    def _decode_codes(self, frames: Tensor, decoder: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        latent = self.model.quantizer.from_codes(self.frames_to_codes(frames))
        decoder = self.model.decoder if decoder is None else decoder
        return decoder(latent.to(self.dtype))[:, 0, :].float()

    def fused_decoder(self) -> nn.Module:
        """A copy of the decoder on the same parameters, its snakes and depthwise convolutions
        swapped for `_Snake` and `_DepthwiseConv1d`: the same output, but slower eagerly."""
        decoder = self.model.decoder
        decoder = copy.deepcopy(decoder, memo={id(p): p for p in decoder.parameters()})
        _replace_modules(decoder, lambda module: _Snake(module.alpha) if isinstance(module, Snake1d)
                         else _DepthwiseConv1d(module) if _DepthwiseConv1d.replaces(module) else None)
        return decoder

    def compile(self, force: bool = False) -> bool:
        """Have `enable_graphs` capture an Inductor-compiled `fused_decoder` instead of the eager
        decoder (GPU only, unless `force`: the tests); call it before `enable_graphs`. Decodes
        that no graph covers stay eager.

        Profiled on H100, fp16, 64 windows of 4 frames: eager 11.5 ms; compiled with plain-code
        snakes 7.4 ms, 2.2 ms of it PyTorch's generic depthwise convolution kernel. As shifted
        multiplies, each residual unit's snake, depthwise convolution and snake fuse into one
        kernel, provided Inductor stores the first snake rather than recomputing its sin for
        each of the 7 taps (that took longer than the unfused kernels): hence the lower
        `realize_opcount_threshold` (default 30). Captured as graphs, 64 windows of 4 frames went
        from 9.2 to 3.5 ms and 16 windows from 2.3 to 1.0 ms, at 57 dB SNR to eager fp16 (as two
        eager runs). The batch dimension is dynamic, so each window length compiles once for all
        batches of 2 or more (a batch of 1 would be one more compile: the engine's codec buckets
        start at 2, `codec_batch_buckets`), not once per bucket: `enable_graphs(4, batch_buckets(64))`
        took 150 s instead of 55 s. Dynamic lengths made the kernels a third slower.

        A codec loaded from a built engine has the same decoder compiled ahead of time
        (`aot_dir`, codec/snac_aot.py): `enable_graphs` captures those instead, with nothing
        traced at start-up, when they were built for its window and batch sizes.
        """
        if self.device.type != "cuda" and not force:
            return False
        self._compiled = True
        compiled = torch.compile(self.fused_decoder(), dynamic=False, options={"realize_opcount_threshold": 6})

        def decoder(latent: Tensor) -> Tensor:
            if latent.is_cuda:  # Inductor's CPU code took three times longer to build with it
                torch._dynamo.maybe_mark_dynamic(latent, 0)
            return compiled(latent)

        self.graph_decoder = decoder
        return True

    def enable_graphs(self, window_frames: int, buckets: list[int]) -> None:
        """Capture the decode of windows of 1..`window_frames` frames as CUDA graphs, one per
        (length, batch size in `buckets`; a batch is padded up to the next one).

        SNAC's decoder is ~100 small kernels: at the batch sizes of one engine step, launching
        them costs more than running them, and every new eager shape costs convolution set-up.
        Longer windows (rare) run eagerly. The noise blocks draw from the graph-safe CUDA generator.
        """
        if self.device.type != "cuda" or window_frames <= 0:
            return
        buckets = sorted(buckets)
        self._graph_inputs = torch.zeros(buckets[-1], window_frames, orpheus.TOKENS_PER_FRAME,
                                         dtype=torch.int64, device=self.device)
        decoder, self.graph_source = self.graph_decoder, "compiled" if self._compiled else "eager"
        if self._compiled and self.aot_dir is not None and buckets[0] > 1:
            aot = snac_aot.load_decoders(self, self.aot_dir, window_frames, buckets[-1])
            if aot is not None:
                decoder, self.graph_source = aot, "aot"
        # A compiled decoder compiles once or twice per window length (see `compile`); past the limit,
        # which counts every codec's compiles in this process, dynamo would silently run eagerly.
        limit = torch._dynamo.config.recompile_limit + 2 * window_frames
        with torch.inference_mode(), torch._dynamo.config.patch(recompile_limit=limit):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for frames in range(1, window_frames + 1):
                    for n in buckets:
                        self._decode_codes(self._graph_inputs[:n, :frames], decoder)
            torch.cuda.current_stream().wait_stream(stream)
            pool = None
            for frames in range(window_frames, 0, -1):
                for n in sorted(buckets, reverse=True):
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        outputs = self._decode_codes(self._graph_inputs[:n, :frames], decoder)
                    self._graph_outputs[frames, n] = outputs
                    pool = graph.pool()
                    self._graphs[frames, n] = graph
        self._buckets = buckets
        log.info("codec: %d CUDA graphs of the %s decoder (windows of 1-%d frames, batches %s)",
                 len(self._graphs), self.graph_source, window_frames, buckets)

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
