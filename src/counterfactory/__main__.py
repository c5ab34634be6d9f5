"""``python -m counterfactory``: the same entry point as the ``counterfactory`` console script (what
``accelerate launch -m counterfactory ...`` runs on every process)."""

from .cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
