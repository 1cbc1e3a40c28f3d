"""MQTT-based file delivery (AWS IoT streams), device side: a protocol client over the transport
seam (`client.StreamsClient`), its wire format (`protocol`) and its errors (`errors`)."""
