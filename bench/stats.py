"""Statistics, verdicts and the markdown report of the benchmark (standard library only).

The rules that keep the report honest live here, and `tests/bench/test_stats.py` checks
them:

* A figure is a median with its spread: the interquartile range of all measured steps
  and the min-max of the per-round medians.
* An implementation's *interval* for a metric is the hull of its per-round medians and
  of the IQR of its pooled steps.
* "A is faster than B" (and a ratio A/B) is stated only when both were measured in at
  least `MIN_ROUNDS` interleaved rounds, no record of either was taken on a busy machine,
  and A's interval lies entirely below B's (A's max < B's min). Otherwise the report says
  "no conclusion" and why.
* A record is flagged *busy* when the 1-minute load average before or during its run
  exceeded `0.5 + threads`, or other processes kept more than `MAX_OTHER_CORES` cores
  busy, or the hypervisor stole more than `MAX_STEAL` of a core; and *spread* when the
  IQR or the range of round medians exceeds `MAX_REL_SPREAD` of the median.
"""

import statistics

MIN_ROUNDS = 2
LOAD_MARGIN = 0.5
MAX_OTHER_CORES = 0.3
MAX_STEAL = 0.1
MAX_REL_SPREAD = 0.15
REFERENCE = "imagen-pytorch"
IMPL_ORDER = (REFERENCE, "keras/tensorflow", "keras/jax", "keras/torch")


def quartiles(xs):
    """(q1, median, q3) with the inclusive method; a single value gives (x, x, x)."""
    xs = sorted(xs)
    if not xs:
        raise ValueError("quartiles() needs at least one value. Received: []")
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def describe(rounds):
    """Summary of one metric of one implementation: `rounds` is a list of lists of values
    (one list per interleaved round). Empty rounds are ignored; None if none is left."""
    rounds = [list(r) for r in rounds if r]
    if not rounds:
        return None
    pooled = [x for r in rounds for x in r]
    q1, med, q3 = quartiles(pooled)
    round_medians = [statistics.median(r) for r in rounds]
    lo = min(min(round_medians), q1)
    hi = max(max(round_medians), q3)
    return dict(
        n=len(pooled),
        rounds=len(rounds),
        median=med,
        q1=q1,
        q3=q3,
        min=min(pooled),
        max=max(pooled),
        round_medians=round_medians,
        interval=(lo, hi),
        rel_spread=max(q3 - q1, max(round_medians) - min(round_medians)) / med if med else 0.0,
    )


def compare(a, b, a_name="A", b_name="B", busy=False):
    """Verdict on a (time per step) against b: dict(kind, ratio, text).

    kind is "faster", "slower" or "none"; ratio (a / b, medians of round medians) is set
    only when a conclusion is drawn.
    """
    if a is None or b is None:
        return dict(kind="none", ratio=None, text="no conclusion: not measured")
    if min(a["rounds"], b["rounds"]) < MIN_ROUNDS:
        return dict(kind="none", ratio=None, text=f"no conclusion: fewer than {MIN_ROUNDS} rounds")
    if busy:
        return dict(kind="none", ratio=None, text="no conclusion: machine not quiet")
    (a_lo, a_hi), (b_lo, b_hi) = a["interval"], b["interval"]
    ratio = statistics.median(a["round_medians"]) / statistics.median(b["round_medians"])
    rounds = min(a["rounds"], b["rounds"])
    if a_hi < b_lo:
        return dict(
            kind="faster",
            ratio=ratio,
            text=(
                f"{a_name} faster than {b_name}: {ratio:.2f}x (max {a_hi:.3g} s < min "
                f"{b_lo:.3g} s over {rounds} rounds)"
            ),
        )
    if b_hi < a_lo:
        return dict(
            kind="slower",
            ratio=ratio,
            text=(
                f"{a_name} slower than {b_name}: {ratio:.2f}x (min {a_lo:.3g} s > max "
                f"{b_hi:.3g} s over {rounds} rounds)"
            ),
        )
    return dict(kind="none", ratio=None, text="no conclusion: intervals overlap")


