"""On-demand benchmarks: `python -m benchmarks [NAME...] [--json] [--runs K] [--quick]`.

Not part of the test suite: tests assert behaviour, benchmarks print figures. Every figure is
shown beside a floor measured in the same run (the perfect agent on the same emulator and
broker, Python's own floor, or what the same broker does for a raw client), so a number always
comes with its yardstick; `--baseline REF` adds the same figure for another revision's agent.
"""
