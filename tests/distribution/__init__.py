# Two forced host devices for JAX. XLA's CPU collectives abort the process when one
# device's thread reaches an all-reduce more than 40 s after the other (its default
# `xla_cpu_collective_call_terminate_timeout_seconds`); on a 2-core CI machine running the
# three backends' suites side by side that happened once (stop 22). A starved thread is
# not a failure of the code under test, so the tests let it wait up to 10 minutes (within
# their 15-minute subprocess timeout).
TWO_HOST_DEVICES_XLA_FLAGS = (
    "--xla_force_host_platform_device_count=2"
    " --xla_cpu_collective_call_terminate_timeout_seconds=600"
)
