"""The AWS IoT Device Shadow service, device side: named (and classic) shadows over MQTT."""
