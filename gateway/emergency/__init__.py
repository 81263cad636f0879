"""The emergency policy: pure functions over (call facts, dialplan, health, reservations).

One module per part of the SPEC, each function named after its rule:

* :mod:`~gateway.emergency.numbers` -- detection of emergency calls (E-1, E-12);
* :mod:`~gateway.emergency.routing` -- route choice, never refused (E-2, E-3);
* :mod:`~gateway.emergency.callbacks` -- callbacks and priority headers (C-1, C-2);
* :mod:`~gateway.emergency.lockdown` -- what the agent may do during the call (E-8);
* :mod:`~gateway.emergency.prerequisites` -- ``gateway check`` of agents (E-11);
* :mod:`~gateway.emergency.config` -- the emergency configuration they read.

No I/O and no clock anywhere: time is a parameter. The one function that changes its
argument is :func:`~gateway.emergency.callbacks.strip_untrusted_priority`.
"""
