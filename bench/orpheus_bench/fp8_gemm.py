"""The decode step's FP8 matmuls: cuBLAS `torch._scaled_mm` against the split-K Triton kernel.

    python -m orpheus_bench.fp8_gemm --out bench/results/h100-fp8-gemm

For the four Orpheus-3B layer shapes and a range of row counts: time per matmul (one CUDA
graph of 20 calls, so launch cost is not measured), weight bandwidth against the copy
bandwidth, and relative error against an fp64 product of the same quantised operands. Reaches into
`fp8_gemm.k_splits(n, k, sms)` and `fp8_gemm.fp8_matmul_splits(xq, wq, splits)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from orpheus_bench.results import command_line, header, log, write_json
from orpheus_bench.server_parts import FP8, FP8_MAX, fp8_gemm
from orpheus_bench.timing import copy_bandwidth, cuda_time_ms

SHAPES = {"wqkv": (5120, 3072), "wo": (3072, 3072), "w13": (16384, 3072), "w2": (3072, 8192)}


def graph_ms(fn, calls: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return cuda_time_ms(graph.replay, iters=20) / calls


@torch.inference_mode()
def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="python -m orpheus_bench.fp8_gemm", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results/fp8-gemm")
    parser.add_argument("--rows", default="1,8,16,32,64,96,128,256")
    opts = parser.parse_args(argv)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    bw = copy_bandwidth()
    results = dict(**header(torch.device("cuda"), command_line("orpheus_bench.fp8_gemm", argv)),
                   copy_bandwidth_bytes_per_s=bw, rows=[])
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    torch.manual_seed(0)
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda") * 0.02
        w_scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).reshape(1, -1)
        wq = (w / w_scale.reshape(-1, 1)).to(FP8)
        splits = fp8_gemm.k_splits(n, k, sms)
        for m in [int(r) for r in opts.rows.split(",")]:
            x = torch.randn(m, k, device="cuda")
            x_scale = x.abs().amax(dim=1, keepdim=True) / FP8_MAX
            xq = (x / x_scale).to(FP8)
            ref = (xq.double() * x_scale.double()) @ (wq.double() * w_scale.double().reshape(-1, 1)).t()

            def cublas():
                return torch._scaled_mm(xq, wq.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=torch.bfloat16)

            def triton():
                partial = fp8_gemm.fp8_matmul_splits(xq, wq, splits)
                return (partial.sum(0) * x_scale * w_scale).to(torch.bfloat16)

            row = dict(shape=name, n=n, k=k, rows=m, splits=splits)
            for label, fn in (("cublas", cublas), ("triton", triton)):
                if label == "triton" and m > 128:
                    continue
                ms = graph_ms(fn)
                err = float((fn().double() - ref).norm() / ref.norm())
                row[f"{label}_us"] = ms * 1e3
                row[f"{label}_weight_bw_util"] = n * k / (ms / 1e3) / bw
                row[f"{label}_rel_err"] = err
            results["rows"].append(row)
            log(f"{name:5s} rows {m:4d}: cuBLAS {row['cublas_us']:7.1f} us ({row['cublas_weight_bw_util']:.0%})"
                + (f", Triton {row['triton_us']:7.1f} us ({row['triton_weight_bw_util']:.0%}, splits {splits}), "
                   f"err {row['cublas_rel_err']:.1e}/{row['triton_rel_err']:.1e}" if "triton_us" in row else ""))
    # The 28 layers' matmuls per decode step, modelled from the table.
    per_step = {}
    for m in sorted({r["rows"] for r in results["rows"]}):
        sel = [r for r in results["rows"] if r["rows"] == m]
        per_step[m] = {label: 28 * sum(r[f"{label}_us"] for r in sel) / 1e3
                       for label in ("cublas", "triton") if all(f"{label}_us" in r for r in sel)}
    results["step_matmul_ms"] = per_step
    log("28 layers' matmuls per step (ms):", per_step)
    write_json(out / "fp8_gemm.json", results)


if __name__ == "__main__":
    main()
