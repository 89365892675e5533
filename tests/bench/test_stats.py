"""The benchmark report draws a conclusion only when the numbers support it.

Pure Python: loads `bench/stats.py` by path and never imports a keras backend.
"""

import importlib.util
import pathlib
import subprocess
import sys
import unittest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_imagen_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stats = _load("stats")


def record(impl, rnd, train, sample=None, threads=2, load=0.2, other_cores=0.0):
    phase_load = dict(
        loadavg_before=[load, load, load],
        loadavg1_max=load,
        other_cores=other_cores,
        steal_per_s=0.0,
        max_threads=4,
    )
    return dict(
        kind="measurement",
        impl=impl,
        config="tiny64",
        batch=4,
        threads=threads,
        round=rnd,
        loadavg_launch=load,
        threads_after_warmup=4,
        peak_rss_mb=1000.0,
        train_warmup=[dict(wall_s=10.0, cpu_s=10.0)],
        train=dict(wall_s=train, cpu_s=train, load=phase_load),
        sample_warmup=dict(wall_s=5.0, cpu_s=5.0),
        sample=dict(
            wall_s_per_step=sample or train, cpu_s_per_step=sample or train, load=phase_load
        ),
    )


REF, JAX = "imagen-pytorch", "keras/jax"


class DescribeTest(unittest.TestCase):
    def test_interval_is_hull_of_round_medians_and_iqr(self):
        d = stats.describe([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
        self.assertEqual(d["rounds"], 2)
        self.assertEqual(d["round_medians"], [1.0, 2.0])
        self.assertEqual(d["interval"], (1.0, 2.0))
        self.assertAlmostEqual(d["rel_spread"], 1.0 / 1.5)

    def test_single_value(self):
        self.assertEqual(stats.quartiles([3.0]), (3.0, 3.0, 3.0))
        self.assertIsNone(stats.describe([[], []]))
        with self.assertRaises(ValueError):
            stats.quartiles([])


class CompareTest(unittest.TestCase):
    def test_overlapping_intervals_give_no_conclusion(self):
        a = stats.describe([[1.0, 1.1, 1.2], [1.9, 2.0, 2.1]])
        b = stats.describe([[1.8, 1.9, 2.0], [2.0, 2.1, 2.2]])
        v = stats.compare(a, b, "A", "B")
        self.assertEqual(v["kind"], "none")
        self.assertIsNone(v["ratio"])
        self.assertEqual(v["text"], "no conclusion: intervals overlap")

    def test_separated_intervals_give_ratio(self):
        a = stats.describe([[1.0, 1.0, 1.1], [1.0, 1.1, 1.1]])
        b = stats.describe([[2.0, 2.1, 2.2], [2.0, 2.2, 2.2]])
        v = stats.compare(a, b, "A", "B")
        self.assertEqual(v["kind"], "faster")
        self.assertAlmostEqual(v["ratio"], 1.05 / 2.15)
        self.assertIn("A faster than B", v["text"])
        self.assertEqual(stats.compare(b, a, "B", "A")["kind"], "slower")

    def test_one_round_or_busy_machine_gives_no_conclusion(self):
        a, b = stats.describe([[1.0, 1.0]]), stats.describe([[2.0, 2.0]])
        self.assertIn("fewer than 2 rounds", stats.compare(a, b)["text"])
        a2 = stats.describe([[1.0], [1.0]])
        b2 = stats.describe([[2.0], [2.0]])
        self.assertEqual(stats.compare(a2, b2)["kind"], "faster")
        self.assertEqual(
            stats.compare(a2, b2, busy=True)["text"], "no conclusion: machine not quiet"
        )


class ReportTest(unittest.TestCase):
    def test_overlap_report_states_no_conclusion(self):
        recs = [
            record(REF, 1, [2.0, 2.1, 2.2]),
            record(JAX, 1, [1.0, 1.1, 2.3]),
            record(REF, 2, [2.0, 2.1, 2.2]),
            record(JAX, 2, [2.1, 2.2, 2.4]),
        ]
        md = stats.report(recs, dict(date="today"))
        self.assertIn("no conclusion: intervals overlap", md)
        self.assertIn("None: no comparison separated cleanly", md)
        self.assertNotIn("faster", md)
        self.assertNotIn("x**", md)

    def test_separated_quiet_report_gives_ratio_and_conclusion(self):
        recs = [
            record(REF, 1, [2.0, 2.1, 2.2]),
            record(JAX, 1, [1.0, 1.0, 1.1]),
            record(REF, 2, [2.0, 2.1, 2.2]),
            record(JAX, 2, [1.0, 1.1, 1.1]),
        ]
        md = stats.report(recs)
        self.assertIn("**0.50x** (faster)", md)
        self.assertIn("keras/jax faster than imagen-pytorch", md)
        self.assertNotIn("WARNING", md)

    def test_busy_machine_warns_and_draws_nothing(self):
        recs = [
            record(REF, 1, [2.0, 2.1, 2.2]),
            record(JAX, 1, [1.0, 1.0, 1.1], load=4.0),
            record(REF, 2, [2.0, 2.1, 2.2]),
            record(JAX, 2, [1.0, 1.1, 1.1]),
        ]
        md = stats.report(recs)
        self.assertIn("WARNING", md)
        self.assertIn("⚠ busy", md)
        self.assertIn("no conclusion: machine not quiet", md)
        self.assertNotIn("faster", md)

    def test_busy_reasons(self):
        self.assertEqual(stats.busy_reasons(record(REF, 1, [1.0], load=2.4)), [])
        self.assertIn(
            "load average 2.60 > 2.5", stats.busy_reasons(record(REF, 1, [1.0], load=2.6))[0]
        )
        self.assertTrue(stats.busy_reasons(record(REF, 1, [1.0], threads=1, load=1.6)))
        other = stats.busy_reasons(record(REF, 1, [1.0], other_cores=0.8))
        self.assertEqual(
            other,
            [
                "cores used by other processes 0.80 > 0.3 (train)",
                "cores used by other processes 0.80 > 0.3 (sample)",
            ],
        )


def targets_md(recs):
    md = stats.report(recs)
    section = md.split("## Targets of issue #16")[1].split("## Conclusions")[0]
    return [line for line in section.splitlines() if line.startswith("| tiny64")][0]


class TargetsTest(unittest.TestCase):
    TF = "keras/tensorflow"

    def recs(self, jax, tf, jax_sample=None, ref_rss=1000.0, jax_rss=1000.0, jax_load=0.2):
        out = []
        for rnd in (1, 2):
            ref = record(REF, rnd, [2.0, 2.05, 2.1], sample=[1.0, 1.0, 1.0])
            ref["peak_rss_mb"] = ref_rss
            j = record(JAX, rnd, jax, sample=jax_sample or [0.3, 0.3, 0.3], load=jax_load)
            j["peak_rss_mb"] = jax_rss
            out += [ref, j, record(self.TF, rnd, tf, sample=[0.9, 0.9, 0.9])]
        return out

    def test_met_when_whole_interval_is_below_the_target(self):
        row = targets_md(self.recs(jax=[0.9, 0.95, 0.98], tf=[1.5, 1.5, 1.6]))
        cells = [c.strip() for c in row.split("|")[2:-1]]
        self.assertTrue(cells[0].startswith("✓ met: best keras/jax 0.46x"), cells[0])
        self.assertTrue(cells[1].startswith("✓ met: worst keras/tensorflow 0.73x"), cells[1])
        self.assertTrue(cells[2].startswith("✓ met: best keras/jax 0.30x"), cells[2])
        self.assertTrue(cells[3].startswith("✓ met"), cells[3])

    def test_missed_and_undetermined(self):
        # jax straddles 0.5x of the reference (0.95-1.1 vs 1.0-1.05), tf is 1.25x: slower.
        recs = self.recs(
            jax=[0.95, 1.0, 1.1], tf=[2.5, 2.5, 2.6], jax_sample=[0.5, 0.5, 0.5], jax_rss=1500.0
        )
        cells = [c.strip() for c in targets_md(recs).split("|")[2:-1]]
        self.assertTrue(cells[0].startswith("? undetermined: best keras/jax 0.49x"), cells[0])
        self.assertTrue(cells[1].startswith("✗ missed: worst keras/tensorflow 1.22x"), cells[1])
        self.assertTrue(cells[2].startswith("✗ missed: best keras/jax 0.50x"), cells[2])
        self.assertEqual(cells[3], "✗ missed: keras/jax 1500 MB > reference 1000 MB")

    def test_busy_machine_is_never_met(self):
        recs = self.recs(jax=[0.5, 0.5, 0.5], tf=[0.5, 0.5, 0.5], jax_load=4.0)
        cells = [c.strip() for c in targets_md(recs).split("|")[2:-1]]
        self.assertTrue(cells[1].startswith("? undetermined"), cells[1])
        self.assertIn("keras/jax 0.24x, machine not quiet", targets_md(recs))

    def test_group_without_keras_or_reference(self):
        only_ref = [r for r in self.recs(jax=[1.0], tf=[1.0]) if r["impl"] == REF]
        self.assertIn("? no keras backend measured", targets_md(only_ref))
        no_ref = [r for r in self.recs(jax=[1.0], tf=[1.0]) if r["impl"] != REF]
        self.assertIn("? no reference measured", targets_md(no_ref))


class FlopsTest(unittest.TestCase):
    def test_achieved_gflops_column(self):
        recs = [record(REF, r, [2.0, 2.0, 2.0]) for r in (1, 2)]
        recs += [record(JAX, r, [0.5, 0.5, 0.5]) for r in (1, 2)]
        flops = dict(
            train_step_flops={"tiny64/4": 50e9},
            matmul_peak_gflops={"numpy": 80.0, "torch": 100.0},
            threads=2,
            date="today",
        )
        md = stats.report(recs, flops=flops)
        self.assertIn("train GFLOP/s (% of matmul peak)", md)
        rows = {line.split("|")[1].strip(): line for line in md.splitlines() if "| " in line}
        self.assertIn("| 25 (25%) |", rows[REF])  # 50 GFLOP in 2 s, peak 100 GFLOP/s
        self.assertIn("| 100 (100%) |", rows[JAX])
        self.assertIn("matmul peak {'numpy': 80.0, 'torch': 100.0} GFLOP/s", md)
        # no FLOPs for this config: a dash, never a made-up figure
        other = dict(flops, train_step_flops={"digits32/4": 1e9})
        self.assertIn("| - |", stats.report(recs, flops=other))
        self.assertNotIn("GFLOP/s", stats.report(recs))


class NoBackendImportTest(unittest.TestCase):
    def test_bench_helpers_import_no_framework(self):
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); import stats, measure, configs; "
            "bad = [m for m in ('keras', 'numpy', 'jax', 'tensorflow', 'torch') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
        )
        proc = subprocess.run(
            [sys.executable, "-S", "-c", code, str(BENCH)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)


class PeakPhaseTest(unittest.TestCase):
    def test_the_first_phase_that_reached_the_peak(self):
        after = dict(build=800.0, warmup=3000.0, train=3010.0, sample=3050.0)
        rec = dict(peak_rss_mb=3050.0, peak_rss_mb_after=after)
        self.assertEqual(stats.peak_phase(rec), "warmup")  # 3000 is within 2 % of 3050
        after = dict(build=800.0, warmup=2000.0, train=2100.0, sample=3050.0)
        self.assertEqual(
            stats.peak_phase(dict(peak_rss_mb=3050.0, peak_rss_mb_after=after)), "sample"
        )
        self.assertIsNone(stats.peak_phase(dict(peak_rss_mb=3050.0)))  # an older record

    def test_the_report_names_the_phase(self):
        recs = [
            dict(
                record(impl, 1, [1.0, 1.0, 1.0]),
                peak_rss_mb_after=dict(build=500.0, warmup=1000.0, train=1000.0, sample=1000.0),
            )
            for impl in (REF, JAX)
        ]
        self.assertIn("| 1000 (set in warmup) |", stats.report(recs, dict(date="today")))
