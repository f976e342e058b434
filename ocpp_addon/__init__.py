"""ocpp_addon: an OCPP 1.6J central system that bridges EV chargers to MQTT,
Home Assistant discovery and BEMcom."""

__version__ = "0.1.0"
