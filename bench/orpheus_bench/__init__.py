"""orpheus-tts's benchmarks, installed with the distribution but outside the server package.

The server never imports this package except lazily for `orpheus-tts bench`, so matplotlib
and the GPU-only tools stay out of the serving path. One module per job:

- `load`, `load_cli`: the closed-loop load generator behind `orpheus-tts bench`;
- `engine` (`python -m orpheus_bench.engine`): the GPU benchmark, in sections run by
  `checks`, `step_sweep`, `snac`, `baseline`, `engine_load` and `live_ab`;
- `cpu_step`, `profile_step`, `fp8_gemm`: smaller benches of their own;
- `results`, `plots`, `timing`, `synthetic`: what they share;
- `server_parts`: every piece of the server the benches import, in one place.
"""
