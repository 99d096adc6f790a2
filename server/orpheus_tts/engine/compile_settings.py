"""The Inductor settings that a built engine's compiled artifacts are keyed on, set the same way
in the builder and in the server, so that the server finds every graph and tuned kernel the
builder saved instead of compiling or benchmarking again.

PyTorch's compile caches key each graph on the whole Inductor configuration. Two entries broke
that between a build machine and a serving one (measured on an H200, `bench/results/h200-startup-profile`):

- `cpp.cxx` defaults to `$CXX`. The builder has a C++ compiler and the serving image has none, so
  every key differed and all 18 graphs recompiled at start-up (146 s). CUDA graphs never run
  the C++ compiler; the entry is pinned.
- `use_static_cuda_launcher`: a cache hit restores Inductor's static kernel launchers, which
  look for their tuned configurations beside the source path they had in the builder's cache
  directory. In any other directory they found none and benchmarked every kernel again at
  start-up (974 benchmarks, 26 s). Triton's own launchers load each kernel from this process's
  cache directory, where the engine's tuned configurations are put. The static launcher only
  saves CPU time per launch, which replayed CUDA graphs do not spend.
"""

from __future__ import annotations

PINNED_CXX = "g++"


def apply_compile_settings() -> None:
    """Call before anything is compiled on a GPU (builder and server alike)."""
    import torch._inductor.config as inductor_config

    inductor_config.cpp.cxx = (None, PINNED_CXX)
    inductor_config.use_static_cuda_launcher = False
