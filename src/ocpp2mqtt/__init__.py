"""ocpp2mqtt: a gateway between OCPP charge points (1.6J, 2.0.1, 2.1) and MQTT."""

__version__ = "2.7.0"
