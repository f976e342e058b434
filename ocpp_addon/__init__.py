"""ocpp_addon: an OCPP 1.6J and 2.0.1 central system that bridges EV chargers to MQTT,
Home Assistant discovery and BEMcom."""

__version__ = "0.1.0"
