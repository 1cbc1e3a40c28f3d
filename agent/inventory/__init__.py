"""The device's software inventory: what a job installs, what the device has (local sources),
the "already installed" check, and the report to the reserved named shadow `$package`."""
