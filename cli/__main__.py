"""`python -m geo3d.cli ...` is the `geo3d` command."""

from geo3d.cli.command import main

main()