# Issue #16's targets, as fractions of the reference's time per step.
TARGETS = dict(train_best=0.5, train_every=1.0, sample_best=0.33)


def against_target(a, ref, factor, busy=False):
    """Is `a` at most `factor` x the reference? dict(kind, ratio, text); kind is "met"
    (a's whole interval below factor x the reference's), "missed" (above it) or "none"
    (the intervals straddle it, fewer than `MIN_ROUNDS` rounds, or a busy machine).
    `ratio` (medians of round medians) is always given when both were measured."""
    if a is None or ref is None:
        return dict(kind="none", ratio=None, text="not measured")
    ratio = statistics.median(a["round_medians"]) / statistics.median(ref["round_medians"])
    if min(a["rounds"], ref["rounds"]) < MIN_ROUNDS:
        return dict(kind="none", ratio=ratio, text=f"{ratio:.2f}x, fewer than {MIN_ROUNDS} rounds")
    if busy:
        return dict(kind="none", ratio=ratio, text=f"{ratio:.2f}x, machine not quiet")
    (a_lo, a_hi), (r_lo, r_hi) = a["interval"], ref["interval"]
    if a_hi < factor * r_lo:
        return dict(kind="met", ratio=ratio, text=f"{ratio:.2f}x")
    if a_lo > factor * r_hi:
        return dict(kind="missed", ratio=ratio, text=f"{ratio:.2f}x")
    return dict(kind="none", ratio=ratio, text=f"{ratio:.2f}x, intervals straddle {factor}x")


_MARK = {"met": "✓ met", "missed": "✗ missed", "none": "? undetermined"}


def _combine(verdicts, every):
    """One cell: the target met by the best implementation (met if any met, missed if all
    missed) or, with `every`, by every implementation (missed if any missed, met if all
    met); the ratio shown is the best's or the worst's."""
    kinds = {v["kind"] for v in verdicts.values()}
    if every:
        kind = "missed" if "missed" in kinds else "met" if kinds == {"met"} else "none"
    else:
        kind = "met" if "met" in kinds else "missed" if kinds == {"missed"} else "none"
    shown = [(v["ratio"], impl, v) for impl, v in verdicts.items() if v["ratio"] is not None]
    if not shown:
        return f"{_MARK[kind]} (not measured)"
    ratio, impl, v = (max if every else min)(shown, key=lambda x: x[0])
    return f"{_MARK[kind]}: {'worst' if every else 'best'} {impl} {v['text']}"


def targets_row(summaries):
    """One markdown row's cells (without the group label) of the issue #16 targets for
    one (config, batch, threads) group: {impl: summarize_impl(...)}."""
    ref = summaries.get(REFERENCE)
    ours = {impl: s for impl, s in summaries.items() if impl != REFERENCE}
    if ref is None or not ours:
        return [
            "? " + ("no reference measured" if ref is None else "no keras backend measured")
        ] * 4

    def verdicts(metric, factor):
        return {
            impl: against_target(
                s[metric], ref[metric], factor, busy=bool(s["busy"] or ref["busy"])
            )
            for impl, s in ours.items()
        }

    rss_ref = ref["peak_rss_mb"]
    over = [
        f"{impl} {s['peak_rss_mb']:.0f}"
        for impl, s in ours.items()
        if rss_ref and s["peak_rss_mb"] and s["peak_rss_mb"] > rss_ref
    ]
    if not rss_ref:
        rss = "? undetermined (no reference figure)"
    elif over:
        rss = f"✗ missed: {', '.join(over)} MB > reference {rss_ref:.0f} MB"
    else:
        rss = f"✓ met: all ≤ reference {rss_ref:.0f} MB"
    return [
        _combine(verdicts("train", TARGETS["train_best"]), every=False),
        _combine(verdicts("train", TARGETS["train_every"]), every=True),
        _combine(verdicts("sample", TARGETS["sample_best"]), every=False),
        rss,
    ]


# --- records --------------------------------------------------------------------------------


