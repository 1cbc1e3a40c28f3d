"""The AWS IoT Jobs MQTT protocol, spoken by both the device (`client`) and the emulator.

`topics` builds and parses every topic, `models` every payload, `status_details` makes
statusDetails acceptable, `errors` names the failures; `client` is the device's async client.
The pure modules import nothing from a transport, so the emulator uses them as they are.
"""
