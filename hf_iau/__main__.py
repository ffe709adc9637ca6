"""``python -m hf_iau`` runs the ``hf-iau`` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
