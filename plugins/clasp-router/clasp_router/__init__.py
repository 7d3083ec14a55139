"""clasp-router: which deployments may serve a request, and in which order.

Modules: :mod:`.catalogue` (what each deployment can do, costs and has shown),
:mod:`.capability` (what this request needs, and who can give it), :mod:`.regions`
(residency), :mod:`.strategies` (the plain orderings), :mod:`.registry` (every
strategy by name), :mod:`.settings` (the ``router:`` section), :mod:`.runtime` (one
app's per-request hooks), :mod:`.explain` (``clasp route --explain``) and
:mod:`.plugin` (the hook implementations). The learned ``cheapest-capable``:
:mod:`.difficulty` (a request's difficulty bucket), :mod:`.estimates` (success
estimates shared through the state), :mod:`.learning` (what it learns from),
:mod:`.learned` (the choice) and :mod:`.learn_settings` (``router.learn:``); the
experiments: :mod:`.experiments`.
"""

__version__ = "0.1.0"
