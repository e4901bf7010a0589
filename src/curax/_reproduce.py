"""The `curax reproduce` suite: the papers' synthetic results as figures, a Markdown report
(bound vs measured, pass/fail) and a JSON file of every number.

Sections (each a function returning a JSON-able dict and writing its figure):

1. `collapse`: one reward collapses, two rewards keep two basins.
2. `leakage`: `a_inf` vs q against Lemma 3.5's interval, for several separations.
3. `nash`: the K = infinity stable point vs the Nash solution(s); Theorem 3.7 / Cor. 3.8.
4. `variance`: Theorem 3.6's bound.
5. `outside`: Lemma 3.3's decay rate, and detection of the compromise regime.
6. `ferbach`: monotone expected reward, uniqueness with real data.
7. `finite_k`: finite-K stable point -> K = infinity, and the phase diagram.
8. `sampling`: finite-sample (histogram) vs population as N grows; Gaussian-mixture refits.
"""

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from . import _output, _sampling as sampling, _theory as theory
from ._grids import two_basin_problem
from ._maps import fw_gap, potential, trajectory
from ._problem import CurationProblem


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """Sizes of the suite; `quick()` is the sub-minute version used in tests."""

    n: int = 201
    rounds: int = 2000
    leak_separations: tuple[float, ...] = (1.5, 2.0, 3.0)
    leak_qs: tuple[float, ...] = (
        0.02,
        0.05,
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
        0.95,
    )
    variance_cases: tuple[tuple[float, float], ...] = (
        (2.0, 0.3),
        (3.0, 0.5),
        (1.5, 0.2),
    )
    nash_qs: tuple[float, ...] = (0.2, 0.5, 0.8)
    nash_methods: tuple[str, ...] = ("squarem", "active-set")
    finite_ks: tuple[int, ...] = (2, 8, 32, 128)
    finite_k_n: int = 61
    finite_k_rounds: int = 1000
    finite_k_method: str = "auto"
    phase_separations: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)
    phase_ks: tuple[int | None, ...] = (4, None)
    phase_qs: tuple[float, ...] = (0.05, 0.2, 0.5)
    phase_n: int = 61
    phase_rounds: int = 1000
    sample_ns: tuple[int, ...] = (250, 1000, 4000, 16000)
    sample_rounds: int = 5
    sample_seeds: int = 8
    sample_n: int = 101
    gmm_rounds: int = 10
    gmm_samples: int = 2000
    gmm_fit_steps: int = 150

    @staticmethod
    def quick() -> "SuiteConfig":
        return SuiteConfig(
            n=101,
            rounds=1000,
            leak_separations=(2.0, 3.0),
            leak_qs=(0.1, 0.3, 0.5),
            variance_cases=((2.0, 0.3),),
            nash_qs=(0.3,),
            nash_methods=(),
            finite_ks=(8, 32),
            finite_k_n=101,
            finite_k_rounds=1000,
            finite_k_method="dynamics",
            phase_separations=(0.5, 3.0),
            phase_ks=(None,),
            phase_qs=(0.05, 0.5),
            phase_n=101,
            phase_rounds=300,
            sample_ns=(300, 3000),
            sample_rounds=3,
            sample_seeds=8,
            sample_n=41,
            gmm_rounds=3,
            gmm_samples=500,
            gmm_fit_steps=40,
        )


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, name: str) -> str:
    path = out / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return name


def _row(report: theory.TheoremReport) -> dict[str, Any]:
    return report.to_dict()


# --------------------------------------------------------------------------------------------


def section_collapse(cfg: SuiteConfig, out: Path) -> dict[str, Any]:
    x, single = two_basin_problem(n=cfg.n, separation=2.0, q=1.0)
    _, two = two_basin_problem(n=cfg.n, separation=2.0, q=0.3)
    r_single = theory.check_collapse(single, eps=0.1, rounds=cfg.rounds)
    r_two = theory.check_non_collapse(two, eps=0.5, rounds=cfg.rounds)
    p_single = trajectory(single.uniform(), single, cfg.rounds)[-1]
    p_two = trajectory(two.uniform(), two, cfg.rounds)[-1]
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    xs = np.asarray(x)
    ax[0].plot(xs, np.asarray(single.uniform()), "k:", label="start (uniform)")
    ax[0].plot(xs, np.asarray(p_single), label="one reward (q = 1)")
    ax[0].set_title("single reward: collapse")
    ax[1].plot(xs, np.asarray(p_two), color="C1", label="two rewards (q = 0.3)")
    ax[1].set_title("two rewards: two basins survive")
    for a in ax:
        a.set_xlabel("x")
        a.legend(fontsize=8)
    fig_name = _save(fig, out, "collapse.png")
    return {"reports": [_row(r_single), _row(r_two)], "figure": fig_name}


