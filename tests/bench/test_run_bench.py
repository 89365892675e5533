"""Thread settings and worker command lines of the benchmark driver (pure Python)."""

import argparse
import importlib.util
import os
import pathlib
import sys
import unittest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


def _load_driver():
    sys.path.insert(0, str(BENCH))  # the driver imports its sibling modules
    try:
        spec = importlib.util.spec_from_file_location("_imagen_bench_run", BENCH / "run_bench.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


run_bench = _load_driver()


def args(**kw):
    base = dict(
        threads=2,
        jit="auto",
        warmup_steps=2,
        min_steps=6,
        max_steps=40,
        budget_s=120.0,
        sample_reps=2,
        sample_steps=None,
        pin=True,
        ref_python="/ref/python",
        keras_pythonpath=None,
    )
    return argparse.Namespace(**dict(base, **kw))


class ThreadSettingsTest(unittest.TestCase):
    def test_thread_env(self):
        one, two = run_bench.thread_env(1), run_bench.thread_env(2)
        self.assertEqual(one["OMP_NUM_THREADS"], "1")
        self.assertEqual(two["TF_NUM_INTRAOP_THREADS"], "2")
        self.assertIn("intra_op_parallelism_threads=1", one["XLA_FLAGS"])
        self.assertNotIn("XLA_FLAGS", two)

    def test_pinning_only_below_nproc(self):
        cmd = run_bench.worker_cmd(args(threads=1), "jax", "digits32", 4, 1)
        if (os.cpu_count() or 1) > 1:
            self.assertEqual(cmd[cmd.index("--cpus") + 1].count(","), 0)
        many = run_bench.worker_cmd(args(threads=os.cpu_count() or 1), "jax", "tiny64", 4, 1)
        self.assertNotIn("--cpus", many)
        self.assertNotIn(
            "--cpus", run_bench.worker_cmd(args(threads=1, pin=False), "jax", "tiny64", 4, 1)
        )

    def test_reference_runs_in_its_own_python(self):
        cmd = run_bench.worker_cmd(args(), "reference", "tiny64", 32, 2)
        self.assertEqual(cmd[0], "/ref/python")
        self.assertEqual(cmd[cmd.index("--impl") + 1], "reference")
        self.assertEqual(cmd[cmd.index("--batch") + 1], "32")
        env = run_bench.worker_env(args(), "jax")
        self.assertEqual(env["KERAS_BACKEND"], "jax")
        self.assertEqual(run_bench.worker_env(args(), "reference")["HF_HUB_OFFLINE"], "1")

    def test_a_variant_is_its_backend_with_its_setting_and_its_own_row(self):
        env = run_bench.worker_env(args(), "jax-no-ynn")
        self.assertEqual(env["KERAS_BACKEND"], "jax")
        self.assertIn("--xla_cpu_experimental_ynn_fusion_type=", env["XLA_FLAGS"].split())
        self.assertEqual(env["BENCH_IMPL_LABEL"], "keras/jax, YNNPACK fusions off")
        # at 1 thread the variant's flag comes on top of the thread limits
        one = run_bench.worker_env(args(threads=1), "jax-no-ynn")["XLA_FLAGS"].split()
        self.assertIn("intra_op_parallelism_threads=1", one)
        self.assertIn("--xla_cpu_experimental_ynn_fusion_type=", one)
        self.assertNotIn("BENCH_IMPL_LABEL", run_bench.worker_env(args(), "jax"))
        self.assertEqual(run_bench.impl_name("jax-no-ynn"), "keras/jax, YNNPACK fusions off")
        self.assertEqual(run_bench.impl_name("torch"), "keras/torch")