def _phase_load_values(rec):
    loads = [rec.get("loadavg_launch")]
    for phase in ("train", "sample"):
        load = (rec.get(phase) or {}).get("load") or {}
        loads.append(load.get("loadavg1_max"))
        loads.append((load.get("loadavg_before") or [None])[0])
    return [x for x in loads if x is not None]


def _busy(rec):
    """(kind, value, limit, phase) for each way the machine was not quiet for `rec`."""
    found = []
    limit = LOAD_MARGIN + rec.get("threads", 1)
    loads = _phase_load_values(rec)
    if loads and max(loads) > limit:
        found.append(("load average", max(loads), limit, None))
    for phase in ("train", "sample"):
        load = (rec.get(phase) or {}).get("load") or {}
        if load.get("other_cores", 0.0) > MAX_OTHER_CORES:
            found.append(
                ("cores used by other processes", load["other_cores"], MAX_OTHER_CORES, phase)
            )
        if load.get("steal_per_s", 0.0) > MAX_STEAL:
            found.append(("steal (cores)", load["steal_per_s"], MAX_STEAL, phase))
    return found


def busy_reasons(rec):
    """Why a record was taken on a machine that was not quiet (empty list: quiet)."""
    return [
        f"{kind} {value:.2f} > {limit:.1f}" + (f" ({phase})" if phase else "")
        for kind, value, limit, phase in _busy(rec)
    ]


def busy_summary(recs):
    """The worst value of each reason over several records, one line each."""
    worst = {}
    for rec in recs:
        for kind, value, limit, _ in _busy(rec):
            n, top, _ = worst.get(kind, (0, value, limit))
            worst[kind] = (n + 1, max(top, value), limit)
    return [
        f"{kind} up to {top:.2f} > {limit:.1f} ({n} record(s) or phase(s))"
        for kind, (n, top, limit) in worst.items()
    ]


def group_records(records):
    """{(config, batch, threads): {impl: [records in round order]}} of measurement records."""
    groups = {}
    for rec in records:
        if rec.get("kind", "measurement") != "measurement":
            continue
        key = (rec["config"], rec["batch"], rec["threads"])
        groups.setdefault(key, {}).setdefault(rec["impl"], []).append(rec)
    for impls in groups.values():
        for recs in impls.values():
            recs.sort(key=lambda r: r.get("round", 0))
    return groups


def metric_rounds(recs, metric):
    key = dict(
        train=("train", "wall_s"),
        train_cpu=("train", "cpu_s"),
        sample=("sample", "wall_s_per_step"),
        sample_cpu=("sample", "cpu_s_per_step"),
    )[metric]
    return [(r.get(key[0]) or {}).get(key[1]) or [] for r in recs]


def peak_phase(rec, tolerance=0.02):
    """The first phase after which the record's peak RSS was within `tolerance` of its
    final peak (`build`, `warmup` = first steps with trace/compile, `train`, `sample`);
    None for records without per-phase figures."""
    after = rec.get("peak_rss_mb_after") or {}
    final = rec.get("peak_rss_mb") or max(after.values(), default=0)
    for phase, mb in after.items():
        if mb >= (1 - tolerance) * final:
            return phase
    return None


def summarize_impl(recs):
    s = {
        m: describe(metric_rounds(recs, m)) for m in ("train", "train_cpu", "sample", "sample_cpu")
    }
    s["busy"] = busy_summary(recs)
    s["errors"] = [r["error"] for r in recs if r.get("error")]
    s["first_step"] = describe(
        [[r["train_warmup"][0]["wall_s"]] for r in recs if r.get("train_warmup")]
    )
    s["sample_first_call"] = describe(
        [[r["sample_warmup"]["wall_s"]] for r in recs if r.get("sample_warmup")]
    )
    threads = [r.get("threads_after_warmup") for r in recs if r.get("threads_after_warmup")]
    threads += [((r.get("train") or {}).get("load") or {}).get("max_threads") for r in recs]
    threads = [t for t in threads if t]
    s["os_threads"] = (min(threads), max(threads)) if threads else None
    s["peak_rss_mb"] = max((r.get("peak_rss_mb") or 0) for r in recs) or None
    s["peak_rss_phase"] = sorted({p for r in recs if (p := peak_phase(r))})
    s["spread"] = any(s[m] and s[m]["rel_spread"] > MAX_REL_SPREAD for m in ("train", "sample"))
    return s


