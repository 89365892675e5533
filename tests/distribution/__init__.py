# Two forced host devices for JAX. XLA's CPU collectives abort the process when one
# device's program reaches an all-reduce and the other's does not arrive within
# `xla_cpu_collective_call_terminate_timeout_seconds` (default 40 s). In full-suite runs
# this happened twice (2026-12-06), both times in the recipe test while it trained eagerly
# (`jit_compile: false`, every op its own two-device program), and the second time with
# this timeout at 600 s and the machine idle: a hang, not a slow thread. That test now
# trains with jit, as users do by default. 120 s still tolerates a thread starved by a
# loaded machine and turns a real hang into a failure within 2 minutes.
TWO_HOST_DEVICES_XLA_FLAGS = (
    "--xla_force_host_platform_device_count=2"
    " --xla_cpu_collective_call_terminate_timeout_seconds=120"
)
