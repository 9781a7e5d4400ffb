"""ocpp2mqtt: a gateway between OCPP 1.6J charge points and MQTT."""

__version__ = "2.0.0"
