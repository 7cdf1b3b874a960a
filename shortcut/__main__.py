"""`python -m shortcut ...` is the `shortcut` command."""
from .cli import main

main()
