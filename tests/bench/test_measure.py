"""Steady-state stopping rule and process measurements of the benchmark workers.

Pure Python: loads `bench/measure.py` by path and never imports a keras backend.
"""

import importlib.util
import pathlib
import unittest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
_spec = importlib.util.spec_from_file_location("_imagen_bench_measure", BENCH / "measure.py")
measure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(measure)


class IsStableTest(unittest.TestCase):
    def test_needs_min_steps_and_two_windows(self):
        self.assertFalse(measure.is_stable([1.0] * 5, min_steps=3))
        self.assertFalse(measure.is_stable([1.0] * 7, min_steps=8))
        self.assertTrue(measure.is_stable([1.0] * 6, min_steps=3))

    def test_drifting_times_are_not_stable(self):
        self.assertFalse(measure.is_stable([1.0, 1.0, 1.0, 1.2, 1.2, 1.2], min_steps=6))
        self.assertTrue(measure.is_stable([1.0, 1.0, 1.0, 1.04, 1.04, 1.04], min_steps=6))
        # one slow step does not move a median of 3
        self.assertTrue(measure.is_stable([1.0, 9.0, 1.0, 1.0, 1.0, 1.0], min_steps=6))


class StepsAndLoadTest(unittest.TestCase):
    def test_steady_steps_stops_at_max_steps_or_stability(self):
        calls = []
        walls, cpus, reason = measure.steady_steps(lambda: calls.append(1), 2, 4, 60.0)
        self.assertEqual(len(walls), len(calls))
        self.assertEqual(len(cpus), len(calls))
        self.assertLessEqual(len(calls), 4)
        self.assertIn(reason, ("max_steps", "stable"))

    def test_load_monitor_reports(self):
        with measure.LoadMonitor(interval=0.01) as mon:
            sum(range(10000))
        for key in ("loadavg_before", "loadavg1_max", "max_threads", "wall_s", "cpu_s"):
            self.assertIn(key, mon.result)
        self.assertGreaterEqual(mon.result.get("other_cores", 0.0), 0.0)
        self.assertGreaterEqual(measure.thread_count(), 1)