def section_leakage(cfg: SuiteConfig, out: Path) -> dict[str, Any]:
    eps = 0.25
    rows, reports = [], []
    for sep in cfg.leak_separations:
        for q in cfg.leak_qs:
            problem = theory.two_well_problem(sep, q, None, n=cfg.n, half_width=sep / 2 + 2.0)
            rep = theory.check_non_collapse(problem, eps=eps, rounds=cfg.rounds)
            lo, hi = rep.predicted["interval"]
            rows.append(
                {
                    "separation": sep,
                    "q": q,
                    "a_inf": rep.measured["a_inf"],
                    "lo": lo,
                    "hi": hi,
                    "window": rep.values["window"],
                    "verdict": rep.verdict,
                }
            )
            reports.append(_row(rep))
    plt = _plt()
    fig, axes = plt.subplots(
        1, len(cfg.leak_separations), figsize=(3.6 * len(cfg.leak_separations), 3.2)
    )
    axes = np.atleast_1d(axes)
    for ax, sep in zip(axes, cfg.leak_separations):
        rr = [r for r in rows if r["separation"] == sep]
        qs = np.array([r["q"] for r in rr])
        inside = np.array([r["window"][0] < r["q"] < r["window"][1] for r in rr])
        ax.fill_between(
            qs,
            [r["lo"] for r in rr],
            [r["hi"] for r in rr],
            where=inside,
            alpha=0.3,
            label="Lemma 3.5 interval (inside the q-window)",
        )
        ax.vlines(
            qs[inside],
            np.array([r["lo"] for r in rr])[inside],
            np.array([r["hi"] for r in rr])[inside],
            color="C0",
            alpha=0.5,
            lw=3,
        )
        ax.plot(qs, [r["a_inf"] for r in rr], "o-", label="measured a_inf")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="a = q")
        ax.axvspan(0, rr[0]["window"][0], color="grey", alpha=0.15)
        ax.axvspan(rr[0]["window"][1], 1, color="grey", alpha=0.15)
        ax.set_title(f"separation {sep} (curvature 1, eps {eps})", fontsize=9)
        ax.set_xlabel("q")
    axes[0].set_ylabel("basin-1 mass")
    # Below the panels: inside, any corner hides measured points or the interval.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=3, fontsize=8)
    return {"rows": rows, "reports": reports, "figure": _save(fig, out, "leakage.png")}


def _nash_agreement(
    problem: CurationProblem, rounds: int, methods: tuple[str, ...]
) -> dict[str, Any]:
    """Stable point of the dynamics vs the Nash solution(s) of the K = inf potential."""
    p_dyn, info = theory.stable_point(problem, method="dynamics", rounds=rounds, max_chunks=3)
    out: dict[str, Any] = {
        "dynamics": {
            "method": info["method"],
            "phi": float(potential(p_dyn, problem)),
            "fw_gap": float(fw_gap(p_dyn, problem)),
        }
    }
    out |= theory.nash_agreement(problem, p_dyn, methods=methods)
    return out


def section_nash(cfg: SuiteConfig, out: Path) -> dict[str, Any]:
    # Flat, hard-separated plateaus (Corollary 3.8) and smooth wells (Theorem 3.7 only).
    n = cfg.n
    x = np.linspace(-3, 3, n)
    reports, rows = [], []
    for q in cfg.nash_qs:
        r1 = np.where(x < -1, 0.0, np.where(x > 1, -12.0, -15.0))
        r2 = np.where(x > 1, 0.0, np.where(x < -1, -12.0, -15.0))
        problem = CurationProblem(
            jnp.stack([jnp.asarray(r1), jnp.asarray(r2)]), jnp.array([q, 1 - q])
        )
        rep = theory.check_nash_bargaining(problem, eps=0.0, rounds=cfg.rounds)
        reports.append(_row(rep))
        agree = _nash_agreement(problem, cfg.rounds, cfg.nash_methods)
        rows.append({"q": q, "a_inf": rep.measured["a_inf"], "agreement": agree})
    _, smooth = two_basin_problem(n=n, separation=2.0, q=0.3)
    rep = theory.check_nash_bargaining(smooth, eps=0.5, rounds=cfg.rounds)
    reports.append(_row(rep))
    rows.append(
        {
            "q": 0.3,
            "smooth_wells": True,
            "agreement": _nash_agreement(smooth, cfg.rounds, cfg.nash_methods),
        }
    )
    return {"reports": reports, "rows": rows}


