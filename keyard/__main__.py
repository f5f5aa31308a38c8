"""``python -m keyard``: the ``keyard`` command line (:mod:`keyard.cli`)."""

from keyard.cli import main

if __name__ == "__main__":
    main(prog_name="keyard")
