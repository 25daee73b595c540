"""`leo-launch`, the command line: argparse (main.py), one module per command (cmd_*.py), shared
options and output formats. Only this package prints and chooses exit codes."""
