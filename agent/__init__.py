"""jobs-agent: the device side of AWS IoT Jobs."""

__version__ = "0.1.0"