def section_variance(cfg: SuiteConfig, out: Path) -> dict[str, Any]:
    reports = []
    for sep, q in cfg.variance_cases:
        problem = theory.two_well_problem(sep, q, None, n=cfg.n, half_width=sep / 2 + 2.0)
        reports.append(_row(theory.check_variance(problem, eps=0.25, rounds=cfg.rounds)))
    return {"reports": reports}


def section_outside(cfg: SuiteConfig, out: Path) -> dict[str, Any]:
    _, dominated = two_basin_problem(n=cfg.n, separation=2.0, q=0.3)
    _, close = two_basin_problem(n=cfg.n, separation=0.6, q=0.5)
    rep_dom = theory.check_outside_decay(dominated, eps=1.0, rounds=cfg.rounds // 2)
    rep_cmp = theory.check_outside_decay(close, eps=0.2, rounds=cfg.rounds // 2, max_chunks=2)
    # Figure: outside mass along the dynamics vs rho^t.
    b = theory.basins(dominated, 1.0)
    ps = np.asarray(trajectory(dominated.uniform(), dominated, 200))
    o = ps[:, b.outside].sum(1)
    rho = rep_dom.predicted["rate_bound"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    t = np.arange(len(o))
    ok = o > 1e-300
    bound = o[0] * rho**t
    ax.semilogy(t[ok], o[ok], label="outside mass p_t(O)")
    ax.semilogy(t, bound, "k--", label=f"rho^t, rho = {rho:.3f}")
    ax.set_xlabel("round t")
    # The y range of the data shown (a fixed 1e-300 floor put 200 empty decades below it).
    shown = np.concatenate([o[ok], bound[bound > 1e-300]])
    ax.set_ylim(10 ** (np.floor(np.log10(shown.min())) - 1), 2)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Lemma 3.3: outside-basin mass decay", fontsize=9)
    return {
        "reports": [_row(rep_dom), _row(rep_cmp)],
        "figure": _save(fig, out, "outside_decay.png"),
    }


def section_ferbach(cfg: SuiteConfig, out: Path, key: Any) -> dict[str, Any]:
    _, one = two_basin_problem(n=cfg.n, separation=2.0, q=1.0, k=4)
    _, two = two_basin_problem(n=cfg.n, separation=2.0, q=0.3)
    n = 61
    xr = np.linspace(-1, 1, n)
    rewards = jnp.stack([jnp.asarray(-0.3 * (xr + 0.5) ** 2), jnp.asarray(-0.3 * (xr - 0.5) ** 2)])
    real = CurationProblem(
        rewards,
        jnp.array([0.4, 0.6]),
        2,
        reference=jnp.full(n, 1 / n),
        reference_weight=0.6,
    )
    reports = [
        _row(theory.check_monotonicity(one, rounds=100)),
        _row(theory.check_monotonicity(two, rounds=200)),
        _row(theory.check_real_data_stability(real, key=key, rounds=200)),
    ]
    return {"reports": reports}


def section_finite_k(cfg: SuiteConfig, out: Path) -> dict[str, Any]:
    problem = theory.two_well_problem(2.0, 0.3, None, n=cfg.finite_k_n, half_width=3.0)
    quick_k = cfg.finite_k_method == "dynamics"
    study = theory.finite_k_convergence(
        problem,
        cfg.finite_ks,
        eps=0.25,
        rounds=cfg.finite_k_rounds,
        method=cfg.finite_k_method,
        max_chunks=2 if quick_k else 3,
        check_stability=not quick_k,
    )
    phase = theory.phase_diagram(
        cfg.phase_separations,
        cfg.phase_ks,
        cfg.phase_qs,
        n=cfg.phase_n,
        rounds=cfg.phase_rounds,
    )
    plt = _plt()
    from matplotlib.ticker import NullLocator

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ks = np.array(study.ks, float)
    ax[0].loglog(ks, study.log_u_distance, "o-", label="max |log u_K - log u_inf|")
    ax[0].loglog(ks, np.maximum(np.abs(study.phi_gap), 1e-16), "s--", label="Phi gap")
    ax[0].set_xlabel("K")
    ax[0].set_xticks(ks, [f"{k:g}" for k in ks])
    ax[0].xaxis.set_minor_locator(NullLocator())
    ax[0].set_title(f"finite K -> K = inf (fitted rate K^{study.rate:.2f})", fontsize=9)
    ax[0].legend(fontsize=8)
    codes = {"two basins": 2, "one basin": 1, "compromise": 0}
    seps, kl, qs = phase.separations, phase.ks, phase.qs
    grid = np.array([[[codes[c] for c in row] for row in sep] for sep in phase.phases])  # s,k,q
    img = grid.transpose(1, 2, 0).reshape(len(kl) * len(qs), len(seps))
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(plt.get_cmap("viridis")([0.0, 0.5, 1.0]))
    image = ax[1].imshow(
        img,
        aspect="auto",
        cmap=cmap,
        norm=BoundaryNorm([-0.5, 0.5, 1.5, 2.5], 3),
        origin="lower",
    )
    bar = fig.colorbar(image, ax=ax[1], ticks=[0, 1, 2], fraction=0.08, pad=0.03)
    bar.ax.set_yticklabels(["compromise", "one basin", "two basins"], fontsize=7)
    ax[1].set_xticks(range(len(seps)), [f"{s:g}" for s in seps])
    ax[1].set_yticks(
        range(len(kl) * len(qs)),
        [f"K={'inf' if k is None else k}, q={q:g}" for k in kl for q in qs],
        fontsize=6,
    )
    ax[1].set_xlabel("separation")
    ax[1].set_title("phase of the stable point", fontsize=9)
    return {
        "study": study.to_dict(),
        "phase_diagram": phase.to_dict(),
        "figure": _save(fig, out, "finite_k.png"),
    }


def section_sampling(cfg: SuiteConfig, out: Path, key: Any) -> dict[str, Any]:
    _, problem = two_basin_problem(n=cfg.sample_n, separation=2.0, q=0.3, k=4)
    k1, k2, k3 = jr.split(key, 3)
    study = sampling.sample_size_study(
        k1, problem, cfg.sample_ns, rounds=cfg.sample_rounds, seeds=cfg.sample_seeds
    )
    centres = jnp.array([[-1.5, 0.0], [1.5, 0.0]])

    def reward_fn(pts):
        return -jnp.sum((pts[None] - centres[:, None]) ** 2, -1)

    m0 = sampling.GaussianMixture.init(k2, 4, 2, scale=2.0)
    results = {}
    plt = _plt()
    from matplotlib.ticker import NullLocator

    fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
    ns = np.array(study.num_samples, float)
    ax[0].loglog(ns, study.distance, "o-", label="mean L1 distance")
    ax[0].loglog(ns, study.distance[0] * (ns / ns[0]) ** -0.5, "k--", label="N^-1/2")
    ax[0].set_xlabel("N (kept samples per round)")
    ax[0].set_xticks(ns, [f"{int(v)}" for v in ns])
    ax[0].xaxis.set_minor_locator(NullLocator())
    ax[0].set_title(f"finite sample vs population (rate {study.rate:.2f})", fontsize=9)
    ax[0].legend(fontsize=8)
    for j, (q, name) in enumerate(((1.0, "one reward"), (0.3, "two rewards"))):
        _, kept = sampling.simulate_mixture(
            k3,
            m0,
            reward_fn,
            jnp.array([q, 1 - q]),
            4,
            cfg.gmm_rounds,
            cfg.gmm_samples,
            fit_steps=cfg.gmm_fit_steps,
        )
        kept = np.asarray(kept)
        left = (kept[:, :, 0] < 0).mean(1)
        var = kept.var(1).sum(-1)
        results[name] = {
            "q": q,
            "left_mode_fraction": left.tolist(),
            "total_variance": var.tolist(),
        }
        a = ax[1 + j]
        a.scatter(kept[0, :, 0], kept[0, :, 1], s=2, alpha=0.3, label="round 0")
        a.scatter(
            kept[-1, :, 0],
            kept[-1, :, 1],
            s=2,
            alpha=0.5,
            label=f"round {cfg.gmm_rounds}",
        )
        a.plot(*np.asarray(centres).T, "kx")
        a.set_title(f"Gaussian mixture, {name} (q = {q})", fontsize=9)
        # Below the panel: the samples fill every corner.
        a.legend(
            fontsize=7,
            markerscale=4,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12),
            ncol=2,
        )
    # Verdicts: rate within [-0.7, -0.3]; one reward shrinks (variance down 5x), two rewards
    # keep both modes (each with >= 5% of the samples).
    one, two = results["one reward"], results["two rewards"]
    verdicts = {
        "rate_near_minus_half": bool(-0.7 <= study.rate <= -0.3),
        "one_reward_collapses": bool(one["total_variance"][-1] < one["total_variance"][0] / 5),
        "two_rewards_keep_two_modes": bool(0.05 <= two["left_mode_fraction"][-1] <= 0.95),
    }
    return {
        "study": study.to_dict(),
        "gmm": results,
        "verdicts": verdicts,
        "figure": _save(fig, out, "sampling.png"),
    }


SECTIONS: tuple[tuple[str, str], ...] = (
    ("collapse", "Single reward collapses; two rewards keep two basins"),
    ("leakage", "Basin mass a_inf vs q against the leakage interval (Lemma 3.5)"),
    ("nash", "Nash bargaining: a* = q, p_q, and stable point vs Nash solution"),
    ("variance", "Variance preservation (Theorem 3.6)"),
    ("outside", "Outside-basin mass decay (Lemma 3.3) and the compromise regime"),
    ("ferbach", "Monotone reward and uniqueness with real data (Ferbach et al.)"),
    ("finite_k", "Finite K -> K = inf, and the phase diagram"),
    ("sampling", "Finite-sample retraining vs the population map"),
)


def _verdicts(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(section, check name, verdict) for every check in the results."""
    rows = []
    for sec, data in results.items():
        if not isinstance(data, dict):
            continue
        for rep in data.get("reports", []):
            rows.append((sec, rep["name"], rep["verdict"]))
        for name, ok in data.get("verdicts", {}).items():
            rows.append((sec, name, "pass" if ok else "fail"))
    return rows


def _expected(verdict: str, name: str) -> bool:
    """Whether a verdict is what the suite expects (the suite deliberately includes cases
    outside the hypotheses, e.g. the compromise regime, smooth wells for Corollary 3.8)."""
    return verdict in ("pass", "hypotheses-fail", "compromise")


def _md_table(reports: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| check | hypotheses | predicted | measured | verdict |",
        "|---|---|---|---|---|",
    ]
    for r in reports:
        hyp = ", ".join(k for k, v in r["hypotheses"].items() if not v)
        hyp = "all hold" if not hyp else f"fail: {hyp}"
        pred = "; ".join(f"{k} = {theory._fmt(v)}" for k, v in r["predicted"].items())
        meas = "; ".join(
            f"{k} = {theory._fmt(v)}" for k, v in r["measured"].items() if k != "consistent"
        )
        lines.append(f"| {r['name']} | {hyp} | {pred} | {meas} | **{r['verdict']}** |")
    return lines


def _fmt_gap(gap: float) -> str:
    """A Frank-Wolfe gap, which is >= 0 by definition: a slightly negative computed value is
    rounding, printed as a bound on the gap (e.g. `<= 1e-16`)."""
    if gap >= 0:
        return f"{gap:.2e}"
    return f"<= 1e{int(np.ceil(np.log10(-gap)))}"


def _leakage_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "| separation | q | q-window | hypotheses | interval | a_inf | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, rep in zip(data["rows"], data["reports"]):
        hyp = ", ".join(k for k, v in rep["hypotheses"].items() if not v)
        hyp = "all hold" if not hyp else f"fail: {hyp}"
        lo_w, hi_w = r["window"]
        lines.append(
            f"| {r['separation']:g} | {r['q']:g} | ({lo_w:.4f}, {hi_w:.4f}) | {hyp} | "
            f"[{r['lo']:.4f}, {r['hi']:.4f}] | {r['a_inf']:.4f} | **{r['verdict']}** |"
        )
    return lines


def write_report(results: dict[str, Any], out: Path) -> None:
    lines = [
        "# curax reproduce",
        "",
        f"Mode: {'quick' if results['meta']['quick'] else 'full'}; "
        f"wall time {results['meta']['seconds']:.1f} s; seed {results['meta']['seed']}.",
        "",
        "Verdicts: **pass** = hypotheses hold and the prediction is met; **fail** = hypotheses "
        "hold and the prediction is violated; **hypotheses-fail** = the theorem does not apply "
        "(shown on purpose, with what happened); **compromise** = a point outside both basins "
        "absorbs the mass (Lemma 3.3 needs outside domination).",
        "",
        "Definitions (scaled rewards r_i / tau): eps-basin S_i = {r_i >= max r_i - eps}; gap "
        "Delta_i = max r_i - max over the other basin of r_i; kappa_i = exp(-(Delta_i - 2 eps)); "
        "q-window (kappa_1, 1 - kappa_2); leakage interval [max(0, (q - kappa_1)/(1 - kappa_1)), "
        "min(1, q/(1 - kappa_2))]; outside domination rho = max over points in no basin of "
        "exp(r_1 - max r_1) + exp(r_2 - max r_2) < 1 (a bound on the growth factor there at the "
        "stable point). Limits are certified: the dynamics run until the growth certificate "
        "max G - 1 is below 1e-8, or a solver (ActiveSetNewton / SQUAREM) certifies them.",
        "",
        "## Summary",
        "",
        "| section | check | cases | verdicts |",
        "|---|---|---|---|",
    ]
    # One row per check: the cases (parameters) of each are in the section tables below.
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for sec, name, verdict in _verdicts(results):
        per = counts.setdefault((sec, name), {})
        per[verdict] = per.get(verdict, 0) + 1
    for (sec, name), per in counts.items():
        text = ", ".join(f"**{v}** x{c}" if c > 1 else f"**{v}**" for v, c in per.items())
        lines.append(f"| {sec} | {name} | {sum(per.values())} | {text} |")
    for key, title in SECTIONS:
        data = results.get(key)
        if data is None:
            continue
        lines += ["", f"## {title}", ""]
        if data.get("figure"):
            lines += [f"![{key}]({data['figure']})", ""]
        if key == "leakage":
            # One table: the generic check table would repeat these cases without their
            # parameters.
            lines += _leakage_table(data)
        elif data.get("reports"):
            lines += _md_table(data["reports"])
        if key == "nash":
            lines += [
                "",
                "Stable point of the K = inf dynamics vs the Nash bargaining solvers (compared "
                "through Phi: only u = E p is unique):",
                "",
                "| problem | method | Phi | FW gap | result | stability |",
                "|---|---|---|---|---|---|",
            ]
            for r in data["rows"]:
                label = "smooth wells" if r.get("smooth_wells") else f"plateaus q={r['q']:g}"
                for meth, v in r["agreement"].items():
                    lines.append(
                        f"| {label} | {v.get('method', meth)} | {v['phi']:.12f} | "
                        f"{_fmt_gap(v['fw_gap'])} | {v.get('result', '')} | "
                        f"{v.get('stability', '')} |"
                    )
        if key == "finite_k":
            s = data["study"]
            lines += [
                "",
                f"Fitted rate: max |log u_K - log u_inf| ~ K^{s['rate']:.3f}.",
                "",
                "| K | max abs log-u distance | Phi gap | basin-1 mass (K=inf: "
                f"{s['basin_mass_inf']:.4f}) |",
                "|---|---|---|---|",
            ]
            for k, d, g, m in zip(s["ks"], s["log_u_distance"], s["phi_gap"], s["basin_mass"]):
                lines.append(f"| {k} | {d:.3e} | {g:.3e} | {m:.4f} |")
            ph = data["phase_diagram"]
            lines += ["", "Phase diagram (rows: K, q; columns: separation):", ""]
            lines.append("| K, q | " + " | ".join(f"{s:g}" for s in ph["separations"]) + " |")
            lines.append("|---|" + "---|" * len(ph["separations"]))
            for ki, k in enumerate(ph["ks"]):
                for qi, q in enumerate(ph["qs"]):
                    cells = [ph["phases"][si][ki][qi] for si in range(len(ph["separations"]))]
                    lines.append(
                        f"| K={'inf' if k is None else k}, q={q:g} | " + " | ".join(cells) + " |"
                    )
        if key == "sampling":
            s = data["study"]
            lines += [
                "",
                f"Fitted rate: L1 distance ~ N^{s['rate']:.3f} (theory -0.5).",
                "",
            ]
            lines += ["| N | mean L1 distance | std. error |", "|---|---|---|"]
            for n_s, d, e in zip(s["num_samples"], s["distance"], s["distance_std"]):
                lines.append(f"| {n_s} | {d:.4f} | {e:.4f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def check_writable(out: Path, *, force: bool = False) -> None:
    """Refuse, before any work, an output folder `run_suite` cannot or must not write (its
    parent is missing or read-only, or it holds files curax did not write and not `force`)."""
    _output.check_output_dir(out, force=force)


def run_suite(
    out: str | os.PathLike,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    sections: tuple[str, ...] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run the reproduction suite, writing figures, `report.md` and `results.json` to `out`.

    The folder is built in a hidden temporary sibling and renamed into place at the end, with a
    manifest (`.curax-manifest.json`) of what curax wrote: a rerun replaces its own previous
    output, an interrupted run leaves the previous output untouched, and a folder holding
    files curax did not write is refused unless `force`.

    **Arguments:**

    - `out`: output folder; its parent must exist.
    - `quick`: the sub-minute version. Keyword only argument.
    - `seed`: seed of the JAX key for the random parts. Keyword only argument.
    - `progress`: show a rich progress bar. Keyword only argument.
    - `sections`: subset of section names (default all). Keyword only argument.
    - `force`: write into a folder holding foreign files (they are kept; files of the same
        names are replaced). Keyword only argument.

    **Returns:**

    The results dict (also written as `results.json`).
    """
    out = Path(out)
    unknown = set(sections or ()) - {k for k, _ in SECTIONS}
    if unknown:
        raise ValueError(
            f"unknown section(s) {sorted(unknown)}; choose from {[k for k, _ in SECTIONS]}."
        )
    check_writable(out, force=force)
    with _output.OutputDir(
        out, force=force, writer="curax reproduce", last=("results.json", "report.md")
    ) as tmp:
        return _run_suite(tmp, quick=quick, seed=seed, progress=progress, sections=sections)


def _run_suite(
    out: Path,
    *,
    quick: bool,
    seed: int,
    progress: bool,
    sections: tuple[str, ...] | None,
) -> dict[str, Any]:
    cfg = SuiteConfig.quick() if quick else SuiteConfig()
    key = jr.key(seed)
    names = [k for k, _ in SECTIONS] if sections is None else list(sections)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "collapse": lambda: section_collapse(cfg, out),
        "leakage": lambda: section_leakage(cfg, out),
        "nash": lambda: section_nash(cfg, out),
        "variance": lambda: section_variance(cfg, out),
        "outside": lambda: section_outside(cfg, out),
        "ferbach": lambda: section_ferbach(cfg, out, jr.fold_in(key, 1)),
        "finite_k": lambda: section_finite_k(cfg, out),
        "sampling": lambda: section_sampling(cfg, out, jr.fold_in(key, 2)),
    }
    results: dict[str, Any] = {}
    start = time.perf_counter()
    titles = dict(SECTIONS)
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            transient=False,
        ) as bar:
            task = bar.add_task("curax reproduce", total=len(names))
            for name in names:
                bar.update(task, description=f"{name}: {titles[name]}")
                t0 = time.perf_counter()
                results[name] = runners[name]() | {"seconds": time.perf_counter() - t0}
                bar.advance(task)
    else:
        for name in names:
            t0 = time.perf_counter()
            results[name] = runners[name]() | {"seconds": time.perf_counter() - t0}
    verdicts = _verdicts(results)
    results["meta"] = {
        "quick": quick,
        "seed": seed,
        "seconds": time.perf_counter() - start,
        "config": theory._jsonable(dataclasses.asdict(cfg)),
        "all_as_expected": all(_expected(v, n) for _, n, v in verdicts),
        "failures": [f"{s}: {n}" for s, n, v in verdicts if not _expected(v, n)],
    }
    results = theory._jsonable(results)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_report(results, out)
    return results
