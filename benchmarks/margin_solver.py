"""Speed and accuracy of the γ-PO margin solvers (DESIGN §3.1): exact against the published mirror descent.

For N ∈ {256, 4096} reward gaps and τ ∈ {1, 3, 10}: the median wall time of one ``solve_margins``
call per solver, and the objective gap (published iteration − exact optimum; the exact solver's
stationarity residual is also reported). On the CPU the exact solver runs its host path; the
device path (the sync-free solver the exact solver used on every device before, and still uses
on GPUs and where the host path does not converge) is timed beside it in the same process
(``device ms``), with the largest margin difference between the two. Gaps are N(1, 5²) (seed 0), γ0 = 4 (the γ-SimPO
Llama-3 setting γ0/β = 0.4 at β = 10), the published 20 mirror-descent steps. CPU timings use
one thread (wall time, and the thread's CPU time, which a busy shared machine inflates less); CUDA
timings, when a GPU is present, synchronise before and after each solve.

    PYTHONPATH=. python benchmarks/margin_solver.py [--repeats 30]
    PYTHONPATH=. python benchmarks/margin_solver.py --smoke       # seconds: N 256 only, 3 repeats

Prints a table, then the headline: the exact solve of 256 gaps, per τ (the γ candidate set of the
published settings, K = 256); the last line is the same figures as JSON (``exact_256_ms``: τ -> ms).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch

from noisypref.methods.margins import margin_objective, solve_margins
from noisypref.methods.margins.exact import device_exact_log_weights

GAMMA0 = 4.0
TAUS = (1.0, 3.0, 10.0)
COUNTS = (256, 4096)
SOLVERS = ("exact", "mirror_descent", "published_mirror_descent")


def reward_gaps(count: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(count, generator=generator, dtype=torch.float64) * 5 + 1).to(device)


def median_ms(gaps: torch.Tensor, tau: float, solver: str, repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time of this thread (less inflated on a shared machine), in ms."""
    cuda = gaps.device.type == "cuda"

    def solve() -> None:
        if solver == "device":
            device_exact_log_weights(gaps.double(), GAMMA0, tau)
        else:
            solve_margins(gaps, GAMMA0, tau, solver)

    for _ in range(3):
        solve()
    wall, cpu = [], []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(gaps.device)
        started, started_cpu = time.perf_counter(), time.thread_time()
        solve()
        if cuda:
            torch.cuda.synchronize(gaps.device)
        wall.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def stationarity_residual(gaps: torch.Tensor, log_weights: torch.Tensor, tau: float) -> float:
    """max_i |ψ_i − μ|/(τ + γ0), ψ_i = γ0·σ(γ_i − g_i) + τ(1 + log N p_i), μ the midpoint of the ψ_i."""
    count = gaps.numel()
    margins = GAMMA0 * count * torch.exp(log_weights)
    psi = GAMMA0 * torch.sigmoid(margins - gaps) + tau * (1 + math.log(count) + log_weights)
    return float((psi.max() - psi.min()) / 2 / (tau + GAMMA0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed solves per cell (median reported)")
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI: N 256 only, 3 repeats")
    args = parser.parse_args()
    counts = COUNTS
    if args.smoke:
        args.repeats, counts = 3, (256,)

    torch.set_num_threads(1)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for count in counts:
            gaps = reward_gaps(count, device)
            for tau in TAUS:
                row = {"device": device.type, "n": count, "tau": tau}
                objectives, solved = {}, {}
                for solver in SOLVERS:
                    row[f"{solver}_ms"], row[f"{solver}_cpu_ms"] = median_ms(gaps, tau, solver, args.repeats)
                    margins, log_weights = solve_margins(gaps, GAMMA0, tau, solver, return_log_weights=True)
                    objectives[solver] = margin_objective(gaps, log_weights, GAMMA0, tau).item()
                    solved[solver] = margins
                    if solver == "exact":
                        row["exact_residual"] = stationarity_residual(gaps, log_weights, tau)
                        exact_margins = margins
                row["device_ms"], row["device_cpu_ms"] = median_ms(gaps, tau, "device", args.repeats)
                device_margins = (
                    GAMMA0 * count * torch.exp(device_exact_log_weights(gaps.double(), GAMMA0, tau))
                )
                row["host_device_max_margin_difference"] = float(
                    (device_margins - exact_margins.double()).abs().max()
                )
                row["objective_exact"] = objectives["exact"]
                row["objective_gap"] = objectives["mirror_descent"] - objectives["exact"]
                row["objective_gap_published"] = objectives["published_mirror_descent"] - objectives["exact"]
                row["max_margin_difference"] = float((solved["mirror_descent"] - exact_margins).abs().max())
                row["published_max_margin_difference"] = float(
                    (solved["published_mirror_descent"] - exact_margins).abs().max()
                )
                rows.append(row)

    print(
        f"γ-PO margin solvers: gaps N(1, 5²), γ0 = {GAMMA0}, mirror descent 20 steps, median of {args.repeats}"
    )
    print(
        f"torch {torch.__version__}, CPU threads 1"
        + (f", {torch.cuda.get_device_name()}" if len(devices) > 1 else "")
    )
    header = (
        f"{'device':<7}{'N':>6}{'tau':>6}{'exact ms':>10}{'(cpu)':>7}{'device ms':>11}{'(cpu)':>7}"
        f"{'|Δγ| host-dev':>15}{'mirror ms':>11}"
        f"{'objective (exact)':>19}{'gap mirror-exact':>18}{'max |Δγ|':>10}{'published |Δγ|':>16}{'exact residual':>16}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['device']:<7}{row['n']:>6}{row['tau']:>6g}{row['exact_ms']:>10.2f}{row['exact_cpu_ms']:>7.2f}"
            f"{row['device_ms']:>11.2f}{row['device_cpu_ms']:>7.2f}"
            f"{row['host_device_max_margin_difference']:>15.1e}{row['mirror_descent_ms']:>11.2f}"
            f"{row['objective_exact']:>19.4f}{row['objective_gap']:>18.2e}{row['max_margin_difference']:>10.3f}"
            f"{row['published_max_margin_difference']:>16.3f}"
            f"{row['exact_residual']:>16.1e}"
        )
    exact_256 = {
        device.type: {row["tau"]: row["exact_ms"] for row in rows if row["device"] == device.type and row["n"] == 256}
        for device in devices
    }
    exact_256_cpu = {row["tau"]: row["exact_cpu_ms"] for row in rows if row["device"] == "cpu" and row["n"] == 256}
    for device, by_tau in exact_256.items():
        print(
            f"exact γ solve of 256 gaps on {device}"
            + (" (one thread; wall ms, thread CPU ms)" if device == "cpu" else "")
            + ": "
            + ", ".join(
                f"{by_tau[tau]:.2f}" + (f" ({exact_256_cpu[tau]:.2f})" if device == "cpu" else "") + f" ms at τ {tau:g}"
                for tau in sorted(by_tau, reverse=True)
            )
            + f"; load average {os.getloadavg()[0]:.1f}"
        )
    figures = {
        "gaps": "N(1, 5^2), seed 0",
        "gamma0": GAMMA0,
        "mirror_descent_iterations": 20,
        "cpu_threads": 1,
        "repeats": args.repeats,
        "exact_256_ms": exact_256,
        "exact_256_cpu_thread_ms": exact_256_cpu,
        "load_average_1min": os.getloadavg()[0],
        "rows": rows,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
