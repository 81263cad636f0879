"""Events out of the gateway (SPEC M-1, E-7): the Publisher port and its MQTT adapter.

``ports`` (the :class:`Publisher` protocol and the :class:`Topics` layout) and ``schema``
(versioned payload builders) have no I/O; ``mqtt`` is the aiomqtt adapter; ``embedded`` a
private broker for development (Mosquitto, else amqtt). ``docs/mqtt.md`` is the contract
for consumers.
"""

from gateway.events.ports import Publisher, Topics

__all__ = ["Publisher", "Topics"]
