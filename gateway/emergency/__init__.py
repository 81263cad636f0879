"""The emergency policy: pure functions over (call facts, dialplan, health, reservations).

One module per part of the SPEC, each function named after its rule:

* :mod:`~gateway.emergency.numbers` -- detection of emergency calls (E-1, E-12);
* :mod:`~gateway.emergency.routing` -- route choice, never refused (E-2, E-3);
* :mod:`~gateway.emergency.callbacks` -- callbacks and priority headers (C-1, C-2);
* :mod:`~gateway.emergency.reservations` -- which callback DID an agent gets (E-4), the
  rule every reservation store runs inside its atomic step;
* :mod:`~gateway.emergency.lockdown` -- what the agent may do during the call (E-8);
* :mod:`~gateway.emergency.prerequisites` -- ``gateway check`` of agents (E-11).

The configuration they read is the dialplan's own emergency section
(:class:`gateway.config.dialplan.EmergencySettings`), one type from file to policy.

No I/O and no clock in these modules: time is a parameter. The one function that changes
its argument is :func:`~gateway.emergency.callbacks.strip_untrusted_priority`.

:mod:`~gateway.emergency.service` is the edge that applies them to live calls, with the
store, the publisher and presence; it too reads time and randomness only from what it is
given (``wall_clock``, ``token``). :mod:`~gateway.emergency.facts` names what the policy
reads of the call layer's values, so that this package never imports it.
"""
