"""``python -m crisiscomms``."""

from crisiscomms.cli import main

main()
