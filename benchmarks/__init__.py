"""On-demand benchmarks: `python -m benchmarks [NAME...] [--json] [--runs K] [--quick]`.

Not part of the test suite: tests assert behaviour, benchmarks print figures. Every figure is
shown beside a floor (what the same broker does with a minimal raw client) or a peer (a minimal
agent on AWS's own SDK) measured in the same run, so a number always comes with its yardstick.
"""