# --- markdown ---------------------------------------------------------------------------


def _fig(d, digits=3):
    if d is None:
        return "-"
    lo, hi = min(d["round_medians"]), max(d["round_medians"])
    return (
        f"{d['median']:.{digits}g} [{d['q1']:.{digits}g}–{d['q3']:.{digits}g}] "
        f"(rounds {lo:.{digits}g}–{hi:.{digits}g}, n={d['n']})"
    )


def _util(s, metric="train"):
    wall, cpu = s[metric], s[metric + "_cpu"]
    if not wall or not cpu or not wall["median"]:
        return "-"
    return f"{cpu['median']:.3g} ({cpu['median'] / wall['median']:.2f})"


def _rss(s):
    if not s["peak_rss_mb"]:
        return "-"
    phase = f" (set in {'/'.join(s['peak_rss_phase'])})" if s["peak_rss_phase"] else ""
    return f"{s['peak_rss_mb']:g}{phase}"


def _verdict_cell(v):
    if v["kind"] == "none":
        return v["text"]
    return f"**{v['ratio']:.2f}x** ({v['kind']})"


def achieved_flops(s, flops, config, batch):
    """'GFLOP/s (% of peak)' of one implementation's median train step, from `flops` (the
    JSON of `bench/flops.py`); '-' when the config or the step time is unknown."""
    step_flops = (flops.get("train_step_flops") or {}).get(f"{config}/{batch}")
    if not step_flops or not s["train"] or not s["train"]["median"]:
        return "-"
    gflops = step_flops / s["train"]["median"] / 1e9
    peak = max((flops.get("matmul_peak_gflops") or {}).values(), default=None)
    return f"{gflops:.3g}" + (f" ({gflops / peak:.0%})" if peak else "")


