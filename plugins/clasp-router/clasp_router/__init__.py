"""clasp-router: which deployments may serve a request, and in which order.

Modules: :mod:`.catalogue` (what each deployment can do, costs and has shown),
:mod:`.capability` (what this request needs, and who can give it), :mod:`.regions`
(residency), :mod:`.strategies` (the registered orderings), :mod:`.settings` (the
``router:`` section), :mod:`.runtime` (one app's per-request hooks), :mod:`.explain`
(``clasp route --explain``) and :mod:`.plugin` (the hook implementations).
"""

__version__ = "0.1.0"
