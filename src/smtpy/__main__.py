"""Run smtpy as `python -m smtpy`."""

from smtpy.cli import main

main()