def report(records, header=None, flops=None):
    """Markdown report: one table per (config, batch, threads), warnings and conclusions.

    `flops` (optional, the JSON written by `bench/flops.py`) adds each implementation's
    achieved train-step GFLOP/s and its share of the machine's float32 matmul peak."""
    lines, warnings, conclusions, target_lines = [], [], [], []
    header = header or {}
    groups = group_records(records)
    for (config, batch, threads), impls in sorted(groups.items()):
        lines += [
            f"### {config}, batch {batch}, {threads} thread(s)",
            "",
            "| implementation | train s/step: median [IQR] (round medians) "
            "| train CPU s/step (CPU/wall) "
            + ("| train GFLOP/s (% of matmul peak) " if flops else "")
            + "| OS threads | first step s "
            "| train vs reference | sample s/step: median [IQR] (round medians) "
            "| sample CPU s/step (CPU/wall) | sample vs reference | 1st sample call s "
            "| peak RSS MB (phase that set it) | flags |",
            "|---" * (13 if flops else 12) + "|",
        ]
        summaries = {impl: summarize_impl(recs) for impl, recs in impls.items()}
        target_lines.append(
            f"| {config}, batch {batch}, {threads} thread(s) | "
            + " | ".join(targets_row(summaries))
            + " |"
        )
        ref = summaries.get(REFERENCE)
        order = [i for i in IMPL_ORDER if i in summaries] + sorted(
            i for i in summaries if i not in IMPL_ORDER
        )
        for impl in order:
            s = summaries[impl]
            flags = []
            if s["busy"]:
                flags.append("⚠ busy")
                warnings.append(f"{config}/b{batch}/t{threads} {impl}: " + "; ".join(s["busy"]))
            if s["spread"]:
                flags.append("⚠ spread")
                warnings.append(
                    f"{config}/b{batch}/t{threads} {impl}: spread above "
                    f"{MAX_REL_SPREAD:.0%} of the median"
                )
            if s["errors"]:
                flags.append("✗ error")
                warnings.append(f"{config}/b{batch}/t{threads} {impl}: {s['errors'][0][:200]}")
            cells = {}
            for metric in ("train", "sample"):
                if impl == REFERENCE or ref is None:
                    cells[metric] = "reference" if impl == REFERENCE else "-"
                    continue
                v = compare(
                    s[metric], ref[metric], impl, REFERENCE, busy=bool(s["busy"] or ref["busy"])
                )
                cells[metric] = _verdict_cell(v)
                if v["kind"] != "none":
                    conclusions.append(
                        f"{config}, batch {batch}, {threads} thread(s), {metric} step: {v['text']}"
                    )
            os_threads = (
                "-"
                if not s["os_threads"]
                else "–".join(str(x) for x in sorted(set(s["os_threads"])))
            )
            first = (
                "-"
                if not s["first_step"]
                else (
                    f"{s['first_step']['median']:.3g} ({s['first_step']['min']:.3g}–"
                    f"{s['first_step']['max']:.3g})"
                )
            )
            first_sample = (
                "-" if not s["sample_first_call"] else (f"{s['sample_first_call']['median']:.3g}")
            )
            lines.append(
                f"| {impl} | {_fig(s['train'])} | {_util(s)} "
                + (f"| {achieved_flops(s, flops, config, batch)} " if flops else "")
                + f"| {os_threads} | {first} "
                f"| {cells['train']} | {_fig(s['sample'])} | {_util(s, 'sample')} "
                f"| {cells['sample']} | {first_sample} "
                f"| {_rss(s)} | {' '.join(flags)} |"
            )
        lines.append("")

    out = ["# Benchmark: imagen-keras vs imagen-pytorch 2.1.0", ""]
    for key in ("date", "machine", "versions", "command", "label"):
        if header.get(key):
            out.append(f"- **{key}**: {header[key]}")
    if flops:
        out.append(
            f"- **FLOPs**: train-step FLOPs from XLA's cost analysis of the keras/JAX step "
            f"(`bench/flops.py`, {flops.get('date')}); float32 matmul peak "
            f"{flops.get('matmul_peak_gflops')} GFLOP/s with {flops.get('threads')} thread(s)"
        )
    out.append("")
    if warnings:
        out += [
            "**WARNING: the machine was not quiet or the spread was large for the rows "
            "marked ⚠. These figures are not quiet-machine figures; no conclusion is "
            "drawn from a busy row.**",
            "",
        ]
    out += lines
    out += [
        "Times in seconds: median [interquartile range] of all measured steady-state steps, "
        "then the min–max of the per-round medians. Sampling: seconds per denoising step "
        "(whole cascade, cond_scale 3, first call excluded). A ratio vs the reference is "
        f"shown only when the two intervals separate over ≥ {MIN_ROUNDS} interleaved "
        "rounds on a quiet machine.",
        "",
    ]
    out += [
        "## Targets of issue #16",
        "",
        f"Train step: best backend ≤ {TARGETS['train_best']}x and every backend ≤ "
        f"{TARGETS['train_every']}x the reference's; sampling: best backend ≤ "
        f"{TARGETS['sample_best']}x; peak RSS ≤ the reference's. ✓ met / ✗ missed: the "
        "implementation's whole interval (round medians and IQR) lies below / above the "
        "target times the reference's interval; ? undetermined otherwise. The ratio shown "
        "is that of the medians of round medians.",
        "",
        "| config | train, best (≤ "
        f"{TARGETS['train_best']}x) | train, every backend (≤ {TARGETS['train_every']}x) "
        f"| sampling, best (≤ {TARGETS['sample_best']}x) | peak RSS (≤ reference) |",
        "|---" * 5 + "|",
        *target_lines,
        "",
    ]
    out.append("## Conclusions")
    out.append("")
    out += [f"- {c}" for c in conclusions] or ["- None: no comparison separated cleanly."]
    if warnings:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    return "\n".join(out) + "\n"
