"""The PNGs beside the benches' JSON, for a reader who wants the shape before the numbers.

matplotlib is optional (the `bench` extra): the JSON never needs it, so it is imported only
here and only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path

from orpheus_tts import orpheus


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_levels(levels: list[dict], target_ttfb_ms: float, path: Path) -> bool:
    """`orpheus-tts bench`: TTFB percentiles and real-time share against concurrency; False
    when matplotlib is absent."""
    try:
        plt = _pyplot()
    except ImportError:
        return False
    xs = [row["concurrency"] for row in levels]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("ttfb_p50_ms", "TTFB p50"), ("ttfb_p95_ms", "TTFB p95"), ("ttfb_p99_ms", "TTFB p99")):
        ax.plot(xs, [row[key] if row[key] is not None else float("nan") for row in levels], marker="o", label=label)
    ax.axhline(target_ttfb_ms, color="grey", linestyle=":", label=f"target {target_ttfb_ms:.0f} ms")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("TTFB (ms)")
    if len(set(xs)) > 1:  # one level (or none with a TTFB) has nothing to spread on a log axis
        ax.set_xscale("log", base=2)
    share = ax.twinx()
    share.plot(xs, [row["realtime_share"] * 100 for row in levels], color="black", marker="s", linestyle="--",
               label="real-time streams")
    share.set_ylabel("streams real-time (%)")
    share.set_ylim(0, 105)
    lines = ax.get_legend_handles_labels()
    more = share.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    ax.set_title("orpheus-tts bench")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def api_levels(runs: dict[str, dict], target_ttfb_ms: float, path: Path) -> bool:
    """`orpheus-tts bench --api a,b`: each door's TTFB p50 / p95 and real-time share against
    concurrency, side by side; False when matplotlib is absent."""
    try:
        plt = _pyplot()
    except ImportError:
        return False
    fig, (ttfb, share) = plt.subplots(1, 2, figsize=(11, 4.5))
    for api, out in runs.items():
        rows = out["levels"]
        xs = [row["concurrency"] for row in rows]
        for key, style in (("ttfb_p50_ms", "-"), ("ttfb_p95_ms", "--")):
            ttfb.plot(xs, [row[key] if row[key] is not None else float("nan") for row in rows], style, marker="o",
                      label=f"{api} {key[5:8]}")
        share.plot(xs, [row["realtime_share"] * 100 for row in rows], marker="s", label=api)
    ttfb.axhline(target_ttfb_ms, color="grey", linestyle=":", label=f"target {target_ttfb_ms:.0f} ms")
    levels = {row["concurrency"] for out in runs.values() for row in out["levels"]}
    for ax, label in ((ttfb, "TTFB (ms)"), (share, "streams real-time (%)")):
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(label)
        if len(levels) > 1:
            ax.set_xscale("log", base=2)
        ax.legend(fontsize=8)
    share.set_ylim(0, 105)
    fig.suptitle("orpheus-tts bench: the same workload through each API")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def engine_bench(results: dict, out: Path) -> None:
    """The GPU bench's `decode_step.png` (with a sweep) and `engine_load.png` (with a load run);
    raises ImportError without matplotlib."""
    plt = _pyplot()
    if results["step_sweep"]:
        _decode_step(results, out, plt)
    if results.get("engine_load"):
        _engine_load(results["engine_load"], out, plt, results.get("device", "GPU"))


def _decode_step(results, out, plt):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in ("bf16", "fp8"):
        rows = [r for r in results["step_sweep"] if r["precision"] == label]
        for ctx in sorted({r["context"] for r in rows}):
            sel = [r for r in rows if r["context"] == ctx]
            axes[0].plot([r["batch"] for r in sel], [r["step_ms"] for r in sel], marker="o", label=f"{label} ctx {ctx}")
            axes[1].plot([r["batch"] for r in sel], [r["tokens_per_s"] for r in sel], marker="o", label=f"{label} ctx {ctx}")
    base = results.get("transformers_baseline", [])
    if base:
        axes[1].plot([r["batch"] for r in base], [r["tokens_per_s"] for r in base], marker="x", label="transformers")
    axes[0].axhline(1e3 / orpheus.TOKENS_PER_SECOND, color="red", ls="--", label="real-time limit (12.19 ms)")
    axes[0].set(xscale="log", xlabel="batch", ylabel="decode step (ms)", title="Decode step, Orpheus-3B")
    axes[1].set(xscale="log", yscale="log", xlabel="batch", ylabel="tokens/s", title="Throughput")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "decode_step.png", dpi=120)


def _engine_load(rows, out, plt, device: str = "GPU"):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [r["concurrency"] for r in rows]
    for key in ("ttfb_p50_ms", "ttfb_p95_ms", "ttfb_p99_ms"):
        ax.plot(x, [r[key] for r in rows], marker="o", label=key)
    ax.set(xlabel="concurrent streams", ylabel="TTFB (ms)", title=f"In-engine load ({device})")
    ax2 = ax.twinx()
    ax2.plot(x, [r["realtime_share"] for r in rows], color="black", ls="--", marker="s", label="real-time share")
    ax2.set(ylabel="share of streams real-time", ylim=(0, 1.05))
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "engine_load.png", dpi=120)


def startup_phases(runs: list[tuple[str, dict[str, float]]], path: Path) -> bool:
    """Start-up from a built engine, one stacked bar of phases per run (oldest first); False when
    matplotlib is absent."""
    try:
        plt = _pyplot()
    except ImportError:
        return False
    phases = list(dict.fromkeys(name for _, seconds in runs for name in seconds))
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.5 * len(runs)))
    for row, (_, seconds) in enumerate(runs):
        left = 0.0
        for index, name in enumerate(phases):
            width = seconds.get(name, 0.0)
            ax.barh(row, width, left=left, color=f"C{index}", label=name if row == 0 else None)
            left += width
        ax.text(left + 1, row, f"{left:.0f} s", va="center")
    ax.set_xlim(0, 1.12 * max(sum(seconds.values()) for _, seconds in runs))
    ax.axvline(30, color="grey", linestyle=":", label="target: 30 s to SERVING")
    ax.set_yticks(range(len(runs)), [label for label, _ in runs])
    ax.invert_yaxis()
    ax.set_xlabel("seconds in each start-up phase (the log's breakdown)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
