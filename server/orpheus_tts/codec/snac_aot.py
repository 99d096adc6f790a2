"""SNAC decoders compiled ahead of time by AOTInductor: built once by the engine builder, loaded
by the server in a second, with nothing traced, compiled or tuned at start-up.

Under `torch.compile` a server re-traces the fused decoder with Dynamo for every window length
at each start, even when every compiled kernel comes from the cache (about 2 s per length, and
the codec's kernels were half of the kernels to load). `torch.export` + AOTInductor turn each
window length into a shared library with its tuned Triton kernels and its weights, batch size
dynamic (2 up to the largest codec graph bucket). The server captures them as CUDA graphs like
the compiled decoder (`run_single_threaded`: the default runner's threading cannot be captured).

    DIR/aot.json            what the decoders were built for; anything else falls back to torch.compile
    DIR/decoder-<n>f.pt2    the decoder for windows of n frames
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from orpheus_tts import orpheus

log = logging.getLogger("orpheus_tts.codec")

MANIFEST = "aot.json"
# Inductor settings of the compiled decoder (see SnacCodec.compile for why).
INDUCTOR_CONFIGS = {"realize_opcount_threshold": 6}
_MIN_BATCH = 2  # Dynamo and export specialise size-1 dimensions; codec buckets start at 2


def package_name(frames: int) -> str:
    return f"decoder-{frames}f.pt2"


def _facts(codec, window_frames: int, max_batch: int) -> dict:
    device = "sm_{}{}".format(*torch.cuda.get_device_capability(codec.device)) if codec.device.type == "cuda" else "cpu"
    return {"torch": torch.__version__, "device": device, "dtype": str(codec.dtype).removeprefix("torch."),
            "noise": codec.noise, "windowFrames": window_frames, "maxBatch": max_batch}


def _example_latent(codec, frames: int, batch: int) -> Tensor:
    codes = torch.zeros(batch, frames, orpheus.TOKENS_PER_FRAME, dtype=torch.int64, device=codec.device)
    return codec.model.quantizer.from_codes(codec.frames_to_codes(codes)).to(codec.dtype)


def build_decoders(codec, window_frames: int, max_batch: int, directory: Path) -> dict:
    """Export and compile the fused decoder for windows of 1..`window_frames` frames, each for
    batches of 2..`max_batch`; check each against the eager decoder; write aot.json last."""
    directory.mkdir(parents=True, exist_ok=True)
    decoder = codec.fused_decoder()
    batch = torch.export.Dim("batch", min=_MIN_BATCH, max=max(max_batch, _MIN_BATCH))
    checks = {}
    for frames in range(1, window_frames + 1):
        example = _example_latent(codec, frames, max(max_batch, _MIN_BATCH))
        with torch.inference_mode(False), torch.no_grad():
            program = torch.export.export(decoder, (example,), dynamic_shapes=({0: batch},))
            path = torch._inductor.aoti_compile_and_package(
                program, package_path=str(directory / package_name(frames)), inductor_configs=INDUCTOR_CONFIGS)
        checks[frames] = _check(codec, torch._inductor.aoti_load_package(path), frames)
    facts = _facts(codec, window_frames, max_batch)
    (directory / MANIFEST).write_text(json.dumps({**facts, "checks": checks}, indent=2) + "\n")
    return {**facts, "checks": checks}


def _check(codec, compiled, frames: int) -> dict:
    """The compiled decoder against the eager one on real-looking codes. With noise the two draw
    different noise, so only shape and finiteness are compared."""
    generator = torch.Generator(device="cpu").manual_seed(frames)
    codes = torch.randint(0, 4096, (3, frames, orpheus.TOKENS_PER_FRAME), generator=generator).to(codec.device)
    with torch.inference_mode():
        latent = codec.model.quantizer.from_codes(codec.frames_to_codes(codes)).to(codec.dtype)
        got = compiled(latent).float()
        want = codec.model.decoder(latent).float()
    if got.shape != want.shape or not torch.isfinite(got).all():
        raise RuntimeError(f"AOT SNAC decoder for {frames} frames: shape {tuple(got.shape)} "
                           f"(expected {tuple(want.shape)}) or non-finite samples")
    if codec.noise:
        return {"shape": list(got.shape), "finite": True}
    error = (got - want).pow(2).mean().item()
    snr_db = 10 * math.log10(want.pow(2).mean().item() / max(error, 1e-30))
    if snr_db < 30:
        raise RuntimeError(f"AOT SNAC decoder for {frames} frames: {snr_db:.1f} dB SNR to the eager decoder")
    return {"shape": list(got.shape), "snrDb": round(snr_db, 1)}


def load_decoders(codec, directory: Path, window_frames: int, max_batch: int) -> Callable[[Tensor], Tensor] | None:
    """The compiled decoders as one callable (dispatching on the window's length), or None, with
    the reason logged, when `directory` holds none built for this codec, torch and GPU."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return None
    built = json.loads(manifest.read_text())
    wanted = _facts(codec, window_frames, max_batch)
    differ = {k: (built.get(k), v) for k, v in wanted.items()
              if built.get(k) != v and not (k == "maxBatch" and built.get(k, 0) >= v)
              and not (k == "windowFrames" and built.get(k, 0) >= v)}
    if differ:
        log.warning("AOT SNAC decoders in %s not used, built for another setting (%s): compiling instead",
                    directory, ", ".join(f"{k}: built {b!r}, running {r!r}" for k, (b, r) in differ.items()))
        return None
    by_length = {}
    for frames in range(1, window_frames + 1):
        try:
            model = torch._inductor.aoti_load_package(str(directory / package_name(frames)), run_single_threaded=True)
        except Exception as exc:  # noqa: BLE001 (a package that does not load is compiled instead)
            log.warning("AOT SNAC decoder %s did not load (%s: %s): compiling instead",
                        directory / package_name(frames), type(exc).__name__, exc)
            return None
        by_length[_example_latent(codec, frames, _MIN_BATCH).shape[-1]] = model

    def decoder(latent: Tensor) -> Tensor:
        return by_length[latent.shape[-1]](latent)

    return decoder
